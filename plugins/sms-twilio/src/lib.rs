//! The `sms-twilio` channel plugin (plugin step of the flow): Twilio Programmable Messaging
//! inbound webhooks and status callbacks -> canonical events; supervisor notifications -> the
//! Messages API request. Field mapping and settings: `plugins/sms-twilio/README.md`.

use serde::Deserialize;
use switchboard_plugin_sdk::settings::{self, Settings};
use switchboard_plugin_sdk::types::*;
use switchboard_plugin_sdk::{
    Answer, Plugin, Webhook, answer, basic_auth, customer_text, form, header, header_pair,
    signature, thread,
};

/// `[plugins.sms-twilio.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `AC...`: the account the Messages API request goes to.
    pub account_sid: String,
    /// Verifies `X-Twilio-Signature` when set (and signs outbound requests with Basic auth
    /// when `outbound_auth = "basic"`). Unset: inbound signatures are not checked.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// The business numbers (Twilio's `To` of an inbound message) this plugin serves; a
    /// webhook for another is refused. Empty (the default): every number of the account.
    #[serde(default)]
    pub numbers: Vec<String>,
    /// The sending number for a conversation whose key names no number (one opened by a
    /// plugin version before numbers were part of keys); replies otherwise go out from the
    /// number the customer wrote to. Unused with `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// `MG...`: send through a Messaging Service instead of a fixed number.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// `basic` (default): outbound requests carry `Authorization: Basic` with the account SID
    /// as user and `{{basic:…:auth_token}}` as password, which the delivery worker fills from
    /// `[plugins.sms-twilio.secrets] auth_token`. `none`: no `Authorization` header.
    #[serde(default = "basic")]
    pub outbound_auth: String,
    /// The REST API root requests go to (a proxy's, or an emulator's in tests).
    #[serde(default = "api_base_url")]
    pub api_base_url: String,
    /// Status callback URL for messages Switchboard sends (`StatusCallback`), so that
    /// `delivered`, `undelivered` and `failed` come back onto the message's timeline. Unset,
    /// it is the webhook door's URL for this plugin (`plugins.<id>.public_url`), and without
    /// one there is no callback.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// What the customer reads when a supervisor joins publicly.
    #[serde(default = "joined_notice")]
    pub joined_notice: String,
    /// What the customer reads when a supervisor closes the conversation.
    #[serde(default = "closed_notice")]
    pub closed_notice: String,
}

fn api_base_url() -> String {
    "https://api.twilio.com".to_owned()
}

fn basic() -> String {
    "basic".to_owned()
}

fn joined_notice() -> String {
    "A supervisor has joined this conversation.".to_owned()
}

fn closed_notice() -> String {
    "This conversation has been closed. Reply to start a new one.".to_owned()
}

static CONFIG: Settings<Config> = Settings::new();

#[derive(Debug)]
pub struct SmsTwilio;

impl Plugin for SmsTwilio {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "sms-twilio".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channel: ChannelKind::Sms,
            description: "Twilio Programmable Messaging: inbound SMS/MMS webhooks, status callbacks, Messages API".to_owned(),
        }
    }

    fn configure(settings: String) -> Result<(), PluginError> {
        let config: Config = settings::parse(&settings)?;
        if config.from.is_none() && config.messaging_service_sid.is_none() {
            return Err(PluginError::Config(
                "set `from` or `messaging_service_sid`".to_owned(),
            ));
        }
        if !matches!(config.outbound_auth.as_str(), "basic" | "none") {
            return Err(PluginError::Config(
                "`outbound_auth` is \"basic\" or \"none\"".to_owned(),
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

/// Twilio's HMAC-SHA1 of the URL and parameters, the only request header `decode` reads.
const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// What Twilio expects of a messaging webhook: TwiML. Empty TwiML sends no reply to the
/// customer (replies go through the API when a supervisor writes); status callbacks take any
/// 2xx and get the same.
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

impl Webhook for SmsTwilio {
    fn signed() -> bool {
        CONFIG.get().is_ok_and(|config| config.auth_token.is_some())
    }

    fn acknowledge(_request: Inbound, _ignored: bool) -> Answer {
        answer(200, Some("text/xml"), EMPTY_TWIML)
    }
}

/// Twilio answers a created message with the Message resource: its `sid` is what the status
/// callbacks name (`MessageSid`).
impl switchboard_plugin_sdk::Receipts for SmsTwilio {
    fn answered(
        _method: String,
        _url: String,
        _body: Vec<u8>,
        answer: switchboard_plugin_sdk::ProviderAnswer,
    ) -> Option<switchboard_plugin_sdk::Outcome> {
        answered(&answer)
    }
}

switchboard_plugin_sdk::export_plugin!(SmsTwilio, headers: [SIGNATURE_HEADER], webhook, receipts);

/// The provider's id (`sid`) of a created message, or Twilio's error (`code`, `message`).
pub fn answered(
    answer: &switchboard_plugin_sdk::ProviderAnswer,
) -> Option<switchboard_plugin_sdk::Outcome> {
    let body: switchboard_plugin_sdk::json::Value =
        switchboard_plugin_sdk::json::from_slice(&answer.body).ok()?;
    let text = |key: &str| match body.get(key)? {
        switchboard_plugin_sdk::json::Value::String(text) => Some(text.clone()),
        switchboard_plugin_sdk::json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    if (200..300).contains(&answer.status) {
        return Some(switchboard_plugin_sdk::Outcome {
            provider_id: text("sid"),
            status: ReceiptStatus::Sent,
            error: None,
        });
    }
    Some(switchboard_plugin_sdk::Outcome {
        provider_id: None,
        status: ReceiptStatus::Failed,
        error: Some(ProviderError {
            code: text("code").unwrap_or_else(|| answer.status.to_string()),
            text: text("message").unwrap_or_default(),
        }),
    })
}

/// Inbound webhook or status callback -> events.
pub fn decode(config: &Config, request: &Inbound) -> Result<Vec<Event>, PluginError> {
    let is_form = request
        .content_type
        .as_deref()
        .is_none_or(|kind| kind.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(PluginError::InvalidPayload(format!(
            "Twilio webhooks are form-encoded, not {}",
            request.content_type.as_deref().unwrap_or("")
        )));
    }
    let params = form::parse(&request.body);
    if let Some(token) = &config.auth_token {
        let provided = header(request, SIGNATURE_HEADER).ok_or_else(|| {
            PluginError::Unauthorized("X-Twilio-Signature header is missing".to_owned())
        })?;
        if !valid_signature(token, &request.url, &params, provided) {
            return Err(PluginError::Unauthorized(
                "X-Twilio-Signature does not match the URL and parameters".to_owned(),
            ));
        }
    }
    let sid = form::get(&params, "MessageSid")
        .or_else(|| form::get(&params, "SmsSid"))
        .ok_or_else(|| {
            PluginError::InvalidPayload(
                "MessageSid is missing: not a Twilio messaging webhook".to_owned(),
            )
        })?;
    let status = form::get(&params, "MessageStatus").or_else(|| form::get(&params, "SmsStatus"));
    match status {
        // A message from the customer (inbound webhooks carry no status, or `received`).
        None | Some("received") | Some("receiving") => {
            inbound_message(config, sid, &params).map(|event| vec![event])
        }
        Some(status) => status_callback(config, sid, status, &params),
    }
}

fn inbound_message(
    config: &Config,
    sid: &str,
    params: &[form::Pair<'_>],
) -> Result<Event, PluginError> {
    let from = form::require(params, "From")?;
    // The business number the customer wrote to: part of the thread key.
    let number = form::require(params, "To")?;
    thread::check_endpoint(number, &config.numbers, "numbers")?;
    let mut text = form::get(params, "Body").unwrap_or_default().to_owned();
    // Twilio documents `NumMedia` as the number of media items (0 to 10): anything else is not
    // Twilio's, and reading it as 0 would drop attachments silently.
    let media: usize = match form::get(params, "NumMedia") {
        None | Some("") => 0,
        Some(count) => count
            .parse()
            .ok()
            .filter(|count| *count <= 10)
            .ok_or_else(|| {
                PluginError::InvalidPayload(format!(
                    "`NumMedia` must be a number of media items from 0 to 10, not {count:?}"
                ))
            })?,
    };
    // MMS: list each attachment so the transcript shows what the customer sent.
    for index in 0..media {
        if let Some(url) = form::get(params, &format!("MediaUrl{index}")) {
            let kind = form::get(params, &format!("MediaContentType{index}")).unwrap_or("media");
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("[{kind}] {url}"));
        }
    }
    if text.is_empty() {
        return Err(PluginError::InvalidPayload(
            "the message has neither Body nor media".to_owned(),
        ));
    }
    Ok(Event {
        id: Some(sid.to_owned()),
        body: EventBody::Message(Message {
            thread: thread::key(number, from),
            sender: Sender::Customer,
            text,
            visibility: Visibility::Public,
            sentiment: None,
            customer: Some(Customer {
                id: from.to_owned(),
                // WhatsApp-over-Twilio senders have a profile name; SMS senders do not.
                name: form::get(params, "ProfileName").map(str::to_owned),
            }),
            // A WhatsApp-over-Twilio reply names the message it answers.
            reply_to: form::get(params, "OriginalRepliedMessageSid").map(str::to_owned),
        }),
    })
}

fn status_callback(
    config: &Config,
    sid: &str,
    status: &str,
    params: &[form::Pair<'_>],
) -> Result<Vec<Event>, PluginError> {
    let status = match status {
        "queued" | "accepted" | "scheduled" | "sending" => return Ok(Vec::new()),
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        "failed" | "undelivered" | "canceled" => ReceiptStatus::Failed,
        other => {
            return Err(PluginError::Unsupported(format!(
                "unknown MessageStatus {other:?}"
            )));
        }
    };
    // The customer is the recipient of a message we sent, from one of the business's numbers.
    let to = form::require(params, "To")?;
    let number = form::require(params, "From")?;
    thread::check_endpoint(number, &config.numbers, "numbers")?;
    Ok(vec![Event {
        // One callback per status: the id must include it, or `delivered` would be taken for a
        // duplicate of `sent`.
        id: Some(format!("{sid}:{}", status_name(status))),
        body: EventBody::Receipt(Receipt {
            thread: thread::key(number, to),
            message_id: sid.to_owned(),
            status,
            // `ErrorCode` (30003 unreachable, 21610 unsubscribed) and, when Twilio sends it,
            // `ErrorMessage`.
            error: form::get(params, "ErrorCode")
                .filter(|code| !code.is_empty())
                .map(|code| ProviderError {
                    code: code.to_owned(),
                    text: form::get(params, "ErrorMessage")
                        .unwrap_or("see Twilio's error dictionary")
                        .to_owned(),
                }),
        }),
    }])
}

fn status_name(status: ReceiptStatus) -> &'static str {
    match status {
        ReceiptStatus::Sent => "sent",
        ReceiptStatus::Delivered => "delivered",
        ReceiptStatus::Read => "read",
        ReceiptStatus::Failed => "failed",
    }
}

/// Twilio's request validation: HMAC-SHA1 (auth token) over the URL followed by each
/// parameter name and value, names sorted (and values of a repeated name sorted), base64.
/// Twilio may sign the URL with or without the default port, so both forms are tried.
pub fn valid_signature(token: &str, url: &str, params: &[form::Pair<'_>], provided: &str) -> bool {
    url_variants(url).iter().any(|url| {
        signature::verify_sha1_base64(
            token.as_bytes(),
            &[signed_data(url, params).as_bytes()],
            provided,
        )
    })
}

/// The string Twilio signs.
pub fn signed_data(url: &str, params: &[form::Pair<'_>]) -> String {
    let mut sorted: Vec<&form::Pair<'_>> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut data = String::with_capacity(url.len() + 64 * sorted.len());
    data.push_str(url);
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    data
}

/// The URL as given, plus the same URL with the default port added or removed.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    let (userinfo, host_port) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(user, host)| (user, host));
    let userinfo = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    match host_port.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            variants.push(format!("{scheme}://{userinfo}{host}{path}"));
        }
        _ => variants.push(format!(
            "{scheme}://{userinfo}{host_port}:{default_port}{path}"
        )),
    }
    variants
}

/// Notification -> Messages API request (or nothing: SMS has no session to end and no media).
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
    let mut fields: Vec<(&str, &str)> = vec![
        ("To", notification.customer.as_str()),
        ("Body", text.as_str()),
    ];
    // From the number the customer wrote to (the key's), else the configured one.
    let from = thread::split(&notification.thread)
        .0
        .or(config.from.as_deref());
    match (&config.messaging_service_sid, from) {
        (Some(service), _) => fields.push(("MessagingServiceSid", service)),
        (None, Some(from)) => fields.push(("From", from)),
        (None, None) => {
            return Err(PluginError::Config(
                "set `from` or `messaging_service_sid`".to_owned(),
            ));
        }
    }
    if let Some(callback) = &config.status_callback {
        fields.push(("StatusCallback", callback));
    }
    let mut body = form::encode(fields);
    if config.status_callback.is_none() {
        // The door's URL for this plugin: Twilio posts the message's statuses there.
        form::append_public_url(&mut body, "StatusCallback");
    }
    let mut headers = vec![header_pair(
        "content-type",
        "application/x-www-form-urlencoded",
    )];
    // Twilio deduplicates retried API requests carrying the same idempotency token.
    headers.push(header_pair(
        "i-twilio-idempotency-token",
        notification.id.clone(),
    ));
    if config.outbound_auth == "basic" {
        // The account SID is the user, the auth token (a secret) the password.
        headers.push(header_pair(
            "authorization",
            basic_auth(&config.account_sid, "auth_token"),
        ));
    }
    Ok(vec![OutboundRequest {
        method: "POST".to_owned(),
        url: format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.api_base_url.trim_end_matches('/'),
            config.account_sid
        ),
        headers,
        body,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&'static str, &'static str)]) -> Vec<form::Pair<'static>> {
        list.iter().map(|&(k, v)| (k.into(), v.into())).collect()
    }

    // The vectors of twilio-python's tests/unit/test_request_validator.py.
    const URI: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn twilio_params() -> Vec<form::Pair<'static>> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    #[test]
    fn twilio_sdk_signature_vector() {
        assert!(valid_signature(
            "12345",
            URI,
            &twilio_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!valid_signature(
            "12346",
            URI,
            &twilio_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let mut tampered = twilio_params();
        tampered[1].1 = "9999".into();
        assert!(!valid_signature(
            "12345",
            URI,
            &tampered,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn twilio_sdk_duplicate_parameter_vector() {
        let params = pairs(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
        ]);
        assert!(valid_signature(
            "12345",
            URI,
            &params,
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        ));
    }

    #[test]
    fn twilio_sdk_port_vectors() {
        let with_port = URI.replace(".com", ".com:1234");
        assert!(valid_signature(
            "12345",
            &with_port,
            &twilio_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let http_with_port = with_port.replace("https", "http");
        assert!(valid_signature(
            "12345",
            &http_with_port,
            &twilio_params(),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        ));
        assert!(valid_signature(
            "12345",
            URI,
            &twilio_params(),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        let http = URI.replace("https", "http");
        assert!(valid_signature(
            "12345",
            &http,
            &twilio_params(),
            "0ZXoZLH/DfblKGATFgpif+LLRf4="
        ));
    }
}
