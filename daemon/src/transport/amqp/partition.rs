//! Transport step for a cluster: the partition queues. Whichever node decodes an inbound
//! message routes its canonical events to one of the cluster's P partitions, each a quorum
//! queue with a single active consumer (`<inbound_queue>.partition.<p>`, bound to the direct
//! exchange `<inbound_exchange>.partitions` with the partition number as routing key), and
//! acknowledges the inbound message once the broker confirmed them. The node holding a
//! partition's lease consumes its queue on a channel of its own and closes that channel the
//! moment it loses or hands over the lease: RabbitMQ then gives what was not acknowledged, in
//! order, to the next consumer, which is the next owner (closing the channel, rather than
//! cancelling, is what RabbitMQ advises to keep that order).

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::{Confirm, broker, confirm_channel, durable_exchange, quorum};
use crate::config::AmqpConfig;
use crate::transport::TransportError;

/// A node's connection to the partition queues.
pub struct Partitions {
    connection: Connection,
    /// Confirm mode: a routed event counts once the broker confirmed it.
    publish: Channel,
    exchange: String,
    queue_prefix: String,
    count: u32,
}

impl std::fmt::Debug for Partitions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Partitions")
            .field("exchange", &self.exchange)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Partitions {
    /// Connects and declares the exchange and the `count` queues (idempotent: every node
    /// declares them the same way).
    pub async fn connect(
        config: &AmqpConfig,
        name: &str,
        count: u32,
    ) -> Result<Self, TransportError> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(config.url.expose(), properties)
            .await
            .map_err(broker)?;
        let publish = confirm_channel(&connection).await?;
        let partitions = Self {
            connection,
            publish,
            exchange: format!("{}.partitions", config.inbound_exchange),
            queue_prefix: format!("{}.partition", config.inbound_queue),
            count,
        };
        partitions.declare().await?;
        Ok(partitions)
    }

    /// Whether the connection is up.
    pub fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// The queue of `partition`.
    pub fn queue(&self, partition: u32) -> String {
        format!("{}.{partition}", self.queue_prefix)
    }

    async fn declare(&self) -> Result<(), TransportError> {
        durable_exchange(&self.publish, &self.exchange, ExchangeKind::Direct).await?;
        for partition in 0..self.count {
            let queue = self.queue(partition);
            self.publish
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    quorum([("x-single-active-consumer", AMQPValue::Boolean(true))]),
                )
                .await
                .map_err(broker)?;
            self.publish
                .queue_bind(
                    queue.as_str().into(),
                    self.exchange.as_str().into(),
                    partition.to_string().as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker)?;
        }
        Ok(())
    }

    /// Routes `body` (a partition's input) to `partition`, persistent and mandatory; the
    /// returned [`Confirm`] resolves with the broker's confirmation.
    pub async fn route(
        &self,
        partition: u32,
        message_id: &str,
        body: &[u8],
    ) -> Result<Confirm, TransportError> {
        self.route_on(&self.publish, partition, message_id, body, None)
            .await
    }

    /// [`Partitions::route`] on `channel`, asking for a reply to `reply` (`reply_to`,
    /// `correlation_id`).
    async fn route_on(
        &self,
        channel: &Channel,
        partition: u32,
        message_id: &str,
        body: &[u8],
        reply: Option<(&str, &str)>,
    ) -> Result<Confirm, TransportError> {
        if partition >= self.count {
            return Err(TransportError::Rejected(format!(
                "partition {partition} of {}",
                self.count
            )));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        if let Some((reply_to, correlation_id)) = reply {
            properties = properties
                .with_reply_to(reply_to.into())
                .with_correlation_id(correlation_id.into());
        }
        channel
            .basic_publish(
                self.exchange.as_str().into(),
                partition.to_string().as_str().into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..lapin::options::BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map(Confirm)
            .map_err(broker)
    }

    /// Consumes `partition`'s queue on a channel of its own (at most `prefetch`
    /// unacknowledged). With a single active consumer, the broker delivers only to the
    /// earliest consumer still attached; the others wait as standbys.
    pub async fn consume(
        &self,
        partition: u32,
        tag: &str,
        prefetch: u16,
    ) -> Result<PartitionConsumer, TransportError> {
        let channel = self.connection.create_channel().await.map_err(broker)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let consumer = channel
            .basic_consume(
                self.queue(partition).as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(PartitionConsumer { channel, consumer })
    }

    /// Answers a request that named `reply_to` (a requester's direct reply-to address),
    /// waiting for the broker's confirmation.
    pub async fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(correlation_id.into());
        self.publish
            .basic_publish(
                "".into(),
                reply_to.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map(Confirm)
            .map_err(broker)?
            .await
    }

    /// A channel for requests that wait for their partition's answer, through RabbitMQ's
    /// direct reply-to (no queue of its own; the answer comes back on the channel that asked).
    pub async fn requests(self: &std::sync::Arc<Self>) -> Result<Requests, TransportError> {
        let channel = self.connection.create_channel().await.map_err(broker)?;
        let mut consumer = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        let waiting: Waiting = std::sync::Arc::default();
        let answers = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let Some(correlation) = delivery.properties.correlation_id().as_ref() else {
                        continue;
                    };
                    let waiter = waiting
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .remove(correlation.as_str());
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(delivery.data);
                    }
                }
            }
        });
        Ok(Requests {
            partitions: self.clone(),
            channel,
            waiting,
            next: std::sync::atomic::AtomicU64::new(0),
            answers,
        })
    }

    /// Deletes the queues and the exchange (tests use names of their own).
    pub async fn delete(&self) -> Result<(), TransportError> {
        for partition in 0..self.count {
            self.publish
                .queue_delete(
                    self.queue(partition).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await
                .map_err(broker)?;
        }
        self.publish
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(broker)
    }

    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "switchboard shutting down".into())
            .await;
    }
}

/// A partition's queue as its owner consumes it.
pub struct PartitionConsumer {
    channel: Channel,
    consumer: Consumer,
}

impl std::fmt::Debug for PartitionConsumer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PartitionConsumer")
    }
}

/// One input of a partition, acknowledged after the owner's commit.
pub struct PartitionMessage {
    pub message_id: Option<String>,
    pub body: Vec<u8>,
    /// Delivered before, to a consumer that did not acknowledge it (a former owner).
    pub redelivered: bool,
    /// Where the requester waits for the answer, and the request's id there.
    pub reply_to: Option<(String, String)>,
    acker: lapin::Acker,
}

impl std::fmt::Debug for PartitionMessage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PartitionMessage")
            .field("message_id", &self.message_id)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl PartitionMessage {
    /// Acknowledges this message and every earlier one of the channel.
    pub async fn ack_through(&self) -> Result<bool, TransportError> {
        self.acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map_err(broker)
    }
}

impl PartitionConsumer {
    pub async fn next(&mut self) -> Option<Result<PartitionMessage, TransportError>> {
        let delivery = self.consumer.next().await?;
        Some(delivery.map_err(broker).map(|delivery| {
            PartitionMessage {
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned()),
                reply_to: delivery
                    .properties
                    .reply_to()
                    .as_ref()
                    .zip(delivery.properties.correlation_id().as_ref())
                    .map(|(to, id)| (to.as_str().to_owned(), id.as_str().to_owned())),
                body: delivery.data,
                redelivered: delivery.redelivered,
                acker: delivery.acker,
            }
        }))
    }

    /// Stops consuming the partition (its lease lost or handed over) by closing the channel:
    /// what was not acknowledged goes back to the queue, ahead of the rest, for the next owner.
    pub async fn stop(self) {
        let _ = self
            .channel
            .close(
                200,
                "switchboard: partition lease lost or handed over".into(),
            )
            .await;
    }
}

/// RabbitMQ's pseudo-queue for direct replies.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiting = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Vec<u8>>>>,
>;

/// Requests to partitions, each answered on this channel (see [`Partitions::requests`]).
pub struct Requests {
    partitions: std::sync::Arc<Partitions>,
    channel: Channel,
    waiting: Waiting,
    next: std::sync::atomic::AtomicU64,
    answers: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Requests")
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.answers.abort();
    }
}

impl Requests {
    /// Sends `body` to `partition` and waits up to `timeout` for its answer. `None` when none
    /// came in time: the request may or may not have been applied (its owner failing over, or
    /// slow), so the caller answers with a retryable refusal.
    pub async fn ask(
        &self,
        partition: u32,
        message_id: &str,
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let correlation = self
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let (sender, answer) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(correlation.clone(), sender);
        let sent = self
            .partitions
            .route_on(
                &self.channel,
                partition,
                message_id,
                body,
                Some((DIRECT_REPLY_TO, &correlation)),
            )
            .await;
        let answered = match sent {
            Ok(_) => tokio::time::timeout(timeout, answer)
                .await
                .ok()
                .and_then(Result::ok),
            Err(error) => {
                self.forget(&correlation);
                return Err(error);
            }
        };
        self.forget(&correlation);
        Ok(answered)
    }

    fn forget(&self, correlation: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(correlation);
    }
}
