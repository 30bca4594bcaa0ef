//! Read side of the flow, live: after each durable commit the pipeline publishes what the
//! records changed (conversation summaries, timeline entries) to the [`StreamHub`], which keeps
//! a window of recent events for `Last-Event-ID` resumption and fans out to the admin API's
//! `GET /v1/stream` subscribers. Who may see an event is decided here, once, from the
//! event's audience and the caller's identity.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::engine::report::ConversationSummary;
use crate::engine::{
    Actor, AgentId, ConversationId, Position, Role, SupervisionMode, TeamId, TimelineEntry,
};

/// A stream event's place in its partition's log: the [`Position`] of the record that caused
/// it and its index among the record's events. Comparable and stable across restarts and
/// nodes (positions are durable), so a client's `Last-Event-ID` means the same thing after the
/// daemon restarted, or on another node of a cluster. What a client holds is a [`Cursor`]:
/// one such id per partition (a single daemon has one partition).
///
/// Written `public.silent.index`. Clients treat ids as opaque: they are not consecutive for
/// any one client, and the silent counter never moves for an agent (it only grows on records
/// an agent cannot see, and its events are not for agents), so an agent's ids are the same
/// whether or not a supervisor monitored silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub position: Position,
    pub index: u32,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.position.public, self.position.silent, self.index
        )
    }
}

impl StreamId {
    /// Parses `public.silent.index`, or `seq.index` as versions before record positions wrote
    /// it (their records stand at their log position, so it means the same place).
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split('.').collect();
        let (public, silent, index) = match parts[..] {
            [public, index] => (public, "0", index),
            [public, silent, index] => (public, silent, index),
            _ => return None,
        };
        Some(Self {
            position: Position {
                public: public.parse().ok()?,
                silent: silent.parse().ok()?,
            },
            index: index.parse().ok()?,
        })
    }
}

impl serde::Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a stream id")))
    }
}

impl StreamId {
    /// The id just after every event of the record at `position`: a read that reflects that
    /// record names it, and a stream resumed from it starts with the next record's events.
    pub fn after_record(position: Position) -> Self {
        Self {
            position,
            index: u32::MAX,
        }
    }

    /// The last id before this one: resuming from it misses nothing from here on.
    fn before(self) -> Self {
        match (self.index, self.position.silent, self.position.public) {
            (1.., _, _) => Self {
                index: self.index - 1,
                ..self
            },
            (0, 1.., public) => Self {
                position: Position {
                    public,
                    silent: self.position.silent - 1,
                },
                index: u32::MAX,
            },
            (0, 0, public) => Self {
                position: Position {
                    public: public.saturating_sub(1),
                    silent: u32::MAX,
                },
                index: u32::MAX,
            },
        }
    }
}

/// Where a reader of the stream stands: for each partition, the id of the last event it has
/// passed. Since ids are positions in each partition's durable log, a cursor means the same
/// place on every node of a cluster, whatever order a node interleaved the partitions in: a
/// stream resumed from it on any node replays, partition by partition, what came after.
///
/// Written as its ids: a single daemon's cursor is its one id (`public.silent.index`); with
/// several partitions each id is prefixed with its partition (`3:public.silent.index`) and the
/// ids are joined with commas, leaving out partitions the cursor has passed nothing of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(Vec<StreamId>);

impl Cursor {
    /// Just after the records at `positions` (one per partition).
    pub fn after(positions: impl IntoIterator<Item = Position>) -> Self {
        Self(positions.into_iter().map(StreamId::after_record).collect())
    }

    /// Parses a `Last-Event-ID` or a read's `stream_id` for a hub of `partitions`. An id
    /// without a partition prefix is partition 0's (a single daemon's, or an earlier
    /// version's); a partition the cursor leaves out stands before its first record. `None`
    /// when the text is not a cursor or names a partition this hub does not have.
    pub fn parse(text: &str, partitions: usize) -> Option<Self> {
        let mut cursor = Self::after(vec![Position::default(); partitions.max(1)]);
        for entry in text.trim().split(',') {
            let (partition, id) = match entry.split_once(':') {
                Some((partition, id)) => (partition.parse::<usize>().ok()?, id),
                None => (0, entry),
            };
            *cursor.0.get_mut(partition)? = StreamId::parse(id)?;
        }
        Some(cursor)
    }

    /// The id of `partition` (before its first record if the cursor has none).
    fn at(&self, partition: u32) -> StreamId {
        self.0
            .get(partition as usize)
            .copied()
            .unwrap_or(StreamId::after_record(Position::default()))
    }

    /// Moves past `event` (never back).
    pub fn pass(&mut self, event: &StreamEvent) {
        self.pass_id(event.partition, event.id);
    }

    fn pass_id(&mut self, partition: u32, id: StreamId) {
        if let Some(at) = self.0.get_mut(partition as usize) {
            *at = (*at).max(id);
        }
    }

    /// Whether `event` comes after this cursor.
    pub fn precedes(&self, event: &StreamEvent) -> bool {
        event.id > self.at(event.partition)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = &self.0[..] {
            return write!(f, "{only}");
        }
        let start = StreamId::after_record(Position::default());
        let mut written = 0;
        for (partition, id) in self.0.iter().enumerate() {
            if *id != start || (written == 0 && partition + 1 == self.0.len()) {
                let separator = if written == 0 { "" } else { "," };
                write!(f, "{separator}{partition}:{id}")?;
                written += 1;
            }
        }
        Ok(())
    }
}

/// How many events the hub keeps for `Last-Event-ID` resumption, in memory and in the store.
pub const STREAM_WINDOW: usize = 10_000;

/// Who may receive an event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "to", content = "users", rename_all = "kebab-case")]
pub enum StreamAudience {
    /// Supervisors of the conversation's team and admins (state, assignment and supervision
    /// changes). The conversation's agent sees it too when [`StreamEvent::agent`] names it
    /// (not when it would reveal silent monitoring).
    Supervisors,
    /// Live messages: the users taking part (supervisors with a seat, the agent, consultants).
    Participants(Vec<Box<str>>),
    /// Exactly these users (a whisper: the agent and the whisperer).
    Users(Vec<Box<str>>),
}

/// What an event carries; the admin API renders it in its wire types per subscriber.
#[derive(Clone, Debug)]
pub enum StreamPayload {
    /// The conversation's summary after a change.
    Conversation(ConversationSummary),
    /// One timeline entry.
    Timeline(TimelineEntry),
}

/// One event of the live stream, filtered per subscriber.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    /// The partition whose log holds the record (0 on a single daemon).
    pub partition: u32,
    pub id: StreamId,
    pub conversation: ConversationId,
    /// The team owning the conversation's queue.
    pub team: Option<TeamId>,
    pub audience: StreamAudience,
    pub payload: StreamPayload,
    /// The conversation's agent, when it may see this event (with silent monitors left out of
    /// a summary); `None` when the event would reveal silent monitoring to it.
    pub agent: Option<AgentId>,
}

/// A stream event as the store keeps it, so that the window survives a restart. A summary
/// is not kept: it is made again from the state when the window is read back (a client
/// catching up wants the conversation as it is, and the state has it), which keeps what each
/// commit writes small.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredEvent {
    pub id: StreamId,
    pub conversation: ConversationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<TeamId>,
    pub audience: StreamAudience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// The timeline entry; absent for a summary, and where `entry` names it instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineEntry>,
    /// How a store may keep the timeline entry without repeating it: the `seq` of the record
    /// whose timeline holds it, at the index `id.index` (a record's timeline events come first
    /// in its stream events, in the timeline's order). Filled back in when the store reads the
    /// event (`Store::recover` returns events whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<u64>,
}

/// The stored window read back: its events, oldest first, and the id of the newest event the
/// store let go of (none if it never had to).
#[derive(Clone, Debug, Default)]
pub struct StoredWindow {
    pub floor: Option<StreamId>,
    pub events: Vec<StoredEvent>,
}

impl StreamEvent {
    /// What the store keeps of it.
    pub fn stored(&self) -> StoredEvent {
        StoredEvent {
            id: self.id,
            conversation: self.conversation,
            team: self.team.clone(),
            audience: self.audience.clone(),
            agent: self.agent.clone(),
            timeline: match &self.payload {
                StreamPayload::Timeline(entry) => Some(entry.clone()),
                StreamPayload::Conversation(_) => None,
            },
            entry: None,
        }
    }

    /// The SSE event name: `conversation` or `timeline`.
    pub fn kind(&self) -> &'static str {
        match self.payload {
            StreamPayload::Conversation(_) => "conversation",
            StreamPayload::Timeline(_) => "timeline",
        }
    }

    /// What `actor` may receive of this event, or `None` when it is not for it.
    pub fn view_for(&self, actor: &Actor) -> Option<StreamPayload> {
        let me = actor.id.as_str();
        match &self.audience {
            StreamAudience::Supervisors => {
                let supervises = actor.is_admin()
                    || (actor.has(Role::Supervisor)
                        && self.team.as_ref().is_some_and(|team| actor.sees_team(team)));
                if supervises {
                    return Some(self.payload.clone());
                }
                if self.agent.as_ref().is_none_or(|agent| agent.as_str() != me) {
                    return None;
                }
                // The agent's view: silent monitoring stays silent.
                match &self.payload {
                    StreamPayload::Conversation(summary) => {
                        let mut summary = summary.clone();
                        summary
                            .supervisors
                            .retain(|seat| seat.mode != SupervisionMode::Monitor);
                        Some(StreamPayload::Conversation(summary))
                    }
                    StreamPayload::Timeline(entry) => Some(StreamPayload::Timeline(entry.clone())),
                }
            }
            StreamAudience::Participants(users) | StreamAudience::Users(users) => users
                .iter()
                .any(|user| &**user == me)
                .then(|| self.payload.clone()),
        }
    }
}

/// How a subscription starts.
#[derive(Debug)]
pub struct Subscription {
    /// Events after the client's `Last-Event-ID` that are still in the window, in the hub's
    /// order.
    pub replay: Vec<Arc<StreamEvent>>,
    /// The client's `Last-Event-ID` is older than the window: some events are gone and the
    /// client should reload its view.
    pub gap: bool,
    pub live: broadcast::Receiver<Arc<StreamEvent>>,
    /// Where the subscriber starts: its `Last-Event-ID`, or the hub's head when it gave none.
    pub cursor: Cursor,
}

/// Fan-out of committed changes with a window of recent events.
#[derive(Debug)]
pub struct StreamHub {
    sender: broadcast::Sender<Arc<StreamEvent>>,
    recent: Mutex<Window>,
    window: usize,
}

#[derive(Debug)]
struct Window {
    events: VecDeque<Arc<StreamEvent>>,
    /// Per partition, events at or before this id may be gone (evicted from the window,
    /// committed before this process started, or skipped by a follower that restarted from
    /// a snapshot): a client resuming from before it has a gap.
    floor: Cursor,
    /// Per partition, just after the last record whose events were published: what a read
    /// reflects (see [`StreamHub::head`]).
    head: Cursor,
}

impl StreamHub {
    /// A single daemon's hub, which keeps the last `window` events for resumption; `start` is
    /// the position of the last record when the daemon started (events of earlier records
    /// cannot be replayed).
    pub fn new(window: usize, start: Position) -> Self {
        Self::partitioned(window, vec![start])
    }

    /// The hub of a cluster node, which publishes what it follows of every partition: `starts`
    /// are each partition's last position when it started following.
    pub fn partitioned(window: usize, starts: Vec<Position>) -> Self {
        let (sender, _) = broadcast::channel(window.clamp(16, 65_536));
        let start = Cursor::after(starts);
        Self {
            sender,
            recent: Mutex::new(Window {
                events: VecDeque::with_capacity(window.min(65_536)),
                floor: start.clone(),
                head: start,
            }),
            window: window.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// How many partitions the hub's cursors have.
    pub fn partitions(&self) -> usize {
        self.lock().head.0.len()
    }

    /// Fills the window with the events a previous run of the daemon stored (oldest first,
    /// made whole by `revive`, which may drop one whose conversation is gone), so that a client
    /// that resumes after a restart misses nothing the window held. Events before the stored
    /// window's floor (or before its first event) may be gone: a client resuming from there
    /// gets `gap`.
    pub fn restore(
        &self,
        stored: StoredWindow,
        mut revive: impl FnMut(StoredEvent) -> Option<StreamEvent>,
    ) {
        let mut recent = self.lock();
        let Some(first) = stored.events.first().map(|event| event.id) else {
            return;
        };
        recent.floor = Cursor(vec![stored.floor.unwrap_or(first.before())]);
        let keep = stored.events.len().saturating_sub(self.window);
        recent.events = stored
            .events
            .into_iter()
            .skip(keep)
            .filter_map(&mut revive)
            .map(Arc::new)
            .collect();
    }

    /// Publishes the events of committed records, in order; `passed` names, per partition, the
    /// last of those records (whether or not it had events). With `skipped`, the records
    /// before it were not all seen (a follower restarted from a snapshot): a client resuming
    /// from before it gets `gap`.
    pub fn publish(&self, events: Vec<StreamEvent>, passed: &[Passed]) {
        // Under the window's lock, so that a subscriber sees each event exactly once: either in
        // its replay or on its live receiver.
        let mut recent = self.lock();
        for event in events {
            let event = Arc::new(event);
            if recent.events.len() == self.window
                && let Some(evicted) = recent.events.pop_front()
            {
                recent.floor.pass(&evicted);
            }
            recent.head.pass(&event);
            recent.events.push_back(event.clone());
            // No receiver is not an error: nobody is watching.
            let _ = self.sender.send(event);
        }
        for passed in passed {
            let id = StreamId::after_record(passed.position);
            recent.head.pass_id(passed.partition, id);
            if passed.skipped {
                recent.floor.pass_id(passed.partition, id);
            }
        }
    }

    /// Subscribes; with `after`, replays what followed it from the window.
    pub fn subscribe(&self, after: Option<Cursor>) -> Subscription {
        let recent = self.lock();
        let live = self.sender.subscribe();
        let Some(after) = after else {
            return Subscription {
                replay: Vec::new(),
                gap: false,
                live,
                cursor: recent.head.clone(),
            };
        };
        let gap = (0..recent.floor.0.len() as u32)
            .any(|partition| after.at(partition) < recent.floor.at(partition));
        let replay = recent
            .events
            .iter()
            .filter(|event| after.precedes(event))
            .cloned()
            .collect();
        Subscription {
            replay,
            gap,
            live,
            cursor: after,
        }
    }

    /// Just after the last record of each partition whose events were published: a read taken
    /// while no commit is being published reflects exactly the events up to it, so a stream
    /// resumed from it repeats nothing the read showed and misses nothing after.
    pub fn head(&self) -> Cursor {
        self.lock().head.clone()
    }
}

/// A partition's last record among those published (see [`StreamHub::publish`]).
#[derive(Clone, Copy, Debug)]
pub struct Passed {
    pub partition: u32,
    pub position: Position,
    pub skipped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::UserId;

    fn actor(id: &str, roles: &[Role], teams: &[&str]) -> Actor {
        Actor {
            id: UserId::new(id),
            roles: roles.to_vec(),
            teams: teams.iter().map(|team| TeamId::new(*team)).collect(),
        }
    }

    fn id(public: u64) -> StreamId {
        StreamId {
            position: Position { public, silent: 0 },
            index: 0,
        }
    }

    fn event(seq: u64, audience: StreamAudience) -> StreamEvent {
        StreamEvent {
            partition: 0,
            id: id(seq),
            conversation: ConversationId::from_key(1),
            team: Some(TeamId::new("support")),
            audience,
            payload: StreamPayload::Timeline(TimelineEntry {
                conversation: ConversationId::from_key(1),
                at: crate::engine::Millis(seq as i64),
                visibility: crate::engine::Visibility::Internal,
                event: crate::engine::TimelineEvent::SubjectChanged { subject: None },
            }),
            agent: Some(AgentId::new("a-1")),
        }
    }

    #[test]
    fn audiences_decide_who_receives_an_event() {
        let support = actor("s-1", &[Role::Supervisor], &["support"]);
        let billing = actor("s-2", &[Role::Supervisor], &["billing"]);
        let admin = actor("root", &[Role::Admin], &[]);
        let agent = actor("a-1", &[Role::Agent], &["support"]);
        let team = event(1, StreamAudience::Supervisors);
        assert!(team.view_for(&support).is_some());
        assert!(team.view_for(&billing).is_none());
        assert!(team.view_for(&admin).is_some());
        assert!(team.view_for(&agent).is_some());
        let hidden = StreamEvent {
            agent: None,
            ..event(1, StreamAudience::Supervisors)
        };
        assert!(hidden.view_for(&agent).is_none());
        let whisper = event(2, StreamAudience::Users(vec!["a-1".into(), "s-1".into()]));
        assert!(whisper.view_for(&support).is_some());
        assert!(whisper.view_for(&agent).is_some());
        assert!(whisper.view_for(&admin).is_none());
        assert!(
            whisper
                .view_for(&actor("s-3", &[Role::Supervisor], &["support"]))
                .is_none()
        );
    }

    #[test]
    fn resumes_after_the_last_event_id_and_reports_a_gap() {
        let hub = StreamHub::new(3, Position::default());
        hub.publish(
            (1..=5)
                .map(|seq| event(seq, StreamAudience::Supervisors))
                .collect(),
            &[],
        );
        let at = |seq| Some(Cursor(vec![id(seq)]));
        let resumed = hub.subscribe(at(3));
        let seqs: Vec<u64> = resumed
            .replay
            .iter()
            .map(|event| event.id.position.public)
            .collect();
        assert_eq!(seqs, [4, 5]);
        assert!(!resumed.gap);
        let too_old = hub.subscribe(at(1));
        assert!(too_old.gap);
        assert_eq!(too_old.replay.len(), 3);
        // After a restart, a client that last saw an event of an earlier process has a gap.
        let restarted = StreamHub::new(3, id(5).position);
        assert!(restarted.subscribe(at(4)).gap);
        // ... unless it restored the window the store kept.
        let stored = StoredWindow {
            floor: Some(id(2)),
            events: (3..=5)
                .map(|seq| event(seq, StreamAudience::Supervisors).stored())
                .collect(),
        };
        let restored = StreamHub::new(3, id(5).position);
        restored.restore(stored.clone(), |stored| {
            Some(StreamEvent {
                partition: 0,
                id: stored.id,
                conversation: stored.conversation,
                team: stored.team,
                audience: stored.audience,
                payload: StreamPayload::Timeline(stored.timeline?),
                agent: stored.agent,
            })
        });
        let resumed = restored.subscribe(at(3));
        assert!(!resumed.gap);
        assert_eq!(resumed.replay.len(), 2);
        assert!(restored.subscribe(at(1)).gap);
        let json = serde_json::to_string(&stored.events[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<StoredEvent>(&json).unwrap(),
            stored.events[0]
        );
        let mut fresh = hub.subscribe(None);
        hub.publish(vec![event(6, StreamAudience::Supervisors)], &[]);
        assert_eq!(
            fresh
                .live
                .try_recv()
                .map(|event| event.id.position.public)
                .ok(),
            Some(6)
        );
        let twelve = |silent, index| StreamId {
            position: Position { public: 12, silent },
            index,
        };
        assert_eq!(StreamId::parse("12.0.3"), Some(twelve(0, 3)));
        assert_eq!(
            StreamId::parse("12.3"),
            Some(twelve(0, 3)),
            "an earlier version's id"
        );
        assert_eq!(twelve(2, 3).to_string(), "12.2.3");
        for bad in ["nope", "1.2.3.4", "1:2.3.4", "-1.0.0"] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
    }

    fn in_partition(partition: u32, public: u64, silent: u32) -> StreamEvent {
        StreamEvent {
            partition,
            id: StreamId {
                position: Position { public, silent },
                index: 0,
            },
            ..event(public, StreamAudience::Supervisors)
        }
    }

    /// Two nodes follow the same partitions and interleave them differently: a cursor from
    /// one resumes on the other with exactly what came after it, partition by partition.
    #[test]
    fn a_cursor_resumes_on_a_node_that_interleaved_the_partitions_otherwise() {
        let start = vec![Position::default(); 3];
        let first = StreamHub::partitioned(100, start.clone());
        let second = StreamHub::partitioned(100, start);
        let a = || (1..=4).map(|public| in_partition(0, public, 0));
        let b = || (1..=3).map(|public| in_partition(2, public, 0));
        first.publish(a().chain(b()).collect(), &[]);
        second.publish(b().chain(a()).collect(), &[]);
        // A client of the first node saw partition 0's first three events and partition 2's
        // first: its cursor carries both, partition 1 left out.
        let mut cursor = Cursor::after(vec![Position::default(); 3]);
        for seen in [in_partition(0, 3, 0), in_partition(2, 1, 0)] {
            cursor.pass(&seen);
        }
        let text = cursor.to_string();
        assert_eq!(text, "0:3.0.0,2:1.0.0");
        let parsed = Cursor::parse(&text, 3).unwrap();
        assert_eq!(parsed, cursor);
        let resumed = second.subscribe(Some(parsed));
        assert!(!resumed.gap);
        let replayed: Vec<(u32, u64)> = resumed
            .replay
            .iter()
            .map(|event| (event.partition, event.id.position.public))
            .collect();
        assert_eq!(replayed, [(2, 2), (2, 3), (0, 4)]);
        // Partition 1 ran past its window (here: its follower restarted from a snapshot at
        // public 7), so a cursor that never passed anything of it has a gap there.
        second.publish(
            Vec::new(),
            &[Passed {
                partition: 1,
                position: Position {
                    public: 7,
                    silent: 0,
                },
                skipped: true,
            }],
        );
        assert!(second.subscribe(Cursor::parse(&text, 3)).gap);
        let head = second.head();
        assert_eq!(head.to_string(), "0:4.0.0,1:7.0.4294967295,2:3.0.0");
        assert!(!second.subscribe(Some(head)).gap);
        // A partition the hub does not have, or text that is not a cursor, is no cursor.
        assert_eq!(Cursor::parse("3:1.0.0", 3), None);
        assert_eq!(Cursor::parse("0:1.0.0,x", 3), None);
        // A single daemon's cursor is its one id, without a partition.
        let single = Cursor::parse("0:12.2.3", 1).unwrap();
        assert_eq!(single.to_string(), "12.2.3");
    }
}
