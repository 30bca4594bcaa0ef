//! Configuration, the first step of every command: the TOML file plus
//! `SWITCHBOARD_<SECTION>__<KEY>` environment overrides -> raw sections ([`raw`]) -> checked,
//! typed [`Config`]. Every problem is reported at once with file, line and column; the CLI
//! exits 64 on any. The only module that imports `toml`.

mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::engine::{Agent, ChannelPolicy, PerChannel, PluginPolicy, Queue, Setup, Team};

/// The default configuration file, relative to the working directory.
pub const DEFAULT_FILE: &str = "config/switchboard.toml";
/// Prefix of environment overrides: `SWITCHBOARD_AMQP__URL` sets `[amqp] url`.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// `None`: the embedded transport.
    pub amqp: Option<AmqpConfig>,
    /// `None`: one daemon on its embedded store.
    pub cluster: Option<ClusterConfig>,
    pub auth: AuthConfig,
    pub engine: EngineConfig,
    pub delivery: DeliveryConfig,
    pub console: ConsoleConfig,
    pub policies: PerChannel<ChannelPolicy>,
    pub teams: Vec<Team>,
    pub queues: Vec<Queue>,
    pub agents: Vec<Agent>,
    pub supervisors: Vec<SupervisorConfig>,
    pub plugins: Vec<PluginConfig>,
    /// Every file the configuration names (plugins, key files), for [`Config::check_files`].
    pub files: Vec<NamedFile>,
}

/// A file the configuration names: the key that names it, where, and the path it resolves to.
#[derive(Clone, Debug)]
pub struct NamedFile {
    pub key: String,
    pub location: Location,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub rate_limit: u32,
    /// Requests per second per client address without a valid token.
    pub unauthenticated_rate_limit: u32,
    /// Take the client address from `X-Forwarded-For` (a trusted proxy sets it), and the
    /// door's request URL from `X-Forwarded-Proto` / `X-Forwarded-Host`.
    pub trust_forwarded: bool,
    /// The webhook door's address; `None`: no door.
    pub webhook_listen: Option<SocketAddr>,
    /// Webhooks per second per client address on the door.
    pub webhook_rate_limit: u32,
    /// Webhooks per second per plugin on the door.
    pub webhook_plugin_rate_limit: u32,
    /// Logs may carry conversation content.
    pub log_content: bool,
    /// Origins allowed to call the API from a browser (CORS).
    pub cors_origins: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
}

/// `[cluster]` with `store.postgres_url` (README, "Run several daemons").
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: String,
    pub partitions: u32,
    pub lease: Duration,
    pub postgres_url: Secret,
    pub postgres_schema: String,
}

#[derive(Clone, Debug)]
pub struct AmqpConfig {
    pub url: Secret,
    pub inbound_exchange: String,
    pub inbound_queue: String,
    pub dead_letter_queue: String,
    pub outbound_exchange: String,
    pub delivery_queue: String,
    pub prefetch: u16,
    pub delivery_limit: u32,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub hs256_secret: Option<Secret>,
    pub rs256_public_key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub dedup_window: usize,
    pub closed_retention: Duration,
    pub idempotency_ttl: Duration,
    pub report_window: Duration,
    pub monitor_lease: Duration,
}

/// `[console]`: the supervisor console.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub oidc_issuer: Option<String>,
    pub client_id: String,
    pub scope: String,
    pub attention_wait: Duration,
    pub attention_sentiment: f32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            oidc_issuer: None,
            client_id: "switchboard-console".to_owned(),
            scope: "openid profile".to_owned(),
            attention_wait: Duration::from_secs(120),
            attention_sentiment: -0.3,
        }
    }
}

/// `[delivery]`: the delivery worker.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub enabled: bool,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    pub prefetch: u32,
}

#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub id: String,
    pub name: String,
    pub teams: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct PluginConfig {
    pub id: String,
    /// Resolved against the config file's directory.
    pub file: PathBuf,
    pub default_queue: crate::engine::QueueId,
    pub enabled: bool,
    pub memory_limit: u64,
    pub time_limit: Duration,
    /// The URL the provider was given (what its signatures cover).
    pub public_url: Option<String>,
    /// Whether the door takes its webhooks without a signature secret.
    pub allow_unsigned: bool,
    /// Hosts (`name` or `name:port`) the plugin's requests may reach: configured, or the
    /// hosts of its URL settings.
    pub allowed_hosts: Vec<String>,
    /// Whether `allowed_hosts` was configured (only then may it name special addresses).
    pub allowed_hosts_listed: bool,
    /// `[plugins.<id>.secrets]`: named credentials the delivery worker fills in at send time.
    pub secrets: std::collections::BTreeMap<String, Secret>,
    /// The plugin's own `[plugins.<id>.config]` table, as TOML text for the plugin.
    pub settings: Secret,
    /// Requests per second the delivery worker sends for it at most.
    pub rate_limit: Option<u32>,
    /// OAuth client credentials for the delivery worker's `{{oauth:NAME}}` placeholders.
    pub oauth: Option<OAuthConfig>,
    /// Its settings name an Asterisk ARI (`ari_url` and `application`, as the voice-ari
    /// plugin's do): the daemon holds that application's events WebSocket.
    pub ari_events: Option<AriEvents>,
}

/// `[plugins.<id>.oauth]`: where the delivery worker gets the plugin's API tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthConfig {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
}

/// Where a plugin's ARI events come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AriEvents {
    /// The ARI base URL, e.g. `http://127.0.0.1:8088/ari`.
    pub url: String,
    /// The Stasis application.
    pub application: String,
    /// The ARI user; its password is the plugin's secret `ari_password`.
    pub user: Option<String>,
}

/// A value that must never reach a log: `Debug` and `Display` print `***` in its stead (a
/// redaction, by design: the value is read only through `expose`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Config {
    /// The engine's setup: the roster and policies from this file, the plugins as the
    /// plugin host describes them (their channel kind and capabilities come from the plugin).
    pub fn engine_setup(&self, plugins: Vec<PluginPolicy>) -> Setup {
        Setup {
            teams: self.teams.clone(),
            queues: self.queues.clone(),
            agents: self.agents.clone(),
            plugins,
            policies: self.policies.clone(),
            dedup_window: self.engine.dedup_window,
            closed_retention: millis(self.engine.closed_retention),
            idempotency_ttl: millis(self.engine.idempotency_ttl),
            partitioning: None,
        }
    }
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Where a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A position in the file (1-based).
    File { line: usize, column: usize },
    /// An environment override.
    Env { variable: String },
    /// The file as a whole (a missing section or key).
    Whole,
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.location {
            Location::File { line, column } => {
                write!(f, "{file}:{line}:{column}: {}", self.message)
            }
            Location::Env { variable } => {
                write!(
                    f,
                    "{file}: environment variable {variable}: {}",
                    self.message
                )
            }
            Location::Whole => write!(f, "{file}: {}", self.message),
        }
    }
}

/// Every problem found, in file order.
#[derive(Clone, Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Checks that every file the configuration names can be read (`check-config` and
    /// `serve` do, before anything else; a plugin that is not `enabled` is not checked).
    /// Problems name the key and the path as resolved against the config file's folder.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut problems: Vec<Problem> = self
            .files
            .iter()
            .filter_map(|named| {
                let reason = match std::fs::metadata(&named.path) {
                    Ok(metadata) if metadata.is_file() => return None,
                    Ok(_) => "is not a file".to_owned(),
                    Err(error) => format!("cannot be read ({error})"),
                };
                let resolved = resolved(&named.path);
                Some(Problem {
                    file: self.file.clone(),
                    location: named.location.clone(),
                    message: format!("`{}`: {} {reason}", named.key, resolved.display()),
                })
            })
            .collect();
        // In file order, as every other problem.
        problems.sort_by_key(|problem| match &problem.location {
            Location::File { line, column } => (0, *line, *column),
            Location::Env { .. } => (1, 0, 0),
            Location::Whole => (2, 0, 0),
        });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// `path` made absolute, with `.` and `..` taken out, as a reader looks for it.
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut clean = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// Loads `file` with the process environment's overrides.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__"))
        .collect();
    load_with_env(file, &env)
}

/// Loads `file` with the given overrides (tests pass their own).
pub fn load_with_env(file: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|error| ConfigError {
        problems: vec![Problem {
            file: file.to_path_buf(),
            location: Location::Whole,
            message: format!("cannot read the configuration file: {error}"),
        }],
    })?;
    parse(file, &text, env)
}

/// Parses configuration text; `file` names it in problems and anchors relative paths.
pub fn parse(file: &Path, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut sink = Problems::new(file, text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for error in syntax {
            sink.at(error.span(), error.message().to_owned());
        }
        return Err(sink.finish());
    }
    let mut root = root.into_inner();
    sink.apply_env(&mut root, env);
    sink.resolve_secrets(&mut root, &mut Vec::new());
    let sections = Sections::read(&mut sink, root);
    match validate::validate(&mut sink, sections) {
        Some(config) if sink.problems.is_empty() => Ok(config),
        _ => Err(sink.finish()),
    }
}

/// The sections as deserialized; a section that failed to deserialize is absent and its
/// problem is already recorded.
#[derive(Debug, Default)]
struct Sections {
    server: raw::Server,
    store: raw::Store,
    amqp: raw::Amqp,
    cluster: raw::Cluster,
    auth: raw::Auth,
    engine: raw::Engine,
    delivery: raw::Delivery,
    console: raw::Console,
    policies: Vec<(Spanned<String>, raw::Policy)>,
    teams: Vec<raw::Team>,
    queues: Vec<raw::Queue>,
    agents: Vec<raw::Agent>,
    supervisors: Vec<raw::Supervisor>,
    plugins: Vec<(Spanned<String>, raw::Plugin)>,
}

const SECTIONS: &[&str] = &[
    "server",
    "store",
    "amqp",
    "cluster",
    "auth",
    "engine",
    "delivery",
    "console",
    "policy",
    "teams",
    "queues",
    "agents",
    "supervisors",
    "plugins",
];

impl Sections {
    fn read(sink: &mut Problems<'_>, root: DeTable<'_>) -> Self {
        let mut sections = Self::default();
        for (key, value) in root {
            let name = key.get_ref().as_ref();
            match name {
                "server" => sections.server = sink.section(value, "server").unwrap_or_default(),
                "store" => sections.store = sink.section(value, "store").unwrap_or_default(),
                "amqp" => sections.amqp = sink.section(value, "amqp").unwrap_or_default(),
                "cluster" => {
                    sections.cluster = sink.section(value, "cluster").unwrap_or_default();
                }
                "auth" => sections.auth = sink.section(value, "auth").unwrap_or_default(),
                "engine" => sections.engine = sink.section(value, "engine").unwrap_or_default(),
                "delivery" => {
                    sections.delivery = sink.section(value, "delivery").unwrap_or_default();
                }
                "console" => {
                    sections.console = sink.section(value, "console").unwrap_or_default();
                }
                "teams" => sections.teams = sink.section(value, "teams").unwrap_or_default(),
                "queues" => sections.queues = sink.section(value, "queues").unwrap_or_default(),
                "agents" => sections.agents = sink.section(value, "agents").unwrap_or_default(),
                "supervisors" => {
                    sections.supervisors = sink.section(value, "supervisors").unwrap_or_default();
                }
                "policy" => {
                    for (channel, table) in sink.table_entries(value, "policy") {
                        let path = format!("policy.{}", channel.get_ref());
                        if let Some(policy) = sink.section(table, &path) {
                            sections.policies.push((channel, policy));
                        }
                    }
                }
                "plugins" => {
                    for (id, table) in sink.table_entries(value, "plugins") {
                        let path = format!("plugins.{}", id.get_ref());
                        if let Some(plugin) = sink.section(table, &path) {
                            sections.plugins.push((id, plugin));
                        }
                    }
                }
                _ => sink.at(
                    Some(key.span()),
                    format!("unknown section `{name}` (known: {})", SECTIONS.join(", ")),
                ),
            }
        }
        sections
    }
}

/// Collects problems with positions.
struct Problems<'t> {
    file: PathBuf,
    text: &'t str,
    /// Spans at or after this offset are environment overrides (index = offset - base).
    env_base: usize,
    env_names: Vec<String>,
    problems: Vec<(usize, Problem)>,
    /// Files named so far, checked later by [`Config::check_files`].
    files: Vec<NamedFile>,
    /// Values read from `{ env = … }` and `{ file = … }`: blanked out of every problem.
    secrets: Vec<String>,
}

impl<'t> Problems<'t> {
    fn new(file: &Path, text: &'t str) -> Self {
        Self {
            file: file.to_path_buf(),
            text,
            env_base: text.len() + 1,
            env_names: Vec::new(),
            problems: Vec::new(),
            files: Vec::new(),
            secrets: Vec::new(),
        }
    }

    fn finish(mut self) -> ConfigError {
        self.problems.sort_by_key(|(offset, _)| *offset);
        let secrets = std::mem::take(&mut self.secrets);
        ConfigError {
            problems: self
                .problems
                .into_iter()
                .map(|(_, mut problem)| {
                    // A problem may quote the value it is about; a secret's never shows.
                    for secret in &secrets {
                        problem.message = problem.message.replace(secret.as_str(), "***");
                    }
                    problem
                })
                .collect(),
        }
    }

    /// Replaces every secret reference — a table whose only key is `env` (an environment
    /// variable's name) or `file` (a path relative to the configuration file, one trailing
    /// newline trimmed) — with the value it names, wherever it stands: any string of the
    /// configuration may come from the environment or a mounted secret file (Kubernetes
    /// secrets, systemd credentials). Values are remembered so that no problem quotes them.
    fn resolve_secrets(&mut self, table: &mut DeTable<'_>, path: &mut Vec<String>) {
        for (key, value) in table.iter_mut() {
            path.push(key.get_ref().to_string());
            self.resolve_value(value, path);
            path.pop();
        }
    }

    fn resolve_value(&mut self, value: &mut Spanned<DeValue<'_>>, path: &mut Vec<String>) {
        let span = value.span();
        match value.get_mut() {
            DeValue::Table(table) => match secret_reference(table) {
                Some((source, name)) => {
                    let key = path.join(".");
                    if let Some(secret) = self.read_secret(source, &name, &key, span.clone()) {
                        self.secrets
                            .extend((secret.len() >= 4).then(|| secret.clone()));
                        *value = Spanned::new(span, DeValue::String(secret.into()));
                    }
                }
                None => self.resolve_secrets(table, path),
            },
            DeValue::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    path.push(index.to_string());
                    self.resolve_value(item, path);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// The value of one reference; a problem (naming the variable or file, never a value) when
    /// it cannot be read.
    fn read_secret(
        &mut self,
        source: SecretSource,
        name: &str,
        key: &str,
        span: std::ops::Range<usize>,
    ) -> Option<String> {
        match source {
            SecretSource::Env => match std::env::var(name) {
                Ok(value) => Some(value),
                Err(std::env::VarError::NotPresent) => {
                    self.at(
                        Some(span),
                        format!("`{key}`: environment variable {name} is not set"),
                    );
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    self.at(
                        Some(span),
                        format!("`{key}`: environment variable {name} is not UTF-8"),
                    );
                    None
                }
            },
            SecretSource::File => {
                let base = self.file.parent().unwrap_or(Path::new("."));
                let path = base.join(name);
                match std::fs::read_to_string(&path) {
                    Ok(mut text) => {
                        if text.ends_with('\n') {
                            text.pop();
                            if text.ends_with('\r') {
                                text.pop();
                            }
                        }
                        Some(text)
                    }
                    Err(error) => {
                        self.at(
                            Some(span),
                            format!(
                                "`{key}`: cannot read secret file {}: {error}",
                                resolved(&path).display()
                            ),
                        );
                        None
                    }
                }
            }
        }
    }

    /// A problem at a span of the document (or of an environment override).
    fn at(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        let Some(span) = span else {
            self.whole(message);
            return;
        };
        let location = self.location(span.clone());
        self.problems.push((
            span.start,
            Problem {
                file: self.file.clone(),
                location,
                message,
            },
        ));
    }

    /// Remembers a file the configuration names under `key`.
    fn names_file(&mut self, key: String, span: std::ops::Range<usize>, path: PathBuf) {
        let location = self.location(span);
        self.files.push(NamedFile {
            key,
            location,
            path,
        });
    }

    /// Where a span is, without recording a problem there.
    fn location(&self, span: std::ops::Range<usize>) -> Location {
        if span.start >= self.env_base {
            let variable = self
                .env_names
                .get(span.start - self.env_base)
                .cloned()
                .unwrap_or_default();
            Location::Env { variable }
        } else {
            let (line, column) = line_column(self.text, span.start);
            Location::File { line, column }
        }
    }

    fn whole(&mut self, message: String) {
        self.problems.push((
            0,
            Problem {
                file: self.file.clone(),
                location: Location::Whole,
                message,
            },
        ));
    }

    fn at_spanned<T>(&mut self, value: &Spanned<T>, message: String) {
        self.at(Some(value.span()), message);
    }

    /// Puts `SWITCHBOARD_<SECTION>__<KEY>` overrides into the document. Values are TOML
    /// scalars when they parse as an integer, float or boolean, strings otherwise.
    fn apply_env<'i>(&mut self, root: &mut DeTable<'i>, env: &'i [(String, String)]) {
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = path.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let offset = self.env_base + self.env_names.len();
            self.env_names.push(name.clone());
            let span = offset..offset + 1;
            let scalar = DeValue::parse(value.as_str())
                .ok()
                .map(Spanned::into_inner)
                .filter(|parsed| parsed.is_integer() || parsed.is_float() || parsed.is_bool());
            let parsed = scalar.unwrap_or_else(|| DeValue::String(value.as_str().into()));
            let section_key = Spanned::new(span.clone(), section.clone().into());
            let table = root
                .entry(section_key)
                .or_insert_with(|| Spanned::new(span.clone(), DeValue::Table(DeTable::new())));
            match table.get_mut() {
                DeValue::Table(table) => {
                    table.insert(
                        Spanned::new(span.clone(), key.into()),
                        Spanned::new(span, parsed),
                    );
                }
                _ => self.at(
                    Some(span),
                    format!("`{section}` is not a table, so `{section}.{key}` cannot be set"),
                ),
            }
        }
    }

    /// Deserializes one section, recording every unknown key and every value of the wrong
    /// type, each with its key: a value serde refuses is reported and taken out, and the
    /// section is read again without it, so that one wrong type hides nothing else.
    fn section<T: DeserializeOwned>(
        &mut self,
        mut value: Spanned<DeValue<'_>>,
        path: &str,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        loop {
            let tree = value.clone();
            let mut unknown: Vec<Vec<Segment>> = Vec::new();
            let deserializer = ValueDeserializer::from(value.clone());
            let result = serde_ignored::deserialize(deserializer, |ignored| {
                let mut segments = Vec::new();
                segments_of(&ignored, &mut segments);
                unknown.push(segments);
            });
            let error = match result {
                // Without the refused values (each already a problem, so the configuration
                // is refused anyway), so that validation still reports the section's others.
                Ok(section) => {
                    self.report_unknown(&tree, unknown, path);
                    return Some(section);
                }
                Err(error) => error,
            };
            let located = error
                .span()
                .and_then(|span| take_key_at(&mut value, &span, &mut Vec::new()));
            match located {
                Some((name, span)) => {
                    self.at(Some(span), format!("`{path}.{name}`: {}", error.message()));
                    removed.push(name);
                }
                None => {
                    // A required key missing because its wrong value was taken out above
                    // has been reported already.
                    let consequence = removed.iter().any(|name| {
                        let leaf = name.rsplit('.').next().unwrap_or(name);
                        error.message().contains(&format!("`{leaf}`"))
                    });
                    if !consequence {
                        self.report_unknown(&tree, unknown, path);
                        let span = error.span().or_else(|| Some(tree.span()));
                        self.at(span, format!("in `{path}`: {}", error.message()));
                    }
                    return None;
                }
            }
        }
    }

    fn report_unknown(
        &mut self,
        tree: &Spanned<DeValue<'_>>,
        unknown: Vec<Vec<Segment>>,
        path: &str,
    ) {
        for segments in unknown {
            let (span, name) = key_span(tree, &segments);
            let shown = if name.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{name}")
            };
            self.at(span, format!("unknown key `{shown}`"));
        }
    }

    /// The entries of a table of tables (`[policy.voice]`, `[plugins.web-chat]`).
    fn table_entries<'i>(
        &mut self,
        value: Spanned<DeValue<'i>>,
        path: &str,
    ) -> Vec<(Spanned<String>, Spanned<DeValue<'i>>)> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(table) => table
                .into_iter()
                .map(|(key, value)| (Spanned::new(key.span(), key.get_ref().to_string()), value))
                .collect(),
            _ => {
                self.at(Some(span), format!("`{path}` must be a table"));
                Vec::new()
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum SecretSource {
    Env,
    File,
}

/// `{ env = "NAME" }` or `{ file = "PATH" }`: a table with that single string key.
fn secret_reference(table: &DeTable<'_>) -> Option<(SecretSource, String)> {
    if table.len() != 1 {
        return None;
    }
    let (key, value) = table.iter().next()?;
    let source = match key.get_ref().as_ref() {
        "env" => SecretSource::Env,
        "file" => SecretSource::File,
        _ => return None,
    };
    match value.get_ref() {
        DeValue::String(name) => Some((source, name.to_string())),
        _ => None,
    }
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments_of(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            segments_of(parent, out);
            out.push(Segment::Index(*index));
        }
        Path::Map { parent, key } => {
            segments_of(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments_of(parent, out),
    }
}

/// The span of the key a path ends in, and the path written with dots.
fn key_span(
    tree: &Spanned<DeValue<'_>>,
    segments: &[Segment],
) -> (Option<std::ops::Range<usize>>, String) {
    let mut node = tree;
    let mut span = Some(tree.span());
    let mut names = Vec::new();
    for segment in segments {
        match segment {
            Segment::Key(name) => {
                names.push(name.clone());
                let Some(table) = node.get_ref().as_table() else {
                    break;
                };
                match table
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == name.as_str())
                {
                    Some((key, value)) => {
                        span = Some(key.span());
                        node = value;
                    }
                    None => break,
                }
            }
            Segment::Index(index) => {
                names.push(index.to_string());
                let Some(item) = node
                    .get_ref()
                    .as_array()
                    .and_then(|array| array.get(*index))
                else {
                    break;
                };
                span = Some(item.span());
                node = item;
            }
        }
    }
    (span, names.join("."))
}

/// Removes the innermost key whose value covers `span` (where serde refused a value) and
/// returns its dotted name (array items by index) and the value's span.
fn take_key_at(
    node: &mut Spanned<DeValue<'_>>,
    span: &std::ops::Range<usize>,
    names: &mut Vec<String>,
) -> Option<(String, std::ops::Range<usize>)> {
    let covers = |candidate: &std::ops::Range<usize>| {
        candidate.start <= span.start && span.end <= candidate.end
    };
    match node.get_mut() {
        DeValue::Table(table) => {
            let key = table
                .iter()
                .find(|(_, value)| covers(&value.span()))
                .map(|(key, _)| key.clone())?;
            names.push(key.get_ref().to_string());
            let depth = names.len();
            if let Some(value) = table.get_mut(&key)
                && let Some(found) = take_key_at(value, span, names)
            {
                return Some(found);
            }
            names.truncate(depth);
            let value = table.remove(&key)?;
            Some((names.join("."), value.span()))
        }
        // An item of an array of tables spans its header only: look into each.
        DeValue::Array(items) => items
            .as_mut()
            .iter_mut()
            .enumerate()
            .find_map(|(index, item)| {
                let depth = names.len();
                names.push(index.to_string());
                let found = take_key_at(item, span, names);
                if found.is_none() {
                    names.truncate(depth);
                }
                found
            }),
        _ => None,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
