//! `switchboard plugins inspect`, `plugins decode` and `plugins encode` (the functions the binary runs) on every
//! bundled plugin and a documented sample of its provider: the plugin author's everyday tools.

use std::io::Write as _;
use std::path::PathBuf;

use switchboard::cli::{self, DecodeRequest};
use switchboard_tests::component;

fn fixture_path(provider: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(provider)
        .join(name)
}

fn settings_file(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "switchboard-cli-{}-{}.toml",
        std::process::id(),
        text.len()
    ));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

#[test]
fn inspect_describes_every_bundled_plugin() {
    for (id, channel, voice) in [
        ("web-chat", "web", false),
        ("sms-twilio", "sms", false),
        ("whatsapp-cloud", "whatsapp", false),
        ("open-messaging", "messaging", false),
        ("voice-ari", "voice", true),
    ] {
        let description = cli::inspect(&component(id)).unwrap();
        assert_eq!(description["id"], id);
        assert_eq!(description["channel"], channel);
        assert_eq!(description["api_version"], switchboard::plugin::API_VERSION);
        let capabilities = description["capabilities"].as_array().unwrap();
        assert_eq!(
            capabilities.iter().any(|c| c == "voice-controls"),
            voice,
            "{id}"
        );
    }
}

#[test]
fn decode_turns_each_documented_sample_into_canonical_events() {
    let cases = [
        (
            "web-chat",
            "base_url = \"https://chat.example.com\"\naccount_id = 1\n",
            "chatwoot",
            "message_created_incoming.json",
            "application/json",
            "message",
        ),
        (
            "sms-twilio",
            "account_sid = \"AC0\"\nfrom = \"+15005550006\"\n",
            "twilio",
            "inbound-sms.form",
            "application/x-www-form-urlencoded",
            "message",
        ),
        (
            "whatsapp-cloud",
            "phone_number_id = \"106540352242922\"\n",
            "whatsapp",
            "text.json",
            "application/json",
            "message",
        ),
        (
            "open-messaging",
            "integration_id = \"2b6f4a2e\"\n",
            "genesys",
            "inbound-text.json",
            "application/json",
            "message",
        ),
        (
            "voice-ari",
            "ari_url = \"http://127.0.0.1:8088/ari\"\napplication = \"switchboard\"\n",
            "ari",
            "stasis-start.json",
            "application/json",
            "started",
        ),
    ];
    for (id, settings, provider, sample, content_type, kind) in cases {
        let output = cli::decode(
            None,
            DecodeRequest {
                plugin: component(id).display().to_string(),
                body: fixture_path(provider, sample),
                headers: vec![format!("Content-Type: {content_type}")],
                url: None,
                content_type: None,
                plugin_config: Some(settings_file(settings)),
            },
        )
        .unwrap();
        assert_eq!(output["plugin"], id);
        let events = output["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: {output}"));
        assert_eq!(events.len(), 1, "{id}: {output}");
        assert_eq!(events[0]["type"], kind, "{id}: {output}");
        assert_eq!(events[0]["source"], id);
    }
}

#[test]
fn decode_prints_the_plugins_typed_error() {
    let output = cli::decode(
        None,
        DecodeRequest {
            plugin: component("whatsapp-cloud").display().to_string(),
            body: fixture_path("chatwoot", "message_created_incoming.json"),
            headers: Vec::new(),
            url: None,
            content_type: Some("application/json".to_owned()),
            plugin_config: Some(settings_file(
                "phone_number_id = \"1\"\napp_secret = \"s\"\n",
            )),
        },
    )
    .unwrap();
    assert_eq!(output["error"]["kind"], "unauthorized", "{output}");
}

#[test]
fn decode_of_something_that_is_not_a_plugin_is_a_usage_error() {
    let error = cli::decode(
        None,
        DecodeRequest {
            plugin: "no-such-plugin".to_owned(),
            body: fixture_path("ari", "hold.json"),
            headers: Vec::new(),
            url: None,
            content_type: None,
            plugin_config: None,
        },
    )
    .unwrap_err();
    assert!(matches!(error, cli::CliError::Usage(_)), "{error}");
}

/// `plugins encode` turns a notification into the provider's request without a daemon: the
/// shortcut for a supervisor's public message, the credential as its placeholder, and the
/// plugin's own refusal (WhatsApp's 24-hour window) as a typed error.
#[test]
fn encode_shows_the_provider_request_a_notification_becomes() {
    let settings = settings_file(
        "phone_number_id = \"106540352242922\"\napi_base_url = \"https://graph.example\"\n",
    );
    let request = |customer_last_message_at: Option<i64>| cli::EncodeRequest {
        plugin: component("whatsapp-cloud").display().to_string(),
        thread: "106540352242922/16505551234".to_owned(),
        customer: "16505551234".to_owned(),
        customer_last_message_at,
        notification: cli::notification_body(
            None,
            Some("Your refund left today".to_owned()),
            None,
            None,
            false,
        )
        .unwrap(),
        plugin_config: Some(settings.clone()),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let encoded = cli::encode(None, request(Some(now))).unwrap();
    let sent = &encoded["requests"][0];
    assert_eq!(sent["method"], "POST");
    assert_eq!(
        sent["url"],
        "https://graph.example/v21.0/106540352242922/messages"
    );
    assert!(
        sent["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|header| header[0] == "authorization"
                && header[1] == "Bearer {{secret:access_token}}"),
        "{encoded}"
    );
    assert!(
        sent["body"]
            .as_str()
            .unwrap()
            .contains("Your refund left today")
    );
    // Two days after the customer's last message: outside the window, refused.
    let refused = cli::encode(None, request(Some(now - 48 * 3600 * 1000))).unwrap();
    assert!(refused.get("error").is_some(), "{refused}");
    assert!(refused.get("requests").is_none());
    // Exactly one notification source is taken.
    assert!(cli::notification_body(None, None, None, None, false).is_err());
}

/// `plugins new` writes a crate an integrator can use as it is: its own tests pass natively,
/// it builds for `wasm32-wasip2` with the `plugin` profile, and the component it makes loads,
/// decodes the sample it ships and encodes a supervisor's message.
#[test]
fn a_new_plugin_tests_builds_and_runs_as_written() {
    let dir = switchboard_tests::temp_dir("scaffold");
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
    let made = cli::new_plugin("acme-chat", &dir, Some(&sdk.canonicalize().unwrap())).unwrap();
    let root = PathBuf::from(made["directory"].as_str().unwrap());
    // Kept between runs: the scaffold's dependencies compile once.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scaffold");
    let cargo = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    cargo(&["test", "--quiet"]);
    cargo(&[
        "build",
        "--quiet",
        "--profile",
        "plugin",
        "--target",
        "wasm32-wasip2",
    ]);
    let component = target.join("wasm32-wasip2/plugin/acme_chat.wasm");
    let description = cli::inspect(&component).unwrap();
    assert_eq!(description["id"], "acme-chat");
    let settings = settings_file("api_base_url = \"https://api.example.com\"\n");
    let decoded = cli::decode(
        None,
        DecodeRequest {
            plugin: component.display().to_string(),
            body: root.join("samples/message.json"),
            headers: vec!["Content-Type: application/json".to_owned()],
            url: None,
            content_type: None,
            plugin_config: Some(settings.clone()),
        },
    )
    .unwrap();
    assert_eq!(
        decoded["events"][0]["text"], "Hello, where is my order?",
        "{decoded}"
    );
    let encoded = cli::encode(
        None,
        cli::EncodeRequest {
            plugin: component.display().to_string(),
            thread: "chat-42".to_owned(),
            customer: "customer-7".to_owned(),
            customer_last_message_at: None,
            notification: cli::notification_body(None, Some("Hello".to_owned()), None, None, false)
                .unwrap(),
            plugin_config: Some(settings),
        },
    )
    .unwrap();
    assert_eq!(
        encoded["requests"][0]["url"],
        "https://api.example.com/messages"
    );
    // A name that is not a plugin id is refused, and nothing is overwritten.
    assert!(cli::new_plugin("Acme Chat", &dir, None).is_err());
    assert!(cli::new_plugin("acme-chat", &dir, None).is_err());
}

/// `plugins test DIR`: sample payloads and notifications through the real host, compared with
/// their expectations; a missing expectation is written, a changed output fails.
#[test]
fn plugin_test_cases_are_accepted_then_checked() {
    let dir = switchboard_tests::temp_dir("plugin-cases");
    std::fs::copy(fixture_path("whatsapp", "text.json"), dir.join("text.json")).unwrap();
    std::fs::write(dir.join("text.headers"), "Content-Type: application/json\n").unwrap();
    std::fs::write(
        dir.join("settings.toml"),
        "phone_number_id = \"106540352242922\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("reply.notification.json"),
        r#"{"thread": "106540352242922/16505551234", "customer": "16505551234",
            "customer_last_message_at": 1800000000000,
            "body": {"type": "message", "author": {"kind": "supervisor", "id": "sup-1"},
                     "text": "Hello", "visibility": "public"}}"#,
    )
    .unwrap();
    let plugin = component("whatsapp-cloud").display().to_string();
    let first = cli::test_plugin(None, &plugin, &dir, false).unwrap();
    assert_eq!(first.cases.len(), 2, "{first:?}");
    assert!(
        first
            .cases
            .iter()
            .all(|(_, outcome)| *outcome == cli::CaseOutcome::Accepted)
    );
    let events = std::fs::read_to_string(dir.join("text.events.json")).unwrap();
    assert!(events.contains("\"type\": \"message\""), "{events}");
    let requests = std::fs::read_to_string(dir.join("reply.requests.json")).unwrap();
    assert!(requests.contains("{{secret:access_token}}"), "{requests}");

    let second = cli::test_plugin(None, &plugin, &dir, false).unwrap();
    assert!(second.passed());
    assert!(
        second
            .cases
            .iter()
            .all(|(_, outcome)| *outcome == cli::CaseOutcome::Passed)
    );

    std::fs::write(
        dir.join("text.events.json"),
        events.replace("message", "typing"),
    )
    .unwrap();
    let third = cli::test_plugin(None, &plugin, &dir, false).unwrap();
    assert!(!third.passed());
    assert!(matches!(
        third
            .cases
            .iter()
            .find(|(case, _)| case == "text")
            .unwrap()
            .1,
        cli::CaseOutcome::Failed { .. }
    ));
    // --accept takes the new output as the expectation.
    assert!(
        cli::test_plugin(None, &plugin, &dir, true)
            .unwrap()
            .passed()
    );
    assert!(
        cli::test_plugin(None, &plugin, &dir, false)
            .unwrap()
            .passed()
    );
}
