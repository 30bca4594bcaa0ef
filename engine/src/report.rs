//! Engine read side: the ongoing conversations report (last 24 h, not closed, scoped to the
//! caller's teams, filterable) and the roster views the admin API serves.

use serde::Serialize;

use super::Engine;
use super::domain::{
    Agent, AgentId, ChannelKind, Conversation, ConversationId, ConversationState, Customer,
    JoinMode, MediaState, Millis, PluginId, Presence, QueueId, SupervisionMode, TeamId, UserId,
    Visibility,
};
use super::effect::{Code, Refusal};
use super::input::{Action, Actor, AssignTarget, ReceiptStatus};

/// The report's window: conversations created in the last 24 hours.
pub const REPORT_WINDOW: i64 = 24 * Millis::HOUR;

/// Filters and order of `GET /v1/conversations`. An empty list matches everything; repeated
/// values of one filter are alternatives (`queue=a&queue=b`), different filters all apply.
#[derive(Clone, Debug, Default)]
pub struct ReportFilter {
    pub states: Vec<ConversationState>,
    pub queues: Vec<QueueId>,
    pub channels: Vec<ChannelKind>,
    pub agents: Vec<AgentId>,
    /// Only conversations this user holds a seat on (`supervised_by=me`).
    pub supervised_by: Option<UserId>,
    /// Case-insensitive text that the customer's name or id, or the subject, contains.
    pub search: Option<String>,
    pub sort: ReportSort,
    /// How far back the report reaches; `None` is [`REPORT_WINDOW`].
    pub window: Option<i64>,
}

/// The report's order (`sort=wait`, `-wait`, …): a key and a direction. Ties are broken by
/// the conversation id, so that the order is total and pages never overlap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportSort {
    pub key: SortKey,
    pub descending: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// When the conversation began; the default order is newest first.
    #[default]
    Created,
    Wait,
    Handle,
    /// Sentiment score; conversations without one sort after those with one.
    Sentiment,
}

impl ReportSort {
    pub const NEWEST_FIRST: Self = Self {
        key: SortKey::Created,
        descending: true,
    };

    /// Parses `wait`, `-wait`, `handle`, `created`, `sentiment` (each with an optional `-`).
    pub fn parse(text: &str) -> Option<Self> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, text),
        };
        let key = match name {
            "created" => SortKey::Created,
            "wait" => SortKey::Wait,
            "handle" => SortKey::Handle,
            "sentiment" => SortKey::Sentiment,
            _ => return None,
        };
        Some(Self { key, descending })
    }

    fn order(self, a: &ConversationSummary, b: &ConversationSummary) -> std::cmp::Ordering {
        let by_key = match self.key {
            SortKey::Created => a.created_at.cmp(&b.created_at),
            SortKey::Wait => a.wait_seconds.cmp(&b.wait_seconds),
            SortKey::Handle => a.handle_seconds.cmp(&b.handle_seconds),
            SortKey::Sentiment => match (a.sentiment.score, b.sentiment.score) {
                (Some(a), Some(b)) => a.total_cmp(&b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        };
        let by_key = if self.descending {
            by_key.reverse()
        } else {
            by_key
        };
        by_key.then_with(|| a.id.cmp(&b.id))
    }
}

impl ReportFilter {
    /// Sorts report rows in the filter's order (newest first unless it names another); rows
    /// gathered from several engines (a cluster's partitions) are sorted the same way.
    pub fn sort_rows(&self, rows: &mut [ConversationSummary]) {
        let sort = if self.sort == ReportSort::default() {
            ReportSort::NEWEST_FIRST
        } else {
            self.sort
        };
        rows.sort_by(|a, b| sort.order(a, b));
    }

    fn matches(&self, conversation: &Conversation) -> bool {
        fn any<T: PartialEq>(allowed: &[T], value: &T) -> bool {
            allowed.is_empty() || allowed.contains(value)
        }
        any(&self.states, &conversation.state)
            && any(&self.queues, &conversation.queue)
            && any(&self.channels, &conversation.channel)
            && (self.agents.is_empty()
                || conversation
                    .agent
                    .as_ref()
                    .is_some_and(|agent| self.agents.contains(agent)))
            && self
                .supervised_by
                .as_ref()
                .is_none_or(|user| conversation.seat(user).is_some())
            && self.search.as_deref().is_none_or(|text| {
                let text = text.to_lowercase();
                let contains = |field: &str| field.to_lowercase().contains(&text);
                contains(&conversation.customer.id)
                    || conversation.customer.name.as_deref().is_some_and(contains)
                    || conversation.subject.as_deref().is_some_and(contains)
            })
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
    pub queue_name: Option<Box<str>>,
    pub team: Option<TeamId>,
    pub agent: Option<AgentId>,
    /// The agent's display name from the roster.
    pub agent_name: Option<Box<str>>,
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
    /// How long the longest-waiting of them has waited, and their average wait.
    pub longest_wait_seconds: u64,
    pub average_wait_seconds: u64,
    pub agents_available: u32,
}

impl Engine {
    /// The ongoing conversations `actor` may see, in the filter's order (newest first by
    /// default).
    pub fn ongoing(
        &self,
        actor: &Actor,
        filter: &ReportFilter,
        now: Millis,
    ) -> Vec<ConversationSummary> {
        let since = Millis(now.0 - filter.window.unwrap_or(REPORT_WINDOW));
        let mut rows: Vec<ConversationSummary> = self
            .state()
            .conversations()
            .filter(|c| c.state.is_ongoing() && c.created_at >= since)
            .filter(|c| filter.matches(c))
            .filter(|c| self.may_see(actor, c))
            .map(|c| self.summary(c, now))
            .collect();
        filter.sort_rows(&mut rows);
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
            queue_name: self.queue(&c.queue).map(|queue| queue.name.clone()),
            team: self.queue(&c.queue).map(|queue| queue.team.clone()),
            agent: c.agent.clone(),
            agent_name: c
                .agent
                .as_ref()
                .and_then(|agent| self.state().agents.get(agent))
                .map(|agent| agent.name.clone()),
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

    /// Queues of the teams `actor` sees, in roster order, with their waits at `now`.
    pub fn queues_for(&self, actor: &Actor, now: Millis) -> Vec<QueueSummary> {
        self.setup()
            .queues
            .iter()
            .filter(|queue| actor.sees_team(&queue.team))
            .map(|queue| {
                let waits: Vec<u64> = self
                    .state()
                    .conversations()
                    .filter(|c| c.queue == queue.id && c.state == ConversationState::Open)
                    .map(|c| c.created_at.seconds_until(now))
                    .collect();
                (queue, waits)
            })
            .map(|(queue, waits)| QueueSummary {
                id: queue.id.clone(),
                name: queue.name.clone(),
                team: queue.team.clone(),
                allowed_presences: queue.allowed_presences.clone(),
                waiting: waits.len() as u32,
                longest_wait_seconds: waits.iter().copied().max().unwrap_or(0),
                average_wait_seconds: if waits.is_empty() {
                    0
                } else {
                    waits.iter().sum::<u64>() / waits.len() as u64
                },
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

/// The supervision actions a frontend offers, in the order it shows them.
pub const ACTIONS: [&str; 9] = [
    "monitor",
    "whisper",
    "join",
    "barge",
    "message",
    "leave",
    "assign",
    "transfer",
    "force-close",
];

/// One action the caller may or may not take now, and the rule that says why not.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionVerdict {
    pub action: &'static str,
    pub verdict: Result<(), Refusal>,
}

/// A possible target of assign or transfer, with the rule's verdict for it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetVerdict<T> {
    pub target: T,
    pub verdict: Result<(), Refusal>,
}

/// The eligible (and refused) targets of assign and transfer for one conversation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    pub assign_agents: Vec<TargetVerdict<AgentId>>,
    pub assign_queues: Vec<TargetVerdict<QueueId>>,
    pub transfer_agents: Vec<TargetVerdict<AgentId>>,
}

impl Engine {
    /// What `actor` may do to conversation `id` now: each of [`ACTIONS`], decided by a dry
    /// run of the rule itself. Assign and transfer are allowed when some target is (an
    /// assignment with explicit overrides counts: the console asks for them).
    pub fn actions(&self, actor: &Actor, id: ConversationId, now: Millis) -> Vec<ActionVerdict> {
        let text: std::sync::Arc<str> = std::sync::Arc::from("");
        ACTIONS
            .iter()
            .map(|&action| {
                let verdict = match action {
                    "monitor" => self.check(actor, Action::Monitor { conversation: id }, now),
                    "whisper" => self.check(
                        actor,
                        Action::Whisper {
                            conversation: id,
                            text: text.clone(),
                        },
                        now,
                    ),
                    "join" => self.check(
                        actor,
                        Action::Join {
                            conversation: id,
                            mode: JoinMode::Internal,
                        },
                        now,
                    ),
                    "barge" => self.check(actor, Action::Barge { conversation: id }, now),
                    // Writing at all: an internal note needs a join; public text, a public
                    // seat (the caller's seat mode says which it has).
                    "message" => self.check(
                        actor,
                        Action::Message {
                            conversation: id,
                            text: text.clone(),
                            visibility: Visibility::Internal,
                        },
                        now,
                    ),
                    "leave" => self.check(actor, Action::Leave { conversation: id }, now),
                    "assign" => first_allowed(
                        self.assign_candidates(actor, id)
                            .map(|action| self.check(actor, action, now)),
                    ),
                    "transfer" => first_allowed(
                        self.agents_seen_by(actor)
                            .map(|agent| transfer(id, agent.id.clone()))
                            .map(|action| self.check(actor, action, now)),
                    ),
                    _ => self.check(
                        actor,
                        Action::ForceClose {
                            conversation: id,
                            reason: None,
                            confirm: true,
                        },
                        now,
                    ),
                };
                ActionVerdict { action, verdict }
            })
            .collect()
    }

    /// Every agent and queue `actor` could assign conversation `id` to, and every agent it
    /// could transfer it to, each with the rule's verdict (assignment without overrides, so
    /// that a refusal names what an override would bypass).
    pub fn targets(&self, actor: &Actor, id: ConversationId, now: Millis) -> Targets {
        let assign = |target, override_both| Action::Assign {
            conversation: id,
            target,
            override_presence: override_both,
            override_capacity: override_both,
        };
        Targets {
            assign_agents: self
                .agents_seen_by(actor)
                .map(|agent| TargetVerdict {
                    target: agent.id.clone(),
                    verdict: self.check(
                        actor,
                        assign(AssignTarget::Agent(agent.id.clone()), false),
                        now,
                    ),
                })
                .collect(),
            assign_queues: self
                .queues_seen_by(actor)
                .map(|queue| TargetVerdict {
                    target: queue.clone(),
                    verdict: self.check(actor, assign(AssignTarget::Queue(queue), false), now),
                })
                .collect(),
            transfer_agents: self
                .agents_seen_by(actor)
                .map(|agent| TargetVerdict {
                    target: agent.id.clone(),
                    verdict: self.check(actor, transfer(id, agent.id.clone()), now),
                })
                .collect(),
        }
    }

    fn agents_seen_by<'a>(&'a self, actor: &'a Actor) -> impl Iterator<Item = &'a Agent> + 'a {
        let mut agents: Vec<&Agent> = self
            .state()
            .agents()
            .filter(|agent| {
                actor.is_admin() || agent.teams.iter().any(|team| actor.sees_team(team))
            })
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        agents.into_iter()
    }

    fn queues_seen_by<'a>(&'a self, actor: &'a Actor) -> impl Iterator<Item = QueueId> + 'a {
        self.setup()
            .queues
            .iter()
            .filter(|queue| actor.sees_team(&queue.team))
            .map(|queue| queue.id.clone())
    }

    /// Assignments to every queue, then every agent, with overrides: the action is possible
    /// when one of them is.
    fn assign_candidates<'a>(
        &'a self,
        actor: &'a Actor,
        id: ConversationId,
    ) -> impl Iterator<Item = Action> + 'a {
        let to_queues = self.queues_seen_by(actor).map(AssignTarget::Queue);
        let to_agents = self
            .agents_seen_by(actor)
            .map(|agent| AssignTarget::Agent(agent.id.clone()));
        to_queues
            .chain(to_agents)
            .map(move |target| Action::Assign {
                conversation: id,
                target,
                override_presence: true,
                override_capacity: true,
            })
    }
}

/// Allowed when one verdict is; otherwise the first refusal (a state rule, checked before any
/// target rule, refuses every target alike).
fn first_allowed(verdicts: impl Iterator<Item = Result<(), Refusal>>) -> Result<(), Refusal> {
    let mut first = None;
    for verdict in verdicts {
        match verdict {
            Ok(()) => return Ok(()),
            Err(refusal) => {
                first.get_or_insert(refusal);
            }
        }
    }
    Err(first.unwrap_or_else(|| Refusal::new(Code::NotFound, "no agent or queue you may choose")))
}

fn transfer(conversation: ConversationId, agent: AgentId) -> Action {
    Action::Transfer {
        conversation,
        agent,
    }
}
