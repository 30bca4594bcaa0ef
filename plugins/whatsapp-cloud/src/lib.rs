//! The `whatsapp-cloud` channel plugin (plugin step of the flow): Meta WhatsApp Cloud API
//! webhooks (batched `entry[].changes[].value` with `messages[]` and `statuses[]`) ->
//! canonical events; supervisor notifications -> the Graph API `/messages` request, refused
//! outside the 24-hour customer service window. Mapping and settings: `README.md` beside it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::json;
use switchboard_plugin_sdk::settings::{self, Settings};
use switchboard_plugin_sdk::types::*;
use switchboard_plugin_sdk::{
    Answer, Plugin, Webhook, answer, credential_in_settings, customer_text, header, header_pair,
    json_body, query_param, secret, signature, thread,
};

/// Meta's customer service window: free-form messages only within 24 hours of the
/// customer's last message.
pub const SERVICE_WINDOW_MILLIS: i64 = 24 * 60 * 60 * 1000;

/// `[plugins.whatsapp-cloud.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The business phone numbers (phone number ids) this plugin serves; a webhook for
    /// another is refused. Empty (the default): every number the app receives.
    #[serde(default)]
    pub phone_number_ids: Vec<String>,
    /// The phone number id to send from for a conversation whose key names no number (one
    /// opened by a plugin version before numbers were part of keys). Replies otherwise go
    /// out from the number the customer wrote to.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    /// The Graph API root requests go to (a proxy's, or an emulator's in tests).
    #[serde(default = "api_base_url")]
    pub api_base_url: String,
    /// Graph API version, e.g. `v21.0`.
    #[serde(default = "graph_version")]
    pub graph_version: String,
    /// The app secret: verifies `X-Hub-Signature-256` when set.
    #[serde(default)]
    pub app_secret: Option<String>,
    /// The token Meta's verification request must carry (`hub.verify_token`): the value
    /// typed into the app dashboard's webhook settings. Unset: every handshake is refused.
    #[serde(default)]
    pub verify_token: Option<String>,
    /// Refused: the access token is a secret (`[plugins.whatsapp-cloud.secrets]
    /// access_token`), which requests name as `{{secret:access_token}}`.
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default = "joined_notice")]
    pub joined_notice: String,
    #[serde(default = "closed_notice")]
    pub closed_notice: String,
}

fn api_base_url() -> String {
    "https://graph.facebook.com".to_owned()
}

fn graph_version() -> String {
    "v21.0".to_owned()
}

fn joined_notice() -> String {
    "A supervisor has joined this conversation.".to_owned()
}

fn closed_notice() -> String {
    "This conversation has been closed.".to_owned()
}

static CONFIG: Settings<Config> = Settings::new();

#[derive(Debug)]
pub struct WhatsappCloud;

impl Plugin for WhatsappCloud {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "whatsapp-cloud".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channel: ChannelKind::Whatsapp,
            description:
                "Meta WhatsApp Cloud API: webhooks (messages, statuses) and the /messages endpoint"
                    .to_owned(),
        }
    }

    fn configure(settings: String) -> Result<(), PluginError> {
        let config: Config = settings::parse(&settings)?;
        if config.access_token.is_some() {
            return Err(credential_in_settings("access_token", "whatsapp-cloud"));
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

/// Meta's HMAC-SHA256 of the raw body, the only request header `decode` reads.
const SIGNATURE_HEADER: &str = "x-hub-signature-256";

impl Webhook for WhatsappCloud {
    fn signed() -> bool {
        CONFIG.get().is_ok_and(|config| config.app_secret.is_some())
    }

    fn handshake(request: Inbound) -> Result<Option<Answer>, PluginError> {
        handshake(CONFIG.get()?, &request)
    }
}

/// The Cloud API answers a sent message with `messages[0].id` (a `wamid`): the id its
/// `statuses[]` webhooks name.
impl switchboard_plugin_sdk::Receipts for WhatsappCloud {
    fn answered(
        _method: String,
        _url: String,
        _body: Vec<u8>,
        answer: switchboard_plugin_sdk::ProviderAnswer,
    ) -> Option<switchboard_plugin_sdk::Outcome> {
        answered(&answer)
    }
}

switchboard_plugin_sdk::export_plugin!(WhatsappCloud, headers: [SIGNATURE_HEADER], webhook, receipts);

/// The `wamid` of a sent message, or the Graph error (`error.code`, `error.error_data.details`
/// or `error.message`).
pub fn answered(
    answer: &switchboard_plugin_sdk::ProviderAnswer,
) -> Option<switchboard_plugin_sdk::Outcome> {
    let body: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    if (200..300).contains(&answer.status) {
        return Some(switchboard_plugin_sdk::Outcome {
            provider_id: body
                .pointer("/messages/0/id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            status: ReceiptStatus::Sent,
            error: None,
        });
    }
    let error = body.get("error")?;
    let code = match error.get("code") {
        Some(serde_json::Value::Number(code)) => code.to_string(),
        Some(serde_json::Value::String(code)) => code.clone(),
        _ => answer.status.to_string(),
    };
    let text = error
        .pointer("/error_data/details")
        .or_else(|| error.get("message"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some(switchboard_plugin_sdk::Outcome {
        provider_id: None,
        status: ReceiptStatus::Failed,
        error: Some(ProviderError { code, text }),
    })
}

/// Meta's webhook verification request: `GET ?hub.mode=subscribe&hub.verify_token=…&
/// hub.challenge=…`, answered with the challenge as plain text when the token is the one
/// configured.
pub fn handshake(config: &Config, request: &Inbound) -> Result<Option<Answer>, PluginError> {
    let Some(mode) = query_param(request, "hub.mode") else {
        return Ok(None);
    };
    if mode != "subscribe" {
        return Err(PluginError::InvalidPayload(format!(
            "hub.mode is {mode:?}, not \"subscribe\""
        )));
    }
    let challenge = query_param(request, "hub.challenge")
        .ok_or_else(|| PluginError::InvalidPayload("no hub.challenge".to_owned()))?;
    let expected = config
        .verify_token
        .as_deref()
        .ok_or_else(|| PluginError::Unauthorized("no verify_token is configured".to_owned()))?;
    let provided = query_param(request, "hub.verify_token").unwrap_or_default();
    if !signature::verify_token(expected, &provided) {
        return Err(PluginError::Unauthorized(
            "hub.verify_token is not the configured verify_token".to_owned(),
        ));
    }
    Ok(Some(answer(200, Some("text/plain"), challenge)))
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    object: Cow<'a, str>,
    #[serde(borrow, default)]
    entry: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    changes: Vec<Change<'a>>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(borrow)]
    field: Cow<'a, str>,
    #[serde(borrow)]
    value: Value<'a>,
}

#[derive(Deserialize)]
struct Value<'a> {
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    contacts: Vec<Contact<'a>>,
    #[serde(borrow, default)]
    messages: Vec<WaMessage<'a>>,
    #[serde(borrow, default)]
    statuses: Vec<Status<'a>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    /// The business number the change is about: part of every thread key.
    #[serde(borrow)]
    phone_number_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Contact<'a> {
    #[serde(borrow)]
    wa_id: Cow<'a, str>,
    #[serde(borrow, default)]
    profile: Option<Profile<'a>>,
}

#[derive(Deserialize)]
struct Profile<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WaMessage<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    image: Option<Media<'a>>,
    #[serde(borrow, default)]
    video: Option<Media<'a>>,
    #[serde(borrow, default)]
    audio: Option<Media<'a>>,
    #[serde(borrow, default)]
    document: Option<Media<'a>>,
    #[serde(borrow, default)]
    sticker: Option<Media<'a>>,
    #[serde(borrow, default)]
    interactive: Option<Interactive<'a>>,
    #[serde(borrow, default)]
    button: Option<Button<'a>>,
    #[serde(borrow, default)]
    location: Option<Location<'a>>,
    #[serde(borrow, default)]
    reaction: Option<Reaction<'a>>,
    /// The message this one answers (a button reply, a quoted reply).
    #[serde(borrow, default)]
    context: Option<Context<'a>>,
    /// Contact cards the customer shared.
    #[serde(borrow, default)]
    contacts: Vec<SharedContact<'a>>,
    /// Why a message could not be shown (`type = unsupported`): Meta's code and title.
    #[serde(borrow, default)]
    errors: Vec<WaError<'a>>,
    #[serde(borrow, default)]
    system: Option<System<'a>>,
}

#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SharedContact<'a> {
    #[serde(borrow, default)]
    name: Option<SharedName<'a>>,
    #[serde(borrow, default)]
    phones: Vec<SharedPhone<'a>>,
}

#[derive(Deserialize)]
struct SharedName<'a> {
    #[serde(borrow, default)]
    formatted_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SharedPhone<'a> {
    #[serde(borrow, default)]
    phone: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WaError<'a> {
    #[serde(default)]
    code: Option<i64>,
    #[serde(borrow, default)]
    title: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error_data: Option<ErrorData<'a>>,
}

#[derive(Deserialize)]
struct ErrorData<'a> {
    #[serde(borrow, default)]
    details: Option<Cow<'a, str>>,
}

impl WaError<'_> {
    /// Meta's code and its words: the title, and the details when they add to it.
    fn provider_error(&self) -> ProviderError {
        let title = self
            .title
            .as_deref()
            .or(self.message.as_deref())
            .unwrap_or("failed");
        let text = match self
            .error_data
            .as_ref()
            .and_then(|data| data.details.as_deref())
        {
            Some(details) if details != title => format!("{title}: {details}"),
            _ => title.to_owned(),
        };
        ProviderError {
            code: self.code.map_or_else(String::new, |code| code.to_string()),
            text,
        }
    }
}

#[derive(Deserialize)]
struct System<'a> {
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Text<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Media<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    caption: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    filename: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Interactive<'a> {
    #[serde(borrow, default)]
    button_reply: Option<Reply<'a>>,
    #[serde(borrow, default)]
    list_reply: Option<Reply<'a>>,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    title: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Button<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Location<'a> {
    latitude: f64,
    longitude: f64,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    address: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Reaction<'a> {
    #[serde(borrow, default)]
    emoji: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Status<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    recipient_id: Cow<'a, str>,
    /// Why a message failed (131047 outside the service window, 131026 undeliverable).
    #[serde(borrow, default)]
    errors: Vec<WaError<'a>>,
}

/// A webhook -> events: every message and status of every change of every entry (Meta
/// batches them).
pub fn decode(config: &Config, request: &Inbound) -> Result<Vec<Event>, PluginError> {
    if let Some(secret) = &config.app_secret {
        let provided = header(request, SIGNATURE_HEADER).ok_or_else(|| {
            PluginError::Unauthorized("X-Hub-Signature-256 header is missing".to_owned())
        })?;
        let hex = provided.strip_prefix("sha256=").ok_or_else(|| {
            PluginError::Unauthorized("X-Hub-Signature-256 must start with sha256=".to_owned())
        })?;
        if !signature::verify_sha256_hex(secret.as_bytes(), &[&request.body], hex) {
            return Err(PluginError::Unauthorized(
                "X-Hub-Signature-256 does not match the body".to_owned(),
            ));
        }
    }
    let webhook: Payload<'_> = json_body(request)?;
    if webhook.object != "whatsapp_business_account" {
        return Err(PluginError::Unsupported(format!(
            "webhook object {:?} is not whatsapp_business_account",
            webhook.object
        )));
    }
    let mut events = Vec::new();
    for change in webhook.entry.iter().flat_map(|entry| &entry.changes) {
        if change.field != "messages" {
            continue;
        }
        let number = change
            .value
            .metadata
            .as_ref()
            .map(|metadata| metadata.phone_number_id.as_ref())
            .ok_or_else(|| {
                PluginError::InvalidPayload(
                    "a messages change without `metadata.phone_number_id`".to_owned(),
                )
            })?;
        thread::check_endpoint(number, &config.phone_number_ids, "phone_number_ids")?;
        for message in &change.value.messages {
            let name = change
                .value
                .contacts
                .iter()
                .find(|contact| contact.wa_id == message.from)
                .and_then(|contact| contact.profile.as_ref())
                .and_then(|profile| profile.name.as_deref());
            if let Some(event) = message_event(number, message, name) {
                events.push(event);
            }
        }
        for status in &change.value.statuses {
            if let Some(event) = status_event(number, status)? {
                events.push(event);
            }
        }
    }
    Ok(events)
}

fn message_event(number: &str, message: &WaMessage<'_>, name: Option<&str>) -> Option<Event> {
    let text = message_text(message)?;
    Some(Event {
        id: Some(message.id.to_string()),
        body: EventBody::Message(Message {
            thread: thread::key(number, &message.from),
            sender: Sender::Customer,
            text,
            visibility: Visibility::Public,
            sentiment: None,
            customer: Some(Customer {
                id: message.from.to_string(),
                name: name.map(str::to_owned),
            }),
            reply_to: message
                .context
                .as_ref()
                .and_then(|context| context.id.as_deref())
                .map(str::to_owned),
        }),
    })
}

/// What the transcript shows for each message type: a supervisor must at least see that the
/// customer sent something, also what cannot be shown (`unsupported`, with Meta's reason) or
/// a type this plugin does not know. `None` only for a removed reaction, which carries nothing.
fn message_text(message: &WaMessage<'_>) -> Option<String> {
    let media = |label: &str, media: &Option<Media<'_>>| {
        media.as_ref().map(|media| {
            let mut text = format!("[{label}");
            if let Some(kind) = &media.mime_type {
                text.push_str(&format!(" {kind}"));
            }
            text.push_str(&format!(" media:{}]", media.id));
            if let Some(name) = &media.filename {
                text.push_str(&format!(" {name}"));
            }
            if let Some(caption) = &media.caption {
                text.push_str(&format!(" {caption}"));
            }
            text
        })
    };
    match message.kind.as_ref() {
        "text" => message.text.as_ref().map(|text| text.body.to_string()),
        "image" => media("image", &message.image),
        "video" => media("video", &message.video),
        "audio" => media("audio", &message.audio),
        "document" => media("document", &message.document),
        "sticker" => media("sticker", &message.sticker),
        "interactive" => message.interactive.as_ref().and_then(|interactive| {
            interactive
                .button_reply
                .as_ref()
                .or(interactive.list_reply.as_ref())
                .map(|reply| format!("{} [{}]", reply.title, reply.id))
        }),
        "button" => message.button.as_ref().map(|button| match &button.payload {
            Some(payload) => format!("{} [{payload}]", button.text),
            None => button.text.to_string(),
        }),
        "location" => message.location.as_ref().map(|location| {
            let place = [location.name.as_deref(), location.address.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "[location {:.6},{:.6}] {place}",
                location.latitude, location.longitude
            )
            .trim_end()
            .to_owned()
        }),
        "reaction" => message
            .reaction
            .as_ref()
            .and_then(|reaction| reaction.emoji.as_ref())
            .map(|emoji| format!("[reaction] {emoji}")),
        "contacts" => {
            let cards: Vec<String> = message
                .contacts
                .iter()
                .map(|card| {
                    let name = card
                        .name
                        .as_ref()
                        .and_then(|name| name.formatted_name.as_deref())
                        .unwrap_or("(no name)");
                    let phones: Vec<&str> = card
                        .phones
                        .iter()
                        .filter_map(|phone| phone.phone.as_deref())
                        .collect();
                    if phones.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{name} {}", phones.join(", "))
                    }
                })
                .collect();
            Some(
                format!("[contacts] {}", cards.join("; "))
                    .trim_end()
                    .to_owned(),
            )
        }
        "unsupported" => {
            let reasons: Vec<String> = message
                .errors
                .iter()
                .map(|error| match (&error.title, error.code) {
                    (Some(title), Some(code)) => format!("{title} ({code})"),
                    (Some(title), None) => title.to_string(),
                    (None, Some(code)) => format!("error {code}"),
                    (None, None) => String::new(),
                })
                .filter(|reason| !reason.is_empty())
                .collect();
            Some(
                format!(
                    "[unsupported] the customer sent a message WhatsApp cannot show: {}",
                    reasons.join("; ")
                )
                .trim_end_matches([' ', ':'])
                .to_owned(),
            )
        }
        "system" => Some(format!(
            "[system] {}",
            message
                .system
                .as_ref()
                .and_then(|system| system.body.as_deref())
                .unwrap_or_default()
        )),
        other => Some(format!(
            "[{other}] (a message type this plugin does not show)"
        )),
    }
}

fn status_event(number: &str, status: &Status<'_>) -> Result<Option<Event>, PluginError> {
    let receipt_status = match status.status.as_ref() {
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        "failed" => ReceiptStatus::Failed,
        // `deleted` and `warning` are informational.
        "deleted" | "warning" => return Ok(None),
        other => {
            return Err(PluginError::Unsupported(format!(
                "unknown status {other:?}"
            )));
        }
    };
    Ok(Some(Event {
        id: Some(format!("{}:{}", status.id, status.status)),
        body: EventBody::Receipt(Receipt {
            thread: thread::key(number, &status.recipient_id),
            message_id: status.id.to_string(),
            status: receipt_status,
            error: status.errors.first().map(WaError::provider_error),
        }),
    }))
}

/// Notification -> Graph API `/messages` request.
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
    let within_window = notification
        .customer_last_message_at
        .is_some_and(|last| notification.now - last < SERVICE_WINDOW_MILLIS);
    if !within_window {
        return Err(PluginError::Unsupported(
            "outside WhatsApp's 24-hour customer service window: the customer has not written in the last 24 hours, so only an approved template message may be sent".to_owned(),
        ));
    }
    // From the number the customer wrote to (the key's), else the configured default.
    let number = thread::endpoint_or(
        &notification.thread,
        config.phone_number_id.as_deref(),
        "phone_number_id",
    )?;
    let body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": notification.customer,
        "type": "text",
        "text": { "preview_url": false, "body": text },
    });
    let headers = vec![
        header_pair("content-type", "application/json"),
        header_pair(
            "authorization",
            format!("Bearer {}", secret("access_token")),
        ),
    ];
    Ok(vec![OutboundRequest {
        method: "POST".to_owned(),
        url: format!(
            "{}/{}/{number}/messages",
            config.api_base_url.trim_end_matches('/'),
            config.graph_version
        ),
        headers,
        body: serde_json::to_vec(&body)
            .map_err(|error| PluginError::InvalidPayload(error.to_string()))?,
    }])
}
