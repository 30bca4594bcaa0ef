//! The `web-chat` channel plugin (plugin step of the flow): Chatwoot webhook events
//! (`conversation_created`, `message_created`, `conversation_status_changed`,
//! `conversation_updated`, typing) -> canonical events; supervisor notifications -> Chatwoot's
//! create-message and toggle-status API requests. Mapping and settings: `README.md` beside it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_plugin_sdk::settings::{self, Settings};
use switchboard_plugin_sdk::types::*;
use switchboard_plugin_sdk::{
    Plugin, Webhook, credential_in_settings, header, header_pair, json_body, secret, signature,
    thread,
};

/// `[plugins.web-chat.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Chatwoot's base URL, e.g. `https://chat.example.com`.
    pub base_url: String,
    /// The Chatwoot accounts this plugin serves; a webhook of another is refused. Empty (the
    /// default): every account that calls it.
    #[serde(default)]
    pub account_ids: Vec<u64>,
    /// The account of a webhook that names none (Chatwoot's payloads do), and of a
    /// conversation whose key names none (opened by a plugin version before accounts were
    /// part of keys).
    #[serde(default)]
    pub account_id: Option<u64>,
    /// The webhook's secret: verifies `X-Chatwoot-Signature` when set.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// How old `X-Chatwoot-Timestamp` may be, in seconds (replay protection). Default 300.
    #[serde(default = "freshness")]
    pub freshness_seconds: i64,
    /// Refused: the API access token is a secret (`[plugins.web-chat.secrets]
    /// api_access_token`), which requests name as `{{secret:api_access_token}}`.
    #[serde(default)]
    pub api_access_token: Option<String>,
    /// Chatwoot user id -> Switchboard agent id. Assignments to unmapped users are not
    /// reported (the routing platform's roster and Switchboard's must agree).
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
    /// Chatwoot team name -> Switchboard queue id.
    #[serde(default)]
    pub teams: BTreeMap<String, String>,
    #[serde(default = "joined_notice")]
    pub joined_notice: String,
    #[serde(default = "closed_notice")]
    pub closed_notice: String,
}

fn freshness() -> i64 {
    300
}

fn joined_notice() -> String {
    "A supervisor has joined the conversation.".to_owned()
}

fn closed_notice() -> String {
    "This conversation was closed by a supervisor.".to_owned()
}

static CONFIG: Settings<Config> = Settings::new();

#[derive(Debug)]
pub struct WebChat;

impl Plugin for WebChat {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "web-chat".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channel: ChannelKind::Web,
            description: "Chatwoot web chat: webhook events and the messages API".to_owned(),
        }
    }

    fn configure(settings: String) -> Result<(), PluginError> {
        let config: Config = settings::parse(&settings)?;
        if config.api_access_token.is_some() {
            return Err(credential_in_settings("api_access_token", "web-chat"));
        }
        if !config.base_url.starts_with("http://") && !config.base_url.starts_with("https://") {
            return Err(PluginError::Config(
                "`base_url` must be an http(s) URL".to_owned(),
            ));
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

/// Chatwoot's id of one webhook delivery (the event id for deduplication).
const DELIVERY_HEADER: &str = "x-chatwoot-delivery";
/// When Chatwoot signed the delivery (the freshness window).
const TIMESTAMP_HEADER: &str = "x-chatwoot-timestamp";
/// Chatwoot's HMAC-SHA256 over `timestamp.body`.
const SIGNATURE_HEADER: &str = "x-chatwoot-signature";

// The request headers `decode` reads; the host passes no others.
/// Chatwoot takes any 2xx; the plugin is signed when its webhook secret is set.
impl Webhook for WebChat {
    fn signed() -> bool {
        CONFIG
            .get()
            .is_ok_and(|config| config.webhook_secret.is_some())
    }
}

switchboard_plugin_sdk::export_plugin!(WebChat, headers: [DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER], webhook);

/// One webhook event -> events.
pub fn decode(config: &Config, request: &Inbound) -> Result<Vec<Event>, PluginError> {
    if let Some(secret) = &config.webhook_secret {
        verify(config, secret, request)?;
    }
    let payload: Value = json_body(request)?;
    let event = payload
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            PluginError::InvalidPayload("no `event` field: not a Chatwoot webhook".to_owned())
        })?;
    let account = &account_of(config, &payload)?;
    // Chatwoot numbers each delivery; a redelivered webhook carries the same id.
    let delivery = header(request, DELIVERY_HEADER).map(str::to_owned);
    let id = |suffix: &str| {
        delivery
            .clone()
            .map(|delivery| format!("{delivery}:{suffix}"))
    };
    match event {
        "conversation_created" => {
            let conversation = Conversation::from(&payload, account)?;
            let mut events = vec![Event {
                id: id("started")
                    .or_else(|| Some(format!("conversation_created:{}", conversation.thread))),
                body: EventBody::Started(Started {
                    thread: conversation.thread.clone(),
                    direction: Direction::Inbound,
                    subject: conversation.subject.clone(),
                    customer: conversation.customer.clone(),
                    queue: conversation
                        .team
                        .as_deref()
                        .and_then(|team| config.teams.get(team))
                        .cloned(),
                }),
            }];
            if let Some(agent) = conversation
                .assignee
                .as_deref()
                .and_then(|user| config.agents.get(user))
            {
                events.push(Event {
                    id: id("accepted"),
                    body: EventBody::Accepted(AgentRef {
                        thread: conversation.thread.clone(),
                        agent: agent.clone(),
                    }),
                });
            }
            Ok(events)
        }
        "message_created" => message_created(config, &payload, account, delivery),
        "conversation_status_changed" => {
            let conversation = Conversation::from(&payload, account)?;
            let thread = conversation.thread;
            let body = match conversation.status.as_str() {
                "resolved" => EventBody::Closed(thread),
                "snoozed" => EventBody::Paused(thread),
                "open" => EventBody::Resumed(thread),
                // `pending` (waiting for a bot or triage) changes nothing we track.
                _ => return Ok(Vec::new()),
            };
            Ok(vec![Event {
                id: id(&conversation.status),
                body,
            }])
        }
        "conversation_updated" => conversation_updated(config, &payload, account, delivery),
        "conversation_typing_on" => {
            let conversation = payload.get("conversation").ok_or_else(|| {
                PluginError::InvalidPayload("typing event without `conversation`".to_owned())
            })?;
            let thread = Conversation::from(conversation, account)?.thread;
            let user = payload.get("user");
            let is_contact = user
                .and_then(|user| user.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|kind| kind.eq_ignore_ascii_case("contact"));
            let sender = if is_contact {
                Sender::Customer
            } else {
                Sender::Agent(agent_of(config, user.and_then(|user| user.get("id"))))
            };
            // Typing is relayed live and never stored, so it needs no id.
            Ok(vec![Event {
                id: None,
                body: EventBody::Typing(Typing { thread, sender }),
            }])
        }
        // Chatwoot events that say nothing about a supervised conversation.
        "conversation_typing_off"
        | "conversation_opened"
        | "contact_created"
        | "contact_updated"
        | "webwidget_triggered"
        | "message_updated"
        | "inbox_created"
        | "inbox_updated" => Ok(Vec::new()),
        other => Err(PluginError::Unsupported(format!(
            "Chatwoot event {other:?} is not mapped"
        ))),
    }
}

/// The account a webhook is about: the payload's `account.id` (every Chatwoot webhook names
/// it), else its conversation's `account_id`, else the configured `account_id`; checked
/// against `account_ids`.
fn account_of(config: &Config, payload: &Value) -> Result<String, PluginError> {
    let named = payload
        .get("account")
        .and_then(|account| account.get("id"))
        .or_else(|| payload.get("account_id"))
        .or_else(|| {
            payload
                .get("conversation")
                .and_then(|conversation| conversation.get("account_id"))
        })
        .and_then(Value::as_u64)
        .or(config.account_id)
        .ok_or_else(|| {
            PluginError::InvalidPayload(
                "the webhook names no account (`account.id`) and `account_id` is not configured"
                    .to_owned(),
            )
        })?;
    let listed: Vec<String> = config.account_ids.iter().map(u64::to_string).collect();
    let account = named.to_string();
    thread::check_endpoint(&account, &listed, "account_ids")?;
    Ok(account)
}

/// `X-Chatwoot-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`, with a
/// freshness window on `X-Chatwoot-Timestamp` against the time Switchboard received it.
fn verify(config: &Config, secret: &str, request: &Inbound) -> Result<(), PluginError> {
    let timestamp = header(request, TIMESTAMP_HEADER).ok_or_else(|| {
        PluginError::Unauthorized("X-Chatwoot-Timestamp header is missing".to_owned())
    })?;
    let seconds: i64 = timestamp.trim().parse().map_err(|_| {
        PluginError::Unauthorized("X-Chatwoot-Timestamp is not a Unix time".to_owned())
    })?;
    let age = request.received_at / 1000 - seconds;
    if age.abs() > config.freshness_seconds {
        return Err(PluginError::Unauthorized(format!(
            "X-Chatwoot-Timestamp is {age} s away from now (window {} s): stale or replayed",
            config.freshness_seconds
        )));
    }
    let provided = header(request, SIGNATURE_HEADER).ok_or_else(|| {
        PluginError::Unauthorized("X-Chatwoot-Signature header is missing".to_owned())
    })?;
    let hex = provided.strip_prefix("sha256=").ok_or_else(|| {
        PluginError::Unauthorized("X-Chatwoot-Signature must start with sha256=".to_owned())
    })?;
    if !signature::verify_sha256_hex(
        secret.as_bytes(),
        &[timestamp.as_bytes(), b".", &request.body],
        hex,
    ) {
        return Err(PluginError::Unauthorized(
            "X-Chatwoot-Signature does not match".to_owned(),
        ));
    }
    Ok(())
}

/// What every conversation payload carries that we need.
struct Conversation {
    thread: String,
    status: String,
    subject: Option<String>,
    customer: Customer,
    assignee: Option<String>,
    team: Option<String>,
}

impl Conversation {
    /// Reads a Chatwoot conversation object (a conversation event's payload, or the
    /// `conversation` of a message) of `account`.
    fn from(value: &Value, account: &str) -> Result<Self, PluginError> {
        let id = value.get("id").and_then(Value::as_u64).ok_or_else(|| {
            PluginError::InvalidPayload("conversation has no numeric `id`".to_owned())
        })?;
        let meta = value.get("meta");
        let sender = meta.and_then(|meta| meta.get("sender"));
        let customer = Customer {
            id: sender
                .and_then(|sender| sender.get("id"))
                .map(|id| format!("contact-{}", scalar(id)))
                .unwrap_or_else(|| format!("conversation-{id}")),
            name: sender
                .and_then(|sender| sender.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let subject = value
            .get("additional_attributes")
            .and_then(|attributes| attributes.get("mail_subject"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Self {
            thread: thread::key(account, &id.to_string()),
            status: value
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("open")
                .to_owned(),
            subject,
            customer,
            assignee: meta
                .and_then(|meta| meta.get("assignee"))
                .and_then(|assignee| assignee.get("id"))
                .map(scalar),
            team: meta
                .and_then(|meta| meta.get("team"))
                .and_then(|team| team.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn agent_of(config: &Config, user: Option<&Value>) -> String {
    let user = user.map(scalar).unwrap_or_default();
    config
        .agents
        .get(&user)
        .cloned()
        .unwrap_or_else(|| format!("chatwoot-user-{user}"))
}

fn message_created(
    config: &Config,
    payload: &Value,
    account: &str,
    delivery: Option<String>,
) -> Result<Vec<Event>, PluginError> {
    let conversation = payload
        .get("conversation")
        .ok_or_else(|| PluginError::InvalidPayload("message without `conversation`".to_owned()))?;
    let conversation = Conversation::from(conversation, account)?;
    let message_id = payload
        .get("id")
        .map(scalar)
        .ok_or_else(|| PluginError::InvalidPayload("message without `id`".to_owned()))?;
    let message_type = payload.get("message_type").map(scalar).unwrap_or_default();
    let private = payload
        .get("private")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let sender = payload.get("sender");
    let sender_type = sender
        .and_then(|sender| sender.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let sender = match (message_type.as_str(), sender_type.as_str()) {
        // Chatwoot's numeric message types: 0 incoming, 1 outgoing, 2 activity, 3 template.
        ("incoming" | "0", _) => Sender::Customer,
        ("outgoing" | "1", "agent_bot") => Sender::Bot(format!(
            "chatwoot-bot-{}",
            sender
                .and_then(|s| s.get("id"))
                .map(scalar)
                .unwrap_or_default()
        )),
        ("outgoing" | "1", _) => {
            Sender::Agent(agent_of(config, sender.and_then(|sender| sender.get("id"))))
        }
        // Activity lines ("Conversation was resolved by …") and templates are Chatwoot's own.
        _ => return Ok(Vec::new()),
    };
    let mut text = payload
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(attachments) = payload.get("attachments").and_then(Value::as_array) {
        for attachment in attachments {
            let kind = attachment
                .get("file_type")
                .and_then(Value::as_str)
                .unwrap_or("file");
            let url = attachment
                .get("data_url")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("[{kind}] {url}"));
        }
    }
    if text.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Event {
        id: Some(delivery.map_or_else(
            || format!("message:{message_id}"),
            |delivery| format!("{delivery}:message"),
        )),
        body: EventBody::Message(Message {
            thread: conversation.thread,
            // The message's own sender is the contact (the conversation object of a message
            // event does not always carry `meta.sender`).
            customer: matches!(sender, Sender::Customer).then(|| Customer {
                id: payload
                    .get("sender")
                    .and_then(|sender| sender.get("id"))
                    .map(|id| format!("contact-{}", scalar(id)))
                    .unwrap_or_else(|| conversation.customer.id.clone()),
                name: payload
                    .get("sender")
                    .and_then(|sender| sender.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| conversation.customer.name.clone()),
            }),
            sender,
            text,
            visibility: if private {
                Visibility::Internal
            } else {
                Visibility::Public
            },
            sentiment: None,
            // Chatwoot's reply-to: `content_attributes.in_reply_to` (the message id it quotes).
            reply_to: payload
                .get("content_attributes")
                .and_then(|attributes| attributes.get("in_reply_to"))
                .filter(|id| !id.is_null())
                .map(scalar),
        }),
    }])
}

fn conversation_updated(
    config: &Config,
    payload: &Value,
    account: &str,
    delivery: Option<String>,
) -> Result<Vec<Event>, PluginError> {
    let conversation = Conversation::from(payload, account)?;
    let mut events = Vec::new();
    let changes = payload
        .get("changed_attributes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for change in &changes {
        let Some(object) = change.as_object() else {
            continue;
        };
        for (attribute, values) in object {
            let previous = values
                .get("previous_value")
                .filter(|value| !value.is_null());
            let current = values.get("current_value").filter(|value| !value.is_null());
            let id = delivery
                .as_ref()
                .map(|delivery| format!("{delivery}:{attribute}"));
            match attribute.as_str() {
                "assignee_id" => {
                    if let Some(agent) = current
                        .map(scalar)
                        .and_then(|user| config.agents.get(&user))
                    {
                        events.push(Event {
                            id,
                            body: EventBody::Accepted(AgentRef {
                                thread: conversation.thread.clone(),
                                agent: agent.clone(),
                            }),
                        });
                    } else if current.is_none()
                        && let Some(agent) = previous
                            .map(scalar)
                            .and_then(|user| config.agents.get(&user))
                    {
                        events.push(Event {
                            id,
                            body: EventBody::AgentLeft(AgentRef {
                                thread: conversation.thread.clone(),
                                agent: agent.clone(),
                            }),
                        });
                    }
                }
                "team_id" => {
                    if let Some(queue) = conversation
                        .team
                        .as_deref()
                        .and_then(|team| config.teams.get(team))
                    {
                        events.push(Event {
                            id,
                            body: EventBody::Updated(Update {
                                thread: conversation.thread.clone(),
                                subject: None,
                                queue: Some(queue.clone()),
                            }),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(events)
}

/// Notification -> Chatwoot API requests.
pub fn encode(
    config: &Config,
    notification: &Notification,
) -> Result<Vec<OutboundRequest>, PluginError> {
    let configured = config.account_id.map(|account| account.to_string());
    let account = thread::endpoint_or(&notification.thread, configured.as_deref(), "account_id")?;
    let conversation = thread::split(&notification.thread).1;
    let conversation_url = format!(
        "{}/api/v1/accounts/{account}/conversations/{conversation}",
        config.base_url.trim_end_matches('/'),
    );
    let message = |content: &str| -> Result<OutboundRequest, PluginError> {
        request(
            config,
            format!("{conversation_url}/messages"),
            json!({ "content": content, "message_type": "outgoing", "private": false }),
        )
    };
    match &notification.body {
        NotificationBody::Message(text) => Ok(vec![message(&text.text)?]),
        NotificationBody::SupervisorJoined(joined) => Ok(vec![match joined.mode {
            SupervisionMode::ConsultPublic | SupervisionMode::Barge => {
                message(&config.joined_notice)?
            }
            // Internal consultants are told to the agent with a private note.
            _ => request(
                config,
                format!("{conversation_url}/messages"),
                json!({ "content": format!("Supervisor {} joined (internal).", joined.supervisor), "message_type": "outgoing", "private": true }),
            )?,
        }]),
        NotificationBody::ClosedBySupervisor(_) => Ok(vec![message(&config.closed_notice)?]),
        NotificationBody::EndSession => Ok(vec![request(
            config,
            format!("{conversation_url}/toggle_status"),
            json!({ "status": "resolved" }),
        )?]),
        NotificationBody::SupervisorLeft(_)
        | NotificationBody::Transferred(_)
        | NotificationBody::Media(_) => Ok(Vec::new()),
    }
}

fn request(config: &Config, url: String, body: Value) -> Result<OutboundRequest, PluginError> {
    let _ = config;
    let headers = vec![
        header_pair("content-type", "application/json"),
        header_pair("api_access_token", secret("api_access_token")),
    ];
    Ok(OutboundRequest {
        method: "POST".to_owned(),
        url,
        headers,
        body: serde_json::to_vec(&body)
            .map_err(|error| PluginError::InvalidPayload(error.to_string()))?,
    })
}
