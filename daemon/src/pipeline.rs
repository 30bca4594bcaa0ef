//! The flow's middle, for one batch of inbound messages: decode (plugin, or canonical JSON) ->
//! sentiment -> engine -> render notifications into outbox entries (channel notifications are
//! encoded by their plugin now, so the outbox holds ready-to-send provider requests) -> one
//! durable commit -> the live stream. The transport acknowledges the batch (and the admin API
//! answers its commands) only after [`Pipeline::process`] / [`Pipeline::submit`] returned, and
//! dead-letters what it was told to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{
    Audience, ChannelEvent, Command, ConversationId, Engine, Input, MediaControl, Millis,
    Notification, NotificationBody, Outcome, PluginId, Record, Refusal, Reply, SupervisionMode,
    TimelineEvent, UserId,
};
use crate::metrics::Metrics;
use crate::metrics::family;
use crate::outbox::OutboxFeed;
use crate::plugin::{ChannelNotification, InboundRequest, Plugin};
use crate::store::{Batch, OutboxEntry, Store, StoreError, outbox_id};
use crate::stream::{
    Passed, STREAM_WINDOW, StoredEvent, StreamAudience, StreamEvent, StreamHub, StreamId,
    StreamPayload,
};
use crate::transport::InboundMessage;

/// What a cluster node's follower of one partition took from its log since it last looked:
/// the records (in order) and the partition's position after them.
#[derive(Debug)]
pub struct Followed {
    pub partition: u32,
    pub records: Vec<Record>,
    pub position: crate::engine::Position,
    /// Some records before these were not seen (the follower restarted from a snapshot).
    pub skipped: bool,
}

/// What to do with one inbound message once the batch is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Applied, or already applied: acknowledge. `events` canonical events came of it, of
    /// which `duplicates` had been applied before (a resent webhook, a redelivery);
    /// `conversations` are those its events belong to, in order, once each.
    Done {
        events: usize,
        duplicates: usize,
        conversations: Vec<ConversationId>,
    },
    /// Cannot be handled: dead-letter with a stable code and a human reason, then acknowledge.
    DeadLetter { code: String, detail: String },
}

/// Why an inbound message became no events: what its dead letter (or HTTP refusal) says.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the payload is {size} bytes; at most {limit} are taken (server.body_limit)")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("no plugin is configured for routing key {0:?}")]
    UnknownPlugin(String),
    #[error("not a canonical event: {0}")]
    Canonical(#[from] serde_json::Error),
    /// The plugin's own typed error, or its trap, timeout or open breaker.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::CallError),
}

impl DecodeError {
    /// The stable code of the dead letter's `switchboard-error` header and the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnknownPlugin(_) => "unknown-plugin",
            Self::Canonical(_) => "invalid-payload",
            Self::Plugin(error) => error.code(),
        }
    }
}

/// One unit of work for [`Pipeline::submit`]: what the admin API hands the single writer.
#[derive(Debug)]
pub enum Submission {
    /// A provider payload posted to `POST /v1/inbound/{plugin}`.
    Inbound(InboundMessage),
    /// A supervisor's, agent's or gateway's command.
    Command(Command),
    /// Events the daemon itself observed (the delivery worker's receipts), applied as a
    /// plugin's decoded events are.
    Events(Vec<ChannelEvent>),
    /// A cluster partition's news of the units each agent holds in the other partitions.
    LoadsElsewhere(Vec<(crate::engine::AgentId, u32)>),
}

/// The committed result of a [`Submission`], in the same order.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    Inbound(Disposition),
    Command(Result<Reply, Refusal>),
}

/// The engine, the plugins and the store, driven one batch at a time by a single writer.
pub struct Pipeline {
    engine: Engine,
    plugins: HashMap<String, Arc<Plugin>>,
    store: Arc<dyn Store>,
    outcome: Outcome,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    /// Stream events of the batch being built; published only once it is committed.
    stream: Vec<StreamEvent>,
    /// With a broker: where committed outbox entries go to be published, and where confirmed
    /// ones come back from to leave the store with the next commit.
    feed: Option<Arc<OutboxFeed>>,
    /// A commit failed after the engine had applied its batch: the state in memory is ahead of
    /// the store, so nothing more may be applied (a redelivery would be taken for a duplicate
    /// and acknowledged without ever being stored). Only a restart, which rebuilds the state
    /// from the store, clears it.
    poisoned: bool,
    /// The largest payload taken (`server.body_limit`): HTTP refuses a larger body with 413
    /// before it gets here; a larger AMQP message is dead-lettered unread.
    payload_limit: usize,
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
        let start = engine.state().position();
        Self {
            engine,
            plugins: plugins
                .into_iter()
                .map(|plugin| (plugin.id().to_owned(), plugin))
                .collect(),
            store,
            outcome: Outcome::default(),
            hub: Arc::new(StreamHub::new(STREAM_WINDOW, start)),
            metrics: Arc::new(Metrics::new()),
            stream: Vec::new(),
            feed: None,
            poisoned: false,
            payload_limit: usize::MAX,
        }
    }

    /// Refuses payloads larger than `limit` bytes (dead-lettered as `payload-too-large`).
    pub fn with_payload_limit(mut self, limit: usize) -> Self {
        self.payload_limit = limit;
        self
    }

    /// Publishes committed changes to `hub` and records into `metrics` (the daemon's shared
    /// ones; a pipeline on its own keeps private ones).
    pub fn with_observers(mut self, hub: Arc<StreamHub>, metrics: Arc<Metrics>) -> Self {
        self.hub = hub;
        self.metrics = metrics;
        self
    }

    /// Hands committed outbox entries to a publisher or the delivery worker through `feed`.
    pub fn with_outbox_feed(mut self, feed: Arc<OutboxFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Replaces the engine with a read-only view (a cluster node's merged read model): such a
    /// pipeline is read, never submitted to. `followed` are the records the view took since
    /// the last one, partition by partition: their stream events go to the hub as a single
    /// daemon's commits' do, under their partition's durable positions (so that a client's
    /// cursor means the same place on every node), summaries as of the view.
    pub fn show(&mut self, engine: Engine, followed: &[Followed]) {
        self.engine = engine;
        let mut events = Vec::new();
        let mut passed = Vec::with_capacity(followed.len());
        for partition in followed {
            for record in &partition.records {
                self.stream_events(record);
                events.extend(self.stream.drain(..).map(|event| StreamEvent {
                    partition: partition.partition,
                    ..event
                }));
            }
            passed.push(Passed {
                partition: partition.partition,
                position: partition.position,
                skipped: partition.skipped,
            });
        }
        self.hub.publish(events, &passed);
    }

    pub fn hub(&self) -> &Arc<StreamHub> {
        &self.hub
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Applies the admin API's submissions and commits them in one durable transaction
    /// (group commit: every request waiting for the writer shares one fsync).
    pub fn submit(
        &mut self,
        submissions: Vec<Submission>,
        now: Millis,
    ) -> Result<Vec<Completion>, StoreError> {
        self.check_poisoned()?;
        let mut batch = Batch::default();
        let mut completions = Vec::with_capacity(submissions.len());
        for submission in submissions {
            completions.push(match submission {
                Submission::Inbound(message) => {
                    Completion::Inbound(self.inbound(&message, now, &mut batch))
                }
                Submission::Command(command) => {
                    Completion::Command(self.command(command, now, &mut batch))
                }
                Submission::Events(events) => {
                    Completion::Inbound(self.apply_all(events, now, &mut batch))
                }
                Submission::LoadsElsewhere(loads) => {
                    self.engine
                        .apply(Input::LoadsElsewhere(loads), now, &mut self.outcome);
                    self.collect(now, &mut batch);
                    Completion::Command(Ok(Reply::default()))
                }
            });
        }
        self.commit(batch, completions.len())?;
        Ok(completions)
    }

    /// Applies a batch and commits everything it caused in one durable transaction. On a
    /// store error nothing may be acknowledged (the broker redelivers; deduplication holds).
    pub fn process(
        &mut self,
        messages: &[InboundMessage],
        now: Millis,
    ) -> Result<Vec<Disposition>, StoreError> {
        self.check_poisoned()?;
        let mut batch = Batch::default();
        let dispositions = messages
            .iter()
            .map(|message| self.inbound(message, now, &mut batch))
            .collect::<Vec<_>>();
        self.commit(batch, dispositions.len())?;
        Ok(dispositions)
    }

    /// A clock tick (inactivity, wrap-up capacity, eviction), committed like a batch.
    pub fn tick(&mut self, now: Millis) -> Result<(), StoreError> {
        self.check_poisoned()?;
        let mut batch = Batch::default();
        self.engine.apply(Input::Tick, now, &mut self.outcome);
        self.collect(now, &mut batch);
        self.commit(batch, 0)
    }

    /// One durable commit (taking along the ids the broker confirmed since the last one); then
    /// (and only then) the batch's changes go to the live stream and its outbox entries to the
    /// publisher.
    fn commit(&mut self, mut batch: Batch, inputs: usize) -> Result<(), StoreError> {
        if batch.is_empty() {
            self.stream.clear();
            return Ok(());
        }
        if let Some(feed) = &self.feed {
            // Should this commit fail, these entries go out again after the restart: harmless.
            batch.sent = feed.take_confirmed();
        }
        // The stream's window is kept with the commit, so that it outlives a restart.
        batch.stream = self.stream.iter().map(StreamEvent::stored).collect();
        let started = Instant::now();
        let result = self.store.commit(&batch);
        let stream = std::mem::take(&mut self.stream);
        if result.is_err() {
            self.poisoned = true;
        }
        result?;
        self.metrics
            .observe_duration(family::COMMIT_SECONDS, &[], started.elapsed());
        self.metrics
            .observe(family::COMMIT_BATCH_SIZE, &[], inputs as f64);
        let passed: Vec<Passed> = batch
            .records
            .last()
            .map(|record| Passed {
                partition: 0,
                position: record.position,
                skipped: false,
            })
            .into_iter()
            .collect();
        self.hub.publish(stream, &passed);
        if let Some(feed) = &self.feed {
            feed.committed(batch.outbox);
        }
        Ok(())
    }

    /// Whether a failed commit left the state in memory ahead of the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.poisoned {
            Err(StoreError::Write(
                "an earlier commit failed; restart to rebuild the state from the store".to_owned(),
            ))
        } else {
            Ok(())
        }
    }

    fn inbound(&mut self, message: &InboundMessage, now: Millis, batch: &mut Batch) -> Disposition {
        let disposition = match self.decode(message, now) {
            Err(error) => Disposition::DeadLetter {
                code: error.code().to_owned(),
                detail: error.to_string(),
            },
            Ok(events) => self.apply_all(events, now, batch),
        };
        let outcome = match &disposition {
            // Nothing new: a provider's retry or a redelivery, told apart in the metrics.
            Disposition::Done {
                events, duplicates, ..
            } if *events > 0 && duplicates == events => "duplicate",
            Disposition::Done { .. } => "applied",
            Disposition::DeadLetter { code, .. } => {
                self.metrics.count(family::DEAD_LETTERED_TOTAL, &[code], 1);
                "dead-lettered"
            }
        };
        self.metrics
            .count(family::INBOUND_TOTAL, &[&message.routing_key, outcome], 1);
        disposition
    }

    fn command(
        &mut self,
        command: Command,
        now: Millis,
        batch: &mut Batch,
    ) -> Result<Reply, Refusal> {
        let kind = command.action.kind();
        self.engine
            .apply(Input::Command(command), now, &mut self.outcome);
        let reply = self
            .outcome
            .reply
            .clone()
            .unwrap_or_else(|| Ok(Reply::default()));
        self.collect(now, batch);
        let outcome = match &reply {
            Ok(_) => "ok",
            Err(refusal) => refusal.code.as_str(),
        };
        self.metrics
            .count(family::SUPERVISION_ACTIONS_TOTAL, &[kind, outcome], 1);
        reply
    }

    fn decode(
        &self,
        message: &InboundMessage,
        now: Millis,
    ) -> Result<Vec<ChannelEvent>, DecodeError> {
        decode(
            &self.plugins,
            self.payload_limit,
            &self.metrics,
            message,
            now,
        )
    }

    fn apply_all(
        &mut self,
        events: Vec<ChannelEvent>,
        now: Millis,
        batch: &mut Batch,
    ) -> Disposition {
        let mut refused = Vec::new();
        let count = events.len();
        let mut duplicates = 0;
        let mut conversations = Vec::new();
        for event in events {
            self.engine
                .apply(Input::Channel(event), now, &mut self.outcome);
            match &self.outcome.reply {
                Some(Err(refusal)) => {
                    refused.push((refusal.code.as_str().to_owned(), refusal.detail.clone()));
                }
                Some(Ok(reply)) => {
                    duplicates += usize::from(reply.replayed);
                    if let Some(id) = reply.conversation
                        && !conversations.contains(&id)
                    {
                        conversations.push(id);
                    }
                }
                None => {}
            }
            self.collect(now, batch);
        }
        match refused.into_iter().next() {
            None => Disposition::Done {
                events: count,
                duplicates,
                conversations,
            },
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
        let record = std::mem::take(&mut self.outcome.record);
        self.stream_events(&record);
        batch.records.push(record);
    }

    /// What a record changed, for the live stream: its timeline entries (messages to those
    /// taking part, whispers to the agent and the whisperer, the rest to the team's
    /// supervisors) and the summary of every conversation it touched.
    fn stream_events(&mut self, record: &Record) {
        let mut index = 0u32;
        let mut next_id = || {
            let id = StreamId {
                position: record.position,
                index,
            };
            index += 1;
            id
        };
        // A silent record (silent monitoring) shows nothing to the conversation's agent, not
        // even an unchanged summary.
        let silent = record.position.silent > 0;
        let state = self.engine.state();
        for entry in &record.timeline {
            let conversation = state.conversation(entry.conversation);
            let audience = match &entry.event {
                TimelineEvent::Whisper {
                    supervisor, agent, ..
                } => StreamAudience::Users(
                    std::iter::once(supervisor.as_str())
                        .chain(agent.as_ref().map(|agent| agent.as_str()))
                        .map(Box::from)
                        .collect(),
                ),
                TimelineEvent::Message { .. } => StreamAudience::Participants(
                    conversation
                        .map(|c| {
                            c.seats
                                .iter()
                                .map(|seat| seat.supervisor.as_str())
                                .chain(c.agent.as_ref().map(|agent| agent.as_str()))
                                .chain(c.consultants.iter().map(|agent| agent.as_str()))
                                .map(Box::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                _ => StreamAudience::Supervisors,
            };
            // The agent sees its conversation's messages through `Participants`; of the other
            // entries only those that do not reveal silent monitoring.
            let agent = match &audience {
                StreamAudience::Supervisors if !reveals_monitoring(&entry.event) => {
                    conversation.and_then(|c| c.agent.clone())
                }
                _ => None,
            };
            self.stream.push(StreamEvent {
                partition: 0,
                id: next_id(),
                conversation: entry.conversation,
                team: conversation
                    .and_then(|c| self.engine.queue(&c.queue))
                    .map(|queue| queue.team.clone()),
                audience,
                payload: StreamPayload::Timeline(entry.clone()),
                agent,
            });
        }
        let mut touched: Vec<ConversationId> = record
            .changes
            .iter()
            .filter_map(crate::engine::Change::conversation)
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let Some(conversation) = state.conversation(id) else {
                continue;
            };
            let summary = self.engine.summary(conversation, record.at);
            self.stream.push(StreamEvent {
                partition: 0,
                id: next_id(),
                conversation: id,
                team: summary.team.clone(),
                audience: StreamAudience::Supervisors,
                agent: if silent { None } else { summary.agent.clone() },
                payload: StreamPayload::Conversation(summary),
            });
        }
    }

    /// A stored stream event made whole again after a restart: a summary is made from the
    /// conversation as it is now (none once the conversation has left the engine).
    pub fn revive(&self, stored: StoredEvent, now: Millis) -> Option<StreamEvent> {
        let payload = match stored.timeline {
            Some(entry) => StreamPayload::Timeline(entry),
            None => {
                let conversation = self.engine.state().conversation(stored.conversation)?;
                StreamPayload::Conversation(self.engine.summary(conversation, now))
            }
        };
        Some(StreamEvent {
            partition: 0,
            id: stored.id,
            conversation: stored.conversation,
            team: stored.team,
            audience: stored.audience,
            payload,
            agent: stored.agent,
        })
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
                let parts = requests.len();
                for (part, request) in requests.into_iter().enumerate() {
                    let mut headers = vec![
                        ("switchboard-method".to_owned(), request.method.clone()),
                        ("switchboard-url".to_owned(), request.url.clone()),
                        // What the request carries (`message`, `media`, ...): the delivery
                        // worker reports receipts on the timeline for customer messages only
                        // (a snoop request's receipt would tell the agent of a monitor).
                        (
                            "switchboard-notification".to_owned(),
                            kind(&notification.body).to_owned(),
                        ),
                    ];
                    // A supervisor's media: whose, and which part of how many, so that the
                    // worker can report it live once the last part is accepted, or failed.
                    if let NotificationBody::Media { control } = &notification.body
                        && let Some(supervisor) = media_supervisor(control)
                    {
                        headers.push((
                            "switchboard-supervisor".to_owned(),
                            supervisor.as_str().to_owned(),
                        ));
                        headers.push((
                            "switchboard-part".to_owned(),
                            format!("{}/{parts}", part + 1),
                        ));
                    }
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
                tracing::warn!(plugin = %plugin, error = %crate::telemetry::content(&error.to_string()), notification = %notification.id, "channel notification not sent")
            }
        }
    }
}

/// Whether an agent seeing this timeline entry would learn of silent monitoring.
fn reveals_monitoring(event: &TimelineEvent) -> bool {
    match event {
        TimelineEvent::SupervisionStarted { mode, .. }
        | TimelineEvent::SupervisionEnded { mode, .. } => *mode == SupervisionMode::Monitor,
        TimelineEvent::SupervisionChanged { from, to, .. } => {
            *from == SupervisionMode::Monitor || *to == SupervisionMode::Monitor
        }
        _ => false,
    }
}

/// Canonical events: one JSON event or a list of them.
/// An inbound message as canonical events: its plugin's decode (or the canonical JSON), each
/// event given an id from the message's when it has none (so that a redelivery changes
/// nothing), and customer sentiment scored. What the pipeline applies, and what a cluster's
/// router sends to the partitions.
pub fn decode(
    plugins: &HashMap<String, Arc<Plugin>>,
    payload_limit: usize,
    metrics: &Metrics,
    message: &InboundMessage,
    now: Millis,
) -> Result<Vec<ChannelEvent>, DecodeError> {
    if message.body.len() > payload_limit {
        return Err(DecodeError::PayloadTooLarge {
            size: message.body.len(),
            limit: payload_limit,
        });
    }
    let mut events = if message.routing_key == "canonical" {
        canonical(&message.body)?
    } else {
        let plugin = plugins
            .get(&message.routing_key)
            .ok_or_else(|| DecodeError::UnknownPlugin(message.routing_key.clone()))?;
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
        let started = Instant::now();
        let decoded = plugin.decode(&request);
        metrics.observe_duration(
            family::PLUGIN_CALL_SECONDS,
            &[&message.routing_key],
            started.elapsed(),
        );
        decoded?
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

fn canonical(body: &[u8]) -> Result<Vec<ChannelEvent>, DecodeError> {
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        Ok(serde_json::from_slice(body)?)
    } else {
        Ok(vec![serde_json::from_slice(body)?])
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

/// The supervisor whose media a control sets up (none for `stop`, which tears it down).
fn media_supervisor(control: &MediaControl) -> Option<&UserId> {
    match control {
        MediaControl::Listen { supervisor, .. }
        | MediaControl::Coach { supervisor, .. }
        | MediaControl::Join { supervisor, .. } => Some(supervisor),
        MediaControl::Stop { .. } => None,
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
        media_supervisors: plugin
            .description()
            .media_supervisors
            .map(|listed| listed.iter().map(|id| UserId::new(id.as_str())).collect()),
    }
}
