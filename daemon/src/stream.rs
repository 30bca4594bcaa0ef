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

/// A stream event's position: the [`Position`] of the record that caused it and its index
/// among the record's events. Comparable and stable across restarts (positions are durable),
/// so a client's `Last-Event-ID` means the same thing after the daemon restarted.
///
/// Written `public.silent.index`. Clients treat it as opaque: ids are not consecutive for any
/// one client, and the silent counter never moves for an agent (it only grows on records an
/// agent cannot see, and its events are not for agents), so an agent's ids are the same
/// whether or not a supervisor monitored silently. A cluster node's ids are its own count of
/// the records it followed, marked with its run ([`RunIds`]). The text leaves room for ids
/// that carry one position per partition (`partition:public.silent.index`, comma separated);
/// one daemon's ids are those of partition `0`, which `parse` also accepts written with the
/// `0:` prefix.
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
    /// Parses a `Last-Event-ID`: `public.silent.index` (optionally `0:`-prefixed), or
    /// `seq.index` as versions before record positions wrote it (their records stand at
    /// their log position, so it means the same place).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix("0:").unwrap_or(text);
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

/// A cluster node's stream ids: its run in the high 32 bits of `public`, then the records it
/// followed, counted as a single daemon counts its own (a public record moves `public`, a
/// silent one `silent`), so that ids keep the single daemon's order and meaning within a run.
#[derive(Clone, Copy, Debug)]
pub struct RunIds {
    /// The position of the last record followed (at first, the run's start).
    last: Position,
}

impl RunIds {
    pub fn new(run: u32) -> Self {
        Self {
            last: Position {
                public: u64::from(run) << 32,
                silent: 0,
            },
        }
    }

    /// The position of the last record followed (before the first: the run's start).
    pub fn current(&self) -> Position {
        self.last
    }

    /// Gives the next followed record its position.
    pub fn advance(&mut self, silent: bool) -> Position {
        self.last = self.last.next(silent);
        self.last
    }

    fn is_of(run: u32, id: StreamId) -> bool {
        id.position.public >> 32 == u64::from(run)
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
    /// Events after the client's `Last-Event-ID` that are still in the window, oldest first.
    pub replay: Vec<Arc<StreamEvent>>,
    /// The client's `Last-Event-ID` is older than the window: some events are gone and the
    /// client should reload its view.
    pub gap: bool,
    pub live: broadcast::Receiver<Arc<StreamEvent>>,
}

/// Fan-out of committed changes with a window of recent events.
#[derive(Debug)]
pub struct StreamHub {
    sender: broadcast::Sender<Arc<StreamEvent>>,
    recent: Mutex<Window>,
    window: usize,
    /// A cluster node's run (see [`StreamHub::for_run`]); `None` on a single daemon.
    run: Option<u32>,
}

#[derive(Debug)]
struct Window {
    events: VecDeque<Arc<StreamEvent>>,
    /// Events at or before this id may be gone (evicted from the window, or committed before
    /// this process started): a client resuming from before it has a gap.
    floor: StreamId,
}

impl StreamHub {
    /// A hub that keeps the last `window` events for resumption; `start` is the position of
    /// the last record when the daemon started (events of earlier records cannot be replayed).
    pub fn new(window: usize, start: Position) -> Self {
        let (sender, _) = broadcast::channel(window.clamp(16, 65_536));
        Self {
            sender,
            recent: Mutex::new(Window {
                events: VecDeque::with_capacity(window.min(65_536)),
                floor: StreamId {
                    position: start,
                    index: u32::MAX,
                },
            }),
            window: window.max(1),
            run: None,
        }
    }

    /// A cluster node's hub. A node numbers the events it follows from every partition in its
    /// own order, so its ids carry its `run` in the high half of `public` (see
    /// [`RunIds`]): an id from another node, or from an earlier run of this one, cannot be
    /// placed in this order, and a client resuming from one gets `gap` (it reloads).
    pub fn for_run(window: usize, run: u32) -> Self {
        Self {
            run: Some(run),
            ..Self::new(window, RunIds::new(run).current())
        }
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
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(first) = stored.events.first().map(|event| event.id) else {
            return;
        };
        recent.floor = stored.floor.unwrap_or(first.before());
        let keep = stored.events.len().saturating_sub(self.window);
        recent.events = stored
            .events
            .into_iter()
            .skip(keep)
            .filter_map(&mut revive)
            .map(Arc::new)
            .collect();
    }

    /// Publishes events of a committed batch, in order.
    pub fn publish(&self, events: Vec<StreamEvent>) {
        if events.is_empty() {
            return;
        }
        // Under the window's lock, so that a subscriber sees each event exactly once: either in
        // its replay or on its live receiver.
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for event in events {
            let event = Arc::new(event);
            if recent.events.len() == self.window
                && let Some(evicted) = recent.events.pop_front()
            {
                recent.floor = evicted.id;
            }
            recent.events.push_back(event.clone());
            // No receiver is not an error: nobody is watching.
            let _ = self.sender.send(event);
        }
    }

    /// Subscribes; with `after`, replays what followed it from the window.
    pub fn subscribe(&self, after: Option<StreamId>) -> Subscription {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let live = self.sender.subscribe();
        let Some(after) = after else {
            return Subscription {
                replay: Vec::new(),
                gap: false,
                live,
            };
        };
        let foreign = self.run.is_some_and(|run| !RunIds::is_of(run, after));
        let gap = foreign || after < recent.floor;
        let replay = recent
            .events
            .iter()
            .filter(|event| event.id > after)
            .cloned()
            .collect();
        Subscription { replay, gap, live }
    }

    /// The id of the newest event, if any.
    pub fn last_id(&self) -> Option<StreamId> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        recent.events.back().map(|event| event.id)
    }
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
        );
        let resumed = hub.subscribe(Some(id(3)));
        let seqs: Vec<u64> = resumed
            .replay
            .iter()
            .map(|event| event.id.position.public)
            .collect();
        assert_eq!(seqs, [4, 5]);
        assert!(!resumed.gap);
        let too_old = hub.subscribe(Some(id(1)));
        assert!(too_old.gap);
        assert_eq!(too_old.replay.len(), 3);
        // After a restart, a client that last saw an event of an earlier process has a gap.
        let restarted = StreamHub::new(3, id(5).position);
        assert!(restarted.subscribe(Some(id(4))).gap);
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
                id: stored.id,
                conversation: stored.conversation,
                team: stored.team,
                audience: stored.audience,
                payload: StreamPayload::Timeline(stored.timeline?),
                agent: stored.agent,
            })
        });
        let resumed = restored.subscribe(Some(id(3)));
        assert!(!resumed.gap);
        assert_eq!(resumed.replay.len(), 2);
        assert!(restored.subscribe(Some(id(1))).gap);
        let json = serde_json::to_string(&stored.events[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<StoredEvent>(&json).unwrap(),
            stored.events[0]
        );
        let mut fresh = hub.subscribe(None);
        hub.publish(vec![event(6, StreamAudience::Supervisors)]);
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
        assert_eq!(StreamId::parse("0:12.2.3"), Some(twelve(2, 3)));
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
}
