//! The embedded store: commits go to the journal (`journal`: one append and one `fdatasync` per
//! group commit); an indexer thread folds them into one redb file under `store.path` every
//! [`FOLD_INTERVAL`] (or sooner when many are waiting) in one durable redb commit, then deletes
//! the journal segments redb now holds. Records, timeline and outbox are JSON values in redb
//! tables (an outbox body as a JSON string when it is UTF-8, see `OutboxEntry`), compressed
//! with LZ4 when that is smaller (`compact`), as are journal frames and snapshots; readers fold
//! what is waiting first (a non-durable redb commit), so they always see every commit. On open,
//! the segments a crash left behind are replayed into redb: applying a frame twice changes
//! nothing (every write is keyed), so a crash between redb's commit and a segment's deletion is
//! harmless.
//!
//! The latest snapshot lives in a file beside the database because redb has one write
//! transaction at a time: a snapshot written into it (megabytes and their fsync) held every
//! commit behind it, a stall that grows with the state. Written to a file (temporary file,
//! fsync, rename, fsync of the directory), it blocks nothing; only then is the log behind it
//! dropped, in small non-durable transactions. Stores written before keep their snapshot in the
//! `snapshot` table, which is still read.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::journal::{self, Frame, Journal};
use super::{
    Batch, DeadDelivery, LoggedRecord, OutboxEntry, Recovery, STREAM_WINDOW, Store, StoreError,
    decode, encode_compressed, read_error, write_error,
};
use crate::engine::{ConversationId, Position, Record, Snapshot, TimelineEntry};
use crate::stream::{StoredEvent, StoredWindow, StreamId};

/// seq -> record.
pub(super) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// 0 -> the latest snapshot, in stores written before snapshots moved to [`SNAPSHOT_FILE`].
pub(super) const SNAPSHOT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshot");
/// outbox id -> unsent entry (removed once its publication is confirmed).
const OUTBOX: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("outbox");
/// (conversation ordinal, seq, index) -> timeline entry. Keyed by the conversation's ordinal
/// ([`ORDINALS`]), not its id: ids are hashes, so entries keyed by them landed all over the
/// table and each fold rewrote a page per conversation it touched (most of the bytes redb wrote
/// per event, growing with the store); ordinals grow with the conversations, so a fold's
/// entries gather in the pages of the newest conversations.
const TIMELINE: TableDefinition<'_, (u64, u64, u32), &[u8]> =
    TableDefinition::new("conversation_timeline");
/// Conversation key -> its ordinal: 0, 1, 2, … in the order their first timeline entries were
/// folded.
const ORDINALS: TableDefinition<'_, u128, u64> = TableDefinition::new("conversation_ordinal");
/// Formats 1 to 3: (conversation key, seq, index) -> timeline entry; moved into [`TIMELINE`]
/// on open.
const KEYED_TIMELINE: TableDefinition<'_, (u128, u64, u32), &[u8]> =
    TableDefinition::new("timeline");
/// (public, silent, index) position -> the live stream's event, the newest [`STREAM_WINDOW`].
const STREAM: TableDefinition<'_, (u64, u32, u32), &[u8]> = TableDefinition::new("stream");
/// `format` -> the store format this directory is written in ([`STORE_FORMAT`]).
/// Dead deliveries by outbox id: the encoded [`DeadDelivery`].
const DEAD: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("dead_deliveries");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// 0 -> the position of the newest stream event let go of (resuming from before it is a gap).
const STREAM_FLOOR: TableDefinition<'_, u8, (u64, u32, u32)> = TableDefinition::new("stream_floor");

/// The store format this version writes, and the newest it reads. A store has a format so
/// that an upgrade reads what the version before wrote (each step up is a migration, run on
/// open, once) and a downgrade refuses what it cannot read instead of misreading it.
///
/// - 1: stores written before the format was recorded (no `meta` table).
/// - 2: records carry their position (ids no longer derive from the log position; format 1's
///   records stand at theirs, read as is); the live stream's window (`stream`,
///   `stream_floor`); thread keys name the business endpoint (format 1's keys stay valid for
///   the conversations that have them).
/// - 3: a stream event of a timeline entry names the entry (`StoredEvent::entry`) instead of
///   repeating it, in the journal and in `stream` (format 2's events, whole, read as they are).
/// - 4: timeline entries keyed by conversation ordinal ([`TIMELINE`], [`ORDINALS`]) instead of
///   conversation id (`timeline`, moved on open).
/// - 5: values, journal frames and the snapshot file are JSON compressed with LZ4 when that is
///   smaller (`compact`); format 4's plain JSON reads as it is.
pub const STORE_FORMAT: u64 = 5;

/// The latest snapshot, beside the database (its name from when it was plain JSON; now compressed
/// as `compact` says).
pub(super) const SNAPSHOT_FILE: &str = "snapshot.json";
/// Log records dropped per transaction behind a snapshot: commits get the write lock between
/// two of them.
pub(super) const LOG_DROP_CHUNK: u64 = 1_000;
/// How often the indexer folds the journal into redb. Longer means fewer durable redb commits
/// (their fixed cost is what the journal saves, and each one rewrites every timeline page the
/// fold touched) but more to replay after a crash and more commits held in memory. Flat out,
/// the indexer took ~22 % of the daemon's CPU at 200 ms and ~19 % at one second.
pub(super) const FOLD_INTERVAL: Duration = Duration::from_secs(1);
/// Records in the journal's current segment that wake the indexer before [`FOLD_INTERVAL`] is
/// up.
const FOLD_AT_RECORDS: usize = 8_192;
/// Records in journal segments not yet deleted (folded durably) at which commits wait for the
/// indexer. What a restart after `kill -9` decodes from the journal is bounded by it whatever
/// the write rate: without it a flood faster than redb's folds grew the journal, and the
/// memory holding it, without limit. Two folds' worth: one being folded, one filling.
pub(super) const JOURNAL_BOUND_RECORDS: usize = 2 * FOLD_AT_RECORDS;
/// How long a commit waits for the indexer to make room before it fails (the indexer cannot
/// fold, and says why in the log; the transport retries the batch later).
const JOURNAL_WAIT: Duration = Duration::from_secs(30);

/// The embedded store: the journal in front of redb.
#[derive(Debug)]
pub struct RedbStore {
    shared: Arc<Shared>,
    /// The indexer thread; `None` in tests that fold by hand (and "crash" by dropping).
    indexer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    database: Database,
    dir: PathBuf,
    /// The sequence number of the latest snapshot written by this process. Held while one is
    /// written, so that two never interleave and an older one never replaces a newer one (the
    /// log behind the newer one may already be gone).
    snapshot_written: Mutex<u64>,
    /// The segment commits append to, and the commits redb does not hold yet.
    tail: Mutex<Tail>,
    /// Wakes the indexer early (many records waiting, or shutting down).
    wake: Condvar,
    /// Wakes commits waiting for room in the journal ([`JOURNAL_BOUND_RECORDS`]).
    drained: Condvar,
    /// Held while batches move from the tail into redb, so that they arrive in commit order.
    folding: Mutex<Folding>,
}

#[derive(Debug)]
struct Tail {
    journal: Journal,
    /// Committed (or marked sent) and not yet in redb, in commit order.
    pending: Vec<Batch>,
    /// Records appended to the current segment.
    segment_records: usize,
    /// Records in every segment not deleted yet (the current one included): what a restart
    /// would replay.
    journaled_records: usize,
    /// A commit waits for room in the journal: the indexer folds now.
    room_wanted: bool,
    stopping: bool,
}

#[derive(Debug, Default)]
struct Folding {
    /// Segments no longer appended to whose frames are in redb, perhaps not durably yet,
    /// with the records each holds: deleted after the next durable redb commit.
    retired: Vec<(u64, usize)>,
    /// A non-durable fold applied something (a reader's, perhaps only "sent" marks, which
    /// no segment holds) that the next durable fold must persist.
    unpersisted: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, no broken invariant
    // a later caller could trip on: carry on.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl RedbStore {
    /// The store's file in its directory.
    pub const FILE: &str = "switchboard.redb";

    /// Opens (or creates) `dir/switchboard.redb`, replays what a crash left in the journal and
    /// starts the indexer.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut store = Self::open_without_indexer(dir)?;
        let shared = store.shared.clone();
        let indexer = std::thread::Builder::new()
            .name("store-indexer".to_owned())
            .spawn(move || shared.run_indexer())
            .map_err(|error| StoreError::Open {
                path: dir.display().to_string(),
                reason: format!("cannot start the store's indexer thread: {error}"),
            })?;
        store.indexer = Some(indexer);
        Ok(store)
    }

    /// [`Self::open`] without the indexer: the journal is folded into redb only by readers and
    /// by [`Self::fold`], and dropping the store leaves the journal as a crash would.
    pub(super) fn open_without_indexer(dir: &Path) -> Result<Self, StoreError> {
        let failed = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|error| failed(error.to_string()))?;
        let started = std::time::Instant::now();
        let reported = std::cell::Cell::new(false);
        let database = Database::builder()
            .set_repair_callback(move |_| {
                // Called again and again while the repair runs: once is enough.
                if !reported.replace(true) {
                    tracing::warn!(
                        "the store's database file was not closed cleanly and its last commit recorded no allocator state (a store last written by an earlier version): redb walks the whole file to repair it, which takes time in proportion to its size"
                    );
                }
            })
            .create(dir.join(Self::FILE))
            .map_err(|error| failed(error.to_string()))?;
        let database_opened = started.elapsed();
        let found = stored_format(&database).map_err(|error| failed(error.to_string()))?;
        if let Some(format) = found
            && format > STORE_FORMAT
        {
            return Err(failed(format!(
                "the store is in format {format}, written by a newer Switchboard; this version reads formats up to {STORE_FORMAT}: upgrade Switchboard or restore a backup of the data directory"
            )));
        }
        // Create the tables up front so that readers never meet a missing table.
        let mut transaction = database
            .begin_write()
            .map_err(|error| failed(error.to_string()))?;
        // Every durable commit records the allocator state (see `apply`): a crash right after
        // this one must not cost a full repair either.
        transaction.set_quick_repair(true);
        {
            transaction
                .open_table(META)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(LOG)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(SNAPSHOT)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(OUTBOX)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(TIMELINE)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(ORDINALS)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(STREAM)
                .map_err(|error| failed(error.to_string()))?;
            transaction
                .open_table(STREAM_FLOOR)
                .map_err(|error| failed(error.to_string()))?;
        }
        transaction
            .commit()
            .map_err(|error| failed(error.to_string()))?;
        let unfolded = read_journal(dir)?;
        tracing::info!(
            database_millis = database_opened.as_millis() as u64,
            journal_millis = (started.elapsed() - database_opened).as_millis() as u64,
            "opened the store"
        );
        // A store already in this format serves at once: the journal's commits wait in memory
        // as if just made and the indexer folds them in the background (a restart after
        // `kill -9` under load would otherwise first spend seconds writing them into redb).
        // Their segments go once that fold is durable. A store of an earlier format applies
        // them first, so that the migration sees everything.
        let (pending, retired) = if found == Some(STORE_FORMAT) {
            (unfolded.batches, unfolded.segments)
        } else {
            if !unfolded.batches.is_empty() {
                apply(&database, &unfolded.batches, Durability::Immediate)?;
            }
            for &(segment, _) in &unfolded.segments {
                journal::remove_segment(dir, segment)?;
            }
            (Vec::new(), Vec::new())
        };
        if !pending.is_empty() {
            tracing::info!(
                segments = retired.len(),
                commits = pending.len(),
                "the journal holds commits the store had not folded (the daemon had stopped without folding them): folding them in the background"
            );
        }
        migrate(&database, dir, found)?;
        let journal = Journal::create(dir, unfolded.next_segment)?;
        let journaled_records = retired.iter().map(|&(_, records)| records).sum();
        Ok(Self {
            shared: Arc::new(Shared {
                database,
                dir: dir.to_owned(),
                snapshot_written: Mutex::new(0),
                tail: Mutex::new(Tail {
                    journal,
                    pending,
                    // The replayed commits are not counted towards waking the indexer early:
                    // its first fold comes after `FOLD_INTERVAL`, and the daemon's recovery
                    // (which holds folds off while it reads) starts well before that instead
                    // of waiting for a fold.
                    segment_records: 0,
                    journaled_records,
                    room_wanted: false,
                    stopping: false,
                }),
                wake: Condvar::new(),
                drained: Condvar::new(),
                folding: Mutex::new(Folding {
                    retired,
                    unpersisted: false,
                }),
            }),
            indexer: None,
        })
    }

    /// Records in journal segments not deleted yet.
    #[cfg(test)]
    pub(super) fn journaled_records(&self) -> usize {
        lock(&self.shared.tail).journaled_records
    }

    /// Folds every commit so far into redb durably and deletes the journal segments it held.
    #[cfg(test)]
    pub(super) fn fold(&self) -> Result<(), StoreError> {
        self.shared.fold(true)
    }
}

impl Drop for RedbStore {
    /// Stops the indexer, which folds the journal into redb one last time.
    fn drop(&mut self) {
        if let Some(indexer) = self.indexer.take() {
            lock(&self.shared.tail).stopping = true;
            self.shared.wake.notify_all();
            if indexer.join().is_err() {
                tracing::error!(
                    "the store's indexer panicked; the journal is replayed on the next start"
                );
            }
        }
    }
}

/// The format a store is in: `None` for a new store, 1 for one written before formats were
/// recorded (it has a `log` table and no `meta`).
fn stored_format(database: &Database) -> Result<Option<u64>, redb::Error> {
    let transaction = database.begin_read()?;
    match transaction.open_table(META) {
        Ok(meta) => {
            if let Some(format) = meta.get("format")? {
                return Ok(Some(format.value()));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(error.into()),
    }
    Ok(match transaction.open_table(LOG) {
        Ok(_) => Some(1),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(error) => return Err(error.into()),
    })
}

/// Brings a store of an earlier format to [`STORE_FORMAT`], one step at a time, and records it.
///
/// 1 -> 2 transforms nothing (format 1's records read as records at their log position, its
/// keys as keys without an endpoint, and the stream tables start empty): it reads every record
/// and the snapshot once, so that a store this version cannot read is refused here, with the
/// entry named, rather than half-applied later. 2 -> 3 transforms nothing either: format 2's
/// stream events, whole, read as they are. 3 -> 4 moves the timeline to conversation
/// ordinals. 4 -> 5 transforms nothing: plain JSON reads as it is beside compressed values.
fn migrate(database: &Database, dir: &Path, found: Option<u64>) -> Result<(), StoreError> {
    let from = found.unwrap_or(STORE_FORMAT);
    if from < 2 {
        let transaction = database.begin_read().map_err(read_error)?;
        let log = transaction.open_table(LOG).map_err(read_error)?;
        let mut records = 0usize;
        for row in log.iter().map_err(read_error)? {
            let (_, bytes) = row.map_err(read_error)?;
            decode::<Record>(bytes.value(), "log record of format 1")?;
            records += 1;
        }
        let snapshot = dir.join(SNAPSHOT_FILE);
        if snapshot.exists() {
            let bytes = std::fs::read(&snapshot).map_err(read_error)?;
            decode::<Snapshot>(&bytes, "snapshot of format 1")?;
        }
        tracing::info!(
            from,
            to = STORE_FORMAT,
            records,
            "migrated the store's format"
        );
    }
    if found != Some(STORE_FORMAT) {
        let mut transaction = database.begin_write().map_err(write_error)?;
        transaction.set_quick_repair(true);
        if from < 4 {
            let moved = move_keyed_timeline(&transaction)?;
            tracing::info!(
                entries = moved,
                "moved the timeline to conversation ordinals"
            );
        }
        {
            let mut meta = transaction.open_table(META).map_err(write_error)?;
            meta.insert("format", STORE_FORMAT).map_err(write_error)?;
        }
        transaction.commit().map_err(write_error)?;
    }
    Ok(())
}

/// 3 -> 4: every entry of the `timeline` table keyed by conversation id moves to [`TIMELINE`]
/// under its conversation's ordinal, and the old table goes. Entries the journal of the old
/// store already put there (replayed before the migration) keep their ordinals.
fn move_keyed_timeline(transaction: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut timeline = transaction.open_table(TIMELINE).map_err(write_error)?;
    let mut ordinals = Ordinals::new(transaction.open_table(ORDINALS).map_err(write_error)?);
    let mut moved = 0;
    {
        let keyed = match transaction.open_table(KEYED_TIMELINE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(error) => return Err(write_error(error)),
        };
        for row in keyed.iter().map_err(write_error)? {
            let (key, entry) = row.map_err(write_error)?;
            let (conversation, seq, index) = key.value();
            let ordinal = ordinals.of(conversation)?;
            timeline
                .insert((ordinal, seq, index), entry.value())
                .map_err(write_error)?;
            moved += 1;
        }
    }
    transaction
        .delete_table(KEYED_TIMELINE)
        .map_err(write_error)?;
    Ok(moved)
}

/// Writes `format` as the store's format (tests: a store from a newer version).
#[cfg(test)]
pub(super) fn write_format(dir: &Path, format: u64) -> Result<(), StoreError> {
    let database = Database::create(dir.join(RedbStore::FILE)).map_err(write_error)?;
    let transaction = database.begin_write().map_err(write_error)?;
    {
        let mut meta = transaction.open_table(META).map_err(write_error)?;
        meta.insert("format", format).map_err(write_error)?;
    }
    transaction.commit().map_err(write_error)
}

/// What the journal holds at open: commits that may not be in redb yet.
struct Unfolded {
    batches: Vec<Batch>,
    /// The segments they came from and the records in each, deleted once redb holds them
    /// durably.
    segments: Vec<(u64, usize)>,
    /// The number for the next segment.
    next_segment: u64,
}

fn read_journal(dir: &Path) -> Result<Unfolded, StoreError> {
    let segments = journal::segments(dir)?;
    let Some(&newest) = segments.last() else {
        return Ok(Unfolded {
            batches: Vec::new(),
            segments: Vec::new(),
            next_segment: 0,
        });
    };
    let mut batches = Vec::new();
    let mut counted = Vec::with_capacity(segments.len());
    for &segment in &segments {
        let mut records = 0;
        for payload in journal::read_segment(dir, segment, segment == newest)? {
            let batch = decode::<Batch>(&payload, "journal frame")?;
            records += batch.records.len();
            batches.push(batch);
        }
        counted.push((segment, records));
    }
    Ok(Unfolded {
        batches,
        segments: counted,
        next_segment: newest + 1,
    })
}

/// Writes `batches` into redb in one transaction, with the outcome of writing them in order.
///
/// An outbox entry removed later in the same run of batches (its publication confirmed within
/// [`FOLD_INTERVAL`], the usual case with a broker) is not inserted at all: inserting and then
/// removing it leaves it absent, as removing it alone does. That spares redb most of the
/// outbox, the largest values it would write (bodies of a kilobyte, JSON-escaped).
fn apply(database: &Database, batches: &[Batch], durability: Durability) -> Result<(), StoreError> {
    let mut last_removal: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (position, batch) in batches.iter().enumerate() {
        for id in &batch.sent {
            last_removal.insert(id.as_str(), position);
        }
    }
    // A batch's own removals come after its insertions (they are of entries committed before).
    let removed_later = |id: &str, position: usize| {
        last_removal
            .get(id)
            .is_some_and(|&removal| removal >= position)
    };
    let mut transaction = database.begin_write().map_err(write_error)?;
    transaction
        .set_durability(durability)
        .map_err(write_error)?;
    // A durable fold records redb's allocator state (and commits in two phases), so that
    // opening the file after `kill -9` loads that state instead of walking the whole database
    // to rebuild it (most of a restart's time with a large store). It costs once per durable
    // fold, about one a second.
    transaction.set_quick_repair(matches!(durability, Durability::Immediate));
    {
        let mut log = transaction.open_table(LOG).map_err(write_error)?;
        let mut timeline = transaction.open_table(TIMELINE).map_err(write_error)?;
        let mut ordinals = Ordinals::new(transaction.open_table(ORDINALS).map_err(write_error)?);
        let mut outbox = transaction.open_table(OUTBOX).map_err(write_error)?;
        let mut stream = transaction.open_table(STREAM).map_err(write_error)?;
        for (position, batch) in batches.iter().enumerate() {
            for event in &batch.stream {
                stream
                    .insert(stream_key(event.id), encode_compressed(event)?.as_slice())
                    .map_err(write_error)?;
            }
            for record in &batch.records {
                log.insert(
                    record.seq,
                    encode_compressed(&LoggedRecord::of(record))?.as_slice(),
                )
                .map_err(write_error)?;
                for (index, entry) in record.timeline.iter().enumerate() {
                    let ordinal = ordinals.of(entry.conversation.key())?;
                    let key = (ordinal, record.seq, index as u32);
                    timeline
                        .insert(key, encode_compressed(entry)?.as_slice())
                        .map_err(write_error)?;
                }
            }
            for entry in &batch.outbox {
                if removed_later(&entry.id, position) {
                    continue;
                }
                outbox
                    .insert(entry.id.as_str(), encode_compressed(entry)?.as_slice())
                    .map_err(write_error)?;
            }
            for id in &batch.sent {
                outbox.remove(id.as_str()).map_err(write_error)?;
            }
            if !batch.dead.is_empty() || !batch.resent.is_empty() {
                let mut dead = transaction.open_table(DEAD).map_err(write_error)?;
                for buried in &batch.dead {
                    outbox
                        .remove(buried.entry.id.as_str())
                        .map_err(write_error)?;
                    dead.insert(
                        buried.entry.id.as_str(),
                        encode_compressed(buried)?.as_slice(),
                    )
                    .map_err(write_error)?;
                }
                for id in &batch.resent {
                    let Some(bytes) = dead.remove(id.as_str()).map_err(write_error)? else {
                        continue;
                    };
                    let buried: DeadDelivery = decode(bytes.value(), "dead delivery")?;
                    outbox
                        .insert(id.as_str(), encode_compressed(&buried.entry)?.as_slice())
                        .map_err(write_error)?;
                }
            }
        }
        // The window stays the newest events; the newest one let go becomes the floor.
        let mut let_go = None;
        while stream.len().map_err(write_error)? > STREAM_WINDOW as u64 {
            match stream.pop_first().map_err(write_error)? {
                Some((key, _)) => let_go = Some(key.value()),
                None => break,
            }
        }
        if let Some(key) = let_go {
            let mut floor = transaction.open_table(STREAM_FLOOR).map_err(write_error)?;
            floor.insert(0, key).map_err(write_error)?;
        }
    }
    transaction.commit().map_err(write_error)
}

/// `batch` as the store keeps it: each stream event of a timeline entry of one of the batch's
/// records names that entry ([`StoredEvent::entry`]) instead of repeating it. The entry is
/// already in the record (the journal) and in [`TIMELINE`] (redb): repeated, it was a fifth of
/// what each commit wrote and encoded. An event that is not exactly its record's entry (of the
/// same conversation, at its index) stays whole.
fn by_reference(batch: &Batch) -> Batch {
    let mut kept = batch.clone();
    for event in &mut kept.stream {
        let Some(entry) = &event.timeline else {
            continue;
        };
        let record = batch
            .records
            .iter()
            .find(|record| record.position == event.id.position);
        if let Some(record) = record
            && entry.conversation == event.conversation
            && record.timeline.get(event.id.index as usize) == Some(entry)
        {
            event.entry = Some(record.seq);
            event.timeline = None;
        }
    }
    kept
}

/// The live stream's window as redb holds it, events made whole (their timeline entries read
/// back from the timeline table), and the floor.
fn read_window(
    transaction: &redb::ReadTransaction,
) -> Result<(std::collections::VecDeque<StoredEvent>, Option<StreamId>), StoreError> {
    let stream = transaction.open_table(STREAM).map_err(read_error)?;
    let timelines = transaction.open_table(TIMELINE).map_err(read_error)?;
    let ordinals = transaction.open_table(ORDINALS).map_err(read_error)?;
    let mut events = std::collections::VecDeque::new();
    for row in stream.iter().map_err(read_error)? {
        let (_, bytes) = row.map_err(read_error)?;
        let mut event = decode::<StoredEvent>(bytes.value(), "stream event")?;
        if let Some(seq) = event.entry.take() {
            let missing = || StoreError::Corrupt {
                what: format!("stream event {}", event.id),
                reason: format!("its timeline entry (record {seq}) is missing"),
            };
            let ordinal = ordinals
                .get(event.conversation.key())
                .map_err(read_error)?
                .ok_or_else(missing)?
                .value();
            let key = (ordinal, seq, event.id.index);
            let entry = timelines
                .get(key)
                .map_err(read_error)?
                .ok_or_else(missing)?;
            event.timeline = Some(decode(entry.value(), "timeline entry")?);
        }
        events.push_back(event);
    }
    let floor = transaction.open_table(STREAM_FLOOR).map_err(read_error)?;
    let floor = floor
        .get(0)
        .map_err(read_error)?
        .map(|key| stream_id(key.value()));
    Ok((events, floor))
}

/// A stream event of a commit still in the journal, its timeline entry filled back in from the
/// commit's records.
fn whole(event: &StoredEvent, records: &[Record]) -> Result<StoredEvent, StoreError> {
    let Some(seq) = event.entry else {
        return Ok(event.clone());
    };
    let entry = records
        .iter()
        .find(|record| record.seq == seq)
        .and_then(|record| record.timeline.get(event.id.index as usize))
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("stream event {}", event.id),
            reason: format!("its timeline entry (record {seq}) is not in its commit"),
        })?;
    Ok(StoredEvent {
        timeline: Some(entry.clone()),
        entry: None,
        ..event.clone()
    })
}

/// The ordinals table while a fold writes: a conversation's ordinal, given on its first entry.
struct Ordinals<'txn> {
    table: redb::Table<'txn, u128, u64>,
    /// Those this fold looked up or gave (a fold's entries are mostly of few conversations).
    known: std::collections::HashMap<u128, u64>,
}

impl<'txn> Ordinals<'txn> {
    fn new(table: redb::Table<'txn, u128, u64>) -> Self {
        Self {
            table,
            known: std::collections::HashMap::new(),
        }
    }

    fn of(&mut self, conversation: u128) -> Result<u64, StoreError> {
        if let Some(&ordinal) = self.known.get(&conversation) {
            return Ok(ordinal);
        }
        let found = self
            .table
            .get(conversation)
            .map_err(write_error)?
            .map(|found| found.value());
        let ordinal = match found {
            Some(ordinal) => ordinal,
            None => {
                // Ordinals are never removed: the next one is the count so far.
                let next = self.table.len().map_err(write_error)?;
                self.table.insert(conversation, next).map_err(write_error)?;
                next
            }
        };
        self.known.insert(conversation, ordinal);
        Ok(ordinal)
    }
}

fn stream_key(id: StreamId) -> (u64, u32, u32) {
    (id.position.public, id.position.silent, id.index)
}

fn stream_id((public, silent, index): (u64, u32, u32)) -> StreamId {
    StreamId {
        position: Position { public, silent },
        index,
    }
}

impl Shared {
    fn run_indexer(&self) {
        loop {
            let stopping = {
                let tail = lock(&self.tail);
                let (mut tail, _) = self
                    .wake
                    .wait_timeout_while(tail, FOLD_INTERVAL, |tail| {
                        !tail.stopping
                            && !tail.room_wanted
                            && tail.segment_records < FOLD_AT_RECORDS
                    })
                    .unwrap_or_else(|poison| poison.into_inner());
                tail.room_wanted = false;
                tail.stopping
            };
            if let Err(error) = self.fold(true) {
                tracing::error!(
                    error = %error,
                    "cannot fold the journal into the store; the journal keeps the commits, retrying"
                );
                if !stopping {
                    // Not at once: what failed (a full disk, say) takes time to change.
                    std::thread::sleep(FOLD_INTERVAL);
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Moves the commits waiting in memory into redb, in order. `durable`: in a durable redb
    /// commit, after which the segments they came from are deleted (the journal moves on to a
    /// new segment first); otherwise in a non-durable one, only so that readers see them.
    fn fold(&self, durable: bool) -> Result<(), StoreError> {
        let mut folding = lock(&self.folding);
        // Only a fold moves the journal to a new segment, and folds hold `folding`: the number
        // read here is still current below. The new file is made durable before the tail lock
        // is taken, so commits do not wait for it.
        let next = match durable {
            true => {
                let tail = lock(&self.tail);
                (!tail.journal.is_empty()).then(|| tail.journal.segment() + 1)
            }
            false => None,
        };
        let next = next
            .map(|segment| Journal::create(&self.dir, segment))
            .transpose()?;
        let batches = {
            let mut tail = lock(&self.tail);
            if let Some(next) = next {
                let retired = std::mem::replace(&mut tail.journal, next);
                let records = std::mem::take(&mut tail.segment_records);
                folding.retired.push((retired.segment(), records));
            }
            std::mem::take(&mut tail.pending)
        };
        // A durable fold with nothing new still persists what earlier non-durable ones
        // applied, so that the segments holding it can go and the marks stay made.
        let nothing_to_persist = !durable || (folding.retired.is_empty() && !folding.unpersisted);
        if batches.is_empty() && nothing_to_persist {
            return Ok(());
        }
        let durability = match durable {
            true => Durability::Immediate,
            false => Durability::None,
        };
        if let Err(error) = apply(&self.database, &batches, durability) {
            // Back in front of what came since, so that nothing is skipped or reordered.
            let mut tail = lock(&self.tail);
            tail.pending.splice(0..0, batches);
            return Err(error);
        }
        folding.unpersisted = !durable;
        if durable {
            // One that cannot be deleted now is tried again after the next durable fold (and
            // replayed harmlessly should the daemon stop first).
            let mut failure = None;
            let mut deleted_records = 0;
            folding.retired.retain(|&(segment, records)| {
                let kept = journal::remove_segment(&self.dir, segment)
                    .map_err(|error| failure = Some(error))
                    .is_err();
                if !kept {
                    deleted_records += records;
                }
                kept
            });
            if deleted_records > 0 {
                lock(&self.tail).journaled_records -= deleted_records;
                self.drained.notify_all();
            }
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Ok(())
    }

    fn read_snapshot_file(&self) -> Result<Option<Snapshot>, StoreError> {
        match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => decode(&bytes, "snapshot").map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(read_error(error)),
        }
    }

    /// Replaces the snapshot file atomically: a crash leaves either the old file or the new
    /// one, never a part, and the new one is on disk (its name included) when this returns.
    fn write_snapshot_file(&self, encoded: &[u8]) -> Result<(), StoreError> {
        let temporary = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = std::fs::File::create(&temporary).map_err(write_error)?;
        file.write_all(encoded).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        drop(file);
        std::fs::rename(&temporary, self.dir.join(SNAPSHOT_FILE)).map_err(write_error)?;
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_error)
    }

    /// Drops the log records up to `last_seq` (and a snapshot left in the old table), a chunk
    /// per non-durable transaction.
    fn drop_log_through(&self, last_seq: u64) -> Result<(), StoreError> {
        let mut legacy_snapshot = true;
        loop {
            let mut transaction = self.database.begin_write().map_err(write_error)?;
            transaction
                .set_durability(Durability::None)
                .map_err(write_error)?;
            let done = {
                if std::mem::take(&mut legacy_snapshot) {
                    let mut table = transaction.open_table(SNAPSHOT).map_err(write_error)?;
                    table.remove(0).map_err(write_error)?;
                }
                let mut log = transaction.open_table(LOG).map_err(write_error)?;
                let first = log
                    .first()
                    .map_err(write_error)?
                    .map(|(first, _)| first.value());
                match first {
                    Some(first) if first <= last_seq => {
                        let through = last_seq.min(first + LOG_DROP_CHUNK - 1);
                        log.retain_in(..=through, |_, _| false)
                            .map_err(write_error)?;
                        through == last_seq
                    }
                    _ => true,
                }
            };
            transaction.commit().map_err(write_error)?;
            if done {
                return Ok(());
            }
        }
    }

    /// Waits until the journal is below [`JOURNAL_BOUND_RECORDS`] (the indexer folded and
    /// deleted segments), for at most [`JOURNAL_WAIT`].
    fn room_in_journal<'a>(
        &self,
        mut tail: MutexGuard<'a, Tail>,
    ) -> Result<MutexGuard<'a, Tail>, StoreError> {
        let deadline = std::time::Instant::now() + JOURNAL_WAIT;
        while tail.journaled_records >= JOURNAL_BOUND_RECORDS && !tail.stopping {
            // The segment being appended to may hold less than would wake the indexer.
            tail.room_wanted = true;
            self.wake.notify_one();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Write(format!(
                    "the journal holds {} records the store's indexer has not folded for {} s; commits resume once it does",
                    tail.journaled_records,
                    JOURNAL_WAIT.as_secs()
                )));
            }
            tail = self
                .drained
                .wait_timeout(tail, left)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        Ok(tail)
    }

    /// Readers call this first: every commit so far becomes visible in redb.
    fn caught_up(&self) -> Result<&Database, StoreError> {
        self.fold(false)?;
        Ok(&self.database)
    }
}

impl Store for RedbStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = by_reference(batch);
        let frame = Frame::json(&batch)?;
        let mut tail = lock(&self.shared.tail);
        if tail.journaled_records >= JOURNAL_BOUND_RECORDS {
            tail = self.shared.room_in_journal(tail)?;
        }
        // Acknowledgements wait for this commit: the frame is on disk when it returns.
        tail.journal.append(&frame)?;
        let records = batch.records.len();
        tail.pending.push(batch);
        tail.segment_records += records;
        tail.journaled_records += records;
        if tail.segment_records >= FOLD_AT_RECORDS {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    fn probe(&self) -> Result<(), StoreError> {
        let transaction = self.shared.database.begin_read().map_err(read_error)?;
        transaction.open_table(META).map_err(read_error)?;
        Ok(())
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        // Read without folding (the journal's commits from before a crash may be many, and
        // the indexer folds them in the background): redb, then the commits not in it yet,
        // with folds held off in between so that none is seen twice or missed.
        let _folding = lock(&self.shared.folding);
        let transaction = self.shared.database.begin_read().map_err(read_error)?;
        let snapshot_table = transaction.open_table(SNAPSHOT).map_err(read_error)?;
        let from_table: Option<Snapshot> = match snapshot_table.get(0).map_err(read_error)? {
            Some(bytes) => Some(decode(bytes.value(), "snapshot")?),
            None => None,
        };
        let log = transaction.open_table(LOG).map_err(read_error)?;
        // The snapshot file decodes on a thread of its own while this one reads the log and
        // the stream's window (together most of a restart's time after a crash under load).
        // The log behind a snapshot is dropped in chunks after it is written, so the log may
        // begin before the snapshot: those records are skipped.
        let (from_file, logged) = std::thread::scope(|scope| {
            let file = scope.spawn(|| self.shared.read_snapshot_file());
            let logged = (|| {
                let mut records = Vec::new();
                for row in log.iter().map_err(read_error)? {
                    let (_, bytes) = row.map_err(read_error)?;
                    records.push(decode::<Record>(bytes.value(), "log record")?);
                }
                Ok::<_, StoreError>((records, read_window(&transaction)?))
            })();
            let file = file.join().unwrap_or_else(|_| {
                Err(StoreError::Read(
                    "decoding the snapshot panicked".to_owned(),
                ))
            });
            (file, logged)
        });
        // The newer of the two: a store written before snapshots moved out of redb has only
        // the table's.
        let snapshot = match (from_table, from_file?) {
            (Some(table), Some(file)) if table.last_seq > file.last_seq => Some(table),
            (table, None) => table,
            (_, file) => file,
        };
        let mut after = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_seq);
        let (mut records, (mut events, mut floor)) = logged?;
        records.retain(|record| record.seq > after);
        after = records.last().map_or(after, |record| record.seq);
        // A crash between a durable fold and the deletion of its segments leaves commits in
        // both: redb's copy counts.
        let tail = lock(&self.shared.tail);
        for record in tail
            .pending
            .iter()
            .flat_map(|batch| &batch.records)
            .filter(|record| record.seq > after)
        {
            records.push(Record {
                timeline: Vec::new(),
                ..record.clone()
            });
        }
        for batch in &tail.pending {
            for event in &batch.stream {
                if events.back().is_some_and(|last| last.id >= event.id) {
                    continue;
                }
                events.push_back(whole(event, &batch.records)?);
                if events.len() > STREAM_WINDOW {
                    floor = events.pop_front().map(|event| event.id);
                }
            }
        }
        Ok(Recovery {
            snapshot,
            records,
            window: StoredWindow {
                floor,
                events: events.into(),
            },
        })
    }

    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut written = lock(&self.shared.snapshot_written);
        if snapshot.last_seq <= *written {
            return Ok(());
        }
        let encoded = encode_compressed(snapshot)?;
        self.shared.write_snapshot_file(&encoded)?;
        *written = snapshot.last_seq;
        // The snapshot is durable: the log behind it may go, once every record it covers is
        // in redb (they were all committed before the snapshot was taken). Non-durable (the
        // next durable commit persists the removal; a crash before it leaves records that
        // recovery skips).
        self.shared.caught_up()?;
        self.shared.drop_log_through(snapshot.last_seq)
    }

    fn mark_sent(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Losing a "sent" mark only means publishing again with the same id: not journaled
        // (redb's next durable commit persists it). It waits in line behind the commits, so
        // that it never comes before the entry it removes.
        lock(&self.shared.tail).pending.push(Batch {
            sent: ids.to_vec(),
            ..Batch::default()
        });
        Ok(())
    }

    fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let transaction = self.shared.caught_up()?.begin_read().map_err(read_error)?;
        let outbox = transaction.open_table(OUTBOX).map_err(read_error)?;
        let rows = match after {
            Some(after) => outbox.range::<&str>(after..).map_err(read_error)?,
            None => outbox.iter().map_err(read_error)?,
        };
        let mut entries = Vec::new();
        for row in rows {
            let (key, bytes) = row.map_err(read_error)?;
            if Some(key.value()) == after {
                continue;
            }
            entries.push(decode(bytes.value(), "outbox entry")?);
            if entries.len() == limit {
                break;
            }
        }
        Ok(entries)
    }

    fn bury(&self, dead: DeadDelivery) -> Result<(), StoreError> {
        lock(&self.shared.tail).pending.push(Batch {
            dead: vec![dead],
            ..Batch::default()
        });
        Ok(())
    }

    fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, StoreError> {
        let transaction = self.shared.caught_up()?.begin_read().map_err(read_error)?;
        let table = match transaction.open_table(DEAD) {
            Ok(table) => table,
            // Nothing was ever buried.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(read_error(error)),
        };
        let mut buried = Vec::new();
        for row in table.iter().map_err(read_error)?.take(limit) {
            let (_, bytes) = row.map_err(read_error)?;
            buried.push(decode(bytes.value(), "dead delivery")?);
        }
        Ok(buried)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        let transaction = self.shared.caught_up()?.begin_read().map_err(read_error)?;
        let outbox = transaction.open_table(OUTBOX).map_err(read_error)?;
        outbox.len().map_err(read_error)
    }

    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError> {
        let transaction = self.shared.caught_up()?.begin_read().map_err(read_error)?;
        let outbox = transaction.open_table(OUTBOX).map_err(read_error)?;
        let newest = outbox.last().map_err(read_error)?;
        Ok(newest.map(|(key, _)| key.value().to_owned()))
    }

    fn timeline(&self, conversation: ConversationId) -> Result<Vec<TimelineEntry>, StoreError> {
        let transaction = self.shared.caught_up()?.begin_read().map_err(read_error)?;
        let ordinals = transaction.open_table(ORDINALS).map_err(read_error)?;
        let Some(ordinal) = ordinals.get(conversation.key()).map_err(read_error)? else {
            return Ok(Vec::new());
        };
        let ordinal = ordinal.value();
        let table = transaction.open_table(TIMELINE).map_err(read_error)?;
        let mut entries = Vec::new();
        for row in table
            .range((ordinal, 0, 0)..=(ordinal, u64::MAX, u32::MAX))
            .map_err(read_error)?
        {
            let (_, bytes) = row.map_err(read_error)?;
            entries.push(decode(bytes.value(), "timeline entry")?);
        }
        Ok(entries)
    }
}
