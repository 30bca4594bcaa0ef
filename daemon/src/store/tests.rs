//! Store tests: an engine run committed batch by batch and reopened from disk recovers the
//! same state, with or without a snapshot in between; the outbox keeps unsent entries in
//! commit order until they are marked sent; timelines come back per conversation; what only
//! the journal held when the process died comes back, in any interleaving of commits, marks,
//! folds and reads (a property test).

use std::path::PathBuf;

use super::*;
use crate::engine::testing::*;
use crate::engine::*;

pub(super) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-store-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A day in a small contact center: conversations on every channel, supervision, closes.
fn run_scenario(h: &mut Harness) {
    let sup = supervisor("sup-1", &["support"]);
    for round in 0..20 {
        let id = h.active(
            if round % 2 == 0 {
                "web-chat"
            } else {
                "whatsapp-cloud"
            },
            "a-1",
        );
        h.command(&sup, Action::Monitor { conversation: id }).ok();
        h.command(
            &sup,
            Action::Whisper {
                conversation: id,
                text: text("empathy first"),
            },
        )
        .ok();
        h.advance(Millis::MINUTE);
        if round % 3 == 0 {
            h.on(&id, |conversation| EventBody::Closed { conversation });
        }
        h.tick();
    }
}

/// Commits each record in a batch of its own, with two outbox entries for it.
fn commit_one_by_one_with_outbox(store: &dyn Store, records: &[Record]) {
    for record in records {
        store
            .commit(&Batch {
                records: vec![record.clone()],
                outbox: outbox_for(record),
                ..Batch::default()
            })
            .unwrap();
    }
}

fn outbox_for(record: &Record) -> Vec<OutboxEntry> {
    (0..2)
        .map(|part| OutboxEntry {
            id: outbox_id(
                &NotificationId {
                    position: crate::engine::Position {
                        public: record.seq,
                        silent: 0,
                    },
                    index: 0,
                },
                part,
            ),
            routing_key: format!("conversation.{}", record.seq),
            event_type: "dev.switchboard.test".to_owned(),
            subject: None,
            time: record.at,
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            body: b"{}".to_vec(),
        })
        .collect()
}

fn committed_records_survive_a_reopen_and_replay_to_the_same_state(subject: &impl Subject) {
    let mut h = Harness::new();
    run_scenario(&mut h);
    {
        let store = subject.open();
        for chunk in h.records.chunks(7) {
            store
                .commit(&Batch {
                    records: chunk.to_vec(),
                    ..Batch::default()
                })
                .unwrap();
        }
    }
    let store = subject.open();
    let recovery = store.recover().unwrap();
    assert!(recovery.snapshot.is_none());
    assert_eq!(recovery.records.len(), h.records.len());
    let engine = Engine::restore(demo_setup(), recovery.snapshot, &recovery.records);
    assert!(engine.state() == h.engine.state());
}

/// Commits the records `h` made since `from` (an index into `h.records`).
fn commit_since(store: &dyn Store, h: &Harness, from: usize) {
    store
        .commit(&Batch {
            records: h.records[from..].to_vec(),
            ..Batch::default()
        })
        .unwrap();
}

fn a_snapshot_truncates_the_log_and_recovery_uses_both(subject: &impl Subject) {
    let store = subject.open();
    let mut h = Harness::new();
    run_scenario(&mut h);
    commit_since(&store, &h, 0);
    store.write_snapshot(&h.engine.state().snapshot()).unwrap();
    let before = h.records.len();
    run_scenario(&mut h);
    commit_since(&store, &h, before);
    drop(store);

    let recovery = subject.open().recover().unwrap();
    assert_eq!(
        recovery.snapshot.as_ref().unwrap().last_seq,
        h.records[before - 1].seq
    );
    assert_eq!(
        recovery.records.len(),
        h.records.len() - before,
        "the log behind the snapshot is gone"
    );
    let engine = Engine::restore(demo_setup(), recovery.snapshot, &recovery.records);
    assert!(engine.state() == h.engine.state());
}

#[test]
fn a_snapshot_drops_a_long_log_in_chunks_and_never_goes_back_to_an_older_one() {
    let dir = temp_dir("snapshot-chunks");
    let store = RedbStore::open(&dir).unwrap();
    let mut h = Harness::new();
    while h.records.len() <= 2 * embedded::LOG_DROP_CHUNK as usize {
        run_scenario(&mut h);
    }
    commit_since(&store, &h, 0);
    let older = h.engine.state().snapshot();
    let middle = h.records.len();
    run_scenario(&mut h);
    commit_since(&store, &h, middle);
    store.write_snapshot(&h.engine.state().snapshot()).unwrap();
    // A slower snapshot task finishing late with an older state changes nothing: the log
    // behind the newer one is already gone.
    store.write_snapshot(&older).unwrap();
    drop(store);

    let store = RedbStore::open(&dir).unwrap();
    let recovery = store.recover().unwrap();
    drop(store);
    assert_eq!(
        recovery.snapshot.as_ref().unwrap().last_seq,
        h.records.last().unwrap().seq
    );
    assert!(recovery.records.is_empty());
    {
        use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
        let database = redb::Database::create(dir.join("switchboard.redb")).unwrap();
        let transaction = database.begin_read().unwrap();
        let log = transaction.open_table(embedded::LOG).unwrap();
        assert_eq!(log.len().unwrap(), 0, "the whole log went, chunk by chunk");
    }
    let engine = Engine::restore(demo_setup(), recovery.snapshot, &recovery.records);
    assert!(engine.state() == h.engine.state());
    assert!(
        !dir.join(format!("{}.tmp", embedded::SNAPSHOT_FILE))
            .exists(),
        "the temporary file was renamed into place"
    );
}

#[test]
fn a_store_with_its_snapshot_in_redb_from_before_still_recovers() {
    use redb::ReadableDatabase as _;
    let dir = temp_dir("snapshot-legacy");
    let store = RedbStore::open(&dir).unwrap();
    let mut h = Harness::new();
    run_scenario(&mut h);
    commit_since(&store, &h, 0);
    let snapshot = h.engine.state().snapshot();
    let before = h.records.len();
    drop(store);
    // The layout of earlier versions: the snapshot in the `snapshot` table, its log dropped.
    {
        let database = redb::Database::create(dir.join("switchboard.redb")).unwrap();
        let transaction = database.begin_write().unwrap();
        {
            let mut table = transaction.open_table(embedded::SNAPSHOT).unwrap();
            table
                .insert(0, serde_json::to_vec(&snapshot).unwrap().as_slice())
                .unwrap();
            let mut log = transaction.open_table(embedded::LOG).unwrap();
            log.retain_in(..=snapshot.last_seq, |_, _| false).unwrap();
        }
        transaction.commit().unwrap();
    }
    let store = RedbStore::open(&dir).unwrap();
    run_scenario(&mut h);
    commit_since(&store, &h, before);
    let recovery = store.recover().unwrap();
    assert_eq!(
        recovery.snapshot.as_ref().unwrap().last_seq,
        snapshot.last_seq
    );
    assert_eq!(recovery.records.len(), h.records.len() - before);
    let engine = Engine::restore(demo_setup(), recovery.snapshot, &recovery.records);
    assert!(engine.state() == h.engine.state());

    // The next snapshot goes to the file and takes the old one with it.
    store.write_snapshot(&h.engine.state().snapshot()).unwrap();
    drop(store);
    let database = redb::Database::create(dir.join("switchboard.redb")).unwrap();
    let transaction = database.begin_read().unwrap();
    let table = transaction.open_table(embedded::SNAPSHOT).unwrap();
    assert!(table.get(0).unwrap().is_none());
    drop(table);
    drop(transaction);
    drop(database);
    let recovery = RedbStore::open(&dir).unwrap().recover().unwrap();
    assert_eq!(
        recovery.snapshot.as_ref().unwrap().last_seq,
        h.records.last().unwrap().seq
    );
}

fn the_outbox_keeps_unsent_entries_in_commit_order(subject: &impl Subject) {
    let store = subject.open();
    let mut h = Harness::new();
    run_scenario(&mut h);
    commit_one_by_one_with_outbox(&store, &h.records[..12]);
    let pending = store.outbox_after(None, 1000).unwrap();
    assert_eq!(pending.len(), 24);
    let ids: Vec<&String> = pending.iter().map(|entry| &entry.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert!(ids[0].starts_with(&format!("{:020}", h.records[0].seq)));
    store
        .mark_sent(
            &pending[..10]
                .iter()
                .map(|entry| entry.id.clone())
                .collect::<Vec<_>>(),
        )
        .unwrap();
    drop(store);
    let store = subject.open();
    let left = store.outbox_after(None, 1000).unwrap();
    assert_eq!(left.len(), 14);
    assert_eq!(
        left[0], pending[10],
        "after a restart the unsent ones go out again, same ids"
    );

    // Confirmed ids can also leave with the next commit, beside what it adds.
    let next = &h.records[12];
    store
        .commit(&Batch {
            records: vec![next.clone()],
            outbox: outbox_for(next),
            sent: left[..4].iter().map(|entry| entry.id.clone()).collect(),
            ..Batch::default()
        })
        .unwrap();
    drop(store);
    let left_now = subject.open().outbox_after(None, 1000).unwrap();
    assert_eq!(left_now.len(), 14 - 4 + 2);
    assert_eq!(left_now[0], left[4]);
}

fn the_outbox_pages_after_an_id_and_knows_its_size_and_newest_entry(subject: &impl Subject) {
    let store = subject.open();
    assert_eq!(store.outbox_newest_id().unwrap(), None);
    let mut h = Harness::new();
    run_scenario(&mut h);
    commit_one_by_one_with_outbox(&store, &h.records[..6]);
    let all = store.outbox_after(None, 1000).unwrap();
    assert_eq!(store.outbox_len().unwrap(), all.len() as u64);
    assert_eq!(
        store.outbox_newest_id().unwrap().as_ref(),
        all.last().map(|e| &e.id)
    );
    let first = store.outbox_after(None, 3).unwrap();
    assert_eq!(first, all[..3]);
    let next = store.outbox_after(Some(&first[2].id), 1000).unwrap();
    assert_eq!(
        next,
        all[3..],
        "a page starts after the given id, never with it"
    );
    assert!(
        store
            .outbox_after(all.last().map(|e| e.id.as_str()), 10)
            .unwrap()
            .is_empty()
    );
}

fn timelines_come_back_per_conversation(subject: &impl Subject) {
    let store = subject.open();
    let mut h = Harness::new();
    let first = h.active("web-chat", "a-1");
    let second = h.active("web-chat", "a-2");
    h.command(
        &supervisor("sup-1", &["support"]),
        Action::Monitor {
            conversation: first,
        },
    )
    .ok();
    commit_since(&store, &h, 0);
    let timeline = store.timeline(first).unwrap();
    assert!(timeline.iter().all(|entry| entry.conversation == first));
    assert!(matches!(
        timeline.first().unwrap().event,
        TimelineEvent::Created { .. }
    ));
    assert!(matches!(
        timeline.last().unwrap().event,
        TimelineEvent::SupervisionStarted { .. }
    ));
    assert!(
        store
            .timeline(second)
            .unwrap()
            .iter()
            .all(|entry| entry.conversation == second)
    );
}

fn outbox_bodies_are_stored_as_text_when_utf8_and_read_back_in_either_form(subject: &impl Subject) {
    let mut h = Harness::new();
    run_scenario(&mut h);
    let [text, binary] = <[OutboxEntry; 2]>::try_from(outbox_for(&h.records[0])).unwrap();
    let text = OutboxEntry {
        body: "{\"text\":\"olá\"}".as_bytes().to_vec(),
        ..text
    };
    let binary = OutboxEntry {
        body: vec![0xff, 0x00, b'A'],
        ..binary
    };
    let json = serde_json::to_value(&text).unwrap();
    assert_eq!(json["body"], "{\"text\":\"olá\"}");
    assert_eq!(
        serde_json::to_value(&binary).unwrap()["body"],
        serde_json::json!([255, 0, 65])
    );

    // An entry written before bodies were stored as text.
    let mut legacy = json.clone();
    legacy["body"] = serde_json::json!([123, 125]);
    let legacy: OutboxEntry = serde_json::from_value(legacy).unwrap();
    assert_eq!(legacy.body, b"{}");

    let store = subject.open();
    store
        .commit(&Batch {
            records: vec![h.records[0].clone()],
            outbox: vec![text.clone(), binary.clone()],
            ..Batch::default()
        })
        .unwrap();
    drop(store);
    let pending = subject.open().outbox_after(None, 10).unwrap();
    assert_eq!(pending, [text, binary]);
}

/// `records` as recovery returns them: the `log` table keeps no timeline.
fn without_timelines(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .map(|record| Record {
            timeline: Vec::new(),
            ..record.clone()
        })
        .collect()
}

/// The journal segment files in `dir`.
fn journal_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("journal-"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn commits_the_indexer_never_folded_come_back_from_the_journal_after_a_crash() {
    let dir = temp_dir("journal-crash");
    let mut h = Harness::new();
    run_scenario(&mut h);
    let (first, second) = h.records.split_at(h.records.len() / 2);
    {
        let store = RedbStore::open_without_indexer(&dir).unwrap();
        commit_one_by_one_with_outbox(&store, first);
        // Half of it reaches redb durably, half only the journal; then the process dies.
        store.fold().unwrap();
        commit_one_by_one_with_outbox(&store, second);
        assert!(!journal_files(&dir).is_empty());
    }
    // The crash tore the last frame of a commit that was never acknowledged.
    let newest = journal_files(&dir).pop().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut file, &[200, 1, 0, 0, 7, 7]).unwrap();
    drop(file);

    let crashed_segments = journal_files(&dir).len();
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    // Recovery reads the commits redb lacks from memory, without folding them first (a
    // restart under load serves at once; the indexer folds them in the background).
    let recovery = store.recover().unwrap();
    assert_eq!(recovery.records, without_timelines(&h.records));
    assert_eq!(
        journal_files(&dir).len(),
        crashed_segments + 1,
        "the crashed segments stay until redb holds their commits durably; a fresh one takes the next commits"
    );
    let engine = Engine::restore(demo_setup(), recovery.snapshot, &recovery.records);
    assert!(engine.state() == h.engine.state());
    assert_eq!(store.outbox_len().unwrap(), 2 * h.records.len() as u64);
    // Timelines come back from their own table, those of the commits never folded included.
    let last = h
        .records
        .last()
        .unwrap()
        .timeline
        .last()
        .unwrap()
        .conversation;
    let timeline: Vec<TimelineEntry> = h
        .records
        .iter()
        .flat_map(|record| &record.timeline)
        .filter(|entry| entry.conversation == last)
        .cloned()
        .collect();
    assert!(!timeline.is_empty());
    assert_eq!(store.timeline(last).unwrap(), timeline);
    store.fold().unwrap();
    assert_eq!(
        journal_files(&dir).len(),
        1,
        "folded durably, the crashed segments go"
    );
    drop(store);
    let reopened = RedbStore::open_without_indexer(&dir).unwrap();
    assert_eq!(
        reopened.recover().unwrap().records,
        without_timelines(&h.records)
    );
}

#[test]
fn replaying_a_journal_redb_already_holds_changes_nothing() {
    let dir = temp_dir("journal-twice");
    let mut h = Harness::new();
    run_scenario(&mut h);
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    commit_one_by_one_with_outbox(&store, &h.records[..10]);
    let sent: Vec<String> = store
        .outbox_after(None, 5)
        .unwrap()
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    store
        .commit(&Batch {
            records: h.records[10..].to_vec(),
            sent: sent.clone(),
            ..Batch::default()
        })
        .unwrap();
    // A crash between redb's durable commit and the deletion of the segments it holds.
    let kept: Vec<(PathBuf, Vec<u8>)> = journal_files(&dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    store.fold().unwrap();
    let outbox_before = store.outbox_after(None, 1000).unwrap();
    drop(store);
    for (path, bytes) in &kept {
        std::fs::write(path, bytes).unwrap();
    }

    let store = RedbStore::open_without_indexer(&dir).unwrap();
    let recovery = store.recover().unwrap();
    assert_eq!(
        recovery.records,
        without_timelines(&h.records),
        "each record once, in order"
    );
    assert_eq!(store.outbox_after(None, 1000).unwrap(), outbox_before);
    assert!(
        outbox_before.iter().all(|entry| !sent.contains(&entry.id)),
        "confirmed entries stay removed"
    );
}

/// `count` records with nothing in them from `first` on (the journal's bound counts records).
fn empty_records(first: u64, count: u64) -> Vec<Record> {
    (first..first + count)
        .map(|seq| Record {
            seq,
            position: crate::engine::Position::default(),
            at: Millis(0),
            changes: Vec::new(),
            timeline: Vec::new(),
        })
        .collect()
}

#[test]
fn commits_wait_for_the_indexer_once_the_journal_holds_its_bound() {
    let dir = temp_dir("journal-bound");
    let store = std::sync::Arc::new(RedbStore::open_without_indexer(&dir).unwrap());
    let batch = 1_024;
    let mut seq = 1;
    while seq - 1 + batch <= super::embedded::JOURNAL_BOUND_RECORDS as u64 {
        store
            .commit(&Batch {
                records: empty_records(seq, batch),
                ..Batch::default()
            })
            .unwrap();
        seq += batch;
    }
    // The journal is full: the next commit waits until a fold has made room.
    let (done, finished) = std::sync::mpsc::channel();
    let committer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let committed = store.commit(&Batch {
                records: empty_records(seq, batch),
                ..Batch::default()
            });
            done.send(committed).unwrap();
        })
    };
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "a commit past the bound waits for the indexer"
    );
    store.fold().unwrap();
    finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a fold makes room")
        .unwrap();
    committer.join().unwrap();
    // A crash now replays only what came after the fold.
    drop(store);
    let reopened = RedbStore::open_without_indexer(&dir).unwrap();
    assert_eq!(
        reopened.recover().unwrap().records.len() as u64,
        seq + batch - 1
    );
    assert_eq!(reopened.journaled_records(), batch as usize);
}

#[test]
fn readers_see_every_commit_before_the_indexer_folds_it() {
    let dir = temp_dir("journal-readers");
    let mut h = Harness::new();
    let conversation = h.active("web-chat", "a-1");
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    commit_one_by_one_with_outbox(&store, &h.records);
    assert!(!store.timeline(conversation).unwrap().is_empty());
    let all = store.outbox_after(None, 1000).unwrap();
    assert_eq!(all.len(), 2 * h.records.len());
    // A "sent" mark waits behind the commit that added the entry, even when neither has
    // reached redb yet.
    h.on(&conversation, |conversation| EventBody::Closed {
        conversation,
    });
    let closing = h.records.last().unwrap().clone();
    let added = outbox_for(&closing);
    store
        .commit(&Batch {
            records: vec![closing],
            outbox: added.clone(),
            ..Batch::default()
        })
        .unwrap();
    store.mark_sent(&[added[0].id.clone()]).unwrap();
    assert_eq!(store.outbox_len().unwrap(), all.len() as u64 + 1);
    assert_eq!(
        store.outbox_newest_id().unwrap().as_ref(),
        Some(&added[1].id)
    );
}

#[test]
fn an_entry_confirmed_before_its_fold_never_reaches_the_outbox_and_the_rest_stay_in_order() {
    let dir = temp_dir("journal-coalesce");
    let mut h = Harness::new();
    run_scenario(&mut h);
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    let [first, second, third] = [&h.records[0], &h.records[1], &h.records[2]];
    commit_one_by_one_with_outbox(&store, std::slice::from_ref(first));
    store.fold().unwrap();
    let [first_a, first_b] = <[OutboxEntry; 2]>::try_from(outbox_for(first)).unwrap();
    let [second_a, second_b] = <[OutboxEntry; 2]>::try_from(outbox_for(second)).unwrap();
    // In one fold: an entry of an earlier fold confirmed, an entry of this fold confirmed by
    // the next commit, another by a "sent" mark.
    store
        .commit(&Batch {
            records: vec![second.clone()],
            outbox: vec![second_a.clone(), second_b.clone()],
            sent: vec![first_a.id.clone()],
            ..Batch::default()
        })
        .unwrap();
    store
        .commit(&Batch {
            records: vec![third.clone()],
            outbox: outbox_for(third),
            sent: vec![second_a.id.clone()],
            ..Batch::default()
        })
        .unwrap();
    store.mark_sent(std::slice::from_ref(&second_b.id)).unwrap();
    store.fold().unwrap();
    let expected: Vec<OutboxEntry> = std::iter::once(first_b).chain(outbox_for(third)).collect();
    assert_eq!(store.outbox_after(None, 100).unwrap(), expected);
    drop(store);
    let store = RedbStore::open(&dir).unwrap();
    assert_eq!(store.outbox_after(None, 100).unwrap(), expected);
}

/// One step of [`random_commits_marks_folds_and_crashes_keep_what_was_committed`].
#[derive(Clone, Debug)]
enum Step {
    /// Commits `records` new records, each with two outbox entries, confirming the
    /// outstanding entries picked by `confirm` (one bit per entry, oldest first).
    Commit { records: usize, confirm: u64 },
    /// Marks the outstanding entries picked by `confirm` sent, outside any commit.
    MarkSent { confirm: u64 },
    /// The indexer's durable fold.
    Fold,
    /// A reader (a non-durable fold).
    Read,
    /// The process dies and the store is opened again.
    Crash,
}

fn store_step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1..4usize, any::<u64>()).prop_map(|(records, confirm)| Step::Commit { records, confirm }),
        2 => any::<u64>().prop_map(|confirm| Step::MarkSent { confirm }),
        1 => Just(Step::Fold),
        1 => Just(Step::Read),
        1 => Just(Step::Crash),
    ]
}

/// The outstanding ids picked by the bits of `confirm`.
fn picked(outstanding: &[String], confirm: u64) -> Vec<String> {
    outstanding
        .iter()
        .take(64)
        .enumerate()
        .filter(|(bit, _)| confirm & (1 << bit) != 0)
        .map(|(_, id)| id.clone())
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Whatever the interleaving of commits, "sent" marks, folds, reads and crashes: every
    /// committed record comes back once and in order; the outbox holds exactly the entries
    /// not yet removed, except that a crash may bring back ones removed only by a "sent" mark
    /// that no durable fold persisted (they go out again with the same id — never lost).
    #[test]
    fn random_commits_marks_folds_and_crashes_keep_what_was_committed(
        steps in proptest::collection::vec(store_step(), 1..32)
    ) {
        let mut dir = temp_dir("journal-proptest");
        let mut crashes = 0;
        let mut store = RedbStore::open_without_indexer(&dir).unwrap();
        let mut records: Vec<Record> = Vec::new();
        // Entries in the outbox by the model, oldest first, and those removed by marks that
        // only a durable fold makes permanent.
        let mut outstanding: Vec<String> = Vec::new();
        let mut entries: std::collections::HashMap<String, OutboxEntry> = Default::default();
        let mut unpersisted_marks: Vec<String> = Vec::new();
        for step in steps {
            match step {
                Step::Commit { records: count, confirm } => {
                    let sent = picked(&outstanding, confirm);
                    let mut batch = Batch { sent: sent.clone(), ..Batch::default() };
                    for _ in 0..count {
                        let record = Record { seq: records.len() as u64 + 1, ..Record::default() };
                        batch.outbox.extend(outbox_for(&record));
                        batch.records.push(record.clone());
                        records.push(record);
                    }
                    store.commit(&batch).unwrap();
                    outstanding.retain(|id| !sent.contains(id));
                    unpersisted_marks.retain(|id| !sent.contains(id));
                    for entry in batch.outbox {
                        outstanding.push(entry.id.clone());
                        entries.insert(entry.id.clone(), entry);
                    }
                }
                Step::MarkSent { confirm } => {
                    let sent = picked(&outstanding, confirm);
                    store.mark_sent(&sent).unwrap();
                    outstanding.retain(|id| !sent.contains(id));
                    unpersisted_marks.extend(sent);
                }
                Step::Fold => {
                    store.fold().unwrap();
                    unpersisted_marks.clear();
                }
                Step::Read => {
                    let ids: Vec<String> = store
                        .outbox_after(None, usize::MAX)
                        .unwrap()
                        .into_iter()
                        .map(|entry| entry.id)
                        .collect();
                    proptest::prop_assert_eq!(&ids, &outstanding);
                }
                Step::Crash => {
                    // What a `kill -9` leaves is what the files hold now (written, synced or
                    // not): a copy of them, not what the store's orderly drop would leave.
                    crashes += 1;
                    let copy = dir.with_extension(format!("crash-{crashes}"));
                    std::fs::create_dir_all(&copy).unwrap();
                    for file in std::fs::read_dir(&dir).unwrap() {
                        let path = file.unwrap().path();
                        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
                    }
                    drop(store);
                    std::fs::remove_dir_all(&dir).unwrap();
                    dir = copy;
                    store = RedbStore::open_without_indexer(&dir).unwrap();
                    let recovered = store.recover().unwrap();
                    proptest::prop_assert!(recovered.snapshot.is_none());
                    proptest::prop_assert_eq!(&recovered.records, &records);
                    let back: Vec<OutboxEntry> = store.outbox_after(None, usize::MAX).unwrap();
                    for entry in &back {
                        proptest::prop_assert_eq!(Some(entry), entries.get(&entry.id));
                        proptest::prop_assert!(
                            outstanding.contains(&entry.id) || unpersisted_marks.contains(&entry.id),
                            "{} came back though a commit had removed it", entry.id
                        );
                    }
                    for id in &outstanding {
                        proptest::prop_assert!(back.iter().any(|entry| &entry.id == id), "{} was lost", id);
                    }
                    // What came back is outstanding again (ids sort in commit order).
                    outstanding = back.into_iter().map(|entry| entry.id).collect();
                    unpersisted_marks.clear();
                }
            }
        }
        proptest::prop_assert_eq!(&store.recover().unwrap().records, &records);
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_store_of_a_newer_format_is_refused_with_a_clear_message() {
    let dir = temp_dir("store-newer-format");
    drop(RedbStore::open(&dir).unwrap());
    embedded::write_format(&dir, STORE_FORMAT + 1).unwrap();
    let refused = RedbStore::open(&dir).unwrap_err().to_string();
    assert!(
        refused.contains(&format!("format {}", STORE_FORMAT + 1)),
        "{refused}"
    );
    assert!(refused.contains("newer Switchboard"), "{refused}");
    // Its own format opens, again and again.
    embedded::write_format(&dir, STORE_FORMAT).unwrap();
    drop(RedbStore::open(&dir).unwrap());
    drop(RedbStore::open(&dir).unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

/// A stream event at `public` that is not a timeline entry's.
fn summary_event(public: u64) -> crate::stream::StoredEvent {
    crate::stream::StoredEvent {
        id: crate::stream::StreamId {
            position: Position { public, silent: 0 },
            index: 0,
        },
        conversation: ConversationId::from_key(7),
        team: None,
        audience: crate::stream::StreamAudience::Supervisors,
        agent: None,
        timeline: None,
        entry: None,
    }
}

/// The live stream's window after a crash: the events redb holds and those only the journal
/// has, in order, the oldest let go of beyond the window (and the floor moved to it).
#[test]
fn the_stream_window_includes_commits_only_the_journal_holds() {
    let dir = temp_dir("stream-journal");
    let batch = |from: u64, to: u64| Batch {
        records: Vec::new(),
        outbox: vec![OutboxEntry {
            id: outbox_id(
                &NotificationId {
                    position: Position {
                        public: from,
                        silent: 0,
                    },
                    index: 0,
                },
                0,
            ),
            routing_key: "conversation.c".to_owned(),
            event_type: "test".to_owned(),
            subject: None,
            time: Millis(0),
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            body: b"{}".to_vec(),
        }],
        sent: Vec::new(),
        stream: (from..to).map(summary_event).collect(),
        ..Batch::default()
    };
    let window = crate::stream::STREAM_WINDOW as u64;
    {
        let store = RedbStore::open_without_indexer(&dir).unwrap();
        store.commit(&batch(1, window)).unwrap();
        store.fold().unwrap();
        store.commit(&batch(window, window + 5)).unwrap();
    }
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    let restored = store.recover().unwrap().window;
    let ids: Vec<u64> = restored
        .events
        .iter()
        .map(|event| event.id.position.public)
        .collect();
    assert_eq!(ids, (5..window + 5).collect::<Vec<_>>());
    assert_eq!(restored.floor.map(|id| id.position.public), Some(4));
    // Folded, the store reads the same window back.
    store.fold().unwrap();
    let folded = store.recover().unwrap().window;
    assert_eq!(folded.events, restored.events);
    assert_eq!(folded.floor, restored.floor);
}

/// The stream events of timeline entries, as the pipeline makes them: one per entry of each
/// record, in the timeline's order.
fn timeline_events(records: &[Record]) -> Vec<crate::stream::StoredEvent> {
    records
        .iter()
        .flat_map(|record| {
            record
                .timeline
                .iter()
                .enumerate()
                .map(|(index, entry)| crate::stream::StoredEvent {
                    id: crate::stream::StreamId {
                        position: record.position,
                        index: index as u32,
                    },
                    conversation: entry.conversation,
                    team: None,
                    audience: crate::stream::StreamAudience::Supervisors,
                    agent: None,
                    timeline: Some(entry.clone()),
                    entry: None,
                })
        })
        .collect()
}

/// A stream event of a timeline entry is kept by reference to the entry, which its record (in
/// the journal) and the timeline table (in redb) already hold, and comes back whole from both.
#[test]
fn stream_events_keep_their_timeline_entry_by_reference_and_come_back_whole() {
    let dir = temp_dir("stream-by-reference");
    let mut h = Harness::new();
    run_scenario(&mut h);
    let mut events = timeline_events(&h.records);
    assert!(events.len() > 20);
    // An event whose entry is in none of the commit's records stays whole, as format 2 kept
    // every event (and such events read back as they are).
    let mut inline = events[0].clone();
    inline.id.position.public = u64::MAX / 2;
    events.push(inline);
    {
        let store = RedbStore::open_without_indexer(&dir).unwrap();
        store
            .commit(&Batch {
                records: h.records.clone(),
                stream: events.clone(),
                ..Batch::default()
            })
            .unwrap();
        // In the journal's frames (expanded), each whisper's text is in its record once, not
        // again in its event.
        let mut journal = String::new();
        for segment in super::journal::segments(&dir).unwrap() {
            for payload in super::journal::read_segment(&dir, segment, true).unwrap() {
                let json = super::compact::expand(&payload).unwrap();
                journal.push_str(std::str::from_utf8(&json).unwrap());
            }
        }
        let in_records = serde_json::to_string(&h.records)
            .unwrap()
            .matches("empathy first")
            .count();
        assert!(in_records > 0);
        assert_eq!(journal.matches("empathy first").count(), in_records);
    }
    // Crashed before a fold: the events come back from the journal's commit.
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    assert_eq!(store.recover().unwrap().window.events, events);
    // Folded: from redb's stream and timeline tables.
    store.fold().unwrap();
    drop(store);
    let store = RedbStore::open_without_indexer(&dir).unwrap();
    assert_eq!(store.recover().unwrap().window.events, events);
}

/// A dead delivery leaves the outbox for the dead deliveries, survives a restart there, and a
/// resend (journaled) puts it back into the outbox under its own id, also across a restart.
fn dead_deliveries_leave_the_outbox_and_come_back_when_sent_again(subject: &impl Subject) {
    let entry = |n: u64| OutboxEntry {
        id: format!("{n:020}-000000-000000-000"),
        routing_key: "channel.sms-twilio".to_owned(),
        event_type: "dev.switchboard.channel.request".to_owned(),
        subject: Some("c".to_owned()),
        time: Millis(5),
        content_type: "application/x-www-form-urlencoded".to_owned(),
        headers: vec![("switchboard-url".to_owned(), "https://api".to_owned())],
        body: b"To=%2B1".to_vec(),
    };
    {
        let store = subject.open();
        store
            .commit(&Batch {
                outbox: vec![entry(1), entry(2)],
                ..Batch::default()
            })
            .unwrap();
        store
            .bury(DeadDelivery {
                entry: entry(1),
                code: "21610".to_owned(),
                detail: "Attempt to send to unsubscribed recipient".to_owned(),
                attempts: 1,
                failed_at: Millis(9),
            })
            .unwrap();
        let outbox: Vec<String> = store
            .outbox_after(None, 10)
            .unwrap()
            .into_iter()
            .map(|entry| entry.id)
            .collect();
        assert_eq!(outbox, vec![entry(2).id]);
        let dead = store.dead_deliveries(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].entry, entry(1));
        assert_eq!(dead[0].code, "21610");
    }
    {
        let store = subject.open();
        assert_eq!(
            store.dead_deliveries(10).unwrap().len(),
            1,
            "kept across a restart"
        );
        store
            .commit(&Batch {
                resent: vec![entry(1).id],
                ..Batch::default()
            })
            .unwrap();
    }
    let store = subject.open();
    assert!(store.dead_deliveries(10).unwrap().is_empty());
    let outbox = store.outbox_after(None, 10).unwrap();
    assert_eq!(outbox, vec![entry(1), entry(2)]);
}

/// A stream longer than the window comes back as its newest [`crate::stream::STREAM_WINDOW`]
/// events, with the newest one let go of as the floor, across a restart.
fn the_stream_window_keeps_the_newest_events_and_the_floor(subject: &impl Subject) {
    let window = crate::stream::STREAM_WINDOW as u64;
    {
        let store = subject.open();
        assert_eq!(store.recover().unwrap().window.floor, None);
        for (from, to) in [
            (1, window / 2),
            (window / 2, window + 5),
            (window + 5, window + 9),
        ] {
            // Stream events come with what made them (here an outbox entry).
            let mut h = Harness::new();
            run_scenario(&mut h);
            store
                .commit(&Batch {
                    outbox: outbox_for(&h.records[from as usize % h.records.len()]),
                    stream: (from..to).map(summary_event).collect(),
                    ..Batch::default()
                })
                .unwrap();
        }
    }
    let restored = subject.open().recover().unwrap().window;
    let ids: Vec<u64> = restored
        .events
        .iter()
        .map(|event| event.id.position.public)
        .collect();
    assert_eq!(ids.len() as u64, window);
    assert!(
        ids.iter().copied().eq(9..window + 9),
        "the newest, in order: {:?} … {:?}",
        ids.first(),
        ids.last()
    );
    assert_eq!(restored.floor.map(|id| id.position.public), Some(8));
}

/// A snapshot task finishing late with an older state changes nothing.
fn an_older_snapshot_never_replaces_a_newer_one(subject: &impl Subject) {
    let store = subject.open();
    let mut h = Harness::new();
    run_scenario(&mut h);
    commit_since(&store, &h, 0);
    let older = h.engine.state().snapshot();
    let before = h.records.len();
    run_scenario(&mut h);
    commit_since(&store, &h, before);
    store.write_snapshot(&h.engine.state().snapshot()).unwrap();
    store.write_snapshot(&older).unwrap();
    drop(store);
    let recovery = subject.open().recover().unwrap();
    assert_eq!(
        recovery.snapshot.as_ref().unwrap().last_seq,
        h.records.last().unwrap().seq
    );
    assert!(recovery.records.is_empty());
    let engine = Engine::restore(demo_setup(), recovery.snapshot, &recovery.records);
    assert!(engine.state() == h.engine.state());
}

/// What the store test suite needs of a store: opening it, again and again, as a daemon's
/// restarts do.
trait Subject {
    type Opened: Store;
    fn open(&self) -> Self::Opened;
}

/// The embedded store in a directory.
struct Embedded(PathBuf);

impl Subject for Embedded {
    type Opened = RedbStore;
    fn open(&self) -> RedbStore {
        RedbStore::open(&self.0).unwrap()
    }
}

/// One partition of a cluster in PostgreSQL: each opening is a node starting, which takes the
/// partition's lease after the previous one let it go (a new epoch each time).
struct Partition {
    schema: postgres::testing::TestSchema,
    leases: postgres::Leases,
    held: std::sync::Mutex<Option<postgres::Lease>>,
}

impl Partition {
    fn new(test: &str) -> Option<Self> {
        let schema = postgres::testing::TestSchema::new(test)?;
        let leases = postgres::Leases::new(
            &schema.database,
            "node-a",
            std::time::Duration::from_secs(60),
        );
        leases.join_cluster(4).unwrap();
        Some(Self {
            schema,
            leases,
            held: std::sync::Mutex::new(None),
        })
    }
}

impl Subject for Partition {
    type Opened = postgres::PostgresStore;
    fn open(&self) -> postgres::PostgresStore {
        let mut held = self.held.lock().unwrap();
        if let Some(lease) = held.take() {
            self.leases.release(&lease).unwrap();
        }
        let lease = self.leases.acquire(2).unwrap().expect("a free partition");
        *held = Some(lease);
        postgres::PostgresStore::open(&self.schema.database, &lease)
    }
}

/// Each test of the suite, on the embedded store and on PostgreSQL.
macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::Embedded(super::temp_dir(stringify!($test))));
                }
            )*
        }
        mod postgres_store {
            $(
                #[test]
                fn $test() {
                    if let Some(partition) = super::Partition::new(stringify!($test)) {
                        super::$test(&partition);
                    }
                }
            )*
        }
    };
}

store_suite!(
    committed_records_survive_a_reopen_and_replay_to_the_same_state,
    a_snapshot_truncates_the_log_and_recovery_uses_both,
    an_older_snapshot_never_replaces_a_newer_one,
    the_outbox_keeps_unsent_entries_in_commit_order,
    the_outbox_pages_after_an_id_and_knows_its_size_and_newest_entry,
    timelines_come_back_per_conversation,
    outbox_bodies_are_stored_as_text_when_utf8_and_read_back_in_either_form,
    dead_deliveries_leave_the_outbox_and_come_back_when_sent_again,
    the_stream_window_keeps_the_newest_events_and_the_floor,
);
