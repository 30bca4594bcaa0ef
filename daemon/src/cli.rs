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
