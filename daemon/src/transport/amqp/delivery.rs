//! Transport step for the delivery worker on RabbitMQ: the quorum queue `switchboard.delivery`
//! (bound to `channel.#` on the outbound exchange) that the worker consumes, and the dead
//! deliveries it gives up on, kept in the dead-letter queue beside the inbound ones and sent
//! again on an admin's word.
//!
//! The queue has a single active consumer: requests of one conversation must reach their
//! provider in order, and a queue shared by several consumers hands consecutive messages to
//! different daemons, which would then race each other. The other daemons' consumers stand by
//! and the broker hands the queue to one of them the moment the active one's channel closes
//! (a crash included), with every unacknowledged request redelivered: nothing is lost and the
//! order holds. Sharing the work between daemons comes with partitioned ownership (cluster
//! mode), where each partition keeps its own order.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::{broker, cloudevent, confirmation, quorum, text};
use crate::config::AmqpConfig;
use crate::engine::Millis;
use crate::store::{DeadDelivery, OutboxEntry};
use crate::transport::TransportError;

/// Headers a dead delivery carries besides the request's own: why it died.
const ERROR: &str = "switchboard-error";
const ERROR_DETAIL: &str = "switchboard-error-detail";
const ROUTING_KEY: &str = "switchboard-routing-key";
/// Marks a dead letter as a delivery (the dead queue also holds inbound messages).
const ATTEMPTS: &str = "switchboard-delivery-attempts";
const FAILED_AT: &str = "switchboard-failed-at";

/// The delivery worker's connection: a consuming channel and two confirm-mode publishing
/// channels (dead deliveries; requests sent again), plus one for an admin's reads of the dead
/// queue, so that a listing never disturbs the consumer's delivery tags.
pub struct DeliveryQueue {
    connection: Connection,
    consume: Channel,
    dead: Channel,
    admin: Channel,
    names: AmqpConfig,
}

impl std::fmt::Debug for DeliveryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryQueue")
            .field("queue", &self.names.delivery_queue)
            .finish_non_exhaustive()
    }
}

impl DeliveryQueue {
    /// Connects and declares the outbound exchange, the dead queue and the delivery queue
    /// (idempotent, as every daemon of a deployment declares them).
    pub async fn connect(config: &AmqpConfig, prefetch: u16) -> Result<Self, TransportError> {
        let properties =
            ConnectionProperties::default().with_connection_name("switchboard-delivery".into());
        let connection = Connection::connect(config.url.expose(), properties)
            .await
            .map_err(broker)?;
        let consume = connection.create_channel().await.map_err(broker)?;
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let dead = connection.create_channel().await.map_err(broker)?;
        dead.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        let admin = connection.create_channel().await.map_err(broker)?;
        admin
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        declare(&consume, config).await?;
        Ok(Self {
            connection,
            consume,
            dead,
            admin,
            names: config.clone(),
        })
    }

    pub fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Starts consuming (the broker makes this consumer the active one, or keeps it waiting
    /// while another daemon's is).
    pub async fn consume(&self, tag: &str) -> Result<Requests, TransportError> {
        let consumer = self
            .consume
            .basic_consume(
                self.names.delivery_queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(Requests { consumer })
    }

    /// Puts a request the worker gave up on into the dead queue, with why, and waits for the
    /// broker's confirmation (the caller acknowledges the request only afterwards).
    pub async fn bury(&self, dead: &DeadDelivery) -> Result<(), TransportError> {
        let (properties, _) = cloudevent(&dead.entry);
        let mut headers = properties.headers().clone().unwrap_or_default();
        let mut header = |name: &str, value: &str| {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        };
        header(ERROR, &dead.code);
        header(ERROR_DETAIL, &dead.detail);
        header(ROUTING_KEY, &dead.entry.routing_key);
        header(ATTEMPTS, &dead.attempts.to_string());
        header(FAILED_AT, &dead.failed_at.0.to_string());
        let properties = properties.with_headers(headers);
        let confirm = self
            .dead
            .basic_publish(
                "".into(),
                self.names.dead_letter_queue.as_str().into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &dead.entry.body,
                properties,
            )
            .await
            .map_err(broker)?;
        confirmation(confirm.await.map_err(broker))
    }

    /// Up to `limit` dead deliveries, read without taking them: each is fetched unacknowledged
    /// and returned to the queue at the end (the inbound dead letters among them too).
    pub async fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, TransportError> {
        let held = self.hold_dead_queue(Some(limit)).await?;
        let found = held
            .iter()
            .filter_map(|(_, dead)| dead.clone())
            .take(limit)
            .collect();
        if let Some((tag, _)) = held.last() {
            self.release(*tag, true).await?;
        }
        Ok(found)
    }

    /// Sends dead deliveries again (those with the given ids, or all): each is published into
    /// the outbound exchange under its first routing key, confirmed, and only then taken out
    /// of the dead queue. Everything else in the dead queue goes back to it. Returns the ids
    /// sent again.
    pub async fn resend(&self, ids: Option<&[String]>) -> Result<Vec<String>, TransportError> {
        let mut resent = Vec::new();
        for (tag, dead) in self.hold_dead_queue(None).await? {
            let Some(dead) = dead.filter(|dead| ids.is_none_or(|ids| ids.contains(&dead.entry.id)))
            else {
                self.release(tag, false).await?;
                continue;
            };
            let (properties, routing_key) = cloudevent(&dead.entry);
            let published = self
                .admin
                .basic_publish(
                    self.names.outbound_exchange.as_str().into(),
                    routing_key,
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &dead.entry.body,
                    properties,
                )
                .await
                .map_err(broker)?;
            confirmation(published.await.map_err(broker))?;
            self.admin
                .basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(broker)?;
            resent.push(dead.entry.id);
        }
        Ok(resent)
    }

    /// The messages in the dead queue, fetched unacknowledged (held until acknowledged or
    /// returned), each with its dead delivery (`None` for an inbound dead letter): all of them,
    /// or only until `enough` dead deliveries were found.
    async fn hold_dead_queue(
        &self,
        enough: Option<usize>,
    ) -> Result<Vec<(u64, Option<DeadDelivery>)>, TransportError> {
        let mut held = Vec::new();
        let mut found = 0;
        for _ in 0..self.dead_queue_length().await? {
            if enough.is_some_and(|enough| found >= enough) {
                break;
            }
            let Some(message) = self
                .admin
                .basic_get(
                    self.names.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(broker)?
            else {
                break;
            };
            let dead = dead_delivery(&message.delivery.properties, &message.delivery.data);
            found += usize::from(dead.is_some());
            held.push((message.delivery.delivery_tag, dead));
        }
        Ok(held)
    }

    /// Returns held dead letters to the queue: `tag` alone, or with every one before it.
    async fn release(&self, tag: u64, multiple: bool) -> Result<(), TransportError> {
        self.admin
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple,
                    requeue: true,
                },
            )
            .await
            .map_err(broker)
    }

    async fn dead_queue_length(&self) -> Result<u32, TransportError> {
        let queue = self
            .admin
            .queue_declare(
                self.names.dead_letter_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(queue.message_count())
    }

    /// Deletes the delivery queue (tests clean up after themselves).
    pub async fn delete_queue(&self) -> Result<(), TransportError> {
        self.consume
            .queue_delete(
                self.names.delivery_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .map(|_| ())
            .map_err(broker)
    }

    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "switchboard shutting down".into())
            .await;
    }
}

/// Declares the outbound exchange, the dead queue and the delivery queue, bound to
/// `channel.#` (idempotent: every daemon of a deployment declares them, the main connection
/// before its outbox publisher starts, so that no provider request is published while nothing
/// is bound to take it).
pub(super) async fn declare(channel: &Channel, config: &AmqpConfig) -> Result<(), TransportError> {
    super::durable_exchange(channel, &config.outbound_exchange, ExchangeKind::Topic).await?;
    channel
        .queue_declare(
            config.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum([]),
        )
        .await
        .map_err(broker)?;
    channel
        .queue_declare(
            config.delivery_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum([("x-single-active-consumer", AMQPValue::Boolean(true))]),
        )
        .await
        .map_err(broker)?;
    channel
        .queue_bind(
            config.delivery_queue.as_str().into(),
            config.outbound_exchange.as_str().into(),
            "channel.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    Ok(())
}

/// The delivery queue's requests.
pub struct Requests {
    consumer: Consumer,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests")
    }
}

/// One request taken from the delivery queue.
#[derive(Debug)]
pub struct Request {
    pub entry: OutboxEntry,
    /// The broker gave it before to a consumer that did not acknowledge it: it may have
    /// reached the provider already (its answer lost in a crash).
    pub redelivered: bool,
    pub ack: RequestAck,
}

impl Requests {
    /// The next request; `None` when the consumer ended (channel closed, connection lost).
    pub async fn next(&mut self) -> Option<Result<Request, TransportError>> {
        let delivery = self.consumer.next().await?;
        Some(delivery.map_err(broker).map(|delivery| {
            let mut entry = entry_of(&delivery.properties, &delivery.data);
            entry.routing_key = delivery.routing_key.to_string();
            Request {
                entry,
                redelivered: delivery.redelivered,
                ack: RequestAck(delivery.acker),
            }
        }))
    }
}

/// Acknowledges one request (never those before it: requests of different conversations
/// finish in any order).
pub struct RequestAck(lapin::Acker);

impl std::fmt::Debug for RequestAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestAck")
    }
}

impl RequestAck {
    /// `Ok(false)` or an error: the channel is gone and the broker hands the request out again.
    pub async fn ack(&self) -> Result<bool, TransportError> {
        self.0
            .ack(BasicAckOptions { multiple: false })
            .await
            .map_err(broker)
    }
}

/// The outbox entry a request was published from (CloudEvents binary mode, read back).
fn entry_of(properties: &BasicProperties, body: &[u8]) -> OutboxEntry {
    let mut entry = OutboxEntry {
        id: properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        routing_key: String::new(),
        event_type: String::new(),
        subject: None,
        time: properties
            .timestamp()
            .map_or_else(crate::clock::now, |seconds| {
                Millis(
                    i64::try_from(seconds)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(1000),
                )
            }),
        content_type: properties
            .content_type()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        headers: Vec::new(),
        body: body.to_vec(),
    };
    let Some(table) = properties.headers() else {
        return entry;
    };
    for (name, value) in table.inner() {
        let Some(value) = text(value) else { continue };
        match name.as_str() {
            "cloudEvents_id" if entry.id.is_empty() => entry.id = value,
            "cloudEvents_type" => entry.event_type = value,
            "cloudEvents_subject" => entry.subject = Some(value),
            ROUTING_KEY => entry.routing_key = value,
            ERROR | ERROR_DETAIL | ATTEMPTS | FAILED_AT => {}
            name if name.starts_with("cloudEvents_") => {}
            name => entry.headers.push((name.to_owned(), value)),
        }
    }
    entry
}

/// A dead letter read back as a dead delivery; `None` for an inbound dead letter.
fn dead_delivery(properties: &BasicProperties, body: &[u8]) -> Option<DeadDelivery> {
    let table = properties.headers().as_ref()?;
    let get = |name: &str| {
        table
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == name)
            .and_then(|(_, value)| text(value))
    };
    let attempts = get(ATTEMPTS)?.parse().unwrap_or(0);
    Some(DeadDelivery {
        code: get(ERROR).unwrap_or_default(),
        detail: get(ERROR_DETAIL).unwrap_or_default(),
        attempts,
        failed_at: Millis(
            get(FAILED_AT)
                .and_then(|at| at.parse().ok())
                .unwrap_or_default(),
        ),
        entry: entry_of(properties, body),
    })
}
