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
