//! The pipeline over real plugins and the real store: a provider webhook becomes a
//! conversation and outbox entries in one commit; a redelivery changes nothing; what cannot be
//! handled is dead-lettered with its code; a canonical event from the routing platform is
//! applied; and a restart rebuilds the same state from the store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchboard::config;
use switchboard::engine::{ConversationId, Engine, Millis};
use switchboard::pipeline::{Completion, Disposition, Pipeline, plugin_policy};
use switchboard::plugin::{Plugin, PluginHost, PluginSettings};
use switchboard::store::{OutboxEntry, RedbStore, Store, StoreError};
use switchboard::transport::InboundMessage;
use switchboard_tests::{component, fixture, temp_dir};

const NOW: Millis = Millis(1_800_000_000_000);

/// The shipped configuration's roster with the test-built plugins.
fn open_pipeline(store_dir: &Path) -> Pipeline {
    let config = config::load_with_env(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/switchboard.toml"
        )),
        &[],
    )
    .unwrap();
    let host = PluginHost::new(64 << 20, None).unwrap();
    let mut plugins: Vec<Arc<Plugin>> = Vec::new();
    let mut policies = Vec::new();
    for configured in config
        .plugins
        .iter()
        .filter(|plugin| ["whatsapp-cloud", "sms-twilio"].contains(&plugin.id.as_str()))
    {
        let plugin = Arc::new(
            host.load(PluginSettings {
                id: configured.id.clone(),
                file: component(&configured.id),
                memory_limit: 64 << 20,
                time_limit: Duration::from_millis(100),
                settings: configured.settings.expose().to_owned(),
                secrets: configured.secrets.clone(),
                public_url: configured.public_url.clone(),
            })
            .unwrap(),
        );
        policies.push(plugin_policy(&plugin, &configured.default_queue));
        plugins.push(plugin);
    }
    let store = RedbStore::open(store_dir).unwrap();
    let recovery = store.recover().unwrap();
    let engine = Engine::restore(
        config.engine_setup(policies),
        recovery.snapshot,
        &recovery.records,
    );
    Pipeline::new(engine, plugins, Arc::new(store))
}

fn message(routing_key: &str, body: Vec<u8>, message_id: Option<&str>) -> InboundMessage {
    InboundMessage {
        ack: None,
        delivery_tag: 1,
        routing_key: routing_key.to_owned(),
        content_type: Some("application/json".to_owned()),
        message_id: message_id.map(str::to_owned),
        redelivered: false,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body,
    }
}

fn done(events: usize, duplicates: usize, conversations: &[ConversationId]) -> Disposition {
    Disposition::Done {
        events,
        duplicates,
        conversations: conversations.to_vec(),
    }
}

#[test]
fn webhook_to_conversation_and_outbox_in_one_commit_and_back_after_a_restart() {
    let dir = temp_dir("pipeline");
    let mut pipeline = open_pipeline(&dir);
    let webhook = message(
        "whatsapp-cloud",
        fixture("whatsapp", "text.json"),
        Some("amqp-1"),
    );
    let first = pipeline
        .process(std::slice::from_ref(&webhook), NOW)
        .unwrap();
    let conversation = pipeline
        .engine()
        .state()
        .conversations()
        .next()
        .expect("a conversation")
        .clone();
    assert_eq!(first, vec![done(1, 0, &[conversation.id])]);
    assert_eq!(
        conversation.queue.as_str(),
        "support-chat",
        "the plugin's default queue"
    );
    assert_eq!(conversation.customer.name.as_deref(), Some("Sheena Nelson"));
    assert!(
        conversation.sentiment.samples == 1,
        "the customer message was scored"
    );

    // A redelivery of the same message changes nothing, and says so.
    let seq = pipeline.engine().state().last_seq();
    assert_eq!(
        pipeline.process(&[webhook], NOW).unwrap(),
        vec![done(1, 1, &[conversation.id])]
    );
    assert_eq!(pipeline.engine().state().last_seq(), seq);

    // The routing platform connects an agent (canonical JSON).
    let accepted = format!(
        r#"{{"id":"route-7","source":"canonical","type":"accepted","conversation":{{"id":"{}"}},"agent":"a-ana"}}"#,
        conversation.id
    );
    assert_eq!(
        pipeline
            .process(&[message("canonical", accepted.into_bytes(), None)], NOW)
            .unwrap(),
        vec![done(1, 0, &[conversation.id])]
    );
    let after = pipeline
        .engine()
        .state()
        .conversation(conversation.id)
        .unwrap()
        .clone();
    assert_eq!(
        after.agent.as_ref().map(|agent| agent.as_str()),
        Some("a-ana")
    );

    // What cannot be handled is dead-lettered with a stable code.
    let dispositions = pipeline
        .process(
            &[
                message("whatsapp-cloud", b"{not json".to_vec(), None),
                message("fax-machine", b"hello".to_vec(), None),
                message("canonical", br#"{"source":"canonical","type":"accepted","conversation":{"id":"c-00000000000000000000"},"agent":"a-ana"}"#.to_vec(), None),
            ],
            NOW,
        )
        .unwrap();
    let codes: Vec<&str> = dispositions
        .iter()
        .map(|disposition| match disposition {
            Disposition::DeadLetter { code, .. } => code.as_str(),
            Disposition::Done { .. } => "done",
        })
        .collect();
    assert_eq!(
        codes,
        vec!["invalid-payload", "unknown-plugin", "unknown-conversation"]
    );

    // A restart rebuilds the same state from the store.
    let state = pipeline.engine().state().clone();
    drop(pipeline);
    let restarted = open_pipeline(&dir);
    assert!(*restarted.engine().state() == state);
}

#[test]
fn notifications_are_rendered_into_the_outbox() {
    let dir = temp_dir("pipeline");
    {
        let mut pipeline = open_pipeline(&dir);
        let webhook = message(
            "whatsapp-cloud",
            fixture("whatsapp", "batched.json"),
            Some("amqp-2"),
        );
        assert!(
            matches!(
                pipeline.process(&[webhook], NOW).unwrap().as_slice(),
                [Disposition::Done {
                    events: 4,
                    duplicates: 0,
                    ..
                }]
            ),
            "the batched webhook holds four events"
        );
    }
    let store = RedbStore::open(&dir).unwrap();
    let pending = store.outbox_after(None, 100).unwrap();
    let opened: Vec<_> = pending
        .iter()
        .filter(|entry| entry.event_type == "dev.switchboard.conversation.opened")
        .collect();
    assert_eq!(
        opened.len(),
        2,
        "two customers, two conversations: {pending:#?}"
    );
    for entry in &opened {
        assert!(
            entry.routing_key.starts_with("conversation.c-"),
            "{}",
            entry.routing_key
        );
        assert_eq!(
            entry.subject.as_deref(),
            entry.routing_key.strip_prefix("conversation.")
        );
        assert_eq!(entry.content_type, "application/json");
    }
}

/// A store whose commits fail, as on a full disk.
struct FailingStore(RedbStore);

impl Store for FailingStore {
    fn commit(&self, _: &switchboard::store::Batch) -> Result<(), StoreError> {
        Err(StoreError::Write("No space left on device".to_owned()))
    }
    fn recover(&self) -> Result<switchboard::store::Recovery, StoreError> {
        self.0.recover()
    }
    fn write_snapshot(&self, snapshot: &switchboard::engine::Snapshot) -> Result<(), StoreError> {
        self.0.write_snapshot(snapshot)
    }
    fn mark_sent(&self, ids: &[String]) -> Result<(), StoreError> {
        self.0.mark_sent(ids)
    }
    fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.0.outbox_after(after, limit)
    }
    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.0.outbox_len()
    }
    fn probe(&self) -> Result<(), StoreError> {
        self.0.probe()
    }
    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError> {
        self.0.outbox_newest_id()
    }

    fn timeline(
        &self,
        conversation: switchboard::engine::ConversationId,
    ) -> Result<Vec<switchboard::engine::TimelineEntry>, StoreError> {
        self.0.timeline(conversation)
    }
    fn bury(&self, dead: switchboard::store::DeadDelivery) -> Result<(), StoreError> {
        self.0.bury(dead)
    }
    fn dead_deliveries(
        &self,
        limit: usize,
    ) -> Result<Vec<switchboard::store::DeadDelivery>, StoreError> {
        self.0.dead_deliveries(limit)
    }
}

/// After a failed commit the state in memory is ahead of the store: a redelivered message would
/// look like a duplicate and be acknowledged without ever being stored. The pipeline refuses all
/// further work instead, so that the daemon stops and a restart rebuilds from the store.
#[test]
fn a_failed_commit_stops_the_pipeline_instead_of_acknowledging_a_lost_message() {
    let dir = temp_dir("pipeline-failing");
    let healthy = open_pipeline(&dir);
    let engine = Engine::restore(healthy.engine().setup().clone(), None, &[]);
    let plugins: Vec<Arc<Plugin>> = healthy.plugins().cloned().collect();
    drop(healthy);
    let mut pipeline = Pipeline::new(
        engine,
        plugins,
        Arc::new(FailingStore(
            RedbStore::open(&temp_dir("pipeline-failing-store")).unwrap(),
        )),
    );
    let webhook = message(
        "whatsapp-cloud",
        fixture("whatsapp", "text.json"),
        Some("amqp-9"),
    );
    assert!(
        pipeline
            .process(std::slice::from_ref(&webhook), NOW)
            .is_err()
    );
    // The redelivery is not taken for a duplicate: it is refused like everything else.
    assert!(pipeline.process(&[webhook], NOW).is_err());
    assert!(pipeline.tick(NOW).is_err());
}

/// Silent monitoring is silent: with a fixed clock, everything the conversation's agent and
/// its customer can observe — the agent's stream (ids included), `agent.*`, `conversation.*`
/// and channel notifications (ids and bodies), the conversation ids — is byte for byte the
/// same whether or not a supervisor monitored (started and stopped) in between.
#[test]
fn silent_monitoring_changes_nothing_the_agent_or_customer_can_observe() {
    let plain = agent_and_customer_view(false);
    let monitored = agent_and_customer_view(true);
    assert!(!plain.is_empty());
    assert!(
        plain.iter().any(|line| line.starts_with("stream ")),
        "the agent saw its stream: {plain:#?}"
    );
    assert!(
        plain
            .iter()
            .any(|line| line.starts_with("outbox ") && line.contains("channel.")),
        "the customer was written to: {plain:#?}"
    );
    assert_eq!(plain, monitored);
}

/// Runs one scenario and returns what the agent `a-ana` and the customer could observe.
fn agent_and_customer_view(monitor: bool) -> Vec<String> {
    use switchboard::engine::{Action, Actor, Command, JoinMode, Role, TeamId, UserId};
    use switchboard::pipeline::Submission;

    let dir = temp_dir("silence");
    let mut pipeline = open_pipeline(&dir);
    let mut live = pipeline.hub().subscribe(None).live;
    let supervisor = |id: &str| Actor {
        id: UserId::new(id),
        roles: vec![Role::Supervisor],
        teams: vec![TeamId::new("support")],
    };
    let agent = Actor {
        id: UserId::new("a-ana"),
        roles: vec![Role::Agent],
        teams: vec![TeamId::new("support")],
    };
    let at = |step: i64| Millis(NOW.0 + step * 1_000);
    let webhook = |wamid: &str, from: &str, text: &str| {
        let body = String::from_utf8(fixture("whatsapp", "text.json"))
            .unwrap()
            .replace(
                "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                wamid,
            )
            .replace("16505551234", from)
            .replace("Hi, I ordered", text);
        message("whatsapp-cloud", body.into_bytes(), None)
    };
    let command = |actor: &Actor, action: Action| {
        Submission::Command(Command {
            actor: actor.clone(),
            idempotency: None,
            action,
        })
    };

    pipeline
        .process(&[webhook("wamid.one", "16505551234", "Hello")], at(1))
        .unwrap();
    let conversation = pipeline.engine().state().conversations().next().unwrap().id;
    let accepted = format!(
        r#"{{"id":"accept-1","source":"canonical","type":"accepted","conversation":{{"id":"{conversation}"}},"agent":"a-ana"}}"#
    );
    pipeline
        .process(&[message("canonical", accepted.into_bytes(), None)], at(2))
        .unwrap();
    if monitor {
        let monitoring = command(&supervisor("sup-sam"), Action::Monitor { conversation });
        let replies = pipeline
            .submit(vec![monitoring], Millis(at(2).0 + 500))
            .unwrap();
        assert!(
            matches!(&replies[..], [Completion::Command(Ok(_))]),
            "{replies:?}"
        );
    }
    pipeline
        .process(
            &[webhook("wamid.two", "16505551234", "Still there?")],
            at(3),
        )
        .unwrap();
    let agent_message = r#"{"id":"agent-1","source":"canonical","type":"message","conversation":{"plugin":"whatsapp-cloud","key":"16505551234"},"channel":"whatsapp","sender":{"kind":"agent","id":"a-ana"},"text":"Looking into it"}"#;
    pipeline
        .process(
            &[message(
                "canonical",
                agent_message.as_bytes().to_vec(),
                None,
            )],
            at(4),
        )
        .unwrap();
    if monitor {
        let stop = command(&supervisor("sup-sam"), Action::StopMonitor { conversation });
        let replies = pipeline.submit(vec![stop], Millis(at(4).0 + 500)).unwrap();
        assert!(
            matches!(&replies[..], [Completion::Command(Ok(_))]),
            "{replies:?}"
        );
    }
    let joe = supervisor("sup-joe");
    for (step, action) in [
        (
            5,
            Action::Join {
                conversation,
                mode: JoinMode::Public,
            },
        ),
        (
            6,
            Action::Message {
                conversation,
                text: "I am Joe, the team lead".into(),
                visibility: switchboard::engine::Visibility::Public,
            },
        ),
        (
            7,
            Action::ForceClose {
                conversation,
                reason: Some("resolved".into()),
                confirm: true,
            },
        ),
    ] {
        let replies = pipeline
            .submit(vec![command(&joe, action)], at(step))
            .unwrap();
        assert!(
            matches!(&replies[..], [Completion::Command(Ok(_))]),
            "{replies:?}"
        );
    }
    // A conversation opened afterwards gets the same id.
    pipeline
        .process(&[webhook("wamid.three", "16505550000", "New here")], at(8))
        .unwrap();

    let mut view = Vec::new();
    while let Ok(event) = live.try_recv() {
        if let Some(payload) = event.view_for(&agent) {
            view.push(format!("stream {} {} {payload:?}", event.id, event.kind()));
        }
    }
    let ids: Vec<String> = pipeline
        .engine()
        .state()
        .conversations()
        .map(|conversation| conversation.id.to_string())
        .collect();
    view.push(format!("conversations {ids:?}"));
    drop(pipeline);
    let store = RedbStore::open(&dir).unwrap();
    for entry in store.outbox_after(None, 1_000).unwrap() {
        if entry.routing_key.starts_with("supervisor.") {
            continue;
        }
        view.push(format!(
            "outbox {} {} {} {}",
            entry.id,
            entry.routing_key,
            entry.event_type,
            String::from_utf8_lossy(&entry.body)
        ));
    }
    let _ = std::fs::remove_dir_all(dir);
    view
}
