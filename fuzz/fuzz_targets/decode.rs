//! Fuzz target for the decode path: arbitrary bytes become a provider request (URL, headers,
//! body) and go through the real plugin host to every bundled plugin. Whatever the bytes, the
//! host must not panic and every answer must be events or a typed error — never a trap, a
//! timeout or an out-of-memory, which would mean a plugin fails on input it should refuse.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=300` (from `fuzz/`).

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard::engine::Millis;
use switchboard::plugin::{CallError, InboundRequest, Plugin, PluginHost, PluginSettings};

const PLUGINS: [(&str, &str); 5] = [
    ("web-chat", "base_url = \"https://chat.example.com\"\naccount_id = 1\n"),
    ("sms-twilio", "account_sid = \"AC0\"\nfrom = \"+15005550006\"\n"),
    ("whatsapp-cloud", "phone_number_id = \"1\"\n"),
    ("open-messaging", "integration_id = \"x\"\n"),
    ("voice-ari", "ari_url = \"http://127.0.0.1:8088/ari\"\napplication = \"switchboard\"\nagent_endpoints = { \"PJSIP/1001\" = \"a-1\" }\n"),
];

fn plugins() -> &'static Vec<Plugin> {
    static LOADED: OnceLock<Vec<Plugin>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let host = PluginHost::new(64 << 20, None).expect("host");
        PLUGINS
            .iter()
            .map(|(id, settings)| {
                host.load(PluginSettings {
                    id: (*id).to_owned(),
                    file: switchboard_tests::component(id),
                    memory_limit: 64 << 20,
                    time_limit: Duration::from_millis(500),
                    settings: (*settings).to_owned(),
                })
                .expect("bundled plugin loads")
            })
            .collect()
    })
}

/// Splits the input at NUL bytes: URL, then `name: value` header lines, then the body.
fn request(data: &[u8]) -> InboundRequest {
    let mut parts = data.splitn(3, |byte| *byte == 0);
    let url = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let headers: Vec<(String, String)> = String::from_utf8_lossy(parts.next().unwrap_or_default())
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let body = parts.next().unwrap_or(data).to_vec();
    let content_type = headers.iter().find(|(name, _)| name == "content-type").map(|(_, value)| value.clone());
    InboundRequest {
        method: "POST".to_owned(),
        url,
        headers,
        content_type,
        body,
        received_at: Millis(1_800_000_000_000),
    }
}

fuzz_target!(|data: &[u8]| {
    let request = request(data);
    for plugin in plugins() {
        match plugin.decode(&request) {
            Ok(_) | Err(CallError::Plugin { .. }) => {}
            Err(other) => panic!("{} failed on fuzz input instead of refusing it: {other}", plugin.id()),
        }
    }
});
