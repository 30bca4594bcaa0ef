//! Partition leases in PostgreSQL, the cluster's one authority on who owns a partition. The
//! database's clock alone says when a lease expires, so nodes' clocks never have to agree; a
//! node keeps its own, safe deadline ([`Lease::valid_until`]: the moment it asked plus the
//! lease's length, never later than the database's expiry), and its keeper treats a lease past
//! it as lost. Every take-over raises the partition's epoch, which fences the former owner's
//! writes (`PostgresStore`): that, not the deadline, is what keeps a late owner from writing.

use std::time::{Duration, Instant};

use super::{Connection, Database};
use crate::store::StoreError;
use crate::store::{read_error, write_error};

/// A partition's lease as this node holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    /// Raised by every acquisition: writes carry it and an older one is refused.
    pub epoch: u64,
    /// Until when this node may act on the partition, by its own monotonic clock.
    pub valid_until: Instant,
}

/// Who holds a partition's lease, as the database says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    pub partition: u32,
    /// `None` when free (never taken, released, or its holder's time ran out).
    pub owner: Option<String>,
    pub epoch: u64,
}

/// This node's side of the leases, and of the nodes' register.
#[derive(Debug)]
pub struct Leases {
    connection: Connection,
    node: String,
    /// This process, among the processes that ever ran as `node`.
    incarnation: String,
    length: Duration,
}

impl Leases {
    /// Leases taken and renewed for `length` on behalf of `node`.
    pub fn new(database: &Database, node: &str, length: Duration) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            connection: database.connection(),
            node: node.to_owned(),
            incarnation: format!("{}-{}", std::process::id(), started.as_nanos()),
            length,
        }
    }

    /// The node these leases are taken for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Enters this process in the nodes' register under its node id; refused while another
    /// live process (one whose heartbeat is younger than a lease) has the same id, since the
    /// two would take each other's leases for their own.
    pub fn register(&self) -> Result<(), StoreError> {
        let length = self.length_seconds();
        let taken: Option<f64> = self.connection.run(async |client| {
            let registered = client
                .query_opt(
                    "INSERT INTO node (node_id, incarnation, version, heartbeat_at)
                     VALUES ($1, $2, $3, clock_timestamp())
                     ON CONFLICT (node_id) DO UPDATE SET incarnation = excluded.incarnation,
                         version = excluded.version, heartbeat_at = excluded.heartbeat_at
                     WHERE node.incarnation = excluded.incarnation
                        OR node.heartbeat_at < clock_timestamp() - $4 * interval '1 second'
                     RETURNING node_id",
                    &[
                        &self.node,
                        &self.incarnation,
                        &env!("CARGO_PKG_VERSION"),
                        &length,
                    ],
                )
                .await
                .map_err(write_error)?;
            if registered.is_some() {
                return Ok(None);
            }
            let age = client
                .query_one(
                    "SELECT extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
                     FROM node WHERE node_id = $1",
                    &[&self.node],
                )
                .await
                .map_err(read_error)?;
            Ok(Some(age.get(0)))
        })?;
        match taken {
            None => Ok(()),
            Some(age) => Err(StoreError::NodeIdInUse(format!(
                "node_id `{}` is in use by another live daemon (its heartbeat {age:.1} s ago): \
                 each node of a cluster needs a node_id of its own",
                self.node
            ))),
        }
    }

    /// Records that this process is alive; `false` if another process took its node id over
    /// (this one was presumed dead: it must stop acting as a node).
    pub fn heartbeat(&self) -> Result<bool, StoreError> {
        let updated = self.connection.run(async |client| {
            client
                .execute(
                    "UPDATE node SET heartbeat_at = clock_timestamp()
                     WHERE node_id = $1 AND incarnation = $2",
                    &[&self.node, &self.incarnation],
                )
                .await
                .map_err(write_error)
        })?;
        Ok(updated == 1)
    }

    /// The nodes whose heartbeat is younger than a lease, by id.
    pub fn live_nodes(&self) -> Result<Vec<String>, StoreError> {
        let length = self.length_seconds();
        self.connection.run(async |client| {
            Ok(client
                .query(
                    "SELECT node_id FROM node
                     WHERE heartbeat_at >= clock_timestamp() - $1 * interval '1 second'
                     ORDER BY node_id",
                    &[&length],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
    }

    /// Leaves the register (stopping): the others rebalance without waiting for this node's
    /// heartbeat to age.
    pub fn leave(&self) -> Result<(), StoreError> {
        self.connection.run(async |client| {
            client
                .execute(
                    "DELETE FROM node WHERE node_id = $1 AND incarnation = $2",
                    &[&self.node, &self.incarnation],
                )
                .await
                .map(drop)
                .map_err(write_error)
        })
    }

    /// Creates the cluster with `partitions` partitions, or checks that the existing one has
    /// as many: the partition of a conversation is a hash modulo that number, so it cannot
    /// change once conversations are placed.
    pub fn join_cluster(&self, partitions: u32) -> Result<(), StoreError> {
        let wanted = i32::try_from(partitions)
            .ok()
            .filter(|&count| count > 0)
            .ok_or_else(|| {
                StoreError::Incompatible(format!("{partitions} partitions: from 1 to 2^31 - 1"))
            })?;
        self.connection.run(async |client| {
            let transaction = client.transaction().await.map_err(write_error)?;
            create_or_check(&transaction, wanted).await?;
            transaction.commit().await.map_err(write_error)
        })
    }

    /// The lease's length as SQL multiplies an interval by it.
    fn length_seconds(&self) -> f64 {
        self.length.as_secs_f64()
    }

    /// Takes `partition`'s lease if it is free or its holder's time ran out, under a new
    /// epoch; `None` if another node holds it.
    pub fn acquire(&self, partition: u32) -> Result<Option<Lease>, StoreError> {
        let asked = Instant::now();
        let length = self.length_seconds();
        let epoch: Option<i64> = self.connection.run(async |client| {
            Ok(client
                .query_opt(
                    "UPDATE partition_lease
                     SET owner = $2, epoch = epoch + 1,
                         expires_at = clock_timestamp() + $3 * interval '1 second'
                     WHERE partition = $1 AND (owner IS NULL OR expires_at < clock_timestamp())
                     RETURNING epoch",
                    &[&(partition as i32), &self.node, &length],
                )
                .await
                .map_err(write_error)?
                .map(|row| row.get(0)))
        })?;
        Ok(epoch.map(|epoch| Lease {
            partition,
            epoch: epoch as u64,
            valid_until: asked + self.length,
        }))
    }

    /// Extends `lease` by the lease's length from now; `None` if it was taken over (its epoch
    /// moved on). A lease whose time ran out and that nobody took is still this node's: no
    /// other node wrote under a newer epoch.
    pub fn renew(&self, lease: &Lease) -> Result<Option<Lease>, StoreError> {
        let asked = Instant::now();
        let length = self.length_seconds();
        let renewed = self.connection.run(async |client| {
            client
                .execute(
                    "UPDATE partition_lease
                     SET expires_at = clock_timestamp() + $4 * interval '1 second'
                     WHERE partition = $1 AND owner = $2 AND epoch = $3",
                    &[
                        &(lease.partition as i32),
                        &self.node,
                        &(lease.epoch as i64),
                        &length,
                    ],
                )
                .await
                .map_err(write_error)
        })?;
        Ok((renewed == 1).then(|| Lease {
            valid_until: asked + self.length,
            ..*lease
        }))
    }

    /// Gives `lease` up at once (stopping, or handing the partition to another node), so that
    /// the next owner need not wait for it to expire.
    pub fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.connection.run(async |client| {
            client
                .execute(
                    "UPDATE partition_lease SET owner = NULL, expires_at = '-infinity'
                     WHERE partition = $1 AND owner = $2 AND epoch = $3",
                    &[&(lease.partition as i32), &self.node, &(lease.epoch as i64)],
                )
                .await
                .map(drop)
                .map_err(write_error)
        })
    }

    /// Every partition's holder, in partition order.
    pub fn holders(&self) -> Result<Vec<LeaseHolder>, StoreError> {
        self.connection.run(async |client| {
            Ok(client
                .query(
                    "SELECT partition, CASE WHEN expires_at >= clock_timestamp() THEN owner END, epoch
                     FROM partition_lease ORDER BY partition",
                    &[],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| LeaseHolder {
                    partition: row.get::<_, i32>(0) as u32,
                    owner: row.get(1),
                    epoch: row.get::<_, i64>(2) as u64,
                })
                .collect())
        })
    }
}

/// In `transaction`: creates the cluster with `partitions` partitions (its row and a lease row
/// per partition), or checks that the existing one has as many.
pub(super) async fn create_or_check(
    transaction: &tokio_postgres::Transaction<'_>,
    partitions: i32,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "INSERT INTO cluster (partitions) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&partitions],
        )
        .await
        .map_err(write_error)?;
    let existing: i32 = transaction
        .query_one("SELECT partitions FROM cluster", &[])
        .await
        .map_err(read_error)?
        .get(0);
    if existing != partitions {
        return Err(StoreError::Incompatible(format!(
            "the cluster was created with {existing} partitions and this configuration names \
             {partitions}: the count is fixed when a cluster is created"
        )));
    }
    transaction
        .execute(
            "INSERT INTO partition_lease (partition)
             SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            &[&partitions],
        )
        .await
        .map_err(write_error)?;
    Ok(())
}
