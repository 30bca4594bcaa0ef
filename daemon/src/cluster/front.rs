//! Cluster front: what a node's admin API, door, voice connection and delivery worker stand on
//! in cluster mode, in place of the single daemon's writer. Submissions go to the partitions
//! that own them — a command to its conversation's partition, answered after the owner's
//! commit; an inbound message decoded here and routed, accepted once the broker confirmed it —
//! and reads come from the read model's merged view and from PostgreSQL (timelines, outbox,
//! dead deliveries across every partition). Nothing here writes the partitions' state.

use std::sync::Arc;

use super::router::{Answered, COMMAND_TIMEOUT, RouteError, Router};
use super::{Ownership, Placement};
use crate::engine::{ConversationId, Millis, Snapshot, TimelineEntry};
use crate::pipeline::{Completion, Disposition, Submission};
use crate::service::SubmitError;
use crate::store::postgres::{Database, PostgresStore};
use crate::store::{Batch, DeadDelivery, OutboxEntry, Recovery, Store, StoreError};
use crate::transport::amqp::partition::Requests;

/// Where a cluster node sends what the single daemon's writer would apply.
#[derive(Debug)]
pub struct Front {
    router: Router,
    requests: Requests,
    /// The partitions this node serves (for `/readyz`).
    pub ownership: Arc<Ownership>,
    pub node_id: String,
    pub partitions: u32,
}

impl Front {
    pub fn new(
        router: Router,
        requests: Requests,
        ownership: Arc<Ownership>,
        node_id: String,
        partitions: u32,
    ) -> Self {
        Self {
            router,
            requests,
            ownership,
            node_id,
            partitions,
        }
    }

    /// Sends `submission` to its partitions. A command is answered by its partition's owner
    /// after the commit ([`SubmitError::Unanswered`] when no answer came in time: it may have
    /// been applied, and a retry with the same `Idempotency-Key` gets the first answer). An
    /// inbound message or events are accepted once the broker confirmed them into their
    /// partitions, which apply them in order right after: the answer cannot say which
    /// conversations they made or whether they repeated earlier ones, so it says
    /// `duplicates: 0` and names no conversation.
    pub async fn submit(
        &self,
        submission: Submission,
        now: Millis,
    ) -> Result<Completion, SubmitError> {
        match submission {
            Submission::Command(command) => {
                match self
                    .router
                    .command(&self.requests, &command, COMMAND_TIMEOUT)
                    .await
                {
                    Ok(Answered::Reply(answer)) => Ok(Completion::Command(answer)),
                    Ok(Answered::Unanswered) => Err(SubmitError::Unanswered),
                    Err(error) => Err(SubmitError::Unavailable(error.to_string())),
                }
            }
            Submission::Inbound(message) => match self.router.send(&message, now).await {
                Ok(sent) => {
                    let partitions = sent
                        .confirmed()
                        .await
                        .map_err(|error| SubmitError::Unavailable(error.to_string()))?;
                    Ok(Completion::Inbound(Disposition::Done {
                        events: partitions.len(),
                        duplicates: 0,
                        conversations: Vec::new(),
                    }))
                }
                Err(RouteError::Decode(error)) => {
                    Ok(Completion::Inbound(Disposition::DeadLetter {
                        code: error.code().to_owned(),
                        detail: error.to_string(),
                    }))
                }
                Err(RouteError::Transport(error)) => {
                    Err(SubmitError::Unavailable(error.to_string()))
                }
            },
            // A node sends these to the partitions itself (`cluster::serve`).
            Submission::LoadsElsewhere(_) => Err(SubmitError::Unavailable(
                "agents' loads are not submitted on a cluster node".to_owned(),
            )),
            Submission::Events(events) => {
                let count = events.len();
                let base = events
                    .first()
                    .and_then(|event| event.id.as_deref())
                    .unwrap_or("events")
                    .to_owned();
                let sent = self
                    .router
                    .send_events(events, &base)
                    .await
                    .map_err(|error| SubmitError::Unavailable(error.to_string()))?;
                sent.confirmed()
                    .await
                    .map_err(|error| SubmitError::Unavailable(error.to_string()))?;
                Ok(Completion::Inbound(Disposition::Done {
                    events: count,
                    duplicates: 0,
                    conversations: Vec::new(),
                }))
            }
        }
    }
}

/// The partitions' stores as one, read-only: a conversation's timeline from its partition,
/// the outbox and dead deliveries of every partition. The partitions' owners write them; a
/// write through this view is refused.
#[derive(Debug)]
pub struct FrontStore {
    readers: Vec<PostgresStore>,
    placement: Placement,
}

impl FrontStore {
    pub fn new(database: &Database, placement: Placement) -> Self {
        Self {
            readers: (0..placement.count())
                .map(|partition| PostgresStore::reader(database, partition))
                .collect(),
            placement,
        }
    }

    fn read_only() -> StoreError {
        StoreError::Write(
            "a cluster node's front reads only: partitions are written by their owners".to_owned(),
        )
    }
}

impl Store for FrontStore {
    fn commit(&self, _batch: &Batch) -> Result<(), StoreError> {
        Err(Self::read_only())
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.readers.first().map_or(Ok(()), Store::probe)
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        Ok(Recovery::default())
    }

    fn write_snapshot(&self, _snapshot: &Snapshot) -> Result<(), StoreError> {
        Err(Self::read_only())
    }

    fn mark_sent(&self, _ids: &[String]) -> Result<(), StoreError> {
        Err(Self::read_only())
    }

    /// Every partition's unsent entries after `after`, in id order (ids sort by time within
    /// a partition; across partitions the order is by id).
    fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut entries = Vec::new();
        for reader in &self.readers {
            entries.extend(reader.outbox_after(after, limit)?);
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries.truncate(limit);
        Ok(entries)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.readers.iter().map(Store::outbox_len).sum()
    }

    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError> {
        let mut newest = None;
        for reader in &self.readers {
            newest = newest.max(reader.outbox_newest_id()?);
        }
        Ok(newest)
    }

    fn timeline(&self, conversation: ConversationId) -> Result<Vec<TimelineEntry>, StoreError> {
        let partition = self.placement.of_conversation(conversation) as usize;
        match self.readers.get(partition) {
            Some(reader) => reader.timeline(conversation),
            None => Ok(Vec::new()),
        }
    }

    fn bury(&self, _dead: DeadDelivery) -> Result<(), StoreError> {
        Err(Self::read_only())
    }

    fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, StoreError> {
        let mut dead = Vec::new();
        for reader in &self.readers {
            dead.extend(reader.dead_deliveries(limit)?);
        }
        dead.truncate(limit);
        Ok(dead)
    }
}
