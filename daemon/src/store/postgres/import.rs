//! Store step for moving a single daemon into a new cluster: writes what `cluster::import`
//! cut out of an embedded store (each partition's snapshot, its conversations' timelines, its
//! outbox and dead deliveries, and where the moved conversations live) in one transaction, and
//! only into a cluster that holds nothing yet and that no node serves.

use std::collections::HashMap;
use std::time::Duration;

use super::{Database, conversation_key};
use crate::engine::{ConversationId, Snapshot, TimelineEntry};
use crate::store::{DeadDelivery, OutboxEntry, StoreError, encode, read_error, write_error};

/// One partition's share of an embedded store.
#[derive(Debug, Default)]
pub struct ImportedPartition {
    pub snapshot: Option<Snapshot>,
    /// Each conversation's timeline, oldest first.
    pub timelines: Vec<(ConversationId, Vec<TimelineEntry>)>,
    /// Provider requests and notifications not yet sent, in commit order.
    pub outbox: Vec<OutboxEntry>,
    pub dead: Vec<DeadDelivery>,
}

impl Database {
    /// Writes `partitions` (one per partition of a cluster of that many) and the conversations
    /// that live elsewhere than their ids name (`moved`), all or nothing. Refused when the
    /// cluster was created with another partition count, already holds conversations, or has
    /// a node heard from within `lease` (nodes are started after the import).
    pub fn import(
        &self,
        partitions: &[ImportedPartition],
        moved: &[(ConversationId, u32)],
        lease: Duration,
    ) -> Result<(), StoreError> {
        let count = i32::try_from(partitions.len())
            .ok()
            .filter(|&count| count > 0)
            .ok_or_else(|| StoreError::Incompatible("no partitions to import into".to_owned()))?;
        let mut encoded = Vec::with_capacity(partitions.len());
        for part in partitions {
            encoded.push(Encoded::of(part)?);
        }
        let moved_keys: Vec<Vec<u8>> = moved.iter().map(|(id, _)| conversation_key(*id)).collect();
        let moved_partitions: Vec<i32> = moved.iter().map(|(_, p)| *p as i32).collect();
        self.connection().run(async |client| {
            let transaction = client.transaction().await.map_err(write_error)?;
            // Nodes take leases by updating these rows: none can start serving meanwhile.
            transaction
                .batch_execute("LOCK TABLE cluster, partition_lease, node IN EXCLUSIVE MODE")
                .await
                .map_err(write_error)?;
            super::lease::create_or_check(&transaction, count).await?;
            let live: Vec<String> = transaction
                .query(
                    "SELECT node_id FROM node
                     WHERE heartbeat_at > clock_timestamp() - $1 * interval '1 second'
                     ORDER BY node_id",
                    &[&lease.as_secs_f64()],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            if !live.is_empty() {
                return Err(StoreError::Incompatible(format!(
                    "nodes of this cluster are running ({}): stop them, or import into a new \
                     cluster (another postgres_schema) before starting its nodes",
                    live.join(", ")
                )));
            }
            let holds: bool = transaction
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM log) OR EXISTS (SELECT 1 FROM snapshot)
                         OR EXISTS (SELECT 1 FROM timeline) OR EXISTS (SELECT 1 FROM outbox)
                         OR EXISTS (SELECT 1 FROM dead_delivery)
                         OR EXISTS (SELECT 1 FROM moved_conversation)",
                    &[],
                )
                .await
                .map_err(read_error)?
                .get(0);
            if holds {
                return Err(StoreError::Incompatible(
                    "the cluster already holds conversations: an embedded store moves only into \
                     a new cluster (an empty postgres_schema)"
                        .to_owned(),
                ));
            }
            for (partition, rows) in (0i32..).zip(&encoded) {
                rows.write(&transaction, partition).await?;
            }
            transaction
                .execute(
                    "INSERT INTO moved_conversation (conversation, partition)
                     SELECT * FROM unnest($1::bytea[], $2::integer[])",
                    &[&moved_keys, &moved_partitions],
                )
                .await
                .map_err(write_error)?;
            transaction.commit().await.map_err(write_error)
        })
    }

    /// The conversations that live in another partition than their ids name.
    pub fn moved_conversations(&self) -> Result<HashMap<ConversationId, u32>, StoreError> {
        self.connection().run(async |client| {
            client
                .query(
                    "SELECT conversation, partition FROM moved_conversation",
                    &[],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| {
                    let key: &[u8] = row.get(0);
                    let key: [u8; 16] = key.try_into().map_err(|_| StoreError::Corrupt {
                        what: "moved conversation".to_owned(),
                        reason: format!("a key of {} bytes", key.len()),
                    })?;
                    let partition: i32 = row.get(1);
                    Ok((
                        ConversationId::from_key(u128::from_be_bytes(key)),
                        partition as u32,
                    ))
                })
                .collect()
        })
    }
}

/// One partition's rows, encoded before the connection is taken.
struct Encoded {
    snapshot: Option<(i64, Vec<u8>)>,
    timeline: [Vec<Vec<u8>>; 2],
    timeline_indexes: Vec<i64>,
    outbox: (Vec<String>, Vec<Vec<u8>>),
    dead: (Vec<String>, Vec<Vec<u8>>),
}

impl Encoded {
    fn of(part: &ImportedPartition) -> Result<Self, StoreError> {
        let mut rows = Self {
            snapshot: match &part.snapshot {
                Some(snapshot) => Some((snapshot.last_seq as i64, encode(snapshot)?)),
                None => None,
            },
            timeline: Default::default(),
            timeline_indexes: Vec::new(),
            outbox: Default::default(),
            dead: Default::default(),
        };
        // A moved timeline stands before every record of the partition (at seq 0, which no
        // record has), in its own order.
        for (conversation, entries) in &part.timelines {
            for (index, entry) in entries.iter().enumerate() {
                rows.timeline[0].push(conversation_key(*conversation));
                rows.timeline[1].push(encode(entry)?);
                rows.timeline_indexes.push(index as i64);
            }
        }
        for entry in &part.outbox {
            rows.outbox.0.push(entry.id.clone());
            rows.outbox.1.push(encode(entry)?);
        }
        for dead in &part.dead {
            rows.dead.0.push(dead.entry.id.clone());
            rows.dead.1.push(encode(dead)?);
        }
        Ok(rows)
    }

    async fn write(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        partition: i32,
    ) -> Result<(), StoreError> {
        if let Some((last_seq, body)) = &self.snapshot {
            transaction
                .execute(
                    "INSERT INTO snapshot (partition, last_seq, body) VALUES ($1, $2, $3)",
                    &[&partition, last_seq, body],
                )
                .await
                .map_err(write_error)?;
        }
        let [conversations, entries] = &self.timeline;
        transaction
            .execute(
                "INSERT INTO timeline (conversation, seq, entry_index, partition, entry)
                 SELECT c, 0, i, $1, e
                 FROM unnest($2::bytea[], $3::bigint[], $4::bytea[]) AS t(c, i, e)",
                &[&partition, conversations, &self.timeline_indexes, entries],
            )
            .await
            .map_err(write_error)?;
        // Outbox entries and dead deliveries: rows of an id and a body.
        for (table, (ids, bodies)) in [
            ("outbox (partition, id, entry)", &self.outbox),
            ("dead_delivery (partition, id, body)", &self.dead),
        ] {
            transaction
                .execute(
                    &format!(
                        "INSERT INTO {table} SELECT $1, * FROM unnest($2::text[], $3::bytea[])"
                    ),
                    &[&partition, ids, bodies],
                )
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }
}
