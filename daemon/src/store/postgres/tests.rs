//! The PostgreSQL store's own tests (the store test suite in `store::tests` runs on it too):
//! leases are exclusive and their epochs grow; a former owner's every write is refused after
//! a take-over and changes nothing; the schema migrates once however many nodes start
//! together, and a newer one is refused.

use std::time::Duration;

use super::testing::{TestSchema, url};
use super::*;
use crate::engine::testing::*;
use crate::engine::*;
use crate::store::{Batch, DeadDelivery, OutboxEntry, Store, StoreError, outbox_id, read_error};

fn leases(schema: &TestSchema, node: &str) -> Leases {
    Leases::new(&schema.database, node, Duration::from_secs(60))
}

fn entry(record: &Record) -> OutboxEntry {
    OutboxEntry {
        id: outbox_id(
            &NotificationId {
                position: record.position,
                index: 0,
            },
            0,
        ),
        routing_key: "channel.sms-twilio".to_owned(),
        event_type: "dev.switchboard.channel.request".to_owned(),
        subject: None,
        time: record.at,
        content_type: "application/json".to_owned(),
        headers: Vec::new(),
        body: b"{}".to_vec(),
    }
}

fn batch(records: &[Record]) -> Batch {
    Batch {
        records: records.to_vec(),
        outbox: records.iter().map(entry).collect(),
        ..Batch::default()
    }
}

#[test]
fn leases_are_exclusive_their_epochs_grow_and_a_release_frees_at_once() {
    let Some(schema) = TestSchema::new("leases") else {
        return;
    };
    let (a, b) = (leases(&schema, "node-a"), leases(&schema, "node-b"));
    a.join_cluster(3).unwrap();
    b.join_cluster(3).unwrap();
    let held: Vec<Lease> = (0..3).map(|p| a.acquire(p).unwrap().unwrap()).collect();
    assert!(held.iter().all(|lease| lease.epoch == 1));
    assert!((0..3).all(|p| b.acquire(p).unwrap().is_none()));
    assert!(
        a.acquire(0).unwrap().is_none(),
        "not twice, even by its holder"
    );

    a.release(&held[0]).unwrap();
    let taken = b.acquire(0).unwrap().expect("free at once");
    assert_eq!(taken.epoch, 2);
    assert!(
        a.renew(&held[0]).unwrap().is_none(),
        "the old lease is gone"
    );
    assert!(a.renew(&held[1]).unwrap().is_some());
    let holders = b.holders().unwrap();
    assert_eq!(
        holders
            .iter()
            .map(|holder| (holder.partition, holder.owner.as_deref(), holder.epoch))
            .collect::<Vec<_>>(),
        [
            (0, Some("node-b"), 2),
            (1, Some("node-a"), 1),
            (2, Some("node-a"), 1)
        ]
    );

    // Its time run out (the node paused past it), a lease is anyone's, under a new epoch.
    schema.execute(
        "UPDATE partition_lease SET expires_at = now() - interval '1 second' WHERE partition = 1",
    );
    assert_eq!(b.acquire(1).unwrap().unwrap().epoch, 2);
}

/// A node paused past its lease (a zombie) resumes after another took its partition over:
/// every write it tries is refused, and the successor's state is exactly what both committed
/// in turn.
#[test]
fn a_take_over_fences_the_former_owner_and_its_writes_change_nothing() {
    let Some(schema) = TestSchema::new("fencing") else {
        return;
    };
    let (a, b) = (leases(&schema, "node-a"), leases(&schema, "node-b"));
    a.join_cluster(2).unwrap();
    let mut h = Harness::new();
    for _ in 0..3 {
        let id = h.active("web-chat", "a-1");
        h.command(
            &supervisor("sup-1", &["support"]),
            Action::Monitor { conversation: id },
        )
        .ok();
    }
    let (first, second) = h.records.split_at(h.records.len() / 2);

    let lease_a = a.acquire(1).unwrap().unwrap();
    let zombie = PostgresStore::open(&schema.database, &lease_a);
    zombie.commit(&batch(first)).unwrap();

    schema.execute(
        "UPDATE partition_lease SET expires_at = now() - interval '1 second' WHERE partition = 1",
    );
    let lease_b = b.acquire(1).unwrap().unwrap();
    assert_eq!(lease_b.epoch, lease_a.epoch + 1);
    let successor = PostgresStore::open(&schema.database, &lease_b);
    assert_eq!(successor.recover().unwrap().records.len(), first.len());
    successor.commit(&batch(second)).unwrap();

    let fenced = |result: Result<(), StoreError>| {
        assert!(
            matches!(
                result,
                Err(StoreError::Fenced {
                    partition: 1,
                    epoch: 1,
                    current: 2
                })
            ),
            "{result:?}"
        );
    };
    fenced(zombie.commit(&batch(second)));
    fenced(zombie.write_snapshot(&h.engine.state().snapshot()));
    let pending: Vec<String> = successor
        .outbox_after(None, 100)
        .unwrap()
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    fenced(zombie.mark_sent(&pending));
    fenced(zombie.bury(DeadDelivery {
        entry: entry(&first[0]),
        code: "delivery-failed".to_owned(),
        detail: "late".to_owned(),
        attempts: 1,
        failed_at: Millis(0),
    }));
    assert!(a.renew(&lease_a).unwrap().is_none());

    let recovery = successor.recover().unwrap();
    assert!(recovery.snapshot.is_none());
    assert_eq!(
        recovery
            .records
            .iter()
            .map(|record| record.seq)
            .collect::<Vec<_>>(),
        h.records
            .iter()
            .map(|record| record.seq)
            .collect::<Vec<_>>(),
        "each record once, in order"
    );
    assert_eq!(successor.outbox_len().unwrap(), h.records.len() as u64);
    assert!(successor.dead_deliveries(10).unwrap().is_empty());
    let engine = Engine::restore(demo_setup(), None, &recovery.records);
    assert!(engine.state() == h.engine.state());
}

#[test]
fn two_live_processes_cannot_share_a_node_id() {
    let Some(schema) = TestSchema::new("node-ids") else {
        return;
    };
    let first = leases(&schema, "node-a");
    first.register().unwrap();
    first.register().unwrap();
    assert!(first.heartbeat().unwrap());
    let twin = leases(&schema, "node-a");
    let refused = twin.register().unwrap_err().to_string();
    assert!(refused.contains("node_id `node-a` is in use"), "{refused}");
    let other = leases(&schema, "node-b");
    other.register().unwrap();
    assert_eq!(first.live_nodes().unwrap(), ["node-a", "node-b"]);

    // Gone quietly (its heartbeat aged past a lease): the id is free, and the old process,
    // should it come back, learns that it is no longer that node.
    schema.execute(
        "UPDATE node SET heartbeat_at = now() - interval '2 minutes' WHERE node_id = 'node-a'",
    );
    assert_eq!(other.live_nodes().unwrap(), ["node-b"]);
    twin.register().unwrap();
    assert!(!first.heartbeat().unwrap());
    twin.leave().unwrap();
    assert_eq!(other.live_nodes().unwrap(), ["node-b"]);
}

#[test]
fn a_cluster_refuses_a_node_configured_with_another_partition_count() {
    let Some(schema) = TestSchema::new("partition-count") else {
        return;
    };
    leases(&schema, "node-a").join_cluster(8).unwrap();
    let refused = leases(&schema, "node-b").join_cluster(4).unwrap_err();
    assert!(
        refused.to_string().contains("created with 8 partitions")
            && refused.to_string().contains("configuration names 4"),
        "{refused}"
    );
}

#[test]
fn nodes_starting_together_migrate_the_schema_once() {
    let Some(schema) = TestSchema::new("migrate-together") else {
        return;
    };
    schema.execute(&format!("DROP SCHEMA {} CASCADE", schema.name));
    let name = schema.name.clone();
    let opened: Vec<_> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Database::open(&url(), &name)))
            .collect();
        starts
            .into_iter()
            .map(|start| start.join().unwrap())
            .collect()
    });
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    let versions: i64 = schema
        .database
        .connection()
        .run(async |client| {
            Ok(client
                .query_one("SELECT count(*) FROM schema_version", &[])
                .await
                .map_err(read_error)?
                .get(0))
        })
        .unwrap();
    assert_eq!(versions, i64::from(SCHEMA_VERSION));
}

#[test]
fn a_schema_written_by_a_newer_version_is_refused_with_a_clear_message() {
    let Some(schema) = TestSchema::new("newer-schema") else {
        return;
    };
    schema.execute(&format!(
        "INSERT INTO schema_version (version, by_version) VALUES ({}, '9.9.9')",
        SCHEMA_VERSION + 1
    ));
    let refused = Database::open(&url(), &schema.name)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("at version {}", SCHEMA_VERSION + 1)),
        "{refused}"
    );
    assert!(refused.contains("newer Switchboard"), "{refused}");
}

#[test]
fn a_url_requiring_tls_or_a_schema_that_is_not_an_identifier_is_refused_before_connecting() {
    let tls = Database::open("postgresql://u:secret@127.0.0.1:1/db?sslmode=require", "s")
        .unwrap_err()
        .to_string();
    assert!(tls.contains("sslmode=require"), "{tls}");
    assert!(!tls.contains("secret"), "no password in errors: {tls}");
    let schema = Database::open(&url(), "Robert'); DROP TABLE x;--")
        .unwrap_err()
        .to_string();
    assert!(schema.contains("lower-case identifier"), "{schema}");
}

/// The monitor lease across nodes: whom any node heard from within the lease is present for
/// all of them; a user heard from long ago by one node is not, and is again once any node
/// hears from them.
#[test]
fn every_node_sees_whom_any_node_heard_from_within_the_lease() {
    use super::SharedAttendance;
    let Some(schema) = TestSchema::new("attendance") else {
        return;
    };
    let a = SharedAttendance::new(&schema.database, "node-a");
    let b = SharedAttendance::new(&schema.database, "node-b");
    a.record(&["sup-1".to_owned(), "sup-2".to_owned()]).unwrap();
    b.record(&["sup-3".to_owned()]).unwrap();
    b.record(&[]).unwrap();
    let lease = Duration::from_secs(120);
    let mut present: Vec<String> = b.present(lease).unwrap().into_iter().collect();
    present.sort();
    assert_eq!(present, ["sup-1", "sup-2", "sup-3"]);
    schema.execute(
        "UPDATE attendance SET seen_at = now() - interval '5 minutes' WHERE user_id = 'sup-1'",
    );
    assert!(!a.present(lease).unwrap().contains("sup-1"));
    b.record(&["sup-1".to_owned()]).unwrap();
    assert!(a.present(lease).unwrap().contains("sup-1"));
}

/// Moving an embedded store in: all or nothing, only into a new cluster no node serves, and
/// what it wrote is what a partition's owner recovers and a reader follows: the snapshot, the
/// timelines ahead of the partition's own records, the outbox to send, the dead deliveries,
/// and where moved conversations live.
#[test]
fn an_import_writes_a_new_cluster_whole_or_not_at_all() {
    let Some(schema) = TestSchema::new("import") else {
        return;
    };
    let mut h = Harness::with(demo_setup());
    let ids = [h.open("web-chat"), h.open("web-chat")];
    let timeline: Vec<TimelineEntry> = h
        .records
        .iter()
        .flat_map(|record| record.timeline.iter().cloned())
        .filter(|entry| entry.conversation == ids[1])
        .collect();
    assert!(!timeline.is_empty());
    let snapshots = h.engine.state().snapshot().split(2, 1);
    let pending = entry(h.records.last().unwrap());
    let dead = DeadDelivery {
        entry: OutboxEntry {
            id: "dead-1".to_owned(),
            ..entry(&h.records[0])
        },
        code: "delivery-failed".to_owned(),
        detail: "gave up".to_owned(),
        attempts: 3,
        failed_at: Millis(1),
    };
    let parts: Vec<ImportedPartition> = snapshots
        .into_iter()
        .enumerate()
        .map(|(partition, snapshot)| ImportedPartition {
            timelines: snapshot
                .conversations()
                .iter()
                .filter(|conversation| conversation.id == ids[1])
                .map(|conversation| (conversation.id, timeline.clone()))
                .collect(),
            snapshot: Some(snapshot),
            outbox: if partition == 1 {
                vec![pending.clone()]
            } else {
                Vec::new()
            },
            dead: if partition == 0 {
                vec![dead.clone()]
            } else {
                Vec::new()
            },
        })
        .collect();
    let home = |id: ConversationId| {
        parts
            .iter()
            .position(|part| {
                part.snapshot
                    .as_ref()
                    .is_some_and(|snapshot| snapshot.conversations().iter().any(|c| c.id == id))
            })
            .unwrap() as u32
    };
    let moved: Vec<(ConversationId, u32)> = ids.iter().map(|id| (*id, home(*id))).collect();
    let lease = Duration::from_secs(10);

    // A cluster created with another count, or with a live node, is refused.
    let other = leases(&schema, "node-a");
    other.join_cluster(3).unwrap();
    let refused = schema.database.import(&parts, &moved, lease).unwrap_err();
    assert!(refused.to_string().contains("3 partitions"), "{refused}");
    let fresh = TestSchema::new("import_fresh").unwrap();
    let running = leases(&fresh, "node-b");
    running.register().unwrap();
    let refused = fresh.database.import(&parts, &moved, lease).unwrap_err();
    assert!(refused.to_string().contains("node-b"), "{refused}");
    running.leave().unwrap();

    // Into a new cluster: written, and read back as owners and readers read.
    fresh.database.import(&parts, &moved, lease).unwrap();
    let found = fresh.database.moved_conversations().unwrap();
    assert_eq!(found.len(), 2);
    assert!(
        moved
            .iter()
            .all(|(id, partition)| found.get(id) == Some(partition))
    );
    let partition = home(ids[1]);
    let reader = PostgresStore::reader(&fresh.database, partition);
    assert_eq!(reader.timeline(ids[1]).unwrap(), timeline);
    let (snapshot, records) = reader.records_after(0).unwrap();
    assert!(records.is_empty());
    let snapshot = snapshot.expect("a follower from nothing finds the snapshot");
    assert_eq!(
        reader.newest_seqs(2).unwrap(),
        [1, 1],
        "every part stands at seq 1, as the followers see it"
    );
    assert!(snapshot.conversations().iter().any(|c| c.id == ids[1]));
    assert_eq!(
        PostgresStore::reader(&fresh.database, 1)
            .outbox_after(None, 10)
            .unwrap(),
        [pending]
    );
    assert_eq!(
        PostgresStore::reader(&fresh.database, 0)
            .dead_deliveries(10)
            .unwrap(),
        [dead]
    );
    // Once is all: the cluster now holds conversations.
    let again = fresh.database.import(&parts, &moved, lease).unwrap_err();
    assert!(again.to_string().contains("already holds"), "{again}");
}
