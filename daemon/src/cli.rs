//! The command line's work, outside the daemon's flow: `plugins list`, `plugins inspect`,
//! `plugins decode` and `plugins encode` (the plugin author's everyday tools). Each returns
//! the JSON to print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, PluginConfig};
use crate::engine::{
    Audience, Author, Millis, Notification, NotificationBody, NotificationId, PluginId,
    SupervisionMode, Visibility,
};
use crate::plugin::{
    CallError, ChannelNotification, InboundRequest, Plugin, PluginHost, PluginSettings,
};

/// Why a command failed; `usage` errors exit 64, the others 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

/// Memory a plugin may use when run from the command line.
const CLI_MEMORY: usize = 64 << 20;

/// A plugin host with the daemon's compile cache when a configuration names the store
/// (`<store.path>/plugin-cache`): a plugin compiled once, by the daemon or a command, loads
/// from there instead of being compiled again.
/// Entries are written atomically (renamed into place), so a running daemon and a command may
/// share it; where the cache cannot be made (a read-only store), plugins are compiled.
fn host(config: Option<&Config>) -> Result<PluginHost, CliError> {
    let cache = config.map(|config| config.store.path.join("plugin-cache"));
    PluginHost::new(CLI_MEMORY, cache)
        .or_else(|_| PluginHost::new(CLI_MEMORY, None))
        .map_err(|error| CliError::Failed(error.to_string()))
}

/// `plugins list`: the configured plugins, with what each says about itself.
pub fn list(config: &Config) -> Result<Value, CliError> {
    let host = host(Some(config))?;
    let plugins: Vec<Value> = config
        .plugins
        .iter()
        .map(|plugin| {
            let mut entry = json!({
                "id": plugin.id,
                "file": plugin.file.display().to_string(),
                "default_queue": plugin.default_queue,
                "enabled": plugin.enabled,
                "memory_limit": plugin.memory_limit,
                "time_limit_ms": plugin.time_limit.as_millis() as u64,
                "public_url": plugin.public_url,
                "allow_unsigned": plugin.allow_unsigned,
                // Which secrets are set, never their values.
                "secrets": plugin.secrets.keys().collect::<Vec<_>>(),
            });
            match host.inspect(&plugin.file) {
                Ok(description) => entry["description"] = json!(description),
                Err(error) => entry["error"] = json!(error.to_string()),
            }
            entry
        })
        .collect();
    Ok(json!({ "plugins": plugins }))
}

/// `plugins inspect FILE`: API version, channel kind, capabilities.
pub fn inspect(file: &Path) -> Result<Value, CliError> {
    let description = host(None)?
        .inspect(file)
        .map_err(|error| CliError::Failed(error.to_string()))?;
    Ok(json!(description))
}

/// What `plugins decode` runs.
#[derive(Debug)]
pub struct DecodeRequest {
    /// A configured plugin id or a `.wasm` file.
    pub plugin: String,
    pub body: PathBuf,
    /// `Name: value` pairs.
    pub headers: Vec<String>,
    pub url: Option<String>,
    pub content_type: Option<String>,
    /// TOML settings for the plugin (instead of its `[plugins.<id>.config]`).
    pub plugin_config: Option<PathBuf>,
}

/// A configured plugin (by id) or a `.wasm` file, loaded with its configured settings or
/// those of `plugin_config`.
fn load_plugin(
    config: Option<&Config>,
    plugin: &str,
    plugin_config: Option<&Path>,
) -> Result<(String, Plugin), CliError> {
    let configured: Option<&PluginConfig> = config.and_then(|config| {
        config
            .plugins
            .iter()
            .find(|configured| configured.id == plugin)
    });
    let host = host(config)?;
    let (id, file, mut settings) = match configured {
        Some(plugin) => (
            plugin.id.clone(),
            plugin.file.clone(),
            plugin.settings.expose().to_owned(),
        ),
        None => {
            let file = PathBuf::from(plugin);
            if !file.exists() {
                return Err(CliError::Usage(format!(
                    "{plugin} is neither a configured plugin nor a file"
                )));
            }
            let description = host
                .inspect(&file)
                .map_err(|error| CliError::Failed(error.to_string()))?;
            (description.id, file, String::new())
        }
    };
    if let Some(path) = plugin_config {
        settings = std::fs::read_to_string(path)
            .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?;
    }
    let plugin = host
        .load(PluginSettings {
            id: id.clone(),
            file,
            memory_limit: configured.map_or(CLI_MEMORY, |plugin| plugin.memory_limit as usize),
            time_limit: configured.map_or(Duration::from_millis(100), |plugin| plugin.time_limit),
            settings,
            secrets: Default::default(),
            public_url: None,
        })
        .map_err(|error| CliError::Failed(error.to_string()))?;
    Ok((id, plugin))
}

fn now() -> Millis {
    Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as i64)
            .unwrap_or(0),
    )
}

/// `plugins decode`: the canonical events, or the plugin's typed error.
pub fn decode(config: Option<&Config>, request: DecodeRequest) -> Result<Value, CliError> {
    let (id, plugin) = load_plugin(config, &request.plugin, request.plugin_config.as_deref())?;
    let body = std::fs::read(&request.body).map_err(|error| {
        CliError::Usage(format!("cannot read {}: {error}", request.body.display()))
    })?;
    let mut headers = Vec::new();
    for header in &request.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("--header {header:?} is not `Name: value`")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let content_type = request.content_type.or_else(|| {
        headers
            .iter()
            .find(|(name, _)| name == "content-type")
            .map(|(_, value)| value.clone())
    });
    let received_at = now();
    let inbound = InboundRequest {
        method: "POST".to_owned(),
        url: request
            .url
            .unwrap_or_else(|| format!("http://localhost/v1/inbound/{id}")),
        headers,
        content_type,
        body,
        received_at,
    };
    match plugin.decode(&inbound) {
        Ok(events) => Ok(json!({ "plugin": id, "events": events })),
        Err(error) => Ok(plugin_error(&id, error)),
    }
}

fn plugin_error(id: &str, error: CallError) -> Value {
    match error {
        CallError::Plugin { kind, detail, .. } => json!({
            "plugin": id,
            "error": { "kind": kind, "detail": detail },
        }),
        error => json!({
            "plugin": id,
            "error": { "kind": error.code(), "detail": error.to_string() },
        }),
    }
}

/// What `plugins encode` runs: a notification for a conversation's customer.
#[derive(Debug)]
pub struct EncodeRequest {
    /// A configured plugin id or a `.wasm` file.
    pub plugin: String,
    /// The plugin's thread key, as its events name it.
    pub thread: String,
    /// The customer's provider id.
    pub customer: String,
    /// When the customer last wrote, in milliseconds since the Unix epoch (service windows).
    pub customer_last_message_at: Option<i64>,
    pub notification: NotificationBody,
    pub plugin_config: Option<PathBuf>,
}

/// A notification body from the shortcuts, or a JSON file: the body as the outbox's
/// CloudEvents carry it (`{"type": "message", "author": {"kind": "supervisor", "id": "sup-1"},
/// "text": "…", "visibility": "public"}`).
pub fn notification_body(
    file: Option<&Path>,
    message: Option<String>,
    joined: Option<String>,
    closed: Option<String>,
    end_session: bool,
) -> Result<NotificationBody, CliError> {
    let supervisor = || crate::engine::UserId::from("sup-cli");
    let chosen = [
        file.is_some(),
        message.is_some(),
        joined.is_some(),
        closed.is_some(),
        end_session,
    ]
    .iter()
    .filter(|given| **given)
    .count();
    if chosen != 1 {
        return Err(CliError::Usage(
            "give one of --notification FILE.json, --message TEXT, --joined MODE, --closed REASON, --end-session".to_owned(),
        ));
    }
    if let Some(file) = file {
        let text = std::fs::read(file)
            .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", file.display())))?;
        return serde_json::from_slice(&text).map_err(|error| {
            CliError::Usage(format!(
                "{} is not a notification body: {error}",
                file.display()
            ))
        });
    }
    if let Some(text) = message {
        return Ok(NotificationBody::Message {
            author: Author::Supervisor(supervisor()),
            text: text.into(),
            visibility: Visibility::Public,
        });
    }
    if let Some(mode) = joined {
        let mode = match mode.as_str() {
            "internal" | "consult-internal" => SupervisionMode::ConsultInternal,
            "public" | "consult-public" => SupervisionMode::ConsultPublic,
            "barge" => SupervisionMode::Barge,
            other => {
                return Err(CliError::Usage(format!(
                    "--joined is internal, public or barge, not {other:?}"
                )));
            }
        };
        return Ok(NotificationBody::SupervisorJoined {
            supervisor: supervisor(),
            mode,
        });
    }
    if let Some(reason) = closed {
        return Ok(NotificationBody::ClosedBySupervisor {
            supervisor: supervisor(),
            reason: (!reason.is_empty()).then(|| reason.into_boxed_str()),
        });
    }
    Ok(NotificationBody::EndSession)
}

/// `plugins encode`: the provider requests a notification becomes (credentials as the
/// placeholders the delivery worker fills), or the plugin's typed error. No daemon, no API.
pub fn encode(config: Option<&Config>, request: EncodeRequest) -> Result<Value, CliError> {
    let (id, plugin) = load_plugin(config, &request.plugin, request.plugin_config.as_deref())?;
    let notification = ChannelNotification {
        notification: Notification {
            id: NotificationId::default(),
            conversation: None,
            audience: Audience::Channel {
                plugin: PluginId::new(id.as_str()),
                thread: request.thread.clone().into_boxed_str(),
                customer: request.customer.clone().into_boxed_str(),
            },
            body: request.notification,
        },
        thread: request.thread,
        customer: request.customer,
        customer_last_message_at: request.customer_last_message_at.map(Millis),
        now: now(),
    };
    match plugin.encode(&notification) {
        Ok(requests) => Ok(json!({
            "plugin": id,
            "requests": requests
                .iter()
                .map(|request| {
                    let mut entry = json!({
                        "method": request.method,
                        "url": request.url,
                        "headers": request.headers,
                    });
                    match std::str::from_utf8(&request.body) {
                        Ok(text) => entry["body"] = json!(text),
                        Err(_) => entry["body_bytes"] = json!(request.body),
                    }
                    entry
                })
                .collect::<Vec<_>>(),
        })),
        Err(error) => Ok(plugin_error(&id, error)),
    }
}

/// `plugins new NAME`: a plugin crate of its own, ready to build for `wasm32-wasip2` (the
/// `plugin` profile and the rustflags the bundled plugins use) and to test natively, with a
/// sample payload and tests that use it. `sdk` is the SDK's directory (by default the one this
/// binary was built from) or `None` for a git dependency on the project's repository.
pub fn new_plugin(name: &str, dir: &Path, sdk: Option<&Path>) -> Result<Value, CliError> {
    let valid = !name.is_empty()
        && name.starts_with(|first: char| first.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(CliError::Usage(format!(
            "{name:?} is not a plugin id: lowercase letters, digits and `-`, starting with a letter"
        )));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(CliError::Usage(format!(
            "{} exists already",
            root.display()
        )));
    }
    let dependency = match sdk {
        Some(path) => format!("{{ path = {:?} }}", path.display().to_string()),
        None => "{ git = \"https://github.com/switchboard-dev/switchboard\" }".to_owned(),
    };
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        (
            "Cargo.toml",
            SCAFFOLD_MANIFEST
                .replace("{name}", name)
                .replace("{sdk}", &dependency),
        ),
        (".cargo/config.toml", SCAFFOLD_CARGO_CONFIG.to_owned()),
        (
            "src/lib.rs",
            SCAFFOLD_LIB
                .replace("{name}", name)
                .replace("{Type}", &type_name)
                .replace("{crate}", &name.replace('-', "_")),
        ),
        ("samples/message.json", SCAFFOLD_SAMPLE.to_owned()),
        (
            "README.md",
            SCAFFOLD_README
                .replace("{name}", name)
                .replace("{crate}", &name.replace('-', "_"))
                .replace("{ENV}", &name.replace('-', "_").to_ascii_uppercase()),
        ),
    ];
    for (file, text) in &files {
        let path = root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| {
                CliError::Failed(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        std::fs::write(&path, text).map_err(|error| {
            CliError::Failed(format!("cannot write {}: {error}", path.display()))
        })?;
    }
    Ok(json!({
        "plugin": name,
        "directory": root.display().to_string(),
        "files": files.iter().map(|(file, _)| *file).collect::<Vec<_>>(),
        "build": "cargo build --profile plugin --target wasm32-wasip2",
        "component": format!("target/wasm32-wasip2/plugin/{}.wasm", name.replace('-', "_")),
    }))
}

const SCAFFOLD_MANIFEST: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the WebAssembly component; rlib: the native tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
switchboard-plugin-sdk = {sdk}
serde = { version = "1", features = ["derive"] }
serde_json = "1"

# A workspace of its own: built on its own, not as a member of another.
[workspace]

# `cargo build --profile plugin --target wasm32-wasip2`: small, fast components.
[profile.plugin]
inherits = "release"
lto = true
codegen-units = 1
debug = false
strip = true
"#;

const SCAFFOLD_CARGO_CONFIG: &str = r#"# A larger LLVM inlining budget for wasm: serde_json's small helpers stay inlined, and
# decodes through the host run 10-14 % faster (measured on Switchboard's bundled plugins).
[target.wasm32-wasip2]
rustflags = ["-C", "llvm-args=-inline-threshold=1000"]
"#;

const SCAFFOLD_SAMPLE: &str = r#"{"chat_id": "chat-42", "message_id": "m-1001", "from": {"id": "customer-7", "name": "Ada"}, "text": "Hello, where is my order?"}
"#;

const SCAFFOLD_LIB: &str = r#"//! The `{name}` channel plugin: the provider's webhooks -> Switchboard's canonical events,
//! and supervisor notifications -> the provider's API. Edit the payload types and the two
//! mappings below for your provider; `samples/` holds payloads the tests decode.

use serde::Deserialize;
use switchboard_plugin_sdk::settings::{self, Settings};
use switchboard_plugin_sdk::types::*;
use switchboard_plugin_sdk::{Plugin, Webhook, customer_text, header, header_pair, json_body, secret, signature};

/// `[plugins.{name}.config]`. Credentials for outbound requests do not belong here: the
/// daemon fills `{{secret:api_token}}` from `[plugins.{name}.secrets]` at send time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The provider's API root, e.g. `https://api.example.com` (the daemon may reach this
    /// host only).
    pub api_base_url: String,
    /// The shared token the provider sends in `X-Webhook-Token`; unset: unsigned (the webhook
    /// door then refuses the plugin's webhooks unless allowed).
    #[serde(default)]
    pub webhook_token: Option<String>,
}

static CONFIG: Settings<Config> = Settings::new();

/// The header carrying the provider's shared token.
const TOKEN_HEADER: &str = "x-webhook-token";

#[derive(Debug)]
pub struct {Type};

impl Plugin for {Type} {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "{name}".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            channel: ChannelKind::Messaging,
            description: "{name}: webhooks in, messages out".to_owned(),
        }
    }

    fn configure(settings: String) -> Result<(), PluginError> {
        CONFIG.set(settings::parse(&settings)?);
        Ok(())
    }

    fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> {
        decode(CONFIG.get()?, &request)
    }

    fn encode(notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        encode(CONFIG.get()?, &notification)
    }
}

impl Webhook for {Type} {
    fn signed() -> bool {
        CONFIG.get().is_ok_and(|config| config.webhook_token.is_some())
    }
}

switchboard_plugin_sdk::export_plugin!({Type}, headers: [TOKEN_HEADER], webhook);

#[derive(Deserialize)]
struct Payload {
    chat_id: String,
    message_id: String,
    from: Contact,
    text: String,
}

#[derive(Deserialize)]
struct Contact {
    id: String,
    name: Option<String>,
}

/// One webhook -> events: a customer's message (which opens the conversation).
pub fn decode(config: &Config, request: &Inbound) -> Result<Vec<Event>, PluginError> {
    if let Some(expected) = &config.webhook_token {
        let provided = header(request, TOKEN_HEADER).unwrap_or_default();
        if !signature::verify_token(expected, provided) {
            return Err(PluginError::Unauthorized(
                "X-Webhook-Token is missing or wrong".to_owned(),
            ));
        }
    }
    let payload: Payload = json_body(request)?;
    Ok(vec![Event {
        id: Some(payload.message_id),
        body: EventBody::Message(Message {
            thread: payload.chat_id,
            sender: Sender::Customer,
            text: payload.text,
            visibility: Visibility::Public,
            sentiment: None,
            customer: Some(Customer {
                id: payload.from.id,
                name: payload.from.name,
            }),
            reply_to: None,
        }),
    }])
}

/// One notification -> the provider's "send a message" request (nothing for notices the
/// customer does not read).
pub fn encode(config: &Config, notification: &Notification) -> Result<Vec<OutboundRequest>, PluginError> {
    let Some(text) = customer_text(
        &notification.body,
        "A supervisor has joined this conversation.",
        "This conversation has been closed.",
    ) else {
        return Ok(Vec::new());
    };
    let body = serde_json::json!({ "chat_id": notification.thread, "text": text });
    Ok(vec![OutboundRequest {
        method: "POST".to_owned(),
        url: format!("{}/messages", config.api_base_url.trim_end_matches('/')),
        headers: vec![
            header_pair("content-type", "application/json"),
            header_pair("authorization", format!("Bearer {}", secret("api_token"))),
            // The provider's idempotency key, where it takes one: retries are applied once.
            header_pair("idempotency-key", notification.id.clone()),
        ],
        body: serde_json::to_vec(&body).map_err(|error| PluginError::InvalidPayload(error.to_string()))?,
    }])
}

#[cfg(test)]
mod tests {
    use switchboard_plugin_sdk::testing::{notification, request};

    use super::*;

    fn config(token: Option<&str>) -> Config {
        Config {
            api_base_url: "https://api.example.com".to_owned(),
            webhook_token: token.map(str::to_owned),
        }
    }

    fn sample() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/samples/message.json")).unwrap()
    }

    #[test]
    fn a_message_opens_a_conversation() {
        let events = decode(&config(None), &request(sample()).build()).unwrap();
        assert_eq!(events.len(), 1);
        let EventBody::Message(message) = &events[0].body else {
            panic!("a message")
        };
        assert_eq!(message.thread, "chat-42");
        assert_eq!(message.customer.as_ref().unwrap().id, "customer-7");
    }

    #[test]
    fn the_shared_token_is_checked_when_configured() {
        let signed = config(Some("t0ken"));
        assert!(matches!(
            decode(&signed, &request(sample()).build()),
            Err(PluginError::Unauthorized(_))
        ));
        assert!(decode(&signed, &request(sample()).header(TOKEN_HEADER, "t0ken").build()).is_ok());
    }

    #[test]
    fn a_supervisor_message_becomes_a_send_request_with_a_placeholder() {
        let requests = encode(
            &config(None),
            &notification("chat-42", "customer-7").message("sup-1", "Hello").build(),
        )
        .unwrap();
        assert_eq!(requests[0].url, "https://api.example.com/messages");
        assert!(requests[0].headers.iter().any(|header| header.value == "Bearer {{secret:api_token}}"));
    }
}
"#;

const SCAFFOLD_README: &str = r#"# {name}

A Switchboard channel plugin (made by `switchboard plugins new {name}`).

```sh
rustup target add wasm32-wasip2                         # once
cargo test                                              # the mappings, natively
cargo build --profile plugin --target wasm32-wasip2     # -> target/wasm32-wasip2/plugin/{crate}.wasm
switchboard plugins inspect target/wasm32-wasip2/plugin/{crate}.wasm
echo 'api_base_url = "https://api.example.com"' > settings.toml
switchboard plugins decode target/wasm32-wasip2/plugin/{crate}.wasm --body samples/message.json \
    --header 'Content-Type: application/json' --plugin-config settings.toml
switchboard plugins encode target/wasm32-wasip2/plugin/{crate}.wasm --thread chat-42 \
    --customer customer-7 --message 'Hello' --plugin-config settings.toml
```

Then in the daemon's configuration:

```toml
[plugins.{name}]
file = "/path/to/{crate}.wasm"
default_queue = "support-chat"
secrets = { api_token = { env = "{ENV}_API_TOKEN" } }
[plugins.{name}.config]
api_base_url = "https://api.example.com"
webhook_token = { env = "{ENV}_WEBHOOK_TOKEN" }
```

The provider posts to the webhook door at `/webhooks/{name}`. The Switchboard SDK's README
(`plugin-sdk/README.md`) covers the rules a plugin lives by, the door's answers, and secrets.
"#;

/// What `plugins test` found: each case's name and whether its output matched.
#[derive(Debug)]
pub struct TestReport {
    pub cases: Vec<(String, CaseOutcome)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CaseOutcome {
    Passed,
    /// The output differs from the expectation (both as pretty JSON).
    Failed {
        expected: String,
        actual: String,
    },
    /// `--accept` (or no expectation yet) wrote the output as the expectation.
    Accepted,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.cases
            .iter()
            .all(|(_, outcome)| !matches!(outcome, CaseOutcome::Failed { .. }))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "cases": self.cases.iter().map(|(name, outcome)| match outcome {
                CaseOutcome::Passed => json!({ "case": name, "outcome": "passed" }),
                CaseOutcome::Accepted => json!({ "case": name, "outcome": "accepted" }),
                CaseOutcome::Failed { expected, actual } => json!({
                    "case": name, "outcome": "failed", "expected": expected, "actual": actual,
                }),
            }).collect::<Vec<_>>(),
        })
    }
}

/// `plugins test DIR`: every case of `DIR` through the real host. A decode case is a payload
/// `NAME.json` (or `.form`, `.xml`, `.txt`) with optional `NAME.headers` (`Name: value` lines,
/// `Content-Type` among them) and its expectation `NAME.events.json`; an encode case is
/// `NAME.notification.json` (`{"thread", "customer", "customer_last_message_at"?, "body"}`, the
/// body as `--notification` takes it) and its expectation `NAME.requests.json`. Settings come
/// from `DIR/settings.toml` when present. A case without an expectation, or every case with
/// `accept`, has its output written as the expectation.
pub fn test_plugin(
    config: Option<&Config>,
    plugin: &str,
    dir: &Path,
    accept: bool,
) -> Result<TestReport, CliError> {
    let read_dir = std::fs::read_dir(dir)
        .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", dir.display())))?;
    let mut names: Vec<String> = read_dir
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    let settings = dir.join("settings.toml");
    let plugin_config = settings.exists().then_some(settings);
    let mut cases = Vec::new();
    for name in &names {
        let (case, actual, expectation) = if let Some(case) =
            name.strip_suffix(".notification.json")
        {
            let text = std::fs::read(dir.join(name))
                .map_err(|error| CliError::Usage(format!("cannot read {name}: {error}")))?;
            let notification: Value = serde_json::from_slice(&text)
                .map_err(|error| CliError::Usage(format!("{name}: {error}")))?;
            let field = |key: &str| notification[key].as_str().unwrap_or_default().to_owned();
            let body: NotificationBody = serde_json::from_value(notification["body"].clone())
                .map_err(|error| CliError::Usage(format!("{name}: body: {error}")))?;
            let encoded = encode(
                config,
                EncodeRequest {
                    plugin: plugin.to_owned(),
                    thread: field("thread"),
                    customer: field("customer"),
                    customer_last_message_at: notification["customer_last_message_at"].as_i64(),
                    notification: body,
                    plugin_config: plugin_config.clone(),
                },
            )?;
            (case.to_owned(), encoded, format!("{case}.requests.json"))
        } else if let Some((case, extension)) = name.rsplit_once('.')
            && ["json", "form", "xml", "txt"].contains(&extension)
            && !name.ends_with(".events.json")
            && !name.ends_with(".requests.json")
        {
            let headers = std::fs::read_to_string(dir.join(format!("{case}.headers")))
                .map(|text| {
                    text.lines()
                        .filter(|line| !line.trim().is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let decoded = decode(
                config,
                DecodeRequest {
                    plugin: plugin.to_owned(),
                    body: dir.join(name),
                    headers,
                    url: None,
                    content_type: None,
                    plugin_config: plugin_config.clone(),
                },
            )?;
            (case.to_owned(), decoded, format!("{case}.events.json"))
        } else {
            continue;
        };
        // The plugin's name is the runner's business, not the case's.
        let mut actual = actual;
        if let Some(object) = actual.as_object_mut() {
            object.remove("plugin");
        }
        let actual_text = serde_json::to_string_pretty(&actual).unwrap_or_default() + "\n";
        let path = dir.join(&expectation);
        let expected = std::fs::read_to_string(&path).ok();
        let outcome = match expected {
            Some(expected) if !accept => {
                let same = serde_json::from_str::<Value>(&expected).ok() == Some(actual);
                if same {
                    CaseOutcome::Passed
                } else {
                    CaseOutcome::Failed {
                        expected,
                        actual: actual_text,
                    }
                }
            }
            _ => {
                std::fs::write(&path, &actual_text).map_err(|error| {
                    CliError::Failed(format!("cannot write {}: {error}", path.display()))
                })?;
                CaseOutcome::Accepted
            }
        };
        cases.push((case, outcome));
    }
    if cases.is_empty() {
        return Err(CliError::Usage(format!(
            "{} holds no case (NAME.json payloads, NAME.notification.json notifications)",
            dir.display()
        )));
    }
    Ok(TestReport { cases })
}
