//! Who is there, for the monitor lease (README, "What frontends need"): each user's open live
//! streams and when the user was last heard from (any authenticated request). A lease keeper ends
//! the seats of a supervisor gone for `engine.monitor_lease` through the engine's own rule
//! (`EndLapsedSeats`), so that a closed browser tab never holds a monitor slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::{Action, Actor, Command, Millis, Role, UserId};
use crate::pipeline::{Completion, Submission};
use crate::service::Service;

#[derive(Debug)]
pub struct Attendance {
    /// When this process began: nobody counts as gone before the lease has run since then
    /// (a restart must not end everyone's seats before browsers could reconnect).
    started: Millis,
    users: Mutex<HashMap<Box<str>, Seen>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    streams: u32,
    last: Millis,
}

/// An open stream of one user; dropping it (the stream ended) counts as hearing from the
/// user then.
#[derive(Debug)]
pub struct Present {
    attendance: Arc<Attendance>,
    user: Box<str>,
}

impl Drop for Present {
    fn drop(&mut self) {
        let mut users = self.attendance.lock();
        let seen = users.entry(self.user.clone()).or_default();
        seen.streams = seen.streams.saturating_sub(1);
        seen.last = crate::clock::now();
    }
}

impl Attendance {
    pub fn new(started: Millis) -> Self {
        Self {
            started,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Seen>> {
        self.users
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// An authenticated request from `user`.
    pub fn heard_from(&self, user: &str, now: Millis) {
        let mut users = self.lock();
        match users.get_mut(user) {
            Some(seen) => seen.last = seen.last.max(now),
            None => {
                users.insert(
                    user.into(),
                    Seen {
                        streams: 0,
                        last: now,
                    },
                );
            }
        }
    }

    /// `user` opened a live stream; it counts as present until the guard drops.
    pub fn stream_opened(self: &Arc<Self>, user: &str) -> Present {
        let mut users = self.lock();
        let seen = users.entry(user.into()).or_default();
        seen.streams += 1;
        seen.last = seen.last.max(crate::clock::now());
        Present {
            attendance: self.clone(),
            user: user.into(),
        }
    }

    /// The users with a stream open, or heard from within `lease` before `now`.
    pub fn present(&self, lease: Duration, now: Millis) -> Vec<String> {
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self.lock()
            .iter()
            .filter(|(_, seen)| seen.streams > 0 || seen.last.plus(lease) > now)
            .map(|(user, _)| user.to_string())
            .collect()
    }

    /// Whether `user` has been gone (no stream open, no request) for `lease` at `now`.
    pub fn lapsed(&self, user: &str, lease: Duration, now: Millis) -> bool {
        let seen = self.lock().get(user).copied().unwrap_or_default();
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        seen.streams == 0 && seen.last.max(self.started).plus(lease) <= now
    }
}

/// The daemon itself, as the actor of the seats it ends.
fn daemon_actor() -> Actor {
    Actor {
        id: UserId::new("switchboard"),
        roles: vec![Role::Admin],
        teams: Vec::new(),
    }
}

/// A cluster node's part in the monitor lease: the users it hears from are recorded for every
/// node to see, and only the node that decodes (the owner of partition 0) ends seats, of
/// supervisors that no node heard from.
#[derive(Debug)]
pub struct ClusterAttendance {
    pub shared: crate::store::postgres::SharedAttendance,
    pub ownership: Arc<crate::cluster::Ownership>,
}

/// Ends the seats of supervisors gone for `lease`, checking a few times per lease, until
/// `stop`.
pub async fn keep_leases(
    service: Arc<Service>,
    attendance: Arc<Attendance>,
    lease: Duration,
    cluster: Option<ClusterAttendance>,
    stop: CancellationToken,
) {
    let every = (lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(15));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = crate::clock::now();
        // In a cluster: who is here goes to the others; who is anywhere comes back.
        let present_anywhere: std::collections::HashSet<String> = match &cluster {
            None => Default::default(),
            Some(cluster) => {
                let here = attendance.present(lease, now);
                let shared = tokio::task::block_in_place(|| {
                    cluster.shared.record(&here)?;
                    cluster.shared.present(lease)
                });
                let sweeper = cluster
                    .ownership
                    .held()
                    .contains_key(&crate::cluster::worker::DECODING_PARTITION);
                match shared {
                    Ok(present) if sweeper => present,
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "cannot share who is here; no seats end until it can");
                        continue;
                    }
                }
            }
        };
        let holders: Vec<UserId> = service
            .read(|engine| {
                let mut holders: Vec<UserId> = engine
                    .state()
                    .conversations()
                    .flat_map(|conversation| conversation.seats.iter())
                    .map(|seat| seat.supervisor.clone())
                    .collect();
                holders.sort();
                holders.dedup();
                holders
            })
            .await;
        for supervisor in holders {
            if !attendance.lapsed(supervisor.as_str(), lease, now)
                || present_anywhere.contains(supervisor.as_str())
            {
                continue;
            }
            let command = Command {
                actor: daemon_actor(),
                idempotency: None,
                action: Action::EndLapsedSeats {
                    supervisor: supervisor.clone(),
                },
            };
            match service.submit(Submission::Command(command)).await {
                Ok(Completion::Command(Ok(_))) => {
                    tracing::info!(%supervisor, "monitor lease expired; the supervisor's seats ended");
                }
                Ok(other) => tracing::warn!(?other, "ending a lapsed supervisor's seats failed"),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot end a lapsed supervisor's seats now");
                }
            }
        }
    }
}
