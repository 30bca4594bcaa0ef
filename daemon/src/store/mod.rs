//! Store step of the flow: what the engine did becomes durable before anything is
//! acknowledged. One commit per batch (group commit) writes the records (the replayable log),
//! their timeline entries, and the rendered outbound messages (the outbox) together; on start
//! the daemon rebuilds its state from the last snapshot plus the records after it.
//!
//! [`Store`] is the seam: [`RedbStore`] (in `embedded`, the only module that imports redb) is
//! the embedded default, with a journal (`journal`) in front of it so that a commit costs one
//! append and one `fdatasync`; `postgres::PostgresStore` keeps one partition of a cluster in
//! PostgreSQL, shared by every node and fenced by the partition's lease. Both pass the same
//! store test suite (`tests`).

mod compact;
mod embedded;
mod journal;
pub mod postgres;

use serde::{Deserialize, Serialize};

pub use self::embedded::{RedbStore, STORE_FORMAT};
use crate::engine::{ConversationId, Millis, NotificationId, Record, Snapshot, TimelineEntry};
use crate::stream::{STREAM_WINDOW, StoredEvent, StoredWindow};

/// A rendered outbound message, ready to publish as it is (after a crash it goes out again
/// with the same id, so consumers can deduplicate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Stable across re-publication (the CloudEvents id) and sortable in commit order:
    /// [`outbox_id`] of the notification and the part (a channel notification may become
    /// several provider requests).
    pub id: String,
    /// `channel.<plugin>`, `agent.<id>`, `supervisor.<id>` or `conversation.<id>`.
    pub routing_key: String,
    /// CloudEvents `type`, e.g. `dev.switchboard.conversation.state-changed`.
    pub event_type: String,
    /// CloudEvents `subject`: the conversation id.
    pub subject: Option<String>,
    pub time: Millis,
    pub content_type: String,
    /// Extra AMQP headers (`switchboard-method`, `switchboard-url`, provider headers).
    pub headers: Vec<(String, String)>,
    #[serde(with = "body_text")]
    pub body: Vec<u8>,
}

/// Outbox bodies (CloudEvents JSON, provider requests) are text almost always: stored as a
/// JSON string when they are UTF-8 — serde's default for bytes, an array of numbers, takes
/// 3–4 times the bytes to write, checksum and fsync, and as long to encode — else as that array.
/// Both read back, so stores written before keep working.
mod body_text {
    use std::fmt;

    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub(super) fn serialize<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(body) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_seq(body),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }

    struct BodyVisitor;

    impl<'de> Visitor<'de> for BodyVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a UTF-8 string or an array of bytes")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
            Ok(text.as_bytes().to_vec())
        }

        fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Vec<u8>, E> {
            Ok(text.into_bytes())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(sequence.size_hint().unwrap_or(0));
            while let Some(byte) = sequence.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

/// What one group commit writes (also the journal's frame, hence serializable).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    pub records: Vec<Record>,
    pub outbox: Vec<OutboxEntry>,
    /// Outbox entries whose publication the broker confirmed: removed in the same transaction
    /// (a "sent" mark needs no write of its own while commits keep coming).
    pub sent: Vec<String>,
    /// The live stream's events of these records: the store keeps the newest
    /// [`STREAM_WINDOW`] of them, so that clients resume across a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream: Vec<StoredEvent>,
    /// Provider requests the delivery worker gave up on: out of the outbox, into the dead
    /// deliveries (embedded transport; with a broker they go to its dead-letter queue).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead: Vec<DeadDelivery>,
    /// Dead deliveries an admin sent again: back into the outbox, under their own ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resent: Vec<String>,
}

impl Batch {
    /// Whether there is nothing to commit (confirmed ids alone wait for the next batch).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.outbox.is_empty() && self.resent.is_empty()
    }
}

/// A provider request the delivery worker gave up on, kept with why (the embedded transport's
/// dead letters: `GET /v1/deliveries/dead`, sent again by `POST /v1/deliveries/dead/resend`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadDelivery {
    pub entry: OutboxEntry,
    /// `delivery-failed` (attempts or age ran out), `egress-refused`, or the provider's own
    /// code for a permanent refusal (Twilio `21610`, Meta `131047`).
    pub code: String,
    /// The provider's text, or what the worker saw last.
    pub detail: String,
    pub attempts: u32,
    pub failed_at: Millis,
}

/// A record as the stores' logs keep it: what replay needs, without the timeline (which their
/// timeline tables hold; writing it twice took a third of a fold's encoding). Reads back as a
/// [`Record`] with an empty timeline, as do records written whole by earlier versions.
#[derive(Serialize)]
struct LoggedRecord<'a> {
    seq: u64,
    #[serde(skip_serializing_if = "crate::engine::Position::is_zero")]
    position: crate::engine::Position,
    at: Millis,
    changes: &'a [crate::engine::Change],
}

impl<'a> LoggedRecord<'a> {
    fn of(record: &'a Record) -> Self {
        Self {
            seq: record.seq,
            position: record.position,
            at: record.at,
            changes: &record.changes,
        }
    }
}

/// What a restart reads back.
#[derive(Debug, Default)]
pub struct Recovery {
    pub snapshot: Option<Snapshot>,
    /// Records after the snapshot, in order, without their timeline (read per conversation
    /// with [`Store::timeline`]; replay does not need it).
    pub records: Vec<Record>,
    /// The live stream's window: the newest [`STREAM_WINDOW`] events.
    pub window: StoredWindow,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store read failed: {0}")]
    Read(String),
    #[error("corrupt store entry ({what}): {reason}")]
    Corrupt { what: String, reason: String },
    /// A cluster node wrote for a partition whose lease another node took over since: the
    /// write is refused, and the node must stop acting on the partition.
    #[error(
        "partition {partition}: write refused, this node's lease (epoch {epoch}) was taken over (epoch {current})"
    )]
    Fenced {
        partition: u32,
        epoch: u64,
        current: u64,
    },
    /// The store was written by a newer version, or for another cluster layout.
    #[error("{0}")]
    Incompatible(String),
    /// A cluster's node id is held by a process heard from within a lease: another live
    /// daemon, or this node's former process, killed moments ago.
    #[error("{0}")]
    NodeIdInUse(String),
}

fn write_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Write(error.to_string())
}

fn read_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Read(error.to_string())
}

/// What both stores write: JSON (records, entries, events, snapshots). PostgreSQL keeps it
/// as it is; the embedded store compresses it ([`encode_compressed`]).
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(write_error)
}

/// JSON compressed with LZ4 when that is smaller (`compact`): what the embedded store writes.
fn encode_compressed<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode(value).map(compact::compress)
}

/// Reads what either encoding wrote.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: what.to_owned(),
        reason,
    };
    let json = compact::expand(bytes).map_err(corrupt)?;
    serde_json::from_slice(&json).map_err(|error| corrupt(error.to_string()))
}

/// Durable storage of the engine's log, snapshots, timeline and outbox.
pub trait Store: Send + Sync + 'static {
    /// Writes a batch in one durable transaction (fsync before returning).
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;

    /// Whether the store answers, without waiting for background work (readiness: after a
    /// crash under load the indexer may fold the journal's commits for seconds, while commits
    /// are taken and recovery is done).
    fn probe(&self) -> Result<(), StoreError>;

    /// What a restart needs, as committed: the last snapshot, the records after it and the
    /// live stream's window.
    fn recover(&self) -> Result<Recovery, StoreError>;

    /// Stores a snapshot and drops the records it covers.
    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Marks entries as sent (their publication was confirmed).
    fn mark_sent(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Up to `limit` unsent outbox entries after the id `after` (from the oldest without), in
    /// commit order: the publisher's catch-up and the embedded transport's readable outbox.
    fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Entries in the outbox.
    fn outbox_len(&self) -> Result<u64, StoreError>;

    /// The id of the newest outbox entry, if any.
    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError>;

    /// A conversation's timeline, oldest first.
    fn timeline(&self, conversation: ConversationId) -> Result<Vec<TimelineEntry>, StoreError>;

    /// Moves a request the delivery worker gave up on from the outbox to the dead deliveries.
    /// Not journaled, as [`Store::mark_sent`]: losing it in a crash only means the request is
    /// tried again after the restart.
    fn bury(&self, dead: DeadDelivery) -> Result<(), StoreError>;

    /// Up to `limit` dead deliveries, oldest request first.
    fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, StoreError>;
}

/// The outbox id of part `part` of a notification: zero-padded so that ids sort in commit
/// order.
pub fn outbox_id(id: &NotificationId, part: usize) -> String {
    format!(
        "{:020}-{:06}-{:06}-{:03}",
        id.position.public, id.position.silent, id.index, part
    )
}

/// Whether `text` is written as [`outbox_id`] writes ids (or as versions before record
/// positions did: `seq-index-part`, without the silent counter).
pub fn is_outbox_id(text: &str) -> bool {
    let digits =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = text.split('-').collect();
    match parts[..] {
        [public, silent, index, part] => {
            digits(public, 20) && digits(silent, 6) && digits(index, 6) && digits(part, 3)
        }
        [seq, index, part] => digits(seq, 20) && digits(index, 6) && digits(part, 3),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
