//! The command line's work, outside the daemon's flow: `plugins list`, `plugins inspect` and
//! `plugins decode` (the plugin author's everyday tools). Each returns the JSON to print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, PluginConfig};
use crate::engine::Millis;
use crate::plugin::{CallError, InboundRequest, PluginHost, PluginSettings};

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

fn host() -> Result<PluginHost, CliError> {
    PluginHost::new(CLI_MEMORY, None).map_err(|error| CliError::Failed(error.to_string()))
}

/// `plugins list`: the configured plugins, with what each says about itself.
pub fn list(config: &Config) -> Result<Value, CliError> {
    let host = host()?;
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
    let description = host()?
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

/// `plugins decode`: the canonical events, or the plugin's typed error.
pub fn decode(config: Option<&Config>, request: DecodeRequest) -> Result<Value, CliError> {
    let configured: Option<&PluginConfig> = config.and_then(|config| {
        config
            .plugins
            .iter()
            .find(|plugin| plugin.id == request.plugin)
    });
    let host = host()?;
    let (id, file, mut settings) = match configured {
        Some(plugin) => (
            plugin.id.clone(),
            plugin.file.clone(),
            plugin.settings.expose().to_owned(),
        ),
        None => {
            let file = PathBuf::from(&request.plugin);
            if !file.exists() {
                return Err(CliError::Usage(format!(
                    "{} is neither a configured plugin nor a file",
                    request.plugin
                )));
            }
            let description = host
                .inspect(&file)
                .map_err(|error| CliError::Failed(error.to_string()))?;
            (description.id, file, String::new())
        }
    };
    if let Some(path) = &request.plugin_config {
        settings = std::fs::read_to_string(path)
            .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?;
    }
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
    let received_at = Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as i64)
            .unwrap_or(0),
    );
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
        Err(CallError::Plugin { kind, detail, .. }) => Ok(json!({
            "plugin": id,
            "error": { "kind": kind, "detail": detail },
        })),
        Err(error) => Ok(json!({
            "plugin": id,
            "error": { "kind": error.code(), "detail": error.to_string() },
        })),
    }
}
