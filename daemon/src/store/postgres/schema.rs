//! The cluster's PostgreSQL schema and its migrations, run by each daemon at start: one node
//! at a time (an advisory lock), each step once (`schema_version`), and a schema newer than
//! this binary refused instead of misread.

use tokio_postgres::Client;

use crate::store::StoreError;
use crate::store::{read_error, write_error};

/// The schema's steps, in order; the version is the number of steps. A step is never edited
/// once released: a change is a new step.
const MIGRATIONS: &[&str] = &[
    // 1: one row per cluster (its partition count, fixed at creation); a lease per partition
    // (its epoch grows on every take-over and fences every write); per partition, the engine's
    // log, latest snapshot, outbox, the live stream's window and the dead deliveries; the
    // timeline per conversation; and the nodes seen (so that two with one id are caught).
    // Ids compare as bytes (`COLLATE "C"`): outbox ids sort in commit order that way.
    r#"
    CREATE TABLE cluster (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        partitions integer NOT NULL CHECK (partitions > 0),
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE partition_lease (
        partition integer PRIMARY KEY,
        owner text,
        epoch bigint NOT NULL DEFAULT 0,
        expires_at timestamptz NOT NULL DEFAULT '-infinity'
    );
    CREATE TABLE node (
        node_id text PRIMARY KEY,
        incarnation text NOT NULL,
        version text NOT NULL,
        heartbeat_at timestamptz NOT NULL
    );
    CREATE TABLE log (
        partition integer NOT NULL,
        seq bigint NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY (partition, seq)
    );
    CREATE TABLE snapshot (
        partition integer PRIMARY KEY,
        last_seq bigint NOT NULL,
        body bytea NOT NULL
    );
    CREATE TABLE timeline (
        conversation bytea NOT NULL,
        seq bigint NOT NULL,
        entry_index bigint NOT NULL,
        partition integer NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (conversation, seq, entry_index)
    );
    CREATE TABLE outbox (
        partition integer NOT NULL,
        id text COLLATE "C" NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (partition, id)
    );
    CREATE TABLE stream (
        partition integer NOT NULL,
        public bigint NOT NULL,
        silent bigint NOT NULL,
        entry_index bigint NOT NULL,
        event bytea NOT NULL,
        PRIMARY KEY (partition, public, silent, entry_index)
    );
    CREATE TABLE stream_floor (
        partition integer PRIMARY KEY,
        public bigint NOT NULL,
        silent bigint NOT NULL,
        entry_index bigint NOT NULL
    );
    CREATE TABLE dead_delivery (
        partition integer NOT NULL,
        id text COLLATE "C" NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (partition, id)
    );
    "#,
    // 2: a partition's timeline entries in log order, for the nodes that follow its log (their
    // live stream carries each record's entries).
    r#"
    CREATE INDEX timeline_by_partition ON timeline (partition, seq, entry_index);
    "#,
    // 3: who each node last heard from (open streams, requests), so that the monitor lease
    // holds while a supervisor is there on any node.
    r#"
    CREATE TABLE attendance (
        node_id text NOT NULL,
        user_id text NOT NULL,
        seen_at timestamptz NOT NULL,
        PRIMARY KEY (node_id, user_id)
    );
    "#,
    // 4: conversations that live in another partition than their id names: those an embedded
    // store brought into the cluster (their ids were drawn before there were partitions).
    r#"
    CREATE TABLE moved_conversation (
        conversation bytea PRIMARY KEY,
        partition integer NOT NULL
    );
    "#,
];

/// The schema version this binary writes, and the newest it reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Creates `schema` or brings it up to [`SCHEMA_VERSION`], in one transaction under an
/// advisory lock (nodes starting together migrate one after the other; the later ones find
/// nothing to do). Refuses a schema a newer version wrote.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), StoreError> {
    let transaction = client.transaction().await.map_err(write_error)?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('switchboard schema ' || $1::text))",
            &[&schema],
        )
        .await
        .map_err(write_error)?;
    // `schema` is checked to be a plain identifier before any connection is made.
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 by_version text NOT NULL
             );"
        ))
        .await
        .map_err(write_error)?;
    let found: i32 = transaction
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .map_err(read_error)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::Incompatible(format!(
            "the PostgreSQL schema `{schema}` is at version {found}, written by a newer Switchboard; \
             this one ({}) knows versions up to {SCHEMA_VERSION} and will not touch it: run the newer version",
            env!("CARGO_PKG_VERSION")
        )));
    }
    for version in found + 1..=SCHEMA_VERSION {
        tracing::info!(schema, version, "migrating the PostgreSQL schema");
        transaction
            .batch_execute(&format!(
                "SET LOCAL search_path TO {schema}; {}",
                MIGRATIONS[version as usize - 1]
            ))
            .await
            .map_err(write_error)?;
        transaction
            .execute(
                &format!(
                    "INSERT INTO {schema}.schema_version (version, by_version) VALUES ($1, $2)"
                ),
                &[&version, &env!("CARGO_PKG_VERSION")],
            )
            .await
            .map_err(write_error)?;
    }
    transaction.commit().await.map_err(write_error)
}

/// Whether `schema` can be written into SQL as it is: a lower-case identifier.
pub(super) fn is_plain_identifier(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        && schema.len() <= 63
}
