//! Last step of the flow with a broker: committed outbox entries go from the pipeline to the
//! publisher in memory ([`OutboxFeed`]), out to RabbitMQ through a window of publications
//! awaiting their confirms ([`publish`]), and the confirmed ones leave the store with the next
//! commit.
//!
//! The store stays the only source of truth. The feed is a shortcut that saves reading back
//! and decoding what was just written: when the publisher (re)starts, or when the feed
//! overflowed while the broker was away, it reads the unsent entries from the store first and
//! then skips what the feed repeats. Outbox ids sort in commit order and the pipeline feeds
//! entries in commit order, so "repeats" is simply "an id not after the last one published".

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::metrics::{Metrics, family};
use crate::store::{OutboxEntry, Store};
use crate::transport::TransportError;
use crate::transport::amqp::{AmqpTransport, Confirm};

/// Entries the feed holds before it gives up and lets the publisher read the store instead
/// (the broker is away, or slower than the daemon for a long while). Bounds its memory.
const FEED_CAPACITY: usize = 65_536;
/// Publications awaiting their confirms at once: enough to keep the broker busy between two
/// confirm frames, bounded so that a reconnect re-publishes a bounded amount.
const PUBLISH_WINDOW: usize = 1_024;
/// Publications handed to the connection at once. `futures_util`'s `join_all` polls up to 30
/// futures in order (beyond that it schedules them), and order matters: see `publish`.
const PUBLISH_GROUP: usize = 30;
/// Entries read from the store at once while catching up.
const STORE_PAGE: usize = 256;
/// Confirmed ids normally leave the store with the next commit; when no commit comes for this
/// long (an idle daemon), the publisher removes them itself.
const IDLE_FLUSH: Duration = Duration::from_millis(100);
/// How long a page of publications may wait for the broker's confirms. A broker that takes
/// longer has stopped confirming on this channel: the connection is dropped and made again, and
/// the unconfirmed entries go out again with their ids.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a refused (nacked) entry waits before it is published again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Committed outbox entries on their way to the publisher, and confirmed ids on their way back
/// to the store. Shared by the pipeline (which feeds it after each commit and takes the
/// confirmed ids into the next) and the publisher.
#[derive(Debug)]
pub struct OutboxFeed {
    state: Mutex<FeedState>,
    ready: Notify,
    capacity: usize,
}

impl Default for OutboxFeed {
    fn default() -> Self {
        Self::with_capacity(FEED_CAPACITY)
    }
}

#[derive(Debug, Default)]
struct FeedState {
    entries: VecDeque<OutboxEntry>,
    /// Entries were dropped for lack of room: the publisher must catch up from the store.
    overflowed: bool,
    /// Confirmed by the broker, still in the store.
    confirmed: Vec<String>,
}

/// What the publisher finds in the feed.
enum Taken {
    Entries(Vec<OutboxEntry>),
    /// Some entries were dropped: read the store.
    Overflowed,
}

impl OutboxFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// A feed that holds at most `capacity` entries before it overflows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Hands over what a durable commit wrote to the outbox, in commit order.
    pub fn committed(&self, entries: Vec<OutboxEntry>) {
        if entries.is_empty() {
            return;
        }
        {
            let mut state = self.lock();
            if state.overflowed || state.entries.len() + entries.len() > self.capacity {
                state.entries.clear();
                state.overflowed = true;
            } else {
                state.entries.extend(entries);
            }
        }
        self.ready.notify_one();
    }

    /// Confirmed ids for the next commit to remove from the store.
    pub fn take_confirmed(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().confirmed)
    }

    /// Confirmed entries still in the store (they count as sent).
    pub fn confirmed_len(&self) -> usize {
        self.lock().confirmed.len()
    }

    fn confirm(&self, id: String) {
        self.lock().confirmed.push(id);
    }

    fn take(&self, limit: usize) -> Taken {
        let mut state = self.lock();
        if state.overflowed {
            state.entries.clear();
            state.overflowed = false;
            return Taken::Overflowed;
        }
        let n = limit.min(state.entries.len());
        Taken::Entries(state.entries.drain(..n).collect())
    }

    /// Everything the feed holds, for the embedded delivery worker; `None` when entries were
    /// dropped for lack of room (read the store).
    pub fn take_all(&self) -> Option<Vec<OutboxEntry>> {
        match self.take(usize::MAX) {
            Taken::Entries(entries) => Some(entries),
            Taken::Overflowed => None,
        }
    }

    /// Until something is handed over (a permit is left if it already was).
    pub async fn handed_over(&self) {
        self.ready.notified().await;
    }

    /// Forgets what the feed holds: the publisher is about to read the store, which has it all.
    pub fn restart(&self) {
        let mut state = self.lock();
        state.entries.clear();
        state.overflowed = false;
    }
}

/// Why [`publish`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishEnd {
    /// Stopped, with nothing left to publish (or the broker gone at the stop).
    Stopped,
    /// The channel failed, or the broker stopped confirming within `confirm_timeout`: make the
    /// connection again.
    Reconnect,
}

/// Where the next entries come from.
enum Source {
    /// Reading unsent entries from the store after `through`.
    Store(VecDeque<OutboxEntry>),
    /// Taking entries from the feed.
    Feed(VecDeque<OutboxEntry>),
}

/// One connection's publisher: catches up from the store, then publishes what the feed brings,
/// keeping up to [`PUBLISH_WINDOW`] publications awaiting confirms. Confirmed ids go back
/// through the feed; refused ones are published again after [`RETRY_AFTER`]. On `stop` it
/// finishes what is committed and confirmed, then returns.
pub async fn publish(
    store: &dyn Store,
    metrics: &Metrics,
    feed: &OutboxFeed,
    transport: &AmqpTransport,
    stop: &CancellationToken,
    confirm_timeout: Duration,
) -> PublishEnd {
    // Confirmed on an earlier connection: remove them now, or the store read below would
    // publish them again.
    flush_confirmed(store, feed);
    feed.restart();
    // The newest id published from the store or the feed on this connection.
    let mut through: Option<String> = None;
    let mut source = Source::Store(VecDeque::new());
    let mut in_flight: VecDeque<(OutboxEntry, Instant)> = VecDeque::new();
    let mut confirms: FuturesOrdered<Confirm> = FuturesOrdered::new();
    let mut retries: VecDeque<(Instant, OutboxEntry)> = VecDeque::new();
    let mut idle_since: Option<Instant> = None;
    loop {
        // Fill the window, a few publications at a time: each hands its frames to the
        // connection's I/O thread and waits until they are written, so handing over a group
        // at once costs one such round trip instead of one per entry.
        while in_flight.len() < PUBLISH_WINDOW {
            let room = (PUBLISH_WINDOW - in_flight.len()).min(PUBLISH_GROUP);
            let group: Vec<OutboxEntry> = std::iter::from_fn(|| {
                next_entry(store, feed, &mut source, &mut retries, &mut through)
            })
            .take(room)
            .collect();
            if group.is_empty() {
                break;
            }
            // `join_all` polls a group this small in order, so the frames (and the delivery
            // tags the confirms refer to) follow the outbox order. A connection the broker
            // blocked (memory or disk alarm) does not take them: bounded like a confirm.
            let Ok(started) = tokio::time::timeout(
                confirm_timeout,
                futures_util::future::join_all(
                    group.iter().map(|entry| transport.start_publish(entry)),
                ),
            )
            .await
            else {
                tracing::warn!(timeout = ?confirm_timeout, "the broker does not take publications; reconnecting");
                return PublishEnd::Reconnect;
            };
            let published_at = Instant::now();
            for (entry, confirm) in group.into_iter().zip(started) {
                match confirm {
                    Ok(confirm) => {
                        confirms.push_back(confirm);
                        in_flight.push_back((entry, published_at));
                    }
                    // The channel is gone: what is unconfirmed stays in the store for the next
                    // connection.
                    Err(error) => {
                        tracing::warn!(error = %error, "publishing failed; reconnecting");
                        return PublishEnd::Reconnect;
                    }
                }
            }
        }
        if let Some((_, published_at)) = in_flight.front() {
            idle_since = None;
            let deadline = *published_at + confirm_timeout;
            tokio::select! {
                biased;
                Some(result) = confirms.next() => {
                    // The broker confirms in bursts (one frame may confirm many): take every
                    // confirm already in before going round, so a burst costs one turn of this
                    // loop (its timer and wakeups) instead of one per publication.
                    let mut next = Some(result);
                    while let Some(result) = next.take() {
                        let Some((entry, published_at)) = in_flight.pop_front() else { break };
                        match result {
                            Ok(()) => {
                                observe_confirmed(metrics, &entry, published_at);
                                feed.confirm(entry.id);
                            }
                            Err(TransportError::Rejected(reason)) => {
                                tracing::warn!(reason = %reason, id = %entry.id, "outbox publication refused; retrying");
                                retries.push_back((Instant::now() + RETRY_AFTER, entry));
                            }
                            // The channel or connection failed: every confirm still awaited
                            // fails with it. The entries stay in the store for the next
                            // connection.
                            Err(error) => {
                                tracing::warn!(error = %error, "publications lost with the channel; reconnecting");
                                return PublishEnd::Reconnect;
                            }
                        }
                        next = confirms.next().now_or_never().flatten();
                    }
                }
                () = feed.ready.notified(), if in_flight.len() < PUBLISH_WINDOW => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(entries = in_flight.len(), timeout = ?confirm_timeout, "no confirms from the broker; reconnecting");
                    return PublishEnd::Reconnect;
                }
            }
            continue;
        }
        // Nothing in flight and nothing to publish.
        let caught_up = matches!(&source, Source::Feed(buffered) if buffered.is_empty());
        if stop.is_cancelled() && caught_up {
            flush_confirmed(store, feed);
            return PublishEnd::Stopped;
        }
        let idle = *idle_since.get_or_insert_with(Instant::now);
        // A timer only when there is something to do at its end: remove confirmed ids no
        // commit took along, read the store again after a failed read, or publish a refused
        // entry again. Otherwise only new entries (or the stop) wake the publisher.
        let flush_at = (feed.confirmed_len() > 0 || !caught_up).then_some(idle + IDLE_FLUSH);
        let wake = retries
            .front()
            .map(|(due, _)| *due)
            .into_iter()
            .chain(flush_at)
            .min();
        tokio::select! {
            () = feed.ready.notified() => {}
            () = stop.cancelled(), if !stop.is_cancelled() => {}
            () = tokio::time::sleep_until(wake.unwrap_or(idle)), if wake.is_some() => {
                if flush_at.is_some_and(|at| at <= Instant::now()) {
                    flush_confirmed(store, feed);
                    // The next flush is an idle period from now: a deadline left in the past
                    // would make this loop spin (it once burnt a core on an idle daemon).
                    idle_since = None;
                }
            }
        }
    }
}

/// The next entry to publish: a refused one whose wait is over, else the store's while
/// catching up, else the feed's (skipping what the store already gave).
fn next_entry(
    store: &dyn Store,
    feed: &OutboxFeed,
    source: &mut Source,
    retries: &mut VecDeque<(Instant, OutboxEntry)>,
    through: &mut Option<String>,
) -> Option<OutboxEntry> {
    if retries
        .front()
        .is_some_and(|(due, _)| *due <= Instant::now())
    {
        return retries.pop_front().map(|(_, entry)| entry);
    }
    loop {
        match source {
            Source::Store(page) => {
                if page.is_empty() {
                    let read = tokio::task::block_in_place(|| {
                        store.outbox_after(through.as_deref(), STORE_PAGE)
                    });
                    match read {
                        Ok(entries) if entries.is_empty() => {
                            *source = Source::Feed(VecDeque::new());
                            continue;
                        }
                        Ok(entries) => page.extend(entries),
                        Err(error) => {
                            // Try again on the next round; nothing is lost.
                            tracing::error!(error = %error, "cannot read the outbox");
                            return None;
                        }
                    }
                }
                let entry = page.pop_front()?;
                *through = Some(entry.id.clone());
                return Some(entry);
            }
            Source::Feed(buffered) => {
                if buffered.is_empty() {
                    match feed.take(PUBLISH_WINDOW) {
                        Taken::Overflowed => {
                            *source = Source::Store(VecDeque::new());
                            continue;
                        }
                        Taken::Entries(entries) if entries.is_empty() => return None,
                        Taken::Entries(entries) => buffered.extend(entries),
                    }
                }
                let entry = buffered.pop_front()?;
                if through
                    .as_deref()
                    .is_some_and(|last| entry.id.as_str() <= last)
                {
                    continue;
                }
                *through = Some(entry.id.clone());
                return Some(entry);
            }
        }
    }
}

/// Where the time of a confirmed publication went: the broker's part, and the whole way from
/// the input that caused it (which also counts the commit and any backlog, so an operator can
/// tell a slow broker from a daemon falling behind).
fn observe_confirmed(metrics: &Metrics, entry: &OutboxEntry, published_at: Instant) {
    metrics.observe_duration(family::OUTBOX_CONFIRM_SECONDS, &[], published_at.elapsed());
    let since_input = now().0.saturating_sub(entry.time.0).max(0);
    metrics.observe(
        family::OUTBOUND_DELAY_SECONDS,
        &[],
        since_input as f64 / 1000.0,
    );
}

/// Removes confirmed entries from the store when no commit is coming to take them along.
fn flush_confirmed(store: &dyn Store, feed: &OutboxFeed) {
    let confirmed = feed.take_confirmed();
    if confirmed.is_empty() {
        return;
    }
    if let Err(error) = tokio::task::block_in_place(|| store.mark_sent(&confirmed)) {
        // They go out again after a restart, with the same ids: harmless for consumers that
        // deduplicate, and nothing is lost.
        tracing::error!(error = %error, "cannot mark outbox entries sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Millis;
    use crate::store::{Batch, RedbStore};

    fn notification_id(public: u64) -> crate::engine::NotificationId {
        crate::engine::NotificationId {
            position: crate::engine::Position { public, silent: 0 },
            index: 0,
        }
    }

    fn entry(seq: u64) -> OutboxEntry {
        OutboxEntry {
            id: crate::store::outbox_id(&notification_id(seq), 0),
            routing_key: format!("conversation.{seq}"),
            event_type: "dev.switchboard.opened".to_owned(),
            subject: None,
            time: Millis(0),
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            body: b"{}".to_vec(),
        }
    }

    /// Commits `seqs` to the store and then hands them to the feed, as the pipeline does.
    fn commit(store: &RedbStore, feed: &OutboxFeed, seqs: std::ops::Range<u64>) {
        let entries: Vec<OutboxEntry> = seqs.map(entry).collect();
        store
            .commit(&Batch {
                records: Vec::new(),
                outbox: entries.clone(),
                sent: feed.take_confirmed(),
                ..Batch::default()
            })
            .unwrap();
        feed.committed(entries);
    }

    fn drain(
        store: &RedbStore,
        feed: &OutboxFeed,
        source: &mut Source,
        through: &mut Option<String>,
    ) -> Vec<String> {
        let mut retries = VecDeque::new();
        std::iter::from_fn(|| next_entry(store, feed, source, &mut retries, through))
            .map(|entry| entry.id)
            .collect()
    }

    fn ids(seqs: std::ops::Range<u64>) -> Vec<String> {
        seqs.map(|seq| entry(seq).id).collect()
    }

    // Multi-threaded: the publisher reads the store with `block_in_place`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn each_committed_entry_comes_out_once_in_order_across_store_catch_up_and_overflow() {
        let dir = std::env::temp_dir().join(format!("switchboard-feed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = RedbStore::open(&dir).unwrap();
        let feed = OutboxFeed::with_capacity(8);
        // Committed before the publisher started: the feed repeats what the store gives.
        commit(&store, &feed, 1..6);
        let mut source = Source::Store(VecDeque::new());
        let mut through = None;
        assert_eq!(drain(&store, &feed, &mut source, &mut through), ids(1..6));
        assert!(matches!(source, Source::Feed(_)), "caught up: now the feed");

        // Live: straight from the feed.
        commit(&store, &feed, 6..9);
        assert_eq!(drain(&store, &feed, &mut source, &mut through), ids(6..9));
        for id in ids(1..9) {
            feed.confirm(id);
        }

        // The broker away for long: the feed overflows and the store fills the gap.
        commit(&store, &feed, 9..14);
        commit(&store, &feed, 14..20);
        assert_eq!(
            feed.confirmed_len(),
            0,
            "the confirmed ids left with the commit"
        );
        assert_eq!(drain(&store, &feed, &mut source, &mut through), ids(9..20));
        commit(&store, &feed, 20..22);
        assert_eq!(drain(&store, &feed, &mut source, &mut through), ids(20..22));
        assert_eq!(
            store.outbox_len().unwrap(),
            21 - 8,
            "unconfirmed entries stay in the store"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
