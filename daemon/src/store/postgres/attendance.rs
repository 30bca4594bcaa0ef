//! Attendance shared by a cluster's nodes: each node records the users it heard from (an open
//! stream, a request) with the database's clock, so that the monitor lease of a supervisor
//! whose stream is on one node is not ended by another.

use std::collections::HashSet;
use std::time::Duration;

use super::{Connection, Database};
use crate::store::StoreError;
use crate::store::{read_error, write_error};

/// One node's side of the shared attendance.
#[derive(Debug)]
pub struct SharedAttendance {
    connection: Connection,
    node: String,
}

impl SharedAttendance {
    pub fn new(database: &Database, node: &str) -> Self {
        Self {
            connection: database.connection(),
            node: node.to_owned(),
        }
    }

    /// Records that this node hears from `users` now.
    pub fn record(&self, users: &[String]) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        self.connection.run(async |client| {
            client
                .execute(
                    "INSERT INTO attendance (node_id, user_id, seen_at)
                     SELECT $1, user_id, clock_timestamp() FROM unnest($2::text[]) AS user_id
                     ON CONFLICT (node_id, user_id) DO UPDATE SET seen_at = excluded.seen_at",
                    &[&self.node, &users],
                )
                .await
                .map(drop)
                .map_err(write_error)
        })
    }

    /// The users some node heard from within `lease`.
    pub fn present(&self, lease: Duration) -> Result<HashSet<String>, StoreError> {
        let seconds = lease.as_secs_f64();
        self.connection.run(async |client| {
            Ok(client
                .query(
                    "SELECT DISTINCT user_id FROM attendance
                     WHERE seen_at >= clock_timestamp() - $1 * interval '1 second'",
                    &[&seconds],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
    }
}
