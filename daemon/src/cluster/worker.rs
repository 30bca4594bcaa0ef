//! Cluster apply: one partition served while this node holds its lease. Its engine is rebuilt
//! from PostgreSQL, its queue consumed, each batch of inputs (canonical events and commands
//! the router put there) applied and committed under the lease's epoch, commands answered,
//! and only then acknowledged. A fenced commit (the lease was taken over) or a stop (the
//! keeper handed the partition over) closes the partition's channel without acknowledging
//! what was not committed: the next owner receives it first, and the engine's deduplication
//! makes a redelivered input change nothing.

use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::engine::{ChannelEvent, Command, Engine, Partitioning, Setup};
use crate::metrics::Metrics;
use crate::outbox::{self, CONFIRM_TIMEOUT, OutboxFeed};
use crate::pipeline::{Completion, Pipeline, Submission};
use crate::plugin::Plugin;
use crate::store::postgres::{Database, Lease, PostgresStore};
use crate::store::{Store, StoreError};
use crate::transport::TransportError;
use crate::transport::amqp::AmqpTransport;
use crate::transport::amqp::partition::{PartitionMessage, Partitions};

/// Inputs taken from the queue at most per commit (those already waiting: a commit never
/// waits for more).
const BATCH: usize = 64;
/// Unacknowledged inputs the broker may hand the owner at once.
const PREFETCH: u16 = 256;
/// How often the owner's clock ticks, as the single daemon's.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a partition stopped being served without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (handed over, or the node stopping).
    Stopped,
    /// A commit was refused: another node took the partition over.
    Fenced,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the partition's queue closed")]
    Closed,
    #[error("the partition's outbox publisher stopped (the broker failed or stopped confirming)")]
    Publisher,
    #[error("decoding the inbound queue stopped (the broker failed)")]
    Decoding,
}

/// What serving a partition needs besides its lease.
#[derive(Debug, Clone)]
pub struct PartitionContext {
    pub database: Database,
    pub queues: Arc<Partitions>,
    /// Where the partition's outbox is published (its notifications and provider requests);
    /// `None` leaves it in PostgreSQL for another publisher.
    pub transport: Option<Arc<AmqpTransport>>,
    pub metrics: Arc<Metrics>,
    /// The roster and policies every partition's engine is built from.
    pub setup: Setup,
    pub plugins: Vec<Arc<Plugin>>,
    pub partitions: u32,
    /// Records between two snapshots of a partition (at least; see `service::snapshot_due`).
    pub snapshot_every: u64,
    /// What this node serves, for `/readyz`.
    pub ownership: Arc<super::Ownership>,
    /// The inbound queue's decoding, which the owner of partition 0 does for the cluster
    /// (`None`: the inbound queue is left alone, as in tests of the partitions alone).
    pub inbound: Option<InboundDuty>,
}

/// What decoding the inbound queue needs: the router, the broker connection, the prefetch.
#[derive(Debug, Clone)]
pub struct InboundDuty {
    pub router: super::router::Router,
    pub transport: Arc<AmqpTransport>,
    pub prefetch: u16,
}

/// The partition whose owner decodes the inbound queue.
pub const DECODING_PARTITION: u32 = 0;

/// Serves `lease`'s partition until `stop` is cancelled, a commit is fenced, or an error.
/// Runs on a multi-threaded runtime (commits block their thread).
pub async fn serve_partition(
    lease: Lease,
    context: &PartitionContext,
    stop: CancellationToken,
) -> Result<Ended, WorkerError> {
    let partition = lease.partition;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&context.database, &lease));
    let recovery = tokio::task::block_in_place(|| store.recover())?;
    let setup = Setup {
        partitioning: Some(Partitioning {
            partition,
            count: context.partitions,
        }),
        ..context.setup.clone()
    };
    let snapshot_seq = recovery
        .snapshot
        .as_ref()
        .map_or(0, |snapshot| snapshot.last_seq);
    let engine = Engine::restore(setup, recovery.snapshot, &recovery.records);
    let feed = Arc::new(OutboxFeed::new());
    let mut pipeline = Pipeline::new(engine, context.plugins.clone(), store.clone())
        .with_outbox_feed(feed.clone());
    let publishing = CancellationToken::new();
    let publisher = context.transport.clone().map(|transport| {
        let (store, metrics, feed, stop) = (
            store.clone(),
            context.metrics.clone(),
            feed.clone(),
            publishing.clone(),
        );
        tokio::spawn(async move {
            outbox::publish(
                store.as_ref(),
                &metrics,
                &feed,
                &transport,
                &stop,
                CONFIRM_TIMEOUT,
            )
            .await
        })
    });
    let mut snapshots = Snapshots {
        store,
        every: context.snapshot_every,
        last: snapshot_seq,
        writing: None,
    };
    // The owner of the decoding partition also decodes the inbound queue, for exactly as
    // long as it serves the partition: it stops before the lease is handed over.
    let decoding_stop = stop.child_token();
    let decoding = context
        .inbound
        .clone()
        .filter(|_| partition == DECODING_PARTITION)
        .map(|duty| {
            let stop = decoding_stop.clone();
            tokio::spawn(async move {
                let ended = super::router::consume_inbound(
                    &duty.router,
                    &duty.transport,
                    duty.prefetch,
                    &stop,
                )
                .await;
                if let Err(error) = &ended {
                    tracing::warn!(%error, "decoding the inbound queue stopped");
                }
                ended
            })
        });
    let ended = apply(
        partition,
        lease.epoch,
        context,
        &mut pipeline,
        &mut snapshots,
        &stop,
        Companions {
            publisher: publisher.as_ref(),
            decoding: decoding.as_ref(),
        },
    )
    .await;
    decoding_stop.cancel();
    if let Some(decoding) = decoding {
        let _ = decoding.await;
    }
    // What was committed is published before the partition is let go (or, should the broker
    // be away, by the next owner, which reads the outbox from PostgreSQL first).
    publishing.cancel();
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    ended
}

/// The apply loop of [`serve_partition`].
async fn apply(
    partition: u32,
    epoch: u64,
    context: &PartitionContext,
    pipeline: &mut Pipeline,
    snapshots: &mut Snapshots,
    stop: &CancellationToken,
    companions: Companions<'_>,
) -> Result<Ended, WorkerError> {
    let mut consumer = context
        .queues
        .consume(partition, &format!("partition-{partition}"), PREFETCH)
        .await?;
    tracing::info!(partition, epoch, "serving a partition");
    // The owner runs the partition's clock (inactivity timeouts, wrap-up capacity, eviction),
    // committed under its lease like any input.
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(failed) = companions.failed() {
            consumer.stop().await;
            return Err(failed);
        }
        let first = tokio::select! {
            () = stop.cancelled() => {
                consumer.stop().await;
                return Ok(Ended::Stopped);
            }
            _ = ticker.tick() => {
                match tokio::task::block_in_place(|| pipeline.tick(now())) {
                    Ok(()) => snapshots.after_commit(pipeline),
                    Err(StoreError::Fenced { current, .. }) => {
                        return fenced(context, partition, epoch, current, consumer).await;
                    }
                    Err(error) => {
                        consumer.stop().await;
                        return Err(error.into());
                    }
                }
                continue;
            }
            next = consumer.next() => next,
        };
        let mut messages = vec![first.ok_or(WorkerError::Closed)??];
        while messages.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(message)) => messages.push(message?),
                _ => break,
            }
        }
        // Each message's submission, and where its answer goes (commands).
        let (replies, submissions): (Vec<_>, Vec<_>) = messages
            .iter()
            .filter_map(|message| Some((message.reply_to.clone(), submission(message)?)))
            .unzip();
        match tokio::task::block_in_place(|| pipeline.submit(submissions, now())) {
            Ok(completions) => {
                // Answered after the commit, before the acknowledgement: a requester never
                // hears of what is not durable, and a lost answer only makes it retry.
                for (reply_to, completion) in replies.into_iter().zip(completions) {
                    if let (Some((to, correlation)), Completion::Command(answer)) =
                        (reply_to, completion)
                    {
                        let body = serde_json::to_vec(&answer).unwrap_or_default();
                        if let Err(error) = context.queues.reply(&to, &correlation, &body).await {
                            tracing::warn!(partition, %error, "a command's answer was not delivered; its caller retries");
                        }
                    }
                }
                if let Some(last) = messages.last() {
                    last.ack_through().await?;
                }
                snapshots.after_commit(pipeline);
            }
            Err(StoreError::Fenced { current, .. }) => {
                return fenced(context, partition, epoch, current, consumer).await;
            }
            Err(error) => {
                consumer.stop().await;
                return Err(error.into());
            }
        }
    }
}

/// The tasks a worker runs beside its apply loop; when one ends, the worker ends with an
/// error and the node starts it (and them) again.
struct Companions<'a> {
    /// Publishes the partition's outbox.
    publisher: Option<&'a tokio::task::JoinHandle<outbox::PublishEnd>>,
    /// Decodes the inbound queue (the decoding partition only).
    decoding: Option<&'a tokio::task::JoinHandle<Result<(), TransportError>>>,
}

impl Companions<'_> {
    fn failed(&self) -> Option<WorkerError> {
        if self.publisher.is_some_and(|task| task.is_finished()) {
            return Some(WorkerError::Publisher);
        }
        if self.decoding.is_some_and(|task| task.is_finished()) {
            return Some(WorkerError::Decoding);
        }
        None
    }
}

/// A commit was refused: another node took the partition over. Stops consuming without
/// acknowledging what was not committed (its next owner receives it).
async fn fenced(
    context: &PartitionContext,
    partition: u32,
    epoch: u64,
    current: u64,
    consumer: crate::transport::amqp::partition::PartitionConsumer,
) -> Result<Ended, WorkerError> {
    context.metrics.count(
        crate::metrics::family::CLUSTER_FENCED_WRITES_TOTAL,
        &[&partition.to_string()],
        1,
    );
    tracing::warn!(
        partition,
        epoch,
        current,
        "partition taken over: stopped serving it"
    );
    consumer.stop().await;
    Ok(Ended::Fenced)
}

/// A partition's snapshots, written beside its commits as the single daemon writes its own
/// (`service::snapshot_due`): one at a time, off the apply loop.
struct Snapshots {
    store: Arc<dyn Store>,
    every: u64,
    /// The seq of the newest snapshot written or being written.
    last: u64,
    writing: Option<tokio::task::JoinHandle<()>>,
}

impl Snapshots {
    fn after_commit(&mut self, pipeline: &Pipeline) {
        let state = pipeline.engine().state();
        let due = crate::service::snapshot_due(
            state.last_seq(),
            self.last,
            state.conversation_count() as u64,
            self.every,
        );
        if !due
            || self
                .writing
                .as_ref()
                .is_some_and(|writing| !writing.is_finished())
        {
            return;
        }
        self.last = state.last_seq();
        let snapshot = state.snapshot();
        let store = self.store.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = store.write_snapshot(&snapshot) {
                tracing::warn!(%error, "cannot write a partition's snapshot; its log keeps growing");
            }
        }));
    }
}

/// What a partition's queue carries.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PartitionInput {
    /// One inbound message's events for this partition, in their order.
    Events { events: Vec<ChannelEvent> },
    /// A supervisor's or gateway's command, answered to its `reply_to` after the commit.
    Command { command: Command },
    /// The units each agent holds in the other partitions (see `cluster::serve`).
    Loads {
        loads: Vec<(crate::engine::AgentId, u32)>,
    },
}

/// A partition input as the pipeline takes it. The router wrote it, so one that does not
/// decode is a bug of this version: logged, and acknowledged with its batch (sending it back
/// would stop the partition on it forever).
fn submission(message: &PartitionMessage) -> Option<Submission> {
    match serde_json::from_slice::<PartitionInput>(&message.body) {
        Ok(PartitionInput::Events { events }) => Some(Submission::Events(events)),
        Ok(PartitionInput::Command { command }) => Some(Submission::Command(command)),
        Ok(PartitionInput::Loads { loads }) => Some(Submission::LoadsElsewhere(loads)),
        Err(error) => {
            tracing::error!(message_id = ?message.message_id, %error, "a partition input that does not decode; skipped");
            None
        }
    }
}

/// Where a canonical event goes: the partition of its thread or conversation, or every
/// partition for what concerns no conversation (an agent's presence, which every partition's
/// engine keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Partition(u32),
    Every,
}

pub fn route(event: &ChannelEvent, placement: &super::Placement) -> Route {
    use crate::engine::{ConversationRef, EventConversation};
    match event.body.conversation() {
        Some(EventConversation::Thread(thread))
        | Some(EventConversation::Reference(ConversationRef::External(thread))) => {
            Route::Partition(Partitioning::of_thread(
                placement.count(),
                thread.plugin.as_str(),
                &thread.key,
            ))
        }
        Some(EventConversation::Reference(ConversationRef::Id { id })) => {
            Route::Partition(placement.of_conversation(*id))
        }
        None => Route::Every,
    }
}
