//! Engine step 1: the one closed set of inputs — canonical channel events (from a plugin's
//! decode or the `canonical` routing key), commands (from the admin API) and clock ticks.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::domain::{
    AgentId, ChannelKind, ConversationId, Customer, Direction, ExternalRef, JoinMode, PluginId,
    Presence, QueueId, TeamId, UserId, Visibility,
};

/// Everything that can change the engine's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "kebab-case")]
pub enum Input {
    Channel(ChannelEvent),
    Command(Command),
    /// Time passed: inactivity timeouts, wrap-up capacity release, eviction of closed
    /// conversations. The time itself comes with every input.
    Tick,
    /// In a cluster: the units each agent holds in the other partitions, so that this
    /// partition's capacity checks count them (agents not listed hold none elsewhere).
    LoadsElsewhere(Vec<(AgentId, u32)>),
}

/// A canonical event, as a plugin decodes it from provider traffic or a routing platform
/// publishes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelEvent {
    /// The provider's own id of this event (message SID, wamid, ARI event id), used for
    /// deduplication together with `source`.
    #[serde(default)]
    pub id: Option<Box<str>>,
    /// The plugin that decoded it (or `canonical`).
    pub source: PluginId,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventBody {
    /// A conversation started on the provider (Chatwoot `conversation_created`, ARI
    /// `StasisStart`). Starting a conversation that is already live updates its details.
    Started {
        conversation: ExternalRef,
        channel: ChannelKind,
        #[serde(default = "inbound")]
        direction: Direction,
        #[serde(default)]
        subject: Option<Box<str>>,
        customer: Customer,
        /// The queue the provider routed it to; the plugin's default queue otherwise.
        #[serde(default)]
        queue: Option<QueueId>,
    },
    /// A message in the conversation. A customer message on a thread with no live
    /// conversation starts one (SMS and WhatsApp have no start event).
    Message {
        conversation: ExternalRef,
        channel: ChannelKind,
        sender: Sender,
        text: Arc<str>,
        #[serde(default = "public")]
        visibility: Visibility,
        /// Customer sentiment of this message in [-1, 1], supplied by the plugin or computed
        /// by the daemon before the engine sees it.
        #[serde(default)]
        sentiment: Option<f32>,
        /// The customer, for a message that starts a conversation.
        #[serde(default)]
        customer: Option<Customer>,
        /// The provider's id of the message this one answers (a button reply, a quote).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Box<str>>,
    },
    /// The routing platform connected an agent (ARI `ChannelEnteredBridge` of the agent's leg,
    /// Chatwoot assignee set).
    Accepted {
        conversation: ConversationRef,
        agent: AgentId,
    },
    /// Agent or customer paused (hold): `active` -> `waiting`.
    Paused { conversation: ConversationRef },
    /// Resumed (unhold): `waiting` -> `active`.
    Resumed { conversation: ConversationRef },
    /// An agent left. The primary agent leaving puts the conversation back in its queue and
    /// drops its supervisors.
    AgentLeft {
        conversation: ConversationRef,
        agent: AgentId,
    },
    /// The customer left (hang-up, Chatwoot `resolved`): `wrap-up` when an agent has it,
    /// `closed` otherwise.
    CustomerLeft { conversation: ConversationRef },
    /// The conversation ended for good (wrap-up finished, platform closed it).
    Closed { conversation: ConversationRef },
    /// Someone is typing; relayed to the supervisors taking part, never stored.
    Typing {
        conversation: ConversationRef,
        sender: Sender,
    },
    /// A provider delivery receipt for an earlier message.
    Receipt {
        conversation: ConversationRef,
        /// The message: our id, or the provider's (a status callback names only that).
        message_id: Box<str>,
        status: ReceiptStatus,
        /// Why it failed, as the provider says (a `failed` receipt).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ProviderError>,
        /// With our `message_id`: the provider's id for it (from its answer to the request),
        /// so that its later receipts naming that id attach to our message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_id: Option<Box<str>>,
    },
    /// What became of a voice supervisor's media requests (the delivery worker reports it):
    /// all accepted (`error` none), or one refused for good.
    Media {
        conversation: ConversationRef,
        supervisor: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ProviderError>,
    },
    /// A sentiment score the provider computed for the customer.
    Sentiment {
        conversation: ConversationRef,
        score: f32,
    },
    /// Details changed on the provider (Chatwoot `conversation_updated`).
    Updated {
        conversation: ConversationRef,
        #[serde(default)]
        subject: Option<Box<str>>,
        #[serde(default)]
        queue: Option<QueueId>,
    },
    /// An agent's presence changed on the routing platform.
    AgentPresence { agent: AgentId, presence: Presence },
}

/// A provider's reason for a failed delivery, in the provider's words (Twilio `ErrorCode`
/// 30003, WhatsApp 131026): the timeline shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderError {
    pub code: Box<str>,
    pub text: Box<str>,
}

/// How an event names its conversation.
#[derive(Clone, Copy, Debug)]
pub enum EventConversation<'a> {
    /// By the plugin's thread: the events that may start a conversation.
    Thread(&'a ExternalRef),
    /// By a reference that must resolve to a conversation that exists.
    Reference(&'a ConversationRef),
}

impl EventBody {
    /// The conversation the event is about (`None` for an agent's presence).
    pub fn conversation(&self) -> Option<EventConversation<'_>> {
        match self {
            Self::Started { conversation, .. } | Self::Message { conversation, .. } => {
                Some(EventConversation::Thread(conversation))
            }
            Self::Accepted { conversation, .. }
            | Self::Paused { conversation }
            | Self::Resumed { conversation }
            | Self::AgentLeft { conversation, .. }
            | Self::CustomerLeft { conversation }
            | Self::Closed { conversation }
            | Self::Typing { conversation, .. }
            | Self::Receipt { conversation, .. }
            | Self::Sentiment { conversation, .. }
            | Self::Media { conversation, .. }
            | Self::Updated { conversation, .. } => {
                Some(EventConversation::Reference(conversation))
            }
            Self::AgentPresence { .. } => None,
        }
    }

    /// The channel kind the event says it is on (`started` and `message` do).
    pub fn channel(&self) -> Option<ChannelKind> {
        match self {
            Self::Started { channel, .. } | Self::Message { channel, .. } => Some(*channel),
            _ => None,
        }
    }
}

fn inbound() -> Direction {
    Direction::Inbound
}

fn public() -> Visibility {
    Visibility::Public
}

/// A conversation as a channel event names it: by the provider's thread (plugins) or by the
/// engine's id (routing platforms that learned it from a notification).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConversationRef {
    External(ExternalRef),
    Id { id: ConversationId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum Sender {
    Customer,
    Agent(AgentId),
    Bot(AgentId),
    System,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }
}

/// A role from the token's `realm_access.roles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Supervisor,
    Admin,
    Agent,
    Ingest,
}

/// Who issues a command: the verified identity from the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: UserId,
    pub roles: Vec<Role>,
    pub teams: Vec<TeamId>,
}

impl Actor {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }

    /// Supervisors and admins supervise.
    pub fn may_supervise(&self) -> bool {
        self.has(Role::Supervisor) || self.is_admin()
    }

    pub fn sees_team(&self, team: &TeamId) -> bool {
        self.is_admin() || self.teams.contains(team)
    }
}

/// A command's `Idempotency-Key` with a fingerprint of its body: the same key and body
/// replays the first reply; the same key with another body is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub key: Box<str>,
    pub fingerprint: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub actor: Actor,
    #[serde(default)]
    pub idempotency: Option<Idempotency>,
    pub action: Action,
}

/// What a supervisor, agent, admin or channel gateway asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Monitor {
        conversation: ConversationId,
    },
    StopMonitor {
        conversation: ConversationId,
    },
    Whisper {
        conversation: ConversationId,
        text: Arc<str>,
    },
    Join {
        conversation: ConversationId,
        mode: JoinMode,
    },
    Barge {
        conversation: ConversationId,
    },
    Message {
        conversation: ConversationId,
        text: Arc<str>,
        visibility: Visibility,
    },
    Leave {
        conversation: ConversationId,
    },
    Assign {
        conversation: ConversationId,
        target: AssignTarget,
        #[serde(default)]
        override_presence: bool,
        #[serde(default)]
        override_capacity: bool,
    },
    Transfer {
        conversation: ConversationId,
        agent: AgentId,
    },
    ForceClose {
        conversation: ConversationId,
        reason: Option<Box<str>>,
        confirm: bool,
    },
    SetPresence {
        agent: AgentId,
        presence: Presence,
    },
    /// Ends every seat `supervisor` holds: the daemon's lease keeper sends it when none of the
    /// supervisor's streams has been open for the monitor lease. Admins only.
    EndLapsedSeats {
        supervisor: UserId,
    },
}

impl Action {
    /// The conversation the action is about (`None` for an agent's presence and the seats
    /// sweep, which concern agents across conversations).
    pub fn conversation(&self) -> Option<ConversationId> {
        match self {
            Self::Monitor { conversation }
            | Self::StopMonitor { conversation }
            | Self::Whisper { conversation, .. }
            | Self::Join { conversation, .. }
            | Self::Barge { conversation }
            | Self::Message { conversation, .. }
            | Self::Leave { conversation }
            | Self::Assign { conversation, .. }
            | Self::Transfer { conversation, .. }
            | Self::ForceClose { conversation, .. } => Some(*conversation),
            Self::SetPresence { .. } | Self::EndLapsedSeats { .. } => None,
        }
    }

    /// A stable name for metrics and the timeline.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Monitor { .. } => "monitor",
            Self::StopMonitor { .. } => "stop-monitor",
            Self::Whisper { .. } => "whisper",
            Self::Join { .. } => "join",
            Self::Barge { .. } => "barge",
            Self::Message { .. } => "message",
            Self::Leave { .. } => "leave",
            Self::Assign { .. } => "assign",
            Self::Transfer { .. } => "transfer",
            Self::ForceClose { .. } => "force-close",
            Self::SetPresence { .. } => "set-presence",
            Self::EndLapsedSeats { .. } => "end-lapsed-seats",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignTarget {
    Agent(AgentId),
    Queue(QueueId),
}
