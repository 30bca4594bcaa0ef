//! Paging of the `/v1` lists (README, "What frontends need"): a walk through a list's pages is
//! pinned to one snapshot. The first page (no `cursor`) computes the whole filtered, sorted list
//! once and keeps it here for [`SNAPSHOT_TTL`]; `next_cursor` names that snapshot and an offset, so
//! every later page comes from the same rows: none skipped or repeated while the data moves, and
//! every page carries the snapshot's `stream_id`. Cursors are unguessable and bound to the caller
//! that started the walk; an expired or foreign cursor is a 410 `cursor-expired` (start again
//! without one).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::problem::Problem;

/// How long a walk's snapshot is kept after its first page.
pub(super) const SNAPSHOT_TTL: Duration = Duration::from_secs(300);
/// How many snapshots are kept at once (the oldest go first): a bound on memory whatever
/// callers do.
const MAX_SNAPSHOTS: usize = 64;

/// One page of a list, and where the walk goes on.
pub(super) struct Page<T> {
    pub rows: Vec<T>,
    pub total: usize,
    pub next_cursor: Option<String>,
    /// What the caller passed when the walk began (the stream position, the server time).
    pub pinned: Pinned,
}

/// What a snapshot was taken at: the same on every page of one walk.
#[derive(Clone, Debug, Default)]
pub(super) struct Pinned {
    pub stream_id: Option<String>,
    pub server_time: String,
}

struct Snapshot {
    key: String,
    owner: Box<str>,
    taken: Instant,
    rows: Arc<dyn Any + Send + Sync>,
    pinned: Pinned,
}

/// The snapshots of walks in progress.
pub(super) struct Snapshots {
    taken: Mutex<VecDeque<Snapshot>>,
    tokens: super::tokens::TokenSource,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

impl Default for Snapshots {
    fn default() -> Self {
        Self {
            taken: Mutex::new(VecDeque::new()),
            tokens: super::tokens::TokenSource::new(),
        }
    }
}

fn slice<T: Clone>(key: &str, rows: &[T], offset: usize, limit: usize, pinned: Pinned) -> Page<T> {
    let end = offset.saturating_add(limit).min(rows.len());
    Page {
        rows: rows.get(offset..end).unwrap_or_default().to_vec(),
        total: rows.len(),
        next_cursor: (end < rows.len()).then(|| format!("{key}.{end}")),
        pinned,
    }
}

/// A cursor as the client sent it: the snapshot's key and the offset of the next row.
fn parse_cursor(cursor: &str) -> Option<(&str, usize)> {
    let (key, offset) = cursor.rsplit_once('.')?;
    Some((key, offset.parse().ok()?))
}

fn expired() -> Problem {
    Problem::new(
        StatusCode::GONE,
        "cursor-expired",
        "this cursor is unknown or its snapshot has expired; start again without a cursor",
    )
}

impl Snapshots {
    /// The first page of a new walk over `rows` (the whole list, as pinned at `pinned`).
    pub(super) fn begin<T: Clone + Send + Sync + 'static>(
        &self,
        owner: &str,
        rows: Vec<T>,
        pinned: Pinned,
        limit: usize,
    ) -> Page<T> {
        let rows = Arc::new(rows);
        // A list that fits one page needs no snapshot kept.
        let key = if rows.len() > limit {
            self.keep(owner, rows.clone(), pinned.clone())
        } else {
            String::new()
        };
        slice(&key, &rows, 0, limit, pinned)
    }

    /// The page at `cursor` of a walk `owner` began.
    pub(super) fn resume<T: Clone + Send + Sync + 'static>(
        &self,
        owner: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<Page<T>, Problem> {
        let (key, offset) = parse_cursor(cursor).ok_or_else(expired)?;
        let (rows, pinned) = self.find(key, owner).ok_or_else(expired)?;
        let rows = rows.downcast::<Vec<T>>().map_err(|_| expired())?;
        Ok(slice(key, &rows, offset, limit, pinned))
    }

    fn keep(&self, owner: &str, rows: Arc<dyn Any + Send + Sync>, pinned: Pinned) -> String {
        let key = self.tokens.next();
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        taken.retain(|snapshot| snapshot.taken.elapsed() < SNAPSHOT_TTL);
        while taken.len() >= MAX_SNAPSHOTS {
            taken.pop_front();
        }
        taken.push_back(Snapshot {
            key: key.clone(),
            owner: owner.into(),
            taken: Instant::now(),
            rows,
            pinned,
        });
        key
    }

    fn find(&self, key: &str, owner: &str) -> Option<(Arc<dyn Any + Send + Sync>, Pinned)> {
        let taken = self
            .taken
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        taken
            .iter()
            .find(|snapshot| {
                snapshot.key == key
                    && &*snapshot.owner == owner
                    && snapshot.taken.elapsed() < SNAPSHOT_TTL
            })
            .map(|snapshot| (snapshot.rows.clone(), snapshot.pinned.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(snapshots: &Snapshots, owner: &str, data: &[u32], limit: usize) -> Vec<u32> {
        let first = snapshots.begin(owner, data.to_vec(), Pinned::default(), limit);
        let mut seen = first.rows;
        let mut cursor = first.next_cursor;
        while let Some(next) = cursor {
            let page = snapshots.resume::<u32>(owner, &next, limit).unwrap();
            seen.extend(page.rows);
            cursor = page.next_cursor;
        }
        seen
    }

    #[test]
    fn a_walk_sees_every_row_of_its_snapshot_once() {
        let snapshots = Snapshots::default();
        let data: Vec<u32> = (0..10).collect();
        assert_eq!(walk(&snapshots, "sup", &data, 3), data);
        assert_eq!(walk(&snapshots, "sup", &data, 10), data);
        assert_eq!(walk(&snapshots, "sup", &[], 3), Vec::<u32>::new());
    }

    #[test]
    fn a_cursor_is_the_callers_own_and_unguessable() {
        let snapshots = Snapshots::default();
        let first = snapshots.begin("sup", vec![1_u32, 2], Pinned::default(), 1);
        let cursor = first.next_cursor.unwrap();
        let foreign = snapshots.resume::<u32>("other", &cursor, 1);
        assert_eq!(
            foreign.err().map(|p| p.code().to_owned()).as_deref(),
            Some("cursor-expired")
        );
        assert!(snapshots.resume::<u32>("sup", "0.1", 1).is_err());
        assert!(snapshots.resume::<String>("sup", &cursor, 1).is_err());
        assert_eq!(
            snapshots.resume::<u32>("sup", &cursor, 1).unwrap().rows,
            vec![2]
        );
        assert!(cursor.len() > 30, "{cursor}");
    }
}
