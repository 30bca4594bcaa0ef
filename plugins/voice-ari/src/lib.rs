//! The `voice-ari` channel plugin (plugin step of the flow): Asterisk ARI events (`StasisStart`,
//! `StasisEnd`, `ChannelStateChange`, `ChannelHold`/`ChannelUnhold`, `ChannelHangupRequest`,
//! `ChannelDestroyed`, `ChannelEnteredBridge`/`ChannelLeftBridge`, `ChannelDtmfReceived`) ->
//! canonical events; supervision media controls -> ARI REST requests (snoop `spy=both` to
//! listen, a whisper snoop to coach, the call's bridge to join or barge, hang-up to end).
//! It exports `voice-controls`. Mapping, conventions and settings: `README.md` beside it.

// wit-bindgen's export glue, expanded in this crate, is unsafe FFI by nature.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;
// Linked for its per-call arena allocator alone; the bindings are this crate's own.

wit_bindgen::generate!({
    path: "../../plugin-sdk/wit",
    world: "voice-channel",
});

use exports::switchboard::channel::plugin::Guest as Plugin;
use exports::switchboard::channel::request_headers::Guest as RequestHeaders;
use exports::switchboard::channel::voice_controls::Guest as VoiceControls;
use exports::switchboard::channel::webhook::{Answer, Guest as Webhook};
use switchboard::channel::types::*;

/// `[plugins.voice-ari.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// ARI base URL, e.g. `http://127.0.0.1:8088/ari`.
    pub ari_url: String,
    /// The Stasis application the calls run in.
    pub application: String,
    /// The ARI user: with it, every request carries Basic auth whose password is the secret
    /// `[plugins.voice-ari.secrets] ari_password` (`{{basic:USER:ari_password}}`).
    #[serde(default)]
    pub ari_user: Option<String>,
    /// Refused: the password is a secret (`[plugins.voice-ari.secrets] ari_password`).
    #[serde(default)]
    pub ari_password: Option<String>,
    /// Endpoint (`PJSIP/1001`, or the endpoint name `1001`) -> Switchboard agent id. A channel
    /// of a mapped endpoint is an agent's leg; every other channel is a customer's.
    #[serde(default)]
    pub agent_endpoints: BTreeMap<String, String>,
    /// Switchboard supervisor id -> the endpoint to ring for listening, coaching and joining.
    #[serde(default)]
    pub supervisor_endpoints: BTreeMap<String, String>,
    /// The business's own numbers: a channel entering the application with one of them as its
    /// caller is a call the business places (outbound), whose customer is the number called.
    #[serde(default)]
    pub business_numbers: Vec<String>,
    /// Record DTMF digits on the timeline. Off by default: callers type card numbers into
    /// IVRs, and a supervision timeline must not keep them.
    #[serde(default)]
    pub record_dtmf: bool,
    /// A sound played to the call when a supervisor joins publicly (e.g. `beep`); none when
    /// unset.
    #[serde(default)]
    pub joined_sound: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> Result<&'static Config, PluginError> {
    CONFIG
        .get()
        .ok_or_else(|| PluginError::Config("the plugin was not configured".to_owned()))
}

#[derive(Debug)]
pub struct VoiceAri;

impl Plugin for VoiceAri {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "voice-ari".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channel: ChannelKind::Voice,
            description: "Asterisk ARI: Stasis call events, snoop/bridge supervision, hang-up"
                .to_owned(),
        }
    }

    fn configure(settings: String) -> Result<(), PluginError> {
        let config: Config = toml::from_str(&settings)
            .map_err(|error| PluginError::Config(error.message().to_owned()))?;
        if config.ari_password.is_some() {
            return Err(PluginError::Config(
                "`ari_password` is a credential: set it under [plugins.voice-ari.secrets] (the delivery worker puts it into each request at send time), not in the plugin's settings".to_owned(),
            ));
        }
        let _ = CONFIG.set(config);
        Ok(())
    }

    fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> {
        decode(config()?, &request)
    }

    fn encode(notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        encode(config()?, &notification)
    }
}

impl VoiceControls for VoiceAri {
    fn controls() -> Vec<String> {
        ["listen", "coach", "join", "stop"]
            .map(str::to_owned)
            .to_vec()
    }

    /// Only the supervisors `supervisor_endpoints` names have a phone to ring.
    fn media_supervisors() -> Option<Vec<String>> {
        Some(
            CONFIG
                .get()
                .map(|config| config.supervisor_endpoints.keys().cloned().collect())
                .unwrap_or_default(),
        )
    }
}

/// An ARI event carries everything `decode` needs in its body: no request header is read.
impl RequestHeaders for VoiceAri {
    fn wanted() -> Option<Vec<String>> {
        Some(Vec::new())
    }
}

/// ARI has no webhooks: its events come over the events WebSocket, so on the webhook door
/// the plugin is unsigned (refused unless allowed) and answers as the door's defaults do.
impl Webhook for VoiceAri {
    fn signed() -> bool {
        false
    }

    fn handshake(_request: Inbound) -> Result<Option<Answer>, PluginError> {
        Ok(None)
    }

    fn acknowledge(_request: Inbound, _ignored: bool) -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// ARI's answers to snoops, legs and hang-ups are not customer messages: the host's reading
/// stands (a failed media request is the host's to act on).
impl exports::switchboard::channel::delivery_receipts::Guest for VoiceAri {
    fn answered(
        _method: String,
        _url: String,
        _body: Vec<u8>,
        _answer: exports::switchboard::channel::delivery_receipts::ProviderAnswer,
    ) -> Option<exports::switchboard::channel::delivery_receipts::Outcome> {
        None
    }
}

#[cfg(target_family = "wasm")]
export!(VoiceAri);

/// A channel as ARI describes it.
struct Leg<'a> {
    id: &'a str,
    name: &'a str,
    caller_name: Option<&'a str>,
    caller_number: Option<&'a str>,
}

impl<'a> Leg<'a> {
    fn of(event: &'a Value) -> Result<Self, PluginError> {
        let channel = event
            .get("channel")
            .ok_or_else(|| PluginError::InvalidPayload("ARI event without `channel`".to_owned()))?;
        let text = |value: Option<&'a Value>| {
            value
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
        };
        Ok(Self {
            id: text(channel.get("id"))
                .ok_or_else(|| PluginError::InvalidPayload("channel without `id`".to_owned()))?,
            name: text(channel.get("name")).unwrap_or_default(),
            caller_name: text(channel.get("caller").and_then(|caller| caller.get("name"))),
            caller_number: text(
                channel
                    .get("caller")
                    .and_then(|caller| caller.get("number")),
            ),
        })
    }

    /// `PJSIP/1001-0000002a` -> `PJSIP/1001` and `1001`.
    fn endpoint(&self) -> (&'a str, &'a str) {
        let without_sequence = self
            .name
            .rsplit_once('-')
            .map_or(self.name, |(endpoint, _)| endpoint);
        let bare = without_sequence
            .split_once('/')
            .map_or(without_sequence, |(_, endpoint)| endpoint);
        (without_sequence, bare)
    }

    /// The Switchboard agent this leg belongs to, if it is an agent's.
    fn agent(&self, config: &Config) -> Option<String> {
        let (full, bare) = self.endpoint();
        config
            .agent_endpoints
            .get(full)
            .or_else(|| config.agent_endpoints.get(bare))
            .cloned()
    }
}

/// ARI events (`rest-api/api-docs/events.json` of Asterisk) that carry nothing for
/// supervision, each with a property its model requires ("" where none is). Anything not
/// listed and not mapped is `unsupported`: not an ARI event this plugin knows.
const IGNORED: &[(&str, &str)] = &[
    ("ChannelStateChange", "channel"),
    ("ChannelCreated", "channel"),
    ("ChannelVarset", "variable"),
    ("ChannelDialplan", "channel"),
    ("ChannelCallerId", "channel"),
    ("ChannelConnectedLine", "channel"),
    ("ChannelUserevent", "eventname"),
    ("ChannelTalkingStarted", "channel"),
    ("ChannelTalkingFinished", "channel"),
    ("ChannelToneDetected", "channel"),
    ("ChannelTransfer", ""),
    ("Dial", "peer"),
    ("BridgeCreated", "bridge"),
    ("BridgeDestroyed", "bridge"),
    ("BridgeMerged", "bridge"),
    ("BridgeVideoSourceChanged", "bridge"),
    ("BridgeBlindTransfer", "channel"),
    ("BridgeAttendedTransfer", "transferer_first_leg"),
    ("PlaybackStarted", "playback"),
    ("PlaybackContinuing", "playback"),
    ("PlaybackFinished", "playback"),
    ("RecordingStarted", "recording"),
    ("RecordingFinished", "recording"),
    ("RecordingFailed", "recording"),
    ("DeviceStateChanged", "device_state"),
    ("EndpointStateChange", "endpoint"),
    ("ContactStatusChange", "endpoint"),
    ("PeerStatusChange", "endpoint"),
    ("TextMessageReceived", "message"),
    ("ApplicationReplaced", ""),
    ("ApplicationRegistered", ""),
    ("ApplicationUnregistered", ""),
    ("ApplicationMoveFailed", "channel"),
];

/// One ARI event -> events.
pub fn decode(config: &Config, request: &Inbound) -> Result<Vec<Event>, PluginError> {
    let event: Value = serde_json::from_slice(&request.body)
        .map_err(|error| PluginError::InvalidPayload(format!("not an ARI event: {error}")))?;
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::InvalidPayload("ARI event without `type`".to_owned()))?;
    let timestamp = event
        .get("timestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // ARI events carry no id; the type, the channel and the timestamp identify one.
    let id = |leg: &str| Some(format!("{kind}:{leg}:{timestamp}"));
    let one = |id: Option<String>, body: EventBody| Ok(vec![Event { id, body }]);
    match kind {
        "StasisStart" => {
            let leg = Leg::of(&event)?;
            let args: Vec<&str> = event
                .get("args")
                .and_then(Value::as_array)
                .map(|args| args.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            // Agent and supervisor legs, snoops: our own legs entering the application.
            if leg.agent(config).is_some() || args.iter().any(|arg| arg.starts_with("role=")) {
                return Ok(Vec::new());
            }
            let arg = |name: &str| {
                args.iter()
                    .find_map(|arg| arg.strip_prefix(name)?.strip_prefix('='))
                    .filter(|value| !value.is_empty())
            };
            let queue = arg("queue").map(str::to_owned);
            // A call the business places: the application says so (`direction=outbound`, as
            // it originates the channel), or the caller is one of the business's numbers.
            let outbound = arg("direction") == Some("outbound")
                || leg
                    .caller_number
                    .is_some_and(|number| config.business_numbers.iter().any(|own| own == number));
            let dialplan = event
                .get("channel")
                .and_then(|channel| channel.get("dialplan"));
            let exten = dialplan
                .and_then(|plan| plan.get("exten"))
                .and_then(Value::as_str)
                .filter(|exten| !exten.is_empty() && *exten != "s");
            let (direction, customer_number, customer_name, subject) = if outbound {
                // The customer is the number called: the application's `customer=` argument,
                // else the channel's connected line, else the extension dialled.
                let connected = event
                    .get("channel")
                    .and_then(|channel| channel.get("connected"));
                let connected_number = connected
                    .and_then(|party| party.get("number"))
                    .and_then(Value::as_str)
                    .filter(|number| !number.is_empty());
                let called = arg("customer")
                    .or(connected_number)
                    .or(exten)
                    .unwrap_or(leg.id);
                (
                    Direction::Outbound,
                    called,
                    connected
                        .and_then(|party| party.get("name"))
                        .and_then(Value::as_str)
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned),
                    Some(format!("Call to {called}")),
                )
            } else {
                (
                    Direction::Inbound,
                    leg.caller_number.unwrap_or(leg.id),
                    leg.caller_name.map(str::to_owned),
                    exten.map(|exten| format!("Call to {exten}")),
                )
            };
            one(
                id(leg.id),
                EventBody::Started(Started {
                    thread: leg.id.to_owned(),
                    direction,
                    subject,
                    customer: Customer {
                        id: customer_number.to_owned(),
                        name: customer_name,
                    },
                    queue,
                }),
            )
        }
        "StasisEnd" | "ChannelHangupRequest" | "ChannelDestroyed" => {
            let leg = Leg::of(&event)?;
            if leg.agent(config).is_some() {
                // The agent's departure is reported by ChannelLeftBridge.
                return Ok(Vec::new());
            }
            one(id(leg.id), EventBody::CustomerLeft(leg.id.to_owned()))
        }
        _ if IGNORED.iter().any(|(name, _)| *name == kind) => {
            // Routine traffic of every Stasis application: acknowledged, nothing to map. Its
            // shape is still checked, so that a malformed frame is an error, not silence.
            let required = IGNORED
                .iter()
                .find(|(name, _)| *name == kind)
                .map_or("", |(_, required)| *required);
            if !required.is_empty() && event.get(required).is_none() {
                return Err(PluginError::InvalidPayload(format!(
                    "ARI {kind} event without `{required}`"
                )));
            }
            Ok(Vec::new())
        }
        "ChannelHold" | "ChannelUnhold" => {
            let leg = Leg::of(&event)?;
            if leg.agent(config).is_some() {
                return Ok(Vec::new());
            }
            let thread = leg.id.to_owned();
            let body = if kind == "ChannelHold" {
                EventBody::Paused(thread)
            } else {
                EventBody::Resumed(thread)
            };
            one(id(leg.id), body)
        }
        "ChannelEnteredBridge" | "ChannelLeftBridge" => {
            let leg = Leg::of(&event)?;
            let bridge = event
                .get("bridge")
                .and_then(|bridge| bridge.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    PluginError::InvalidPayload("bridge event without `bridge.id`".to_owned())
                })?;
            let Some(agent) = leg.agent(config) else {
                return Ok(Vec::new());
            };
            // The bridge lists its channels: the call is the one that is neither this agent
            // leg nor a supervisor's (`leg-…`, `snoop-…`, ours). A bridge event without the
            // list falls back to the convention of naming the bridge after the call.
            let call = event
                .get("bridge")
                .and_then(|bridge| bridge.get("channels"))
                .and_then(Value::as_array)
                .and_then(|channels| {
                    channels.iter().filter_map(Value::as_str).find(|channel| {
                        *channel != leg.id
                            && !channel.starts_with("leg-")
                            && !channel.starts_with("snoop-")
                    })
                })
                .unwrap_or(bridge);
            let reference = AgentRef {
                thread: call.to_owned(),
                agent,
            };
            let body = if kind == "ChannelEnteredBridge" {
                EventBody::Accepted(reference)
            } else {
                EventBody::AgentLeft(reference)
            };
            one(id(leg.id), body)
        }
        "ChannelDtmfReceived" => {
            let leg = Leg::of(&event)?;
            if !config.record_dtmf || leg.agent(config).is_some() {
                return Ok(Vec::new());
            }
            let digit = event.get("digit").and_then(Value::as_str).unwrap_or("?");
            one(
                id(leg.id),
                EventBody::Message(Message {
                    thread: leg.id.to_owned(),
                    sender: Sender::Customer,
                    text: format!("[dtmf] {digit}"),
                    visibility: Visibility::Internal,
                    sentiment: None,
                    customer: None,
                    reply_to: None,
                }),
            )
        }
        other => Err(PluginError::Unsupported(format!(
            "ARI event {other:?} is not mapped"
        ))),
    }
}

/// Supervision media and session control -> ARI REST requests.
pub fn encode(
    config: &Config,
    notification: &Notification,
) -> Result<Vec<OutboundRequest>, PluginError> {
    let call = notification.thread.as_str();
    let ari = config.ari_url.trim_end_matches('/');
    let app = &config.application;
    let request = |method: &str, path: String, query: &[(&str, &str)]| -> OutboundRequest {
        let mut url = format!("{ari}{path}");
        if !query.is_empty() {
            let mut serializer = form_urlencoded::Serializer::new(String::new());
            for (key, value) in query {
                serializer.append_pair(key, value);
            }
            url.push('?');
            url.push_str(&serializer.finish());
        }
        OutboundRequest {
            method: method.to_owned(),
            url,
            headers: auth(config),
            body: Vec::new(),
        }
    };
    // A snoop on the customer's leg plus the supervisor's phone, which the Stasis application
    // bridges when it answers (`appArgs` tell it which snoop it belongs to).
    let snoop =
        |supervisor: &str, spy: &str, whisper: &str| -> Result<Vec<OutboundRequest>, PluginError> {
            let snoop_id = format!("snoop-{supervisor}-{call}");
            let mut requests = vec![request(
                "POST",
                format!("/channels/{call}/snoop"),
                &[
                    ("spy", spy),
                    ("whisper", whisper),
                    ("app", app),
                    (
                        "appArgs",
                        &format!("role=snoop,supervisor={supervisor},call={call}"),
                    ),
                    ("snoopId", &snoop_id),
                ],
            )];
            requests.push(ring_supervisor(
                config,
                supervisor,
                call,
                &format!("role=supervisor,snoop={snoop_id}"),
                &request,
            )?);
            Ok(requests)
        };
    match &notification.body {
        NotificationBody::Media(MediaControl::Listen(media)) => {
            snoop(&media.supervisor, "both", "none")
        }
        // `whisper=in` mixes the supervisor into the audio Asterisk receives from the customer's
        // leg: the other bridge members (the agent) hear it, the customer does not.
        NotificationBody::Media(MediaControl::Coach(media)) => {
            snoop(&media.supervisor, "both", "in")
        }
        NotificationBody::Media(MediaControl::Join(join)) => {
            if join.public {
                Ok(vec![ring_supervisor(
                    config,
                    &join.supervisor,
                    call,
                    &format!("role=supervisor,bridge={call}"),
                    &request,
                )?])
            } else {
                snoop(&join.supervisor, "both", "in")
            }
        }
        NotificationBody::Media(MediaControl::Stop(supervisor)) => Ok(vec![
            request(
                "DELETE",
                format!("/channels/snoop-{supervisor}-{call}"),
                &[],
            ),
            request("DELETE", format!("/channels/leg-{supervisor}-{call}"), &[]),
        ]),
        NotificationBody::EndSession => Ok(vec![request(
            "DELETE",
            format!("/channels/{call}"),
            &[("reason", "normal")],
        )]),
        NotificationBody::SupervisorJoined(joined)
            if matches!(
                joined.mode,
                SupervisionMode::ConsultPublic | SupervisionMode::Barge
            ) =>
        {
            Ok(config
                .joined_sound
                .iter()
                .map(|sound| {
                    request(
                        "POST",
                        format!("/channels/{call}/play"),
                        &[("media", &format!("sound:{sound}"))],
                    )
                })
                .collect())
        }
        // Voice has no text: messages and the other notices have no ARI equivalent.
        _ => Ok(Vec::new()),
    }
}

/// Builds one ARI request: method, path, query pairs.
type RequestBuilder<'a> = dyn Fn(&str, String, &[(&str, &str)]) -> OutboundRequest + 'a;

/// Rings the supervisor's endpoint into the application.
fn ring_supervisor(
    config: &Config,
    supervisor: &str,
    call: &str,
    args: &str,
    request: &RequestBuilder<'_>,
) -> Result<OutboundRequest, PluginError> {
    let endpoint = config.supervisor_endpoints.get(supervisor).ok_or_else(|| {
        PluginError::Config(format!(
            "no `supervisor_endpoints` entry for supervisor {supervisor:?}"
        ))
    })?;
    Ok(request(
        "POST",
        "/channels".to_owned(),
        &[
            ("endpoint", endpoint),
            ("app", &config.application),
            ("appArgs", args),
            ("channelId", &format!("leg-{supervisor}-{call}")),
            ("callerId", "Switchboard supervisor"),
        ],
    ))
}

fn auth(config: &Config) -> Vec<Header> {
    match &config.ari_user {
        Some(user) => vec![Header {
            name: "authorization".to_owned(),
            value: switchboard_plugin_sdk::basic_auth(user, "ari_password"),
        }],
        None => Vec::new(),
    }
}
