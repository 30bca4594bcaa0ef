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
use crate::engine::{Actor, AgentId, ConversationId, Role, SupervisionMode, TeamId, TimelineEntry};

/// A stream event's position: the log record that caused it and its index among the record's
/// events. Comparable and stable across restarts (record sequence numbers are durable), so a
/// client's `Last-Event-ID` means the same thing after the daemon restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub seq: u64,
    pub index: u32,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.seq, self.index)
    }
}

impl StreamId {
    /// Parses `seq.index` (a `Last-Event-ID`).
    pub fn parse(text: &str) -> Option<Self> {
        let (seq, index) = text.trim().split_once('.')?;
        Some(Self {
            seq: seq.parse().ok()?,
            index: index.parse().ok()?,
        })
    }
}

/// Who may receive an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamAudience {
    /// Supervisors of the conversation's team and admins (state, assignment and supervision
    /// changes). The conversation's agent gets its own view (`agent_view`), if any.
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

impl StreamEvent {
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
}

#[derive(Debug)]
struct Window {
    events: VecDeque<Arc<StreamEvent>>,
    /// Events at or before this id may be gone (evicted from the window, or committed before
    /// this process started): a client resuming from before it has a gap.
    floor: StreamId,
}

impl StreamHub {
    /// A hub that keeps the last `window` events for resumption; `last_seq` is the log position
    /// when the daemon started (events of earlier records cannot be replayed).
    pub fn new(window: usize, last_seq: u64) -> Self {
        let (sender, _) = broadcast::channel(window.clamp(16, 65_536));
        Self {
            sender,
            recent: Mutex::new(Window {
                events: VecDeque::with_capacity(window.min(65_536)),
                floor: StreamId {
                    seq: last_seq,
                    index: u32::MAX,
                },
            }),
            window: window.max(1),
        }
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
        let gap = after < recent.floor;
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

    fn event(seq: u64, audience: StreamAudience) -> StreamEvent {
        StreamEvent {
            id: StreamId { seq, index: 0 },
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
        let hub = StreamHub::new(3, 0);
        hub.publish(
            (1..=5)
                .map(|seq| event(seq, StreamAudience::Supervisors))
                .collect(),
        );
        let resumed = hub.subscribe(Some(StreamId { seq: 3, index: 0 }));
        let seqs: Vec<u64> = resumed.replay.iter().map(|event| event.id.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert!(!resumed.gap);
        let too_old = hub.subscribe(Some(StreamId { seq: 1, index: 0 }));
        assert!(too_old.gap);
        assert_eq!(too_old.replay.len(), 3);
        // After a restart, a client that last saw an event of an earlier process has a gap.
        let restarted = StreamHub::new(3, 5);
        assert!(restarted.subscribe(Some(StreamId { seq: 4, index: 0 })).gap);
        let mut fresh = hub.subscribe(None);
        hub.publish(vec![event(6, StreamAudience::Supervisors)]);
        assert_eq!(
            fresh.live.try_recv().map(|event| event.id.seq).ok(),
            Some(6)
        );
        assert_eq!(
            StreamId::parse("12.3"),
            Some(StreamId { seq: 12, index: 3 })
        );
        assert_eq!(StreamId::parse("nope"), None);
    }
}
