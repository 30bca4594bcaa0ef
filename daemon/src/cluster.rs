//! Cluster ownership: which partitions this node should own, and the keeper that holds their
//! leases round after round — heartbeat, renew, hand over what another live node should own,
//! take what is free and this node's to take — telling the node of each change so that it
//! starts or stops serving a partition. The leases themselves are the store's
//! (`store::postgres::Leases`); this module decides, it does not write SQL. `worker` serves
//! one partition while its lease is held, and routes canonical events to partitions; `node`
//! runs the keeper's rounds and a worker per lease held; `router` decodes inbound messages on
//! any node and sends their events to the partitions; `read_model` follows every partition for
//! the reads any node answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{ConversationId, Partitioning};
use crate::store::StoreError;
use crate::store::postgres::{Lease, Leases};

pub mod front;
pub mod import;
pub mod node;
pub mod read_model;
pub mod router;
pub mod serve;
pub mod worker;

/// Where each conversation lives: in the partition its id names
/// ([`Partitioning::of_conversation`]: an engine serving a partition draws its ids from that
/// partition's residue class), except the conversations an embedded store brought into the
/// cluster, whose ids were drawn before there were partitions: they live with their thread,
/// and the store lists them (`Database::moved_conversations`). Read once at start: conversations
/// move only into a new cluster, before its nodes start (`import`).
#[derive(Clone, Debug)]
pub struct Placement {
    count: u32,
    moved: Arc<HashMap<ConversationId, u32>>,
}

impl Placement {
    /// A cluster of `count` partitions where every conversation lives where its id says.
    pub fn new(count: u32) -> Self {
        Self::with_moved(count, HashMap::new())
    }

    pub fn with_moved(count: u32, moved: HashMap<ConversationId, u32>) -> Self {
        Self {
            count: count.max(1),
            moved: Arc::new(moved),
        }
    }

    /// How many partitions there are.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The partition that holds conversation `id`.
    pub fn of_conversation(&self, id: ConversationId) -> u32 {
        self.moved
            .get(&id)
            .copied()
            .unwrap_or_else(|| Partitioning::of_conversation(self.count, id))
    }
}

/// The partitions this node serves right now, as `/readyz` and the metrics show them (the
/// node loop updates it after every round).
#[derive(Debug, Default)]
pub struct Ownership {
    held: std::sync::Mutex<BTreeMap<u32, u64>>,
}

impl Ownership {
    /// Each partition held, with the epoch of its lease.
    pub fn held(&self) -> BTreeMap<u32, u64> {
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn set(&self, held: BTreeMap<u32, u64>) {
        *self
            .held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = held;
    }
}

/// The partitions `me` should own among `live` nodes: partition `p` goes to the
/// `p mod n`-th live node by id, so that they spread evenly (no node owns more than one
/// partition more than another) and every node computes the same answer from the same
/// register. A node not in `live` should own nothing.
pub fn assignment(partitions: u32, live: &[String], me: &str) -> BTreeSet<u32> {
    let mut sorted: Vec<&str> = live.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let Some(index) = sorted.iter().position(|node| *node == me) else {
        return BTreeSet::new();
    };
    (0..partitions)
        .filter(|partition| *partition as usize % sorted.len() == index)
        .collect()
}

/// What changed in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The node may serve the partition now, writing under this lease.
    Acquired(Lease),
    /// Handed over to the node that should own it; the node had stopped serving it first.
    Released { partition: u32 },
    /// Taken over by another node, or this node's own deadline passed before a renewal: the
    /// node must stop serving it at once (its writes are refused anyway).
    Lost { partition: u32 },
}

/// How often a node's keeper runs a round at most: a round every [`ROUND`], or every third of
/// the lease when that is shorter (so that two rounds can fail before a lease runs out).
/// Frequent rounds keep a dead node's heartbeat and leases at most a round old when it dies,
/// and notice their expiry within a round: a take-over comes a lease after the death, give or
/// take a round, instead of anywhere up to a lease and a third.
pub const ROUND: std::time::Duration = std::time::Duration::from_secs(1);

/// The interval between a node's keeper rounds for leases of `lease`.
pub fn round_interval(lease: std::time::Duration) -> std::time::Duration {
    (lease / 3).min(ROUND)
}

/// This node's leases, kept round after round (see [`round_interval`]).
#[derive(Debug)]
pub struct Keeper {
    leases: Leases,
    partitions: u32,
    held: BTreeMap<u32, Lease>,
}

impl Keeper {
    /// Joins the cluster (creating it with `partitions`, or checking that count) and enters
    /// this process in the nodes' register.
    pub fn join(leases: Leases, partitions: u32) -> Result<Self, StoreError> {
        leases.join_cluster(partitions)?;
        leases.register()?;
        Ok(Self {
            leases,
            partitions,
            held: BTreeMap::new(),
        })
    }

    /// The leases held now.
    pub fn held(&self) -> impl Iterator<Item = &Lease> {
        self.held.values()
    }

    /// One round. `stop` is called for each partition this node hands over, before its lease
    /// is released: the node stops consuming and applying it there, so that its next owner
    /// never overlaps with it. An error leaves the leases as they were (the node keeps to
    /// their deadlines meanwhile), except [`StoreError::Incompatible`]: this process is no
    /// longer the node and must stop serving every partition.
    pub fn round(&mut self, mut stop: impl FnMut(u32)) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        if !self.leases.heartbeat()? {
            // Another process registered under this node id while this one was presumed dead
            // (paused past a lease): every lease it held was free to take.
            self.held.clear();
            return Err(StoreError::Incompatible(format!(
                "another daemon registered as node `{}` while this one was not heard from: \
                 this one stops",
                self.leases.node()
            )));
        }
        let held: Vec<Lease> = self.held.values().copied().collect();
        for lease in held {
            let renewed = match Instant::now() < lease.valid_until {
                true => self.leases.renew(&lease)?,
                // Its own deadline passed: whatever the database says, this node stopped.
                false => None,
            };
            match renewed {
                Some(renewed) => {
                    self.held.insert(lease.partition, renewed);
                }
                None => {
                    self.held.remove(&lease.partition);
                    changes.push(Change::Lost {
                        partition: lease.partition,
                    });
                }
            }
        }
        let live = self.leases.live_nodes()?;
        let mine = assignment(self.partitions, &live, self.leases.node());
        let handed: Vec<Lease> = self
            .held
            .values()
            .filter(|lease| !mine.contains(&lease.partition))
            .copied()
            .collect();
        for lease in handed {
            stop(lease.partition);
            self.leases.release(&lease)?;
            self.held.remove(&lease.partition);
            changes.push(Change::Released {
                partition: lease.partition,
            });
        }
        for partition in mine {
            if self.held.contains_key(&partition) {
                continue;
            }
            if let Some(lease) = self.leases.acquire(partition)? {
                self.held.insert(partition, lease);
                changes.push(Change::Acquired(lease));
            }
        }
        Ok(changes)
    }

    /// Leaves the cluster (stopping): every lease released and the register left, so that
    /// the other nodes take the partitions over at their next round instead of after the
    /// leases run out. The node stopped serving them before.
    pub fn leave(mut self) -> Result<(), StoreError> {
        for lease in std::mem::take(&mut self.held).into_values() {
            self.leases.release(&lease)?;
        }
        self.leases.leave()
    }
}

#[cfg(test)]
mod tests;
