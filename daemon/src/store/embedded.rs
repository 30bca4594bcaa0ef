//! The embedded store: one redb file (checksummed, one fsync per commit) under `store.path`,
//! and the latest snapshot in a file beside it. Records, timeline and outbox are JSON values in
//! redb tables (an outbox body as a JSON string when it is UTF-8, see `OutboxEntry`).
//!
//! The snapshot lives outside redb because redb has one write transaction at a time: a
//! snapshot written into it (megabytes and their fsync) held every commit behind it, a stall
//! that grows with the state. Written to a file (temporary file, fsync, rename, fsync of the
//! directory), it no longer blocks commits; only then is the log behind it dropped, in small
//! non-durable transactions. Stores written before keep their snapshot in the `snapshot`
//! table, which is still read.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::{Batch, OutboxEntry, Recovery, Store, StoreError};
use crate::engine::{ConversationId, Record, Snapshot, TimelineEntry};

/// seq -> record.
pub(super) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// 0 -> the latest snapshot, in stores written before snapshots moved to [`SNAPSHOT_FILE`].
pub(super) const SNAPSHOT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshot");
/// outbox id -> unsent entry (removed once its publication is confirmed).
const OUTBOX: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("outbox");
/// (conversation key, seq, index) -> timeline entry.
const TIMELINE: TableDefinition<'_, (u128, u64, u32), &[u8]> = TableDefinition::new("timeline");

/// The latest snapshot, beside the database.
pub(super) const SNAPSHOT_FILE: &str = "snapshot.json";
/// Log records dropped per transaction behind a snapshot: commits get the write lock between
/// two of them.
pub(super) const LOG_DROP_CHUNK: u64 = 1_000;

/// The redb store.
#[derive(Debug)]
pub struct RedbStore {
    database: Database,
    dir: PathBuf,
    /// The sequence number of the latest snapshot written by this process. Held while one is
    /// written, so that two never interleave and an older one never replaces a newer one (the
    /// log behind the newer one may already be gone).
    snapshot_written: Mutex<u64>,
}

impl RedbStore {
    /// Opens (or creates) `dir/switchboard.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let failed = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|error| failed(error.to_string()))?;
        let database = Database::create(dir.join("switchboard.redb"))
            .map_err(|error| failed(error.to_string()))?;
        let store = Self {
            database,
            dir: dir.to_owned(),
            snapshot_written: Mutex::new(0),
        };
        // Create the tables up front so that readers never meet a missing table.
        let transaction = store
            .database
            .begin_write()
            .map_err(|error| failed(error.to_string()))?;
        {
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
        }
        transaction
            .commit()
            .map_err(|error| failed(error.to_string()))?;
        Ok(store)
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
}

fn write_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Write(error.to_string())
}

fn read_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Read(error.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(write_error)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        what: what.to_owned(),
        reason: error.to_string(),
    })
}

impl Store for RedbStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut transaction = self.database.begin_write().map_err(write_error)?;
        // Acknowledgements wait for this commit: it must be on disk when it returns.
        transaction
            .set_durability(Durability::Immediate)
            .map_err(write_error)?;
        {
            let mut log = transaction.open_table(LOG).map_err(write_error)?;
            let mut timeline = transaction.open_table(TIMELINE).map_err(write_error)?;
            for record in &batch.records {
                log.insert(record.seq, encode(record)?.as_slice())
                    .map_err(write_error)?;
                for (index, entry) in record.timeline.iter().enumerate() {
                    let key = (entry.conversation.key(), record.seq, index as u32);
                    timeline
                        .insert(key, encode(entry)?.as_slice())
                        .map_err(write_error)?;
                }
            }
            let mut outbox = transaction.open_table(OUTBOX).map_err(write_error)?;
            for entry in &batch.outbox {
                outbox
                    .insert(entry.id.as_str(), encode(entry)?.as_slice())
                    .map_err(write_error)?;
            }
            for id in &batch.sent {
                outbox.remove(id.as_str()).map_err(write_error)?;
            }
        }
        transaction.commit().map_err(write_error)
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        let transaction = self.database.begin_read().map_err(read_error)?;
        let snapshot_table = transaction.open_table(SNAPSHOT).map_err(read_error)?;
        let from_table: Option<Snapshot> = match snapshot_table.get(0).map_err(read_error)? {
            Some(bytes) => Some(decode(bytes.value(), "snapshot")?),
            None => None,
        };
        let from_file = self.read_snapshot_file()?;
        // The newer of the two: a store written before snapshots moved out of redb has only
        // the table's.
        let snapshot = match (from_table, from_file) {
            (Some(table), Some(file)) if table.last_seq > file.last_seq => Some(table),
            (table, None) => table,
            (_, file) => file,
        };
        let after = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_seq);
        let log = transaction.open_table(LOG).map_err(read_error)?;
        let mut records = Vec::new();
        for row in log.range(after + 1..).map_err(read_error)? {
            let (_, bytes) = row.map_err(read_error)?;
            records.push(decode::<Record>(bytes.value(), "log record")?);
        }
        Ok(Recovery { snapshot, records })
    }

    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut written = self
            .snapshot_written
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if snapshot.last_seq <= *written {
            return Ok(());
        }
        let encoded = encode(snapshot)?;
        self.write_snapshot_file(&encoded)?;
        *written = snapshot.last_seq;
        // The snapshot is durable: the log behind it may go. Non-durable (the next commit's
        // fsync persists the removal; a crash before it leaves records that recovery skips).
        self.drop_log_through(snapshot.last_seq)
    }

    fn mark_sent(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut transaction = self.database.begin_write().map_err(write_error)?;
        // Losing a "sent" mark only means publishing again with the same id: no fsync of its own
        // (the next durable commit persists it).
        transaction
            .set_durability(Durability::None)
            .map_err(write_error)?;
        {
            let mut outbox = transaction.open_table(OUTBOX).map_err(write_error)?;
            for id in ids {
                outbox.remove(id.as_str()).map_err(write_error)?;
            }
        }
        transaction.commit().map_err(write_error)
    }

    fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let transaction = self.database.begin_read().map_err(read_error)?;
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

    fn outbox_len(&self) -> Result<u64, StoreError> {
        let transaction = self.database.begin_read().map_err(read_error)?;
        let outbox = transaction.open_table(OUTBOX).map_err(read_error)?;
        outbox.len().map_err(read_error)
    }

    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError> {
        let transaction = self.database.begin_read().map_err(read_error)?;
        let outbox = transaction.open_table(OUTBOX).map_err(read_error)?;
        let newest = outbox.last().map_err(read_error)?;
        Ok(newest.map(|(key, _)| key.value().to_owned()))
    }

    fn timeline(&self, conversation: ConversationId) -> Result<Vec<TimelineEntry>, StoreError> {
        let transaction = self.database.begin_read().map_err(read_error)?;
        let table = transaction.open_table(TIMELINE).map_err(read_error)?;
        let key = conversation.key();
        let mut entries = Vec::new();
        for row in table
            .range((key, 0, 0)..=(key, u64::MAX, u32::MAX))
            .map_err(read_error)?
        {
            let (_, bytes) = row.map_err(read_error)?;
            entries.push(decode(bytes.value(), "timeline entry")?);
        }
        Ok(entries)
    }
}
