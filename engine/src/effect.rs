//! Engine step 3: what an input caused — the changes to persist (the replayable log), the
//! timeline entries, the notifications for the outbox, and the reply to the caller.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::domain::{
    AgentId, ChannelKind, ConversationId, ConversationState, Customer, Direction, ExternalRef,
    JoinMode, MediaState, Millis, PluginId, Presence, QueueId, SupervisionMode, UserId, Visibility,
};
use super::input::{ProviderError, ReceiptStatus};

/// Everything one input caused. Reused across inputs (`clear`) so that the hot path does not
/// allocate vectors.
#[derive(Debug, Default)]
pub struct Outcome {
    pub record: Record,
    pub notifications: Vec<Notification>,
    pub reply: Option<Result<Reply, Refusal>>,
    /// Set by a rule whose whole effect the agent and the customer must not be able to tell
    /// happened (silent monitoring): the record takes a [`Position`] that moves nothing they
    /// can see.
    pub silent: bool,
}

impl Outcome {
    pub fn clear(&mut self) {
        self.record.seq = 0;
        self.record.at = Millis(0);
        self.record.changes.clear();
        self.record.timeline.clear();
        self.notifications.clear();
        self.reply = None;
        self.silent = false;
    }

    /// Whether the input changed anything that must be stored or sent.
    pub fn is_empty(&self) -> bool {
        self.record.changes.is_empty()
            && self.record.timeline.is_empty()
            && self.notifications.is_empty()
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        self.reply.as_ref().and_then(|reply| reply.as_ref().err())
    }
}

/// The durable result of one input: the engine's log entry. `changes` replayed in order over
/// the same setup rebuild the same state; the timeline is for readers and is not engine state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log (the store's order; never shown outside the daemon).
    pub seq: u64,
    /// Where the record stands for those outside: notification, stream and conversation ids
    /// derive from it. Absent (zero) in records of versions before it existed, which stand at
    /// `seq` (see [`Position::of`]).
    #[serde(default, skip_serializing_if = "Position::is_zero")]
    pub position: Position,
    pub at: Millis,
    pub changes: Vec<Change>,
    /// Absent from the store's `log` table, which keeps what replay needs (the timeline has a
    /// table of its own).
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
}

/// A state change, small and explicit: evolving the state is a plain fold over these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    Opened {
        id: ConversationId,
        external: ExternalRef,
        channel: ChannelKind,
        direction: Direction,
        subject: Option<Box<str>>,
        customer: Customer,
        queue: QueueId,
    },
    StateChanged {
        id: ConversationId,
        to: ConversationState,
    },
    AgentSet {
        id: ConversationId,
        agent: Option<AgentId>,
    },
    ConsultantAdded {
        id: ConversationId,
        agent: AgentId,
    },
    ConsultantRemoved {
        id: ConversationId,
        agent: AgentId,
    },
    QueueChanged {
        id: ConversationId,
        queue: QueueId,
    },
    SubjectChanged {
        id: ConversationId,
        subject: Option<Box<str>>,
    },
    /// A receipt for one of our outgoing messages: the report shows the newest.
    Delivery {
        id: ConversationId,
        message_id: Box<str>,
        status: ReceiptStatus,
    },
    /// A voice supervisor's media changed state.
    SeatMedia {
        id: ConversationId,
        supervisor: UserId,
        media: MediaState,
    },
    /// The provider named its own id for one of our outgoing messages: its later receipts,
    /// which name that id, belong to our message.
    ProviderMessage {
        id: ConversationId,
        provider_id: Box<str>,
        message_id: Box<str>,
    },
    SeatTaken {
        id: ConversationId,
        supervisor: UserId,
        mode: SupervisionMode,
    },
    SeatChanged {
        id: ConversationId,
        supervisor: UserId,
        mode: SupervisionMode,
    },
    SeatReleased {
        id: ConversationId,
        supervisor: UserId,
    },
    CapacityHeld {
        id: ConversationId,
        agent: AgentId,
        units: u32,
    },
    CapacityReleased {
        id: ConversationId,
    },
    /// A message or other sign of life; a customer message carries its sentiment.
    Activity {
        id: ConversationId,
        /// The customer wrote (service windows count from the customer's last message).
        #[serde(default)]
        customer: bool,
        sentiment: Option<f32>,
    },
    PresenceChanged {
        agent: AgentId,
        presence: Presence,
    },
    /// The units an agent holds in a cluster's other partitions.
    LoadElsewhere {
        agent: AgentId,
        units: u32,
    },
    /// A closed conversation left the engine (it stays in the store).
    Evicted {
        id: ConversationId,
    },
    /// An input id was applied; a later input with the same id changes nothing.
    Seen {
        #[serde(with = "hex128")]
        key: u128,
    },
    /// A command with an idempotency key was answered.
    Answered {
        #[serde(with = "hex128")]
        key: u128,
        fingerprint: u64,
        reply: Result<Reply, Refusal>,
    },
}

impl Change {
    /// The conversation this change is about (`None` for agent and bookkeeping changes).
    pub fn conversation(&self) -> Option<ConversationId> {
        match self {
            Self::Opened { id, .. }
            | Self::StateChanged { id, .. }
            | Self::AgentSet { id, .. }
            | Self::ConsultantAdded { id, .. }
            | Self::ConsultantRemoved { id, .. }
            | Self::QueueChanged { id, .. }
            | Self::SubjectChanged { id, .. }
            | Self::ProviderMessage { id, .. }
            | Self::SeatMedia { id, .. }
            | Self::Delivery { id, .. }
            | Self::SeatTaken { id, .. }
            | Self::SeatChanged { id, .. }
            | Self::SeatReleased { id, .. }
            | Self::CapacityHeld { id, .. }
            | Self::CapacityReleased { id }
            | Self::Activity { id, .. }
            | Self::Evicted { id } => Some(*id),
            Self::PresenceChanged { .. }
            | Self::LoadElsewhere { .. }
            | Self::Seen { .. }
            | Self::Answered { .. } => None,
        }
    }
}

/// One line of a conversation's timeline: every action lands here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub conversation: ConversationId,
    pub at: Millis,
    pub visibility: Visibility,
    #[serde(flatten)]
    pub event: TimelineEvent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum TimelineEvent {
    Created {
        channel: ChannelKind,
        queue: QueueId,
        /// A queue the event named that the roster does not know.
        requested_queue: Option<QueueId>,
    },
    Message {
        author: Author,
        text: Arc<str>,
        /// The provider's id of the message it answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Box<str>>,
    },
    Whisper {
        supervisor: UserId,
        agent: Option<AgentId>,
        text: Arc<str>,
    },
    StateChanged {
        from: ConversationState,
        to: ConversationState,
    },
    SupervisionStarted {
        supervisor: UserId,
        mode: SupervisionMode,
    },
    SupervisionChanged {
        supervisor: UserId,
        from: SupervisionMode,
        to: SupervisionMode,
    },
    SupervisionEnded {
        supervisor: UserId,
        mode: SupervisionMode,
        started_at: Millis,
        reason: EndReason,
        /// Why the supervisor's media could not be set up (`media-failed`), as the provider
        /// said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ProviderError>,
    },
    Accepted {
        agent: AgentId,
    },
    AgentLeft {
        agent: AgentId,
    },
    AssignedToAgent {
        agent: AgentId,
        by: UserId,
        /// Checks the supervisor chose to bypass (audited).
        overrides: Vec<Override>,
    },
    AssignedToQueue {
        from: QueueId,
        to: QueueId,
        by: Option<UserId>,
    },
    Transferred {
        from: AgentId,
        to: AgentId,
        by: UserId,
    },
    ForceClosed {
        by: UserId,
        reason: Option<Box<str>>,
    },
    ClosedByInactivity {
        idle_seconds: u64,
    },
    CapacityReleased {
        agent: AgentId,
        units: u32,
    },
    Receipt {
        /// Our id for the message (its request's id); the provider's when it named one we do
        /// not know.
        message_id: Box<str>,
        status: ReceiptStatus,
        /// The provider's reason, for a failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ProviderError>,
        /// The provider's id for the message (Twilio's `sid`, a WhatsApp `wamid`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_id: Option<Box<str>>,
    },
    SubjectChanged {
        subject: Option<Box<str>>,
    },
}

/// Why a supervisor's participation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    Left,
    /// The supervisor became the conversation's agent.
    BecameAgent,
    AgentLeft,
    Closed,
    /// A media request failed (the call's channel gone, the supervisor's phone unreachable):
    /// a monitor that hears nothing is ended rather than kept.
    MediaFailed,
    /// The supervisor's live streams were all gone for the monitor lease (a closed browser
    /// tab): the seat is freed rather than held by nobody.
    LeaseExpired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum Author {
    Customer,
    Agent(AgentId),
    Bot(AgentId),
    Supervisor(UserId),
    System,
}

/// A check an assignment bypassed, with what it found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case")]
pub enum Override {
    Presence { presence: Presence },
    Capacity { exceeded_by: u32 },
}

/// Who must hear about something. Maps onto the outbound routing keys `channel.<plugin>`,
/// `agent.<id>`, `supervisor.<id>` and `conversation.<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "kebab-case")]
pub enum Audience {
    /// The customer, through the conversation's channel plugin.
    Channel {
        plugin: PluginId,
        thread: Box<str>,
        customer: Box<str>,
    },
    Agent {
        agent: AgentId,
    },
    Supervisor {
        supervisor: UserId,
    },
    /// Anyone following the conversation's state (any frontend).
    Conversation,
}

/// Where a record stands as seen from outside the daemon. `public` counts the records that
/// anyone may notice (an agent, a customer, a frontend following conversations); `silent`
/// counts, from one, the silent records since the last public one (silent monitoring starting
/// or ending), and is zero on a public record. Ids derived from positions are therefore the
/// same, for everything an agent or a customer can see, whether or not anybody monitored
/// silently in between: the silent records move only a counter that public records reset.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub public: u64,
    #[serde(default)]
    pub silent: u32,
}

impl Position {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// A record's position; a record of a version before positions existed stands at its
    /// log position, which is what its ids were derived from then.
    pub fn of(record: &Record) -> Self {
        if record.position.is_zero() {
            Self {
                public: record.seq,
                silent: 0,
            }
        } else {
            record.position
        }
    }

    /// The position of the record after this one.
    pub fn next(self, silent: bool) -> Self {
        if silent {
            Self {
                public: self.public,
                silent: self.silent.saturating_add(1),
            }
        } else {
            Self {
                public: self.public + 1,
                silent: 0,
            }
        }
    }
}

/// A notification's id: the [`Position`] of the record that caused it and its index there,
/// written `public.index`, or `public.silent.index` for a silent record. Stable across
/// re-publication (the CloudEvents id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NotificationId {
    pub position: Position,
    pub index: u32,
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position.silent {
            0 => write!(f, "{}.{}", self.position.public, self.index),
            silent => write!(f, "{}.{silent}.{}", self.position.public, self.index),
        }
    }
}

impl Serialize for NotificationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NotificationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let parts: Vec<&str> = text.split('.').collect();
        let parsed = match parts[..] {
            [public, index] => Some((public, "0", index)),
            [public, silent, index] => Some((public, silent, index)),
            _ => None,
        }
        .and_then(|(public, silent, index)| {
            Some(Self {
                position: Position {
                    public: public.parse().ok()?,
                    silent: silent.parse().ok()?,
                },
                index: index.parse().ok()?,
            })
        });
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a notification id (public.index or public.silent.index)"
            ))
        })
    }
}

/// A notification for the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    pub conversation: Option<ConversationId>,
    pub audience: Audience,
    pub body: NotificationBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum NotificationBody {
    /// A message to deliver or relay.
    Message {
        author: Author,
        text: Arc<str>,
        visibility: Visibility,
    },
    /// A supervisor's coaching message: only ever addressed to the agent and the whisperer.
    Whisper {
        supervisor: UserId,
        text: Arc<str>,
    },
    Typing {
        author: Author,
    },
    SupervisorJoined {
        supervisor: UserId,
        mode: SupervisionMode,
    },
    SupervisorLeft {
        supervisor: UserId,
    },
    /// To a supervisor: its participation ended without it asking.
    SupervisionEnded {
        reason: EndReason,
    },
    /// Policy `tell_agent_on_monitor`: the agent learns that it is being monitored.
    MonitoringStarted {
        supervisor: UserId,
    },
    /// A conversation started in a queue.
    Opened {
        channel: ChannelKind,
        queue: QueueId,
    },
    StateChanged {
        from: ConversationState,
        to: ConversationState,
    },
    Assigned {
        agent: Option<AgentId>,
        queue: QueueId,
    },
    Transferred {
        from: AgentId,
        to: AgentId,
    },
    /// A supervisor ended the conversation; everyone is told.
    ClosedBySupervisor {
        supervisor: UserId,
        reason: Option<Box<str>>,
    },
    /// The channel must end the provider session (hang up, resolve the thread).
    EndSession,
    /// Media control for plugins with the voice capability; the customer is not told.
    Media {
        control: MediaControl,
    },
    PresenceChanged {
        presence: Presence,
    },
}

/// Voice controls a plugin turns into provider requests (ARI snoop, bridge, hang-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "kebab-case")]
pub enum MediaControl {
    /// Listen to both directions (ARI snoop `spy=both`).
    Listen {
        supervisor: UserId,
        agent: Option<AgentId>,
    },
    /// Speak to the agent only (ARI snoop `whisper` toward the agent's channel).
    Coach {
        supervisor: UserId,
        agent: Option<AgentId>,
    },
    /// Join the call's bridge; `public` means the customer hears the supervisor.
    Join { supervisor: UserId, mode: JoinMode },
    /// Stop whatever media the supervisor had.
    Stop { supervisor: UserId },
}

/// What a successful input answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub conversation: Option<ConversationId>,
    /// The conversation's state afterwards.
    pub state: Option<ConversationState>,
    /// Checks bypassed by `override_presence` / `override_capacity`.
    pub overrides: Vec<Override>,
    /// The units by which the agent's capacity is now exceeded, if it is.
    pub capacity_exceeded_by: Option<u32>,
    /// This answer replays an earlier one (same input id or idempotency key).
    pub replayed: bool,
}

/// A rule forbade the input. The code is stable: the API's problem `code` and the
/// dead-letter header `switchboard-error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: Code,
    pub detail: String,
    /// For limit refusals: who holds the slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<UserId>,
}

impl Refusal {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            holders: Vec::new(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Refusal {}

/// Stable refusal codes, one per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    InvalidState,
    OwnConversation,
    AlreadyParticipating,
    MonitorLimit,
    NotJoined,
    NotMonitoring,
    NotParticipating,
    BargeLimit,
    ChannelNotSupported,
    SameQueue,
    SameAgent,
    PresenceNotAllowed,
    CapacityExceeded,
    TargetIsBot,
    NotInQueue,
    ConfirmationRequired,
    NotFound,
    Forbidden,
    UnknownAgent,
    UnknownQueue,
    UnknownConversation,
    IdempotencyKeyReused,
    UnknownPlugin,
    ChannelMismatch,
    NotInTeam,
    NoMediaEndpoint,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidState => "invalid-state",
            Self::OwnConversation => "own-conversation",
            Self::AlreadyParticipating => "already-participating",
            Self::MonitorLimit => "monitor-limit",
            Self::NotJoined => "not-joined",
            Self::NotMonitoring => "not-monitoring",
            Self::NotParticipating => "not-participating",
            Self::BargeLimit => "barge-limit",
            Self::ChannelNotSupported => "channel-not-supported",
            Self::SameQueue => "same-queue",
            Self::SameAgent => "same-agent",
            Self::PresenceNotAllowed => "presence-not-allowed",
            Self::CapacityExceeded => "capacity-exceeded",
            Self::TargetIsBot => "target-is-bot",
            Self::NotInQueue => "not-in-queue",
            Self::ConfirmationRequired => "confirmation-required",
            Self::NotFound => "not-found",
            Self::Forbidden => "forbidden",
            Self::UnknownAgent => "unknown-agent",
            Self::UnknownQueue => "unknown-queue",
            Self::UnknownConversation => "unknown-conversation",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::UnknownPlugin => "unknown-plugin",
            Self::ChannelMismatch => "channel-mismatch",
            Self::NotInTeam => "not-in-team",
            Self::NoMediaEndpoint => "no-media-endpoint",
        }
    }

    /// The HTTP status the admin API answers with (README, "Admin API").
    pub fn http_status(self) -> u16 {
        match self {
            Self::NotFound | Self::UnknownConversation => 404,
            Self::Forbidden => 403,
            // What cannot be true of the input itself, whatever the state.
            Self::UnknownAgent
            | Self::UnknownQueue
            | Self::IdempotencyKeyReused
            | Self::UnknownPlugin
            | Self::ChannelMismatch
            | Self::NotInTeam => 422,
            _ => 409,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 128-bit keys as 32 hex digits: JSON numbers cannot carry them through the buffering that
/// internally tagged enums need.
mod hex128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(key: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{key:032x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<u128, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}
