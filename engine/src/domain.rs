//! Engine step 0: the vocabulary of supervision — identifiers, conversation states, channels,
//! presences, participants — shared by inputs, state, effects and the report.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. The engine never reads a clock: time arrives as a value
/// with every input, which is what makes replay exact.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub const SECOND: i64 = 1_000;
    pub const MINUTE: i64 = 60 * Self::SECOND;
    pub const HOUR: i64 = 60 * Self::MINUTE;

    /// Whole seconds from `self` to `later`, never negative.
    pub fn seconds_until(self, later: Millis) -> u64 {
        u64::try_from((later.0 - self.0).max(0) / Self::SECOND).unwrap_or(0)
    }

    pub fn plus(self, millis: i64) -> Millis {
        Millis(self.0.saturating_add(millis))
    }

    /// RFC 3339 in UTC with milliseconds (`2025-06-08T20:59:43.123Z`): the one formatter of
    /// every time Switchboard writes (API answers, timeline details, CloudEvents `time`).
    pub fn rfc3339(self) -> String {
        let seconds = self.0.div_euclid(1000);
        let milli = self.0.rem_euclid(1000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        // Howard Hinnant's civil-from-days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let year = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = if month <= 2 { year + 1 } else { year };
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            second_of_day / 3600,
            second_of_day % 3600 / 60,
            second_of_day % 60
        )
    }
}

#[cfg(test)]
mod millis_tests {
    use super::Millis;

    #[test]
    fn rfc3339_from_unix_millis() {
        assert_eq!(Millis(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(1_749_416_383_123).rfc3339(),
            "2025-06-08T20:59:43.123Z"
        );
        assert_eq!(
            Millis(951_782_400_000).rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(Millis(-1).rfc3339(), "1969-12-31T23:59:59.999Z");
    }
}

macro_rules! shared_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (a shared string): ids are copied into every change, timeline entry and
        /// notification, and the roster's allocation is reused by every conversation.
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl $name {
            pub fn new(value: impl Into<Arc<str>>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.into())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

shared_id!(
    /// An agent of the roster (also the `sub` of the agent's token).
    AgentId
);
shared_id!(
    /// A queue of the roster.
    QueueId
);
shared_id!(
    /// A team: the unit of supervisor scoping (Keycloak group name without the leading `/`).
    TeamId
);
shared_id!(
    /// A channel plugin's id, e.g. `sms-twilio`.
    PluginId
);
shared_id!(
    /// A person acting through the admin API: the `sub` of the token.
    UserId
);

/// The engine's own conversation id: 80 bits of a stable hash, written `c-` and 20 lowercase
/// hex digits. Opaque and URL-safe outside; inside, an integer that is copied and compared
/// without touching the heap (ids are on every change, timeline entry and lookup).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConversationId(u128);

impl ConversationId {
    /// Hex digits after the `c-` prefix.
    const DIGITS: usize = 20;

    /// The id for a 128-bit key (only its low 80 bits are kept).
    pub fn from_key(key: u128) -> Self {
        Self(key & ((1u128 << (4 * Self::DIGITS)) - 1))
    }

    /// The integer the engine indexes conversations by.
    pub fn key(self) -> u128 {
        self.0
    }

    /// Parses the external form; `None` for anything that is not an engine id (such a
    /// conversation does not exist).
    pub fn parse(id: &str) -> Option<Self> {
        // A direct loop: several times faster than `u128::from_str_radix`.
        let hex = id.strip_prefix("c-")?.as_bytes();
        if hex.len() != Self::DIGITS {
            return None;
        }
        let mut key = 0u128;
        for &digit in hex {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => return None,
            };
            key = (key << 4) | u128::from(value);
        }
        Some(Self(key))
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c-{:020x}", self.0)
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a conversation id (c- and 20 hex digits)"
            ))
        })
    }
}

/// Where conversations live in a cluster of `count` partitions, and which one an engine
/// serves. A thread's partition is a stable hash of its plugin and key, known before any
/// engine runs (the node that decodes an inbound message routes by it); the engine of that
/// partition gives the conversation an id in the partition's residue class (`key mod count`),
/// so that a command naming `c-…` finds its partition without a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitioning {
    /// The partition this engine serves, below `count`.
    pub partition: u32,
    pub count: u32,
}

impl Partitioning {
    /// The partition of a thread of `plugin`. Stable across versions and machines: changing
    /// it would move live conversations.
    pub fn of_thread(count: u32, plugin: &str, key: &str) -> u32 {
        let hash = stable_key(&[b"partition", plugin.as_bytes(), key.as_bytes()]);
        (hash % u128::from(count.max(1))) as u32
    }

    /// The partition of a conversation, from its id alone.
    pub fn of_conversation(count: u32, id: ConversationId) -> u32 {
        (id.key() % u128::from(count.max(1))) as u32
    }

    /// `id` moved into this partition's residue class, staying within the id's 80 bits.
    pub(crate) fn place(self, id: ConversationId) -> ConversationId {
        let count = u128::from(self.count.max(1));
        let key = id.key();
        let mut placed = key - key % count + u128::from(self.partition);
        if placed >= 1 << (4 * ConversationId::DIGITS) {
            placed -= count;
        }
        ConversationId::from_key(placed)
    }
}

/// A stable 128-bit key for deduplication, idempotency and indexes (xxh3 is specified, so
/// keys written to the log by one build are found by the next).
pub(crate) fn stable_key(parts: &[&[u8]]) -> u128 {
    // Each part is prefixed by its length so that ("ab", "c") and ("a", "bc") differ. Short
    // inputs (ids, thread keys: the hot path) are framed on the stack and hashed in one shot,
    // which is several times cheaper than the streaming hasher.
    let mut buffer = [0u8; 256];
    let mut used = 0;
    for part in parts {
        let end = used + 8 + part.len();
        if end > buffer.len() {
            return stable_key_streaming(parts);
        }
        buffer[used..used + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
        buffer[used + 8..end].copy_from_slice(part);
        used = end;
    }
    xxhash_rust::xxh3::xxh3_128(&buffer[..used])
}

fn stable_key_streaming(parts: &[&[u8]]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest128()
}

/// How a conversation is known to the provider: the plugin that carries it and the plugin's own
/// thread key (a Chatwoot conversation id, the customer's phone number, an Asterisk channel id).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExternalRef {
    pub plugin: PluginId,
    pub key: Box<str>,
}

impl ExternalRef {
    /// The index key of the thread: hashing once and comparing integers keeps string
    /// comparisons (and the cache misses behind them) off the message path.
    pub fn thread_key(&self) -> u128 {
        stable_key(&[self.plugin.as_bytes(), self.key.as_bytes()])
    }
}

/// Conversation lifecycle; `closed` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConversationState {
    /// Queued, no agent.
    Open,
    /// An agent accepted it; holds the agent's capacity.
    Active,
    /// Agent or customer paused; releases capacity.
    Waiting,
    /// Customer gone, agent finishing; capacity blocked per policy.
    WrapUp,
    Closed,
}

impl ConversationState {
    pub const ALL: [ConversationState; 5] = [
        Self::Open,
        Self::Active,
        Self::Waiting,
        Self::WrapUp,
        Self::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Active => "active",
            Self::Waiting => "waiting",
            Self::WrapUp => "wrap-up",
            Self::Closed => "closed",
        }
    }

    /// The states listed by the ongoing conversations report.
    pub fn is_ongoing(self) -> bool {
        self != Self::Closed
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == value)
    }
}

impl fmt::Display for ConversationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of channel a conversation runs on; policies are keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    Web,
    Sms,
    Whatsapp,
    Messaging,
    Voice,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [
        Self::Web,
        Self::Sms,
        Self::Whatsapp,
        Self::Messaging,
        Self::Voice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::Sms => "sms",
            Self::Whatsapp => "whatsapp",
            Self::Messaging => "messaging",
            Self::Voice => "voice",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value per channel kind, indexed without hashing (policies are read on every input).
#[derive(Clone, Debug, PartialEq)]
pub struct PerChannel<T>(pub [T; 5]);

impl<T> PerChannel<T> {
    pub fn get(&self, kind: ChannelKind) -> &T {
        &self.0[kind.index()]
    }

    pub fn get_mut(&mut self, kind: ChannelKind) -> &mut T {
        &mut self.0[kind.index()]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Agent presence, as the routing platform or the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    Available,
    Busy,
    DoNotDisturb,
    Away,
    Offline,
}

impl Presence {
    pub const ALL: [Presence; 5] = [
        Self::Available,
        Self::Busy,
        Self::DoNotDisturb,
        Self::Away,
        Self::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::DoNotDisturb => "do-not-disturb",
            Self::Away => "away",
            Self::Offline => "offline",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|presence| presence.as_str() == value)
    }
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a supervisor takes part, in escalation order: monitor -> whisper -> consult/barge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupervisionMode {
    /// Silent monitoring: nobody is told.
    Monitor,
    /// Monitoring and coaching the agent; the customer never hears or sees it.
    Whisper,
    /// Joined as consultant, visible to the agent only.
    ConsultInternal,
    /// Joined as consultant, visible to the customer too.
    ConsultPublic,
    /// Took over publicly from a monitor session.
    Barge,
}

impl SupervisionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Whisper => "whisper",
            Self::ConsultInternal => "consult-internal",
            Self::ConsultPublic => "consult-public",
            Self::Barge => "barge",
        }
    }

    /// Listening without taking part: these take a monitor slot.
    pub fn is_listening(self) -> bool {
        matches!(self, Self::Monitor | Self::Whisper)
    }

    /// Joined (consultant or barge): the agent knows, and the supervisor may write.
    pub fn is_joined(self) -> bool {
        !self.is_listening()
    }

    /// May write to the customer.
    pub fn is_public(self) -> bool {
        matches!(self, Self::ConsultPublic | Self::Barge)
    }
}

/// Join mode of `POST /v1/conversations/{id}/join`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinMode {
    #[default]
    Internal,
    Public,
}

impl JoinMode {
    pub fn supervision_mode(self) -> SupervisionMode {
        match self {
            Self::Internal => SupervisionMode::ConsultInternal,
            Self::Public => SupervisionMode::ConsultPublic,
        }
    }
}

/// Who can read a message or timeline entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// Part of the customer-visible record.
    Public,
    /// Agents and supervisors of the conversation.
    Internal,
    /// The agent and the whispering supervisor only.
    Whisper,
}

/// The customer of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: Box<str>,
    pub name: Option<Box<str>>,
}

/// A supervisor's seat on a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub supervisor: UserId,
    pub mode: SupervisionMode,
    /// When this supervisor started taking part (survives escalation).
    pub since: Millis,
    /// On a call: whether the supervisor's media (snoop, leg, bridge) is up yet. A media
    /// request that fails ends the seat instead (`media-failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaState>,
}

/// Where a voice supervisor's media stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediaState {
    /// Requested; the provider has not confirmed every request yet.
    Pending,
    /// Every request of the latest media control was accepted by the provider.
    Live,
}

impl MediaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Live => "live",
        }
    }
}

/// Customer sentiment: an exponential moving average of per-message compound scores in
/// [-1, 1], so that the report follows how the customer feels now rather than on average.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    pub score: f32,
    pub samples: u32,
}

impl Sentiment {
    /// Weight of the newest message; VADER scores single messages noisily, so the average
    /// keeps most of the history.
    const ALPHA: f32 = 0.4;
    /// VADER's own thresholds for a neutral compound score.
    const NEUTRAL_BAND: f32 = 0.05;

    pub fn observe(&mut self, score: f32) {
        let score = if score.is_finite() {
            score.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        self.score = if self.samples == 0 {
            score
        } else {
            Self::ALPHA * score + (1.0 - Self::ALPHA) * self.score
        };
        self.samples = self.samples.saturating_add(1);
    }

    /// `positive`, `neutral` or `negative`; `None` before the customer wrote anything.
    pub fn label(&self) -> Option<&'static str> {
        if self.samples == 0 {
            None
        } else if self.score >= Self::NEUTRAL_BAND {
            Some("positive")
        } else if self.score <= -Self::NEUTRAL_BAND {
            Some("negative")
        } else {
            Some("neutral")
        }
    }
}

/// Capacity a conversation holds on an agent; released exactly as held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityHold {
    pub agent: AgentId,
    pub units: u32,
}

/// One conversation as the engine keeps it. Message text and the timeline are not kept here:
/// they are effects for the store, so an ongoing conversation costs a few hundred bytes.
///
/// `repr(C)` keeps the declared order: the fields a message touches (id, activity, sentiment,
/// seats, state) share the first cache line, so a message costs one miss, not several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[repr(C)]
pub struct Conversation {
    pub id: ConversationId,
    pub last_activity: Millis,
    pub sentiment: Sentiment,
    pub seats: Vec<Seat>,
    pub state: ConversationState,
    pub channel: ChannelKind,
    pub direction: Direction,
    pub external: ExternalRef,
    pub subject: Option<Box<str>>,
    pub customer: Customer,
    pub queue: QueueId,
    /// The primary agent.
    pub agent: Option<AgentId>,
    /// Agents that stay as consultants (a transfer keeps the previous agent).
    pub consultants: Vec<AgentId>,
    pub created_at: Millis,
    pub accepted_at: Option<Millis>,
    pub wrap_up_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// When the customer last wrote (WhatsApp's 24-hour window counts from it).
    pub last_customer_message: Option<Millis>,
    pub capacity: Option<CapacityHold>,
    /// The provider's ids of our recent outgoing messages, with ours (newest last, at most
    /// [`Conversation::PROVIDER_IDS_KEPT`]): a status callback names only the provider's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provider_ids: Vec<(Box<str>, Box<str>)>,
    /// The newest delivery receipt of an outgoing message: which message, and where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<(Box<str>, crate::input::ReceiptStatus)>,
}

impl Conversation {
    /// Provider ids kept per conversation: status callbacks come within minutes, and a
    /// conversation's state must stay small.
    pub const PROVIDER_IDS_KEPT: usize = 64;

    /// Our id for the message the provider calls `provider_id`, if it is one of ours.
    pub fn message_of(&self, provider_id: &str) -> Option<&str> {
        self.provider_ids
            .iter()
            .rev()
            .find(|(provider, _)| &**provider == provider_id)
            .map(|(_, ours)| &**ours)
    }

    pub fn seat(&self, supervisor: &UserId) -> Option<&Seat> {
        self.seats
            .iter()
            .find(|seat| &seat.supervisor == supervisor)
    }

    /// Whether `user` takes part already, as supervisor, primary agent or consultant.
    pub fn involves(&self, user: &str) -> bool {
        self.agent
            .as_ref()
            .is_some_and(|agent| agent.as_str() == user)
            || self.consultants.iter().any(|agent| agent.as_str() == user)
            || self
                .seats
                .iter()
                .any(|seat| seat.supervisor.as_str() == user)
    }

    pub fn listening_seats(&self) -> impl Iterator<Item = &Seat> {
        self.seats.iter().filter(|seat| seat.mode.is_listening())
    }
}

/// An agent as the roster describes it plus what changes at run time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: Box<str>,
    pub presence: Presence,
    /// Total capacity units.
    pub capacity: u32,
    /// Units held by conversations right now.
    pub used: u32,
    /// Units held by conversations that other engines hold (a cluster's other partitions), as
    /// last told ([`crate::Input::LoadsElsewhere`]); 0 for a single engine.
    #[serde(default)]
    pub elsewhere: u32,
    pub queues: Vec<QueueId>,
    pub teams: Vec<TeamId>,
    pub bot: bool,
}

impl Agent {
    /// Units held, here and elsewhere.
    pub fn held(&self) -> u32 {
        self.used + self.elsewhere
    }

    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.held())
    }
}

/// A queue of the roster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub id: QueueId,
    pub name: Box<str>,
    pub team: TeamId,
    /// Presences an agent may have to be assigned from this queue.
    pub allowed_presences: Vec<Presence>,
}

/// A team of the roster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: TeamId,
    pub name: Box<str>,
    /// The identity provider's groups (whole paths or bare names) that grant this team.
    pub groups: Vec<Box<str>>,
}
