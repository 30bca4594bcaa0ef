//! Store step for a cluster: one partition's log, snapshot, outbox, live-stream window and
//! dead deliveries, and the timeline of its conversations, in PostgreSQL shared by every node.
//! Every write runs in a transaction that first checks the partition's lease epoch (`lease`)
//! under a share lock: a node that lost its lease (paused, cut off) is refused
//! ([`StoreError::Fenced`]) and can never overwrite its successor's work, while a take-over
//! waits for a write already past the check. The only module that imports tokio-postgres.
//!
//! The [`Store`] trait is synchronous (the pipeline commits on a blocking thread) and the
//! client asynchronous: calls run on the database's own small runtime ([`Database`]), which
//! also keeps the connections' tasks alive whichever runtime the caller is on.

mod attendance;
mod import;
mod lease;
mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, IsolationLevel, NoTls};

pub use self::attendance::SharedAttendance;
pub use self::import::ImportedPartition;
pub use self::lease::{Lease, LeaseHolder, Leases};
pub use self::schema::SCHEMA_VERSION;
use super::{
    Batch, DeadDelivery, LoggedRecord, OutboxEntry, Recovery, STREAM_WINDOW, Store, StoreError,
    decode, encode, read_error, write_error,
};
use crate::engine::{ConversationId, Position, Record, Snapshot, TimelineEntry};
use crate::stream::{StoredEvent, StoredWindow, StreamId};

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stream events inserted between two trims of the window: the window is read newest first
/// and cut at [`STREAM_WINDOW`], so rows beyond it may wait; trimming on every commit would
/// walk ten thousand index entries each time.
const TRIM_EVERY: usize = 1_024;

/// A PostgreSQL database holding a cluster's schema: where connections come from.
#[derive(Clone)]
pub struct Database {
    shared: Arc<DatabaseShared>,
}

struct DatabaseShared {
    /// Always there until the drop takes it.
    runtime: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    schema: String,
    /// What errors and logs may say of the database: host, port and name, never a password.
    described: String,
}

impl Drop for DatabaseShared {
    /// Without waiting for the connections' tasks: the last handle may go from async code
    /// (a node stopping), where blocking is not allowed, and the tasks hold nothing to finish.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Database")
            .field("at", &self.shared.described)
            .field("schema", &self.shared.schema)
            .finish()
    }
}

impl Database {
    /// Connects to `url` and creates or upgrades `schema` (see `schema`). TLS to PostgreSQL is
    /// not built in: a URL that requires it is refused with that reason instead of failing
    /// later.
    pub fn open(url: &str, schema: &str) -> Result<Self, StoreError> {
        let refuse = |reason: String| StoreError::Open {
            path: "store.postgres_url".to_owned(),
            reason,
        };
        if !schema::is_plain_identifier(schema) {
            return Err(refuse(format!(
                "the schema name `{schema}` must be a lower-case identifier (letters, digits, `_`)"
            )));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| refuse(format!("not a PostgreSQL URL: {error}")))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(refuse(
                "sslmode=require: this build speaks to PostgreSQL without TLS; \
                 use a local or tunnelled connection with sslmode=disable or prefer"
                    .to_owned(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let described = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("switchboard-postgres")
            .enable_all()
            .build()
            .map_err(|error| refuse(error.to_string()))?;
        let database = Self {
            shared: Arc::new(DatabaseShared {
                runtime: Some(runtime),
                config,
                schema: schema.to_owned(),
                described,
            }),
        };
        let schema = database.shared.schema.clone();
        database
            .connection()
            .run(async |client| schema::migrate(client, &schema).await)
            .map_err(|error| match error {
                StoreError::Incompatible(_) => error,
                other => StoreError::Open {
                    path: database.shared.described.clone(),
                    reason: other.to_string(),
                },
            })?;
        Ok(database)
    }

    /// A connection of its own (made on first use, and again after it broke).
    pub fn connection(&self) -> Connection {
        Connection {
            database: self.clone(),
            client: tokio::sync::Mutex::new(None),
        }
    }
}

/// host:port/dbname of a parsed URL.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{host}:{port}/{}",
        config.get_dbname().unwrap_or("")
    )
}

/// One client, connected lazily: a broken connection (PostgreSQL restarted, a network cut)
/// fails the call it broke under and is replaced on the next one, so the caller's retry (the
/// transport redelivers what was not committed) finds a fresh connection.
pub struct Connection {
    database: Database,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Connection")
            .field("database", &self.database)
            .finish()
    }
}

impl Connection {
    /// Runs `operation` on this connection's client, blocking the calling thread: from a
    /// worker of a multi-threaded runtime, in `block_in_place` (its other tasks move on);
    /// never from a current-thread runtime's task, which would stall.
    pub(super) fn run<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.block_on(operation))
            }
            _ => self.block_on(operation),
        }
    }

    fn block_on<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let shared = &self.database.shared;
        let Some(runtime) = &shared.runtime else {
            unreachable!("the runtime goes only with the last handle");
        };
        runtime.block_on(async {
            let mut client = self.client.lock().await;
            if client.as_ref().is_none_or(Client::is_closed) {
                *client = None;
                let (connected, connection) = shared
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|error| unavailable(&shared.described, error))?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::warn!(%error, "a PostgreSQL connection closed");
                    }
                });
                connected
                    .batch_execute(&format!("SET search_path TO {}", shared.schema))
                    .await
                    .map_err(write_error)?;
                *client = Some(connected);
            }
            let Some(client) = client.as_mut() else {
                unreachable!("connected just above");
            };
            operation(client).await
        })
    }
}

fn unavailable(described: &str, error: tokio_postgres::Error) -> StoreError {
    StoreError::Write(format!(
        "PostgreSQL at {described} does not answer: {error}"
    ))
}

/// A conversation's key as the timeline table keys it (big-endian, so that it sorts).
fn conversation_key(conversation: ConversationId) -> Vec<u8> {
    conversation.key().to_be_bytes().to_vec()
}

/// Opens a transaction that may write for `partition` only while `epoch` is its lease's
/// epoch. The share lock on the lease row holds until the transaction ends: a take-over (an
/// update of that row) waits for it, and a write that comes after a take-over sees the new
/// epoch and is refused.
async fn fenced(
    client: &mut Client,
    partition: u32,
    epoch: u64,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    let transaction = client.transaction().await.map_err(write_error)?;
    let current: Option<i64> = transaction
        .query_opt(
            "SELECT epoch FROM partition_lease WHERE partition = $1 FOR SHARE",
            &[&(partition as i32)],
        )
        .await
        .map_err(write_error)?
        .map(|row| row.get(0));
    if current != Some(epoch as i64) {
        return Err(StoreError::Fenced {
            partition,
            epoch,
            current: current.unwrap_or(0) as u64,
        });
    }
    Ok(transaction)
}

/// One partition's store, writing under one lease epoch.
#[derive(Debug)]
pub struct PostgresStore {
    partition: u32,
    epoch: u64,
    /// Commits, snapshots and marks (one at a time, in the caller's order).
    writer: Connection,
    /// Reads (recovery, the outbox, timelines), beside the writes.
    reader: Connection,
    /// Stream events inserted since the window was last trimmed.
    untrimmed: AtomicUsize,
}

impl PostgresStore {
    /// The store of `lease`'s partition, writing under its epoch.
    pub fn open(database: &Database, lease: &Lease) -> Self {
        Self {
            partition: lease.partition,
            epoch: lease.epoch,
            writer: database.connection(),
            reader: database.connection(),
            // Trim at the first commit with events: whatever an earlier owner left.
            untrimmed: AtomicUsize::new(TRIM_EVERY),
        }
    }

    /// A read-only view of `partition` for a node that does not own it (every write is
    /// refused: no lease has epoch 0).
    pub fn reader(database: &Database, partition: u32) -> Self {
        Self::open(
            database,
            &Lease {
                partition,
                epoch: 0,
                valid_until: std::time::Instant::now(),
            },
        )
    }

    /// The newest `seq` of each of the cluster's `partitions` partitions (its log's, or its
    /// snapshot's when the log is empty; 0 for one that holds nothing), in one query whichever
    /// partition's store asks: a follower reads only the partitions that moved, so an idle
    /// cluster's followers cost the database one query per refresh instead of several per
    /// partition.
    pub fn newest_seqs(&self, partitions: u32) -> Result<Vec<u64>, StoreError> {
        self.read(async |transaction| {
            Ok(transaction
                .query(
                    "SELECT greatest(
                         (SELECT max(seq) FROM log WHERE partition = p),
                         (SELECT last_seq FROM snapshot WHERE partition = p), 0)
                     FROM generate_series(0, $1 - 1) AS p ORDER BY p",
                    &[&(partitions as i32)],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| row.get::<_, i64>(0) as u64)
                .collect())
        })
    }

    /// What a follower at `seq` is missing: the records after it (with their timeline
    /// entries), or, when the log behind a newer snapshot is already gone, that snapshot and
    /// the records after it (the follower starts again from the snapshot).
    pub fn records_after(&self, seq: u64) -> Result<(Option<Snapshot>, Vec<Record>), StoreError> {
        let partition = self.partition();
        self.read(async |transaction| {
            let snapshot_seq: Option<i64> = transaction
                .query_opt(
                    "SELECT last_seq FROM snapshot WHERE partition = $1",
                    &[&partition],
                )
                .await
                .map_err(read_error)?
                .map(|row| row.get(0));
            let oldest: Option<i64> = transaction
                .query_one(
                    "SELECT min(seq) FROM log WHERE partition = $1",
                    &[&partition],
                )
                .await
                .map_err(read_error)?
                .get(0);
            // The log holds everything after `seq` unless a snapshot beyond `seq` dropped
            // part of it.
            let gap = snapshot_seq.is_some_and(|snapshot| {
                snapshot as u64 > seq && oldest.is_none_or(|oldest| oldest as u64 > seq + 1)
            });
            let (snapshot, after) = match gap {
                true => {
                    let row = transaction
                        .query_one(
                            "SELECT last_seq, body FROM snapshot WHERE partition = $1",
                            &[&partition],
                        )
                        .await
                        .map_err(read_error)?;
                    let snapshot: Snapshot = decode(row.get(1), "snapshot")?;
                    (Some(snapshot), row.get::<_, i64>(0))
                }
                false => (None, seq as i64),
            };
            let mut records = log_after(transaction, partition, after).await?;
            // The log keeps records without their timeline; a follower's stream needs it.
            let entries = transaction
                .query(
                    "SELECT seq, entry FROM timeline WHERE partition = $1 AND seq > $2 \
                     ORDER BY seq, entry_index",
                    &[&partition, &after],
                )
                .await
                .map_err(read_error)?;
            let mut records_by_seq = records.iter_mut().peekable();
            for row in &entries {
                let seq = row.get::<_, i64>(0) as u64;
                while records_by_seq.next_if(|record| record.seq < seq).is_some() {}
                if let Some(record) = records_by_seq.peek_mut()
                    && record.seq == seq
                {
                    record.timeline.push(decode(row.get(1), "timeline entry")?);
                }
            }
            Ok((snapshot, records))
        })
    }

    fn partition(&self) -> i32 {
        self.partition as i32
    }

    /// A read-only snapshot of the database for `operation`.
    fn read<T>(
        &self,
        operation: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.reader.run(async |client| {
            let transaction = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(read_error)?;
            let value = operation(&transaction).await?;
            transaction.commit().await.map_err(read_error)?;
            Ok(value)
        })
    }
}

/// A batch's rows, encoded before the connection is taken.
struct Rows {
    seqs: Vec<i64>,
    records: Vec<Vec<u8>>,
    timeline_conversations: Vec<Vec<u8>>,
    timeline_seqs: Vec<i64>,
    timeline_indexes: Vec<i64>,
    timeline_entries: Vec<Vec<u8>>,
    outbox_ids: Vec<String>,
    outbox_entries: Vec<Vec<u8>>,
    stream_keys: [Vec<i64>; 3],
    stream_events: Vec<Vec<u8>>,
    dead: Vec<(String, Vec<u8>)>,
}

impl Rows {
    fn of(batch: &Batch) -> Result<Self, StoreError> {
        let mut rows = Self {
            seqs: Vec::with_capacity(batch.records.len()),
            records: Vec::with_capacity(batch.records.len()),
            timeline_conversations: Vec::new(),
            timeline_seqs: Vec::new(),
            timeline_indexes: Vec::new(),
            timeline_entries: Vec::new(),
            outbox_ids: Vec::with_capacity(batch.outbox.len()),
            outbox_entries: Vec::with_capacity(batch.outbox.len()),
            stream_keys: Default::default(),
            stream_events: Vec::with_capacity(batch.stream.len()),
            dead: Vec::with_capacity(batch.dead.len()),
        };
        for record in &batch.records {
            rows.seqs.push(record.seq as i64);
            rows.records.push(encode(&LoggedRecord::of(record))?);
            for (index, entry) in record.timeline.iter().enumerate() {
                rows.timeline_conversations
                    .push(conversation_key(entry.conversation));
                rows.timeline_seqs.push(record.seq as i64);
                rows.timeline_indexes.push(index as i64);
                rows.timeline_entries.push(encode(entry)?);
            }
        }
        for entry in &batch.outbox {
            rows.outbox_ids.push(entry.id.clone());
            rows.outbox_entries.push(encode(entry)?);
        }
        for event in &batch.stream {
            let [public, silent, index] = &mut rows.stream_keys;
            public.push(event.id.position.public as i64);
            silent.push(i64::from(event.id.position.silent));
            index.push(i64::from(event.id.index));
            rows.stream_events.push(encode(event)?);
        }
        for buried in &batch.dead {
            rows.dead.push((buried.entry.id.clone(), encode(buried)?));
        }
        Ok(rows)
    }
}

/// Writes `rows` (and `batch`'s marks) in `transaction`, in the order the embedded store
/// applies a batch: stream, records and timeline, outbox, sent marks, dead, re-sent.
async fn write_rows(
    transaction: &tokio_postgres::Transaction<'_>,
    partition: i32,
    rows: &Rows,
    batch: &Batch,
) -> Result<(), StoreError> {
    if !rows.stream_events.is_empty() {
        let [public, silent, index] = &rows.stream_keys;
        transaction
            .execute(
                "INSERT INTO stream (partition, public, silent, entry_index, event)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[])
                 ON CONFLICT (partition, public, silent, entry_index)
                 DO UPDATE SET event = excluded.event",
                &[&partition, public, silent, index, &rows.stream_events],
            )
            .await
            .map_err(write_error)?;
    }
    if !rows.seqs.is_empty() {
        transaction
            .execute(
                "INSERT INTO log (partition, seq, record)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bytea[])
                 ON CONFLICT (partition, seq) DO UPDATE SET record = excluded.record",
                &[&partition, &rows.seqs, &rows.records],
            )
            .await
            .map_err(write_error)?;
    }
    if !rows.timeline_entries.is_empty() {
        transaction
            .execute(
                "INSERT INTO timeline (conversation, seq, entry_index, partition, entry)
                 SELECT c, s, i, $1, e
                 FROM unnest($2::bytea[], $3::bigint[], $4::bigint[], $5::bytea[]) AS t(c, s, i, e)
                 ON CONFLICT (conversation, seq, entry_index) DO UPDATE SET entry = excluded.entry",
                &[
                    &partition,
                    &rows.timeline_conversations,
                    &rows.timeline_seqs,
                    &rows.timeline_indexes,
                    &rows.timeline_entries,
                ],
            )
            .await
            .map_err(write_error)?;
    }
    if !rows.outbox_ids.is_empty() {
        transaction
            .execute(
                "INSERT INTO outbox (partition, id, entry)
                 SELECT $1, * FROM unnest($2::text[], $3::bytea[])
                 ON CONFLICT (partition, id) DO UPDATE SET entry = excluded.entry",
                &[&partition, &rows.outbox_ids, &rows.outbox_entries],
            )
            .await
            .map_err(write_error)?;
    }
    if !batch.sent.is_empty() {
        transaction
            .execute(
                "DELETE FROM outbox WHERE partition = $1 AND id = ANY($2)",
                &[&partition, &batch.sent],
            )
            .await
            .map_err(write_error)?;
    }
    for (id, body) in &rows.dead {
        transaction
            .execute(
                "DELETE FROM outbox WHERE partition = $1 AND id = $2",
                &[&partition, id],
            )
            .await
            .map_err(write_error)?;
        transaction
            .execute(
                "INSERT INTO dead_delivery (partition, id, body) VALUES ($1, $2, $3)
                 ON CONFLICT (partition, id) DO UPDATE SET body = excluded.body",
                &[&partition, id, body],
            )
            .await
            .map_err(write_error)?;
    }
    if !batch.resent.is_empty() {
        let moved = transaction
            .query(
                "DELETE FROM dead_delivery WHERE partition = $1 AND id = ANY($2) RETURNING body",
                &[&partition, &batch.resent],
            )
            .await
            .map_err(write_error)?;
        for row in moved {
            let buried: DeadDelivery = decode(row.get(0), "dead delivery")?;
            transaction
                .execute(
                    "INSERT INTO outbox (partition, id, entry) VALUES ($1, $2, $3)
                     ON CONFLICT (partition, id) DO UPDATE SET entry = excluded.entry",
                    &[&partition, &buried.entry.id, &encode(&buried.entry)?],
                )
                .await
                .map_err(write_error)?;
        }
    }
    Ok(())
}

/// Lets go of the stream's events beyond the newest [`STREAM_WINDOW`], keeping the newest one
/// let go as the floor.
async fn trim_window(
    transaction: &tokio_postgres::Transaction<'_>,
    partition: i32,
) -> Result<(), StoreError> {
    transaction
        .execute(
            "WITH gone AS (
                 DELETE FROM stream WHERE partition = $1 AND (public, silent, entry_index) IN (
                     SELECT public, silent, entry_index FROM stream WHERE partition = $1
                     ORDER BY public DESC, silent DESC, entry_index DESC OFFSET $2)
                 RETURNING public, silent, entry_index)
             INSERT INTO stream_floor (partition, public, silent, entry_index)
             SELECT $1, public, silent, entry_index FROM gone
             ORDER BY public DESC, silent DESC, entry_index DESC LIMIT 1
             ON CONFLICT (partition) DO UPDATE SET public = excluded.public,
                 silent = excluded.silent, entry_index = excluded.entry_index",
            &[&partition, &(STREAM_WINDOW as i64)],
        )
        .await
        .map_err(write_error)?;
    Ok(())
}

/// The partition's log records after `seq`, in order.
async fn log_after(
    transaction: &tokio_postgres::Transaction<'_>,
    partition: i32,
    seq: i64,
) -> Result<Vec<Record>, StoreError> {
    transaction
        .query(
            "SELECT record FROM log WHERE partition = $1 AND seq > $2 ORDER BY seq",
            &[&partition, &seq],
        )
        .await
        .map_err(read_error)?
        .iter()
        .map(|row| decode::<Record>(row.get(0), "log record"))
        .collect()
}

fn stream_id(public: i64, silent: i64, index: i64) -> StreamId {
    StreamId {
        position: Position {
            public: public as u64,
            silent: silent as u32,
        },
        index: index as u32,
    }
}

impl Store for PostgresStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty()
            && batch.sent.is_empty()
            && batch.dead.is_empty()
            && batch.stream.is_empty()
        {
            return Ok(());
        }
        let rows = Rows::of(batch)?;
        let trim = self
            .untrimmed
            .load(Ordering::Relaxed)
            .saturating_add(rows.stream_events.len())
            >= TRIM_EVERY;
        self.writer.run(async |client| {
            let transaction = fenced(client, self.partition, self.epoch).await?;
            write_rows(&transaction, self.partition(), &rows, batch).await?;
            if trim {
                trim_window(&transaction, self.partition()).await?;
            }
            transaction.commit().await.map_err(write_error)
        })?;
        match trim {
            true => self.untrimmed.store(0, Ordering::Relaxed),
            false => {
                self.untrimmed
                    .fetch_add(rows.stream_events.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.reader.run(async |client| {
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(read_error)
        })
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        let partition = self.partition();
        self.read(async |transaction| {
            let snapshot = match transaction
                .query_opt(
                    "SELECT body FROM snapshot WHERE partition = $1",
                    &[&partition],
                )
                .await
                .map_err(read_error)?
            {
                Some(row) => Some(decode::<Snapshot>(row.get(0), "snapshot")?),
                None => None,
            };
            let after = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_seq) as i64;
            let records = log_after(transaction, partition, after).await?;
            // Newest first, one more than the window: rows beyond it wait for a trim, and the
            // newest of them is then the floor.
            let rows = transaction
                .query(
                    "SELECT public, silent, entry_index, event FROM stream WHERE partition = $1
                     ORDER BY public DESC, silent DESC, entry_index DESC LIMIT $2",
                    &[&partition, &(STREAM_WINDOW as i64 + 1)],
                )
                .await
                .map_err(read_error)?;
            let mut floor = None;
            let mut events = Vec::with_capacity(rows.len());
            for (position, row) in rows.iter().enumerate() {
                if position == STREAM_WINDOW {
                    floor = Some(stream_id(row.get(0), row.get(1), row.get(2)));
                    break;
                }
                events.push(decode::<StoredEvent>(row.get(3), "stream event")?);
            }
            events.reverse();
            if floor.is_none() {
                floor = transaction
                    .query_opt(
                        "SELECT public, silent, entry_index FROM stream_floor WHERE partition = $1",
                        &[&partition],
                    )
                    .await
                    .map_err(read_error)?
                    .map(|row| stream_id(row.get(0), row.get(1), row.get(2)));
            }
            Ok(Recovery {
                snapshot,
                records,
                window: StoredWindow { floor, events },
            })
        })
    }

    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let body = encode(snapshot)?;
        let last_seq = snapshot.last_seq as i64;
        let partition = self.partition();
        self.writer.run(async |client| {
            let transaction = fenced(client, self.partition, self.epoch).await?;
            // Never back to an older snapshot (a slow snapshot task finishing late).
            transaction
                .execute(
                    "INSERT INTO snapshot (partition, last_seq, body) VALUES ($1, $2, $3)
                     ON CONFLICT (partition) DO UPDATE SET last_seq = excluded.last_seq,
                         body = excluded.body
                     WHERE snapshot.last_seq < excluded.last_seq",
                    &[&partition, &last_seq, &body],
                )
                .await
                .map_err(write_error)?;
            transaction
                .execute(
                    "DELETE FROM log WHERE partition = $1 AND seq <= $2",
                    &[&partition, &last_seq],
                )
                .await
                .map_err(write_error)?;
            transaction.commit().await.map_err(write_error)
        })
    }

    fn mark_sent(&self, ids: &[String]) -> Result<(), StoreError> {
        self.commit(&Batch {
            sent: ids.to_vec(),
            ..Batch::default()
        })
    }

    fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let partition = self.partition();
        let after = after.unwrap_or("");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(async |transaction| {
            transaction
                .query(
                    "SELECT entry FROM outbox WHERE partition = $1 AND id > $2 ORDER BY id LIMIT $3",
                    &[&partition, &after, &limit],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| decode(row.get(0), "outbox entry"))
                .collect()
        })
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        let partition = self.partition();
        self.read(async |transaction| {
            let count: i64 = transaction
                .query_one(
                    "SELECT count(*) FROM outbox WHERE partition = $1",
                    &[&partition],
                )
                .await
                .map_err(read_error)?
                .get(0);
            Ok(count as u64)
        })
    }

    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError> {
        let partition = self.partition();
        self.read(async |transaction| {
            Ok(transaction
                .query_opt(
                    "SELECT id FROM outbox WHERE partition = $1 ORDER BY id DESC LIMIT 1",
                    &[&partition],
                )
                .await
                .map_err(read_error)?
                .map(|row| row.get(0)))
        })
    }

    fn timeline(&self, conversation: ConversationId) -> Result<Vec<TimelineEntry>, StoreError> {
        let key = conversation_key(conversation);
        self.read(async |transaction| {
            transaction
                .query(
                    "SELECT entry FROM timeline WHERE conversation = $1 ORDER BY seq, entry_index",
                    &[&key],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| decode(row.get(0), "timeline entry"))
                .collect()
        })
    }

    fn bury(&self, dead: DeadDelivery) -> Result<(), StoreError> {
        self.commit(&Batch {
            dead: vec![dead],
            ..Batch::default()
        })
    }

    fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, StoreError> {
        let partition = self.partition();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(async |transaction| {
            transaction
                .query(
                    "SELECT body FROM dead_delivery WHERE partition = $1 ORDER BY id LIMIT $2",
                    &[&partition, &limit],
                )
                .await
                .map_err(read_error)?
                .iter()
                .map(|row| decode(row.get(0), "dead delivery"))
                .collect()
        })
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
