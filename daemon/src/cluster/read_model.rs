//! Cluster reads: every node follows every partition's log in PostgreSQL (a read-only engine
//! per partition, brought up to date on each refresh), so that the report and a conversation's
//! details are the same whichever node is asked. Reads are as fresh as the last refresh:
//! eventually consistent, by design (a read never waits for another node), while commands are
//! answered by the owner after its commit.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Placement;
use crate::engine::report::{ConversationSummary, ReportFilter};
use crate::engine::{
    Actor, AgentId, ConversationId, Engine, Millis, Partitioning, Position, Setup,
};
use crate::pipeline::Followed;
use crate::store::StoreError;
use crate::store::postgres::{Database, PostgresStore};

/// A follower of every partition.
#[derive(Debug)]
pub struct ReadModel {
    partitions: Vec<Follower>,
    placement: Placement,
    /// The roster and policies, without a partition: the setup of the merged view.
    setup: Setup,
}

#[derive(Debug)]
struct Follower {
    store: PostgresStore,
    setup: Setup,
    engine: Mutex<Engine>,
}

impl ReadModel {
    /// Rebuilds every partition from PostgreSQL.
    pub fn open(
        database: &Database,
        setup: &Setup,
        placement: Placement,
    ) -> Result<Self, StoreError> {
        let count = placement.count();
        let partitions = (0..count)
            .map(|partition| {
                let store = PostgresStore::reader(database, partition);
                let setup = Setup {
                    partitioning: Some(Partitioning { partition, count }),
                    ..setup.clone()
                };
                let (snapshot, records) = store.records_after(0)?;
                let engine = Engine::restore(setup.clone(), snapshot, &records);
                Ok(Follower {
                    store,
                    setup,
                    engine: Mutex::new(engine),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            partitions,
            placement,
            setup: Setup {
                partitioning: None,
                ..setup.clone()
            },
        })
    }

    /// Applies what every partition committed since the last refresh; returns, for each
    /// partition that moved, the records it took, or `None` when nothing changed. A follower
    /// restarted from a snapshot returns only the records after it, and says so.
    pub fn refresh(&self) -> Result<Option<Vec<Followed>>, StoreError> {
        let Some(first) = self.partitions.first() else {
            return Ok(None);
        };
        let newest = first.store.newest_seqs(self.partitions())?;
        let mut followed = Vec::new();
        for ((partition, follower), newest) in (0u32..).zip(&self.partitions).zip(newest) {
            let seq = lock(&follower.engine).state().last_seq();
            if newest <= seq {
                continue;
            }
            let (snapshot, records) = follower.store.records_after(seq)?;
            let mut engine = lock(&follower.engine);
            let skipped = snapshot.is_some();
            match snapshot {
                Some(snapshot) => {
                    *engine = Engine::restore(follower.setup.clone(), Some(snapshot), &records);
                }
                None if records.is_empty() => continue,
                None => engine.follow(&records),
            }
            followed.push(Followed {
                partition,
                records,
                position: engine.state().position(),
                skipped,
            });
        }
        Ok((!followed.is_empty()).then_some(followed))
    }

    /// Each partition's position as its follower stands now.
    pub fn positions(&self) -> Vec<Position> {
        self.partitions
            .iter()
            .map(|follower| lock(&follower.engine).state().position())
            .collect()
    }

    /// Every partition as one read-only engine, for reads that the single daemon's engine
    /// answers (the report, a conversation's actions and targets, agents with their load
    /// across partitions, queues): built afresh from the followers' states
    /// (`Snapshot::merge`), in time proportional to the conversations held.
    pub fn view(&self) -> Engine {
        let parts: Vec<_> = self
            .partitions
            .iter()
            .map(|follower| lock(&follower.engine).state().snapshot())
            .collect();
        Engine::restore(
            self.setup.clone(),
            Some(crate::engine::Snapshot::merge(parts)),
            &[],
        )
    }

    /// For each partition, the units each agent holds in the other partitions (those with
    /// none left out), as the followers see them now.
    pub fn loads_elsewhere(&self) -> Vec<Vec<(AgentId, u32)>> {
        let own: Vec<BTreeMap<AgentId, u32>> = self
            .partitions
            .iter()
            .map(|follower| {
                lock(&follower.engine)
                    .state()
                    .agents()
                    .filter(|agent| agent.used > 0)
                    .map(|agent| (agent.id.clone(), agent.used))
                    .collect()
            })
            .collect();
        elsewhere(&own)
    }

    /// The store of `partition`, read-only.
    pub fn partition_store(&self, partition: u32) -> Option<&PostgresStore> {
        self.partitions
            .get(partition as usize)
            .map(|follower| &follower.store)
    }

    /// How many partitions there are.
    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The ongoing conversations `actor` may see across every partition, in the filter's order.
    pub fn ongoing(
        &self,
        actor: &Actor,
        filter: &ReportFilter,
        now: Millis,
    ) -> Vec<ConversationSummary> {
        let mut rows: Vec<ConversationSummary> = self
            .partitions
            .iter()
            .flat_map(|follower| lock(&follower.engine).ongoing(actor, filter, now))
            .collect();
        filter.sort_rows(&mut rows);
        rows
    }

    /// One conversation, from the partition its id names.
    pub fn find(&self, actor: &Actor, id: &str, now: Millis) -> Option<ConversationSummary> {
        let parsed = ConversationId::parse(id)?;
        let partition = self.placement.of_conversation(parsed) as usize;
        lock(&self.partitions.get(partition)?.engine).find(actor, id, now)
    }
}

/// From each partition's own units per agent, each partition's units elsewhere: the total
/// over every partition less its own.
pub fn elsewhere(own: &[BTreeMap<AgentId, u32>]) -> Vec<Vec<(AgentId, u32)>> {
    let mut total: BTreeMap<&AgentId, u32> = BTreeMap::new();
    for units in own.iter().flat_map(|partition| partition.iter()) {
        *total.entry(units.0).or_default() += units.1;
    }
    own.iter()
        .map(|partition| {
            total
                .iter()
                .filter_map(|(agent, total)| {
                    let units = total - partition.get(*agent).copied().unwrap_or(0);
                    (units > 0).then(|| ((*agent).clone(), units))
                })
                .collect()
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
