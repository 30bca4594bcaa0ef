//! Property test: random sequences of channel events, commands and ticks never break the
//! invariants (a closed conversation has no supervisors; capacity used equals the units of the
//! conversations holding it; monitor and barge limits hold), and replaying the records of a
//! run rebuilds exactly the state the run ended with.

use proptest::prelude::*;

use crate::testing::*;
use crate::*;

const PLUGINS: [&str; 6] = [
    "web-chat",
    "sms-twilio",
    "whatsapp-cloud",
    "open-messaging",
    "voice-ari",
    "voice-basic",
];
const AGENTS: [&str; 7] = ["a-1", "a-2", "a-3", "a-4", "b-1", "bot-1", "lead"];
const SUPERVISORS: [&str; 4] = ["sup-1", "sup-2", "lead", "sup-b"];
const QUEUES: [&str; 4] = ["general", "vip", "escalations", "billing"];

/// One step of a scenario; indexes pick threads, conversations, agents and supervisors.
#[derive(Clone, Debug)]
enum Step {
    Start {
        plugin: usize,
        thread: u8,
    },
    CustomerMessage {
        plugin: usize,
        thread: u8,
        score: i8,
        id: Option<u8>,
    },
    Accept {
        conversation: u8,
        agent: usize,
    },
    Pause {
        conversation: u8,
    },
    Resume {
        conversation: u8,
    },
    AgentLeft {
        conversation: u8,
        agent: usize,
    },
    CustomerLeft {
        conversation: u8,
    },
    Close {
        conversation: u8,
    },
    Presence {
        agent: usize,
        presence: usize,
    },
    Supervise {
        conversation: u8,
        supervisor: usize,
        action: u8,
        target: usize,
        flag: bool,
    },
    Advance {
        minutes: u16,
    },
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    let plugin = 0..PLUGINS.len();
    prop_oneof![
        (plugin.clone(), 0..6u8).prop_map(|(plugin, thread)| Step::Start { plugin, thread }),
        (plugin, 0..6u8, any::<i8>(), proptest::option::of(0..4u8)).prop_map(
            |(plugin, thread, score, id)| Step::CustomerMessage {
                plugin,
                thread,
                score,
                id
            }
        ),
        (any::<u8>(), 0..AGENTS.len()).prop_map(|(conversation, agent)| Step::Accept {
            conversation,
            agent
        }),
        any::<u8>().prop_map(|conversation| Step::Pause { conversation }),
        any::<u8>().prop_map(|conversation| Step::Resume { conversation }),
        (any::<u8>(), 0..AGENTS.len()).prop_map(|(conversation, agent)| Step::AgentLeft {
            conversation,
            agent
        }),
        any::<u8>().prop_map(|conversation| Step::CustomerLeft { conversation }),
        any::<u8>().prop_map(|conversation| Step::Close { conversation }),
        (0..AGENTS.len(), 0..5usize)
            .prop_map(|(agent, presence)| Step::Presence { agent, presence }),
        (
            any::<u8>(),
            0..SUPERVISORS.len(),
            0..12u8,
            0..AGENTS.len(),
            any::<bool>()
        )
            .prop_map(
                |(conversation, supervisor, action, target, flag)| Step::Supervise {
                    conversation,
                    supervisor,
                    action,
                    target,
                    flag,
                }
            ),
        (1..400u16).prop_map(|minutes| Step::Advance { minutes }),
        Just(Step::Tick),
    ]
}

fn pick(h: &Harness, index: u8) -> Option<ConversationId> {
    let mut ids: Vec<ConversationId> = h.engine.state().conversations().map(|c| c.id).collect();
    if ids.is_empty() {
        return None;
    }
    ids.sort();
    Some(ids[index as usize % ids.len()])
}

fn on(id: ConversationId) -> ConversationRef {
    ConversationRef::Id { id }
}

fn thread(plugin: usize, thread: u8) -> ExternalRef {
    ExternalRef {
        plugin: PLUGINS[plugin].into(),
        key: format!("t{thread}").into(),
    }
}

fn run(h: &mut Harness, step: Step) {
    let event = |h: &mut Harness, body| {
        h.event("canonical", body);
    };
    match step {
        Step::Start {
            plugin,
            thread: key,
        } => {
            h.event(
                PLUGINS[plugin],
                EventBody::Started {
                    conversation: thread(plugin, key),
                    channel: channel_of(PLUGINS[plugin]),
                    direction: Direction::Inbound,
                    subject: None,
                    customer: Customer {
                        id: format!("cust-{key}").into(),
                        name: None,
                    },
                    queue: Some(QUEUES[key as usize % QUEUES.len()].into()),
                },
            );
        }
        Step::CustomerMessage {
            plugin,
            thread: key,
            score,
            id,
        } => {
            h.input(Input::Channel(ChannelEvent {
                id: id.map(|id| format!("m{id}").into()),
                source: PLUGINS[plugin].into(),
                body: EventBody::Message {
                    reply_to: None,
                    conversation: thread(plugin, key),
                    channel: channel_of(PLUGINS[plugin]),
                    sender: Sender::Customer,
                    text: text("hello"),
                    visibility: Visibility::Public,
                    sentiment: Some(f32::from(score) / 128.0),
                    customer: None,
                },
            }));
        }
        Step::Accept {
            conversation,
            agent,
        } => {
            if let Some(id) = pick(h, conversation) {
                event(
                    h,
                    EventBody::Accepted {
                        conversation: on(id),
                        agent: AGENTS[agent].into(),
                    },
                );
            }
        }
        Step::Pause { conversation } => {
            if let Some(id) = pick(h, conversation) {
                event(
                    h,
                    EventBody::Paused {
                        conversation: on(id),
                    },
                );
            }
        }
        Step::Resume { conversation } => {
            if let Some(id) = pick(h, conversation) {
                event(
                    h,
                    EventBody::Resumed {
                        conversation: on(id),
                    },
                );
            }
        }
        Step::AgentLeft {
            conversation,
            agent,
        } => {
            if let Some(id) = pick(h, conversation) {
                event(
                    h,
                    EventBody::AgentLeft {
                        conversation: on(id),
                        agent: AGENTS[agent].into(),
                    },
                );
            }
        }
        Step::CustomerLeft { conversation } => {
            if let Some(id) = pick(h, conversation) {
                event(
                    h,
                    EventBody::CustomerLeft {
                        conversation: on(id),
                    },
                );
            }
        }
        Step::Close { conversation } => {
            if let Some(id) = pick(h, conversation) {
                event(
                    h,
                    EventBody::Closed {
                        conversation: on(id),
                    },
                );
            }
        }
        Step::Presence { agent, presence } => {
            event(
                h,
                EventBody::AgentPresence {
                    agent: AGENTS[agent].into(),
                    presence: Presence::ALL[presence],
                },
            );
        }
        Step::Supervise {
            conversation,
            supervisor,
            action,
            target,
            flag,
        } => {
            let Some(id) = pick(h, conversation) else {
                return;
            };
            let actor = match SUPERVISORS[supervisor] {
                "sup-b" => supervisor_of("sup-b", &["billing"]),
                name => supervisor_of(name, &["support"]),
            };
            let conversation = id;
            let action = match action {
                0 => Action::Monitor { conversation },
                1 => Action::StopMonitor { conversation },
                2 => Action::Whisper {
                    conversation,
                    text: text("psst"),
                },
                3 => Action::Join {
                    conversation,
                    mode: if flag {
                        JoinMode::Public
                    } else {
                        JoinMode::Internal
                    },
                },
                4 => Action::Barge { conversation },
                5 => Action::Message {
                    conversation,
                    text: text("hi"),
                    visibility: if flag {
                        Visibility::Public
                    } else {
                        Visibility::Internal
                    },
                },
                6 => Action::Leave { conversation },
                7 => Action::Assign {
                    conversation,
                    target: AssignTarget::Agent(AGENTS[target].into()),
                    override_presence: flag,
                    override_capacity: flag,
                },
                8 => Action::Assign {
                    conversation,
                    target: AssignTarget::Queue(QUEUES[target % QUEUES.len()].into()),
                    override_presence: false,
                    override_capacity: false,
                },
                9 => Action::Transfer {
                    conversation,
                    agent: AGENTS[target].into(),
                },
                10 => Action::ForceClose {
                    conversation,
                    reason: None,
                    confirm: flag,
                },
                _ => Action::SetPresence {
                    agent: AGENTS[target].into(),
                    presence: Presence::Busy,
                },
            };
            h.command(&actor, action);
        }
        Step::Advance { minutes } => h.advance(i64::from(minutes) * Millis::MINUTE),
        Step::Tick => {
            h.tick();
        }
    }
}

fn supervisor_of(id: &str, teams: &[&str]) -> Actor {
    supervisor(id, teams)
}

proptest! {
    // 256 cases in every test run; `PROPTEST_CASES=20000` for a long soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_inputs_keep_the_invariants_and_replay_exactly(steps in proptest::collection::vec(step(), 1..160)) {
        let mut policies = Setup::default_policies();
        // Exercise every wrap-up policy and a tighter voice limit across channels.
        policies.get_mut(ChannelKind::Web).wrap_up_capacity = WrapUpCapacity::For(30 * Millis::MINUTE);
        policies.get_mut(ChannelKind::Messaging).wrap_up_capacity = WrapUpCapacity::Never;
        policies.get_mut(ChannelKind::Messaging).capacity_units = 2;
        policies.get_mut(ChannelKind::Web).monitor_limit = 2;
        let mut h = Harness::with(Setup { policies, ..demo_setup() });
        for step in steps {
            run(&mut h, step);
            check_invariants(&h.engine);
        }
        h.assert_replays();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    /// A snapshot taken anywhere, serialized as the store keeps it, plus the records after it
    /// rebuild the same state; and the restored engine goes on exactly like the original.
    #[test]
    fn snapshot_plus_later_records_restore_the_same_state(
        before in proptest::collection::vec(step(), 1..80),
        after in proptest::collection::vec(step(), 0..80),
    ) {
        let mut h = Harness::new();
        for step in before {
            run(&mut h, step);
        }
        let snapshot = h.engine.state().snapshot();
        let stored: Snapshot = serde_json::from_str(&serde_json::to_string(&snapshot).unwrap()).unwrap();
        let cut = h.records.len();
        for step in after {
            run(&mut h, step);
        }
        let restored = Engine::restore(demo_setup(), Some(stored), &h.records[cut..]);
        prop_assert!(restored.state() == h.engine.state());
    }
}

/// Every kind of change survives the store's JSON encoding (the log is replayed from it).
#[test]
fn records_round_trip_through_json() {
    let mut h = Harness::new();
    let thread = h.thread("whatsapp-cloud");
    h.input(Input::Channel(ChannelEvent {
        id: Some("wamid.1".into()),
        source: "whatsapp-cloud".into(),
        body: EventBody::Message {
            reply_to: None,
            conversation: thread,
            channel: ChannelKind::Whatsapp,
            sender: Sender::Customer,
            text: text("hello"),
            visibility: Visibility::Public,
            sentiment: Some(0.5),
            customer: None,
        },
    }));
    let sup = supervisor("sup-1", &["support"]);
    let id = h.engine.state().conversations().next().unwrap().id;
    h.accept(&id, "a-1");
    h.input(Input::Command(Command {
        actor: sup,
        idempotency: Some(Idempotency {
            key: "k".into(),
            fingerprint: 7,
        }),
        action: Action::Monitor { conversation: id },
    }));
    let decoded: Vec<Record> = h
        .records
        .iter()
        .map(|record| serde_json::from_str(&serde_json::to_string(record).unwrap()).unwrap())
        .collect();
    assert_eq!(decoded, h.records);
    assert!(
        decoded
            .iter()
            .flat_map(|r| &r.changes)
            .any(|c| matches!(c, Change::Seen { .. }))
    );
    assert!(
        decoded
            .iter()
            .flat_map(|r| &r.changes)
            .any(|c| matches!(c, Change::Answered { .. }))
    );
}
