//! The pipeline over real plugins and the real store: a provider webhook becomes a
//! conversation and outbox entries in one commit; a redelivery changes nothing; what cannot be
//! handled is dead-lettered with its code; a canonical event from the routing platform is
//! applied; and a restart rebuilds the same state from the store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchboard::config;
use switchboard::engine::{ConversationId, Engine, Millis};
use switchboard::pipeline::{Disposition, Pipeline, plugin_policy};
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
    fn outbox_newest_id(&self) -> Result<Option<String>, StoreError> {
        self.0.outbox_newest_id()
    }
    fn timeline(
        &self,
        conversation: switchboard::engine::ConversationId,
    ) -> Result<Vec<switchboard::engine::TimelineEntry>, StoreError> {
        self.0.timeline(conversation)
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
