//! Test harness for the engine: a demo roster, helpers that feed inputs, and assertions on
//! the effects an input produced.

use std::sync::Arc;

use crate::*;

pub const T0: Millis = Millis(1_800_000_000_000);

/// Two teams, four queues, agents with different presences and a bot, and plugins for every
/// channel (two voice plugins: one with voice controls, one without).
pub fn demo_setup() -> Setup {
    let queue = |id: &str, team: &str, allowed: &[Presence]| Queue {
        id: id.into(),
        name: id.into(),
        team: team.into(),
        allowed_presences: allowed.to_vec(),
    };
    let agent = |id: &str, queues: &[&str], capacity: u32, presence: Presence, bot: bool| Agent {
        id: id.into(),
        name: id.into(),
        presence,
        capacity,
        used: 0,
        elsewhere: 0,
        queues: queues.iter().map(|queue| QueueId::from(*queue)).collect(),
        teams: Vec::new(),
        bot,
    };
    let plugin = |id: &str, channel: ChannelKind, queue: &str, voice_controls: bool| PluginPolicy {
        id: id.into(),
        channel,
        default_queue: queue.into(),
        voice_controls,
        media_supervisors: None,
    };
    use Presence::*;
    Setup {
        teams: vec![
            Team {
                id: "support".into(),
                name: "Support".into(),
                groups: Vec::new(),
            },
            Team {
                id: "billing".into(),
                name: "Billing".into(),
                groups: Vec::new(),
            },
        ],
        queues: vec![
            queue("general", "support", &[Available, Busy]),
            queue("vip", "support", &[Available]),
            queue("escalations", "support", &[Available, Busy]),
            queue("billing", "billing", &[Available, Busy]),
        ],
        agents: vec![
            agent("a-1", &["general", "vip"], 2, Available, false),
            agent("a-2", &["general"], 2, Available, false),
            agent("a-3", &["general"], 2, Away, false),
            agent("a-4", &["vip"], 2, Available, false),
            agent("b-1", &["billing"], 2, Available, false),
            agent("bot-1", &["general"], 100, Available, true),
            // A team lead who is both an agent and a supervisor.
            agent("lead", &["general"], 2, Available, false),
        ],
        plugins: vec![
            plugin("web-chat", ChannelKind::Web, "general", false),
            plugin("sms-twilio", ChannelKind::Sms, "billing", false),
            plugin("whatsapp-cloud", ChannelKind::Whatsapp, "general", false),
            plugin("open-messaging", ChannelKind::Messaging, "general", false),
            plugin("voice-ari", ChannelKind::Voice, "general", true),
            plugin("voice-basic", ChannelKind::Voice, "general", false),
        ],
        policies: Setup::default_policies(),
        dedup_window: 10_000,
        closed_retention: Millis::HOUR,
        idempotency_ttl: 24 * Millis::HOUR,
        partitioning: None,
    }
}

pub fn supervisor(id: &str, teams: &[&str]) -> Actor {
    Actor {
        id: id.into(),
        roles: vec![Role::Supervisor],
        teams: teams.iter().map(|team| TeamId::from(*team)).collect(),
    }
}

pub fn admin(id: &str) -> Actor {
    Actor {
        id: id.into(),
        roles: vec![Role::Admin],
        teams: Vec::new(),
    }
}

pub fn agent_actor(id: &str) -> Actor {
    Actor {
        id: id.into(),
        roles: vec![Role::Agent],
        teams: Vec::new(),
    }
}

pub fn channel_of(plugin: &str) -> ChannelKind {
    match plugin {
        "web-chat" => ChannelKind::Web,
        "sms-twilio" => ChannelKind::Sms,
        "whatsapp-cloud" => ChannelKind::Whatsapp,
        "open-messaging" => ChannelKind::Messaging,
        _ => ChannelKind::Voice,
    }
}

/// Feeds inputs to an engine, keeps every record for replay checks, and returns outcomes.
#[derive(Debug)]
pub struct Harness {
    pub engine: Engine,
    pub now: Millis,
    pub records: Vec<Record>,
    setup: Setup,
    threads: u32,
}

/// What one input produced, detached from the reusable [`Outcome`].
#[derive(Debug)]
pub struct Effects {
    pub changes: Vec<Change>,
    pub timeline: Vec<TimelineEntry>,
    pub notifications: Vec<Notification>,
    pub reply: Result<Reply, Refusal>,
    /// Whether the record moved nothing the agent and the customer can see.
    pub silent: bool,
}

impl Effects {
    #[track_caller]
    pub fn ok(&self) -> &Reply {
        match &self.reply {
            Ok(reply) => reply,
            Err(refusal) => panic!("expected success, got {refusal}"),
        }
    }

    #[track_caller]
    pub fn refused(&self, code: Code) -> &Refusal {
        match &self.reply {
            Err(refusal) if refusal.code == code => {
                assert!(
                    self.changes
                        .iter()
                        .all(|c| matches!(c, Change::Answered { .. }))
                        && self.timeline.is_empty()
                        && self.notifications.is_empty(),
                    "a refusal must change nothing: {self:#?}"
                );
                refusal
            }
            other => panic!("expected refusal {code}, got {other:?}"),
        }
    }

    pub fn to(&self, audience: &Audience) -> Vec<&NotificationBody> {
        self.notifications
            .iter()
            .filter(|n| &n.audience == audience)
            .map(|n| &n.body)
            .collect()
    }

    pub fn to_channel(&self) -> Vec<&NotificationBody> {
        self.notifications
            .iter()
            .filter(|n| matches!(n.audience, Audience::Channel { .. }))
            .map(|n| &n.body)
            .collect()
    }

    pub fn to_agent(&self, agent: &str) -> Vec<&NotificationBody> {
        self.to(&Audience::Agent {
            agent: agent.into(),
        })
    }

    pub fn to_supervisor(&self, supervisor: &str) -> Vec<&NotificationBody> {
        self.to(&Audience::Supervisor {
            supervisor: supervisor.into(),
        })
    }

    pub fn timeline_events(&self) -> Vec<&TimelineEvent> {
        self.timeline.iter().map(|entry| &entry.event).collect()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with(demo_setup())
    }

    pub fn with(setup: Setup) -> Self {
        Self {
            engine: Engine::new(setup.clone()),
            now: T0,
            records: Vec::new(),
            setup,
            threads: 0,
        }
    }

    pub fn with_policy(channel: ChannelKind, change: impl FnOnce(&mut ChannelPolicy)) -> Self {
        let mut setup = demo_setup();
        change(setup.policies.get_mut(channel));
        Self::with(setup)
    }

    pub fn advance(&mut self, millis: i64) {
        self.now = self.now.plus(millis);
    }

    pub fn input(&mut self, input: Input) -> Effects {
        let mut out = Outcome::default();
        self.engine.apply(input, self.now, &mut out);
        if !out.is_empty() {
            assert_eq!(out.record.seq, self.engine.state().last_seq());
            self.records.push(out.record.clone());
        }
        Effects {
            changes: out.record.changes,
            timeline: out.record.timeline,
            notifications: out.notifications,
            reply: out.reply.expect("every input is answered"),
            silent: out.silent,
        }
    }

    pub fn event(&mut self, source: &str, body: EventBody) -> Effects {
        self.input(Input::Channel(ChannelEvent {
            id: None,
            source: source.into(),
            body,
        }))
    }

    pub fn command(&mut self, actor: &Actor, action: Action) -> Effects {
        self.input(Input::Command(Command {
            actor: actor.clone(),
            idempotency: None,
            action,
        }))
    }

    pub fn tick(&mut self) -> Effects {
        self.input(Input::Tick)
    }

    pub fn thread(&mut self, plugin: &str) -> ExternalRef {
        self.threads += 1;
        ExternalRef {
            plugin: plugin.into(),
            key: format!("thread-{}", self.threads).into(),
        }
    }

    /// Starts an open conversation on `plugin` and returns its id.
    pub fn open(&mut self, plugin: &str) -> ConversationId {
        self.open_in(plugin, None)
    }

    pub fn open_in(&mut self, plugin: &str, queue: Option<&str>) -> ConversationId {
        let thread = self.thread(plugin);
        let effects = self.event(
            plugin,
            EventBody::Started {
                conversation: thread,
                channel: channel_of(plugin),
                direction: Direction::Inbound,
                subject: Some("Order 1042 missing".into()),
                customer: Customer {
                    id: "cust-1".into(),
                    name: Some("Ada".into()),
                },
                queue: queue.map(QueueId::from),
            },
        );
        effects.ok().conversation.expect("opened")
    }

    /// An active conversation on `plugin` handled by `agent`.
    pub fn active(&mut self, plugin: &str, agent: &str) -> ConversationId {
        let id = self.open(plugin);
        self.accept(&id, agent);
        id
    }

    pub fn accept(&mut self, id: &ConversationId, agent: &str) -> Effects {
        let effects = self.event(
            "canonical",
            EventBody::Accepted {
                conversation: ConversationRef::Id { id: *id },
                agent: agent.into(),
            },
        );
        effects.ok();
        effects
    }

    pub fn on(
        &mut self,
        id: &ConversationId,
        body: impl FnOnce(ConversationRef) -> EventBody,
    ) -> Effects {
        self.event("canonical", body(ConversationRef::Id { id: *id }))
    }

    pub fn conversation(&self, id: &ConversationId) -> &Conversation {
        self.engine
            .state()
            .conversation(*id)
            .expect("conversation exists")
    }

    pub fn agent(&self, id: &str) -> &Agent {
        self.engine.state().agent(id).expect("agent exists")
    }

    pub fn state_of(&self, id: &ConversationId) -> ConversationState {
        self.conversation(id).state
    }

    /// Rebuilds an engine from the records so far and checks it equals the live one.
    #[track_caller]
    pub fn assert_replays(&self) {
        let replayed = Engine::replay(self.setup.clone(), &self.records);
        assert!(
            replayed.state() == self.engine.state(),
            "replayed state differs from the live state"
        );
    }

    /// Checks the invariants the property test checks, on the current state.
    #[track_caller]
    pub fn assert_invariants(&self) {
        check_invariants(&self.engine);
    }
}

/// Invariants that no sequence of inputs may break.
#[track_caller]
pub fn check_invariants(engine: &Engine) {
    let state = engine.state();
    for conversation in state.conversations() {
        let policy = engine.policy(conversation.channel);
        if conversation.state == ConversationState::Closed {
            assert!(
                conversation.seats.is_empty(),
                "closed {} has supervisors",
                conversation.id
            );
            assert!(
                conversation.capacity.is_none(),
                "closed {} holds capacity",
                conversation.id
            );
        }
        let listening = conversation.listening_seats().count() as u32;
        assert!(
            listening <= policy.monitor_limit,
            "{} over its monitor limit",
            conversation.id
        );
        let barging = conversation
            .seats
            .iter()
            .filter(|seat| seat.mode == SupervisionMode::Barge)
            .count();
        assert!(
            barging <= 1,
            "{} has {barging} barging supervisors",
            conversation.id
        );
        if let Some(agent) = &conversation.agent {
            assert!(
                conversation.seat(&UserId::from(agent.as_str())).is_none(),
                "{} supervised by its own agent",
                conversation.id
            );
        }
        let mut supervisors: Vec<_> = conversation.seats.iter().map(|s| &s.supervisor).collect();
        supervisors.sort();
        supervisors.dedup();
        assert_eq!(
            supervisors.len(),
            conversation.seats.len(),
            "duplicate seats"
        );
        if conversation.state == ConversationState::Open {
            assert!(conversation.agent.is_none() || conversation.seats.is_empty());
            assert!(
                conversation.capacity.is_none(),
                "open {} holds capacity",
                conversation.id
            );
        }
        if conversation.state == ConversationState::Active {
            let hold = conversation
                .capacity
                .as_ref()
                .expect("active holds capacity");
            assert_eq!(Some(&hold.agent), conversation.agent.as_ref());
        }
        if conversation.state == ConversationState::Waiting {
            assert!(
                conversation.capacity.is_none(),
                "waiting {} holds capacity",
                conversation.id
            );
        }
    }
    for agent in state.agents() {
        let held: u32 = state
            .conversations()
            .filter_map(|c| c.capacity.as_ref())
            .filter(|hold| hold.agent == agent.id)
            .map(|hold| hold.units)
            .sum();
        assert_eq!(agent.used, held, "capacity of {} is off", agent.id);
    }
    for conversation in state.conversations() {
        let live = state.live_thread(&conversation.external);
        if conversation.state == ConversationState::Closed {
            assert_ne!(
                live.map(|c| &c.id),
                Some(&conversation.id),
                "closed thread is live"
            );
        } else {
            assert_eq!(
                live.map(|c| &c.id),
                Some(&conversation.id),
                "thread lost its live conversation"
            );
        }
    }
    assert!(state.live_threads.len() <= state.conversations().count());
}

pub fn text(value: &str) -> Arc<str> {
    value.into()
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
