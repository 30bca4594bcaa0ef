//! Cluster mode's wiring (`[cluster]`, README "Run several daemons"): configuration ->
//! PostgreSQL (migrated) and RabbitMQ -> plugins -> the node's keeper and partition workers
//! (the owner of partition 0 also decodes the inbound queue and routes it to the partitions),
//! the read model refreshed into the admin API's view, the admin API and the webhook door over
//! a [`Front`], the delivery worker on the shared delivery queue, and the voice connections
//! and the agents' loads on whichever node holds partition 0.
//!
//! A node is crash-only towards the broker: when its connection is lost it exits with an
//! error, and its supervisor starts it again; the other nodes take its partitions over
//! meanwhile. Its state is in PostgreSQL, so nothing is lost with it.
//!
//! Shutdown (SIGTERM/SIGINT): stop taking new work, stop consuming, stop every partition's
//! worker after its batch in flight, release every lease (the other nodes take the
//! partitions over at their next round), exit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::front::{Front, FrontStore};
use super::node::run_node;
use super::read_model::ReadModel;
use super::router::Router;
use super::worker::{InboundDuty, PartitionContext};
use super::{Keeper, Ownership, Placement};
use crate::admin::Authenticator;
use crate::config::{ClusterConfig, Config};
use crate::engine::Engine;
use crate::metrics::{Metrics, family};
use crate::pipeline::Pipeline;
use crate::service::{SNAPSHOT_EVERY, Service};
use crate::store::postgres::{Database, Leases};
use crate::store::{Store, StoreError};
use crate::stream::{STREAM_WINDOW, StreamHub};
use crate::transport::TransportError;
use crate::transport::amqp::partition::Partitions;
use crate::transport::amqp::{AmqpTransport, InboundPublisher};

/// How often the read model takes what the partitions committed.
const REFRESH: Duration = Duration::from_millis(250);

/// Runs a cluster node until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    cluster: ClusterConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut amqp = config
        .amqp
        .clone()
        .context("cluster mode needs `[amqp] url`")?;
    amqp.url = with_heartbeat(&amqp.url, cluster.lease);
    let authenticator = Authenticator::from_config(&config.auth, &config.teams)
        .context("reading the token verification keys")?;
    let (plugins, policies) = tokio::task::block_in_place(|| crate::app::load_plugins(&config))?;
    let setup = config.engine_setup(policies);
    let database = tokio::task::block_in_place(|| {
        Database::open(cluster.postgres_url.expose(), &cluster.postgres_schema)
    })
    .context("opening the cluster's PostgreSQL (store.postgres_url)")?;
    let placement = Placement::with_moved(
        cluster.partitions,
        tokio::task::block_in_place(|| database.moved_conversations())
            .context("reading where moved conversations live")?,
    );
    let metrics = Arc::new(Metrics::new());
    let node_name = format!("switchboard-{}", cluster.node_id);

    // The broker: one connection for the node's consumers and publishers, one for the
    // partition queues. The cluster's mark is held before anything is consumed.
    let transport = Arc::new(
        AmqpTransport::connect(&amqp, &node_name)
            .await
            .context("connecting to RabbitMQ")?,
    );
    let _mark = loop {
        match transport.join_inbound_cluster().await {
            Ok(mark) => break mark,
            Err(TransportError::Taken(why)) => {
                tracing::error!(retry_in = ?Duration::from_secs(5), "not joining the cluster: {why}");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Err(error) => return Err(error).context("marking the inbound queue as a cluster's"),
        }
    };
    if config.delivery.enabled {
        transport
            .declare_delivery_queue()
            .await
            .context("declaring the delivery queue")?;
    }
    let queues = Arc::new(
        Partitions::connect(&amqp, &node_name, cluster.partitions)
            .await
            .context("declaring the partition queues")?,
    );
    let requests = queues
        .requests()
        .await
        .context("opening the command channel")?;

    let router = Router::new(
        plugins.clone(),
        config.server.body_limit,
        metrics.clone(),
        queues.clone(),
        placement.clone(),
    );
    // A node restarted right after it died finds its former process's heartbeat still young:
    // it waits for it to age past a lease. A second live daemon with this id keeps it
    // waiting, and never serving, with the reason in the log.
    let keeper = loop {
        let leases = Leases::new(&database, &cluster.node_id, cluster.lease);
        match tokio::task::block_in_place(|| Keeper::join(leases, cluster.partitions)) {
            Ok(keeper) => break keeper,
            Err(StoreError::NodeIdInUse(why)) => {
                tracing::warn!(retry_in = ?cluster.lease / 3, "not joining the cluster yet: {why}");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(cluster.lease / 3) => {}
                }
            }
            Err(error) => return Err(error).context("joining the cluster"),
        }
    };
    let ownership = Arc::new(Ownership::default());
    let node_stop = CancellationToken::new();
    let node = tokio::spawn(run_node(
        keeper,
        PartitionContext {
            database: database.clone(),
            queues: queues.clone(),
            transport: Some(transport.clone()),
            metrics: metrics.clone(),
            setup: setup.clone(),
            plugins: plugins.clone(),
            partitions: cluster.partitions,
            snapshot_every: SNAPSHOT_EVERY,
            ownership: ownership.clone(),
            inbound: Some(InboundDuty {
                router: router.clone(),
                transport: transport.clone(),
                prefetch: amqp.prefetch,
            }),
        },
        super::round_interval(cluster.lease),
        node_stop.clone(),
    ));

    let read_model = Arc::new(
        tokio::task::block_in_place(|| ReadModel::open(&database, &setup, placement.clone()))
            .context("reading the partitions")?,
    );
    let front = Arc::new(Front::new(
        router.clone(),
        requests,
        ownership.clone(),
        cluster.node_id.clone(),
        cluster.partitions,
    ));
    let store: Arc<dyn Store> = Arc::new(FrontStore::new(&database, placement));
    let view = tokio::task::block_in_place(|| read_model.view());
    let hub = Arc::new(StreamHub::partitioned(
        STREAM_WINDOW,
        read_model.positions(),
    ));
    let mut pipeline = Pipeline::new(Engine::new(setup.clone()), plugins.clone(), store.clone())
        .with_observers(hub, metrics.clone())
        .with_payload_limit(config.server.body_limit);
    pipeline.show(view, &[]);
    let service = Arc::new(Service::clustered(
        pipeline,
        store,
        plugins,
        metrics.clone(),
        front,
    ));
    let refresh_stop = CancellationToken::new();
    let refresh = tokio::spawn(keep_fresh(
        service.clone(),
        read_model,
        Balance {
            router: router.clone(),
            ownership: ownership.clone(),
            sent: Vec::new(),
        },
        refresh_stop.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    tracing::info!(listen = %config.server.listen, node = %cluster.node_id, partitions = cluster.partitions, "serving as a cluster node");
    let dead_letters = Arc::new(crate::delivery::dead::DeadLetters::in_broker(
        service.clone(),
    ));
    let http_stop = CancellationToken::new();
    let http = crate::app::serve_admin(
        listener,
        &service,
        authenticator,
        &config,
        dead_letters.clone(),
        &http_stop,
    );
    let inbound_publisher = Arc::new(InboundPublisher::default());
    inbound_publisher.set(Some(transport.clone()));
    let door_stop = CancellationToken::new();
    let door = crate::app::open_door(
        &service,
        &config,
        Some(inbound_publisher.clone()),
        &door_stop,
    )
    .await?;
    let delivery_stop = CancellationToken::new();
    let delivery = if config.delivery.enabled {
        let worker = Arc::new(
            crate::delivery::Worker::new(service.clone(), config.delivery.clone(), &config.plugins)
                .map_err(anyhow::Error::msg)?,
        );
        Some(tokio::spawn(worker.run_amqp(
            amqp.clone(),
            dead_letters.clone(),
            delivery_stop.clone(),
        )))
    } else {
        None
    };
    let voice_stop = CancellationToken::new();
    let voice = tokio::spawn(hold_voice(
        service.clone(),
        config.clone(),
        ownership.clone(),
        Some(inbound_publisher.clone()),
        voice_stop.clone(),
    ));
    let seats_stop = CancellationToken::new();
    let seats = tokio::spawn(crate::attendance::keep_leases(
        service.clone(),
        service.attendance().clone(),
        config.engine.monitor_lease,
        Some(crate::attendance::ClusterAttendance {
            shared: crate::store::postgres::SharedAttendance::new(&database, &cluster.node_id),
            ownership: ownership.clone(),
        }),
        seats_stop.clone(),
    ));
    service.set_broker_up(true);

    // Runs until asked to stop, or until the broker connection is gone (crash-only: the
    // supervisor restarts the node and the others take its partitions meanwhile).
    let mut lost = None;
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = watch.tick() => {
                if !transport.connected() || !queues.connected() {
                    service.set_broker_up(false);
                    lost = Some("the broker connection was lost");
                    break;
                }
                if node.is_finished() {
                    lost = Some("the node's ownership loop stopped");
                    break;
                }
            }
        }
    }
    service.stopping.cancel();
    http_stop.cancel();
    door_stop.cancel();
    voice_stop.cancel();
    delivery_stop.cancel();
    seats_stop.cancel();
    let _ = voice.await;
    if let Some(delivery) = delivery {
        let _ = delivery.await;
    }
    let _ = seats.await;
    // Every worker stops after its batch in flight, then every lease is released.
    node_stop.cancel();
    let left = node.await;
    refresh_stop.cancel();
    let _ = refresh.await;
    let _ = http.await;
    if let Some(door) = door {
        let _ = door.await;
    }
    queues.close().await;
    transport.close().await;
    tracing::info!("stopped; the partitions are left to the other nodes");
    match left {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error).context("leaving the cluster"),
        Err(error) => return Err(error).context("the node's ownership loop failed"),
    }
    match lost {
        Some(why) => anyhow::bail!("{why}: exiting so that a restart connects again"),
        None => Ok(()),
    }
}

/// Agent capacity across partitions: each partition's engine checks an agent's capacity
/// against the units it holds itself plus the units the agent holds in the other partitions,
/// as the node that decodes (the owner of partition 0) last told it from its read model. A
/// partition's check is linearizable within the partition; across partitions it is as fresh
/// as that news (a refresh, a fraction of a second): two assignments of one agent in two
/// partitions within that time can both pass, and the agent is then over capacity by those.
struct Balance {
    router: Router,
    ownership: Arc<Ownership>,
    /// What each partition was last told (by this node, while it decodes).
    sent: Vec<Option<Vec<(crate::engine::AgentId, u32)>>>,
}

impl Balance {
    async fn tell(&mut self, read_model: &ReadModel) {
        if !self
            .ownership
            .held()
            .contains_key(&super::worker::DECODING_PARTITION)
        {
            // Another node tells them; should this one become the teller, it starts afresh.
            self.sent.clear();
            return;
        }
        let loads = read_model.loads_elsewhere();
        self.sent.resize(loads.len(), None);
        for (partition, loads) in loads.into_iter().enumerate() {
            if self.sent[partition].as_ref() == Some(&loads) {
                continue;
            }
            match self
                .router
                .send_loads(partition as u32, loads.clone())
                .await
            {
                Ok(()) => self.sent[partition] = Some(loads),
                Err(error) => {
                    tracing::warn!(partition, %error, "could not tell a partition its agents' loads elsewhere; trying again");
                }
            }
        }
    }
}

/// The broker URL with an AMQP heartbeat of a quarter of the lease (at least a second),
/// unless it names one: a node paused past its lease is then dropped by the broker — and with
/// it its place as the partition queues' single active consumer — at about half the lease,
/// before another node may take the lease, so that the broker never feeds a node that may
/// no longer write.
fn with_heartbeat(url: &crate::config::Secret, lease: Duration) -> crate::config::Secret {
    let text = url.expose();
    if text.contains("heartbeat=") {
        return url.clone();
    }
    let seconds = (lease.as_secs() / 4).max(1);
    let separator = if text.contains('?') { '&' } else { '?' };
    crate::config::Secret::new(format!("{text}{separator}heartbeat={seconds}"))
}

/// Takes what the partitions committed into the admin API's view, every [`REFRESH`].
async fn keep_fresh(
    service: Arc<Service>,
    read_model: Arc<ReadModel>,
    mut balance: Balance,
    stop: CancellationToken,
) {
    let partitions = read_model.partitions();
    let mut ticker = tokio::time::interval(REFRESH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fresh_at = std::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let model = read_model.clone();
        let refreshed = tokio::task::spawn_blocking(move || {
            model
                .refresh()
                .map(|followed| followed.map(|records| (model.view(), records)))
        })
        .await;
        match refreshed {
            Ok(Ok(view)) => {
                fresh_at = std::time::Instant::now();
                if let Some((view, followed)) = view {
                    service.show(view, &followed).await;
                }
                balance.tell(&read_model).await;
            }
            Ok(Err(error)) => tracing::warn!(%error, "the read model could not refresh"),
            Err(error) => tracing::warn!(%error, "the read model's refresh failed"),
        }
        let lag = i64::try_from(fresh_at.elapsed().as_secs()).unwrap_or(i64::MAX);
        for partition in 0..partitions {
            service.metrics().set_gauge(
                family::CLUSTER_PARTITION_LAG_SECONDS,
                &[&partition.to_string()],
                lag,
            );
        }
    }
}

/// The voice connections (each plugin's ARI events WebSocket) are held once per cluster: by
/// the node that holds partition 0's lease, started when it takes it and stopped when it
/// loses it, so that a dead node's connections move with its partition.
async fn hold_voice(
    service: Arc<Service>,
    config: Config,
    ownership: Arc<Ownership>,
    publisher: Option<Arc<InboundPublisher>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut running: Option<(CancellationToken, Vec<tokio::task::JoinHandle<()>>)> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        let holder = !stopping && ownership.held().contains_key(&0);
        match (&running, holder) {
            (None, true) => {
                let connections_stop = CancellationToken::new();
                let connections = crate::app::start_voice(
                    &service,
                    &config,
                    publisher.clone(),
                    &connections_stop,
                )?;
                if !connections.is_empty() {
                    tracing::info!(
                        connections = connections.len(),
                        "holding the voice connections (this node holds partition 0)"
                    );
                }
                running = Some((connections_stop, connections));
            }
            (Some(_), false) => {
                if let Some((connections_stop, connections)) = running.take() {
                    connections_stop.cancel();
                    for connection in connections {
                        let _ = connection.await;
                    }
                }
            }
            _ => {}
        }
        if stopping {
            return Ok(());
        }
    }
}
