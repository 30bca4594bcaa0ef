//! The only wiring: configuration -> store -> plugin host -> engine (restored from the store)
//! -> pipeline, driven by the transport. Owns the tasks and their shutdown: stop consuming,
//! finish and acknowledge the batch in flight, flush the outbox, exit.
//!
//! With `[amqp] url` the daemon consumes RabbitMQ: a batch (the deliveries already buffered,
//! up to the prefetch) is decoded, applied and committed once (group commit),
//! dead letters are published and confirmed, then the batch is acknowledged through its last
//! delivery; a separate task publishes the outbox with confirms and marks entries sent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, Config};
use crate::engine::{Engine, Millis};
use crate::pipeline::{Disposition, Pipeline, plugin_policy};
use crate::plugin::{PluginHost, PluginSettings};
use crate::store::{RedbStore, Store};
use crate::transport::InboundMessage;
use crate::transport::amqp::AmqpTransport;

/// How often the clock ticks (inactivity timeouts, wrap-up capacity, eviction).
const TICK: Duration = Duration::from_secs(1);
/// A snapshot is written after this many records, and the log behind it dropped.
const SNAPSHOT_EVERY: u64 = 10_000;

/// Everything `serve` built, shared by its tasks.
struct Daemon {
    pipeline: Mutex<Pipeline>,
    store: Arc<dyn Store>,
    outbox_ready: Notify,
}

/// Builds the daemon from its configuration (store, plugins, engine restored from the store).
fn build(config: &Config) -> anyhow::Result<Daemon> {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&config.store.path).context("opening the store")?);
    let max_memory = config
        .plugins
        .iter()
        .map(|plugin| plugin.memory_limit as usize)
        .max()
        .unwrap_or(64 << 20);
    let host = PluginHost::new(max_memory, Some(config.store.path.join("plugin-cache")))
        .context("starting the plugin host")?;
    let mut plugins = Vec::new();
    let mut policies = Vec::new();
    for configured in config.plugins.iter().filter(|plugin| plugin.enabled) {
        let plugin = host
            .load(PluginSettings {
                id: configured.id.clone(),
                file: configured.file.clone(),
                memory_limit: configured.memory_limit as usize,
                time_limit: configured.time_limit,
                settings: configured.settings.expose().to_owned(),
            })
            .with_context(|| format!("loading plugin {}", configured.id))?;
        policies.push(plugin_policy(&plugin, &configured.default_queue));
        plugins.push(Arc::new(plugin));
    }
    let recovery = store.recover().context("reading the store")?;
    tracing::info!(
        snapshot = recovery
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.last_seq),
        records = recovery.records.len(),
        "restoring the engine"
    );
    let engine = Engine::restore(
        config.engine_setup(policies),
        recovery.snapshot,
        &recovery.records,
    );
    Ok(Daemon {
        pipeline: Mutex::new(Pipeline::new(engine, plugins, store.clone())),
        store,
        outbox_ready: Notify::new(),
    })
}

fn now() -> Millis {
    Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as i64)
            .unwrap_or(0),
    )
}

/// Runs the daemon until `shutdown` is cancelled (SIGTERM/SIGINT in `main`).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let daemon = Arc::new(tokio::task::block_in_place(|| build(&config))?);
    let Some(amqp) = config.amqp.clone() else {
        anyhow::bail!(
            "the embedded transport arrives with the admin API (POST /v1/inbound); set [amqp] url to run on RabbitMQ"
        );
    };
    let grace = config.server.shutdown_grace;
    let result = run_amqp(daemon.clone(), amqp, shutdown.clone()).await;
    // Whatever happened, what is committed stays in the outbox for the next start.
    tracing::info!(grace = ?grace, "stopped consuming");
    result
}

async fn run_amqp(
    daemon: Arc<Daemon>,
    amqp: AmqpConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let transport = match AmqpTransport::connect(&amqp, "switchboard").await {
            Ok(transport) => Arc::new(transport),
            Err(error) => {
                tracing::warn!(error = %error, retry_in = ?backoff, "broker unavailable");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        tracing::info!(queue = %amqp.inbound_queue, "consuming");
        let publisher_stop = CancellationToken::new();
        let publisher = tokio::spawn(publish_outbox(
            daemon.clone(),
            transport.clone(),
            publisher_stop.clone(),
        ));
        let outcome = consume(&daemon, &transport, &amqp, &shutdown).await;
        // Flush what the last batches committed, then stop the publisher.
        daemon.outbox_ready.notify_one();
        publisher_stop.cancel();
        let _ = publisher.await;
        transport.close().await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) => tracing::warn!(error = %error, "consumer ended; reconnecting"),
        }
    }
}

/// Consumes until shutdown (Ok) or until the consumer ends (Err: reconnect).
async fn consume(
    daemon: &Arc<Daemon>,
    transport: &Arc<AmqpTransport>,
    amqp: &AmqpConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut deliveries = transport.consume("switchboard").await?;
    let mut ticker = tokio::time::interval(TICK);
    let mut since_snapshot = 0u64;
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                let mut pipeline = daemon.pipeline.lock().await;
                tokio::task::block_in_place(|| pipeline.tick(now()))?;
                daemon.outbox_ready.notify_one();
                continue;
            }
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => anyhow::bail!("the broker ended the consumer"),
            },
        };
        // Group commit without an artificial wait: the first delivery plus whatever is already
        // buffered, up to the prefetch. Under load, deliveries pile up while the previous
        // commit's fsync runs, so batches grow exactly when they help.
        let mut batch = vec![first];
        while batch.len() < usize::from(amqp.prefetch) {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                _ => break,
            }
        }
        since_snapshot += batch.len() as u64;
        handle_batch(daemon, transport, &batch).await?;
        if since_snapshot >= SNAPSHOT_EVERY {
            since_snapshot = 0;
            // Copy the state under the lock (cheap), write it without: serializing a large
            // state must not stall the stream.
            let snapshot = daemon.pipeline.lock().await.engine().state().snapshot();
            let store = daemon.store.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(error) = store.write_snapshot(&snapshot) {
                    tracing::error!(error = %error, "cannot write a snapshot; the log keeps growing");
                }
            });
        }
    }
}

/// Commit, dead-letter, then acknowledge: never acknowledge before the commit.
async fn handle_batch(
    daemon: &Arc<Daemon>,
    transport: &Arc<AmqpTransport>,
    batch: &[InboundMessage],
) -> anyhow::Result<()> {
    let dispositions = {
        let mut pipeline = daemon.pipeline.lock().await;
        tokio::task::block_in_place(|| pipeline.process(batch, now()))
            .context("committing a batch")?
    };
    for (message, disposition) in batch.iter().zip(&dispositions) {
        if let Disposition::DeadLetter { code, detail } = disposition {
            tracing::warn!(routing_key = %message.routing_key, code = %code, detail = %detail, "dead-lettering a message");
            transport.dead_letter(message, code, detail).await?;
        }
    }
    if let Some(last) = batch.last().and_then(|message| message.ack.as_ref())
        && !last.ack_through().await?
    {
        // The channel is gone: the broker redelivers; deduplication holds. Reconnect.
        anyhow::bail!("acknowledgement lost with the channel; messages will be redelivered");
    }
    daemon.outbox_ready.notify_one();
    Ok(())
}

/// Publishes committed outbox entries with confirms and marks them sent; after a stop it
/// drains once more, so what the last batch committed goes out before the connection closes.
async fn publish_outbox(
    daemon: Arc<Daemon>,
    transport: Arc<AmqpTransport>,
    stop: CancellationToken,
) {
    loop {
        drain_outbox(&daemon, &transport).await;
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            () = daemon.outbox_ready.notified() => {}
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn drain_outbox(daemon: &Daemon, transport: &AmqpTransport) {
    loop {
        let pending = match tokio::task::block_in_place(|| daemon.store.pending(256)) {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the outbox");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        // The page goes out back to back; only confirmed entries are marked sent, the others
        // stay for the next round (consumers deduplicate by id, so order across a retry is not
        // promised).
        let results = transport.publish_all(&pending).await;
        let mut sent = Vec::with_capacity(pending.len());
        for (entry, result) in pending.iter().zip(results) {
            match result {
                Ok(()) => sent.push(entry.id.clone()),
                Err(error) => {
                    tracing::warn!(error = %error, id = %entry.id, "outbox publication failed; retrying later")
                }
            }
        }
        let complete = sent.len() == pending.len();
        if let Err(error) = tokio::task::block_in_place(|| daemon.store.mark_sent(&sent)) {
            tracing::error!(error = %error, "cannot mark outbox entries sent");
            return;
        }
        if !complete {
            return;
        }
    }
}
