//! Engine step 2 of the flow (see `ARCHITECTURE.md`): the sans-IO supervision core, a crate of
//! its own so that its dependency list enforces "no I/O". `Engine::apply(input, now, &mut outcome)`
//! decides, evolves the state and reports effects; no clock, no I/O, no tokio, so every rule
//! is a plain unit test and replaying the log is exact.
//!
//! Layout, in the order an input travels: [`domain`] (vocabulary), [`policy`] (setup),
//! [`input`], `channel` / `command` / `tick` (the rules), [`effect`] (what comes out),
//! [`state`] (the fold that applies changes), [`report`] (read side).

pub mod domain;
pub mod effect;
pub mod input;
pub mod policy;
pub mod report;
pub mod state;

mod channel;
mod command;
mod tick;

/// The test harness (demo roster, input helpers, effect assertions), shared with the daemon's
/// store tests through the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

pub use domain::*;
pub use effect::*;
pub use input::*;
pub use policy::*;
pub use state::{Snapshot, State};

use state::Map;

/// The supervision engine: one writer over the state, fed one input at a time.
#[derive(Debug)]
pub struct Engine {
    setup: Arc<Setup>,
    queues: Map<QueueId, Queue>,
    plugins: Map<PluginId, PluginPolicy>,
    state: State,
    /// Deadlines checked on ticks. Derived from the state (rebuilt after replay), checked
    /// lazily: a popped timer re-arms itself when its deadline moved.
    timers: BinaryHeap<Reverse<Timer>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due: Millis,
    kind: TimerKind,
    conversation: ConversationId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Inactivity,
    WrapUpCapacity,
    Evict,
}

impl Engine {
    /// An engine with an empty state over `setup`. Agents' teams are completed with the teams
    /// of their queues, so that a supervisor sees the agents serving its queues.
    pub fn new(setup: Setup) -> Self {
        let mut setup = setup;
        let queues = setup.queue_index();
        for agent in &mut setup.agents {
            for queue in &agent.queues {
                if let Some(queue) = queues.get(queue)
                    && !agent.teams.contains(&queue.team)
                {
                    agent.teams.push(queue.team.clone());
                }
            }
        }
        let state = State::new(&setup.agents, setup.dedup_window, setup.idempotency_ttl);
        Self {
            queues: queues.into_iter().collect(),
            plugins: setup
                .plugins
                .iter()
                .map(|plugin| (plugin.id.clone(), plugin.clone()))
                .collect(),
            setup: Arc::new(setup),
            state,
            timers: BinaryHeap::new(),
        }
    }

    /// Rebuilds an engine from log records (after a snapshot, or from the start).
    pub fn replay<'a>(setup: Setup, records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut engine = Self::new(setup);
        for record in records {
            engine.state.evolve_record(record);
        }
        engine.rebuild_timers();
        engine
    }

    /// Rebuilds an engine from a snapshot and the records written after it.
    pub fn restore<'a>(
        setup: Setup,
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Self {
        let mut engine = Self::new(setup);
        let after = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_seq);
        if let Some(snapshot) = snapshot {
            engine.state.restore(snapshot);
        }
        for record in records {
            if record.seq > after {
                engine.state.evolve_record(record);
            }
        }
        engine.rebuild_timers();
        engine
    }

    /// Brings a follower (a read-only copy of state another engine writes, such as a
    /// cluster partition owned by another node) up to date with records committed after its
    /// state; those it already holds are skipped.
    pub fn follow<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for record in records {
            if record.seq > self.state.last_seq() {
                self.state.evolve_record(record);
            }
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    pub fn queue(&self, id: &str) -> Option<&Queue> {
        self.queues.get(id)
    }

    pub fn plugin(&self, id: &str) -> Option<&PluginPolicy> {
        self.plugins.get(id)
    }

    pub fn policy(&self, channel: ChannelKind) -> &ChannelPolicy {
        self.setup.policies.get(channel)
    }

    /// Applies one input at `now`. `out` is cleared first; afterwards it holds the record to
    /// persist (empty when nothing changed), the notifications and the reply.
    pub fn apply(&mut self, input: Input, now: Millis, out: &mut Outcome) {
        out.clear();
        let seq = self.state.last_seq + 1;
        out.record.seq = seq;
        out.record.at = now;
        let mut step = Step {
            engine: Target::Live(self),
            out,
            now,
        };
        match input {
            Input::Channel(event) => step.channel_event(event),
            Input::Command(command) => step.command(command),
            Input::Tick => {
                step.tick();
                step.out.reply = Some(Ok(Reply::default()));
            }
            Input::LoadsElsewhere(loads) => {
                step.loads_elsewhere(loads);
                step.out.reply = Some(Ok(Reply::default()));
            }
        }
        if out.is_empty() {
            out.record.seq = 0;
        } else {
            self.state.last_seq = seq;
            let position = self.state.position.next(out.silent);
            self.state.position = position;
            out.record.position = position;
            for (index, notification) in out.notifications.iter_mut().enumerate() {
                notification.id = NotificationId {
                    position,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                };
            }
        }
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        let mut timers = Vec::new();
        for conversation in self.state.conversations() {
            let policy = self.setup.policies.get(conversation.channel);
            if conversation.state == ConversationState::Closed {
                if let Some(ended) = conversation.ended_at {
                    timers.push(Timer {
                        due: ended.plus(self.setup.closed_retention),
                        kind: TimerKind::Evict,
                        conversation: conversation.id,
                    });
                }
                continue;
            }
            if let Some(timeout) = policy.inactivity_timeout {
                timers.push(Timer {
                    due: conversation.last_activity.plus(timeout),
                    kind: TimerKind::Inactivity,
                    conversation: conversation.id,
                });
            }
            if let (ConversationState::WrapUp, Some(since), WrapUpCapacity::For(hold), Some(_)) = (
                conversation.state,
                conversation.wrap_up_at,
                policy.wrap_up_capacity,
                &conversation.capacity,
            ) {
                timers.push(Timer {
                    due: since.plus(hold),
                    kind: TimerKind::WrapUpCapacity,
                    conversation: conversation.id,
                });
            }
        }
        self.timers.extend(timers.into_iter().map(Reverse));
    }
}

/// One input being applied: the engine plus the outcome it writes to.
struct Step<'a> {
    engine: Target<'a>,
    out: &'a mut Outcome,
    now: Millis,
}

/// The engine a step works on: the live one, or, for a dry run, a read-only view whose
/// changes are recorded and dropped. Every rule is checked before its first change, so a dry
/// run's verdict is the live verdict, without the write lock.
enum Target<'a> {
    Live(&'a mut Engine),
    Dry(&'a Engine),
}

impl std::ops::Deref for Target<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        match self {
            Self::Live(engine) => engine,
            Self::Dry(engine) => engine,
        }
    }
}

impl Engine {
    /// Whether `actor` may take `action` now: the engine's own rules, run dry (nothing
    /// changes). Frontends enable their buttons from this instead of re-implementing a rule.
    pub fn check(&self, actor: &Actor, action: Action, now: Millis) -> Result<(), Refusal> {
        let mut out = Outcome::default();
        let mut step = Step {
            engine: Target::Dry(self),
            out: &mut out,
            now,
        };
        step.action(actor, action).map(drop)
    }
}

impl Step<'_> {
    /// Records each agent's units elsewhere that changed (agents not listed: none).
    fn loads_elsewhere(&mut self, loads: Vec<(AgentId, u32)>) {
        let told: Map<AgentId, u32> = loads.into_iter().collect();
        let changed: Vec<(AgentId, u32)> = self
            .engine
            .state
            .agents
            .values()
            .filter_map(|agent| {
                let units = told.get(&agent.id).copied().unwrap_or(0);
                (agent.elsewhere != units).then(|| (agent.id.clone(), units))
            })
            .collect();
        for (agent, units) in changed {
            self.change(Change::LoadElsewhere { agent, units });
        }
    }

    /// Records a change and applies it at once, so that later rules of the same input see it.
    fn change(&mut self, change: Change) {
        if let Target::Live(engine) = &mut self.engine {
            engine.state.evolve(self.now, &change);
        }
        self.out.record.changes.push(change);
    }

    /// The next timer due by now (none in a dry run, which never ticks).
    fn pop_due_timer(&mut self) -> Option<Timer> {
        let Target::Live(engine) = &mut self.engine else {
            return None;
        };
        if engine
            .timers
            .peek()
            .is_none_or(|timer| timer.0.due > self.now)
        {
            return None;
        }
        engine.timers.pop().map(|timer| timer.0)
    }

    fn timeline(
        &mut self,
        conversation: &ConversationId,
        visibility: Visibility,
        event: TimelineEvent,
    ) {
        self.out.record.timeline.push(TimelineEntry {
            conversation: *conversation,
            at: self.now,
            visibility,
            event,
        });
    }

    fn notify(
        &mut self,
        conversation: Option<&ConversationId>,
        audience: Audience,
        body: NotificationBody,
    ) {
        // The id is the record's position, known once the input is decided (`Engine::apply`).
        self.out.notifications.push(Notification {
            id: NotificationId::default(),
            conversation: conversation.cloned(),
            audience,
            body,
        });
    }

    fn arm(&mut self, due: Millis, kind: TimerKind, conversation: &ConversationId) {
        if let Target::Live(engine) = &mut self.engine {
            engine.timers.push(Reverse(Timer {
                due,
                kind,
                conversation: *conversation,
            }));
        }
    }

    fn conversation(&self, id: &ConversationId) -> Option<&Conversation> {
        self.engine.state.conversation(*id)
    }

    fn channel_audience(conversation: &Conversation) -> Audience {
        Audience::Channel {
            plugin: conversation.external.plugin.clone(),
            thread: conversation.external.key.clone(),
            customer: conversation.customer.id.clone(),
        }
    }

    fn has_voice_controls(&self, conversation: &Conversation) -> bool {
        self.engine
            .plugins
            .get(&conversation.external.plugin)
            .is_some_and(|plugin| plugin.voice_controls)
    }

    /// Media for `supervisor` on a call needs a media endpoint the plugin knows (the voice-ari
    /// plugin's `supervisor_endpoints`): without one, listening, coaching or joining could
    /// only fail later, out of sight, so the configuration alone refuses it up front.
    fn media_endpoint(
        &self,
        conversation: &Conversation,
        supervisor: &UserId,
        action: &str,
    ) -> Result<(), Refusal> {
        let Some(plugin) = self.engine.plugins.get(&conversation.external.plugin) else {
            return Ok(());
        };
        match &plugin.media_supervisors {
            Some(listed) if plugin.voice_controls && !listed.contains(supervisor) => {
                Err(Refusal::new(
                    Code::NoMediaEndpoint,
                    format!(
                        "{supervisor} has no media endpoint on plugin {} (its configuration gives none), so cannot {action} call {}",
                        plugin.id, conversation.id
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Moves a conversation to `to`, with its timeline entry and the notice to followers.
    fn set_state(&mut self, id: &ConversationId, to: ConversationState) {
        let Some(from) = self.conversation(id).map(|conversation| conversation.state) else {
            return;
        };
        if from == to {
            return;
        }
        self.change(Change::StateChanged { id: *id, to });
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::StateChanged { from, to },
        );
        self.notify(
            Some(id),
            Audience::Conversation,
            NotificationBody::StateChanged { from, to },
        );
        if to == ConversationState::Closed {
            self.arm(
                self.now.plus(self.engine.setup.closed_retention),
                TimerKind::Evict,
                id,
            );
        }
    }

    /// Holds the primary agent's capacity for an `active` conversation (no-op if held).
    fn hold_capacity(&mut self, id: &ConversationId) {
        let Some(conversation) = self.conversation(id) else {
            return;
        };
        let Some(agent) = conversation.agent.clone() else {
            return;
        };
        if conversation
            .capacity
            .as_ref()
            .is_some_and(|hold| hold.agent == agent)
        {
            return;
        }
        let units = self.engine.policy(conversation.channel).capacity_units;
        self.change(Change::CapacityHeld {
            id: *id,
            agent,
            units,
        });
    }

    fn release_capacity(&mut self, id: &ConversationId) {
        let Some(hold) = self.conversation(id).and_then(|c| c.capacity.clone()) else {
            return;
        };
        self.change(Change::CapacityReleased { id: *id });
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::CapacityReleased {
                agent: hold.agent,
                units: hold.units,
            },
        );
    }

    /// Sets an agent's presence (a routing-platform event or a command).
    fn change_presence(&mut self, agent: AgentId, presence: Presence) -> Result<Reply, Refusal> {
        let current = self
            .engine
            .state
            .agents
            .get(&agent)
            .map(|agent| agent.presence)
            .ok_or_else(|| {
                Refusal::new(
                    Code::UnknownAgent,
                    format!("agent {agent} is not in the roster"),
                )
            })?;
        if current != presence {
            self.change(Change::PresenceChanged {
                agent: agent.clone(),
                presence,
            });
            self.notify(
                None,
                Audience::Agent { agent },
                NotificationBody::PresenceChanged { presence },
            );
        }
        Ok(Reply::default())
    }

    /// Makes `agent` the primary agent. Someone who handles a conversation does not also
    /// supervise it (D365, Flex): a seat the agent held ends, and a consultant is promoted.
    fn make_primary(&mut self, id: &ConversationId, agent: &AgentId) {
        let supervisor = UserId::new(agent.as_str());
        if self
            .conversation(id)
            .is_some_and(|conversation| conversation.seat(&supervisor).is_some())
        {
            self.release_seat(id, &supervisor, EndReason::BecameAgent);
        }
        if self
            .conversation(id)
            .is_some_and(|conversation| conversation.consultants.contains(agent))
        {
            self.change(Change::ConsultantRemoved {
                id: *id,
                agent: agent.clone(),
            });
        }
        self.change(Change::AgentSet {
            id: *id,
            agent: Some(agent.clone()),
        });
    }

    /// Drops every supervisor (the primary agent left, or the conversation closes).
    fn drop_supervisors(&mut self, id: &ConversationId, reason: EndReason) {
        let Some(seats) = self.conversation(id).map(|c| c.seats.clone()) else {
            return;
        };
        let voice = self
            .conversation(id)
            .is_some_and(|conversation| self.has_voice_controls(conversation));
        for seat in seats {
            self.change(Change::SeatReleased {
                id: *id,
                supervisor: seat.supervisor.clone(),
            });
            self.timeline(
                id,
                Visibility::Internal,
                TimelineEvent::SupervisionEnded {
                    supervisor: seat.supervisor.clone(),
                    mode: seat.mode,
                    started_at: seat.since,
                    reason,
                    error: None,
                },
            );
            if voice {
                let control = MediaControl::Stop {
                    supervisor: seat.supervisor.clone(),
                };
                let audience = self.conversation(id).map(Self::channel_audience);
                if let Some(audience) = audience {
                    self.notify(Some(id), audience, NotificationBody::Media { control });
                }
            }
            self.notify(
                Some(id),
                Audience::Supervisor {
                    supervisor: seat.supervisor,
                },
                NotificationBody::SupervisionEnded { reason },
            );
        }
    }

    /// Ends a conversation: supervisors drop out, capacity is released, the thread is free
    /// for a new conversation.
    fn close(&mut self, id: &ConversationId) {
        self.drop_supervisors(id, EndReason::Closed);
        self.release_capacity(id);
        self.set_state(id, ConversationState::Closed);
    }

    fn accept(&mut self, reply: Reply) {
        self.out.reply = Some(Ok(reply));
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.out.reply = Some(Err(refusal));
    }
}
