//! The running daemon's shared parts, between the wiring (`app.rs`) and its two front doors
//! (the transports and the admin API): the pipeline behind its single-writer lock, the store,
//! the live stream hub, the metrics, the plugins and the readiness of each component.
//!
//! Work that arrives over HTTP (commands, `POST /v1/inbound/...`) goes through
//! [`Service::submit`] to one writer task that gathers whatever is waiting and commits it in
//! one durable transaction (group commit), then answers every caller: an answer is never given
//! before what it reports is on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, RwLock, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::metrics::family;
use crate::outbox::OutboxFeed;
use crate::pipeline::{Completion, Pipeline, Submission};
use crate::plugin::{Health, Plugin};
use crate::store::Store;
use crate::stream::StreamHub;

/// Submissions one writer round takes at most (one commit).
const WRITER_BATCH: usize = 512;
/// Submissions waiting for the writer before callers are told to slow down.
const WRITER_QUEUE: usize = 8192;
/// A snapshot is written after at least this many records, and the log behind it dropped.
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// Whether the log grew enough since the snapshot at `previous` for another: at least `every`
/// records and at least as many as there are `conversations` in memory (see
/// `Service::committed`; a cluster's partition workers follow the same rule).
pub fn snapshot_due(last_seq: u64, previous: u64, conversations: u64, every: u64) -> bool {
    last_seq.saturating_sub(previous) >= every.max(conversations)
}

/// Why a submission got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The writer's queue is full (back-pressure): retry later.
    #[error("the daemon is busy; retry shortly")]
    Busy,
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    Stopping,
    /// The durable commit failed: nothing was applied for good.
    #[error("the store could not commit: {0}")]
    Store(String),
    /// Cluster mode: the partition's owner did not answer in time (a take-over in progress).
    /// The command may have been applied: retry with the same `Idempotency-Key`.
    #[error(
        "the conversation's partition did not answer in time (its owner may be changing); retry with the same Idempotency-Key"
    )]
    Unanswered,
    /// Cluster mode: the broker did not take the submission to its partitions.
    #[error("the partitions could not be reached: {0}")]
    Unavailable(String),
}

type Job = (Submission, oneshot::Sender<Result<Completion, SubmitError>>);

/// The daemon's shared state. Cheap to share (`Arc`).
pub struct Service {
    /// Writers (the transports' batches, the HTTP writer, ticks) take it exclusively; reports
    /// share it, so concurrent readers run in parallel between commits.
    pipeline: RwLock<Pipeline>,
    store: Arc<dyn Store>,
    hub: Arc<StreamHub>,
    /// Who has a stream open and when each user was last heard from (the monitor lease).
    attendance: Arc<crate::attendance::Attendance>,
    metrics: Arc<Metrics>,
    plugins: Vec<Arc<Plugin>>,
    /// Wakes the embedded transport's outbox logger after a commit.
    pub outbox_ready: Notify,
    /// Told after each commit, for the delivery worker (a waiter of its own: `notify_one`
    /// wakes one waiter, or leaves a permit for the next).
    pub delivery_ready: Notify,
    /// Set when dead deliveries went back into the outbox under their own (older) ids: the
    /// worker reads the outbox from its start once.
    pub delivery_rescan: std::sync::atomic::AtomicBool,
    /// Committed entries on their way to the broker publisher or the embedded delivery worker.
    outbox_feed: Option<Arc<OutboxFeed>>,
    jobs: mpsc::Sender<Job>,
    job_queue: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    /// `None` without a broker; otherwise whether the daemon is consuming right now.
    broker: Option<AtomicBool>,
    last_snapshot_seq: AtomicU64,
    /// Cancelled when the daemon stops taking new work (long-lived responses end).
    pub stopping: CancellationToken,
    /// Cancelled when the daemon cannot go on (a commit failed): `app::run` stops and exits
    /// with an error, so that its supervisor restarts it from the store.
    pub fatal: CancellationToken,
    /// Cluster mode: submissions go to the partitions' owners instead of the writer, and the
    /// pipeline's engine is the read model's merged view.
    front: Option<Arc<crate::cluster::front::Front>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("plugins", &self.plugins.len())
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

/// A component's readiness, as `/readyz` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: ComponentStatus,
    pub broker: ComponentStatus,
    pub plugins: Vec<PluginStatus>,
    /// Cluster mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// A cluster node as `/readyz` shows it: its id, the cluster's partition count, and the
/// partitions it serves now with their lease epochs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub node_id: String,
    pub partitions: u32,
    pub owned: Vec<OwnedPartition>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OwnedPartition {
    pub partition: u32,
    pub epoch: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ComponentStatus {
    /// `up`, `down` or `not-configured`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginStatus {
    pub id: String,
    pub health: Health,
}

impl Service {
    /// Shares `pipeline` (already restored from `store`). `outbox_feed` is the feed the
    /// pipeline hands committed entries to (the broker's publisher, or the embedded delivery
    /// worker); `with_broker`: a broker is configured.
    pub fn new(
        pipeline: Pipeline,
        store: Arc<dyn Store>,
        plugins: Vec<Arc<Plugin>>,
        metrics: Arc<Metrics>,
        outbox_feed: Option<Arc<OutboxFeed>>,
        with_broker: bool,
    ) -> Self {
        let hub = pipeline.hub().clone();
        let last_seq = pipeline.engine().state().last_seq();
        let (jobs, queue) = mpsc::channel(WRITER_QUEUE);
        metrics.set_gauge(family::BROKER_CONNECTED, &[], 0);
        Self {
            pipeline: RwLock::new(pipeline),
            store,
            hub,
            attendance: Arc::new(crate::attendance::Attendance::new(now())),
            metrics,
            plugins,
            outbox_ready: Notify::new(),
            delivery_ready: Notify::new(),
            delivery_rescan: std::sync::atomic::AtomicBool::new(false),
            jobs,
            job_queue: std::sync::Mutex::new(Some(queue)),
            broker: with_broker.then(|| AtomicBool::new(false)),
            outbox_feed,
            last_snapshot_seq: AtomicU64::new(last_seq),
            stopping: CancellationToken::new(),
            fatal: CancellationToken::new(),
            front: None,
        }
    }

    /// A cluster node's service: `pipeline` holds the read model's merged view (never
    /// submitted to), `store` reads every partition, and submissions go through `front`.
    pub fn clustered(
        pipeline: Pipeline,
        store: Arc<dyn Store>,
        plugins: Vec<Arc<Plugin>>,
        metrics: Arc<Metrics>,
        front: Arc<crate::cluster::front::Front>,
    ) -> Self {
        Self {
            front: Some(front),
            ..Self::new(pipeline, store, plugins, metrics, None, true)
        }
    }

    /// Cluster mode: shows `engine` (the read model's newest merged view) to readers, and the
    /// stream events of the records it `followed` to the stream's subscribers.
    pub async fn show(&self, engine: Engine, followed: &[crate::pipeline::Followed]) {
        self.pipeline.write().await.show(engine, followed);
    }

    /// The feed of committed entries (`None` on the embedded transport without delivery).
    pub fn outbox_feed(&self) -> Option<&Arc<OutboxFeed>> {
        self.outbox_feed.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hub(&self) -> &Arc<StreamHub> {
        &self.hub
    }

    pub fn attendance(&self) -> &Arc<crate::attendance::Attendance> {
        &self.attendance
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// The pipeline, for the transports' batches (single writer: `write()`).
    pub fn pipeline(&self) -> &RwLock<Pipeline> {
        &self.pipeline
    }

    /// Runs `read` over the engine (report, roster) under a shared lock.
    pub async fn read<R>(&self, read: impl FnOnce(&Engine) -> R) -> R {
        let pipeline = self.pipeline.read().await;
        read(pipeline.engine())
    }

    /// Hands one submission to the writer and waits for its committed completion.
    pub async fn submit(&self, submission: Submission) -> Result<Completion, SubmitError> {
        if self.stopping.is_cancelled() {
            return Err(SubmitError::Stopping);
        }
        if let Some(front) = &self.front {
            return front.submit(submission, now()).await;
        }
        let (answer, answered) = oneshot::channel();
        self.jobs
            .try_send((submission, answer))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Stopping,
            })?;
        answered.await.map_err(|_| SubmitError::Stopping)?
    }

    /// The writer: gathers waiting submissions, applies them, commits once, answers. Runs until
    /// `stop` is cancelled, then answers what is still queued.
    pub async fn run_writer(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut queue) = self
            .job_queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        else {
            tracing::error!("the writer runs once per daemon");
            return;
        };
        loop {
            let first = tokio::select! {
                biased;
                job = queue.recv() => job,
                () = stop.cancelled() => {
                    // Finish what was accepted before the stop.
                    queue.close();
                    queue.recv().await
                }
            };
            let Some(first) = first else { return };
            let mut jobs = vec![first];
            while jobs.len() < WRITER_BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let (submissions, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
            let result = {
                let mut pipeline = self.pipeline.write().await;
                tokio::task::block_in_place(|| pipeline.submit(submissions, now()))
            };
            match result {
                Ok(completions) => {
                    for (answer, completion) in answers.into_iter().zip(completions) {
                        let _ = answer.send(Ok(completion));
                    }
                    self.committed().await;
                }
                Err(error) => {
                    tracing::error!(error = %error, "commit failed; nothing of it was answered as done");
                    for answer in answers {
                        let _ = answer.send(Err(SubmitError::Store(error.to_string())));
                    }
                    self.fatal.cancel();
                }
            }
        }
    }

    /// After a commit: wake the embedded outbox logger and the delivery worker; snapshot when
    /// the log grew enough.
    ///
    /// "Enough" is at least [`SNAPSHOT_EVERY`] records and at least as many records as there
    /// are conversations in memory: a snapshot costs in proportion to the state, replay in
    /// proportion to the log, so this keeps the snapshot cost per record bounded (a large state
    /// is not re-serialized every few seconds) and a restart's replay no longer than a
    /// snapshot's worth.
    pub async fn committed(&self) {
        self.outbox_ready.notify_one();
        self.delivery_ready.notify_one();
        let (last_seq, conversations) = {
            let pipeline = self.pipeline.read().await;
            let state = pipeline.engine().state();
            (state.last_seq(), state.conversation_count() as u64)
        };
        let previous = self.last_snapshot_seq.load(Ordering::Relaxed);
        if !snapshot_due(last_seq, previous, conversations, SNAPSHOT_EVERY)
            || self
                .last_snapshot_seq
                .compare_exchange(previous, last_seq, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Copy the state under the lock (cheap), write it without: serializing a large state
        // must not stall the stream. Under the lock the state is exactly what was committed —
        // unless a commit failed, and then nothing of it may reach the store.
        let snapshot = {
            let pipeline = self.pipeline.read().await;
            if pipeline.is_poisoned() {
                return;
            }
            pipeline.engine().state().snapshot()
        };
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match store.write_snapshot(&snapshot) {
                Ok(()) => {
                    metrics.observe_duration(family::SNAPSHOT_SECONDS, &[], started.elapsed())
                }
                Err(error) => {
                    tracing::error!(error = %error, "cannot write a snapshot; the log keeps growing");
                }
            }
        });
    }

    /// Outbox entries waiting for the broker's confirmation (0 on the embedded transport,
    /// whose outbox keeps entries on purpose). Confirmed entries that the next commit removes
    /// from the store do not count.
    pub fn outbox_backlog(&self) -> u64 {
        let (Some(feed), Some(_)) = (&self.outbox_feed, &self.broker) else {
            return 0;
        };
        let confirmed = feed.confirmed_len() as u64;
        self.store
            .outbox_len()
            .unwrap_or(0)
            .saturating_sub(confirmed)
    }

    /// Records whether the broker connection is up (no-op without a broker).
    pub fn set_broker_up(&self, up: bool) {
        if let Some(broker) = &self.broker {
            broker.store(up, Ordering::Relaxed);
            self.metrics
                .set_gauge(family::BROKER_CONNECTED, &[], i64::from(up));
        }
    }

    /// Store, broker and plugins, for `/readyz`. A plugin behind an open circuit breaker is
    /// reported but does not make the daemon unready: the other channels keep working, and
    /// taking the whole sidecar out of service would not heal the plugin.
    pub fn readiness(&self) -> Readiness {
        let store = match self.store.probe() {
            _ if self.fatal.is_cancelled() => ComponentStatus {
                status: "down",
                detail: Some("a commit failed; the daemon is stopping".to_owned()),
            },
            Ok(_) => ComponentStatus {
                status: "up",
                detail: None,
            },
            Err(error) => ComponentStatus {
                status: "down",
                detail: Some(error.to_string()),
            },
        };
        let broker = match &self.broker {
            None => ComponentStatus {
                status: "not-configured",
                detail: Some("embedded transport".to_owned()),
            },
            Some(up) if up.load(Ordering::Relaxed) => ComponentStatus {
                status: "up",
                detail: None,
            },
            Some(_) => ComponentStatus {
                status: "down",
                detail: Some("not connected to the broker; reconnecting".to_owned()),
            },
        };
        let plugins: Vec<PluginStatus> = self
            .plugins
            .iter()
            .map(|plugin| PluginStatus {
                id: plugin.id().to_owned(),
                health: plugin.health(),
            })
            .collect();
        let cluster = self.front.as_ref().map(|front| ClusterStatus {
            node_id: front.node_id.clone(),
            partitions: front.partitions,
            owned: front
                .ownership
                .held()
                .into_iter()
                .map(|(partition, epoch)| OwnedPartition { partition, epoch })
                .collect(),
        });
        Readiness {
            ready: store.status == "up" && broker.status != "down",
            store,
            broker,
            plugins,
            cluster,
        }
    }

    /// The tick task: inactivity timeouts, wrap-up capacity, eviction, once per `every`.
    pub async fn run_ticks(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = {
                let mut pipeline = self.pipeline.write().await;
                tokio::task::block_in_place(|| pipeline.tick(now()))
            };
            match result {
                Ok(()) => self.committed().await,
                Err(error) => {
                    tracing::error!(error = %error, "cannot commit a tick");
                    self.fatal.cancel();
                }
            }
        }
    }
}
