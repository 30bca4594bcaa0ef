//! Ownership tests: the assignment spreads partitions evenly and is the same on every node;
//! keepers on the real PostgreSQL hand partitions over when a node joins, take them over when
//! one leaves or goes silent, and a node that went silent learns that it lost them.

use std::time::Duration;

use super::*;
use crate::store::postgres::testing::TestSchema;

fn nodes(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("node-{n}")).collect()
}

#[test]
fn the_assignment_gives_each_partition_to_one_live_node_evenly() {
    for partitions in 1..24 {
        for count in 1..6 {
            let live = nodes(count);
            let mut owners = vec![0; partitions as usize];
            let mut sizes = Vec::new();
            for node in &live {
                let mine = assignment(partitions, &live, node);
                sizes.push(mine.len());
                for partition in mine {
                    owners[partition as usize] += 1;
                }
            }
            assert!(
                owners.iter().all(|&owners| owners == 1),
                "{partitions} over {count}"
            );
            let (least, most) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(most - least <= 1, "{partitions} over {count}: {sizes:?}");
            // The register's order does not matter.
            let mut reversed = live.clone();
            reversed.reverse();
            assert_eq!(
                assignment(partitions, &reversed, "node-0"),
                assignment(partitions, &live, "node-0")
            );
        }
    }
    assert!(assignment(8, &nodes(3), "node-9").is_empty());
}

fn keeper(schema: &TestSchema, node: &str) -> Keeper {
    let leases = Leases::new(&schema.database, node, Duration::from_secs(30));
    Keeper::join(leases, 6).unwrap()
}

fn owned(keeper: &Keeper) -> Vec<u32> {
    keeper.held().map(|lease| lease.partition).collect()
}

fn acquired(changes: &[Change]) -> Vec<u32> {
    changes
        .iter()
        .filter_map(|change| match change {
            Change::Acquired(lease) => Some(lease.partition),
            _ => None,
        })
        .collect()
}

#[test]
fn keepers_hand_partitions_over_when_a_node_joins_and_take_them_when_it_leaves() {
    let Some(schema) = TestSchema::new("keepers") else {
        return;
    };
    let mut a = keeper(&schema, "node-a");
    assert_eq!(acquired(&a.round(|_| {}).unwrap()), [0, 1, 2, 3, 4, 5]);

    // B joins: nothing is free, so it waits; A hands over B's half, stopping each first.
    let mut b = keeper(&schema, "node-b");
    assert!(b.round(|_| {}).unwrap().is_empty());
    let mut stopped = Vec::new();
    let changes = a.round(|partition| stopped.push(partition)).unwrap();
    assert_eq!(stopped, [1, 3, 5]);
    assert_eq!(
        changes,
        [1, 3, 5].map(|partition| Change::Released { partition })
    );
    let taken = b.round(|_| {}).unwrap();
    assert_eq!(acquired(&taken), [1, 3, 5]);
    assert!(
        b.held().all(|lease| lease.epoch == 2),
        "a take-over raises the epoch"
    );
    assert_eq!(owned(&a), [0, 2, 4]);
    assert!(a.round(|_| {}).unwrap().is_empty(), "settled");

    // A leaves (SIGTERM): B takes everything at its next round, without waiting for leases.
    a.leave().unwrap();
    assert_eq!(acquired(&b.round(|_| {}).unwrap()), [0, 2, 4]);
    assert_eq!(owned(&b), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_silent_node_is_taken_over_and_learns_it_lost_its_partitions() {
    let Some(schema) = TestSchema::new("silent-node") else {
        return;
    };
    let mut a = keeper(&schema, "node-a");
    let mut b = keeper(&schema, "node-b");
    a.round(|_| {}).unwrap();
    b.round(|_| {}).unwrap();
    a.round(|_| {}).unwrap();
    b.round(|_| {}).unwrap();
    assert_eq!(owned(&a), [0, 2, 4]);
    assert_eq!(owned(&b), [1, 3, 5]);

    // A is paused (SIGSTOP) past its heartbeat and its leases, as the database sees it.
    schema.execute(
        "UPDATE node SET heartbeat_at = now() - interval '1 minute' WHERE node_id = 'node-a';
         UPDATE partition_lease SET expires_at = now() - interval '1 second' WHERE owner = 'node-a'",
    );
    assert_eq!(acquired(&b.round(|_| {}).unwrap()), [0, 2, 4]);

    // A resumes: its renewals fail (the epochs moved on), so it reports the loss; then it
    // finds B in the register and itself back in it, and gets nothing B holds.
    let changes = a.round(|_| {}).unwrap();
    assert_eq!(
        changes,
        [0, 2, 4].map(|partition| Change::Lost { partition })
    );
    assert!(owned(&a).is_empty());
}

/// Topology names of this run only, on the tests' broker; `None` after a loud skip when no
/// broker answers (a failure instead with `SWITCHBOARD_REQUIRE_AMQP=1`).
#[allow(clippy::print_stderr)]
async fn partition_queues(
    test: &str,
    count: u32,
) -> Option<(
    crate::config::AmqpConfig,
    crate::transport::amqp::partition::Partitions,
)> {
    let run = format!(
        "test.{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let names = crate::config::AmqpConfig {
        url: crate::config::Secret::new(
            std::env::var("SWITCHBOARD_TEST_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
        ),
        inbound_exchange: format!("{run}.inbound"),
        inbound_queue: format!("{run}.inbound"),
        dead_letter_queue: format!("{run}.dead"),
        outbound_exchange: format!("{run}.outbound"),
        delivery_queue: format!("{run}.delivery"),
        prefetch: 100,
        delivery_limit: 5,
    };
    match crate::transport::amqp::partition::Partitions::connect(&names, "router", count).await {
        Ok(queues) => Some((names, queues)),
        Err(error) if std::env::var("SWITCHBOARD_REQUIRE_AMQP").as_deref() == Ok("1") => {
            panic!("SWITCHBOARD_REQUIRE_AMQP=1 but no broker answers: {error}")
        }
        Err(error) => {
            eprintln!(
                "SKIPPED: no RabbitMQ at the test URL ({error}); set SWITCHBOARD_REQUIRE_AMQP=1 to fail instead"
            );
            None
        }
    }
}

/// A conversation-opening event on a web-chat thread that routes to `partition` of `count`.
fn opening_in(partition: u32, count: u32, from: &mut u32) -> crate::engine::ChannelEvent {
    use crate::engine::*;
    loop {
        *from += 1;
        let key = format!("visitor-{from}");
        if Partitioning::of_thread(count, "web-chat", &key) != partition {
            continue;
        }
        return ChannelEvent {
            id: Some(format!("evt-{key}").into()),
            source: "web-chat".into(),
            body: EventBody::Started {
                conversation: ExternalRef {
                    plugin: "web-chat".into(),
                    key: key.into(),
                },
                channel: ChannelKind::Web,
                direction: Direction::Inbound,
                subject: None,
                customer: Customer {
                    id: "cust-1".into(),
                    name: None,
                },
                queue: None,
            },
        };
    }
}

/// The conversations PostgreSQL holds for `partition`, as its engine rebuilds them.
fn stored_conversations(
    database: &crate::store::postgres::Database,
    lease: &Lease,
) -> Vec<crate::engine::ConversationId> {
    use crate::store::Store as _;
    let store = crate::store::postgres::PostgresStore::open(database, lease);
    let recovery = store.recover().unwrap();
    let engine = crate::engine::Engine::restore(
        crate::engine::testing::demo_setup(),
        recovery.snapshot,
        &recovery.records,
    );
    engine
        .state()
        .conversations()
        .map(|conversation| conversation.id)
        .collect()
}

/// A partition served by node A, taken over by node B while A still runs: A's next commit is
/// refused and A stops without acknowledging; B receives what A had not committed and applies
/// it. Every input is applied exactly once, every conversation lands in its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_partition_is_applied_once_by_its_next_owner() {
    use crate::cluster::worker::{Ended, PartitionContext, Route, route, serve_partition};
    let Some(schema) = TestSchema::new("partition-worker") else {
        return;
    };
    let Some((_names, queues)) = partition_queues("partition-worker", 2).await else {
        return;
    };
    let queues = std::sync::Arc::new(queues);
    let (a, b) = (
        Leases::new(&schema.database, "node-a", Duration::from_secs(30)),
        Leases::new(&schema.database, "node-b", Duration::from_secs(30)),
    );
    a.join_cluster(2).unwrap();
    let context = PartitionContext {
        database: schema.database.clone(),
        queues: queues.clone(),
        transport: None,
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        setup: crate::engine::testing::demo_setup(),
        plugins: Vec::new(),
        partitions: 2,
        // Small, so that the take-over below happens across snapshots.
        snapshot_every: 4,
        ownership: Default::default(),
        inbound: None,
    };
    let mut from = 0;
    let events: Vec<_> = (0..20).map(|_| opening_in(1, 2, &mut from)).collect();
    let send = |events: &[crate::engine::ChannelEvent]| {
        let queues = queues.clone();
        let events = events.to_vec();
        async move {
            for event in events {
                assert_eq!(route(&event, &Placement::new(2)), Route::Partition(1));
                let body = serde_json::to_vec(&crate::cluster::worker::PartitionInput::Events {
                    events: vec![event.clone()],
                })
                .unwrap();
                let id = event.id.as_deref().unwrap().to_owned();
                queues.route(1, &id, &body).await.unwrap().await.unwrap();
            }
        }
    };

    let lease_a = a.acquire(1).unwrap().unwrap();
    let stop_a = tokio_util::sync::CancellationToken::new();
    let node_a = tokio::spawn({
        let context = context.clone();
        let stop = stop_a.clone();
        async move { serve_partition(lease_a, &context, stop).await }
    });
    send(&events[..10]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::task::block_in_place(|| stored_conversations(&schema.database, &lease_a)).len()
        < 10
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node A never applied the first inputs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A pauses past its lease (as PostgreSQL sees it); B takes the partition over.
    schema.execute(
        "UPDATE partition_lease SET expires_at = now() - interval '1 second' WHERE partition = 1",
    );
    let lease_b = b.acquire(1).unwrap().unwrap();
    send(&events[10..]).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), node_a)
        .await
        .expect("node A stops once fenced")
        .unwrap()
        .unwrap();
    assert_eq!(ended, Ended::Fenced);

    let stop_b = tokio_util::sync::CancellationToken::new();
    let node_b = tokio::spawn({
        let context = context.clone();
        let stop = stop_b.clone();
        async move { serve_partition(lease_b, &context, stop).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let conversations = loop {
        let stored =
            tokio::task::block_in_place(|| stored_conversations(&schema.database, &lease_b));
        if stored.len() >= 20 {
            break stored;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node B applied {} of 20",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_b.cancel();
    assert_eq!(node_b.await.unwrap().unwrap(), Ended::Stopped);
    // Without a transport the notifications stay in the partition's outbox.
    let left = tokio::task::block_in_place(|| {
        crate::store::Store::outbox_len(&crate::store::postgres::PostgresStore::open(
            &schema.database,
            &lease_b,
        ))
    })
    .unwrap();
    assert!(left >= 20, "{left} outbox entries for 20 new conversations");
    assert_eq!(conversations.len(), 20, "each input applied once");
    let snapshot = tokio::task::block_in_place(|| {
        crate::store::Store::recover(&crate::store::postgres::PostgresStore::reader(
            &schema.database,
            1,
        ))
    })
    .unwrap()
    .snapshot;
    assert!(
        snapshot.is_some_and(|snapshot| snapshot.last_seq >= 4),
        "the partition's workers wrote snapshots"
    );
    assert!(
        conversations
            .iter()
            .all(|id| crate::engine::Partitioning::of_conversation(2, *id) == 1),
        "every conversation's id names its partition"
    );
    queues.delete().await.unwrap();
    queues.close().await;
}

/// Routes `count` conversation openings on new threads (numbered after `next`) to their
/// partitions, each confirmed.
async fn send_openings(
    queues: &crate::transport::amqp::partition::Partitions,
    partitions: u32,
    next: &mut u32,
    count: usize,
) {
    use crate::cluster::worker::{PartitionInput, Route, route};
    for _ in 0..count {
        let partition = *next % partitions;
        let event = opening_in(partition, partitions, next);
        let Route::Partition(partition) = route(&event, &Placement::new(partitions)) else {
            unreachable!("an opening names its thread");
        };
        let body = serde_json::to_vec(&PartitionInput::Events {
            events: vec![event.clone()],
        })
        .unwrap();
        queues
            .route(partition, event.id.as_deref().unwrap(), &body)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Conversations stored in every partition of `count`, with duplicates if any.
fn all_stored(
    database: &crate::store::postgres::Database,
    count: u32,
) -> Vec<crate::engine::ConversationId> {
    (0..count)
        .flat_map(|partition| {
            let reader = Lease {
                partition,
                epoch: 0,
                valid_until: std::time::Instant::now(),
            };
            stored_conversations(database, &reader)
        })
        .collect()
}

async fn wait_for_conversations(
    database: &crate::store::postgres::Database,
    count: u32,
    wanted: usize,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = tokio::task::block_in_place(|| all_stored(database, count));
        let distinct: std::collections::BTreeSet<_> = stored.iter().collect();
        assert_eq!(distinct.len(), stored.len(), "a conversation stored twice");
        if stored.len() >= wanted {
            assert_eq!(stored.len(), wanted, "more conversations than inputs");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {wanted} conversations after 60 s",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two nodes share four partitions: the second's arrival moves half of them over, the first's
/// departure (SIGTERM) moves them back at the next round, and inputs routed throughout are
/// each applied exactly once, in the partition their thread names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_join_and_leave_share_the_partitions_without_losing_an_input() {
    use crate::cluster::node::run_node;
    use crate::cluster::worker::PartitionContext;
    const PARTITIONS: u32 = 4;
    let Some(schema) = TestSchema::new("nodes") else {
        return;
    };
    let Some((names, router)) = partition_queues("nodes", PARTITIONS).await else {
        return;
    };
    let context =
        |queues: crate::transport::amqp::partition::Partitions,
         transport: crate::transport::amqp::AmqpTransport| PartitionContext {
            database: schema.database.clone(),
            queues: std::sync::Arc::new(queues),
            transport: Some(std::sync::Arc::new(transport)),
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
            setup: crate::engine::testing::demo_setup(),
            plugins: Vec::new(),
            partitions: PARTITIONS,

            snapshot_every: crate::service::SNAPSHOT_EVERY,
            ownership: Default::default(),
            inbound: None,
        };
    let start = |node: &'static str, queues, transport| {
        let leases = Leases::new(&schema.database, node, Duration::from_secs(30));
        let keeper = tokio::task::block_in_place(|| Keeper::join(leases, PARTITIONS)).unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(run_node(
            keeper,
            context(queues, transport),
            Duration::from_millis(200),
            shutdown.clone(),
        ));
        (shutdown, running)
    };
    let mut next = 0;
    let mut send = async |count: usize| send_openings(&router, PARTITIONS, &mut next, count).await;

    let queues_a =
        crate::transport::amqp::partition::Partitions::connect(&names, "node-a", PARTITIONS)
            .await
            .unwrap();
    let transport = async |node: &str| {
        crate::transport::amqp::AmqpTransport::connect(&names, node)
            .await
            .unwrap()
    };
    let (stop_a, node_a) = start("node-a", queues_a, transport("node-a").await);
    send(40).await;
    wait_for_conversations(&schema.database, PARTITIONS, 40).await;

    let queues_b =
        crate::transport::amqp::partition::Partitions::connect(&names, "node-b", PARTITIONS)
            .await
            .unwrap();
    let (stop_b, node_b) = start("node-b", queues_b, transport("node-b").await);
    send(40).await;
    let holders = Leases::new(&schema.database, "observer", Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let owners: Vec<Option<String>> = tokio::task::block_in_place(|| holders.holders())
            .unwrap()
            .into_iter()
            .map(|holder| holder.owner)
            .collect();
        let b_holds = owners
            .iter()
            .filter(|owner| owner.as_deref() == Some("node-b"))
            .count();
        if b_holds == 2 && owners.iter().all(Option::is_some) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never rebalanced: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_conversations(&schema.database, PARTITIONS, 80).await;

    // A stops (SIGTERM): its workers stop, its leases go at once; B serves everything.
    stop_a.cancel();
    node_a.await.unwrap().unwrap();
    send(40).await;
    wait_for_conversations(&schema.database, PARTITIONS, 120).await;
    for partition in 0..PARTITIONS {
        let reader = Lease {
            partition,
            epoch: 0,
            valid_until: std::time::Instant::now(),
        };
        let stored =
            tokio::task::block_in_place(|| stored_conversations(&schema.database, &reader));
        assert!(
            stored.iter().all(
                |id| crate::engine::Partitioning::of_conversation(PARTITIONS, *id) == partition
            ),
            "partition {partition} holds only its own conversations"
        );
    }
    stop_b.cancel();
    node_b.await.unwrap().unwrap();
    // Every partition's notifications were published and confirmed: none is left.
    for partition in 0..PARTITIONS {
        let reader = Lease {
            partition,
            epoch: 0,
            valid_until: std::time::Instant::now(),
        };
        let store = crate::store::postgres::PostgresStore::open(&schema.database, &reader);
        let left = tokio::task::block_in_place(|| crate::store::Store::outbox_len(&store)).unwrap();
        assert_eq!(left, 0, "partition {partition}'s outbox");
    }
    let cleanup = transport("cleanup").await;
    cleanup.delete_topology().await.unwrap();
    cleanup.close().await;
    router.delete().await.unwrap();
    router.close().await;
}

#[test]
fn a_messages_events_go_to_their_partitions_in_order_and_presence_to_every_one() {
    use crate::cluster::router::split;
    use crate::engine::*;
    let mut from = 0;
    let first = opening_in(0, 3, &mut from);
    let second = opening_in(2, 3, &mut from);
    let third = opening_in(0, 3, &mut from);
    let presence = ChannelEvent {
        id: Some("presence-1".into()),
        source: "canonical".into(),
        body: EventBody::AgentPresence {
            agent: "a-1".into(),
            presence: Presence::Away,
        },
    };
    let inputs = split(
        vec![
            first.clone(),
            presence.clone(),
            second.clone(),
            third.clone(),
        ],
        &Placement::new(3),
    );
    assert_eq!(inputs[&0], [first, presence.clone(), third]);
    assert_eq!(inputs[&1], std::slice::from_ref(&presence));
    assert_eq!(inputs[&2], [presence, second]);
}

/// An inbound message decoded on a node: its events reach their partitions once confirmed, a
/// redelivery of the message changes nothing, and one that does not decode is refused with
/// its reason (for the dead-letter queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_messages_are_applied_once_in_their_partitions() {
    use crate::cluster::node::run_node;
    use crate::cluster::router::{RouteError, Router};
    use crate::cluster::worker::PartitionContext;
    const PARTITIONS: u32 = 3;
    let Some(schema) = TestSchema::new("router") else {
        return;
    };
    let Some((_names, queues)) = partition_queues("router", PARTITIONS).await else {
        return;
    };
    let queues = std::sync::Arc::new(queues);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let router = Router::new(
        Vec::new(),
        1 << 20,
        metrics.clone(),
        queues.clone(),
        Placement::new(PARTITIONS),
    );
    let leases = Leases::new(&schema.database, "node-a", Duration::from_secs(30));
    let keeper = tokio::task::block_in_place(|| Keeper::join(leases, PARTITIONS)).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let node = tokio::spawn(run_node(
        keeper,
        PartitionContext {
            database: schema.database.clone(),
            queues: queues.clone(),
            transport: None,
            metrics,
            setup: crate::engine::testing::demo_setup(),
            plugins: Vec::new(),
            partitions: PARTITIONS,

            snapshot_every: crate::service::SNAPSHOT_EVERY,
            ownership: Default::default(),
            inbound: None,
        },
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    let mut from = 0;
    let events: Vec<_> = (0..PARTITIONS)
        .flat_map(|partition| {
            [
                opening_in(partition, PARTITIONS, &mut from),
                opening_in(partition, PARTITIONS, &mut from),
            ]
        })
        .map(|mut event| {
            // Ids from the message, as a gateway's canonical events without ids get them.
            event.id = None;
            event
        })
        .collect();
    let message = crate::transport::InboundMessage {
        ack: None,
        delivery_tag: 1,
        routing_key: "canonical".to_owned(),
        content_type: Some("application/json".to_owned()),
        message_id: Some("gateway-42".to_owned()),
        redelivered: false,
        headers: Vec::new(),
        body: serde_json::to_vec(&events).unwrap(),
    };
    let reached = router
        .route(&message, crate::engine::Millis(0))
        .await
        .unwrap();
    assert_eq!(reached, [0, 1, 2]);
    // The broker redelivers it (its acknowledgement was lost): routed again, it changes
    // nothing.
    router
        .route(
            &crate::transport::InboundMessage {
                redelivered: true,
                ..message.clone()
            },
            crate::engine::Millis(0),
        )
        .await
        .unwrap();
    wait_for_conversations(&schema.database, PARTITIONS, 6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_conversations(&schema.database, PARTITIONS, 6).await;

    let refused = router
        .route(
            &crate::transport::InboundMessage {
                body: b"{not json".to_vec(),
                ..message.clone()
            },
            crate::engine::Millis(0),
        )
        .await;

    // A supervisor's command reaches its conversation's partition from this node and is
    // answered after the owner's commit; a repeat with the same idempotency key gets the
    // first answer again; a conversation that does not exist is refused as such.
    use crate::cluster::router::{Answered, COMMAND_TIMEOUT};
    use crate::engine::{Action, Code, Command, Idempotency};
    let requests = queues.requests().await.unwrap();
    let stored = tokio::task::block_in_place(|| all_stored(&schema.database, PARTITIONS));
    let monitor = |conversation, key: &str| Command {
        actor: crate::engine::testing::supervisor("sup-1", &["support", "billing"]),
        idempotency: Some(Idempotency {
            key: key.into(),
            fingerprint: 7,
        }),
        action: Action::Monitor { conversation },
    };
    let ask = async |command: &Command| match router
        .command(&requests, command, COMMAND_TIMEOUT)
        .await
        .unwrap()
    {
        Answered::Reply(answer) => answer,
        Answered::Unanswered => panic!("no answer within {COMMAND_TIMEOUT:?}"),
    };
    // An agent accepts it (an event naming the engine's id, routed by it): it is active.
    let accepted = crate::engine::ChannelEvent {
        id: Some("accepted-1".into()),
        source: "canonical".into(),
        body: crate::engine::EventBody::Accepted {
            conversation: crate::engine::ConversationRef::Id { id: stored[0] },
            agent: "a-1".into(),
        },
    };
    router
        .route(
            &crate::transport::InboundMessage {
                message_id: Some("gateway-43".to_owned()),
                body: serde_json::to_vec(&accepted).unwrap(),
                ..message.clone()
            },
            crate::engine::Millis(0),
        )
        .await
        .unwrap();
    let first = ask(&monitor(stored[0], "k-1")).await;
    let again = ask(&monitor(stored[0], "k-1")).await;
    match (&first, &again) {
        (Ok(first), Ok(again)) => {
            assert_eq!(first.conversation, Some(stored[0]));
            assert!(!first.replayed && again.replayed, "{first:?} {again:?}");
        }
        other => panic!("{other:?}"),
    }
    let unknown = crate::engine::ConversationId::from_key(3 * 1_000_003 + 1);
    let refused_command = ask(&monitor(unknown, "k-2")).await;
    assert!(
        matches!(&refused_command, Err(refusal) if refusal.code == Code::NotFound),
        "{refused_command:?}"
    );
    assert!(
        matches!(&refused, Err(RouteError::Decode(error)) if error.code() == "invalid-payload"),
        "{refused:?}"
    );
    shutdown.cancel();
    node.await.unwrap().unwrap();
    queues.delete().await.unwrap();
    queues.close().await;
}

/// PostgreSQL restarted under a serving node (its own server, so the shared one is never left
/// broken): commits fail meanwhile and nothing is acknowledged; once the server is back the
/// node's workers start again from what PostgreSQL holds and every input is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_out_a_postgresql_restart_and_loses_nothing() {
    use crate::cluster::node::run_node;
    use crate::cluster::worker::PartitionContext;
    use crate::store::postgres::testing::PrivateServer;
    const PARTITIONS: u32 = 2;
    let Some(server) = tokio::task::block_in_place(|| PrivateServer::start("restart")) else {
        return;
    };
    let Some((_names, queues)) = partition_queues("pg-restart", PARTITIONS).await else {
        return;
    };
    let queues = std::sync::Arc::new(queues);
    let database = tokio::task::block_in_place(|| {
        crate::store::postgres::Database::open(&server.url(), "switchboard")
    })
    .unwrap();
    let leases = Leases::new(&database, "node-a", Duration::from_secs(30));
    let keeper = tokio::task::block_in_place(|| Keeper::join(leases, PARTITIONS)).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let node = tokio::spawn(run_node(
        keeper,
        PartitionContext {
            database: database.clone(),
            queues: queues.clone(),
            transport: None,
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
            setup: crate::engine::testing::demo_setup(),
            plugins: Vec::new(),
            partitions: PARTITIONS,

            snapshot_every: crate::service::SNAPSHOT_EVERY,
            ownership: Default::default(),
            inbound: None,
        },
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    let mut next = 0;
    let mut send = async |count: usize| send_openings(&queues, PARTITIONS, &mut next, count).await;
    send(10).await;
    wait_for_conversations(&database, PARTITIONS, 10).await;

    tokio::task::block_in_place(|| server.stop());
    send(10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| server.resume());
    send(10).await;
    wait_for_conversations(&database, PARTITIONS, 30).await;

    shutdown.cancel();
    node.await.unwrap().unwrap();
    queues.delete().await.unwrap();
    queues.close().await;
}

/// Any node reads every partition: a follower of each partition's log answers the report and a
/// conversation's details, and catches up after a refresh — also past a snapshot that dropped
/// the log behind it.
#[test]
fn the_read_model_follows_every_partition_across_snapshots() {
    use crate::cluster::read_model::ReadModel;
    use crate::engine::testing::{Harness, demo_setup, supervisor};
    use crate::engine::{Partitioning, Setup};
    use crate::store::{Batch, Store};
    let Some(schema) = TestSchema::new("read-model") else {
        return;
    };
    let leases = Leases::new(&schema.database, "node-a", Duration::from_secs(30));
    leases.join_cluster(2).unwrap();
    type Owner = (
        crate::store::postgres::PostgresStore,
        crate::engine::testing::Harness,
        usize,
    );
    // Opens `count` active conversations in `partition`'s engine and commits them.
    fn open(
        owners: &mut [Owner],
        partition: usize,
        count: usize,
    ) -> Vec<crate::engine::ConversationId> {
        let (store, harness, committed) = &mut owners[partition];
        let mut ids = Vec::new();
        for _ in 0..count {
            ids.push(harness.active("web-chat", "a-1"));
        }
        store
            .commit(&Batch {
                records: harness.records[*committed..].to_vec(),
                ..Batch::default()
            })
            .unwrap();
        *committed = harness.records.len();
        ids
    }
    let mut owners: Vec<Owner> = Vec::new();
    for partition in 0..2 {
        let lease = leases.acquire(partition).unwrap().unwrap();
        let store = crate::store::postgres::PostgresStore::open(&schema.database, &lease);
        let harness = Harness::with(Setup {
            partitioning: Some(Partitioning {
                partition,
                count: 2,
            }),
            ..demo_setup()
        });
        owners.push((store, harness, 0));
    }
    let mut ids = open(&mut owners, 0, 3);
    ids.extend(open(&mut owners, 1, 2));

    let supervisor = supervisor("sup-1", &["support", "billing"]);
    let filter = crate::engine::report::ReportFilter::default();
    let now = owners[0].1.now.max(owners[1].1.now);
    let seen = |model: &ReadModel| {
        let mut seen: Vec<_> = model
            .ongoing(&supervisor, &filter, now)
            .into_iter()
            .map(|row| row.id)
            .collect();
        seen.sort();
        seen
    };
    let model = ReadModel::open(&schema.database, &demo_setup(), Placement::new(2)).unwrap();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen(&model), expected);

    // Partition 0 commits two more and snapshots (its log behind the snapshot goes);
    // partition 1 commits one more.
    ids.extend(open(&mut owners, 0, 2));
    let (store, harness, _) = &owners[0];
    store
        .write_snapshot(&harness.engine.state().snapshot())
        .unwrap();
    ids.extend(open(&mut owners, 1, 1));
    assert_eq!(seen(&model).len(), 5, "not refreshed yet");
    let followed = model.refresh().unwrap().expect("something changed");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen(&model), expected);
    // What was followed comes with its timeline entries (the stream carries them), partition
    // by partition: partition 1's last record as its owner made it, and the partition's
    // position after it; partition 0's records after its snapshot, which says some were
    // skipped (a stream client from before them has a gap).
    let (_, harness, _) = &owners[1];
    let last = harness.records.last().unwrap();
    assert!(!last.timeline.is_empty());
    let one = followed.iter().find(|part| part.partition == 1).unwrap();
    assert!(!one.skipped);
    assert_eq!(one.position, last.position);
    assert!(one.records.iter().any(|record| record.seq == last.seq
        && record.timeline == last.timeline
        && record.changes == last.changes));
    let zero = followed.iter().find(|part| part.partition == 0).unwrap();
    assert!(zero.skipped);
    assert_eq!(
        zero.position,
        owners[0].1.engine.state().position(),
        "partition 0's follower stands where its owner does"
    );
    assert!(model.refresh().unwrap().is_none(), "nothing new");
    // The merged view holds every conversation, and an agent's load over both partitions.
    let view = model.view();
    let held = |engine: &crate::engine::Engine| {
        engine
            .state()
            .agents()
            .find(|agent| agent.id.as_str() == "a-1")
            .map(|agent| agent.used)
            .unwrap()
    };
    assert_eq!(
        held(&view),
        held(&owners[0].1.engine) + held(&owners[1].1.engine)
    );
    assert!(held(&owners[1].1.engine) > 0);
    for id in &ids {
        assert!(view.state().conversation(*id).is_some());
    }
    for id in &ids {
        let found = model.find(&supervisor, &id.to_string(), now);
        assert_eq!(found.map(|row| row.id), Some(*id));
    }
}

#[test]
fn each_partition_learns_the_units_its_agents_hold_in_the_others() {
    use crate::cluster::read_model::elsewhere;
    use crate::engine::AgentId;
    let own = |pairs: &[(&str, u32)]| -> std::collections::BTreeMap<AgentId, u32> {
        pairs
            .iter()
            .map(|(agent, units)| ((*agent).into(), *units))
            .collect()
    };
    let told = elsewhere(&[own(&[("a-1", 1), ("a-2", 2)]), own(&[("a-1", 2)]), own(&[])]);
    let of = |pairs: &[(&str, u32)]| -> Vec<(AgentId, u32)> {
        pairs
            .iter()
            .map(|(agent, units)| ((*agent).into(), *units))
            .collect()
    };
    assert_eq!(told[0], of(&[("a-1", 2)]));
    assert_eq!(told[1], of(&[("a-1", 1), ("a-2", 2)]));
    assert_eq!(told[2], of(&[("a-1", 3), ("a-2", 2)]));
}
