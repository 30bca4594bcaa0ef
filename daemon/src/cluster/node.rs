//! A cluster node's ownership loop: a keeper round every interval, and a partition worker for
//! each lease held — started when a lease is taken, stopped (and awaited) before a lease is
//! handed over, stopped when one is lost, started again when one ended with an error while
//! its lease is still held. On shutdown every worker stops, then every lease is released, so
//! the other nodes take the partitions over at their next round (a rolling restart stalls
//! nothing until leases expire).

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::worker::{Ended, PartitionContext, WorkerError, serve_partition};
use super::{Change, Keeper};
use crate::metrics::family;
use crate::store::StoreError;
use crate::store::postgres::Lease;

type Worker = (CancellationToken, JoinHandle<Result<Ended, WorkerError>>);

/// Runs the node until `shutdown`, then leaves the cluster. Returns an error only when this
/// process may no longer act as the node (its id taken over) or cannot leave.
pub async fn run_node(
    mut keeper: Keeper,
    context: PartitionContext,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut workers: HashMap<u32, Worker> = HashMap::new();
    loop {
        let round = tokio::task::block_in_place(|| {
            keeper.round(|partition| {
                // Handed over: the worker stops (its channel closed) before the lease goes.
                if let Some((stop, worker)) = workers.remove(&partition) {
                    stop.cancel();
                    let _ = tokio::runtime::Handle::current().block_on(worker);
                }
            })
        });
        match round {
            Ok(changes) => {
                for change in changes {
                    match change {
                        Change::Acquired(lease) => {
                            if lease.epoch > 1 {
                                context
                                    .metrics
                                    .count(family::CLUSTER_TAKEOVERS_TOTAL, &[], 1);
                            }
                            workers.insert(lease.partition, start(lease, &context));
                        }
                        Change::Lost { partition } => {
                            if let Some((stop, _)) = workers.remove(&partition) {
                                stop.cancel();
                            }
                        }
                        Change::Released { .. } => {}
                    }
                }
            }
            Err(StoreError::Incompatible(reason)) => {
                stop_all(&mut workers).await;
                return Err(StoreError::Incompatible(reason));
            }
            // PostgreSQL unreachable: the workers keep to their leases (their commits fail
            // meanwhile) and the next round tries again.
            Err(error) => {
                context
                    .metrics
                    .count(family::CLUSTER_LEASE_ROUNDS_FAILED_TOTAL, &[], 1);
                tracing::warn!(%error, "a lease round failed; trying again");
            }
        }
        context.ownership.set(
            keeper
                .held()
                .map(|lease| (lease.partition, lease.epoch))
                .collect(),
        );
        context.metrics.set_gauge(
            family::CLUSTER_PARTITIONS_OWNED,
            &[],
            keeper.held().count() as i64,
        );
        // A worker that ended with an error while its lease is held starts again.
        let held: Vec<Lease> = keeper.held().copied().collect();
        for lease in held {
            let finished = workers
                .get(&lease.partition)
                .is_none_or(|(_, worker)| worker.is_finished());
            if finished {
                if let Some((_, worker)) = workers.remove(&lease.partition)
                    && let Ok(Err(error)) = worker.await
                {
                    tracing::warn!(partition = lease.partition, %error, "a partition's worker failed; starting it again");
                }
                workers.insert(lease.partition, start(lease, &context));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    stop_all(&mut workers).await;
    context.ownership.set(Default::default());
    context
        .metrics
        .set_gauge(family::CLUSTER_PARTITIONS_OWNED, &[], 0);
    tokio::task::block_in_place(|| keeper.leave())
}

fn start(lease: Lease, context: &PartitionContext) -> Worker {
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let context = context.clone();
        let stop = stop.clone();
        async move { serve_partition(lease, &context, stop).await }
    });
    (stop, worker)
}

async fn stop_all(workers: &mut HashMap<u32, Worker>) {
    for (_, (stop, worker)) in workers.drain() {
        stop.cancel();
        let _ = worker.await;
    }
}
