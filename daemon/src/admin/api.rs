//! The admin API's wire types: what `/v1` takes and answers, and what `/openapi.json` documents.
//! Kept apart from the engine's types on purpose: the engine may change shape, the contract
//! (README, "Admin API") may not. Times are RFC 3339 strings in UTC.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::report::{AgentSummary, ConversationSummary, QueueSummary};
use crate::engine::{Millis, Reply, TimelineEntry, TimelineEvent};

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Customer {
    pub id: String,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Sentiment {
    /// `positive`, `neutral` or `negative`; null before the customer wrote.
    #[schema(nullable = true)]
    pub label: Option<String>,
    /// Compound score in [-1, 1]; null before the customer wrote.
    #[schema(nullable = true)]
    pub score: Option<f32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SupervisorSeat {
    pub id: String,
    /// `monitor`, `whisper`, `consult-internal`, `consult-public` or `barge`.
    pub mode: String,
    pub since: String,
    /// On a call: the supervisor's media, `pending` until the provider accepted every request
    /// (snoop, the supervisor's leg), then `live`. A media request refused for good ends the
    /// session instead (timeline: `supervision-ended`, reason `media-failed`, with the error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
}

/// One row of the ongoing conversations report.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Conversation {
    /// `c-` and 20 hex digits.
    pub id: String,
    /// `web`, `sms`, `whatsapp`, `messaging` or `voice`.
    pub channel: String,
    pub plugin: String,
    /// `open`, `active`, `waiting`, `wrap-up` or `closed`.
    pub state: String,
    pub subject: Option<String>,
    pub customer: Customer,
    pub queue: String,
    /// The queue's display name from the roster.
    pub queue_name: Option<String>,
    pub team: Option<String>,
    pub agent: Option<String>,
    /// The agent's display name from the roster.
    pub agent_name: Option<String>,
    pub consultants: Vec<String>,
    pub created_at: String,
    pub accepted_at: Option<String>,
    pub last_activity_at: String,
    pub wait_seconds: u64,
    pub handle_seconds: u64,
    pub sentiment: Sentiment,
    /// Who monitors or has joined, and how.
    pub supervisors: Vec<SupervisorSeat>,
    /// Where the newest receipt left an outgoing message (the delivery worker's `sent` or
    /// `failed`, then the provider's `delivered`, `read`, `failed`); absent before any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<Delivery>,
    /// What the caller may do now, per action (`monitor`, `whisper`, `join`, `barge`,
    /// `message`, `leave`, `assign`, `transfer`, `force-close`): decided by a dry run of the
    /// engine's own rules. In the report and the conversation's details; not on the stream
    /// (read the conversation again when its event arrives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<std::collections::BTreeMap<String, ActionState>>,
}

/// Whether the caller may take one action now.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ActionState {
    pub allowed: bool,
    /// When not allowed: the rule's code (the same as the command's problem `code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// When not allowed: the rule's explanation, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `monitor-limit` and `barge-limit`: who holds the slots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<String>,
}

impl From<&Result<(), crate::engine::Refusal>> for ActionState {
    fn from(verdict: &Result<(), crate::engine::Refusal>) -> Self {
        match verdict {
            Ok(()) => Self {
                allowed: true,
                code: None,
                detail: None,
                holders: Vec::new(),
            },
            Err(refusal) => Self {
                allowed: false,
                code: Some(refusal.code.as_str().to_owned()),
                detail: Some(refusal.detail.clone()),
                holders: refusal
                    .holders
                    .iter()
                    .map(|holder| holder.as_str().to_owned())
                    .collect(),
            },
        }
    }
}

impl Conversation {
    /// The row with the caller's actions.
    pub fn with_actions(mut self, actions: &[crate::engine::report::ActionVerdict]) -> Self {
        self.actions = Some(
            actions
                .iter()
                .map(|verdict| (verdict.action.to_owned(), (&verdict.verdict).into()))
                .collect(),
        );
        self
    }
}

/// A possible agent for assign or transfer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AgentTarget {
    pub id: String,
    pub name: String,
    pub presence: String,
    pub capacity_used: u32,
    pub capacity_total: u32,
    #[serde(flatten)]
    pub verdict: ActionState,
}

/// A possible queue for assign.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct QueueTarget {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub verdict: ActionState,
}

/// Where the conversation could go, each target with the rule's verdict: assignment as asked
/// without overrides (a refusal names what `override_presence` / `override_capacity` would
/// bypass), transfer as the rules allow it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Targets {
    pub assign_agents: Vec<AgentTarget>,
    pub assign_queues: Vec<QueueTarget>,
    pub transfer_agents: Vec<AgentTarget>,
}

/// An outgoing message's delivery state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The message's request id (the timeline's receipts name it as `message_id`).
    pub message_id: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
}

impl From<ConversationSummary> for Conversation {
    fn from(summary: ConversationSummary) -> Self {
        Self {
            id: summary.id.to_string(),
            channel: summary.channel.as_str().to_owned(),
            plugin: summary.plugin.as_str().to_owned(),
            state: summary.state.as_str().to_owned(),
            subject: summary.subject.map(String::from),
            customer: Customer {
                id: summary.customer.id.into(),
                name: summary.customer.name.map(String::from),
            },
            queue: summary.queue.as_str().to_owned(),
            queue_name: summary.queue_name.map(String::from),
            team: summary.team.map(|team| team.as_str().to_owned()),
            agent: summary.agent.map(|agent| agent.as_str().to_owned()),
            agent_name: summary.agent_name.map(String::from),
            consultants: summary
                .consultants
                .iter()
                .map(|agent| agent.as_str().to_owned())
                .collect(),
            created_at: summary.created_at.rfc3339(),
            accepted_at: summary.accepted_at.map(Millis::rfc3339),
            last_activity_at: summary.last_activity_at.rfc3339(),
            wait_seconds: summary.wait_seconds,
            handle_seconds: summary.handle_seconds,
            sentiment: Sentiment {
                label: summary.sentiment.label.map(str::to_owned),
                score: summary.sentiment.score,
            },
            supervisors: summary
                .supervisors
                .iter()
                .map(|seat| SupervisorSeat {
                    id: seat.id.as_str().to_owned(),
                    mode: seat.mode.as_str().to_owned(),
                    since: seat.since.rfc3339(),
                    media: seat.media.map(|media| media.as_str().to_owned()),
                })
                .collect(),
            last_delivery: summary
                .last_delivery
                .as_ref()
                .map(|(message_id, status)| Delivery {
                    message_id: message_id.to_string(),
                    status: status.as_str().to_owned(),
                }),
            actions: None,
        }
    }
}

/// The ongoing conversations report.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    /// Rows on this page.
    pub count: usize,
    /// Rows in the whole walk (every page of it).
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The stream position the walk reflects: `GET /v1/stream` with `Last-Event-ID` set to it
    /// misses nothing the caller may see since, and repeats nothing. Opaque.
    pub stream_id: String,
    /// The server's clock when the walk began (RFC 3339, milliseconds), so that ticking
    /// timers follow the server's clock, not the browser's.
    pub server_time: String,
}

/// Someone taking part in a conversation.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Participant {
    pub id: String,
    /// `customer`, `agent`, `consultant` or `supervisor`.
    pub role: String,
    /// For supervisors: how they take part.
    pub mode: Option<String>,
}

/// One timeline line: `event` names it, `details` carries its fields.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TimelineLine {
    pub at: String,
    /// `public`, `internal` or `whisper`.
    pub visibility: String,
    /// e.g. `created`, `message`, `whisper`, `state-changed`, `supervision-started`,
    /// `assigned-to-agent`, `force-closed`.
    pub event: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<&TimelineEntry> for TimelineLine {
    fn from(entry: &TimelineEntry) -> Self {
        let mut details = serde_json::to_value(entry).unwrap_or_default();
        let mut take = |key: &str| {
            details
                .as_object_mut()
                .and_then(|object| object.remove(key))
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let event = take("event");
        let visibility = take("visibility");
        if let Some(object) = details.as_object_mut() {
            object.remove("conversation");
            object.remove("at");
            // Every time the API shows is RFC 3339, those inside details too.
            if let TimelineEvent::SupervisionEnded { started_at, .. } = &entry.event {
                object.insert("started_at".to_owned(), started_at.rfc3339().into());
            }
        }
        Self {
            at: entry.at.rfc3339(),
            visibility,
            event,
            details,
        }
    }
}

/// A timeline entry on the live stream (`event: timeline`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TimelineItem {
    pub conversation: String,
    #[serde(flatten)]
    pub line: TimelineLine,
}

/// One conversation with its participants and timeline.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub participants: Vec<Participant>,
    pub timeline: Vec<TimelineLine>,
    pub targets: Targets,
    /// The stream position this answer reflects (as in the report).
    pub stream_id: String,
    pub server_time: String,
}

/// What a supervision command answers.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CommandResult {
    pub conversation: Option<String>,
    /// The conversation's state afterwards.
    pub state: Option<String>,
    /// Checks bypassed on request (`presence`, `capacity`), audited on the timeline.
    pub overrides: Vec<String>,
    /// Units by which the agent's capacity is now exceeded, if it is.
    pub capacity_exceeded_by: Option<u32>,
    /// This answer replays an earlier one (same `Idempotency-Key` and body).
    pub replayed: bool,
}

impl From<Reply> for CommandResult {
    fn from(reply: Reply) -> Self {
        Self {
            conversation: reply.conversation.map(|id| id.to_string()),
            state: reply.state.map(|state| state.as_str().to_owned()),
            overrides: reply
                .overrides
                .iter()
                .map(|check| match check {
                    crate::engine::Override::Presence { .. } => "presence".to_owned(),
                    crate::engine::Override::Capacity { .. } => "capacity".to_owned(),
                })
                .collect(),
            capacity_exceeded_by: reply.capacity_exceeded_by,
            replayed: reply.replayed,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Agent {
    pub id: String,
    pub name: String,
    /// `available`, `busy`, `away`, `offline` …
    pub presence: String,
    pub capacity_used: u32,
    pub capacity_total: u32,
    pub queues: Vec<String>,
    pub teams: Vec<String>,
    pub bot: bool,
}

impl From<AgentSummary> for Agent {
    fn from(agent: AgentSummary) -> Self {
        Self {
            id: agent.id.as_str().to_owned(),
            name: agent.name.into(),
            presence: agent.presence.as_str().to_owned(),
            capacity_used: agent.capacity_used,
            capacity_total: agent.capacity_total,
            queues: agent.queues.iter().map(|q| q.as_str().to_owned()).collect(),
            teams: agent.teams.iter().map(|t| t.as_str().to_owned()).collect(),
            bot: agent.bot,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
    pub total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub server_time: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Queue {
    pub id: String,
    pub name: String,
    pub team: String,
    pub allowed_presences: Vec<String>,
    /// Ongoing conversations waiting in it without an agent.
    pub waiting: u32,
    /// How long the one waiting longest has waited.
    pub longest_wait_seconds: u64,
    pub average_wait_seconds: u64,
    /// Agents who serve it, in a presence it assigns to, with free capacity.
    pub agents_available: u32,
}

impl From<QueueSummary> for Queue {
    fn from(queue: QueueSummary) -> Self {
        Self {
            id: queue.id.as_str().to_owned(),
            name: queue.name.into(),
            team: queue.team.as_str().to_owned(),
            allowed_presences: queue
                .allowed_presences
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            waiting: queue.waiting,
            longest_wait_seconds: queue.longest_wait_seconds,
            average_wait_seconds: queue.average_wait_seconds,
            agents_available: queue.agents_available,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<Queue>,
    pub total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub server_time: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PluginCounters {
    pub decodes: u64,
    pub encodes: u64,
    pub plugin_errors: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub out_of_memory: u64,
    pub rejected_by_breaker: u64,
    pub reloads: u64,
    pub mean_call_micros: f64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PluginInfo {
    pub id: String,
    pub channel: String,
    pub version: String,
    pub api_version: String,
    /// SHA-256 of the component in use.
    pub hash: String,
    pub voice_controls: bool,
    /// Whether its configuration holds the secret that authenticates its provider's webhooks
    /// (the webhook door refuses an unsigned plugin unless it is allowed).
    pub webhook_signed: bool,
    /// The names of its `[plugins.<id>.secrets]` (never their values).
    pub secrets: Vec<String>,
    /// `healthy`, `degraded` or `unhealthy` (circuit breaker open).
    pub health: String,
    pub counters: PluginCounters,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginInfo>,
}

/// `POST /v1/inbound/{plugin}` accepted the payload: it is durable.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InboundAccepted {
    /// Canonical events the payload became.
    pub events: usize,
    /// Of those, the ones applied before (a resent payload): they changed nothing.
    pub duplicates: usize,
    /// Every event was a duplicate: the payload had been received before.
    pub duplicate: bool,
    /// The conversations its events belong to.
    pub conversations: Vec<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ComponentState {
    /// `up`, `down` or `not-configured`.
    pub status: String,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PluginHealth {
    pub id: String,
    pub health: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReadinessReport {
    pub ready: bool,
    pub store: ComponentState,
    pub broker: ComponentState,
    pub plugins: Vec<PluginHealth>,
    /// Cluster mode only: this node and the partitions it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterNode>,
}

/// A cluster node as `/readyz` shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClusterNode {
    pub node_id: String,
    /// The cluster's partition count.
    pub partitions: u32,
    /// The partitions this node serves now, each with its lease's epoch.
    pub owned: Vec<OwnedPartition>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OwnedPartition {
    pub partition: u32,
    /// Grows on every take-over of the partition.
    pub epoch: u64,
}

// ---- request bodies ----------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhisperBody {
    #[schema(min_length = 1, pattern = "\\S")]
    pub text: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinModeBody {
    #[default]
    Internal,
    Public,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    #[serde(default)]
    pub mode: JoinModeBody,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VisibilityBody {
    #[default]
    Internal,
    Public,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    #[schema(min_length = 1, pattern = "\\S")]
    pub text: String,
    #[serde(default)]
    pub visibility: VisibilityBody,
}

/// Exactly one of `agent` and `queue`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    pub agent: Option<String>,
    pub queue: Option<String>,
    #[serde(default)]
    pub override_presence: bool,
    #[serde(default)]
    pub override_capacity: bool,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    #[schema(min_length = 1)]
    pub agent: String,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceCloseBody {
    pub reason: Option<String>,
    /// Must be `true`: force-closing ends the customer's conversation.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    /// `available`, `busy`, `away`, `offline` …
    pub presence: String,
}

/// Filters, order and paging of the ongoing conversations report. Repeat a filter for
/// alternatives (`queue=a&queue=b`); different filters all apply.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    #[param(inline)]
    pub state: Option<Vec<OngoingState>>,
    pub queue: Option<Vec<String>>,
    #[param(inline)]
    pub channel: Option<Vec<Channel>>,
    pub agent: Option<Vec<String>>,
    /// `me`: only conversations the caller monitors or has joined.
    #[param(inline)]
    pub supervised_by: Option<SupervisedBy>,
    /// Text the customer's name or id, or the subject, contains (case-insensitive).
    pub q: Option<String>,
    /// Order: `created`, `wait`, `handle`, `sentiment`, each ascending, or with `-`
    /// descending. Default `-created` (newest first).
    #[param(inline)]
    pub sort: Option<ReportSortParam>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Paging of the roster lists.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SupervisedBy {
    Me,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
pub enum ReportSortParam {
    #[serde(rename = "created")]
    Created,
    #[serde(rename = "-created")]
    CreatedDescending,
    #[serde(rename = "wait")]
    Wait,
    #[serde(rename = "-wait")]
    WaitDescending,
    #[serde(rename = "handle")]
    Handle,
    #[serde(rename = "-handle")]
    HandleDescending,
    #[serde(rename = "sentiment")]
    Sentiment,
    #[serde(rename = "-sentiment")]
    SentimentDescending,
}

/// `POST /v1/stream/ticket`: a single-use ticket for `GET /v1/stream?ticket=…`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StreamTicket {
    pub ticket: String,
    /// Seconds until it can no longer be used.
    pub expires_in: u64,
}

/// The states the ongoing conversations report shows.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OngoingState {
    Open,
    Active,
    Waiting,
    WrapUp,
}

impl From<OngoingState> for crate::engine::ConversationState {
    fn from(state: OngoingState) -> Self {
        match state {
            OngoingState::Open => Self::Open,
            OngoingState::Active => Self::Active,
            OngoingState::Waiting => Self::Waiting,
            OngoingState::WrapUp => Self::WrapUp,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Web,
    Sms,
    Whatsapp,
    Messaging,
    Voice,
}

impl From<Channel> for crate::engine::ChannelKind {
    fn from(channel: Channel) -> Self {
        match channel {
            Channel::Web => Self::Web,
            Channel::Sms => Self::Sms,
            Channel::Whatsapp => Self::Whatsapp,
            Channel::Messaging => Self::Messaging,
            Channel::Voice => Self::Voice,
        }
    }
}

/// Paging of `GET /v1/outbox`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// Entries after this id (the previous page's `next_after`).
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OutboxItem {
    /// The CloudEvents id (stable across re-publication).
    pub id: String,
    pub routing_key: String,
    pub event_type: String,
    pub subject: Option<String>,
    pub time: String,
    pub content_type: String,
    /// `[name, value]` pairs: `switchboard-method`, `switchboard-url`, provider headers.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// The body as text (UTF-8, lossy).
    pub body: String,
}

impl From<crate::store::OutboxEntry> for OutboxItem {
    fn from(entry: crate::store::OutboxEntry) -> Self {
        Self {
            body: String::from_utf8_lossy(&entry.body).into_owned(),
            id: entry.id,
            routing_key: entry.routing_key,
            event_type: entry.event_type,
            subject: entry.subject,
            time: entry.time.rfc3339(),
            content_type: entry.content_type,
            headers: entry.headers,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OutboxPage {
    pub entries: Vec<OutboxItem>,
    /// Pass as `after` for the next page.
    pub next_after: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadQuery {
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A provider request the delivery worker gave up on.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeadDeliveryItem {
    /// The request as the plugin encoded it (credentials as `{{secret:NAME}}` placeholders).
    pub request: OutboxItem,
    /// `delivery-failed` (attempts or age ran out), `egress-refused`, or the provider's own
    /// code of a permanent refusal (Twilio `21610`, WhatsApp `131047`).
    pub code: String,
    pub detail: String,
    pub attempts: u32,
    pub failed_at: String,
}

impl From<crate::store::DeadDelivery> for DeadDeliveryItem {
    fn from(dead: crate::store::DeadDelivery) -> Self {
        Self {
            request: OutboxItem::from(dead.entry),
            code: dead.code,
            detail: dead.detail,
            attempts: dead.attempts,
            failed_at: dead.failed_at.rfc3339(),
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeadDeliveries {
    pub deliveries: Vec<DeadDeliveryItem>,
}

/// Which dead deliveries to send again.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendBody {
    /// Request ids (`request.id` of `GET /v1/deliveries/dead`); absent: all of them.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Resent {
    /// The ids now back in the delivery worker's queue.
    pub resent: Vec<String>,
}

/// A canonical event, the body of `POST /v1/inbound/canonical` (and of AMQP messages routed
/// `canonical`): what a routing platform or gateway reports without a plugin. The fields a
/// `type` takes are those of its kind; an event that cannot be true (a plugin that is not
/// configured, a channel the plugin does not carry, an agent of another team) is refused with
/// a coded 422.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct CanonicalEvent {
    /// Deduplication: the same id twice changes nothing the second time.
    pub id: Option<String>,
    /// Always `canonical`.
    pub source: String,
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: CanonicalType,
    /// The conversation: `{"plugin": "...", "key": "..."}` (a plugin's thread) or
    /// `{"id": "c-..."}` (Switchboard's id). Not for `agent-presence`.
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<serde_json::Value>,
    /// `started`, `message`: the channel kind, which must be the plugin's.
    #[schema(inline)]
    pub channel: Option<Channel>,
    /// `started`: `{"id": "...", "name": "..."}`; `message`: the customer of a message that
    /// may start the conversation.
    #[schema(value_type = Option<Object>)]
    pub customer: Option<serde_json::Value>,
    /// `started`, `updated`: the queue it is routed to.
    pub queue: Option<String>,
    /// `started`, `updated`.
    pub subject: Option<String>,
    /// `message`, `typing`: `{"kind": "customer"}`, `{"kind": "agent", "id": "a-17"}`,
    /// `{"kind": "bot", "id": "..."}` or `{"kind": "system"}`.
    #[schema(value_type = Option<Object>)]
    pub sender: Option<serde_json::Value>,
    /// `message`.
    pub text: Option<String>,
    /// `accepted`, `agent-left`, `agent-presence`: the agent, of a queue or team of the
    /// conversation's team.
    pub agent: Option<String>,
    /// `agent-presence`: `available`, `busy`, `do-not-disturb`, `away`, `offline`.
    pub presence: Option<String>,
}

/// The kinds of canonical events.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CanonicalType {
    Started,
    Message,
    Accepted,
    Paused,
    Resumed,
    AgentLeft,
    CustomerLeft,
    Closed,
    Typing,
    Receipt,
    Sentiment,
    Updated,
    AgentPresence,
}
