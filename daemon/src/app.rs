//! The single daemon's wiring (cluster mode's is `cluster::serve`, which shares the helpers
//! here): configuration -> store -> plugin host -> engine (restored from the store)
//! -> pipeline -> [`Service`], then the tasks in flow order: the admin API (which is also the
//! embedded transport's entry, `POST /v1/inbound/{plugin}`), the single writer for HTTP work,
//! the clock, and the transport — RabbitMQ with `[amqp] url`, else the embedded outbox.
//!
//! With RabbitMQ, a batch (the deliveries already buffered, up to the prefetch) is decoded,
//! applied and committed once (group commit), dead letters are published and confirmed, then
//! the batch is acknowledged through its last delivery; a separate task (`outbox::publish`)
//! publishes what the commits handed over, with confirms, and the next commit removes the
//! confirmed entries from the store.
//!
//! Shutdown (SIGTERM/SIGINT): stop taking new work (HTTP submissions refused, streams end, the
//! consumer stops), finish and acknowledge the batch in flight, answer what the writer had
//! accepted, flush the outbox, exit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminContext, Authenticator};
use crate::clock::now;
use crate::config::{AmqpConfig, Config};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::outbox::{self, CONFIRM_TIMEOUT, OutboxFeed, PublishEnd};
use crate::pipeline::{Disposition, Pipeline, plugin_policy};
use crate::plugin::{PluginHost, PluginSettings};
use crate::service::Service;
use crate::store::{RedbStore, Store};
use crate::stream::{STREAM_WINDOW, StreamHub};
use crate::transport::InboundMessage;
use crate::transport::amqp::{AmqpTransport, InboundPublisher};

/// How often the clock ticks (inactivity timeouts, wrap-up capacity, eviction).
const TICK: Duration = Duration::from_secs(1);
/// Outbox entries the embedded transport keeps readable (`GET /v1/outbox`); older ones go.
const EMBEDDED_OUTBOX_KEEP: u64 = 10_000;

/// Builds the daemon's shared parts from its configuration (store, plugins, engine restored
/// from the store).
pub fn build(config: &Config) -> anyhow::Result<Service> {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&config.store.path).context("opening the store")?);
    let (plugins, policies) = load_plugins(config)?;
    let started = std::time::Instant::now();
    let recovery = store.recover().context("reading the store")?;
    let read = started.elapsed();
    let snapshot_seq = recovery
        .snapshot
        .as_ref()
        .map_or(0, |snapshot| snapshot.last_seq);
    let records = recovery.records.len();
    let window = recovery.window;
    let engine = Engine::restore(
        config.engine_setup(policies),
        recovery.snapshot,
        &recovery.records,
    );
    tracing::info!(
        snapshot = snapshot_seq,
        records,
        read_millis = read.as_millis() as u64,
        replay_millis = (started.elapsed() - read).as_millis() as u64,
        "restored the engine"
    );
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(StreamHub::new(STREAM_WINDOW, engine.state().position()));
    let mut pipeline = Pipeline::new(engine, plugins.clone(), store.clone())
        .with_observers(hub.clone(), metrics.clone())
        .with_payload_limit(config.server.body_limit);
    let now = crate::clock::now();
    hub.restore(window, |stored| pipeline.revive(stored, now));
    // Committed entries go to whoever takes them next without a store read: the broker
    // publisher, or the embedded delivery worker (whose store reads would wait for the
    // journal's fold).
    let outbox_feed =
        (config.amqp.is_some() || config.delivery.enabled).then(|| Arc::new(OutboxFeed::new()));
    if let Some(feed) = &outbox_feed {
        pipeline = pipeline.with_outbox_feed(feed.clone());
    }
    Ok(Service::new(
        pipeline,
        store,
        plugins,
        metrics,
        outbox_feed,
        config.amqp.is_some(),
    ))
}

/// The enabled plugins, loaded (compiled components cached under the store's directory), with
/// the engine's policy for each; the sentiment scorer made ready.
pub fn load_plugins(
    config: &Config,
) -> anyhow::Result<(
    Vec<Arc<crate::plugin::Plugin>>,
    Vec<crate::engine::PluginPolicy>,
)> {
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
            .load(PluginSettings::from_config(configured))
            .with_context(|| format!("loading plugin {}", configured.id))?;
        policies.push(plugin_policy(&plugin, &configured.default_queue));
        plugins.push(Arc::new(plugin));
    }
    crate::sentiment::prepare();
    Ok((plugins, policies))
}

/// Runs the daemon until `shutdown` is cancelled (SIGTERM/SIGINT in `main`): alone on its
/// embedded store, or as a cluster node with `[cluster]` (`cluster::serve`).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(cluster) = config.cluster.clone() {
        return crate::cluster::serve::run(config, cluster, shutdown).await;
    }
    let authenticator = Authenticator::from_config(&config.auth, &config.teams)
        .context("reading the token verification keys")?;
    let service = Arc::new(tokio::task::block_in_place(|| build(&config))?);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    tracing::info!(listen = %config.server.listen, transport = if config.amqp.is_some() { "amqp" } else { "embedded" }, "serving");

    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(service.clone().run_writer(writer_stop.clone()));
    let ticks_stop = CancellationToken::new();
    let ticks = tokio::spawn(service.clone().run_ticks(TICK, ticks_stop.clone()));
    let leases = tokio::spawn(crate::attendance::keep_leases(
        service.clone(),
        service.attendance().clone(),
        config.engine.monitor_lease,
        None,
        ticks_stop.clone(),
    ));
    let dead_letters = Arc::new(match (&config.amqp, config.delivery.enabled) {
        (None, _) => crate::delivery::dead::DeadLetters::in_store(service.clone()),
        (Some(_), true) => crate::delivery::dead::DeadLetters::in_broker(service.clone()),
        (Some(_), false) => crate::delivery::dead::DeadLetters::disabled(service.clone()),
    });
    let http_stop = CancellationToken::new();
    let http = serve_admin(
        listener,
        &service,
        authenticator,
        &config,
        dead_letters.clone(),
        &http_stop,
    );
    // With a broker, the door publishes what it takes into the inbound exchange (the consumer
    // applies it like any other inbound message) and answers after the broker's confirm.
    let inbound_publisher = config
        .amqp
        .is_some()
        .then(|| Arc::new(InboundPublisher::default()));
    let door_stop = CancellationToken::new();
    let door = open_door(&service, &config, inbound_publisher.clone(), &door_stop).await?;
    let delivery_stop = CancellationToken::new();
    let delivery = if config.delivery.enabled {
        let worker = Arc::new(
            crate::delivery::Worker::new(service.clone(), config.delivery.clone(), &config.plugins)
                .map_err(anyhow::Error::msg)?,
        );
        Some(match config.amqp.clone() {
            Some(amqp) => {
                tokio::spawn(worker.run_amqp(amqp, dead_letters.clone(), delivery_stop.clone()))
            }
            None => tokio::spawn(worker.run_embedded(delivery_stop.clone())),
        })
    } else {
        None
    };
    let delivering = delivery.is_some();
    // Voice: the ARI events WebSocket of each plugin whose settings name one.
    let ari_stop = CancellationToken::new();
    let ari = start_voice(&service, &config, inbound_publisher.clone(), &ari_stop)?;
    let transport = match config.amqp.clone() {
        Some(amqp) => tokio::spawn(run_amqp(
            service.clone(),
            amqp,
            delivering,
            inbound_publisher.clone().unwrap_or_default(),
            shutdown.clone(),
        )),
        None => tokio::spawn(run_embedded_outbox(
            service.clone(),
            delivering,
            shutdown.clone(),
        )),
    };

    tokio::select! {
        () = shutdown.cancelled() => {}
        () = service.fatal.cancelled() => {
            tracing::error!("a commit failed: stopping, so that a restart rebuilds the state from the store");
            shutdown.cancel();
        }
    }
    // Stop taking new work: submissions are refused, streams end, the consumer stops after
    // its batch in flight.
    service.stopping.cancel();
    http_stop.cancel();
    door_stop.cancel();
    ari_stop.cancel();
    for connection in ari {
        let _ = connection.await;
    }
    // Deliveries waiting for a retry stay in the outbox for the next start; one in flight
    // is abandoned mid-request and sent again then (at least once).
    delivery_stop.cancel();
    if let Some(delivery) = delivery {
        let _ = delivery.await;
    }
    let transport_result = transport.await;
    // Requests in flight get their answers: the writer drains what it accepted.
    writer_stop.cancel();
    let _ = writer.await;
    ticks_stop.cancel();
    let _ = ticks.await;
    let _ = leases.await;
    match http.await {
        Ok(Err(error)) => tracing::warn!(error = %error, "the admin API ended with an error"),
        Err(error) => tracing::warn!(error = %error, "the admin API task failed"),
        Ok(Ok(())) => {}
    }
    if let Some(door) = door {
        match door.await {
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "the webhook door ended with an error")
            }
            Err(error) => tracing::warn!(error = %error, "the webhook door task failed"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("stopped; what is committed and not yet published stays in the outbox");
    if service.fatal.is_cancelled() {
        anyhow::bail!("a commit failed; restart the daemon to rebuild its state from the store");
    }
    transport_result.context("the transport task failed")?
}

/// Serves the admin API on `listener` until `stop`.
pub fn serve_admin(
    listener: tokio::net::TcpListener,
    service: &Arc<Service>,
    authenticator: Authenticator,
    config: &Config,
    dead_letters: Arc<crate::delivery::dead::DeadLetters>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(admin::serve(
        listener,
        AdminContext::new(service.clone(), authenticator, &config.server)
            .with_frontend(
                config.engine.report_window,
                config.console.clone(),
                config.auth.hs256_secret.is_some(),
            )
            .with_config_file(config.file.clone())
            .with_dead_letters(dead_letters),
        stop.clone(),
    ))
}

/// Opens the webhook door when `server.webhook_listen` names an address; with a broker
/// (`publisher`), the door publishes what it takes into the inbound exchange and answers after
/// the broker's confirm.
pub async fn open_door(
    service: &Arc<Service>,
    config: &Config,
    publisher: Option<Arc<InboundPublisher>>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(address) = config.server.webhook_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening for webhooks on {address}"))?;
    let listen = listener.local_addr().unwrap_or(address);
    tracing::info!(webhook_listen = %listen, "the webhook door is open");
    Ok(Some(tokio::spawn(admin::door::serve(
        listener,
        admin::door::DoorContext::new(service.clone(), &config.server, listen, &config.plugins)
            .with_broker(publisher),
        stop.clone(),
    ))))
}

/// Starts the ARI events WebSocket of each enabled plugin whose settings name one; each runs
/// until `stop`.
pub fn start_voice(
    service: &Arc<Service>,
    config: &Config,
    inbound_publisher: Option<Arc<InboundPublisher>>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut connections = Vec::new();
    for plugin in config.plugins.iter().filter(|plugin| plugin.enabled) {
        let Some(events) = plugin.ari_events.clone() else {
            continue;
        };
        let client = crate::delivery::http::Client::new(
            &plugin.allowed_hosts,
            plugin.allowed_hosts_listed,
            crate::delivery::http::Timeouts {
                connect: config.delivery.connect_timeout,
                total: config.delivery.timeout,
            },
        )
        .map_err(anyhow::Error::msg)?;
        let connection = crate::ari::AriConnection::new(
            service.clone(),
            &plugin.id,
            events,
            client,
            inbound_publisher.clone(),
        );
        connections.push(tokio::spawn(connection.run(stop.clone())));
    }
    Ok(connections)
}

/// Without a broker: outbound notifications stay in the store's outbox, readable through
/// `GET /v1/outbox`, and each is logged once (target `switchboard::outbound`) so that a
/// newcomer sees what would be sent. The newest [`EMBEDDED_OUTBOX_KEEP`] are kept.
async fn run_embedded_outbox(
    service: Arc<Service>,
    delivering: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Reading entries only to log them is wasted work when nobody reads that log. Entries
    // from an earlier run were logged then: start after the newest.
    let logging = tracing::enabled!(target: "switchboard::outbound", tracing::Level::INFO);
    let mut last = if logging {
        tokio::task::block_in_place(|| service.store().outbox_newest_id()).unwrap_or_default()
    } else {
        None
    };
    let mut last_trim = std::time::Instant::now();
    loop {
        if logging {
            log_new_outbox_entries(service.store().as_ref(), &mut last);
        }
        if last_trim.elapsed() >= Duration::from_secs(1) {
            last_trim = std::time::Instant::now();
            tokio::task::block_in_place(|| {
                trim_embedded_outbox(service.store().as_ref(), delivering);
            });
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = service.outbox_ready.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Logs the outbox entries after `last` (and moves `last` to the newest).
fn log_new_outbox_entries(store: &dyn Store, last: &mut Option<String>) {
    loop {
        let entries = match tokio::task::block_in_place(|| store.outbox_after(last.as_deref(), 256))
        {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the outbox");
                return;
            }
        };
        let Some(newest) = entries.last() else { return };
        *last = Some(newest.id.clone());
        for entry in &entries {
            tracing::info!(
                target: "switchboard::outbound",
                id = %entry.id,
                routing_key = %entry.routing_key,
                event_type = %entry.event_type,
                bytes = entry.body.len(),
                body = %crate::telemetry::content(&String::from_utf8_lossy(&entry.body[..entry.body.len().min(512)])),
                "outbound (embedded transport: kept in the outbox, not sent)"
            );
        }
    }
}

/// Drops the oldest entries beyond [`EMBEDDED_OUTBOX_KEEP`], once they exceed it by a tenth
/// (one write transaction per thousand entries, not one per commit).
fn trim_embedded_outbox(store: &dyn Store, delivering: bool) {
    let Ok(len) = store.outbox_len() else { return };
    if len <= EMBEDDED_OUTBOX_KEEP + EMBEDDED_OUTBOX_KEEP / 10 {
        return;
    }
    let excess = usize::try_from(len - EMBEDDED_OUTBOX_KEEP).unwrap_or(usize::MAX);
    if let Ok(oldest) = store.outbox_after(None, excess) {
        // The delivery worker removes provider requests once delivered (or dead): never
        // before.
        let ids: Vec<String> = oldest
            .into_iter()
            .filter(|entry| !(delivering && entry.routing_key.starts_with("channel.")))
            .map(|entry| entry.id)
            .collect();
        if let Err(error) = store.mark_sent(&ids) {
            tracing::warn!(error = %error, "cannot trim the embedded outbox");
        }
    }
}

async fn run_amqp(
    service: Arc<Service>,
    amqp: AmqpConfig,
    delivering: bool,
    door: Arc<InboundPublisher>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        // The claim is held as long as this connection (`_claim` lives to the loop's end).
        let connected = match AmqpTransport::connect(&amqp, "switchboard").await {
            Ok(transport) => match transport.claim_inbound().await {
                Ok(claim) if delivering => transport
                    .declare_delivery_queue()
                    .await
                    .map(|()| (transport, claim)),
                Ok(claim) => Ok((transport, claim)),
                Err(error) => {
                    transport.close().await;
                    Err(error)
                }
            },
            Err(error) => Err(error),
        };
        let (transport, _claim) = match connected {
            Ok((transport, claim)) => (Arc::new(transport), claim),
            Err(crate::transport::TransportError::Taken(why)) => {
                // Not a broker fault: say why, keep trying (this daemon takes over when the
                // other one's connection is gone), and stay not ready meanwhile.
                service.set_broker_up(false);
                tracing::error!(retry_in = ?Duration::from_secs(5), "not consuming: {why}");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            Err(error) => {
                service.set_broker_up(false);
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
        door.set(Some(transport.clone()));
        tracing::info!(queue = %amqp.inbound_queue, "consuming");
        let publisher_stop = CancellationToken::new();
        let reconnect = CancellationToken::new();
        let publisher = tokio::spawn(publish_outbox(
            service.clone(),
            transport.clone(),
            publisher_stop.clone(),
            reconnect.clone(),
        ));
        let outcome = tokio::select! {
            outcome = consume(&service, &transport, &amqp, &shutdown) => outcome,
            () = reconnect.cancelled() => Err(anyhow::anyhow!(
                "the outbox publisher lost its channel, or the broker stopped confirming within {CONFIRM_TIMEOUT:?}"
            )),
        };
        service.set_broker_up(false);
        door.set(None);
        // The publisher finishes what the last batches committed, then stops (it gives up by
        // itself when the broker takes nothing for CONFIRM_TIMEOUT; this bound is a backstop).
        publisher_stop.cancel();
        let abort = publisher.abort_handle();
        if tokio::time::timeout(CONFIRM_TIMEOUT * 2, publisher)
            .await
            .is_err()
        {
            tracing::warn!(
                "the outbox publisher did not stop; what it had not published stays in the outbox"
            );
            abort.abort();
        }
        if tokio::time::timeout(CONFIRM_TIMEOUT, transport.close())
            .await
            .is_err()
        {
            tracing::warn!("closing the broker connection timed out; dropping it");
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) => tracing::warn!(error = %error, "consumer ended; reconnecting"),
        }
    }
}

/// Consumes until shutdown (Ok) or until the consumer ends (Err: reconnect).
async fn consume(
    service: &Arc<Service>,
    transport: &Arc<AmqpTransport>,
    amqp: &AmqpConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut deliveries = transport.consume("switchboard").await?;
    service.set_broker_up(true);
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
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
        handle_batch(service, transport, &batch).await?;
    }
}

/// Commit, dead-letter, then acknowledge: never acknowledge before the commit.
async fn handle_batch(
    service: &Arc<Service>,
    transport: &Arc<AmqpTransport>,
    batch: &[InboundMessage],
) -> anyhow::Result<()> {
    let processed = {
        let mut pipeline = service.pipeline().write().await;
        tokio::task::block_in_place(|| pipeline.process(batch, now()))
    };
    let dispositions = match processed {
        Ok(dispositions) => dispositions,
        Err(error) => {
            // Nothing of the batch is acknowledged; the broker redelivers it to the restarted
            // daemon.
            service.fatal.cancel();
            return Err(error).context("committing a batch");
        }
    };
    for (message, disposition) in batch.iter().zip(&dispositions) {
        if let Disposition::DeadLetter { code, detail } = disposition {
            tracing::warn!(routing_key = %message.routing_key, code = %code, detail = %crate::telemetry::content(detail), "dead-lettering a message");
            transport.dead_letter(message, code, detail).await?;
        }
    }
    if let Some(last) = batch.last().and_then(|message| message.ack.as_ref())
        && !last.ack_through().await?
    {
        // The channel is gone: the broker redelivers; deduplication holds. Reconnect.
        anyhow::bail!("acknowledgement lost with the channel; messages will be redelivered");
    }
    service.committed().await;
    Ok(())
}

/// Publishes the outbox on this connection (`outbox::publish`); tells the consumer loop to
/// make the connection again when the publishing channel failed or the broker stopped
/// confirming.
async fn publish_outbox(
    service: Arc<Service>,
    transport: Arc<AmqpTransport>,
    stop: CancellationToken,
    reconnect: CancellationToken,
) {
    let Some(feed) = service.outbox_feed().cloned() else {
        tracing::error!("a broker publisher without an outbox feed");
        return;
    };
    if outbox::publish(
        service.store().as_ref(),
        service.metrics(),
        &feed,
        &transport,
        &stop,
        CONFIRM_TIMEOUT,
    )
    .await
        == PublishEnd::Reconnect
    {
        reconnect.cancel();
    }
}
