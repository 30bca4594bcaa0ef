//! Transport step, AMQP 0-9-1 (RabbitMQ): the topology the README's "Run on RabbitMQ" describes, inbound deliveries
//! with manual acknowledgements, dead-lettering with a reason, and outbound publication with
//! publisher confirms (persistent, mandatory, CloudEvents binary mode). The only module that
//! imports lapin; its types never leave it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind, PublisherConfirm,
};

pub mod delivery;
pub mod partition;

use super::{InboundMessage, TransportError};
use crate::config::AmqpConfig;
use crate::store::OutboxEntry;

/// `cloudEvents_source` of everything Switchboard publishes.
pub const CLOUDEVENTS_SOURCE: &str = "switchboard";

/// A connection with a consuming channel (prefetch) and three confirm-mode publishing
/// channels: one for the outbox, one for dead letters (each with a single publisher task, so
/// their confirms are never interleaved between tasks), and one for the webhook door's raw
/// payloads (many handlers at once, each awaiting its own confirm).
pub struct AmqpTransport {
    connection: Connection,
    consume: Channel,
    publish: Channel,
    dead: Channel,
    inbound: Channel,
    names: AmqpConfig,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("inbound_queue", &self.names.inbound_queue)
            .field("connected", &self.connection.status().connected())
            .finish_non_exhaustive()
    }
}

/// RabbitMQ's 405 RESOURCE_LOCKED: an exclusive queue another connection holds.
fn is_locked(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if matches!(
            amqp.kind(),
            lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::RESOURCELOCKED)
        )
    )
}

/// Consumes the inbound queue on `channel`; `own`: the channel is the consumer's own.
async fn consume_inbound_on(
    channel: &Channel,
    names: &AmqpConfig,
    tag: &str,
    own: Option<Channel>,
) -> Result<Deliveries, TransportError> {
    let consumer = channel
        .basic_consume(
            names.inbound_queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    Ok(Deliveries { consumer, own })
}

/// A daemon's mark on the inbound queue (see [`AmqpTransport::claim_inbound`]).
#[derive(Debug)]
pub struct Mark {
    /// Held, not used: the mark lives as long as its consumer (dropping a consumer cancels
    /// it, and the broker deletes the queue with its last consumer).
    _channel: Channel,
    _consumer: lapin::Consumer,
}

/// How a mark's queue is declared (the same by every daemon: a declaration with other
/// properties would be refused).
fn mark_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    }
}

fn broker(error: lapin::Error) -> TransportError {
    TransportError::Broker(error.to_string())
}

/// A channel in confirm mode: what is published on it counts once the broker confirmed it.
async fn confirm_channel(connection: &Connection) -> Result<Channel, TransportError> {
    let channel = connection.create_channel().await.map_err(broker)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    Ok(channel)
}

/// Declares a durable exchange (idempotent).
async fn durable_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), TransportError> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker)
}

fn quorum(extra: impl IntoIterator<Item = (&'static str, AMQPValue)>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (key, value) in extra {
        arguments.insert(key.into(), value);
    }
    arguments
}

impl AmqpTransport {
    /// Connects (the URL is a secret: errors never echo it), opens the channels and declares
    /// the topology.
    pub async fn connect(config: &AmqpConfig, name: &str) -> Result<Self, TransportError> {
        // No lapin auto-recovery: a recovered channel reuses delivery tags, so an
        // acknowledgement from before the recovery could acknowledge deliveries that were not
        // processed yet. `app` rebuilds connection, channels and consumer instead; stale
        // acknowledgements then fail harmlessly and their messages are redelivered.
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(config.url.expose(), properties)
            .await
            .map_err(broker)?;
        let consume = connection.create_channel().await.map_err(broker)?;
        consume
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let publish = confirm_channel(&connection).await?;
        let dead = confirm_channel(&connection).await?;
        let inbound = confirm_channel(&connection).await?;
        let transport = Self {
            connection,
            consume,
            publish,
            dead,
            inbound,
            names: config.clone(),
        };
        transport.declare().await?;
        Ok(transport)
    }

    /// Declares what the daemon needs (idempotent): the two topic exchanges, the inbound
    /// quorum queue bound with `#` (an explicit delivery limit, dead-lettering to the dead
    /// queue), and the dead queue.
    async fn declare(&self) -> Result<(), TransportError> {
        for exchange in [&self.names.inbound_exchange, &self.names.outbound_exchange] {
            durable_exchange(&self.consume, exchange, ExchangeKind::Topic).await?;
        }
        self.consume
            .queue_declare(
                self.names.dead_letter_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                quorum([]),
            )
            .await
            .map_err(broker)?;
        let inbound = quorum([
            (
                "x-delivery-limit",
                AMQPValue::LongInt(i32::try_from(self.names.delivery_limit).unwrap_or(i32::MAX)),
            ),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(self.names.dead_letter_queue.as_str().into()),
            ),
        ]);
        self.consume
            .queue_declare(
                self.names.inbound_queue.as_str().into(),
                QueueDeclareOptions::durable(),
                inbound,
            )
            .await
            .map_err(broker)?;
        self.consume
            .queue_bind(
                self.names.inbound_queue.as_str().into(),
                self.names.inbound_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(())
    }

    /// Claims the inbound queue for this daemon alone: an exclusive queue named after it,
    /// `<inbound_queue>.owner`, which the broker keeps only while this connection lives. A
    /// second daemon on the same broker and queue (one process owns every conversation: two
    /// would each see half of their events) finds it locked and must not consume; it takes
    /// the queue over once the owner's connection is gone. Cluster nodes are told apart by
    /// marks (see [`AmqpTransport::join_inbound_cluster`]): this daemon holds
    /// `<inbound_queue>.single` and refuses to consume while cluster nodes hold theirs. The
    /// claim and the mark last as long as the returned value (or the connection).
    pub async fn claim_inbound(&self) -> Result<Mark, TransportError> {
        let claim = self.connection.create_channel().await.map_err(broker)?;
        let owner = format!("{}.owner", self.names.inbound_queue);
        let declared = claim
            .queue_declare(
                owner.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {}
            Err(error) if is_locked(&error) => {
                return Err(TransportError::Taken(format!(
                    "another Switchboard daemon consumes {} on this broker (it holds {owner}); without cluster mode one daemon owns every conversation, so this one does not consume: stop the other, give this one its own amqp.inbound_queue, or run both in cluster mode",
                    self.names.inbound_queue
                )));
            }
            Err(error) => return Err(broker(error)),
        }
        let mark = self.hold_mark(&self.mark_name("single")).await?;
        if self.marked(&self.mark_name("cluster")).await? {
            let _ = claim
                .close(200, "cluster nodes consume this queue".into())
                .await;
            return Err(TransportError::Taken(format!(
                "daemons in cluster mode consume {} on this broker (they hold {}); a daemon without cluster mode would split conversations with them, so this one does not consume: add this daemon's `[cluster]` section, or give it its own amqp.inbound_queue",
                self.names.inbound_queue,
                self.mark_name("cluster")
            )));
        }
        Ok(mark)
    }

    /// Cluster mode's side of [`AmqpTransport::claim_inbound`]: every node holds the mark
    /// `<inbound_queue>.cluster`, then checks that no daemon without cluster mode holds
    /// `<inbound_queue>.single`. Each side holds its mark before it looks for the other's, so
    /// that of two daemons starting together at least one sees the other.
    pub async fn join_inbound_cluster(&self) -> Result<Mark, TransportError> {
        let mark = self.hold_mark(&self.mark_name("cluster")).await?;
        if self.marked(&self.mark_name("single")).await? {
            return Err(TransportError::Taken(format!(
                "a daemon without cluster mode consumes {} on this broker (it holds {}); cluster nodes would split conversations with it, so this one does not consume: stop it, or give it `[cluster]` too",
                self.names.inbound_queue,
                self.mark_name("single")
            )));
        }
        Ok(mark)
    }

    fn mark_name(&self, kind: &str) -> String {
        format!("{}.{kind}", self.names.inbound_queue)
    }

    /// Holds a mark: a consumer on the auto-delete queue `name` (the broker deletes it with
    /// its last consumer, so a mark never outlives the daemons that hold it).
    async fn hold_mark(&self, name: &str) -> Result<Mark, TransportError> {
        let channel = self.connection.create_channel().await.map_err(broker)?;
        channel
            .queue_declare(name.into(), mark_queue(), FieldTable::default())
            .await
            .map_err(broker)?;
        let consumer = channel
            .basic_consume(
                name.into(),
                "mark".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(Mark {
            _channel: channel,
            _consumer: consumer,
        })
    }

    /// Whether another daemon holds the mark `name`: its queue has a consumer. Declaring it to
    /// look creates it when missing (a passive declaration would fail the channel with an
    /// error the broker client logs); one that nobody holds is deleted again.
    async fn marked(&self, name: &str) -> Result<bool, TransportError> {
        let channel = self.connection.create_channel().await.map_err(broker)?;
        let queue = channel
            .queue_declare(name.into(), mark_queue(), FieldTable::default())
            .await
            .map_err(broker)?;
        if queue.consumer_count() > 0 {
            let _ = channel.close(200, "looked".into()).await;
            return Ok(true);
        }
        // Refused only when a holder arrived since: then it is marked.
        let deleted = channel
            .queue_delete(
                name.into(),
                QueueDeleteOptions {
                    if_unused: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await;
        if deleted.is_ok() {
            let _ = channel.close(200, "looked".into()).await;
        }
        Ok(deleted.is_err())
    }

    /// Declares the delivery worker's queue, bound to `channel.#` (with `[delivery] enabled`,
    /// before the outbox publisher starts: see [`delivery::declare`]).
    pub async fn declare_delivery_queue(&self) -> Result<(), TransportError> {
        delivery::declare(&self.consume, &self.names).await
    }

    /// Whether the connection is up (for `/readyz`).
    pub fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Starts consuming the inbound queue.
    pub async fn consume(&self, tag: &str) -> Result<Deliveries, TransportError> {
        consume_inbound_on(&self.consume, &self.names, tag, None).await
    }

    /// Starts consuming the inbound queue on a channel of its own (prefetch as configured),
    /// for a consumer that gives the queue up while the connection lives on (a cluster's
    /// decoder handing over): [`Deliveries::stop`] closes the channel.
    pub async fn consume_apart(&self, tag: &str) -> Result<Deliveries, TransportError> {
        let channel = self.connection.create_channel().await.map_err(broker)?;
        channel
            .basic_qos(self.names.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        consume_inbound_on(&channel.clone(), &self.names, tag, Some(channel)).await
    }

    /// Sends a message the daemon cannot handle to the dead queue, with its reason, and waits
    /// for the broker's confirmation (the caller acknowledges it only afterwards).
    pub async fn dead_letter(
        &self,
        message: &InboundMessage,
        code: &str,
        detail: &str,
    ) -> Result<(), TransportError> {
        let properties = inbound_properties(
            message,
            &[
                ("switchboard-error", code),
                ("switchboard-error-detail", detail),
                ("switchboard-routing-key", &message.routing_key),
            ],
        );
        self.start(
            &self.dead,
            ShortString::from(""),
            self.names.dead_letter_queue.as_str().into(),
            &message.body,
            properties,
        )
        .await?
        .await
    }

    /// Publishes a provider payload the webhook door took into the inbound exchange, exactly
    /// as a gateway would (routing key = plugin, the request's headers as AMQP headers,
    /// persistent), and waits for the broker's confirmation: the door answers the provider
    /// only then, so a crash after the answer loses nothing.
    pub async fn publish_inbound(&self, message: &InboundMessage) -> Result<(), TransportError> {
        let properties = inbound_properties(message, &[]);
        self.start(
            &self.inbound,
            self.names.inbound_exchange.as_str().into(),
            message.routing_key.as_str().into(),
            &message.body,
            properties,
        )
        .await?
        .await
    }

    /// Publishes an outbox entry in CloudEvents binary mode (attributes as `cloudEvents_`
    /// headers), persistent and mandatory, without waiting for the broker: the returned
    /// [`Confirm`] resolves with its confirmation, so many publications can await theirs at
    /// once (the outbox publisher keeps a window of them).
    pub async fn start_publish(&self, entry: &OutboxEntry) -> Result<Confirm, TransportError> {
        let (properties, routing_key) = cloudevent(entry);
        self.start(
            &self.publish,
            self.names.outbound_exchange.as_str().into(),
            routing_key,
            &entry.body,
            properties,
        )
        .await
    }

    /// Publishes an outbox entry and waits for the broker's confirmation.
    pub async fn publish(&self, entry: &OutboxEntry) -> Result<(), TransportError> {
        self.start_publish(entry).await?.await
    }

    /// One mandatory publication on a confirm-mode channel; the frames are written when this
    /// returns, the confirmation comes with the [`Confirm`].
    async fn start(
        &self,
        channel: &Channel,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, TransportError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(exchange, routing_key, options, body, properties)
            .await
            .map(Confirm)
            .map_err(broker)
    }

    /// Deletes the topology (tests use names of their own and clean up after themselves).
    pub async fn delete_topology(&self) -> Result<(), TransportError> {
        for queue in [&self.names.inbound_queue, &self.names.dead_letter_queue] {
            self.consume
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(broker)?;
        }
        for exchange in [&self.names.inbound_exchange, &self.names.outbound_exchange] {
            self.consume
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(broker)?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "switchboard shutting down".into())
            .await;
    }
}

/// An inbound message's AMQP properties as a gateway publishes them (persistent, its headers
/// as AMQP headers, content type and message id), with `extra` headers.
fn inbound_properties(message: &InboundMessage, extra: &[(&str, &str)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    let pairs = message
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(extra.iter().copied());
    for (name, value) in pairs {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(content_type) = &message.content_type {
        properties = properties.with_content_type(content_type.as_str().into());
    }
    if let Some(id) = &message.message_id {
        properties = properties.with_message_id(id.as_str().into());
    }
    properties
}

/// The broker connection of the moment, for the webhook door: set by the consumer loop when
/// it connects, cleared when the connection is lost (the door answers 503 meanwhile).
#[derive(Debug, Default)]
pub struct InboundPublisher {
    current: std::sync::Mutex<Option<std::sync::Arc<AmqpTransport>>>,
}

impl InboundPublisher {
    pub fn set(&self, transport: Option<std::sync::Arc<AmqpTransport>>) {
        *self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = transport;
    }

    /// Publishes into the inbound exchange and waits for the confirm; an error when there is
    /// no connection or the broker did not confirm.
    pub async fn publish(&self, message: &InboundMessage) -> Result<(), TransportError> {
        let transport = self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or_else(|| TransportError::Broker("not connected".to_owned()))?;
        transport.publish_inbound(message).await
    }
}

/// A publication's pending confirmation: `Ok` once the broker has it (or, mandatory and
/// unroutable, has returned it: nobody subscribes to that key), an error when it refused it or
/// the channel went away.
pub struct Confirm(PublisherConfirm);

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirm")
    }
}

impl Future for Confirm {
    type Output = Result<(), TransportError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|confirm| confirmation(confirm.map_err(broker)))
    }
}

/// What a publisher confirmation means for the outbox.
fn confirmation(confirm: Result<Confirmation, TransportError>) -> Result<(), TransportError> {
    match confirm? {
        Confirmation::Ack(None) => Ok(()),
        // Mandatory and nobody bound to this key: the broker has it nowhere to put. That is
        // the subscribers' business, not a reason to publish forever.
        Confirmation::Ack(Some(returned)) => {
            tracing::debug!(routing_key = %returned.delivery.routing_key, "published message had no subscriber");
            Ok(())
        }
        Confirmation::Nack(_) => Err(TransportError::Rejected(
            "broker refused a message".to_owned(),
        )),
        Confirmation::NotRequested => Err(TransportError::Broker(
            "publisher confirms are off".to_owned(),
        )),
    }
}

/// An outbox entry's AMQP properties in CloudEvents binary mode, and its routing key.
fn cloudevent(entry: &OutboxEntry) -> (BasicProperties, ShortString) {
    let mut headers = FieldTable::default();
    let mut header = |name: &str, value: &str| {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    };
    header("cloudEvents_specversion", "1.0");
    header("cloudEvents_id", &entry.id);
    header("cloudEvents_source", CLOUDEVENTS_SOURCE);
    header("cloudEvents_type", &entry.event_type);
    header("cloudEvents_time", &entry.time.rfc3339());
    if let Some(subject) = &entry.subject {
        header("cloudEvents_subject", subject);
    }
    for (name, value) in &entry.headers {
        header(name, value);
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(entry.content_type.as_str().into())
        .with_message_id(entry.id.as_str().into())
        // Seconds since the epoch: how old a provider request is (the delivery worker's
        // `max_age`).
        .with_timestamp(u64::try_from(entry.time.0 / 1000).unwrap_or_default())
        .with_headers(headers);
    (properties, entry.routing_key.as_str().into())
}

/// Acknowledges a delivery and every earlier one on its channel.
#[derive(Clone)]
pub struct AmqpAck(lapin::Acker);

impl std::fmt::Debug for AmqpAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AmqpAck")
    }
}

impl AmqpAck {
    /// Acknowledges this delivery and all before it (`multiple`), after their effects were
    /// committed. An error or `Ok(false)` means the channel is gone: the broker redelivers
    /// them and deduplication makes that harmless.
    pub async fn ack_through(&self) -> Result<bool, TransportError> {
        self.0
            .ack(BasicAckOptions { multiple: true })
            .await
            .map_err(broker)
    }
}

/// The inbound queue's deliveries.
pub struct Deliveries {
    consumer: Consumer,
    /// The channel consumed on, when it is this consumer's own (see
    /// [`AmqpTransport::consume_apart`]).
    own: Option<Channel>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deliveries")
    }
}

impl Deliveries {
    /// Stops consuming. On a channel of its own, the channel is closed, so that what was
    /// delivered and not acknowledged goes back to the queue at once, ahead of the rest, for
    /// the next consumer.
    pub async fn stop(self) {
        if let Some(channel) = self.own {
            let _ = channel
                .close(200, "switchboard: consumer stopped".into())
                .await;
        }
    }

    /// The next delivery; `None` when the consumer ended (cancelled by the server, channel
    /// closed): the caller consumes again.
    pub async fn next(&mut self) -> Option<Result<InboundMessage, TransportError>> {
        let delivery = self.consumer.next().await?;
        Some(delivery.map_err(broker).map(|delivery| {
            let headers: Vec<(String, String)> = delivery
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .filter_map(|(name, value)| {
                            text(value).map(|value| (name.to_string().to_ascii_lowercase(), value))
                        })
                        .collect()
                })
                .unwrap_or_default();
            InboundMessage {
                ack: Some(AmqpAck(delivery.acker.clone())),
                delivery_tag: delivery.delivery_tag,
                routing_key: delivery.routing_key.to_string(),
                content_type: delivery
                    .properties
                    .content_type()
                    .as_ref()
                    .map(ToString::to_string),
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string),
                redelivered: delivery.redelivered,
                headers,
                body: delivery.data,
            }
        }))
    }
}

/// A header value as text (providers' headers are strings; numbers are written out).
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        AMQPValue::Boolean(flag) => Some(flag.to_string()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::Timestamp(n) => Some(n.to_string()),
        _ => None,
    }
}
