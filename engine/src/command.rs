//! Engine step 2b: commands from the admin API — the supervision rules (monitor, whisper,
//! join, barge, write, leave, assign, transfer, force-close) and presence changes. Each rule's
//! source is cited where it is enforced; `engine::tests` has one named test per rule.

use std::sync::Arc;

use super::Step;
use super::domain::stable_key;
use super::domain::{
    AgentId, Conversation, ConversationId, ConversationState, JoinMode, MediaState, QueueId,
    SupervisionMode, UserId, Visibility,
};
use super::effect::{
    Audience, Author, Change, Code, EndReason, MediaControl, NotificationBody, Override, Refusal,
    Reply, TimelineEvent,
};
use super::input::{Action, Actor, AssignTarget, Command, ProviderError, Role};

type Decision = Result<Reply, Refusal>;

impl Step<'_> {
    pub(super) fn command(&mut self, command: Command) {
        let Command {
            actor,
            idempotency,
            action,
        } = command;
        let key = idempotency.as_ref().map(|idempotency| {
            stable_key(&[
                b"command",
                actor.id.as_str().as_bytes(),
                idempotency.key.as_bytes(),
            ])
        });
        if let (Some(key), Some(idempotency)) = (key, &idempotency)
            && let Some(answer) = self.engine.state.answers.get(&key)
        {
            // Amazon Connect's ClientToken: the same key and body answers the same.
            let replay = if answer.fingerprint == idempotency.fingerprint {
                answer.reply.clone().map(|reply| Reply {
                    replayed: true,
                    ..reply
                })
            } else {
                Err(Refusal::new(
                    Code::IdempotencyKeyReused,
                    format!(
                        "idempotency key {:?} was used with another request",
                        idempotency.key
                    ),
                ))
            };
            self.out.reply = Some(replay);
            return;
        }
        let decision = self.action(&actor, action);
        // Every rule is checked before the first change, so a refusal has changed nothing.
        debug_assert!(
            decision.is_ok() || self.out.is_empty(),
            "a refused command emitted effects"
        );
        if let (Some(key), Some(idempotency)) = (key, idempotency) {
            self.change(Change::Answered {
                key,
                fingerprint: idempotency.fingerprint,
                reply: decision.clone(),
            });
        }
        self.out.reply = Some(decision);
    }

    pub(super) fn action(&mut self, actor: &Actor, action: Action) -> Decision {
        if let Action::SetPresence { agent, presence } = action {
            return self.set_presence(actor, agent, presence);
        }
        if !actor.may_supervise() {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("{} needs the supervisor or admin role", action.kind()),
            ));
        }
        match action {
            Action::Monitor { conversation } => self.monitor(actor, &conversation),
            Action::StopMonitor { conversation } => self.stop_monitor(actor, &conversation),
            Action::Whisper { conversation, text } => self.whisper(actor, &conversation, text),
            Action::Join { conversation, mode } => self.join(actor, &conversation, mode),
            Action::Barge { conversation } => self.barge(actor, &conversation),
            Action::Message {
                conversation,
                text,
                visibility,
            } => self.write(actor, &conversation, text, visibility),
            Action::Leave { conversation } => self.leave(actor, &conversation),
            Action::Assign {
                conversation,
                target: AssignTarget::Queue(queue),
                ..
            } => self.assign_to_queue(actor, &conversation, queue),
            Action::Assign {
                conversation,
                target: AssignTarget::Agent(agent),
                override_presence,
                override_capacity,
            } => self.assign_to_agent(
                actor,
                &conversation,
                agent,
                override_presence,
                override_capacity,
            ),
            Action::Transfer {
                conversation,
                agent,
            } => self.transfer(actor, &conversation, agent),
            Action::ForceClose {
                conversation,
                reason,
                confirm,
            } => self.force_close(actor, &conversation, reason, confirm),
            Action::EndLapsedSeats { supervisor } => self.end_lapsed_seats(actor, &supervisor),
            Action::SetPresence { .. } => unreachable!("handled above"),
        }
    }

    /// The monitor lease (README, "What frontends need"): a supervisor who is gone (every live
    /// stream closed for the lease) holds no seat, so a closed browser tab never keeps a monitor
    /// slot — voice allows one. Each seat ends as `leave` would, a silent monitor as silently as it
    /// began.
    fn end_lapsed_seats(&mut self, actor: &Actor, supervisor: &UserId) -> Decision {
        if !actor.is_admin() {
            return Err(Refusal::new(
                Code::Forbidden,
                "only the daemon (an admin) ends lapsed seats",
            ));
        }
        let held: Vec<(ConversationId, SupervisionMode, bool)> = self
            .engine
            .state
            .conversations()
            .filter_map(|conversation| {
                let seat = conversation.seat(supervisor)?;
                let tell_agent = self
                    .engine
                    .policy(conversation.channel)
                    .tell_agent_on_monitor;
                Some((conversation.id, seat.mode, tell_agent))
            })
            .collect();
        let mut silent = true;
        for (id, mode, tell_agent) in &held {
            silent &= *mode == SupervisionMode::Monitor && !tell_agent;
            self.release_seat(id, supervisor, EndReason::LeaseExpired);
        }
        self.out.silent = silent && !held.is_empty();
        Ok(Reply::default())
    }

    /// The conversation, if the actor may see it. Expertflow scopes supervisors to their
    /// Keycloak teams and D365 to their queues: outside them a conversation does not exist.
    fn visible(&self, actor: &Actor, id: &ConversationId) -> Result<&Conversation, Refusal> {
        let not_found = || Refusal::new(Code::NotFound, format!("conversation {id} not found"));
        let conversation = self.conversation(id).ok_or_else(not_found)?;
        let team = self
            .engine
            .queue(&conversation.queue)
            .map(|queue| &queue.team);
        match team {
            Some(team) if actor.sees_team(team) => Ok(conversation),
            None if actor.is_admin() => Ok(conversation),
            _ => Err(not_found()),
        }
    }

    /// Silent monitoring (D365, Genesys, Expertflow).
    fn monitor(&mut self, actor: &Actor, id: &ConversationId) -> Decision {
        let conversation = self.visible(actor, id)?;
        // D365: monitor only active, waiting and wrap-up conversations.
        require_state(
            conversation,
            &[
                ConversationState::Active,
                ConversationState::Waiting,
                ConversationState::WrapUp,
            ],
            "monitored",
        )?;
        not_involved(conversation, &actor.id)?;
        // Genesys allows one monitor on a call, Amazon Connect 2 on voice and 5 on chat.
        let limit = self.engine.policy(conversation.channel).monitor_limit;
        let holders: Vec<UserId> = conversation
            .listening_seats()
            .map(|seat| seat.supervisor.clone())
            .collect();
        if holders.len() >= limit as usize {
            return Err(Refusal {
                code: Code::MonitorLimit,
                detail: format!(
                    "{} allows {limit} monitor(s) per conversation; held by {}",
                    conversation.channel,
                    join_names(&holders)
                ),
                holders,
            });
        }
        let tell_agent = self
            .engine
            .policy(conversation.channel)
            .tell_agent_on_monitor;
        let voice = self.has_voice_controls(conversation);
        if voice {
            self.media_endpoint(conversation, &actor.id, "monitor")?;
        }
        let agent = conversation.agent.clone();
        let channel = Self::channel_audience(conversation);
        self.change(Change::SeatTaken {
            id: *id,
            supervisor: actor.id.clone(),
            mode: SupervisionMode::Monitor,
        });
        // Genesys and Expertflow: silent monitoring tells nobody, but it is on the record.
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::SupervisionStarted {
                supervisor: actor.id.clone(),
                mode: SupervisionMode::Monitor,
            },
        );
        if voice {
            self.media(
                id,
                channel,
                MediaControl::Listen {
                    supervisor: actor.id.clone(),
                    agent: agent.clone(),
                },
            );
        }
        if tell_agent && let Some(agent) = agent {
            self.notify(
                Some(id),
                Audience::Agent { agent },
                NotificationBody::MonitoringStarted {
                    supervisor: actor.id.clone(),
                },
            );
        } else {
            // Genesys, Expertflow: nobody on the conversation can tell it started.
            self.out.silent = true;
        }
        Ok(self.reply_for(id))
    }

    fn stop_monitor(&mut self, actor: &Actor, id: &ConversationId) -> Decision {
        let conversation = self.visible(actor, id)?;
        let mode = match conversation.seat(&actor.id) {
            Some(seat) if seat.mode.is_listening() => seat.mode,
            _ => {
                return Err(Refusal::new(
                    Code::NotMonitoring,
                    format!("{} is not monitoring conversation {id}", actor.id),
                ));
            }
        };
        let tell_agent = self
            .engine
            .policy(conversation.channel)
            .tell_agent_on_monitor;
        self.release_seat(id, &actor.id, EndReason::Left);
        // A silent monitor ends as silently as it started.
        self.out.silent = mode == SupervisionMode::Monitor && !tell_agent;
        Ok(self.reply_for(id))
    }

    /// Whisper: monitoring or joined is required (Expertflow); the text reaches the agent
    /// only — never the customer's channel or record (the FreeSWITCH whisper-leak bug).
    fn whisper(&mut self, actor: &Actor, id: &ConversationId, text: Arc<str>) -> Decision {
        let conversation = self.visible(actor, id)?;
        let Some(seat) = conversation.seat(&actor.id) else {
            return Err(Refusal::new(
                Code::NotMonitoring,
                format!(
                    "{} must monitor or join conversation {id} to whisper",
                    actor.id
                ),
            ));
        };
        let mode = seat.mode;
        let voice = conversation.channel == super::ChannelKind::Voice;
        // Expertflow: whisper on voice needs the plugin's voice controls.
        if voice && !self.has_voice_controls(conversation) {
            return Err(voice_not_supported(conversation, "whisper"));
        }
        if voice {
            self.media_endpoint(conversation, &actor.id, "whisper on")?;
        }
        let agent = conversation.agent.clone();
        let channel = Self::channel_audience(conversation);
        if mode == SupervisionMode::Monitor {
            self.change_seat(id, &actor.id, mode, SupervisionMode::Whisper);
            if voice {
                self.media(
                    id,
                    channel,
                    MediaControl::Coach {
                        supervisor: actor.id.clone(),
                        agent: agent.clone(),
                    },
                );
            }
        }
        self.timeline(
            id,
            Visibility::Whisper,
            TimelineEvent::Whisper {
                supervisor: actor.id.clone(),
                agent: agent.clone(),
                text: text.clone(),
            },
        );
        if let Some(agent) = agent {
            self.notify(
                Some(id),
                Audience::Agent { agent },
                NotificationBody::Whisper {
                    supervisor: actor.id.clone(),
                    text,
                },
            );
        }
        Ok(self.reply_for(id))
    }

    /// Join as consultant (D365): internal by default; agent and customer are told.
    fn join(&mut self, actor: &Actor, id: &ConversationId, mode: JoinMode) -> Decision {
        let conversation = self.visible(actor, id)?;
        require_state(
            conversation,
            &[ConversationState::Active, ConversationState::Waiting],
            "joined",
        )?;
        let target = mode.supervision_mode();
        let current = conversation.seat(&actor.id).map(|seat| seat.mode);
        match current {
            // The escalation ladder: a monitor or whisperer may step up to consultant.
            Some(mode) if mode.is_listening() => {}
            Some(_) => return Err(already_participating(conversation, &actor.id)),
            None => not_involved(conversation, &actor.id)?,
        }
        if conversation.channel == super::ChannelKind::Voice {
            if !self.has_voice_controls(conversation) {
                return Err(voice_not_supported(conversation, "join"));
            }
            self.media_endpoint(conversation, &actor.id, "join")?;
        }
        self.enter_publicly(id, &actor.id, current, target, mode);
        Ok(self.reply_for(id))
    }

    /// Barge: only from an active monitor session (Expertflow, Avaya), one at a time
    /// (Amazon Connect).
    fn barge(&mut self, actor: &Actor, id: &ConversationId) -> Decision {
        let conversation = self.visible(actor, id)?;
        require_state(
            conversation,
            &[ConversationState::Active, ConversationState::Waiting],
            "barged into",
        )?;
        if conversation.agent.as_ref().map(AgentId::as_str) == Some(actor.id.as_str()) {
            return Err(own_conversation(conversation));
        }
        let current = match conversation.seat(&actor.id).map(|seat| seat.mode) {
            Some(SupervisionMode::Barge) => {
                return Err(already_participating(conversation, &actor.id));
            }
            Some(mode) if mode.is_listening() => mode,
            _ => {
                return Err(Refusal::new(
                    Code::NotMonitoring,
                    format!("barge needs an active monitor session on conversation {id}"),
                ));
            }
        };
        if conversation.channel == super::ChannelKind::Voice {
            if !self.has_voice_controls(conversation) {
                return Err(voice_not_supported(conversation, "barge"));
            }
            self.media_endpoint(conversation, &actor.id, "barge into")?;
        }
        let holders: Vec<UserId> = conversation
            .seats
            .iter()
            .filter(|seat| seat.mode == SupervisionMode::Barge)
            .map(|seat| seat.supervisor.clone())
            .collect();
        if !holders.is_empty() {
            return Err(Refusal {
                code: Code::BargeLimit,
                detail: format!(
                    "only one supervisor may barge; {} already does",
                    join_names(&holders)
                ),
                holders,
            });
        }
        self.enter_publicly(
            id,
            &actor.id,
            Some(current),
            SupervisionMode::Barge,
            JoinMode::Public,
        );
        Ok(self.reply_for(id))
    }

    /// A supervisor writes. A silent monitor cannot reach the customer (Expertflow); an
    /// internal consultant writes to the agent only.
    fn write(
        &mut self,
        actor: &Actor,
        id: &ConversationId,
        text: Arc<str>,
        visibility: Visibility,
    ) -> Decision {
        let conversation = self.visible(actor, id)?;
        let mode = conversation.seat(&actor.id).map(|seat| seat.mode);
        let allowed = match (mode, visibility) {
            (Some(mode), Visibility::Public) => mode.is_public(),
            (Some(mode), _) => mode.is_joined(),
            (None, _) => false,
        };
        if !allowed {
            let why = match mode {
                None => "has not joined".to_owned(),
                Some(mode) if mode.is_listening() => {
                    format!(
                        "is a silent {} (join, barge or whisper instead)",
                        mode.as_str()
                    )
                }
                Some(_) => {
                    "joined internally; public messages need a public join or barge".to_owned()
                }
            };
            return Err(Refusal::new(
                Code::NotJoined,
                format!("{} {why} on conversation {id}", actor.id),
            ));
        }
        let visibility = if visibility == Visibility::Whisper {
            Visibility::Internal
        } else {
            visibility
        };
        if visibility == Visibility::Public {
            require_state(
                conversation,
                &[ConversationState::Active, ConversationState::Waiting],
                "written to publicly",
            )?;
        }
        let channel = Self::channel_audience(conversation);
        let agent = conversation.agent.clone();
        let author = Author::Supervisor(actor.id.clone());
        self.change(Change::Activity {
            id: *id,
            customer: false,
            sentiment: None,
        });
        self.timeline(
            id,
            visibility,
            TimelineEvent::Message {
                author: author.clone(),
                text: text.clone(),
                reply_to: None,
            },
        );
        let body = NotificationBody::Message {
            author,
            text,
            visibility,
        };
        if visibility == Visibility::Public {
            self.notify(Some(id), channel, body.clone());
        }
        if let Some(agent) = agent {
            self.notify(Some(id), Audience::Agent { agent }, body.clone());
        }
        let others: Vec<UserId> = self
            .conversation(id)
            .map(|c| {
                c.seats
                    .iter()
                    .filter(|seat| seat.supervisor != actor.id)
                    .map(|seat| seat.supervisor.clone())
                    .collect()
            })
            .unwrap_or_default();
        for supervisor in others {
            self.notify(Some(id), Audience::Supervisor { supervisor }, body.clone());
        }
        Ok(self.reply_for(id))
    }

    fn leave(&mut self, actor: &Actor, id: &ConversationId) -> Decision {
        let conversation = self.visible(actor, id)?;
        if conversation.seat(&actor.id).is_none() {
            return Err(Refusal::new(
                Code::NotParticipating,
                format!("{} takes no part in conversation {id}", actor.id),
            ));
        }
        self.release_seat(id, &actor.id, EndReason::Left);
        Ok(self.reply_for(id))
    }

    /// D365: assign only open, unassigned conversations; to another queue it stays open.
    fn assign_to_queue(&mut self, actor: &Actor, id: &ConversationId, queue: QueueId) -> Decision {
        let conversation = self.visible(actor, id)?;
        require_unassigned(conversation)?;
        let known = self
            .engine
            .queue(&queue)
            .is_some_and(|target| actor.sees_team(&target.team));
        if !known {
            return Err(Refusal::new(
                Code::UnknownQueue,
                format!("queue {queue} is not one of your teams' queues"),
            ));
        }
        if conversation.queue == queue {
            return Err(Refusal::new(
                Code::SameQueue,
                format!("conversation {id} is already in queue {queue}"),
            ));
        }
        let from = conversation.queue.clone();
        self.change(Change::QueueChanged {
            id: *id,
            queue: queue.clone(),
        });
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::AssignedToQueue {
                from,
                to: queue.clone(),
                by: Some(actor.id.clone()),
            },
        );
        self.notify(
            Some(id),
            Audience::Conversation,
            NotificationBody::Assigned { agent: None, queue },
        );
        Ok(self.reply_for(id))
    }

    /// D365: assigning to an agent checks the queue's allowed presences and free capacity;
    /// the overrides bypass them, are audited, and report by how much capacity is exceeded.
    fn assign_to_agent(
        &mut self,
        actor: &Actor,
        id: &ConversationId,
        agent_id: AgentId,
        override_presence: bool,
        override_capacity: bool,
    ) -> Decision {
        let conversation = self.visible(actor, id)?;
        require_unassigned(conversation)?;
        let agent = self.target_agent(actor, &agent_id)?;
        let queue = self.engine.queue(&conversation.queue);
        let units = self.engine.policy(conversation.channel).capacity_units;
        let mut overrides = Vec::new();
        if !queue.is_some_and(|queue| queue.allowed_presences.contains(&agent.presence)) {
            if !override_presence {
                return Err(Refusal::new(
                    Code::PresenceNotAllowed,
                    format!(
                        "agent {agent_id} is {}, which queue {} does not assign to",
                        agent.presence, conversation.queue
                    ),
                ));
            }
            overrides.push(Override::Presence {
                presence: agent.presence,
            });
        }
        let exceeded_by = (agent.held() + units).saturating_sub(agent.capacity);
        if exceeded_by > 0 {
            if !override_capacity {
                return Err(Refusal::new(
                    Code::CapacityExceeded,
                    format!(
                        "agent {agent_id} has {} of {} units free; this conversation needs {units}",
                        agent.free(),
                        agent.capacity
                    ),
                ));
            }
            overrides.push(Override::Capacity { exceeded_by });
        }
        let queue_id = conversation.queue.clone();
        self.make_primary(id, &agent_id);
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::AssignedToAgent {
                agent: agent_id.clone(),
                by: actor.id.clone(),
                overrides: overrides.clone(),
            },
        );
        self.set_state(id, ConversationState::Active);
        self.hold_capacity(id);
        self.notify(
            Some(id),
            Audience::Agent {
                agent: agent_id.clone(),
            },
            NotificationBody::Assigned {
                agent: Some(agent_id),
                queue: queue_id,
            },
        );
        Ok(Reply {
            overrides,
            capacity_exceeded_by: (exceeded_by > 0).then_some(exceeded_by),
            ..self.reply_for(id)
        })
    }

    /// D365 transfer: active or waiting, channel policy, same queue, allowed presence, not
    /// to the current agent, never to a bot; the previous agent stays as consultant.
    fn transfer(&mut self, actor: &Actor, id: &ConversationId, agent_id: AgentId) -> Decision {
        let conversation = self.visible(actor, id)?;
        require_state(
            conversation,
            &[ConversationState::Active, ConversationState::Waiting],
            "transferred",
        )?;
        if !self.engine.policy(conversation.channel).transfer {
            return Err(Refusal::new(
                Code::ChannelNotSupported,
                format!(
                    "the {} channel policy does not allow supervisor transfers",
                    conversation.channel
                ),
            ));
        }
        let agent = self.target_agent(actor, &agent_id)?;
        let Some(previous) = conversation.agent.clone() else {
            return Err(Refusal::new(
                Code::InvalidState,
                format!("conversation {id} has no agent to transfer from"),
            ));
        };
        if previous == agent_id {
            return Err(Refusal::new(
                Code::SameAgent,
                format!("agent {agent_id} already has conversation {id}"),
            ));
        }
        if !agent.queues.contains(&conversation.queue) {
            return Err(Refusal::new(
                Code::NotInQueue,
                format!(
                    "agent {agent_id} does not serve queue {}",
                    conversation.queue
                ),
            ));
        }
        let allowed = self
            .engine
            .queue(&conversation.queue)
            .is_some_and(|queue| queue.allowed_presences.contains(&agent.presence));
        if !allowed {
            return Err(Refusal::new(
                Code::PresenceNotAllowed,
                format!(
                    "agent {agent_id} is {}, which queue {} does not assign to",
                    agent.presence, conversation.queue
                ),
            ));
        }
        let units = self.engine.policy(conversation.channel).capacity_units;
        let exceeded_by = (agent.held() + units).saturating_sub(agent.capacity);
        let active = conversation.state == ConversationState::Active;
        let channel = Self::channel_audience(conversation);
        let queue = conversation.queue.clone();
        self.make_primary(id, &agent_id);
        self.change(Change::ConsultantAdded {
            id: *id,
            agent: previous.clone(),
        });
        if active {
            // The capacity moves with the conversation; a waiting one holds none.
            self.hold_capacity(id);
        }
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::Transferred {
                from: previous.clone(),
                to: agent_id.clone(),
                by: actor.id.clone(),
            },
        );
        let body = NotificationBody::Transferred {
            from: previous.clone(),
            to: agent_id.clone(),
        };
        self.notify(
            Some(id),
            Audience::Agent {
                agent: agent_id.clone(),
            },
            NotificationBody::Assigned {
                agent: Some(agent_id),
                queue,
            },
        );
        self.notify(Some(id), Audience::Agent { agent: previous }, body.clone());
        self.notify(Some(id), Audience::Conversation, body.clone());
        self.notify(Some(id), channel, body);
        Ok(Reply {
            capacity_exceeded_by: (active && exceeded_by > 0).then_some(exceeded_by),
            ..self.reply_for(id)
        })
    }

    /// D365 force close: any non-closed conversation, with explicit confirmation; everyone is
    /// told, the channel ends the session, capacity is released.
    fn force_close(
        &mut self,
        actor: &Actor,
        id: &ConversationId,
        reason: Option<Box<str>>,
        confirm: bool,
    ) -> Decision {
        let conversation = self.visible(actor, id)?;
        if conversation.state == ConversationState::Closed {
            return Err(Refusal::new(
                Code::InvalidState,
                format!("conversation {id} is already closed"),
            ));
        }
        if !confirm {
            return Err(Refusal::new(
                Code::ConfirmationRequired,
                "force-close ends the customer's session; send \"confirm\": true",
            ));
        }
        let channel = Self::channel_audience(conversation);
        let agent = conversation.agent.clone();
        let consultants = conversation.consultants.clone();
        let supervisors: Vec<UserId> = conversation
            .seats
            .iter()
            .map(|seat| seat.supervisor.clone())
            .filter(|supervisor| supervisor != &actor.id)
            .collect();
        let body = NotificationBody::ClosedBySupervisor {
            supervisor: actor.id.clone(),
            reason: reason.clone(),
        };
        self.timeline(
            id,
            Visibility::Public,
            TimelineEvent::ForceClosed {
                by: actor.id.clone(),
                reason,
            },
        );
        self.notify(Some(id), channel.clone(), body.clone());
        self.notify(Some(id), channel, NotificationBody::EndSession);
        for agent in agent.into_iter().chain(consultants) {
            self.notify(Some(id), Audience::Agent { agent }, body.clone());
        }
        for supervisor in supervisors {
            self.notify(Some(id), Audience::Supervisor { supervisor }, body.clone());
        }
        self.close(id);
        Ok(self.reply_for(id))
    }

    /// The agent itself, an admin, or a channel gateway sets presence.
    fn set_presence(
        &mut self,
        actor: &Actor,
        agent: AgentId,
        presence: super::Presence,
    ) -> Decision {
        let itself = actor.has(Role::Agent) && actor.id.as_str() == agent.as_str();
        if !(itself || actor.is_admin() || actor.has(Role::Ingest)) {
            return Err(Refusal::new(
                Code::Forbidden,
                format!("only agent {agent} itself, an admin or ingest may set its presence"),
            ));
        }
        self.change_presence(agent, presence)
    }

    /// An assignment or transfer target the actor may see; never a bot (D365).
    fn target_agent(&self, actor: &Actor, agent_id: &AgentId) -> Result<&super::Agent, Refusal> {
        let agent = self
            .engine
            .state
            .agents
            .get(agent_id)
            .filter(|agent| {
                actor.is_admin() || agent.teams.iter().any(|team| actor.sees_team(team))
            })
            .ok_or_else(|| {
                Refusal::new(
                    Code::UnknownAgent,
                    format!("agent {agent_id} is not an agent of your teams"),
                )
            })?;
        if agent.bot {
            return Err(Refusal::new(
                Code::TargetIsBot,
                format!(
                    "{agent_id} is a bot; conversations are never assigned or transferred to bots"
                ),
            ));
        }
        Ok(agent)
    }

    fn change_seat(
        &mut self,
        id: &ConversationId,
        supervisor: &UserId,
        from: SupervisionMode,
        to: SupervisionMode,
    ) {
        self.change(Change::SeatChanged {
            id: *id,
            supervisor: supervisor.clone(),
            mode: to,
        });
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::SupervisionChanged {
                supervisor: supervisor.clone(),
                from,
                to,
            },
        );
    }

    /// Joins or barges: takes or upgrades the seat, tells agent, customer and followers.
    fn enter_publicly(
        &mut self,
        id: &ConversationId,
        supervisor: &UserId,
        current: Option<SupervisionMode>,
        target: SupervisionMode,
        media: JoinMode,
    ) {
        let Some(conversation) = self.conversation(id) else {
            return;
        };
        let voice = self.has_voice_controls(conversation);
        let channel = Self::channel_audience(conversation);
        let agent = conversation.agent.clone();
        match current {
            Some(from) => self.change_seat(id, supervisor, from, target),
            None => {
                self.change(Change::SeatTaken {
                    id: *id,
                    supervisor: supervisor.clone(),
                    mode: target,
                });
                self.timeline(
                    id,
                    Visibility::Internal,
                    TimelineEvent::SupervisionStarted {
                        supervisor: supervisor.clone(),
                        mode: target,
                    },
                );
            }
        }
        let body = NotificationBody::SupervisorJoined {
            supervisor: supervisor.clone(),
            mode: target,
        };
        if voice {
            self.media(
                id,
                channel.clone(),
                MediaControl::Join {
                    supervisor: supervisor.clone(),
                    mode: media,
                },
            );
        }
        self.notify(Some(id), channel, body.clone());
        if let Some(agent) = agent {
            self.notify(Some(id), Audience::Agent { agent }, body.clone());
        }
        self.notify(Some(id), Audience::Conversation, body);
    }

    /// Asks the call's plugin for a supervisor's media (listen, coach, join); the seat's
    /// media is pending until the delivery worker reports the provider's answers.
    fn media(&mut self, id: &ConversationId, channel: Audience, control: MediaControl) {
        let supervisor = match &control {
            MediaControl::Listen { supervisor, .. }
            | MediaControl::Coach { supervisor, .. }
            | MediaControl::Join { supervisor, .. } => Some(supervisor.clone()),
            MediaControl::Stop { .. } => None,
        };
        self.notify(Some(id), channel, NotificationBody::Media { control });
        if let Some(supervisor) = supervisor {
            self.change(Change::SeatMedia {
                id: *id,
                supervisor,
                media: MediaState::Pending,
            });
        }
    }

    /// Ends one supervisor's participation; a silent monitor's end is as silent as its start.
    pub(super) fn release_seat(
        &mut self,
        id: &ConversationId,
        supervisor: &UserId,
        reason: EndReason,
    ) {
        self.release_seat_because(id, supervisor, reason, None);
    }

    /// [`Self::release_seat`], with the provider's reason when media failed.
    pub(super) fn release_seat_because(
        &mut self,
        id: &ConversationId,
        supervisor: &UserId,
        reason: EndReason,
        error: Option<ProviderError>,
    ) {
        let Some(conversation) = self.conversation(id) else {
            return;
        };
        let Some(seat) = conversation.seat(supervisor).cloned() else {
            return;
        };
        let voice = self.has_voice_controls(conversation);
        let channel = Self::channel_audience(conversation);
        let agent = conversation.agent.clone();
        self.change(Change::SeatReleased {
            id: *id,
            supervisor: supervisor.clone(),
        });
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::SupervisionEnded {
                supervisor: supervisor.clone(),
                mode: seat.mode,
                started_at: seat.since,
                reason,
                error,
            },
        );
        if voice {
            self.notify(
                Some(id),
                channel.clone(),
                NotificationBody::Media {
                    control: MediaControl::Stop {
                        supervisor: supervisor.clone(),
                    },
                },
            );
        }
        let left = NotificationBody::SupervisorLeft {
            supervisor: supervisor.clone(),
        };
        match seat.mode {
            SupervisionMode::Monitor => {}
            SupervisionMode::Whisper => {
                if let Some(agent) = agent {
                    self.notify(Some(id), Audience::Agent { agent }, left);
                }
            }
            _ => {
                if let Some(agent) = agent {
                    self.notify(Some(id), Audience::Agent { agent }, left.clone());
                }
                self.notify(Some(id), channel, left.clone());
                self.notify(Some(id), Audience::Conversation, left);
            }
        }
    }
}

fn require_state(
    conversation: &Conversation,
    allowed: &[ConversationState],
    what: &str,
) -> Result<(), Refusal> {
    if allowed.contains(&conversation.state) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|state| state.as_str()).collect();
    Err(Refusal::new(
        Code::InvalidState,
        format!(
            "conversation {} is {}; only {} conversations can be {what}",
            conversation.id,
            conversation.state,
            names.join(", ")
        ),
    ))
}

fn require_unassigned(conversation: &Conversation) -> Result<(), Refusal> {
    if conversation.state == ConversationState::Open && conversation.agent.is_none() {
        return Ok(());
    }
    Err(Refusal::new(
        Code::InvalidState,
        format!(
            "conversation {} is {}; only open, unassigned conversations can be assigned",
            conversation.id, conversation.state
        ),
    ))
}

/// D365, Flex and ChanSpy: no supervising your own conversation, nor one you take part in.
fn not_involved(conversation: &Conversation, user: &UserId) -> Result<(), Refusal> {
    if conversation.agent.as_ref().map(AgentId::as_str) == Some(user.as_str()) {
        return Err(own_conversation(conversation));
    }
    if conversation.involves(user.as_str()) {
        return Err(already_participating(conversation, user));
    }
    Ok(())
}

fn own_conversation(conversation: &Conversation) -> Refusal {
    Refusal::new(
        Code::OwnConversation,
        format!(
            "you are the agent of conversation {}; supervisors cannot supervise themselves",
            conversation.id
        ),
    )
}

fn already_participating(conversation: &Conversation, user: &UserId) -> Refusal {
    let role = conversation
        .seat(user)
        .map(|seat| seat.mode.as_str())
        .unwrap_or("consultant");
    Refusal::new(
        Code::AlreadyParticipating,
        format!(
            "{user} already takes part in conversation {} as {role}",
            conversation.id
        ),
    )
}

fn voice_not_supported(conversation: &Conversation, what: &str) -> Refusal {
    Refusal::new(
        Code::ChannelNotSupported,
        format!(
            "plugin {} does not declare voice controls, so {what} is not possible on this call",
            conversation.external.plugin
        ),
    )
}

fn join_names(users: &[UserId]) -> String {
    users
        .iter()
        .map(UserId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
