//! The partition queues a cluster relies on, on the real RabbitMQ: routed inputs are confirmed
//! into their partition's queue; only one consumer of a partition is active however many
//! nodes attach; and when the active one closes its channel (its lease lost or handed over),
//! the next gets every input it had not acknowledged, in order, then the rest — each input
//! acknowledged exactly once across the two.

use std::time::Duration;

use switchboard::transport::amqp::partition::{PartitionConsumer, Partitions};
use switchboard_tests::{amqp_names, broker_client};

async fn next_id(consumer: &mut PartitionConsumer) -> (String, bool) {
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("an input within 10 s")
        .expect("the consumer is open")
        .expect("a delivery");
    let id = message.message_id.clone().expect("a message id");
    assert_eq!(message.body, format!("{{\"input\":\"{id}\"}}").into_bytes());
    message.ack_through().await.unwrap();
    (id, message.redelivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_consumes_a_partition_and_the_next_resumes_where_it_stopped_in_order() {
    let Some(_client) = broker_client().await else {
        return;
    };
    let names = amqp_names("partitions");
    let router = Partitions::connect(&names, "router", 3).await.unwrap();
    let ids: Vec<String> = (0..30).map(|n| format!("input-{n:02}")).collect();
    for id in &ids {
        router
            .route(1, id, format!("{{\"input\":\"{id}\"}}").as_bytes())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Another partition's inputs never reach partition 1's consumers.
    router
        .route(2, "elsewhere", b"{}")
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(router.route(3, "none", b"{}").await.is_err(), "3 of 3");

    // Two nodes attach to partition 1 (each on its own connection); the first is active.
    let (node_a, node_b) = (
        Partitions::connect(&names, "node-a", 3).await.unwrap(),
        Partitions::connect(&names, "node-b", 3).await.unwrap(),
    );
    let mut a = node_a.consume(1, "node-a", 5).await.unwrap();
    let mut b = node_b.consume(1, "node-b", 5).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(next_id(&mut a).await.0);
    }
    // Node A received more than it acknowledged (its prefetch), then loses its lease.
    let unacknowledged = tokio::time::timeout(Duration::from_secs(10), a.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(unacknowledged.message_id.as_deref(), Some("input-10"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.next())
            .await
            .is_err(),
        "the standby gets nothing while the active consumer is attached"
    );
    a.stop().await;

    let mut redelivered = Vec::new();
    for _ in 10..30 {
        let (id, again) = next_id(&mut b).await;
        if again {
            redelivered.push(id.clone());
        }
        seen.push(id);
    }
    assert_eq!(seen, ids, "each input once, in order, across the hand-over");
    assert!(
        redelivered.first().is_some_and(|id| id == "input-10"),
        "what A held unacknowledged comes first, marked redelivered: {redelivered:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.next())
            .await
            .is_err(),
        "nothing more"
    );
    b.stop().await;
    router.delete().await.unwrap();
    for partitions in [router, node_a, node_b] {
        partitions.close().await;
    }
}
