//! Engine read side: the ongoing conversations report (last 24 h, not closed, scoped to the
//! caller's teams, filterable) and the roster views the admin API serves.

use serde::Serialize;

use super::Engine;
use super::domain::{
    AgentId, ChannelKind, Conversation, ConversationId, ConversationState, Customer, MediaState,
    Millis, PluginId, Presence, QueueId, SupervisionMode, TeamId, UserId,
};
use super::input::{Actor, ReceiptStatus};

/// The report's window: conversations created in the last 24 hours.
pub const REPORT_WINDOW: i64 = 24 * Millis::HOUR;

/// Filters of `GET /v1/conversations`; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct ReportFilter {
    pub state: Option<ConversationState>,
    pub queue: Option<QueueId>,
    pub channel: Option<ChannelKind>,
    pub agent: Option<AgentId>,
}

impl ReportFilter {
    fn matches(&self, conversation: &Conversation) -> bool {
        self.state.is_none_or(|state| conversation.state == state)
            && self
                .queue
                .as_ref()
                .is_none_or(|queue| &conversation.queue == queue)
            && self
                .channel
                .is_none_or(|channel| conversation.channel == channel)
            && self
                .agent
                .as_ref()
                .is_none_or(|agent| conversation.agent.as_ref() == Some(agent))
    }
}

/// One row of the ongoing conversations report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub channel: ChannelKind,
    pub plugin: PluginId,
    pub state: ConversationState,
    pub subject: Option<Box<str>>,
    pub customer: Customer,
    pub queue: QueueId,
    pub team: Option<TeamId>,
    pub agent: Option<AgentId>,
    pub consultants: Vec<AgentId>,
    pub created_at: Millis,
    pub accepted_at: Option<Millis>,
    pub last_activity_at: Millis,
    /// Created to first accepted (or now, while nobody has accepted it).
    pub wait_seconds: u64,
    /// Accepted to wrap-up (or now, while it is handled).
    pub handle_seconds: u64,
    pub sentiment: SentimentSummary,
    pub supervisors: Vec<SupervisorSummary>,
    /// The newest delivery receipt of an outgoing message: its id and status.
    pub last_delivery: Option<(Box<str>, ReceiptStatus)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SentimentSummary {
    /// `positive`, `neutral`, `negative`, or null before the customer wrote.
    pub label: Option<&'static str>,
    pub score: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SupervisorSummary {
    pub id: UserId,
    pub mode: SupervisionMode,
    pub since: Millis,
    /// On a call: `pending` until every media request was accepted, then `live`.
    pub media: Option<MediaState>,
}

/// An agent as `GET /v1/agents` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSummary {
    pub id: AgentId,
    pub name: Box<str>,
    pub presence: Presence,
    pub capacity_used: u32,
    pub capacity_total: u32,
    pub queues: Vec<QueueId>,
    pub teams: Vec<TeamId>,
    pub bot: bool,
}

/// A queue as `GET /v1/queues` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueSummary {
    pub id: QueueId,
    pub name: Box<str>,
    pub team: TeamId,
    pub allowed_presences: Vec<Presence>,
    /// Ongoing conversations waiting in it without an agent.
    pub waiting: u32,
    pub agents_available: u32,
}

impl Engine {
    /// The ongoing conversations `actor` may see, newest first.
    pub fn ongoing(
        &self,
        actor: &Actor,
        filter: &ReportFilter,
        now: Millis,
    ) -> Vec<ConversationSummary> {
        let since = Millis(now.0 - REPORT_WINDOW);
        let mut rows: Vec<ConversationSummary> = self
            .state()
            .conversations()
            .filter(|c| c.state.is_ongoing() && c.created_at >= since)
            .filter(|c| filter.matches(c))
            .filter(|c| self.may_see(actor, c))
            .map(|c| self.summary(c, now))
            .collect();
        rows.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        rows
    }

    /// One conversation, if `actor` may see it (closed ones too, until evicted).
    pub fn find(&self, actor: &Actor, id: &str, now: Millis) -> Option<ConversationSummary> {
        self.state()
            .conversation(ConversationId::parse(id)?)
            .filter(|c| self.may_see(actor, c))
            .map(|c| self.summary(c, now))
    }

    pub fn may_see(&self, actor: &Actor, conversation: &Conversation) -> bool {
        match self.queue(&conversation.queue) {
            Some(queue) => actor.sees_team(&queue.team),
            None => actor.is_admin(),
        }
    }

    pub fn summary(&self, c: &Conversation, now: Millis) -> ConversationSummary {
        let accepted_or_now = c.accepted_at.unwrap_or(now);
        let handle_end = c.wrap_up_at.or(c.ended_at).unwrap_or(now);
        ConversationSummary {
            id: c.id,
            channel: c.channel,
            plugin: c.external.plugin.clone(),
            state: c.state,
            subject: c.subject.clone(),
            customer: c.customer.clone(),
            queue: c.queue.clone(),
            team: self.queue(&c.queue).map(|queue| queue.team.clone()),
            agent: c.agent.clone(),
            consultants: c.consultants.clone(),
            created_at: c.created_at,
            accepted_at: c.accepted_at,
            last_activity_at: c.last_activity,
            wait_seconds: c.created_at.seconds_until(accepted_or_now),
            handle_seconds: c
                .accepted_at
                .map_or(0, |accepted| accepted.seconds_until(handle_end)),
            sentiment: SentimentSummary {
                label: c.sentiment.label(),
                score: (c.sentiment.samples > 0).then_some(c.sentiment.score),
            },
            supervisors: c
                .seats
                .iter()
                .map(|seat| SupervisorSummary {
                    id: seat.supervisor.clone(),
                    mode: seat.mode,
                    since: seat.since,
                    media: seat.media,
                })
                .collect(),
            last_delivery: c.last_delivery.clone(),
        }
    }

    /// Agents of the teams `actor` sees, by id.
    pub fn agents_for(&self, actor: &Actor) -> Vec<AgentSummary> {
        let mut agents: Vec<AgentSummary> = self
            .state()
            .agents()
            .filter(|agent| {
                actor.is_admin() || agent.teams.iter().any(|team| actor.sees_team(team))
            })
            .map(|agent| AgentSummary {
                id: agent.id.clone(),
                name: agent.name.clone(),
                presence: agent.presence,
                capacity_used: agent.used,
                capacity_total: agent.capacity,
                queues: agent.queues.clone(),
                teams: agent.teams.clone(),
                bot: agent.bot,
            })
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        agents
    }

    /// Queues of the teams `actor` sees, in roster order.
    pub fn queues_for(&self, actor: &Actor) -> Vec<QueueSummary> {
        self.setup()
            .queues
            .iter()
            .filter(|queue| actor.sees_team(&queue.team))
            .map(|queue| QueueSummary {
                id: queue.id.clone(),
                name: queue.name.clone(),
                team: queue.team.clone(),
                allowed_presences: queue.allowed_presences.clone(),
                waiting: self
                    .state()
                    .conversations()
                    .filter(|c| c.queue == queue.id && c.state == ConversationState::Open)
                    .count() as u32,
                agents_available: self
                    .state()
                    .agents()
                    .filter(|agent| {
                        agent.queues.contains(&queue.id)
                            && queue.allowed_presences.contains(&agent.presence)
                            && agent.free() > 0
                    })
                    .count() as u32,
            })
            .collect()
    }
}
