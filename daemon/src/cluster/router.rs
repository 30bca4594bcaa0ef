//! Cluster decode: whichever node takes an inbound message decodes it (the same decode the
//! single daemon's pipeline runs: plugin, message-derived event ids, sentiment) and routes its
//! events to their partitions — one input per partition, its events in their order — and the
//! message is acknowledged only once the broker confirmed every one of them. A message that
//! does not decode is refused with its reason, for the consumer to dead-letter as a single
//! daemon does. Commands go the
//! same way to their conversation's partition and wait for the owner's answer (direct
//! reply-to), so any node answers any command after the owner's commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Placement;
use super::worker::{PartitionInput, Route, route};
use crate::engine::{ChannelEvent, Command, Millis, Refusal, Reply};
use crate::metrics::Metrics;
use crate::pipeline::{DecodeError, decode};
use crate::plugin::Plugin;
use crate::transport::amqp::AmqpTransport;
use crate::transport::amqp::partition::{Partitions, Requests};
use crate::transport::{InboundMessage, TransportError};
use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The message cannot become events: dead-letter it with this reason.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The partitions did not take them: do not acknowledge (the broker redelivers; the
    /// partitions' engines take a repeated input as a duplicate).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A node's router: its plugins, and the partition queues.
#[derive(Debug, Clone)]
pub struct Router {
    plugins: HashMap<String, Arc<Plugin>>,
    payload_limit: usize,
    metrics: Arc<Metrics>,
    queues: Arc<Partitions>,
    placement: Placement,
}

impl Router {
    pub fn new(
        plugins: Vec<Arc<Plugin>>,
        payload_limit: usize,
        metrics: Arc<Metrics>,
        queues: Arc<Partitions>,
        placement: Placement,
    ) -> Self {
        Self {
            plugins: plugins
                .into_iter()
                .map(|plugin| (plugin.id().to_owned(), plugin))
                .collect(),
            payload_limit,
            metrics,
            queues,
            placement,
        }
    }

    /// Decodes `message` and routes its events; returns once the broker confirmed each
    /// partition's input, with the partitions that received one.
    pub async fn route(
        &self,
        message: &InboundMessage,
        now: Millis,
    ) -> Result<Vec<u32>, RouteError> {
        let sent = self.send(message, now).await?;
        Ok(sent.confirmed().await?)
    }

    /// Decodes `message` and publishes its events to their partitions without waiting for
    /// the broker's confirms: a consumer sends a whole batch in order (one channel keeps it),
    /// then waits for every confirm at once.
    pub async fn send(&self, message: &InboundMessage, now: Millis) -> Result<Sent, RouteError> {
        let events = tokio::task::block_in_place(|| {
            decode(
                &self.plugins,
                self.payload_limit,
                &self.metrics,
                message,
                now,
            )
        })?;
        // The input's id names the message and the partition: a partition's queue then holds
        // a redelivered message's input under the same id.
        let base = message.message_id.as_deref().unwrap_or("inbound");
        Ok(self.send_events(events, base).await?)
    }

    /// Publishes canonical events the node made itself (delivery receipts, voice events
    /// already decoded) to their partitions, each input named `<base>@<partition>`.
    pub async fn send_events(
        &self,
        events: Vec<ChannelEvent>,
        base: &str,
    ) -> Result<Sent, TransportError> {
        let inputs = split(events, &self.placement);
        let mut sent = Sent {
            partitions: Vec::with_capacity(inputs.len()),
            confirms: Vec::with_capacity(inputs.len()),
        };
        for (partition, events) in inputs {
            let body = serde_json::to_vec(&PartitionInput::Events { events })
                .map_err(|error| TransportError::Rejected(error.to_string()))?;
            sent.confirms.push(
                self.queues
                    .route(partition, &format!("{base}@{partition}"), &body)
                    .await?,
            );
            sent.partitions.push(partition);
        }
        Ok(sent)
    }
}

impl Router {
    /// Tells `partition` the units each agent holds in the other partitions, once the broker
    /// confirmed it.
    pub async fn send_loads(
        &self,
        partition: u32,
        loads: Vec<(crate::engine::AgentId, u32)>,
    ) -> Result<(), TransportError> {
        let body = serde_json::to_vec(&PartitionInput::Loads { loads })
            .map_err(|error| TransportError::Rejected(error.to_string()))?;
        self.queues
            .route(partition, &format!("loads@{partition}"), &body)
            .await?
            .await
    }
}

/// Inputs published to their partitions, not yet confirmed.
#[derive(Debug)]
pub struct Sent {
    partitions: Vec<u32>,
    confirms: Vec<crate::transport::amqp::Confirm>,
}

impl Sent {
    /// Waits for the broker's confirms; returns the partitions that received an input.
    pub async fn confirmed(self) -> Result<Vec<u32>, TransportError> {
        for confirm in self.confirms {
            confirm.await?;
        }
        Ok(self.partitions)
    }
}

/// How long a command waits for its partition's answer before the caller is told to retry
/// (a take-over in progress lasts up to a lease).
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A command's answer from its partition (or partitions).
#[derive(Debug)]
pub enum Answered {
    Reply(Result<Reply, Refusal>),
    /// No answer in time: it may or may not have been applied; retry (with the same
    /// `Idempotency-Key`, the partition's engine answers a repeat with the first answer).
    Unanswered,
}

impl Router {
    /// Sends `command` to the partition of its conversation and waits for the answer the
    /// owner gives after its commit. An action for no conversation (an agent's presence, the
    /// seats sweep) goes to every partition, each engine keeping its own view of agents: the
    /// answer is the first refusal, else the first partition's reply. Such an action is not
    /// atomic across partitions: the partitions asked before a refusal have applied it (each
    /// answers a repeat with the same idempotency key with its first answer, so a retry
    /// completes it).
    pub async fn command(
        &self,
        requests: &Requests,
        command: &Command,
        timeout: std::time::Duration,
    ) -> Result<Answered, RouteError> {
        let partitions: Vec<u32> = match command.action.conversation() {
            Some(id) => vec![self.placement.of_conversation(id)],
            None => (0..self.placement.count()).collect(),
        };
        let body = serde_json::to_vec(&PartitionInput::Command {
            command: command.clone(),
        })
        .map_err(|error| TransportError::Rejected(error.to_string()))?;
        let id = command
            .idempotency
            .as_ref()
            .map_or_else(|| "command".to_owned(), |key| key.key.to_string());
        let mut first = None;
        for partition in partitions {
            let Some(answer) = requests.ask(partition, &id, &body, timeout).await? else {
                return Ok(Answered::Unanswered);
            };
            let answer: Result<Reply, Refusal> = serde_json::from_slice(&answer)
                .map_err(|error| TransportError::Rejected(error.to_string()))?;
            if answer.is_err() {
                return Ok(Answered::Reply(answer));
            }
            first.get_or_insert(answer);
        }
        Ok(first.map_or(Answered::Unanswered, Answered::Reply))
    }
}

/// Consumes the inbound queue until `stop`: each batch (the deliveries already buffered, up
/// to `prefetch`) is decoded and published to the partitions in order, the broker's confirms
/// awaited, what cannot be decoded dead-lettered with its reason, and then the batch
/// acknowledged. One node at a time does this (the owner of partition 0, see
/// `worker::serve_partition`): two consumers taking turns on one queue would let a
/// conversation's later message reach its partition before an earlier one.
pub async fn consume_inbound(
    router: &Router,
    transport: &AmqpTransport,
    prefetch: u16,
    stop: &CancellationToken,
) -> Result<(), TransportError> {
    // On a channel of its own, closed when this node stops decoding: what it had been handed
    // and not acknowledged goes back to the queue at once for the next decoder, ahead of what
    // came after it.
    let mut deliveries = transport.consume_apart("switchboard-cluster").await?;
    tracing::info!("decoding the inbound queue for the cluster");
    let ended = decode_until(router, transport, &mut deliveries, prefetch, stop).await;
    deliveries.stop().await;
    ended
}

/// [`consume_inbound`]'s loop.
async fn decode_until(
    router: &Router,
    transport: &AmqpTransport,
    deliveries: &mut crate::transport::amqp::Deliveries,
    prefetch: u16,
    stop: &CancellationToken,
) -> Result<(), TransportError> {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Err(TransportError::Broker("the broker ended the consumer".to_owned())),
            },
        };
        let mut batch: Vec<InboundMessage> = vec![first];
        while batch.len() < usize::from(prefetch) {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                _ => break,
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for message in &batch {
            match router.send(message, crate::clock::now()).await {
                Ok(sent) => outcomes.push(Ok(sent)),
                Err(RouteError::Decode(error)) => outcomes.push(Err(error)),
                // Nothing of the batch is acknowledged: the broker redelivers it, and the
                // partitions take a repeated input as a duplicate.
                Err(RouteError::Transport(error)) => return Err(error),
            }
        }
        for (message, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Ok(sent) => {
                    sent.confirmed().await?;
                    router.metrics.count(
                        crate::metrics::family::INBOUND_TOTAL,
                        &[&message.routing_key, "routed"],
                        1,
                    );
                }
                Err(error) => {
                    tracing::warn!(routing_key = %message.routing_key, code = %error.code(), detail = %crate::telemetry::content(&error.to_string()), "dead-lettering a message");
                    transport
                        .dead_letter(message, error.code(), &error.to_string())
                        .await?;
                    router.metrics.count(
                        crate::metrics::family::INBOUND_TOTAL,
                        &[&message.routing_key, "dead-lettered"],
                        1,
                    );
                }
            }
        }
        if let Some(last) = batch.last().and_then(|message| message.ack.as_ref())
            && !last.ack_through().await?
        {
            return Err(TransportError::Broker(
                "acknowledgement lost with the channel; messages will be redelivered".to_owned(),
            ));
        }
    }
}

/// Events grouped by partition, each group in the message's order; an event for every
/// partition (an agent's presence) goes into each.
pub fn split(events: Vec<ChannelEvent>, placement: &Placement) -> BTreeMap<u32, Vec<ChannelEvent>> {
    let mut inputs: BTreeMap<u32, Vec<ChannelEvent>> = BTreeMap::new();
    for event in events {
        match route(&event, placement) {
            Route::Partition(partition) => inputs.entry(partition).or_default().push(event),
            Route::Every => {
                for partition in 0..placement.count() {
                    inputs.entry(partition).or_default().push(event.clone());
                }
            }
        }
    }
    inputs
}
