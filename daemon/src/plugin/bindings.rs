//! Plugin step, at the boundary: the host bindings of `plugin-sdk/wit` and the conversions
//! between WIT types and the daemon's own (`engine` events and notifications, the request
//! types of [`super`]). WIT types never leave the `plugin` module.

use std::sync::Arc;

use crate::engine::{self, ChannelKind, ExternalRef, Millis, PluginId};

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    // The host binds what every plugin must export and probes for the optional interfaces
    // (`voice-controls`, `request-headers`), so plugins built before they existed still load.
    world: "baseline",
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
});

use self::switchboard::channel::types as wit;
use exports::switchboard::channel::plugin as wit_plugin;

pub(super) use Baseline as ChannelBindings;
pub(super) use BaselinePre as ChannelBindingsPre;
pub(super) use wit_plugin::Guest as PluginExports;

/// The API version this host implements, as written in the WIT package.
pub const API_VERSION: &str = "0.1.0";

/// An inbound provider request, as the transport or the HTTP API received it.
#[derive(Clone, Debug, Default)]
pub struct InboundRequest {
    pub method: String,
    pub url: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub received_at: Millis,
}

/// A provider-native request a plugin encoded, for the delivery worker.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OutboundRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// A notification addressed to the customer's side of a conversation, with the facts a plugin
/// needs to encode it.
#[derive(Clone, Debug)]
pub struct ChannelNotification {
    pub notification: engine::Notification,
    pub thread: String,
    pub customer: String,
    pub customer_last_message_at: Option<Millis>,
    pub now: Millis,
}

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PluginDescription {
    pub id: String,
    pub version: String,
    pub channel: ChannelKind,
    pub description: String,
    /// The WIT package version it was built against.
    pub api_version: String,
    /// Optional interfaces it exports (`voice-controls`, `request-headers`) and what they
    /// declare.
    pub capabilities: Vec<String>,
    /// The request headers `decode` is passed (lowercase); `None`: every header.
    pub request_headers: Option<Vec<String>>,
}

/// The headers a plugin is passed: only those it declared it reads (`None`: all). Each header
/// is two strings lowered into the sandbox on every call (about 0.2 µs each, measured), so a
/// webhook's dozen gateway and transport headers cost more than the call. Names are already
/// lowercase (`InboundRequest`'s rule).
pub(super) fn declared_headers<'a>(
    request: &'a InboundRequest,
    wanted: Option<&[String]>,
) -> Vec<wit::HeaderParam<'a>> {
    request
        .headers
        .iter()
        // Both sides are lowercase (the request's rule; `wanted` is lowered when probed), so
        // names compare as they are: a dozen case-folding comparisons were ~1 % of a decode.
        .filter(|(name, _)| wanted.is_none_or(|wanted| wanted.iter().any(|wanted| wanted == name)))
        .map(|(name, value)| wit::HeaderParam { name, value })
        .collect()
}

/// The WIT request for `decode`, lent rather than copied: the host lowers it into the sandbox
/// straight from the daemon's own strings.
pub(super) fn wit_inbound<'a>(
    request: &'a InboundRequest,
    headers: &'a [wit::HeaderParam<'a>],
) -> wit::Inbound<'a> {
    wit::Inbound {
        method: &request.method,
        url: &request.url,
        headers,
        content_type: request.content_type.as_deref(),
        body: &request.body,
        received_at: request.received_at.0,
    }
}

impl From<wit::OutboundRequest> for OutboundRequest {
    fn from(request: wit::OutboundRequest) -> Self {
        Self {
            method: request.method,
            url: request.url,
            headers: request
                .headers
                .into_iter()
                .map(|header| (header.name, header.value))
                .collect(),
            body: request.body,
        }
    }
}

pub(super) fn channel_kind(kind: wit::ChannelKind) -> ChannelKind {
    match kind {
        wit::ChannelKind::Web => ChannelKind::Web,
        wit::ChannelKind::Sms => ChannelKind::Sms,
        wit::ChannelKind::Whatsapp => ChannelKind::Whatsapp,
        wit::ChannelKind::Messaging => ChannelKind::Messaging,
        wit::ChannelKind::Voice => ChannelKind::Voice,
    }
}

/// The typed error a plugin returned.
pub(super) fn failure(error: wit::PluginError) -> (super::FailureKind, String) {
    match error {
        wit::PluginError::InvalidPayload(detail) => (super::FailureKind::InvalidPayload, detail),
        wit::PluginError::Unauthorized(detail) => (super::FailureKind::Unauthorized, detail),
        wit::PluginError::Unsupported(detail) => (super::FailureKind::Unsupported, detail),
        wit::PluginError::Config(detail) => (super::FailureKind::Config, detail),
    }
}

/// Converts decoded events; every thread is qualified by the plugin that named it.
pub(super) fn events(
    plugin: &PluginId,
    channel: ChannelKind,
    events: Vec<wit::Event>,
) -> Vec<engine::ChannelEvent> {
    events
        .into_iter()
        .map(|event| engine::ChannelEvent {
            id: event.id.map(String::into_boxed_str),
            source: plugin.clone(),
            body: event_body(plugin, channel, event.body),
        })
        .collect()
}

fn thread(plugin: &PluginId, key: String) -> ExternalRef {
    ExternalRef {
        plugin: plugin.clone(),
        key: key.into_boxed_str(),
    }
}

fn reference(plugin: &PluginId, key: String) -> engine::ConversationRef {
    engine::ConversationRef::External(thread(plugin, key))
}

fn event_body(plugin: &PluginId, channel: ChannelKind, body: wit::EventBody) -> engine::EventBody {
    use engine::EventBody as E;
    match body {
        wit::EventBody::Started(started) => E::Started {
            conversation: thread(plugin, started.thread),
            channel,
            direction: match started.direction {
                wit::Direction::Inbound => engine::Direction::Inbound,
                wit::Direction::Outbound => engine::Direction::Outbound,
            },
            subject: started.subject.map(String::into_boxed_str),
            customer: customer(started.customer),
            queue: started.queue.map(engine::QueueId::new),
        },
        wit::EventBody::Message(message) => E::Message {
            conversation: thread(plugin, message.thread),
            channel,
            sender: sender(message.sender),
            text: Arc::from(message.text),
            visibility: visibility(message.visibility),
            sentiment: message.sentiment,
            customer: message.customer.map(customer),
        },
        wit::EventBody::Accepted(accepted) => E::Accepted {
            conversation: reference(plugin, accepted.thread),
            agent: accepted.agent.as_str().into(),
        },
        wit::EventBody::Paused(key) => E::Paused {
            conversation: reference(plugin, key),
        },
        wit::EventBody::Resumed(key) => E::Resumed {
            conversation: reference(plugin, key),
        },
        wit::EventBody::AgentLeft(left) => E::AgentLeft {
            conversation: reference(plugin, left.thread),
            agent: left.agent.as_str().into(),
        },
        wit::EventBody::CustomerLeft(key) => E::CustomerLeft {
            conversation: reference(plugin, key),
        },
        wit::EventBody::Closed(key) => E::Closed {
            conversation: reference(plugin, key),
        },
        wit::EventBody::Typing(typing) => E::Typing {
            conversation: reference(plugin, typing.thread),
            sender: sender(typing.sender),
        },
        wit::EventBody::Receipt(receipt) => E::Receipt {
            conversation: reference(plugin, receipt.thread),
            message_id: receipt.message_id.into_boxed_str(),
            status: match receipt.status {
                wit::ReceiptStatus::Sent => engine::ReceiptStatus::Sent,
                wit::ReceiptStatus::Delivered => engine::ReceiptStatus::Delivered,
                wit::ReceiptStatus::Read => engine::ReceiptStatus::Read,
                wit::ReceiptStatus::Failed => engine::ReceiptStatus::Failed,
            },
        },
        wit::EventBody::Sentiment(score) => E::Sentiment {
            conversation: reference(plugin, score.thread),
            score: score.score,
        },
        wit::EventBody::Updated(update) => E::Updated {
            conversation: reference(plugin, update.thread),
            subject: update.subject.map(String::into_boxed_str),
            queue: update.queue.map(engine::QueueId::new),
        },
        wit::EventBody::AgentPresence(change) => E::AgentPresence {
            agent: change.agent.as_str().into(),
            presence: match change.presence {
                wit::Presence::Available => engine::Presence::Available,
                wit::Presence::Busy => engine::Presence::Busy,
                wit::Presence::DoNotDisturb => engine::Presence::DoNotDisturb,
                wit::Presence::Away => engine::Presence::Away,
                wit::Presence::Offline => engine::Presence::Offline,
            },
        },
    }
}

fn customer(customer: wit::Customer) -> engine::Customer {
    engine::Customer {
        id: customer.id.into_boxed_str(),
        name: customer.name.map(String::into_boxed_str),
    }
}

fn sender(sender: wit::Sender) -> engine::Sender {
    match sender {
        wit::Sender::Customer => engine::Sender::Customer,
        wit::Sender::Agent(id) => engine::Sender::Agent(id.as_str().into()),
        wit::Sender::Bot(id) => engine::Sender::Bot(id.as_str().into()),
        wit::Sender::System => engine::Sender::System,
    }
}

fn visibility(visibility: wit::Visibility) -> engine::Visibility {
    match visibility {
        wit::Visibility::Public => engine::Visibility::Public,
        wit::Visibility::Internal => engine::Visibility::Internal,
        wit::Visibility::Whisper => engine::Visibility::Whisper,
    }
}

/// The WIT body of a channel notification, or `None` for a body that never goes to a channel
/// (whispers, agent-side notices): those are refused here a second time, after the engine, so
/// that no bug upstream can leak a whisper to a customer. It borrows the daemon's strings, like
/// [`wit_inbound`].
pub(super) fn notification_body(
    channel: &ChannelNotification,
) -> Option<wit::NotificationBody<'_>> {
    use engine::NotificationBody as N;
    let body = match &channel.notification.body {
        N::Message {
            author,
            text,
            visibility: engine::Visibility::Public,
        } => wit::NotificationBody::Message(wit::TextMessage {
            author: match author {
                engine::Author::Customer => wit::Author::Customer,
                engine::Author::Agent(id) => wit::Author::Agent(id),
                engine::Author::Bot(id) => wit::Author::Bot(id),
                engine::Author::Supervisor(id) => wit::Author::Supervisor(id),
                engine::Author::System => wit::Author::System,
            },
            text,
        }),
        N::SupervisorJoined { supervisor, mode } => {
            wit::NotificationBody::SupervisorJoined(wit::SupervisorEvent {
                supervisor,
                mode: match mode {
                    engine::SupervisionMode::Monitor => wit::SupervisionMode::Monitor,
                    engine::SupervisionMode::Whisper => wit::SupervisionMode::Whisper,
                    engine::SupervisionMode::ConsultInternal => {
                        wit::SupervisionMode::ConsultInternal
                    }
                    engine::SupervisionMode::ConsultPublic => wit::SupervisionMode::ConsultPublic,
                    engine::SupervisionMode::Barge => wit::SupervisionMode::Barge,
                },
            })
        }
        N::SupervisorLeft { supervisor } => wit::NotificationBody::SupervisorLeft(supervisor),
        N::Transferred { from, to } => {
            wit::NotificationBody::Transferred(wit::Transfer { from, to })
        }
        N::ClosedBySupervisor { supervisor, reason } => {
            wit::NotificationBody::ClosedBySupervisor(wit::Closing {
                supervisor,
                reason: reason.as_deref(),
            })
        }
        N::EndSession => wit::NotificationBody::EndSession,
        N::Media { control } => wit::NotificationBody::Media(match control {
            engine::MediaControl::Listen { supervisor, agent } => {
                wit::MediaControl::Listen(wit::SupervisorMedia {
                    supervisor,
                    agent: agent.as_deref(),
                })
            }
            engine::MediaControl::Coach { supervisor, agent } => {
                wit::MediaControl::Coach(wit::SupervisorMedia {
                    supervisor,
                    agent: agent.as_deref(),
                })
            }
            engine::MediaControl::Join { supervisor, mode } => {
                wit::MediaControl::Join(wit::JoinMedia {
                    supervisor,
                    public: *mode == engine::JoinMode::Public,
                })
            }
            engine::MediaControl::Stop { supervisor } => wit::MediaControl::Stop(supervisor),
        }),
        N::Message { .. }
        | N::Whisper { .. }
        | N::Typing { .. }
        | N::MonitoringStarted { .. }
        | N::SupervisionEnded { .. }
        | N::Opened { .. }
        | N::StateChanged { .. }
        | N::Assigned { .. }
        | N::PresenceChanged { .. } => return None,
    };
    Some(body)
}

/// The two strings of a channel notification the engine keeps as numbers (its id and the
/// conversation's), for [`notification`] to lend.
#[derive(Debug)]
pub(super) struct NotificationIds {
    id: String,
    conversation: String,
}

impl NotificationIds {
    pub(super) fn of(channel: &ChannelNotification) -> Self {
        Self {
            id: channel.notification.id.to_string(),
            conversation: channel
                .notification
                .conversation
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }
    }
}

/// The WIT notification around a body from [`notification_body`].
pub(super) fn notification<'a>(
    channel: &'a ChannelNotification,
    ids: &'a NotificationIds,
    body: wit::NotificationBody<'a>,
) -> wit::Notification<'a> {
    wit::Notification {
        id: &ids.id,
        conversation: &ids.conversation,
        thread: &channel.thread,
        customer: &channel.customer,
        customer_last_message_at: channel.customer_last_message_at.map(|at| at.0),
        now: channel.now.0,
        body,
    }
}

pub(super) fn describe(
    info: wit::PluginInfo,
    api_version: &str,
    optional: Optional,
) -> PluginDescription {
    PluginDescription {
        id: info.id,
        version: info.version,
        channel: channel_kind(info.channel),
        description: info.description,
        api_version: api_version.to_owned(),
        capabilities: optional.capabilities,
        request_headers: optional.request_headers,
    }
}

/// What a plugin's optional interfaces declared.
#[derive(Debug, Default)]
pub(super) struct Optional {
    pub(super) capabilities: Vec<String>,
    pub(super) request_headers: Option<Vec<String>>,
}

/// The WIT error type, for the call signatures in [`super`].
pub(super) type WitPluginError = wit::PluginError;

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> InboundRequest {
        InboundRequest {
            headers: [
                ("cookie", "session=1"),
                ("x-hub-signature-256", "sha256=00"),
                ("x-forwarded-for", "203.0.113.7"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .to_vec(),
            ..InboundRequest::default()
        }
    }

    fn names<'a>(headers: &[wit::HeaderParam<'a>]) -> Vec<&'a str> {
        headers.iter().map(|header| header.name).collect()
    }

    #[test]
    fn a_plugin_is_passed_only_the_headers_it_declared() {
        let request = request();
        let wanted = ["x-hub-signature-256".to_owned()];
        let declared = declared_headers(&request, Some(&wanted));
        assert_eq!(names(&declared), ["x-hub-signature-256"]);
        assert_eq!(declared[0].value, "sha256=00");
        assert_eq!(wit_inbound(&request, &declared).headers.len(), 1);
        assert!(declared_headers(&request, Some(&[])).is_empty());
        assert_eq!(
            names(&declared_headers(&request, None)),
            ["cookie", "x-hub-signature-256", "x-forwarded-for"]
        );
    }
}
