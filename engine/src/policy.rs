//! Engine step 0: what the engine is configured with — the roster (teams, queues, agents),
//! the channel plugins it knows, and the per-channel policies where the platforms we learn from
//! disagree. Built by `config` from TOML; read-only for the engine.

use std::collections::HashMap;

use super::domain::{
    Agent, ChannelKind, PerChannel, PluginId, Queue, QueueId, Team, TeamId, UserId,
};

/// How long a conversation in `wrap-up` keeps blocking the agent's capacity (D365's
/// "block capacity for wrap-up" setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapUpCapacity {
    /// Until the conversation closes.
    Always,
    /// Released when wrap-up starts.
    Never,
    /// Released after this many milliseconds in wrap-up, or at close if that is earlier.
    For(i64),
}

/// Rules that differ between platforms, chosen per channel kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelPolicy {
    /// Supervisors listening at once (monitor or whisper). Genesys allows 1 on voice,
    /// Amazon Connect 2 on voice and 5 on chat.
    pub monitor_limit: u32,
    /// Whether the agent is told when silent monitoring starts (Genesys and Expertflow: no).
    pub tell_agent_on_monitor: bool,
    /// Whether a supervisor may transfer (D365 keeps voice transfers to the telephony side).
    pub transfer: bool,
    /// Capacity units one conversation of this channel takes while `active`.
    pub capacity_units: u32,
    pub wrap_up_capacity: WrapUpCapacity,
    /// Channels without an end event (SMS, WhatsApp) close after this much silence.
    pub inactivity_timeout: Option<i64>,
}

impl ChannelPolicy {
    /// The defaults, with their sources in the engine issue's rule table.
    pub fn default_for(kind: ChannelKind) -> Self {
        let inactivity_timeout = match kind {
            // Meta's customer service window.
            ChannelKind::Whatsapp => Some(24 * super::Millis::HOUR),
            // Twilio keeps no session; two hours of silence ends the conversation.
            ChannelKind::Sms => Some(2 * super::Millis::HOUR),
            _ => None,
        };
        Self {
            monitor_limit: if kind == ChannelKind::Voice { 1 } else { 5 },
            tell_agent_on_monitor: false,
            transfer: kind != ChannelKind::Voice,
            capacity_units: 1,
            wrap_up_capacity: WrapUpCapacity::Always,
            inactivity_timeout,
        }
    }
}

/// What the engine knows about a channel plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginPolicy {
    pub id: PluginId,
    pub channel: ChannelKind,
    /// Where a new conversation lands when its event names no queue.
    pub default_queue: QueueId,
    /// The plugin declared the voice-controls capability (snoop, whisper, barge).
    pub voice_controls: bool,
    /// With voice controls: the supervisors the plugin's configuration gives a media endpoint
    /// (a phone to ring); `None`: every supervisor.
    pub media_supervisors: Option<Vec<UserId>>,
}

/// Everything the engine is built from. Validated by `config` so that every id it refers to
/// exists; [`Setup::check`] repeats the check for setups built in code.
#[derive(Clone, Debug)]
pub struct Setup {
    pub teams: Vec<Team>,
    pub queues: Vec<Queue>,
    pub agents: Vec<Agent>,
    pub plugins: Vec<PluginPolicy>,
    pub policies: PerChannel<ChannelPolicy>,
    /// How many input ids are remembered for deduplication (a bounded window: older
    /// duplicates are caught by the store's idempotency table).
    pub dedup_window: usize,
    /// How long a closed conversation stays readable in the engine before it is evicted.
    pub closed_retention: i64,
    /// How long a command's idempotency key replays its first reply.
    pub idempotency_ttl: i64,
    /// In a cluster, the partition this engine serves (its conversations' ids fall in it);
    /// `None` for the one process that serves everything.
    pub partitioning: Option<crate::domain::Partitioning>,
}

impl Setup {
    pub fn default_policies() -> PerChannel<ChannelPolicy> {
        PerChannel(ChannelKind::ALL.map(ChannelPolicy::default_for))
    }

    /// Every dangling reference in the setup, as sentences.
    pub fn check(&self) -> Vec<String> {
        let teams: Vec<&TeamId> = self.teams.iter().map(|team| &team.id).collect();
        let queues: Vec<&QueueId> = self.queues.iter().map(|queue| &queue.id).collect();
        let mut problems = Vec::new();
        for queue in &self.queues {
            if !teams.contains(&&queue.team) {
                problems.push(format!(
                    "queue {} names unknown team {}",
                    queue.id, queue.team
                ));
            }
        }
        for agent in &self.agents {
            for queue in &agent.queues {
                if !queues.contains(&queue) {
                    problems.push(format!("agent {} names unknown queue {queue}", agent.id));
                }
            }
            for team in &agent.teams {
                if !teams.contains(&team) {
                    problems.push(format!("agent {} names unknown team {team}", agent.id));
                }
            }
        }
        for plugin in &self.plugins {
            if !queues.contains(&&plugin.default_queue) {
                problems.push(format!(
                    "plugin {} names unknown default queue {}",
                    plugin.id, plugin.default_queue
                ));
            }
        }
        problems
    }

    pub(crate) fn queue_index(&self) -> HashMap<QueueId, Queue> {
        self.queues
            .iter()
            .map(|queue| (queue.id.clone(), queue.clone()))
            .collect()
    }
}
