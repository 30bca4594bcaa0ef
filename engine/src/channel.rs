//! Engine step 2a: canonical channel events — what providers and routing platforms report
//! (a conversation starts, a message arrives, an agent accepts, someone leaves).

use std::sync::Arc;

use super::domain::stable_key;
use super::domain::{
    AgentId, ChannelKind, ConversationId, ConversationState, Customer, Direction, ExternalRef,
    MediaState, QueueId, SupervisionMode, Visibility,
};
use super::effect::{
    Audience, Author, Change, Code, EndReason, NotificationBody, Refusal, Reply, TimelineEvent,
};
use super::input::{
    ChannelEvent, ConversationRef, EventBody, EventConversation, ProviderError, ReceiptStatus,
    Sender,
};
use super::{Step, TimerKind};

/// What a new conversation starts with.
struct Opening {
    external: ExternalRef,
    channel: ChannelKind,
    direction: Direction,
    subject: Option<Box<str>>,
    customer: Customer,
    queue: Option<QueueId>,
}

impl Step<'_> {
    pub(super) fn channel_event(&mut self, event: ChannelEvent) {
        let dedup_key = event
            .id
            .as_deref()
            .map(|id| stable_key(&[b"event", event.source.as_str().as_bytes(), id.as_bytes()]));
        if let Some(key) = dedup_key
            && self.engine.state.has_seen(key)
        {
            // Said back to the caller: a resent webhook learns it was a duplicate, and of
            // which conversation (while its thread is still known).
            let conversation = match event.body.conversation() {
                Some(EventConversation::Thread(thread)) => {
                    self.engine.state.live_thread(thread).map(|c| c.id)
                }
                Some(EventConversation::Reference(reference)) => self.resolve(reference).ok(),
                None => None,
            };
            self.accept(Reply {
                conversation,
                replayed: true,
                ..Reply::default()
            });
            return;
        }
        if let Err(refusal) = self.check_source(&event.body) {
            self.refuse(refusal);
            return;
        }
        match self.event_body(event.body) {
            Ok(reply) => {
                if let Some(key) = dedup_key
                    && !self.out.is_empty()
                {
                    self.change(Change::Seen { key });
                }
                self.accept(reply);
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// What cannot be true of an event whatever the state (a canonical event may name
    /// anything): a thread of a plugin that is not configured, or a channel other than the
    /// plugin's.
    fn check_source(&self, body: &EventBody) -> Result<(), Refusal> {
        let external = match body.conversation() {
            Some(EventConversation::Thread(thread)) => thread,
            Some(EventConversation::Reference(ConversationRef::External(thread))) => thread,
            Some(EventConversation::Reference(ConversationRef::Id { .. })) | None => {
                return Ok(());
            }
        };
        let Some(plugin) = self.engine.plugin(external.plugin.as_str()) else {
            return Err(Refusal::new(
                Code::UnknownPlugin,
                format!(
                    "the thread names plugin {:?}, which is not configured",
                    external.plugin.as_str()
                ),
            ));
        };
        match body.channel() {
            Some(channel) if channel != plugin.channel => Err(Refusal::new(
                Code::ChannelMismatch,
                format!(
                    "plugin {} carries {} conversations, not {channel}",
                    plugin.id, plugin.channel
                ),
            )),
            _ => Ok(()),
        }
    }

    fn event_body(&mut self, body: EventBody) -> Result<Reply, Refusal> {
        match body {
            EventBody::Started {
                conversation,
                channel,
                direction,
                subject,
                customer,
                queue,
            } => self.started(conversation, channel, direction, subject, customer, queue),
            EventBody::Message {
                conversation,
                channel,
                sender,
                text,
                visibility,
                sentiment,
                customer,
                reply_to,
            } => self.message(
                conversation,
                channel,
                sender,
                text,
                visibility,
                sentiment,
                customer,
                reply_to,
            ),
            EventBody::Accepted {
                conversation,
                agent,
            } => self.accepted(conversation, agent),
            EventBody::Paused { conversation } => {
                let id = self.resolve(&conversation)?;
                if self.conversation(&id).map(|c| c.state) == Some(ConversationState::Active) {
                    self.set_state(&id, ConversationState::Waiting);
                    self.release_capacity(&id);
                }
                Ok(self.reply_for(&id))
            }
            EventBody::Resumed { conversation } => {
                let id = self.resolve(&conversation)?;
                let resumable = self
                    .conversation(&id)
                    .is_some_and(|c| c.state == ConversationState::Waiting && c.agent.is_some());
                if resumable {
                    self.set_state(&id, ConversationState::Active);
                    self.hold_capacity(&id);
                }
                Ok(self.reply_for(&id))
            }
            EventBody::AgentLeft {
                conversation,
                agent,
            } => self.agent_left(conversation, agent),
            EventBody::CustomerLeft { conversation } => self.customer_left(conversation),
            EventBody::Closed { conversation } => {
                let id = self.resolve(&conversation)?;
                if self.conversation(&id).map(|c| c.state) != Some(ConversationState::Closed) {
                    self.close(&id);
                }
                Ok(self.reply_for(&id))
            }
            EventBody::Typing {
                conversation,
                sender,
            } => {
                let id = self.resolve(&conversation)?;
                self.relay_to_seats(
                    &id,
                    NotificationBody::Typing {
                        author: author_of(sender),
                    },
                );
                Ok(self.reply_for(&id))
            }
            EventBody::Receipt {
                conversation,
                message_id,
                status,
                error,
                provider_id,
            } => self.receipt(conversation, message_id, status, error, provider_id),
            EventBody::Media {
                conversation,
                supervisor,
                error,
            } => {
                let id = self.resolve(&conversation)?;
                // A supervisor who left meanwhile: nothing to change.
                let seat = self.conversation(&id).and_then(|known| {
                    let tell_agent = self.engine.policy(known.channel).tell_agent_on_monitor;
                    known
                        .seat(&supervisor)
                        .map(|seat| seat.mode == SupervisionMode::Monitor && !tell_agent)
                });
                if let Some(silent) = seat {
                    // A silent monitor's media, live or failed, is as silent as its start.
                    self.out.silent = silent;
                    match error {
                        None => self.change(Change::SeatMedia {
                            id,
                            supervisor,
                            media: MediaState::Live,
                        }),
                        Some(error) => self.release_seat_because(
                            &id,
                            &supervisor,
                            EndReason::MediaFailed,
                            Some(error),
                        ),
                    }
                }
                Ok(self.reply_for(&id))
            }
            EventBody::Sentiment {
                conversation,
                score,
            } => {
                let id = self.resolve(&conversation)?;
                self.change(Change::Activity {
                    id,
                    customer: false,
                    sentiment: Some(score),
                });
                Ok(self.reply_for(&id))
            }
            EventBody::Updated {
                conversation,
                subject,
                queue,
            } => self.updated(conversation, subject, queue),
            EventBody::AgentPresence { agent, presence } => self.change_presence(agent, presence),
        }
    }

    /// A conversation started on the provider (or a start for a live thread, which refreshes its subject).
    fn started(
        &mut self,
        conversation: ExternalRef,
        channel: ChannelKind,
        direction: Direction,
        subject: Option<Box<str>>,
        customer: Customer,
        queue: Option<QueueId>,
    ) -> Result<Reply, Refusal> {
        if let Some(id) = self.engine.state.live_thread(&conversation).map(|c| c.id) {
            // A start for a live thread (the provider re-sent it, or an outbound
            // conversation got its first answer) refreshes its subject only.
            if subject.is_some() && self.conversation(&id).is_some_and(|c| c.subject != subject) {
                self.change_subject(&id, subject);
            }
            return Ok(self.reply_for(&id));
        }
        let id = self.open(Opening {
            external: conversation,
            channel,
            direction,
            subject,
            customer,
            queue,
        });
        Ok(self.reply_for(&id))
    }

    /// A message on the provider's thread (which may open the conversation).
    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        conversation: ExternalRef,
        channel: ChannelKind,
        sender: Sender,
        text: Arc<str>,
        visibility: Visibility,
        sentiment: Option<f32>,
        customer: Option<Customer>,
        reply_to: Option<Box<str>>,
    ) -> Result<Reply, Refusal> {
        // The hot path: one lookup for what the message needs.
        let live = match &mut self.engine {
            super::Target::Live(engine) => engine
                .state
                .live_thread_mut(&conversation)
                .map(|c| (c.id, c.state, !c.seats.is_empty())),
            super::Target::Dry(engine) => engine
                .state
                .live_thread(&conversation)
                .map(|c| (c.id, c.state, !c.seats.is_empty())),
        };
        let (id, state, supervised) = match live {
            Some(live) => live,
            None => {
                let direction = if sender == Sender::Customer {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                let customer = customer.unwrap_or_else(|| Customer {
                    id: conversation.key.clone(),
                    name: None,
                });
                let id = self.open(Opening {
                    external: conversation,
                    channel,
                    direction,
                    subject: None,
                    customer,
                    queue: None,
                });
                (id, ConversationState::Open, false)
            }
        };
        let author = author_of(sender);
        let customer = author == Author::Customer;
        let sentiment = if customer { sentiment } else { None };
        self.change(Change::Activity {
            id,
            customer,
            sentiment,
        });
        let event = TimelineEvent::Message {
            author: author.clone(),
            text: text.clone(),
            reply_to,
        };
        self.timeline(&id, visibility, event);
        if supervised {
            self.relay_to_seats(
                &id,
                NotificationBody::Message {
                    author,
                    text,
                    visibility,
                },
            );
        }
        Ok(Reply {
            state: Some(state),
            conversation: Some(id),
            ..Reply::default()
        })
    }

    /// An agent took the conversation on the routing platform.
    fn accepted(
        &mut self,
        conversation: ConversationRef,
        agent: AgentId,
    ) -> Result<Reply, Refusal> {
        let id = self.resolve(&conversation)?;
        if !self.engine.state.agents.contains_key(&agent) {
            return Err(Refusal::new(
                Code::UnknownAgent,
                format!("agent {agent} is not in the roster"),
            ));
        }
        let (state, current, queue) = {
            let c = self
                .conversation(&id)
                .ok_or_else(|| unknown(&conversation))?;
            (c.state, c.agent.clone(), c.queue.clone())
        };
        // An agent of another team would take the conversation out of sight of the
        // supervisors who may see it.
        let team = self.engine.queue(&queue).map(|queue| queue.team.clone());
        if let (Some(team), Some(roster)) = (team, self.engine.state.agents.get(&agent))
            && !roster.teams.contains(&team)
            && !roster
                .queues
                .iter()
                .any(|own| self.engine.queue(own).is_some_and(|own| own.team == team))
        {
            return Err(Refusal::new(
                Code::NotInTeam,
                format!(
                    "agent {agent} has no queue or team in team {team}, whose queue {queue} conversation {id} is in"
                ),
            ));
        }
        match state {
            ConversationState::Open | ConversationState::Active | ConversationState::Waiting => {}
            ConversationState::WrapUp | ConversationState::Closed => {
                return Err(Refusal::new(
                    Code::InvalidState,
                    format!(
                        "conversation {id} is {state}; only open, active or waiting conversations can be accepted"
                    ),
                ));
            }
        }
        if current.as_ref() == Some(&agent) {
            return Ok(self.reply_for(&id));
        }
        // The routing platform is the authority on who handles the conversation:
        // it may hand it from one agent to another without asking us.
        self.release_capacity(&id);
        self.make_primary(&id, &agent);
        self.timeline(
            &id,
            Visibility::Internal,
            TimelineEvent::Accepted {
                agent: agent.clone(),
            },
        );
        self.notify(
            Some(&id),
            Audience::Agent {
                agent: agent.clone(),
            },
            NotificationBody::Assigned {
                agent: Some(agent),
                queue,
            },
        );
        if state == ConversationState::Waiting {
            // Still paused: capacity is held again when it resumes.
        } else {
            self.set_state(&id, ConversationState::Active);
            self.hold_capacity(&id);
        }
        Ok(self.reply_for(&id))
    }

    /// An agent left the conversation on the provider.
    fn agent_left(
        &mut self,
        conversation: ConversationRef,
        agent: AgentId,
    ) -> Result<Reply, Refusal> {
        let id = self.resolve(&conversation)?;
        let (primary, consultant, state) = {
            let c = self
                .conversation(&id)
                .ok_or_else(|| unknown(&conversation))?;
            (
                c.agent.as_ref() == Some(&agent),
                c.consultants.contains(&agent),
                c.state,
            )
        };
        if consultant {
            self.change(Change::ConsultantRemoved {
                id,
                agent: agent.clone(),
            });
            self.timeline(
                &id,
                Visibility::Internal,
                TimelineEvent::AgentLeft { agent },
            );
        } else if primary
            && matches!(
                state,
                ConversationState::Active | ConversationState::Waiting
            )
        {
            // Expertflow and ChanSpy's `E` option: supervisors leave with the agent.
            self.drop_supervisors(&id, EndReason::AgentLeft);
            self.release_capacity(&id);
            self.change(Change::AgentSet { id, agent: None });
            self.timeline(
                &id,
                Visibility::Internal,
                TimelineEvent::AgentLeft { agent },
            );
            self.set_state(&id, ConversationState::Open);
        } else if primary && state == ConversationState::WrapUp {
            // Leaving during wrap-up finishes it.
            self.timeline(
                &id,
                Visibility::Internal,
                TimelineEvent::AgentLeft { agent },
            );
            self.close(&id);
        }
        Ok(self.reply_for(&id))
    }

    /// The customer hung up or resolved the thread.
    fn customer_left(&mut self, conversation: ConversationRef) -> Result<Reply, Refusal> {
        let id = self.resolve(&conversation)?;
        let (state, has_agent, channel) = {
            let c = self
                .conversation(&id)
                .ok_or_else(|| unknown(&conversation))?;
            (c.state, c.agent.is_some(), c.channel)
        };
        match state {
            ConversationState::Active | ConversationState::Waiting if has_agent => {
                self.set_state(&id, ConversationState::WrapUp);
                match self.engine.policy(channel).wrap_up_capacity {
                    super::WrapUpCapacity::Always => self.hold_capacity(&id),
                    super::WrapUpCapacity::Never => self.release_capacity(&id),
                    super::WrapUpCapacity::For(hold) => {
                        self.hold_capacity(&id);
                        self.arm(self.now.plus(hold), TimerKind::WrapUpCapacity, &id);
                    }
                }
            }
            ConversationState::Closed | ConversationState::WrapUp => {}
            _ => self.close(&id),
        }
        Ok(self.reply_for(&id))
    }

    /// A message's delivery receipt: with the provider's id for one of our messages, that id
    /// is remembered; a receipt naming only the provider's id is put on our message.
    fn receipt(
        &mut self,
        conversation: ConversationRef,
        message_id: Box<str>,
        status: ReceiptStatus,
        error: Option<ProviderError>,
        provider_id: Option<Box<str>>,
    ) -> Result<Reply, Refusal> {
        let id = self.resolve(&conversation)?;
        let (message_id, provider_id) = match provider_id {
            Some(provider_id) => {
                self.change(Change::ProviderMessage {
                    id,
                    provider_id: provider_id.clone(),
                    message_id: message_id.clone(),
                });
                (message_id, Some(provider_id))
            }
            None => match self
                .conversation(&id)
                .and_then(|known| known.message_of(&message_id))
            {
                Some(ours) => (Box::from(ours), Some(message_id)),
                None => (message_id, None),
            },
        };
        self.change(Change::Delivery {
            id,
            message_id: message_id.clone(),
            status,
        });
        self.timeline(
            &id,
            Visibility::Internal,
            TimelineEvent::Receipt {
                message_id,
                status,
                error,
                provider_id,
            },
        );
        Ok(self.reply_for(&id))
    }

    /// The provider changed the conversation's subject or queue.
    fn updated(
        &mut self,
        conversation: ConversationRef,
        subject: Option<Box<str>>,
        queue: Option<QueueId>,
    ) -> Result<Reply, Refusal> {
        let id = self.resolve(&conversation)?;
        let (current_subject, current_queue) = {
            let c = self
                .conversation(&id)
                .ok_or_else(|| unknown(&conversation))?;
            (c.subject.clone(), c.queue.clone())
        };
        if subject.is_some() && subject != current_subject {
            self.change_subject(&id, subject);
        }
        if let Some(queue) = queue
            && queue != current_queue
        {
            if self.engine.queue(&queue).is_none() {
                return Err(Refusal::new(
                    Code::UnknownQueue,
                    format!("queue {queue} is not in the roster"),
                ));
            }
            self.change(Change::QueueChanged {
                id,
                queue: queue.clone(),
            });
            self.timeline(
                &id,
                Visibility::Internal,
                TimelineEvent::AssignedToQueue {
                    from: current_queue,
                    to: queue.clone(),
                    by: None,
                },
            );
            self.notify(
                Some(&id),
                Audience::Conversation,
                NotificationBody::Assigned { agent: None, queue },
            );
        }
        Ok(self.reply_for(&id))
    }

    /// Starts a conversation in the queue its event names, else the plugin's default queue.
    fn open(&mut self, opening: Opening) -> ConversationId {
        // Opening a conversation is never silent: its record takes the next public position.
        let public = self.engine.state.position.public + 1;
        let mut id = conversation_id(&opening.external, self.now.0, public);
        if let Some(partitioning) = self.engine.setup.partitioning {
            id = partitioning.place(id);
        }
        let plugin_queue = self
            .engine
            .plugin(opening.external.plugin.as_str())
            .map(|plugin| plugin.default_queue.clone());
        let requested = opening.queue.clone();
        let queue = match opening.queue {
            Some(queue) if self.engine.queue(&queue).is_some() => queue,
            _ => plugin_queue.unwrap_or_else(|| self.engine.setup.queues[0].id.clone()),
        };
        let unknown_request = requested.filter(|requested| requested != &queue);
        self.change(Change::Opened {
            id,
            external: opening.external,
            channel: opening.channel,
            direction: opening.direction,
            subject: opening.subject,
            customer: opening.customer,
            queue: queue.clone(),
        });
        self.timeline(
            &id,
            Visibility::Internal,
            TimelineEvent::Created {
                channel: opening.channel,
                queue: queue.clone(),
                requested_queue: unknown_request,
            },
        );
        self.notify(
            Some(&id),
            Audience::Conversation,
            NotificationBody::Opened {
                channel: opening.channel,
                queue,
            },
        );
        if let Some(timeout) = self.engine.policy(opening.channel).inactivity_timeout {
            self.arm(self.now.plus(timeout), TimerKind::Inactivity, &id);
        }
        id
    }

    fn change_subject(&mut self, id: &ConversationId, subject: Option<Box<str>>) {
        self.change(Change::SubjectChanged {
            id: *id,
            subject: subject.clone(),
        });
        self.timeline(
            id,
            Visibility::Internal,
            TimelineEvent::SubjectChanged { subject },
        );
    }

    /// Finds the conversation a channel event names; closed threads are not live.
    fn resolve(&self, reference: &ConversationRef) -> Result<ConversationId, Refusal> {
        let found = match reference {
            ConversationRef::External(external) => {
                self.engine.state.live_thread(external).map(|c| c.id)
            }
            ConversationRef::Id { id } => self.conversation(id).map(|c| c.id),
        };
        found.ok_or_else(|| unknown(reference))
    }

    /// Live traffic for the supervisors taking part (monitors included: that is what
    /// monitoring is). Whispers never come through here.
    fn relay_to_seats(&mut self, id: &ConversationId, body: NotificationBody) {
        let Some(conversation) = self.conversation(id) else {
            return;
        };
        if conversation.seats.is_empty() {
            return;
        }
        let supervisors: Vec<_> = conversation
            .seats
            .iter()
            .map(|seat| seat.supervisor.clone())
            .collect();
        for supervisor in supervisors {
            self.notify(Some(id), Audience::Supervisor { supervisor }, body.clone());
        }
    }

    pub(super) fn reply_for(&self, id: &ConversationId) -> Reply {
        Reply {
            conversation: Some(*id),
            state: self.conversation(id).map(|c| c.state),
            ..Reply::default()
        }
    }
}

fn author_of(sender: Sender) -> Author {
    match sender {
        Sender::Customer => Author::Customer,
        Sender::Agent(agent) => Author::Agent(agent),
        Sender::Bot(bot) => Author::Bot(bot),
        Sender::System => Author::System,
    }
}

fn unknown(reference: &ConversationRef) -> Refusal {
    let named = match reference {
        ConversationRef::External(external) => {
            format!("thread {} of plugin {}", external.key, external.plugin)
        }
        ConversationRef::Id { id } => format!("conversation {id}"),
    };
    Refusal::new(
        Code::UnknownConversation,
        format!("no live conversation for {named}"),
    )
}

/// `c-` and 20 hex digits of a stable hash of the thread, the time and the log position:
/// opaque, URL-safe, and the same on replay.
fn conversation_id(external: &ExternalRef, now: i64, public: u64) -> ConversationId {
    ConversationId::from_key(stable_key(&[
        external.plugin.as_bytes(),
        external.key.as_bytes(),
        &now.to_le_bytes(),
        &public.to_le_bytes(),
    ]))
}
