//! The `open-messaging` channel plugin (plugin step of the flow): Genesys Cloud Open
//! Messaging normalized messages — inbound customer messages, receipts and typing events, and
//! the outbound webhook's agent messages (`X-Hub-Signature-256`, base64 HMAC-SHA256) ->
//! canonical events; supervisor notifications -> the agentless outbound message API.
//! Mapping and settings: `README.md` beside it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::json;
use switchboard_plugin_sdk::settings::{self, Settings};
use switchboard_plugin_sdk::types::*;
use switchboard_plugin_sdk::{
    Plugin, Webhook, credential_in_settings, customer_text, header, header_pair, json_body, oauth,
    signature, thread,
};

/// `[plugins.open-messaging.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Open Messaging integrations this plugin serves; a payload of another is refused.
    /// Empty: every integration (then `integration_id`, if set, is the only one known).
    #[serde(default)]
    pub integration_ids: Vec<String>,
    /// The integration of a payload that names none (the inbound API's bodies name it only in
    /// their URL), and the `fromAddress` for a conversation whose key names none.
    #[serde(default)]
    pub integration_id: Option<String>,
    /// Genesys Cloud API base, e.g. `https://api.mypurecloud.com`.
    #[serde(default = "api_base", alias = "api_base")]
    pub api_base_url: String,
    /// `outboundNotificationWebhookSignatureSecretToken`: when set, every request must carry a
    /// valid `X-Hub-Signature-256` (the middleware signs inbound copies the same way).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Refused: the token is the daemon's to hold. Requests name it `{{oauth:access_token}}`:
    /// a token the worker gets with `[plugins.open-messaging.oauth]` client credentials (Genesys
    /// Cloud's tokens expire), else the secret `[plugins.open-messaging.secrets] access_token`.
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default = "joined_notice")]
    pub joined_notice: String,
    #[serde(default = "closed_notice")]
    pub closed_notice: String,
}

fn api_base() -> String {
    "https://api.mypurecloud.com".to_owned()
}

fn joined_notice() -> String {
    "A supervisor has joined this conversation.".to_owned()
}

fn closed_notice() -> String {
    "This conversation has been closed.".to_owned()
}

static CONFIG: Settings<Config> = Settings::new();

#[derive(Debug)]
pub struct OpenMessaging;

impl Plugin for OpenMessaging {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "open-messaging".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channel: ChannelKind::Messaging,
            description: "Genesys Cloud Open Messaging: normalized messages, receipts, typing, agentless outbound".to_owned(),
        }
    }

    fn configure(settings: String) -> Result<(), PluginError> {
        let config: Config = settings::parse(&settings)?;
        if config.access_token.is_some() {
            return Err(credential_in_settings("access_token", "open-messaging"));
        }
        CONFIG.set(config);
        Ok(())
    }

    fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> {
        decode(CONFIG.get()?, &request)
    }

    fn encode(notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        encode(CONFIG.get()?, &notification)
    }
}

/// Which integration a payload is about and which party is the customer.
///
/// The integration comes from the URL of the per-integration inbound API
/// (`…/conversations/messages/{integrationId}/inbound/open/…`), else from the party that is a
/// known integration (on the outbound webhook `channel.from` is the integration, receipts
/// included), else from `integration_id`. The customer is the other party: the one that is
/// not the integration, else `to` of what went out and `from` of what came in.
fn parties<'m>(
    config: &Config,
    request: &Inbound,
    channel: &'m Channel<'m>,
    outbound: bool,
) -> Result<(String, &'m Party<'m>), PluginError> {
    let known = |id: &str| {
        config.integration_ids.iter().any(|known| known == id)
            || config.integration_id.as_deref() == Some(id)
    };
    let from_url = request
        .url
        .split_once("/conversations/messages/")
        .and_then(|(_, rest)| rest.split_once("/inbound/open/"))
        .map(|(integration, _)| integration)
        .filter(|integration| !integration.is_empty() && !integration.contains('/'));
    let (from, to) = (channel.from.as_ref(), channel.to.as_ref());
    let from_is_integration = from.is_some_and(|party| known(&party.id));
    let to_is_integration = to.is_some_and(|party| known(&party.id));
    let customer = match (from_is_integration, to_is_integration) {
        (true, false) => to,
        (false, true) => from,
        _ if outbound => to,
        _ => from,
    }
    .ok_or_else(|| {
        PluginError::InvalidPayload("channel.from / channel.to is missing".to_owned())
    })?;
    let integration = from_url
        .map(str::to_owned)
        .or_else(|| {
            [from, to]
                .into_iter()
                .flatten()
                .find(|party| known(&party.id))
                .map(|party| party.id.to_string())
        })
        .or_else(|| config.integration_id.clone())
        .ok_or_else(|| {
            PluginError::InvalidPayload(
                "cannot tell which integration the payload is about: set `integration_id`"
                    .to_owned(),
            )
        })?;
    thread::check_endpoint(&integration, &config.integration_ids, "integration_ids")?;
    Ok((integration, customer))
}

/// Genesys' HMAC-SHA256 of the raw body, the only request header `decode` reads.
const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Genesys takes any 2xx; the plugin is signed when its webhook secret is set.
impl Webhook for OpenMessaging {
    fn signed() -> bool {
        CONFIG
            .get()
            .is_ok_and(|config| config.webhook_secret.is_some())
    }
}

switchboard_plugin_sdk::export_plugin!(OpenMessaging, headers: [SIGNATURE_HEADER], webhook);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Normalized<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Channel<'a>,
    /// Absent from the bodies of the per-integration inbound API (`…/inbound/open/message`,
    /// `/event`, `/receipt`): the shape says what it is.
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    direction: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    originating_entity: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    events: Vec<ChannelEvent<'a>>,
    #[serde(borrow, default)]
    content: Vec<Content<'a>>,
    /// A failed receipt's reasons.
    #[serde(borrow, default)]
    reasons: Vec<Reason<'a>>,
}

#[derive(Deserialize)]
struct Reason<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Channel<'a> {
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Party<'a>>,
    #[serde(borrow, default)]
    to: Option<Party<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Party<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    nickname: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    first_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    last_name: Option<Cow<'a, str>>,
}

impl Party<'_> {
    fn name(&self) -> Option<String> {
        let full = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if full.is_empty() {
            self.nickname.as_deref().map(str::to_owned)
        } else {
            Some(full)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelEvent<'a> {
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    typing: Option<TypingEvent<'a>>,
}

#[derive(Deserialize)]
struct TypingEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    #[serde(borrow)]
    content_type: Cow<'a, str>,
    #[serde(borrow, default)]
    attachment: Option<Attachment<'a>>,
    #[serde(borrow, default)]
    button_response: Option<ButtonResponse<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment<'a> {
    #[serde(borrow, default)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    filename: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ButtonResponse<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

/// One normalized message -> events.
pub fn decode(config: &Config, request: &Inbound) -> Result<Vec<Event>, PluginError> {
    if let Some(secret) = &config.webhook_secret {
        let provided = header(request, SIGNATURE_HEADER).ok_or_else(|| {
            PluginError::Unauthorized("X-Hub-Signature-256 header is missing".to_owned())
        })?;
        let encoded = provided.strip_prefix("sha256=").ok_or_else(|| {
            PluginError::Unauthorized("X-Hub-Signature-256 must start with sha256=".to_owned())
        })?;
        if !signature::verify_sha256_base64(secret.as_bytes(), &[&request.body], encoded) {
            return Err(PluginError::Unauthorized(
                "X-Hub-Signature-256 does not match the body".to_owned(),
            ));
        }
    }
    let message: Normalized<'_> = json_body(request)?;
    let kind = message
        .kind
        .as_deref()
        .unwrap_or(if message.status.is_some() {
            "Receipt"
        } else if !message.events.is_empty() {
            "Event"
        } else {
            "Text"
        });
    let outbound = match message.direction.as_deref() {
        Some("Outbound") => true,
        Some("Inbound") => false,
        // The inbound API's bodies carry no direction: a receipt there is of a message sent
        // to the customer, anything else comes from the customer.
        None => kind == "Receipt",
        Some(other) => {
            return Err(PluginError::InvalidPayload(format!(
                "unknown direction {other:?}"
            )));
        }
    };
    let (integration, customer) = parties(config, request, &message.channel, outbound)?;
    let thread = thread::key(&integration, &customer.id);
    let message_id = message
        .id
        .as_deref()
        .or(message.channel.message_id.as_deref())
        .map(str::to_owned);
    match kind {
        "Text" | "Structured" => {
            let text = text_of(&message);
            if text.is_empty() {
                return Ok(Vec::new());
            }
            let sender = if !outbound {
                Sender::Customer
            } else if message.originating_entity.as_deref() == Some("Bot") {
                Sender::Bot("genesys-bot".to_owned())
            } else {
                Sender::Agent("genesys-agent".to_owned())
            };
            Ok(vec![Event {
                id: message_id,
                body: EventBody::Message(Message {
                    thread,
                    customer: (!outbound).then(|| Customer {
                        id: customer.id.to_string(),
                        name: customer.name(),
                    }),
                    sender,
                    text,
                    visibility: Visibility::Public,
                    sentiment: None,
                    reply_to: None,
                }),
            }])
        }
        "Receipt" => {
            let status = match message.status.as_deref() {
                Some("Sent" | "Published") => ReceiptStatus::Sent,
                Some("Delivered") => ReceiptStatus::Delivered,
                Some("Read") => ReceiptStatus::Read,
                Some("Failed" | "Removed") => ReceiptStatus::Failed,
                other => {
                    return Err(PluginError::InvalidPayload(format!(
                        "receipt status {other:?} is not known"
                    )));
                }
            };
            let id = message_id.ok_or_else(|| {
                PluginError::InvalidPayload("receipt without a message id".to_owned())
            })?;
            Ok(vec![Event {
                id: Some(format!(
                    "{id}:{}",
                    message.status.as_deref().unwrap_or_default()
                )),
                body: EventBody::Receipt(Receipt {
                    thread,
                    message_id: id,
                    status,
                    // `reasons` (`ConversationReason`: code and message) say why it failed.
                    error: message.reasons.first().map(|reason| ProviderError {
                        code: reason.code.as_deref().unwrap_or_default().to_owned(),
                        text: reason
                            .message
                            .as_deref()
                            .unwrap_or_else(|| reason.code.as_deref().unwrap_or("failed"))
                            .to_owned(),
                    }),
                }),
            }])
        }
        "Event" => Ok(message
            .events
            .iter()
            .filter(|event| event.event_type == "Typing")
            .filter(|event| {
                event
                    .typing
                    .as_ref()
                    .is_none_or(|typing| typing.kind == "On")
            })
            .map(|_| Event {
                id: None,
                body: EventBody::Typing(Typing {
                    thread: thread.clone(),
                    sender: if outbound {
                        Sender::Agent("genesys-agent".to_owned())
                    } else {
                        Sender::Customer
                    },
                }),
            })
            .collect()),
        other => Err(PluginError::Unsupported(format!(
            "normalized message type {other:?} is not mapped"
        ))),
    }
}

fn text_of(message: &Normalized<'_>) -> String {
    let mut text = message.text.as_deref().unwrap_or_default().to_owned();
    for content in &message.content {
        let line = match content.content_type.as_ref() {
            "Attachment" => content.attachment.as_ref().map(|attachment| {
                let kind = attachment.media_type.as_deref().unwrap_or("File");
                let name = attachment.filename.as_deref().unwrap_or_default();
                format!(
                    "[{kind}] {} {name}",
                    attachment.url.as_deref().unwrap_or_default()
                )
                .trim_end()
                .to_owned()
            }),
            "ButtonResponse" => content.button_response.as_ref().map(|button| {
                match (&button.text, &button.payload) {
                    (Some(text), Some(payload)) => format!("{text} [{payload}]"),
                    (Some(text), None) => text.to_string(),
                    (None, Some(payload)) => format!("[{payload}]"),
                    (None, None) => String::new(),
                }
            }),
            _ => None,
        };
        if let Some(line) = line.filter(|line| !line.is_empty()) {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&line);
        }
    }
    text
}

/// Notification -> the agentless outbound message request.
pub fn encode(
    config: &Config,
    notification: &Notification,
) -> Result<Vec<OutboundRequest>, PluginError> {
    let Some(text) = customer_text(
        &notification.body,
        &config.joined_notice,
        &config.closed_notice,
    ) else {
        return Ok(Vec::new());
    };
    let integration = thread::endpoint_or(
        &notification.thread,
        config.integration_id.as_deref(),
        "integration_id",
    )?;
    let body = json!({
        "fromAddress": integration,
        "toAddress": notification.customer,
        "toAddressMessengerType": "open",
        "textBody": text,
    });
    let headers = vec![
        header_pair("content-type", "application/json"),
        header_pair("authorization", format!("Bearer {}", oauth("access_token"))),
    ];
    Ok(vec![OutboundRequest {
        method: "POST".to_owned(),
        url: format!(
            "{}/api/v2/conversations/messages/agentless",
            config.api_base_url.trim_end_matches('/')
        ),
        headers,
        body: serde_json::to_vec(&body)
            .map_err(|error| PluginError::InvalidPayload(error.to_string()))?,
    }])
}
