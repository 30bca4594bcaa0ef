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
        if partition >= self.count {
            return Err(TransportError::Rejected(format!(
                "partition {partition} of {}",
                self.count
            )));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        self.publish
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
