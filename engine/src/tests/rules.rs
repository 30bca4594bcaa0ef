//! One test per rule of the rules table in the README ("The supervision rules"), in the table's order, each citing its source.

use crate::testing::*;
use crate::*;

fn monitor(id: &ConversationId) -> Action {
    Action::Monitor { conversation: *id }
}

fn whisper(id: &ConversationId, words: &str) -> Action {
    Action::Whisper {
        conversation: *id,
        text: text(words),
    }
}

fn join(id: &ConversationId, mode: JoinMode) -> Action {
    Action::Join {
        conversation: *id,
        mode,
    }
}

fn barge(id: &ConversationId) -> Action {
    Action::Barge { conversation: *id }
}

fn say(id: &ConversationId, words: &str, visibility: Visibility) -> Action {
    Action::Message {
        conversation: *id,
        text: text(words),
        visibility,
    }
}

fn assign_agent(id: &ConversationId, agent: &str, presence: bool, capacity: bool) -> Action {
    Action::Assign {
        conversation: *id,
        target: AssignTarget::Agent(agent.into()),
        override_presence: presence,
        override_capacity: capacity,
    }
}

fn assign_queue(id: &ConversationId, queue: &str) -> Action {
    Action::Assign {
        conversation: *id,
        target: AssignTarget::Queue(queue.into()),
        override_presence: false,
        override_capacity: false,
    }
}

fn transfer(id: &ConversationId, agent: &str) -> Action {
    Action::Transfer {
        conversation: *id,
        agent: agent.into(),
    }
}

fn force_close(id: &ConversationId, confirm: bool) -> Action {
    Action::ForceClose {
        conversation: *id,
        reason: Some("abusive customer".into()),
        confirm,
    }
}

fn leave(id: &ConversationId) -> Action {
    Action::Leave { conversation: *id }
}

fn customer_says(h: &mut Harness, id: &ConversationId, words: &str, score: Option<f32>) -> Effects {
    let thread = h.conversation(id).external.clone();
    let channel = h.conversation(id).channel;
    h.event(
        &thread.plugin.to_string(),
        EventBody::Message {
            reply_to: None,
            conversation: thread,
            channel,
            sender: Sender::Customer,
            text: text(words),
            visibility: Visibility::Public,
            sentiment: score,
            customer: None,
        },
    )
}

// Rule: monitor only `active`, `waiting`, `wrap-up`. Source: D365 (seed docs).
#[test]
fn monitor_only_active_waiting_or_wrap_up() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let open = h.open("web-chat");
    h.command(&sup, monitor(&open)).refused(Code::InvalidState);

    let active = h.active("web-chat", "a-1");
    h.command(&sup, monitor(&active)).ok();

    let waiting = h.active("web-chat", "a-2");
    h.on(&waiting, |conversation| EventBody::Paused { conversation });
    assert_eq!(h.state_of(&waiting), ConversationState::Waiting);
    h.command(&sup, monitor(&waiting)).ok();

    let wrap = h.active("web-chat", "a-1");
    h.on(&wrap, |conversation| EventBody::CustomerLeft {
        conversation,
    });
    assert_eq!(h.state_of(&wrap), ConversationState::WrapUp);
    h.command(&sup, monitor(&wrap)).ok();

    let closed = h.active("web-chat", "a-2");
    h.on(&closed, |conversation| EventBody::Closed { conversation });
    h.command(&sup, monitor(&closed))
        .refused(Code::InvalidState);
    h.assert_replays();
}

// Rule: no supervising a conversation you are the agent of. Sources: D365, Flex, ChanSpy.
#[test]
fn no_supervising_your_own_conversation() {
    let mut h = Harness::new();
    let id = h.active("web-chat", "lead");
    let lead = supervisor("lead", &["support"]);
    for action in [monitor(&id), join(&id, JoinMode::Internal)] {
        h.command(&lead, action).refused(Code::OwnConversation);
    }
}

// Rule: no supervising a conversation you already take part in. Sources: D365, Flex, ChanSpy.
#[test]
fn no_supervising_what_you_already_take_part_in() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&sup, monitor(&id)).ok();
    h.command(&sup, monitor(&id))
        .refused(Code::AlreadyParticipating);
    h.command(&sup, join(&id, JoinMode::Public)).ok();
    h.command(&sup, join(&id, JoinMode::Public))
        .refused(Code::AlreadyParticipating);
    h.command(&sup, monitor(&id))
        .refused(Code::AlreadyParticipating);

    // The previous agent of a transferred conversation stays as consultant: it takes part.
    let transferred = h.active("web-chat", "lead");
    h.command(&sup, transfer(&transferred, "a-2")).ok();
    let lead = supervisor("lead", &["support"]);
    h.command(&lead, monitor(&transferred))
        .refused(Code::AlreadyParticipating);
}

// Rule: monitors per conversation limited per channel (voice 1, others 5); the refusal names
// who holds the slots. Sources: Genesys (1 on voice), Amazon Connect (voice 2, chat 5).
#[test]
fn monitor_limit_per_channel_names_the_holders() {
    let mut h = Harness::new();
    let chat = h.active("web-chat", "a-1");
    for n in 1..=5 {
        h.command(
            &supervisor(&format!("sup-{n}"), &["support"]),
            monitor(&chat),
        )
        .ok();
    }
    let refusal = h
        .command(&supervisor("sup-6", &["support"]), monitor(&chat))
        .refused(Code::MonitorLimit)
        .clone();
    assert_eq!(refusal.holders.len(), 5);
    assert!(refusal.detail.contains("sup-1") && refusal.detail.contains("sup-5"));

    let call = h.active("voice-ari", "a-2");
    h.command(&supervisor("sup-1", &["support"]), monitor(&call))
        .ok();
    let refusal = h
        .command(&supervisor("sup-2", &["support"]), monitor(&call))
        .refused(Code::MonitorLimit)
        .clone();
    assert_eq!(refusal.holders, vec![UserId::from("sup-1")]);

    // The limit is policy: Amazon Connect's two voice monitors.
    let mut h = Harness::with_policy(ChannelKind::Voice, |policy| policy.monitor_limit = 2);
    let call = h.active("voice-ari", "a-2");
    h.command(&supervisor("sup-1", &["support"]), monitor(&call))
        .ok();
    h.command(&supervisor("sup-2", &["support"]), monitor(&call))
        .ok();
    h.command(&supervisor("sup-3", &["support"]), monitor(&call))
        .refused(Code::MonitorLimit);
    h.assert_invariants();
}

// Rule: silent monitoring tells nobody (policy may tell the agent); it is recorded on the
// timeline with start and end. Sources: Genesys, Expertflow.
#[test]
fn silent_monitoring_tells_nobody_and_is_on_the_timeline() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("web-chat", "a-1");
    let started = h.command(&sup, monitor(&id));
    started.ok();
    assert!(
        started.notifications.is_empty(),
        "{:?}",
        started.notifications
    );
    assert!(matches!(
        started.timeline_events()[..],
        [TimelineEvent::SupervisionStarted {
            mode: SupervisionMode::Monitor,
            ..
        }]
    ));
    assert_eq!(started.timeline[0].visibility, Visibility::Internal);

    h.advance(90 * Millis::SECOND);
    let ended = h.command(&sup, Action::StopMonitor { conversation: id });
    ended.ok();
    assert!(ended.notifications.is_empty());
    match ended.timeline_events()[..] {
        [
            TimelineEvent::SupervisionEnded {
                started_at, mode, ..
            },
        ] => {
            assert_eq!(*started_at, T0);
            assert_eq!(*mode, SupervisionMode::Monitor);
        }
        ref other => panic!("{other:?}"),
    }
    h.command(&sup, Action::StopMonitor { conversation: id })
        .refused(Code::NotMonitoring);

    // A policy may tell the agent.
    let mut h = Harness::with_policy(ChannelKind::Web, |policy| {
        policy.tell_agent_on_monitor = true
    });
    let id = h.active("web-chat", "a-1");
    let started = h.command(&sup, monitor(&id));
    assert!(matches!(
        started.to_agent("a-1")[..],
        [NotificationBody::MonitoringStarted { .. }]
    ));
    assert!(started.to_channel().is_empty());
}

// Rule: a silent monitor cannot write to the customer. Source: Expertflow.
#[test]
fn a_silent_monitor_cannot_write_to_the_customer() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&sup, say(&id, "hello", Visibility::Public))
        .refused(Code::NotJoined);
    h.command(&sup, monitor(&id)).ok();
    h.command(&sup, say(&id, "hello", Visibility::Public))
        .refused(Code::NotJoined);
    h.command(&sup, say(&id, "psst", Visibility::Internal))
        .refused(Code::NotJoined);

    // Joined internally: agent-only messages, not the customer.
    h.command(&sup, join(&id, JoinMode::Internal)).ok();
    let internal = h.command(
        &sup,
        say(&id, "check the refund policy", Visibility::Internal),
    );
    internal.ok();
    assert!(internal.to_channel().is_empty());
    assert_eq!(internal.to_agent("a-1").len(), 1);
    h.command(&sup, say(&id, "hello", Visibility::Public))
        .refused(Code::NotJoined);

    // Joined publicly: the customer gets it.
    let other = supervisor("sup-2", &["support"]);
    h.command(&other, join(&id, JoinMode::Public)).ok();
    let public = h.command(&other, say(&id, "I am the supervisor", Visibility::Public));
    assert!(matches!(
        public.to_channel()[..],
        [NotificationBody::Message {
            visibility: Visibility::Public,
            ..
        }]
    ));
    assert_eq!(public.timeline[0].visibility, Visibility::Public);
}

// Rule: whisper needs monitoring or joined; reaches the agent only, never the customer
// channel or its record. Sources: Expertflow, the FreeSWITCH whisper-leak bug.
#[test]
fn whisper_needs_a_seat_and_reaches_the_agent_only() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&sup, whisper(&id, "offer a voucher"))
        .refused(Code::NotMonitoring);
    h.command(&sup, monitor(&id)).ok();
    let whispered = h.command(&sup, whisper(&id, "offer a voucher"));
    whispered.ok();
    assert!(
        whispered.to_channel().is_empty(),
        "whisper leaked to the channel"
    );
    assert!(whispered.to(&Audience::Conversation).is_empty());
    assert!(matches!(
        whispered.to_agent("a-1")[..],
        [NotificationBody::Whisper { .. }]
    ));
    assert_eq!(whispered.notifications.len(), 1, "only the agent hears it");
    for entry in &whispered.timeline {
        if matches!(entry.event, TimelineEvent::Whisper { .. }) {
            assert_eq!(entry.visibility, Visibility::Whisper);
        } else {
            assert_ne!(entry.visibility, Visibility::Public);
        }
    }
    assert_eq!(
        h.conversation(&id).seat(&sup.id).unwrap().mode,
        SupervisionMode::Whisper
    );

    // Joined consultants may whisper too, and stay consultants.
    let other = supervisor("sup-2", &["support"]);
    h.command(&other, join(&id, JoinMode::Internal)).ok();
    h.command(&other, whisper(&id, "psst")).ok();
    assert_eq!(
        h.conversation(&id).seat(&other.id).unwrap().mode,
        SupervisionMode::ConsultInternal
    );

    // On voice the whisper is a coaching snoop, still never the customer's audio.
    let call = h.active("voice-ari", "a-2");
    h.command(&sup, monitor(&call)).ok();
    let coached = h.command(&sup, whisper(&call, "slow down"));
    let channel = coached.to_channel();
    assert!(matches!(
        channel[..],
        [NotificationBody::Media {
            control: MediaControl::Coach { .. }
        }]
    ));
}

// Rule: join as consultant, mode `internal` by default or `public`; agent and customer are
// told. Source: D365.
#[test]
fn join_as_consultant_tells_agent_and_customer() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("web-chat", "a-1");
    assert_eq!(JoinMode::default(), JoinMode::Internal);
    let joined = h.command(&sup, join(&id, JoinMode::default()));
    joined.ok();
    assert!(matches!(
        joined.to_agent("a-1")[..],
        [NotificationBody::SupervisorJoined {
            mode: SupervisionMode::ConsultInternal,
            ..
        }]
    ));
    assert!(matches!(
        joined.to_channel()[..],
        [NotificationBody::SupervisorJoined { .. }]
    ));
    let other = supervisor("sup-2", &["support"]);
    h.command(&other, join(&id, JoinMode::Public)).ok();
    assert_eq!(
        h.conversation(&id).seat(&other.id).unwrap().mode,
        SupervisionMode::ConsultPublic
    );

    // Escalation: a monitor may step up to consultant; consulting takes no monitor slot.
    let call = h.active("voice-ari", "a-2");
    h.command(&sup, monitor(&call)).ok();
    h.command(&sup, join(&call, JoinMode::Public)).ok();
    h.command(&other, monitor(&call)).ok();
    let open = h.open("web-chat");
    h.command(&sup, join(&open, JoinMode::Public))
        .refused(Code::InvalidState);
}

// Rule: barge only from an active monitor session; at most one barging supervisor.
// Sources: Expertflow, Amazon Connect, Avaya.
#[test]
fn barge_only_from_monitoring_and_only_one_at_a_time() {
    let mut h = Harness::new();
    let first = supervisor("sup-1", &["support"]);
    let second = supervisor("sup-2", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&first, barge(&id)).refused(Code::NotMonitoring);
    h.command(&first, monitor(&id)).ok();
    let barged = h.command(&first, barge(&id));
    barged.ok();
    assert!(
        !barged.to_channel().is_empty(),
        "the customer sees the supervisor"
    );
    assert!(!barged.to_agent("a-1").is_empty());
    h.command(&second, monitor(&id)).ok();
    let refusal = h
        .command(&second, barge(&id))
        .refused(Code::BargeLimit)
        .clone();
    assert_eq!(refusal.holders, vec![UserId::from("sup-1")]);
    h.command(&first, barge(&id))
        .refused(Code::AlreadyParticipating);

    // A consultant did not come from a monitor session.
    let third = supervisor("sup-3", &["support"]);
    h.command(&third, join(&id, JoinMode::Internal)).ok();
    h.command(&third, barge(&id)).refused(Code::NotMonitoring);
    h.assert_invariants();
}

// Rule: on a call, a supervisor whom the plugin's configuration gives no media endpoint (a
// phone to ring) cannot monitor, whisper, join or barge: refused up front instead of
// answered with success while nothing can happen. Source: Genesys and Amazon Connect refuse
// monitoring to a supervisor without a station.
#[test]
fn voice_media_needs_the_supervisors_endpoint() {
    let mut setup = demo_setup();
    for plugin in &mut setup.plugins {
        if plugin.voice_controls {
            plugin.media_supervisors = Some(vec![UserId::new("sup-1")]);
        }
    }
    let mut h = Harness::with(setup);
    let call = h.active("voice-ari", "a-2");
    let without = supervisor("sup-2", &["support"]);
    let before = h.records.len();
    h.command(&without, monitor(&call))
        .refused(Code::NoMediaEndpoint);
    h.command(&without, barge(&call))
        .refused(Code::NotMonitoring);
    assert_eq!(h.records.len(), before, "a refusal changes nothing");
    let with = supervisor("sup-1", &["support"]);
    h.command(&with, monitor(&call)).ok();
    h.command(&with, whisper(&call, "psst")).ok();
    // Chat needs no media endpoint.
    let chat = h.active("web-chat", "a-1");
    h.command(&without, monitor(&chat)).ok();
}

// Rule: whisper and barge on voice only if the conversation's plugin declares the voice
// capability. Source: Expertflow.
#[test]
fn voice_whisper_and_barge_need_voice_controls() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let plain = h.active("voice-basic", "a-1");
    h.command(&sup, monitor(&plain)).ok();
    h.command(&sup, whisper(&plain, "psst"))
        .refused(Code::ChannelNotSupported);
    h.command(&sup, barge(&plain))
        .refused(Code::ChannelNotSupported);

    let controlled = h.active("voice-ari", "a-2");
    let listened = h.command(&sup, monitor(&controlled));
    assert!(matches!(
        listened.to_channel()[..],
        [NotificationBody::Media {
            control: MediaControl::Listen { .. }
        }]
    ));
    h.command(&sup, whisper(&controlled, "psst")).ok();
    let barged = h.command(&sup, barge(&controlled));
    assert!(barged.to_channel().iter().any(|body| matches!(
        body,
        NotificationBody::Media {
            control: MediaControl::Join {
                mode: JoinMode::Public,
                ..
            }
        }
    )));
}

// Rule: supervisors drop out when the primary agent leaves and when the conversation closes.
// Sources: Expertflow, ChanSpy `E`.
#[test]
fn supervisors_drop_out_with_the_agent_and_at_close() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let other = supervisor("sup-2", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&sup, monitor(&id)).ok();
    h.command(&other, join(&id, JoinMode::Public)).ok();
    let left = h.on(&id, |conversation| EventBody::AgentLeft {
        conversation,
        agent: "a-1".into(),
    });
    left.ok();
    assert!(h.conversation(&id).seats.is_empty());
    assert_eq!(h.state_of(&id), ConversationState::Open);
    assert_eq!(h.agent("a-1").used, 0);
    assert!(matches!(
        left.to_supervisor("sup-1")[..],
        [NotificationBody::SupervisionEnded {
            reason: EndReason::AgentLeft
        }]
    ));

    let id = h.active("web-chat", "a-2");
    h.command(&sup, monitor(&id)).ok();
    h.on(&id, |conversation| EventBody::CustomerLeft { conversation });
    assert_eq!(
        h.conversation(&id).seats.len(),
        1,
        "monitoring goes on in wrap-up"
    );
    let closed = h.on(&id, |conversation| EventBody::Closed { conversation });
    assert!(h.conversation(&id).seats.is_empty());
    assert!(closed.timeline_events().iter().any(|event| matches!(
        event,
        TimelineEvent::SupervisionEnded {
            reason: EndReason::Closed,
            ..
        }
    )));
    h.assert_invariants();
    h.assert_replays();
}

// Rule: assign only `open` and unassigned conversations; to an agent or to a queue other
// than the current one. Source: D365.
#[test]
fn assign_only_open_unassigned_and_to_another_queue() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.open("web-chat");
    h.command(&sup, assign_queue(&id, "general"))
        .refused(Code::SameQueue);
    let moved = h.command(&sup, assign_queue(&id, "vip"));
    assert_eq!(moved.ok().state, Some(ConversationState::Open));
    assert_eq!(h.conversation(&id).queue, QueueId::from("vip"));
    h.command(&sup, assign_queue(&id, "billing"))
        .refused(Code::UnknownQueue);

    let assigned = h.command(&sup, assign_agent(&id, "a-1", false, false));
    assert_eq!(assigned.ok().state, Some(ConversationState::Active));
    assert_eq!(h.conversation(&id).agent, Some(AgentId::from("a-1")));
    assert!(matches!(
        assigned.to_agent("a-1")[..],
        [NotificationBody::Assigned { .. }]
    ));
    h.command(&sup, assign_agent(&id, "a-2", false, false))
        .refused(Code::InvalidState);
    h.command(&sup, assign_queue(&id, "general"))
        .refused(Code::InvalidState);
    h.assert_replays();
}

// Rule: assigning to an agent checks presence against the queue's allowed presences and free
// capacity; overrides bypass them, are audited, and the reply reports the units by which
// capacity is exceeded. Source: D365.
#[test]
fn assign_checks_presence_and_capacity_with_audited_overrides() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.open("web-chat");
    h.command(&sup, assign_agent(&id, "a-3", false, false))
        .refused(Code::PresenceNotAllowed);
    let overridden = h.command(&sup, assign_agent(&id, "a-3", true, false));
    assert_eq!(
        overridden.ok().overrides,
        vec![Override::Presence {
            presence: Presence::Away
        }]
    );
    assert!(overridden.timeline_events().iter().any(|event| matches!(
        event,
        TimelineEvent::AssignedToAgent { overrides, .. } if overrides.len() == 1
    )));

    // a-1 has 2 units; fill them.
    h.active("web-chat", "a-1");
    h.active("web-chat", "a-1");
    let id = h.open("web-chat");
    let refusal = h
        .command(&sup, assign_agent(&id, "a-1", false, false))
        .refused(Code::CapacityExceeded)
        .clone();
    assert!(refusal.detail.contains("0 of 2"), "{}", refusal.detail);
    let overridden = h.command(&sup, assign_agent(&id, "a-1", false, true));
    let reply = overridden.ok();
    assert_eq!(reply.capacity_exceeded_by, Some(1));
    assert_eq!(reply.overrides, vec![Override::Capacity { exceeded_by: 1 }]);
    assert_eq!(h.agent("a-1").used, 3);
    h.assert_invariants();
}

// Rule: never assign or transfer to a bot. Source: D365.
#[test]
fn never_assign_or_transfer_to_a_bot() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.open("web-chat");
    h.command(&sup, assign_agent(&id, "bot-1", true, true))
        .refused(Code::TargetIsBot);
    let id = h.active("web-chat", "a-1");
    h.command(&sup, transfer(&id, "bot-1"))
        .refused(Code::TargetIsBot);
}

// Rule: transfer only `active` or `waiting`, only on channels whose policy allows it (default:
// all but voice), only to an agent of the same queue with allowed presence, not to the current
// agent; the previous agent stays as consultant. Source: D365.
#[test]
fn transfer_rules() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let open = h.open("web-chat");
    h.command(&sup, transfer(&open, "a-2"))
        .refused(Code::InvalidState);

    let call = h.active("voice-ari", "lead");
    h.command(&sup, transfer(&call, "a-2"))
        .refused(Code::ChannelNotSupported);

    let id = h.active("web-chat", "a-1");
    h.command(&sup, transfer(&id, "a-1"))
        .refused(Code::SameAgent);
    h.command(&sup, transfer(&id, "a-4"))
        .refused(Code::NotInQueue);
    h.command(&sup, transfer(&id, "a-3"))
        .refused(Code::PresenceNotAllowed);
    h.command(&sup, transfer(&id, "b-1"))
        .refused(Code::UnknownAgent);

    let moved = h.command(&sup, transfer(&id, "a-2"));
    assert_eq!(moved.ok().state, Some(ConversationState::Active));
    let conversation = h.conversation(&id);
    assert_eq!(conversation.agent, Some(AgentId::from("a-2")));
    assert_eq!(conversation.consultants, vec![AgentId::from("a-1")]);
    assert_eq!(
        h.agent("a-1").used,
        0,
        "capacity moves with the conversation"
    );
    assert_eq!(h.agent("a-2").used, 1);

    // Waiting conversations transfer too and hold no capacity.
    let waiting = h.active("web-chat", "a-1");
    h.on(&waiting, |conversation| EventBody::Paused { conversation });
    h.command(&sup, transfer(&waiting, "a-2")).ok();
    assert_eq!(h.agent("a-2").used, 1);
    h.on(&waiting, |conversation| EventBody::Resumed { conversation });
    assert_eq!(h.agent("a-2").used, 2);

    // Transfer is a policy: allow it on voice.
    let mut h = Harness::with_policy(ChannelKind::Voice, |policy| policy.transfer = true);
    let call = h.active("voice-ari", "a-1");
    h.command(&sup, transfer(&call, "a-2")).ok();
    h.assert_invariants();
    h.assert_replays();
}

// Rule: force close any non-closed conversation, only with `confirm`; everyone is told a
// supervisor ended it; the channel is told to end the session; capacity is released.
// Source: D365.
#[test]
fn force_close_needs_confirmation_tells_everyone_and_releases_capacity() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let watcher = supervisor("sup-2", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&watcher, monitor(&id)).ok();
    h.command(&sup, force_close(&id, false))
        .refused(Code::ConfirmationRequired);
    let closed = h.command(&sup, force_close(&id, true));
    assert_eq!(closed.ok().state, Some(ConversationState::Closed));
    let channel = closed.to_channel();
    assert!(
        channel
            .iter()
            .any(|body| matches!(body, NotificationBody::ClosedBySupervisor { .. }))
    );
    assert!(
        channel
            .iter()
            .any(|body| matches!(body, NotificationBody::EndSession))
    );
    assert!(
        closed
            .to_agent("a-1")
            .iter()
            .any(|body| matches!(body, NotificationBody::ClosedBySupervisor { .. }))
    );
    assert!(
        closed
            .to_supervisor("sup-2")
            .iter()
            .any(|body| matches!(body, NotificationBody::ClosedBySupervisor { .. }))
    );
    assert!(
        closed
            .to(&Audience::Conversation)
            .iter()
            .any(|body| matches!(
                body,
                NotificationBody::StateChanged {
                    to: ConversationState::Closed,
                    ..
                }
            ))
    );
    assert_eq!(h.agent("a-1").used, 0);
    assert!(h.conversation(&id).seats.is_empty());
    h.command(&sup, force_close(&id, true))
        .refused(Code::InvalidState);

    // Open conversations (no agent) can be force-closed as well.
    let open = h.open("web-chat");
    h.command(&sup, force_close(&open, true)).ok();
    h.assert_invariants();
}

// Rule: a supervisor sees and acts only on conversations of its teams' queues; others behave
// as not found. Sources: Expertflow (Keycloak teams), D365 queue scoping.
#[test]
fn supervisors_see_and_act_only_within_their_teams() {
    let mut h = Harness::new();
    let billing = supervisor("sup-b", &["billing"]);
    let support = supervisor("sup-s", &["support"]);
    let id = h.active("web-chat", "a-1");
    let missing = ConversationId::parse("c-00000000000000000000").unwrap();
    let not_found_detail = h
        .command(&billing, monitor(&missing))
        .refused(Code::NotFound)
        .detail
        .replace(&missing.to_string(), "ID");
    for action in [
        monitor(&id),
        whisper(&id, "x"),
        join(&id, JoinMode::Public),
        barge(&id),
        say(&id, "x", Visibility::Public),
        leave(&id),
        assign_queue(&id, "billing"),
        transfer(&id, "a-2"),
        force_close(&id, true),
        Action::StopMonitor { conversation: id },
    ] {
        let refusal = h.command(&billing, action).refused(Code::NotFound).clone();
        // Indistinguishable from a conversation that does not exist.
        assert_eq!(
            refusal.detail.replace(&id.to_string(), "ID"),
            not_found_detail
        );
    }
    let filter = report::ReportFilter::default();
    assert!(h.engine.ongoing(&billing, &filter, h.now).is_empty());
    assert!(h.engine.find(&billing, &id.to_string(), h.now).is_none());
    assert_eq!(h.engine.ongoing(&support, &filter, h.now).len(), 1);
    assert_eq!(h.engine.ongoing(&admin("root"), &filter, h.now).len(), 1);
    h.command(&support, monitor(&id)).ok();

    // Agents and gateways do not supervise.
    h.command(&agent_actor("a-2"), monitor(&id))
        .refused(Code::Forbidden);
}

// Rule: capacity — units per channel consumed while `active`; `waiting` releases them;
// `wrap-up` blocks them per policy (always / never / for a duration); monitoring and
// consulting consume none. Source: D365.
#[test]
fn capacity_follows_state_and_wrap_up_policy() {
    let mut h = Harness::with_policy(ChannelKind::Messaging, |policy| policy.capacity_units = 2);
    let id = h.active("open-messaging", "a-1");
    assert_eq!(h.agent("a-1").used, 2);
    h.on(&id, |conversation| EventBody::Paused { conversation });
    assert_eq!(h.agent("a-1").used, 0, "waiting releases capacity");
    h.on(&id, |conversation| EventBody::Resumed { conversation });
    assert_eq!(h.agent("a-1").used, 2);
    h.command(&supervisor("sup-1", &["support"]), monitor(&id))
        .ok();
    h.command(
        &supervisor("sup-2", &["support"]),
        join(&id, JoinMode::Internal),
    )
    .ok();
    assert_eq!(h.agent("a-1").used, 2, "supervision takes no capacity");
    h.on(&id, |conversation| EventBody::CustomerLeft { conversation });
    assert_eq!(h.agent("a-1").used, 2, "wrap-up blocks capacity by default");
    h.on(&id, |conversation| EventBody::Closed { conversation });
    assert_eq!(h.agent("a-1").used, 0);

    let mut never = Harness::with_policy(ChannelKind::Web, |policy| {
        policy.wrap_up_capacity = WrapUpCapacity::Never
    });
    let id = never.active("web-chat", "a-1");
    never.on(&id, |conversation| EventBody::CustomerLeft { conversation });
    assert_eq!(never.agent("a-1").used, 0, "wrap-up releases at once");

    let mut timed = Harness::with_policy(ChannelKind::Web, |policy| {
        policy.wrap_up_capacity = WrapUpCapacity::For(2 * Millis::MINUTE)
    });
    let id = timed.active("web-chat", "a-1");
    timed.on(&id, |conversation| EventBody::CustomerLeft { conversation });
    timed.advance(Millis::MINUTE);
    timed.tick();
    assert_eq!(timed.agent("a-1").used, 1);
    timed.advance(Millis::MINUTE);
    timed.tick();
    assert_eq!(
        timed.agent("a-1").used,
        0,
        "released after the wrap-up hold"
    );
    assert_eq!(timed.state_of(&id), ConversationState::WrapUp);
    timed.assert_invariants();
    timed.assert_replays();
}

// Rule: channels without an end event (SMS, WhatsApp) end by inactivity policy (WhatsApp
// 24 h service window, SMS 2 h) on a clock tick. Sources: Meta, Twilio.
#[test]
fn sms_and_whatsapp_end_by_inactivity_on_a_tick() {
    let mut h = Harness::new();
    let sms = h.active("sms-twilio", "b-1");
    let sms_thread = h.conversation(&sms).external.clone();
    let whatsapp = h.active("whatsapp-cloud", "a-1");
    let web = h.active("web-chat", "a-2");
    h.advance(Millis::HOUR);
    customer_says(&mut h, &sms, "still there?", None);
    h.advance(Millis::HOUR + 59 * Millis::MINUTE);
    h.tick();
    assert_eq!(
        h.state_of(&sms),
        ConversationState::Active,
        "activity moved the deadline"
    );
    h.advance(Millis::MINUTE);
    let ticked = h.tick();
    assert_eq!(h.state_of(&sms), ConversationState::Closed);
    assert!(ticked.timeline_events().iter().any(|event| matches!(
        event,
        TimelineEvent::ClosedByInactivity { idle_seconds: 7200 }
    )));
    assert_eq!(h.agent("b-1").used, 0);
    assert_eq!(h.state_of(&whatsapp), ConversationState::Active);

    h.advance(21 * Millis::HOUR);
    h.tick();
    assert_eq!(h.state_of(&whatsapp), ConversationState::Closed);
    assert_eq!(
        h.state_of(&web),
        ConversationState::Active,
        "web chat has end events"
    );

    // A new message on the same thread starts a new conversation.
    let again = h.event(
        "sms-twilio",
        EventBody::Message {
            reply_to: None,
            conversation: sms_thread,
            channel: ChannelKind::Sms,
            sender: Sender::Customer,
            text: text("hello again"),
            visibility: Visibility::Public,
            sentiment: None,
            customer: None,
        },
    );
    assert_ne!(again.ok().conversation.as_ref(), Some(&sms));
    h.assert_invariants();
    h.assert_replays();

    // Closed conversations are evicted after the retention period (one hour here).
    assert!(h.engine.state().conversation(sms).is_none(), "evicted");
    assert!(
        h.engine.state().conversation(whatsapp).is_some(),
        "closed just now"
    );
    h.advance(2 * Millis::HOUR);
    h.tick();
    assert!(h.engine.state().conversation(whatsapp).is_none());
    h.assert_replays();
}

// Rule: a duplicate input (same id) changes nothing; a duplicate command with the same
// idempotency key replays its first reply. Sources: Amazon Connect `ClientToken`,
// RabbitMQ at-least-once delivery.
#[test]
fn duplicates_change_nothing_and_idempotent_commands_replay() {
    let mut h = Harness::new();
    let thread = h.thread("whatsapp-cloud");
    let message = Input::Channel(ChannelEvent {
        id: Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA".into()),
        source: "whatsapp-cloud".into(),
        body: EventBody::Message {
            reply_to: None,
            conversation: thread,
            channel: ChannelKind::Whatsapp,
            sender: Sender::Customer,
            text: text("Hi, my order is late"),
            visibility: Visibility::Public,
            sentiment: Some(-0.3),
            customer: None,
        },
    });
    let first = h.input(message.clone());
    assert!(!first.ok().replayed);
    let before = h.engine.state().clone();
    let again = h.input(message);
    assert!(again.ok().replayed);
    assert!(
        again.changes.is_empty() && again.timeline.is_empty() && again.notifications.is_empty()
    );
    assert!(before == *h.engine.state());

    let id = first.ok().conversation.unwrap();
    h.accept(&id, "a-1");
    let sup = supervisor("sup-1", &["support"]);
    let keyed = |fingerprint| {
        Input::Command(Command {
            actor: sup.clone(),
            idempotency: Some(Idempotency {
                key: "req-7".into(),
                fingerprint,
            }),
            action: monitor(&id),
        })
    };
    let first = h.input(keyed(42));
    assert!(!first.ok().replayed);
    let replay = h.input(keyed(42));
    assert!(replay.ok().replayed);
    assert!(replay.changes.is_empty());
    assert_eq!(h.conversation(&id).seats.len(), 1);
    h.input(keyed(43)).refused(Code::IdempotencyKeyReused);

    // A refusal is remembered and replayed the same way.
    let other = Input::Command(Command {
        actor: sup.clone(),
        idempotency: Some(Idempotency {
            key: "req-8".into(),
            fingerprint: 1,
        }),
        action: barge(&id),
    });
    h.command(&sup, Action::StopMonitor { conversation: id })
        .ok();
    let refused = h.input(other.clone());
    assert_eq!(
        refused.reply.as_ref().unwrap_err().code,
        Code::NotMonitoring
    );
    h.command(&sup, monitor(&id)).ok();
    let replayed = h.input(other);
    assert_eq!(replayed.reply.unwrap_err().code, Code::NotMonitoring);
    h.assert_replays();
}

// Not in the table, but the engine's contract: every new conversation lands in the queue its
// event names, else its plugin's default queue (README, "Plugins").
#[test]
fn new_conversations_land_in_the_named_or_default_queue() {
    let mut h = Harness::new();
    let named = h.open_in("web-chat", Some("vip"));
    assert_eq!(h.conversation(&named).queue, QueueId::from("vip"));
    let defaulted = h.open("sms-twilio");
    assert_eq!(h.conversation(&defaulted).queue, QueueId::from("billing"));
    let unknown = h.open_in("web-chat", Some("nowhere"));
    assert_eq!(h.conversation(&unknown).queue, QueueId::from("general"));
}

// The report: wait and handle times, sentiment and supervisors, filters, 24-hour window.
#[test]
fn the_ongoing_report_shows_times_sentiment_and_supervisors() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.open("web-chat");
    customer_says(&mut h, &id, "This is awful", Some(-0.6));
    h.advance(45 * Millis::SECOND);
    h.accept(&id, "a-1");
    h.advance(5 * Millis::MINUTE);
    h.command(&sup, monitor(&id)).ok();
    let other = h.open("sms-twilio");
    let filter = report::ReportFilter::default();
    let rows = h.engine.ongoing(&admin("root"), &filter, h.now);
    assert_eq!(rows.len(), 2);
    let row = rows.iter().find(|row| row.id == id).unwrap();
    assert_eq!(row.wait_seconds, 45);
    assert_eq!(row.handle_seconds, 300);
    assert_eq!(row.sentiment.label, Some("negative"));
    assert_eq!(row.supervisors[0].mode, SupervisionMode::Monitor);
    assert_eq!(row.subject.as_deref(), Some("Order 1042 missing"));

    let by_state = report::ReportFilter {
        states: vec![ConversationState::Open],
        ..Default::default()
    };
    let open_rows = h.engine.ongoing(&admin("root"), &by_state, h.now);
    assert_eq!(
        open_rows.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&other]
    );
    let by_agent = report::ReportFilter {
        agents: vec!["a-1".into()],
        channels: vec![ChannelKind::Web],
        queues: vec!["general".into()],
        ..Default::default()
    };
    assert_eq!(h.engine.ongoing(&sup, &by_agent, h.now).len(), 1);

    h.advance(25 * Millis::HOUR);
    assert!(h.engine.ongoing(&admin("root"), &filter, h.now).is_empty());
}

// Presence changes come as canonical events or commands; agents may set only their own.
#[test]
fn presence_is_set_by_the_agent_admin_or_ingest() {
    let mut h = Harness::new();
    let set = |presence| Action::SetPresence {
        agent: "a-1".into(),
        presence,
    };
    h.command(&agent_actor("a-1"), set(Presence::Busy)).ok();
    assert_eq!(h.agent("a-1").presence, Presence::Busy);
    h.command(&agent_actor("a-2"), set(Presence::Away))
        .refused(Code::Forbidden);
    h.command(&supervisor("sup-1", &["support"]), set(Presence::Away))
        .refused(Code::Forbidden);
    h.command(&admin("root"), set(Presence::Offline)).ok();
    h.event(
        "canonical",
        EventBody::AgentPresence {
            agent: "a-1".into(),
            presence: Presence::Available,
        },
    )
    .ok();
    assert_eq!(h.agent("a-1").presence, Presence::Available);
    h.event(
        "canonical",
        EventBody::AgentPresence {
            agent: "ghost".into(),
            presence: Presence::Available,
        },
    )
    .refused(Code::UnknownAgent);
    h.assert_replays();
}

// Monitors receive the live messages; leaving ends it.
#[test]
fn monitors_receive_live_messages_until_they_leave() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&sup, monitor(&id)).ok();
    let message = customer_says(&mut h, &id, "Where is my parcel?", None);
    assert!(matches!(
        message.to_supervisor("sup-1")[..],
        [NotificationBody::Message {
            author: Author::Customer,
            ..
        }]
    ));
    h.command(&sup, leave(&id)).ok();
    h.command(&sup, leave(&id)).refused(Code::NotParticipating);
    let message = customer_says(&mut h, &id, "Hello?", None);
    assert!(message.notifications.is_empty());
}

// Found by the property test: a supervisor who becomes the conversation's agent (the routing
// platform hands it over, or a supervisor assigns or transfers it) stops supervising it, so
// nobody ever supervises their own conversation (D365, Flex, ChanSpy).
#[test]
fn a_supervisor_who_becomes_the_agent_stops_supervising() {
    let mut h = Harness::new();
    let lead = supervisor("lead", &["support"]);
    let id = h.active("web-chat", "a-1");
    h.command(&lead, join(&id, JoinMode::Public)).ok();
    let handed = h.accept(&id, "lead");
    assert!(h.conversation(&id).seats.is_empty());
    assert!(handed.timeline_events().iter().any(|event| matches!(
        event,
        TimelineEvent::SupervisionEnded {
            reason: EndReason::BecameAgent,
            ..
        }
    )));

    let other = h.active("web-chat", "a-2");
    h.command(&lead, monitor(&other)).ok();
    h.command(&supervisor("sup-1", &["support"]), transfer(&other, "lead"))
        .ok();
    assert_eq!(h.conversation(&other).agent, Some(AgentId::from("lead")));
    assert!(h.conversation(&other).seats.is_empty());
    h.assert_invariants();
    h.assert_replays();
}

/// A receipt naming only the provider's id (a status callback) lands on our message, once the
/// answer to our request named that id; an id the provider never named for us stays as it is.
#[test]
fn status_callbacks_attach_to_the_message_the_provider_named() {
    let mut h = Harness::new();
    let id = h.active("web-chat", "a-1");
    let receipt =
        |message: &str, status: ReceiptStatus, provider: Option<&str>| EventBody::Receipt {
            conversation: ConversationRef::Id { id },
            message_id: message.into(),
            status,
            error: None,
            provider_id: provider.map(Into::into),
        };
    h.event(
        "web-chat",
        receipt("ours-1", ReceiptStatus::Sent, Some("SM1")),
    )
    .ok();
    let effects = h.event("web-chat", receipt("SM1", ReceiptStatus::Delivered, None));
    assert_eq!(
        effects.timeline_events(),
        vec![&TimelineEvent::Receipt {
            message_id: "ours-1".into(),
            status: ReceiptStatus::Delivered,
            error: None,
            provider_id: Some("SM1".into()),
        }]
    );
    let effects = h.event("web-chat", receipt("SM9", ReceiptStatus::Read, None));
    assert_eq!(
        effects.timeline_events(),
        vec![&TimelineEvent::Receipt {
            message_id: "SM9".into(),
            status: ReceiptStatus::Read,
            error: None,
            provider_id: None,
        }]
    );
}

// Rule: a voice supervisor's media is pending until the provider accepted it, then live; a
// refused media request ends the session with the provider's reason. A silent monitor's media
// stays silent either way.
#[test]
fn voice_media_goes_live_or_ends_the_session() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.active("voice-ari", "a-1");
    h.command(&sup, monitor(&id)).ok();
    let media = |h: &Harness| h.conversation(&id).seats[0].media;
    assert_eq!(media(&h), Some(MediaState::Pending));
    let report = |error: Option<ProviderError>| EventBody::Media {
        conversation: ConversationRef::Id { id },
        supervisor: "sup-1".into(),
        error,
    };
    let live = h.event("voice-ari", report(None));
    live.ok();
    assert!(
        live.silent,
        "a silent monitor's media moves nothing the agent sees"
    );
    assert_eq!(media(&h), Some(MediaState::Live));

    let failed = h.event(
        "voice-ari",
        report(Some(ProviderError {
            code: "404".into(),
            text: "Channel not found".into(),
        })),
    );
    failed.ok();
    assert!(failed.silent);
    assert!(h.conversation(&id).seats.is_empty());
    match failed.timeline_events()[..] {
        [
            TimelineEvent::SupervisionEnded {
                reason: EndReason::MediaFailed,
                error: Some(error),
                ..
            },
        ] => assert_eq!(&*error.code, "404"),
        ref other => panic!("{other:?}"),
    }
    // The media already set up is torn down.
    assert!(failed.to_channel().iter().any(|body| matches!(
        body,
        NotificationBody::Media {
            control: MediaControl::Stop { .. }
        }
    )));
}

// The actions a frontend offers come from the rules themselves, run dry: every verdict is the
// live verdict, and asking changes nothing.
#[test]
fn actions_are_the_rules_run_dry() {
    let mut h = Harness::with_policy(ChannelKind::Web, |policy| policy.monitor_limit = 1);
    let chat = h.active("web-chat", "a-1");
    let sam = supervisor("sup-sam", &["support"]);
    let sue = supervisor("sup-sue", &["support"]);
    let before = h.engine.state().clone();
    let verdicts = |h: &Harness, actor: &Actor| -> Vec<(&'static str, Option<Code>)> {
        h.engine
            .actions(actor, chat, h.now)
            .into_iter()
            .map(|verdict| (verdict.action, verdict.verdict.err().map(|r| r.code)))
            .collect()
    };
    assert_eq!(
        verdicts(&h, &sam),
        vec![
            ("monitor", None),
            ("whisper", Some(Code::NotMonitoring)),
            ("join", None),
            ("barge", Some(Code::NotMonitoring)),
            ("message", Some(Code::NotJoined)),
            ("leave", Some(Code::NotParticipating)),
            ("assign", Some(Code::InvalidState)),
            ("transfer", None),
            ("force-close", None),
        ]
    );
    assert_eq!(h.engine.state(), &before, "a dry run changes nothing");

    // Each verdict is what the command itself answers.
    for verdict in h.engine.actions(&sam, chat, h.now) {
        if verdict.action == "whisper" {
            let live = h
                .command(&sam, whisper(&chat, "hi"))
                .refused(Code::NotMonitoring)
                .clone();
            assert_eq!(verdict.verdict, Err(live));
        }
    }
    h.command(&sam, monitor(&chat)).ok();
    let sue_sees = h.engine.actions(&sue, chat, h.now);
    let monitor_verdict = sue_sees.iter().find(|v| v.action == "monitor").unwrap();
    let refusal = monitor_verdict.verdict.clone().unwrap_err();
    assert_eq!(refusal.code, Code::MonitorLimit);
    assert_eq!(refusal.holders, vec![UserId::from("sup-sam")]);
    assert_eq!(
        verdicts(&h, &sam)[..6],
        [
            ("monitor", Some(Code::AlreadyParticipating)),
            ("whisper", None),
            ("join", None),
            ("barge", None),
            ("message", Some(Code::NotJoined)),
            ("leave", None),
        ]
    );
    // Outside the caller's teams every action is "not found", as the commands answer.
    let billing = supervisor("sup-bea", &["billing"]);
    assert!(
        h.engine
            .actions(&billing, chat, h.now)
            .iter()
            .all(|v| v.verdict.as_ref().is_err_and(|r| r.code == Code::NotFound))
    );
    h.assert_invariants();
}

#[test]
fn targets_carry_each_agents_and_queues_verdict() {
    let mut h = Harness::new();
    let waiting = h.open("web-chat");
    let sam = supervisor("sup-sam", &["support"]);
    let targets = h.engine.targets(&sam, waiting, h.now);
    let queue = |id: &str| {
        targets
            .assign_queues
            .iter()
            .find(|t| t.target.as_str() == id)
            .map(|t| t.verdict.clone().err().map(|r| r.code))
    };
    assert_eq!(queue("general"), Some(Some(Code::SameQueue)));
    assert_eq!(queue("vip"), Some(None));
    assert_eq!(
        queue("billing"),
        None,
        "another team's queue is not offered"
    );
    for target in &targets.assign_agents {
        let live = h.engine.check(
            &sam,
            assign_agent(&waiting, target.target.as_str(), false, false),
            h.now,
        );
        assert_eq!(target.verdict, live);
    }
    // An unassigned conversation cannot be transferred, to anyone.
    assert!(targets.transfer_agents.iter().all(|t| t.verdict.is_err()));
    let actions = h.engine.actions(&sam, waiting, h.now);
    assert!(
        actions
            .iter()
            .any(|v| v.action == "assign" && v.verdict.is_ok())
    );
}

// The monitor lease: a supervisor gone for the monitor lease holds no seat; each ends as leave
// would, a silent monitor silently.
#[test]
fn lapsed_seats_end_as_leave_would() {
    let mut h = Harness::new();
    let chat = h.active("web-chat", "a-1");
    let other = h.active("web-chat", "a-2");
    let sam = supervisor("sup-sam", &["support"]);
    h.command(&sam, monitor(&chat)).ok();
    h.command(&sam, monitor(&other)).ok();
    h.command(&sam, join(&other, JoinMode::Internal)).ok();
    let lapse = Action::EndLapsedSeats {
        supervisor: "sup-sam".into(),
    };
    h.command(&sam, lapse.clone()).refused(Code::Forbidden);
    let effects = h.command(&admin("switchboard"), lapse.clone());
    effects.ok();
    assert!(h.conversation(&chat).seats.is_empty());
    assert!(h.conversation(&other).seats.is_empty());
    let ended: Vec<_> = effects
        .timeline_events()
        .into_iter()
        .filter_map(|event| match event {
            TimelineEvent::SupervisionEnded { reason, mode, .. } => Some((*reason, *mode)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ended,
        vec![
            (EndReason::LeaseExpired, SupervisionMode::Monitor),
            (EndReason::LeaseExpired, SupervisionMode::ConsultInternal)
        ]
    );
    // The consultant's departure is told; the monitor's is not.
    assert!(effects.to_agent("a-1").is_empty());
    assert!(!effects.to_agent("a-2").is_empty());
    // Nothing held: nothing to do, nothing recorded.
    let again = h.command(&admin("switchboard"), lapse);
    again.ok();
    assert!(again.timeline_events().is_empty());
    h.assert_invariants();
    h.assert_replays();
}
