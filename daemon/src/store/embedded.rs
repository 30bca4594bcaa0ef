//! The embedded store: one redb file (checksummed, one fsync per commit) under `store.path`.
//! Records, snapshots, timeline and outbox are JSON values in redb tables (an outbox body as a
//! JSON string when it is UTF-8, see `OutboxEntry`).

use std::path::Path;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::{Batch, OutboxEntry, Recovery, Store, StoreError};
use crate::engine::{ConversationId, Record, Snapshot, TimelineEntry};

/// seq -> record.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// 0 -> the latest snapshot.
const SNAPSHOT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshot");
/// outbox id -> unsent entry (removed once its publication is confirmed).
const OUTBOX: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("outbox");
/// (conversation key, seq, index) -> timeline entry.
const TIMELINE: TableDefinition<'_, (u128, u64, u32), &[u8]> = TableDefinition::new("timeline");

/// The redb store.
#[derive(Debug)]
pub struct RedbStore {
    database: Database,
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
        let store = Self { database };
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
        let snapshot: Option<Snapshot> = match snapshot_table.get(0).map_err(read_error)? {
            Some(bytes) => Some(decode(bytes.value(), "snapshot")?),
            None => None,
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
        // Serialize before taking redb's single write lock: encoding a large state takes long
        // enough to stall every commit waiting behind it.
        let encoded = encode(snapshot)?;
        let mut transaction = self.database.begin_write().map_err(write_error)?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(write_error)?;
        {
            let mut table = transaction.open_table(SNAPSHOT).map_err(write_error)?;
            table.insert(0, encoded.as_slice()).map_err(write_error)?;
            let mut log = transaction.open_table(LOG).map_err(write_error)?;
            // The snapshot covers everything up to its sequence number.
            log.retain_in(..=snapshot.last_seq, |_, _| false)
                .map_err(write_error)?;
        }
        transaction.commit().map_err(write_error)
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
