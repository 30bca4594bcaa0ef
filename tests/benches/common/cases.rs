//! The benchmarks' plugin cases: each bundled plugin's typical payload, as it reaches the
//! daemon behind a gateway, with the settings it runs with and its mapping code called
//! natively. Shared by `plugins.rs` and `plugin_ratio.rs`.

use std::time::Duration;

use switchboard::engine::Millis;
use switchboard::plugin::{InboundRequest, Plugin, PluginHost, PluginSettings};
use switchboard_plugin_sdk::{settings, types};
use switchboard_tests::{component, fixture};

/// One plugin's typical payload and the settings it runs with.
pub(crate) struct Case {
    pub(crate) id: &'static str,
    pub(crate) settings: &'static str,
    pub(crate) request: InboundRequest,
    pub(crate) native: Box<dyn Fn(&types::Inbound) -> usize>,
}

impl Case {
    /// The bundled plugin, loaded into `host` with the case's settings.
    pub(crate) fn load(&self, host: &PluginHost) -> Plugin {
        host.load(PluginSettings {
            id: self.id.to_owned(),
            file: component(self.id),
            memory_limit: 64 << 20,
            time_limit: Duration::from_millis(100),
            settings: self.settings.to_owned(),
            secrets: Default::default(),
            public_url: None,
        })
        .expect("the bundled plugin loads")
    }
}

/// A webhook as it reaches `POST /v1/inbound/{plugin}` behind a gateway: the transport's and
/// the gateway's headers, then the provider's own.
pub(crate) fn request(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    provider_headers: &[(&str, &str)],
) -> InboundRequest {
    let length = body.len().to_string();
    let gateway = [
        ("host", "switchboard.example.com"),
        ("user-agent", "provider-webhooks/1.0"),
        ("content-length", length.as_str()),
        ("accept", "*/*"),
        ("accept-encoding", "deflate, gzip"),
        ("content-type", content_type),
        ("x-forwarded-for", "173.252.127.1"),
        ("x-forwarded-proto", "https"),
        ("switchboard-url", url),
    ];
    InboundRequest {
        method: "POST".to_owned(),
        url: url.to_owned(),
        headers: gateway
            .iter()
            .chain(provider_headers)
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect(),
        content_type: Some(content_type.to_owned()),
        body,
        received_at: Millis(1_800_000_000_000),
    }
}

pub(crate) fn native_request(request: &InboundRequest) -> types::Inbound {
    types::Inbound {
        method: request.method.clone(),
        url: request.url.clone(),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        content_type: request.content_type.clone(),
        body: request.body.clone(),
        received_at: request.received_at.0,
    }
}

/// The shape of a signature header (the benchmark's plugins have no secret configured, so
/// none is checked; the header still travels like a real one).
pub(crate) const SHA256_HEX: &str =
    "sha256=8a3f0c2b7e1d4c6a9b5e0f3d2c1b4a6e8d7c9f0a1b2c3d4e5f60718293a4b5c6";

pub(crate) fn cases() -> Vec<Case> {
    const WHATSAPP: &str = "phone_number_id = \"106540352242922\"\n";
    const SMS: &str =
        "account_sid = \"AC00000000000000000000000000000000\"\nfrom = \"+15005550006\"\n";
    const WEB: &str = "base_url = \"https://chat.example.com\"\naccount_id = 1\n";
    const OPEN: &str = "integration_id = \"2b6f4a2e-8c3d-4a6b-9f5e-1d2c3b4a5e6f\"\n";
    const VOICE: &str = "ari_url = \"http://127.0.0.1:8088/ari\"\napplication = \"switchboard\"\n";
    let whatsapp_config: whatsapp_cloud::Config = settings::parse(WHATSAPP).unwrap();
    let sms_config: sms_twilio::Config = settings::parse(SMS).unwrap();
    let web_config: web_chat::Config = settings::parse(WEB).unwrap();
    let open_config: open_messaging::Config = settings::parse(OPEN).unwrap();
    let voice_config: voice_ari::Config = toml::from_str(VOICE).unwrap();
    vec![
        Case {
            id: "whatsapp-cloud",
            settings: WHATSAPP,
            request: request(
                "https://switchboard.example.com/v1/inbound/whatsapp-cloud",
                "application/json",
                fixture("whatsapp", "text.json"),
                &[("x-hub-signature-256", SHA256_HEX)],
            ),
            native: Box::new(move |request| {
                whatsapp_cloud::decode(&whatsapp_config, request)
                    .unwrap()
                    .len()
            }),
        },
        Case {
            id: "sms-twilio",
            settings: SMS,
            request: request(
                "https://switchboard.example.com/v1/inbound/sms-twilio",
                "application/x-www-form-urlencoded",
                fixture("twilio", "inbound-sms.form"),
                &[("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")],
            ),
            native: Box::new(move |request| {
                sms_twilio::decode(&sms_config, request).unwrap().len()
            }),
        },
        Case {
            id: "web-chat",
            settings: WEB,
            request: request(
                "https://switchboard.example.com/v1/inbound/web-chat",
                "application/json",
                fixture("chatwoot", "message_created_incoming.json"),
                &[
                    (
                        "x-chatwoot-delivery",
                        "6f1c5a8e-2d4b-4c1a-9e7f-0b3d2a1c4e5f",
                    ),
                    ("x-chatwoot-timestamp", "1800000000"),
                    ("x-chatwoot-signature", SHA256_HEX),
                ],
            ),
            native: Box::new(move |request| web_chat::decode(&web_config, request).unwrap().len()),
        },
        Case {
            id: "open-messaging",
            settings: OPEN,
            request: request(
                "https://switchboard.example.com/v1/inbound/open-messaging",
                "application/json",
                fixture("genesys", "inbound-text.json"),
                &[("x-hub-signature-256", SHA256_HEX)],
            ),
            native: Box::new(move |request| {
                open_messaging::decode(&open_config, request).unwrap().len()
            }),
        },
        Case {
            id: "voice-ari",
            settings: VOICE,
            request: request(
                "ws://127.0.0.1:8088/ari/events?app=switchboard",
                "application/json",
                fixture("ari", "stasis-start.json"),
                &[],
            ),
            native: Box::new(move |request| {
                let inbound = voice_inbound(request);
                voice_ari::decode(&voice_config, &inbound).unwrap().len()
            }),
        },
    ]
}

/// voice-ari has bindings of its own (it exports `voice-controls`), so its request type is
/// its own too.
fn voice_inbound(request: &types::Inbound) -> voice_ari::switchboard::channel::types::Inbound {
    voice_ari::switchboard::channel::types::Inbound {
        method: request.method.clone(),
        url: request.url.clone(),
        headers: Vec::new(),
        content_type: request.content_type.clone(),
        body: request.body.clone(),
        received_at: request.received_at,
    }
}
