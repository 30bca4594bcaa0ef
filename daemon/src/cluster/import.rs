//! Moving a single daemon into a new cluster (`switchboard cluster import`), outside the
//! daemon's flow: reads an embedded store whole (the engine's state, the timelines of the
//! conversations it holds, the outbox not yet sent, the dead deliveries), cuts it into the
//! cluster's partitions (`Snapshot::split`: each conversation with its thread, where the
//! thread's next events go) and writes it in one transaction (`Database::import`), before the
//! cluster's nodes start. Conversation ids stay as they were (clients' links and external
//! references keep working); those not in the residue class of their partition are listed
//! for [`Placement`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;

use super::Placement;
use crate::config::Config;
use crate::engine::{ConversationId, Engine, Partitioning};
use crate::store::postgres::{Database, ImportedPartition};
use crate::store::{OutboxEntry, RedbStore, Store};

/// Where the parts land: every partition's `last_seq` after the import. Records the partition
/// writes next come after it, and a follower that has read nothing (seq 0) finds the snapshot.
const IMPORTED_SEQ: u64 = 1;

/// What the import wrote, as the command prints it.
#[derive(Debug, serde::Serialize)]
pub struct Imported {
    /// Conversations the engine held (ongoing, and closed ones within the report window).
    pub conversations: usize,
    /// Conversations per partition.
    pub partitions: Vec<usize>,
    /// Conversations whose partition is not the one their id names.
    pub moved: usize,
    pub timeline_entries: usize,
    /// Outbox entries not yet sent, which the cluster sends.
    pub outbox: usize,
    pub dead_deliveries: usize,
}

/// Moves the embedded store in `from` into the cluster `config` names. `skip_outbox` leaves
/// the outbox behind (for a daemon whose outbox was read by a worker of its own, with
/// `[delivery] enabled = false`: the cluster would send those requests again).
pub fn import(config: &Config, from: &Path, skip_outbox: bool) -> anyhow::Result<Imported> {
    let cluster = config.cluster.as_ref().context(
        "the configuration has no [cluster]: name the cluster to import into (its store.postgres_url and [cluster])",
    )?;
    // Opening creates a store where there is none: a mistyped path would import nothing and
    // leave the cluster no longer new.
    anyhow::ensure!(
        from.join(RedbStore::FILE).is_file(),
        "{} holds no embedded store ({} not found): give the single daemon's store.path",
        from.display(),
        RedbStore::FILE
    );
    let store = RedbStore::open(from).with_context(|| {
        format!(
            "opening the embedded store in {} (stop the daemon that uses it first)",
            from.display()
        )
    })?;
    let recovery = store.recover().context("reading the embedded store")?;
    // Plugin policies are not needed to rebuild the state: replay applies recorded changes.
    let engine = Engine::restore(
        config.engine_setup(Vec::new()),
        recovery.snapshot,
        &recovery.records,
    );
    let count = cluster.partitions;
    let snapshots = engine.state().snapshot().split(count, IMPORTED_SEQ);
    let mut parts: Vec<ImportedPartition> = Vec::with_capacity(snapshots.len());
    let mut moved: HashMap<ConversationId, u32> = HashMap::new();
    let mut imported = Imported {
        conversations: 0,
        partitions: Vec::with_capacity(snapshots.len()),
        moved: 0,
        timeline_entries: 0,
        outbox: 0,
        dead_deliveries: 0,
    };
    for (partition, snapshot) in (0u32..).zip(snapshots) {
        let mut timelines = Vec::with_capacity(snapshot.conversations().len());
        for conversation in snapshot.conversations() {
            let timeline = store
                .timeline(conversation.id)
                .with_context(|| format!("reading the timeline of {}", conversation.id))?;
            imported.timeline_entries += timeline.len();
            timelines.push((conversation.id, timeline));
            if Partitioning::of_conversation(count, conversation.id) != partition {
                moved.insert(conversation.id, partition);
            }
        }
        imported.conversations += timelines.len();
        imported.partitions.push(timelines.len());
        parts.push(ImportedPartition {
            snapshot: Some(snapshot),
            timelines,
            outbox: Vec::new(),
            dead: Vec::new(),
        });
    }
    let placement = Placement::with_moved(count, moved.clone());
    // Requests and notifications go with their conversation's partition (whose publisher sends
    // them, in order); those of no conversation with partition 0.
    let home = |entry: &OutboxEntry| {
        entry
            .subject
            .as_deref()
            .and_then(ConversationId::parse)
            .map_or(0, |id| placement.of_conversation(id)) as usize
    };
    if !skip_outbox {
        let mut after: Option<String> = None;
        loop {
            let page = store
                .outbox_after(after.as_deref(), 1_000)
                .context("reading the embedded outbox")?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            imported.outbox += page.len();
            for entry in page {
                parts[home(&entry)].outbox.push(entry);
            }
        }
    }
    for dead in store
        .dead_deliveries(usize::MAX)
        .context("reading the dead deliveries")?
    {
        imported.dead_deliveries += 1;
        parts[home(&dead.entry)].dead.push(dead);
    }
    imported.moved = moved.len();
    drop(store);
    let database = Database::open(cluster.postgres_url.expose(), &cluster.postgres_schema)
        .context("opening the cluster's PostgreSQL (store.postgres_url)")?;
    let mut moved: Vec<(ConversationId, u32)> = moved.into_iter().collect();
    moved.sort_unstable();
    database
        .import(&parts, &moved, cluster.lease)
        .context("writing into the cluster")?;
    Ok(imported)
}
