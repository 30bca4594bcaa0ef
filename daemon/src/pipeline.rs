//! The flow's middle, for one batch of inbound messages: decode (plugin, or canonical JSON) ->
//! sentiment -> engine -> render notifications into outbox entries (channel notifications are
//! encoded by their plugin now, so the outbox holds ready-to-send provider requests) -> one
//! durable commit. The transport acknowledges the batch only after [`Pipeline::process`]
//! returned, and dead-letters what it was told to.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{
    Audience, ChannelEvent, Engine, Input, Millis, Notification, NotificationBody, Outcome,
    PluginId,
};
use crate::plugin::{ChannelNotification, InboundRequest, Plugin};
use crate::store::{Batch, OutboxEntry, Store, StoreError, outbox_id};
use crate::transport::InboundMessage;

/// What to do with one inbound message once the batch is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Applied (or a duplicate): acknowledge.
    Done,
    /// Cannot be handled: dead-letter with a stable code and a human reason, then acknowledge.
    DeadLetter { code: String, detail: String },
}

/// The engine, the plugins and the store, driven one batch at a time by a single writer.
pub struct Pipeline {
    engine: Engine,
    plugins: HashMap<String, Arc<Plugin>>,
    store: Arc<dyn Store>,
    outcome: Outcome,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("last_seq", &self.engine.state().last_seq())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(engine: Engine, plugins: Vec<Arc<Plugin>>, store: Arc<dyn Store>) -> Self {
        Self {
            engine,
            plugins: plugins
                .into_iter()
                .map(|plugin| (plugin.id().to_owned(), plugin))
                .collect(),
            store,
            outcome: Outcome::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Applies a batch and commits everything it caused in one durable transaction. On a
    /// store error nothing may be acknowledged (the broker redelivers; deduplication holds).
    pub fn process(
        &mut self,
        messages: &[InboundMessage],
        now: Millis,
    ) -> Result<Vec<Disposition>, StoreError> {
        let mut batch = Batch::default();
        let mut dispositions = Vec::with_capacity(messages.len());
        for message in messages {
            let disposition = match self.decode(message, now) {
                Err((code, detail)) => Disposition::DeadLetter { code, detail },
                Ok(events) => self.apply_all(events, now, &mut batch),
            };
            dispositions.push(disposition);
        }
        self.store.commit(&batch)?;
        Ok(dispositions)
    }

    /// A clock tick (inactivity, wrap-up capacity, eviction), committed like a batch.
    pub fn tick(&mut self, now: Millis) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        self.engine.apply(Input::Tick, now, &mut self.outcome);
        self.collect(now, &mut batch);
        self.store.commit(&batch)
    }

    fn decode(
        &self,
        message: &InboundMessage,
        now: Millis,
    ) -> Result<Vec<ChannelEvent>, (String, String)> {
        let mut events = if message.routing_key == "canonical" {
            canonical(&message.body)?
        } else {
            let plugin = self.plugins.get(&message.routing_key).ok_or_else(|| {
                (
                    "unknown-plugin".to_owned(),
                    format!(
                        "no plugin is configured for routing key {:?}",
                        message.routing_key
                    ),
                )
            })?;
            let url = message
                .headers
                .iter()
                .find(|(name, _)| name == "switchboard-url")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            let request = InboundRequest {
                method: "POST".to_owned(),
                url,
                headers: message.headers.clone(),
                content_type: message.content_type.clone(),
                body: message.body.clone(),
                received_at: now,
            };
            plugin
                .decode(&request)
                .map_err(|error| (error.code().to_owned(), error.to_string()))?
        };
        // Events without an id of their own are identified by the message: a redelivery of the
        // same message then changes nothing.
        if let Some(message_id) = &message.message_id {
            for (index, event) in events.iter_mut().enumerate() {
                if event.id.is_none() {
                    event.id = Some(format!("{message_id}#{index}").into_boxed_str());
                }
            }
        }
        for event in &mut events {
            crate::sentiment::enrich(event);
        }
        Ok(events)
    }

    fn apply_all(
        &mut self,
        events: Vec<ChannelEvent>,
        now: Millis,
        batch: &mut Batch,
    ) -> Disposition {
        let mut refused = Vec::new();
        for event in events {
            self.engine
                .apply(Input::Channel(event), now, &mut self.outcome);
            if let Some(refusal) = self.outcome.refusal() {
                refused.push((refusal.code.as_str().to_owned(), refusal.detail.clone()));
            }
            self.collect(now, batch);
        }
        match refused.into_iter().next() {
            None => Disposition::Done,
            // The message's other events were applied; the dead letter says which rule refused.
            Some((code, detail)) => Disposition::DeadLetter { code, detail },
        }
    }

    /// Moves the last outcome's record and rendered notifications into the batch.
    fn collect(&mut self, now: Millis, batch: &mut Batch) {
        if self.outcome.is_empty() {
            return;
        }
        let notifications = std::mem::take(&mut self.outcome.notifications);
        for notification in &notifications {
            self.render(notification, now, &mut batch.outbox);
        }
        batch.records.push(std::mem::take(&mut self.outcome.record));
    }

    fn render(&self, notification: &Notification, now: Millis, outbox: &mut Vec<OutboxEntry>) {
        let subject = notification.conversation.map(|id| id.to_string());
        let event_type = format!("dev.switchboard.{}", kind(&notification.body));
        match &notification.audience {
            Audience::Channel {
                plugin,
                thread,
                customer,
            } => self.render_channel(notification, plugin, thread, customer, now, subject, outbox),
            audience => {
                let routing_key = match audience {
                    Audience::Agent { agent } => format!("agent.{agent}"),
                    Audience::Supervisor { supervisor } => format!("supervisor.{supervisor}"),
                    _ => format!("conversation.{}", subject.as_deref().unwrap_or("none")),
                };
                outbox.push(OutboxEntry {
                    id: outbox_id(&notification.id, 0),
                    routing_key,
                    event_type,
                    subject,
                    time: now,
                    content_type: "application/json".to_owned(),
                    headers: Vec::new(),
                    body: serde_json::to_vec(notification).unwrap_or_default(),
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn render_channel(
        &self,
        notification: &Notification,
        plugin: &PluginId,
        thread: &str,
        customer: &str,
        now: Millis,
        subject: Option<String>,
        outbox: &mut Vec<OutboxEntry>,
    ) {
        let Some(handle) = self.plugins.get(plugin.as_str()) else {
            tracing::warn!(plugin = %plugin, "no plugin to encode a channel notification");
            return;
        };
        let customer_last_message_at = notification
            .conversation
            .and_then(|id| self.engine.state().conversation(id))
            .and_then(|conversation| conversation.last_customer_message);
        let request = ChannelNotification {
            notification: notification.clone(),
            thread: thread.to_owned(),
            customer: customer.to_owned(),
            customer_last_message_at,
            now,
        };
        match handle.encode(&request) {
            Ok(requests) => {
                for (part, request) in requests.into_iter().enumerate() {
                    let mut headers = vec![
                        ("switchboard-method".to_owned(), request.method.clone()),
                        ("switchboard-url".to_owned(), request.url.clone()),
                    ];
                    let content_type = request
                        .headers
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                        .map(|(_, value)| value.clone())
                        .unwrap_or_else(|| "application/octet-stream".to_owned());
                    headers.extend(request.headers);
                    outbox.push(OutboxEntry {
                        id: outbox_id(&notification.id, part),
                        routing_key: format!("channel.{plugin}"),
                        event_type: "dev.switchboard.channel.request".to_owned(),
                        subject: subject.clone(),
                        time: now,
                        content_type,
                        headers,
                        body: request.body,
                    });
                }
            }
            // The change stands; what could not be encoded is logged with the plugin's reason
            // (a WhatsApp message outside the service window, a plugin failure).
            Err(error) => {
                tracing::warn!(plugin = %plugin, error = %error, notification = %notification.id, "channel notification not sent")
            }
        }
    }
}

/// Canonical events: one JSON event or a list of them.
fn canonical(body: &[u8]) -> Result<Vec<ChannelEvent>, (String, String)> {
    let invalid = |error: serde_json::Error| {
        (
            "invalid-payload".to_owned(),
            format!("not a canonical event: {error}"),
        )
    };
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        serde_json::from_slice(body).map_err(invalid)
    } else {
        serde_json::from_slice(body)
            .map(|event| vec![event])
            .map_err(invalid)
    }
}

/// The CloudEvents type suffix of a notification body.
fn kind(body: &NotificationBody) -> &'static str {
    match body {
        NotificationBody::Message { .. } => "message",
        NotificationBody::Whisper { .. } => "whisper",
        NotificationBody::Typing { .. } => "typing",
        NotificationBody::SupervisorJoined { .. } => "supervisor-joined",
        NotificationBody::SupervisorLeft { .. } => "supervisor-left",
        NotificationBody::SupervisionEnded { .. } => "supervision-ended",
        NotificationBody::MonitoringStarted { .. } => "monitoring-started",
        NotificationBody::Opened { .. } => "conversation.opened",
        NotificationBody::StateChanged { .. } => "conversation.state-changed",
        NotificationBody::Assigned { .. } => "conversation.assigned",
        NotificationBody::Transferred { .. } => "conversation.transferred",
        NotificationBody::ClosedBySupervisor { .. } => "conversation.closed-by-supervisor",
        NotificationBody::EndSession => "end-session",
        NotificationBody::Media { .. } => "media",
        NotificationBody::PresenceChanged { .. } => "agent.presence-changed",
    }
}

/// The engine's view of a loaded plugin: its channel kind and voice controls come from the
/// plugin itself, its default queue from the configuration.
pub fn plugin_policy(
    plugin: &Plugin,
    default_queue: &crate::engine::QueueId,
) -> crate::engine::PluginPolicy {
    crate::engine::PluginPolicy {
        id: PluginId::new(plugin.id()),
        channel: plugin.description().channel,
        default_queue: default_queue.clone(),
        voice_controls: plugin.voice_controls(),
    }
}
