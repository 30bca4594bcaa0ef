//! Store step of the flow: what the engine did becomes durable before anything is
//! acknowledged. One commit per batch (group commit) writes the records (the replayable log),
//! their timeline entries, and the rendered outbound messages (the outbox) together; on start
//! the daemon rebuilds its state from the last snapshot plus the records after it.
//!
//! [`Store`] is the seam for a PostgreSQL store shared by several daemons; [`RedbStore`] (in `embedded`) is the
//! embedded default. The only module that imports redb.

mod embedded;

use serde::{Deserialize, Serialize};

pub use self::embedded::RedbStore;
use crate::engine::{ConversationId, Millis, NotificationId, Record, Snapshot, TimelineEntry};

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
    pub body: Vec<u8>,
}

/// What one group commit writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub outbox: Vec<OutboxEntry>,
    /// Outbox entries whose publication the broker confirmed: removed in the same transaction
    /// (a "sent" mark needs no write of its own while commits keep coming).
    pub sent: Vec<String>,
}

impl Batch {
    /// Whether there is nothing to commit (confirmed ids alone wait for the next batch).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.outbox.is_empty()
    }
}

/// What a restart reads back.
#[derive(Debug, Default)]
pub struct Recovery {
    pub snapshot: Option<Snapshot>,
    /// Records after the snapshot, in order.
    pub records: Vec<Record>,
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
}

/// Durable storage of the engine's log, snapshots, timeline and outbox.
pub trait Store: Send + Sync + 'static {
    /// Writes a batch in one durable transaction (fsync before returning).
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;

    /// The last snapshot and the records after it.
    fn recover(&self) -> Result<Recovery, StoreError>;

    /// Stores a snapshot and drops the records it covers.
    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Up to `limit` unsent outbox entries, oldest first.
    fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Marks entries as sent (their publication was confirmed).
    fn mark_sent(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Up to `limit` outbox entries after the id `after` (from the start without), in commit
    /// order: the embedded transport's readable outbox.
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
}

/// The outbox id of part `part` of a notification: zero-padded so that ids sort in commit
/// order.
pub fn outbox_id(id: &NotificationId, part: usize) -> String {
    format!("{:020}-{:06}-{:03}", id.seq, id.index, part)
}

#[cfg(test)]
mod tests;
