//! Plugin step of the flow: provider bytes -> sandboxed WebAssembly plugin -> canonical events,
//! and channel notifications -> plugin -> provider requests. The only module that imports
//! wasmtime; WIT types never leave it.
//!
//! - [`runtime`]: the one engine, the linker, validation, the compile cache.
//! - [`sandbox`]: what an instance may touch (nothing) and how much memory it may use.
//! - [`bindings`]: the WIT bindings and the conversions at the boundary.
//! - [`public_url`]: `{{public_url}}` in a plugin's requests, resolved as they come out.
//! - here: a [`Plugin`] — its current version behind an atomic swap (hot reload), warm
//!   instances, per-call time budgets, failure classification and a circuit breaker.

mod bindings;
mod public_url;
mod runtime;
mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use wasmtime::Store;

pub use bindings::{
    API_VERSION, ChannelNotification, DeliveryOutcome, InboundRequest, OutboundRequest,
    PluginDescription, ProviderReply, WebhookAnswer,
};
use bindings::{Bindings, BindingsPre, CallResult};
pub(crate) use runtime::Runtime;
use sandbox::Sandbox;

use crate::engine::{ChannelEvent, PluginId};

/// Warm instances kept per plugin version; more are created under load and dropped after.
const WARM_INSTANCES: usize = 4;
/// Failures in a row (traps, timeouts, out-of-memory) that open the circuit breaker.
const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_FIRST_BACKOFF: Duration = Duration::from_secs(1);
const BREAKER_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a plugin could not be loaded (or reloaded).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("plugin cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
    #[error("cannot read plugin {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a valid plugin: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} exports no `switchboard:channel/plugin` interface (exports: {exports:?}); is it a Switchboard channel plugin?"
    )]
    NotAPlugin { path: PathBuf, exports: Vec<String> },
    #[error(
        "{path} was built against switchboard:channel@{found}; this host supports switchboard:channel@{supported} (rebuild the plugin with a compatible plugin-sdk)"
    )]
    ApiVersion {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("cannot compile {path}: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error("cannot instantiate {path}: {reason}")]
    Instantiate { path: PathBuf, reason: String },
    #[error("plugin {path} says it is `{declared}`, but it is configured as `{configured}`")]
    IdMismatch {
        path: PathBuf,
        configured: String,
        declared: String,
    },
    #[error("plugin {plugin} refused its configuration: {detail}")]
    Configure { plugin: String, detail: String },
}

/// A plugin's own error kinds (the WIT `plugin-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    InvalidPayload,
    Unauthorized,
    Unsupported,
    Config,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPayload => "invalid-payload",
            Self::Unauthorized => "unauthorized",
            Self::Unsupported => "unsupported",
            Self::Config => "config",
        }
    }
}

/// Why a call failed. Every variant names the plugin and its version.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with its typed error; the instance stays usable.
    #[error("plugin {plugin} {version}: {} {detail}", kind.as_str())]
    Plugin {
        plugin: String,
        version: String,
        kind: FailureKind,
        detail: String,
    },
    #[error("plugin {plugin} {version} trapped: {detail}")]
    Trap {
        plugin: String,
        version: String,
        detail: String,
    },
    #[error("plugin {plugin} {version} exceeded its time budget of {budget:?}")]
    Timeout {
        plugin: String,
        version: String,
        budget: Duration,
    },
    #[error("plugin {plugin} {version} ran out of memory (limit {limit} bytes)")]
    OutOfMemory {
        plugin: String,
        version: String,
        limit: usize,
    },
    #[error("plugin {plugin} is failing repeatedly; calls resume in {retry_in:?}")]
    CircuitOpen { plugin: String, retry_in: Duration },
    #[error("plugin {plugin} could not start an instance: {detail}")]
    Instantiate { plugin: String, detail: String },
}

impl CallError {
    /// The stable reason code for the dead-letter header and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Plugin { kind, .. } => match kind {
                FailureKind::InvalidPayload => "invalid-payload",
                FailureKind::Unauthorized => "unauthorized",
                FailureKind::Unsupported => "unsupported",
                FailureKind::Config => "plugin-config",
            },
            Self::Trap { .. } => "plugin-trap",
            Self::Timeout { .. } => "plugin-timeout",
            Self::OutOfMemory { .. } => "plugin-out-of-memory",
            Self::CircuitOpen { .. } => "plugin-unavailable",
            Self::Instantiate { .. } => "plugin-failure",
        }
    }
}

/// Per-plugin settings from the configuration.
#[derive(Clone, Debug)]
pub struct PluginSettings {
    pub id: String,
    pub file: PathBuf,
    pub memory_limit: usize,
    pub time_limit: Duration,
    /// The plugin's `config` table as TOML text (secrets included; never logged).
    pub settings: String,
    /// `[plugins.<id>.secrets]`: never handed to the plugin; the delivery worker puts them
    /// where its requests say `{{secret:NAME}}`.
    pub secrets: std::collections::BTreeMap<String, crate::config::Secret>,
    /// `plugins.<id>.public_url`: the webhook door's URL for this plugin, put where its
    /// requests say `{{public_url}}` (`public_url`).
    pub public_url: Option<String>,
}

impl PluginSettings {
    /// What the host needs of a configured plugin (at start, and on a reload that reads the
    /// configuration again).
    pub fn from_config(configured: &crate::config::PluginConfig) -> Self {
        Self {
            id: configured.id.clone(),
            file: configured.file.clone(),
            memory_limit: configured.memory_limit as usize,
            time_limit: configured.time_limit,
            settings: configured.settings.expose().to_owned(),
            secrets: configured.secrets.clone(),
            public_url: configured.public_url.clone(),
        }
    }
}

/// Counters a user would graph, per plugin (all versions).
#[derive(Debug, Default)]
pub struct PluginStats {
    pub decodes: AtomicU64,
    pub encodes: AtomicU64,
    pub plugin_errors: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub out_of_memory: AtomicU64,
    pub rejected_by_breaker: AtomicU64,
    pub instances_created: AtomicU64,
    pub instances_retired: AtomicU64,
    pub reloads: AtomicU64,
    /// Sum of call durations, for the mean.
    pub call_nanos: AtomicU64,
    pub calls: AtomicU64,
}

/// Health as `GET /v1/plugins` and `/readyz` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    /// Recent failures, breaker still closed.
    Degraded,
    /// The breaker is open.
    Unhealthy,
}

impl Health {
    /// The name `/readyz` and `GET /v1/plugins` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// The plugin host: one runtime shared by every plugin.
#[derive(Clone, Debug)]
pub struct PluginHost {
    runtime: Arc<Runtime>,
}

impl PluginHost {
    /// A host whose plugins may use at most `max_memory` bytes each; compiled components are
    /// cached under `cache_dir` (none: compile on every start).
    pub fn new(max_memory: usize, cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        Ok(Self {
            runtime: Runtime::new(max_memory, cache_dir)?,
        })
    }

    /// Whether the pooling allocator is in use (else on-demand allocation).
    pub fn pooling(&self) -> bool {
        self.runtime.pooling
    }

    /// Loads, validates, compiles, instantiates and configures a plugin once (the smoke test)
    /// and checks that it is the plugin the configuration names.
    pub fn load(&self, settings: PluginSettings) -> Result<Plugin, LoadError> {
        let stats = Arc::new(PluginStats::default());
        let loaded = Loaded::prepare(&self.runtime, &settings, Some(&settings.id), stats.clone())?;
        Ok(Plugin {
            runtime: self.runtime.clone(),
            plugin_id: PluginId::new(settings.id.as_str()),
            id: settings.id.clone(),
            settings: ArcSwap::from_pointee(settings),
            current: ArcSwap::from_pointee(loaded),
            stats,
        })
    }

    /// Describes a plugin file without configuring it (`switchboard plugins inspect`).
    pub fn inspect(&self, file: &Path) -> Result<PluginDescription, LoadError> {
        let bytes = read(file)?;
        let compiled = self.runtime.compile(file, &bytes)?;
        let pre = pre_instantiate(&self.runtime, file, &compiled)?;
        let mut store = new_store(
            &self.runtime,
            "inspect".into(),
            64 << 20,
            Duration::from_secs(1),
        );
        let (instance, optional, _) = instantiate(&pre, &mut store, file, &compiled.api_version)?;
        let info = instance
            .describe(&mut store)
            .map_err(|error| LoadError::Instantiate {
                path: file.to_path_buf(),
                reason: format!("describe trapped: {error:#}"),
            })?;
        Ok(bindings::description(info, &compiled.api_version, optional))
    }
}

/// A loaded plugin: calls always go to its current version; [`Plugin::reload`] swaps in a
/// new one atomically while calls in flight finish on the old.
pub struct Plugin {
    runtime: Arc<Runtime>,
    /// `settings.id` as the engine names it, shared by every event decoded.
    plugin_id: PluginId,
    id: String,
    /// Swapped by [`Plugin::reload_with`] (settings and secrets read again).
    settings: ArcSwap<PluginSettings>,
    current: ArcSwap<Loaded>,
    stats: Arc<PluginStats>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.id)
            .field("file", &self.settings.load().file)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn description(&self) -> PluginDescription {
        self.current.load().description.clone()
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Whether the version in use was loaded from the compile cache (not compiled).
    pub fn loaded_from_cache(&self) -> bool {
        self.current.load().from_cache
    }

    /// The content hash of the version in use.
    pub fn version_hash(&self) -> String {
        self.current.load().hash.clone()
    }

    pub fn health(&self) -> Health {
        let current = self.current.load();
        let breaker = current
            .breaker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if breaker
            .open_until
            .is_some_and(|until| until > Instant::now())
        {
            Health::Unhealthy
        } else if breaker.failures > 0 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// Loads the file again (replaced on disk, or on request) and swaps it in once it passed
    /// its smoke test. On any error the current version stays.
    pub fn reload(&self) -> Result<PluginDescription, LoadError> {
        self.reload_with((*self.settings.load_full()).clone())
    }

    /// [`Plugin::reload`] with settings and secrets read again from the configuration: both
    /// are swapped in only when the new version passed its smoke test with them.
    pub fn reload_with(&self, settings: PluginSettings) -> Result<PluginDescription, LoadError> {
        let loaded = Loaded::prepare(&self.runtime, &settings, Some(&self.id), self.stats.clone())?;
        let description = loaded.description.clone();
        self.current.store(Arc::new(loaded));
        self.settings.store(Arc::new(settings));
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(plugin = %self.id, version = %description.version, "plugin reloaded");
        Ok(description)
    }

    /// A named secret of `[plugins.<id>.secrets]`, for the delivery worker only.
    pub fn secret(&self, name: &str) -> Option<crate::config::Secret> {
        self.settings.load().secrets.get(name).cloned()
    }

    /// Every secret of `[plugins.<id>.secrets]`, for the delivery worker only.
    pub fn secrets(&self) -> std::collections::BTreeMap<String, crate::config::Secret> {
        self.settings.load().secrets.clone()
    }

    /// The names of the plugin's secrets (what is set, never the values).
    pub fn secret_names(&self) -> Vec<String> {
        self.settings.load().secrets.keys().cloned().collect()
    }

    /// Reloads if the file's content changed; `Ok(None)` when it did not.
    pub fn reload_if_changed(&self) -> Result<Option<PluginDescription>, LoadError> {
        let bytes = read(&self.settings.load().file)?;
        let current = self.current.load();
        if current.source_hash == source_hash(&bytes) {
            return Ok(None);
        }
        drop(current);
        self.reload().map(Some)
    }

    /// One provider payload -> canonical events.
    pub fn decode(&self, request: &InboundRequest) -> Result<Vec<ChannelEvent>, CallError> {
        let current = self.current.load_full();
        let wanted = current.description.request_headers.as_deref();
        let channel = current.description.channel;
        let events = current.call(&self.stats, |bindings, store| {
            bindings.decode(store, request, wanted, &self.plugin_id, channel)
        })?;
        self.stats.decodes.fetch_add(1, Ordering::Relaxed);
        Ok(events)
    }

    /// One channel notification -> provider requests (none for a body the channel ignores).
    pub fn encode(
        &self,
        notification: &ChannelNotification,
    ) -> Result<Vec<OutboundRequest>, CallError> {
        if !bindings::for_channel(notification) {
            return Ok(Vec::new());
        }
        let current = self.current.load_full();
        if matches!(
            notification.notification.body,
            crate::engine::NotificationBody::Media { .. }
        ) && !current.voice
        {
            // Media controls only go to plugins that declared them.
            return Ok(Vec::new());
        }
        let requests = current.call(&self.stats, |bindings, store| {
            bindings
                .encode(store, notification)
                .unwrap_or_else(|| Ok(Ok(Vec::new())))
        })?;
        self.stats.encodes.fetch_add(1, Ordering::Relaxed);
        let settings = self.settings.load();
        Ok(requests
            .into_iter()
            .map(|request| public_url::resolve(request, settings.public_url.as_deref()))
            .collect())
    }

    /// Whether the plugin exports `voice-controls`.
    pub fn voice_controls(&self) -> bool {
        self.current.load().voice
    }

    /// Whether the plugin authenticates its provider's webhooks with a configured secret (its
    /// `webhook.signed` answer; `false` for a plugin without the interface).
    pub fn signed(&self) -> bool {
        self.current.load().description.webhook_signed == Some(true)
    }

    /// A `GET` on the webhook door: the plugin's handshake answer, `None` when it knows no
    /// handshake of that shape (or has no `webhook` interface).
    pub fn handshake(&self, request: &InboundRequest) -> Result<Option<WebhookAnswer>, CallError> {
        let current = self.current.load_full();
        let wanted = current.description.request_headers.as_deref();
        current.call(&self.stats, |bindings, store| {
            bindings
                .handshake(store, request, wanted)
                .unwrap_or(Ok(Ok(None)))
        })
    }

    /// What the plugin reads in its provider's answer to `request` (a request it encoded);
    /// `None` without the `delivery-receipts` interface, or when it keeps the host's reading.
    pub fn answered(
        &self,
        request: &crate::store::OutboxEntry,
        reply: ProviderReply<'_>,
    ) -> Result<Option<DeliveryOutcome>, CallError> {
        let current = self.current.load_full();
        current.call(&self.stats, |bindings, store| {
            bindings
                .answered(store, request, &reply)
                .unwrap_or(Ok(Ok(None)))
        })
    }

    /// The answer to a webhook whose events are durable (or that `decode` ignored); a plugin
    /// without the `webhook` interface answers `200` with an empty body.
    pub fn acknowledge(
        &self,
        request: &InboundRequest,
        ignored: bool,
    ) -> Result<WebhookAnswer, CallError> {
        let current = self.current.load_full();
        let wanted = current.description.request_headers.as_deref();
        current.call(&self.stats, |bindings, store| {
            bindings
                .acknowledge(store, request, wanted, ignored)
                .unwrap_or_else(|| {
                    Ok(Ok(WebhookAnswer {
                        status: 200,
                        headers: Vec::new(),
                        body: Vec::new(),
                    }))
                })
        })
    }
}

/// One version of a plugin, ready to run.
struct Loaded {
    description: PluginDescription,
    hash: String,
    from_cache: bool,
    source_hash: String,
    voice: bool,
    pre: BindingsPre,
    runtime: Arc<Runtime>,
    plugin: Arc<str>,
    memory_limit: usize,
    time_limit: Duration,
    settings: String,
    warm: Mutex<Vec<Warm>>,
    breaker: Mutex<Breaker>,
    /// Whether the breaker has counted a failure since the last success: while it has not,
    /// a call neither locks the breaker to be admitted nor to record its success.
    troubled: AtomicBool,
}

/// A configured instance, reused across calls until it fails.
struct Warm {
    store: Store<Sandbox>,
    bindings: Bindings,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    backoff: Duration,
    open_until: Option<Instant>,
}

impl Loaded {
    fn prepare(
        runtime: &Arc<Runtime>,
        settings: &PluginSettings,
        expected_id: Option<&str>,
        stats: Arc<PluginStats>,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        let bytes = read(&settings.file)?;
        let compiled = runtime.compile(&settings.file, &bytes)?;
        let pre = pre_instantiate(runtime, &settings.file, &compiled)?;
        let plugin: Arc<str> = settings.id.as_str().into();
        // Smoke test: a real instance must describe itself and accept its configuration.
        let mut store = new_store(
            runtime,
            plugin.clone(),
            settings.memory_limit,
            settings.time_limit,
        );
        let (instance, optional, handle) =
            instantiate(&pre, &mut store, &settings.file, &compiled.api_version)?;
        let info = instance
            .describe(&mut store)
            .map_err(|error| LoadError::Instantiate {
                path: settings.file.clone(),
                reason: format!("describe trapped: {error:#}"),
            })?;
        let mut description = bindings::description(info, &compiled.api_version, optional);
        if let Some(expected) = expected_id
            && description.id != expected
        {
            return Err(LoadError::IdMismatch {
                path: settings.file.clone(),
                configured: expected.to_owned(),
                declared: description.id,
            });
        }
        configure(&instance, &mut store, &settings.settings, &settings.id)?;
        let voice = description
            .capabilities
            .iter()
            .any(|capability| capability == "voice-controls");
        // Whether the configuration holds a webhook secret: asked after it, like media below.
        description.webhook_signed =
            instance
                .webhook_signed(&mut store)
                .map_err(|error| LoadError::Instantiate {
                    path: settings.file.clone(),
                    reason: format!("webhook.signed trapped: {error:#}"),
                })?;
        if voice {
            // Which supervisors can listen depends on the configuration: asked after it.
            description.media_supervisors =
                media_supervisors(&handle, &mut store, &compiled.api_version).map_err(
                    |reason| LoadError::Instantiate {
                        path: settings.file.clone(),
                        reason,
                    },
                )?;
        }
        store.data_mut().drain_stderr();
        stats.instances_created.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            plugin = %settings.id,
            version = %description.version,
            api = %description.api_version,
            cached = compiled.from_cache,
            voice,
            request_headers = ?description.request_headers,
            millis = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        Ok(Self {
            voice,
            description,
            hash: compiled.hash,
            from_cache: compiled.from_cache,
            source_hash: compiled.source_hash,
            pre,
            runtime: runtime.clone(),
            plugin,
            memory_limit: settings.memory_limit,
            time_limit: settings.time_limit,
            settings: settings.settings.clone(),
            warm: Mutex::new(vec![Warm {
                store,
                bindings: instance,
            }]),
            breaker: Mutex::new(Breaker::default()),
            troubled: AtomicBool::new(false),
        })
    }

    /// Runs one call on a warm instance, classifying the outcome.
    fn call<T>(
        &self,
        stats: &PluginStats,
        run: impl FnOnce(&Bindings, &mut Store<Sandbox>) -> CallResult<T>,
    ) -> Result<T, CallError> {
        self.admit(stats)?;
        let mut warm = match self.take_warm() {
            Some(warm) => warm,
            None => self.fresh(stats)?,
        };
        let started = Instant::now();
        warm.store.set_epoch_deadline(ticks(self.time_limit));
        let outcome = run(&warm.bindings, &mut warm.store);
        let elapsed = started.elapsed();
        stats.calls.fetch_add(1, Ordering::Relaxed);
        stats
            .call_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        warm.store.data_mut().drain_stderr();
        match outcome {
            Ok(Ok(value)) => {
                self.succeeded();
                self.give_back(warm, stats);
                Ok(value)
            }
            Ok(Err((kind, detail))) => {
                // A business error: the instance is fine and so is the plugin.
                self.succeeded();
                self.give_back(warm, stats);
                stats.plugin_errors.fetch_add(1, Ordering::Relaxed);
                Err(CallError::Plugin {
                    plugin: self.plugin.to_string(),
                    version: self.description.version.clone(),
                    kind,
                    detail,
                })
            }
            Err(trap) => {
                // Traps poison a store for good: retire the instance (wasmCloud's rule).
                let out_of_memory = warm.store.data().limits.refused;
                drop(warm);
                stats.instances_retired.fetch_add(1, Ordering::Relaxed);
                self.failed();
                let plugin = self.plugin.to_string();
                let version = self.description.version.clone();
                let error =
                    if trap.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                        stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        CallError::Timeout {
                            plugin,
                            version,
                            budget: self.time_limit,
                        }
                    } else if out_of_memory {
                        stats.out_of_memory.fetch_add(1, Ordering::Relaxed);
                        CallError::OutOfMemory {
                            plugin,
                            version,
                            limit: self.memory_limit,
                        }
                    } else {
                        stats.traps.fetch_add(1, Ordering::Relaxed);
                        CallError::Trap {
                            plugin,
                            version,
                            detail: trap_summary(&trap),
                        }
                    };
                tracing::warn!(plugin = %self.plugin, error = %error, "plugin call failed; instance retired");
                Err(error)
            }
        }
    }

    fn admit(&self, stats: &PluginStats) -> Result<(), CallError> {
        if !self.troubled.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut breaker = self
            .breaker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(until) = breaker.open_until {
            let now = Instant::now();
            if until > now {
                stats.rejected_by_breaker.fetch_add(1, Ordering::Relaxed);
                return Err(CallError::CircuitOpen {
                    plugin: self.plugin.to_string(),
                    retry_in: until - now,
                });
            }
            // Half-open: let this call through; its outcome closes or reopens the breaker.
            breaker.open_until = None;
        }
        Ok(())
    }

    fn succeeded(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut breaker = self
            .breaker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        breaker.failures = 0;
        breaker.backoff = Duration::ZERO;
        self.troubled.store(false, Ordering::Release);
    }

    fn failed(&self) {
        let mut breaker = self
            .breaker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        breaker.failures += 1;
        self.troubled.store(true, Ordering::Release);
        if breaker.failures >= BREAKER_THRESHOLD {
            // Envoy's FAIL_RELOAD: back off, doubling, while the plugin keeps failing.
            breaker.backoff = if breaker.backoff.is_zero() {
                BREAKER_FIRST_BACKOFF
            } else {
                (breaker.backoff * 2).min(BREAKER_MAX_BACKOFF)
            };
            breaker.open_until = Some(Instant::now() + breaker.backoff);
            tracing::error!(plugin = %self.plugin, failures = breaker.failures, backoff = ?breaker.backoff, "plugin circuit breaker open");
        }
    }

    fn take_warm(&self) -> Option<Warm> {
        self.warm
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .pop()
    }

    fn give_back(&self, warm: Warm, stats: &PluginStats) {
        if warm.store.data().stderr_logged > sandbox::STDERR_CAPACITY / 2 {
            stats.instances_retired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut pool = self
            .warm
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if pool.len() < WARM_INSTANCES {
            pool.push(warm);
        }
    }

    /// A new configured instance (the warm ones are busy or were retired).
    fn fresh(&self, stats: &PluginStats) -> Result<Warm, CallError> {
        let failure = |detail: String| CallError::Instantiate {
            plugin: self.plugin.to_string(),
            detail,
        };
        let mut store = new_store(
            &self.runtime,
            self.plugin.clone(),
            self.memory_limit,
            self.time_limit,
        );
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|error| failure(format!("{error:#}")))?;
        configure(&bindings, &mut store, &self.settings, &self.plugin)
            .map_err(|error| failure(error.to_string()))?;
        stats.instances_created.fetch_add(1, Ordering::Relaxed);
        Ok(Warm { store, bindings })
    }
}

/// The hidden configuration of a new store: sandbox, limits, the call deadline.
fn new_store(
    runtime: &Runtime,
    plugin: Arc<str>,
    memory_limit: usize,
    time_limit: Duration,
) -> Store<Sandbox> {
    let mut store = Store::new(&runtime.engine, Sandbox::new(plugin, memory_limit));
    store.limiter(|sandbox| &mut sandbox.limits);
    store.set_epoch_deadline(ticks(time_limit));
    store.epoch_deadline_trap();
    store
}

fn ticks(time_limit: Duration) -> u64 {
    (time_limit.as_millis() / runtime::EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

fn pre_instantiate(
    runtime: &Runtime,
    path: &Path,
    compiled: &runtime::Compiled,
) -> Result<BindingsPre, LoadError> {
    let failed = |error: wasmtime::Error| LoadError::Instantiate {
        path: path.to_path_buf(),
        reason: format!("{error:#}"),
    };
    let instance_pre = runtime
        .linker
        .instantiate_pre(&compiled.component)
        .map_err(failed)?;
    BindingsPre::new(&compiled.api_version, instance_pre).map_err(failed)
}

/// Instantiates and probes the optional interfaces (of the plugin's own version).
fn instantiate(
    pre: &BindingsPre,
    store: &mut Store<Sandbox>,
    path: &Path,
    api_version: &str,
) -> Result<(Bindings, bindings::Optional, wasmtime::component::Instance), LoadError> {
    let failed = |reason: String| LoadError::Instantiate {
        path: path.to_path_buf(),
        reason,
    };
    let instance = pre
        .instance_pre()
        .instantiate(&mut *store)
        .map_err(|error| failed(format!("{error:#}")))?;
    let bindings = pre
        .bind(&mut *store, &instance)
        .map_err(|error| failed(format!("{error:#}")))?;
    let mut optional = bindings::Optional::default();
    if bindings.has_webhook() {
        optional.capabilities.push("webhook".to_owned());
    }
    if bindings.has_receipts() {
        optional.capabilities.push("delivery-receipts".to_owned());
    }
    if let Some(controls) =
        probe::<Vec<String>>(&instance, store, api_version, "voice-controls", "controls")
            .map_err(failed)?
    {
        optional.capabilities.push("voice-controls".to_owned());
        optional.capabilities.extend(
            controls
                .into_iter()
                .map(|control| format!("voice:{control}")),
        );
    }
    if let Some(wanted) =
        probe::<Option<Vec<String>>>(&instance, store, api_version, "request-headers", "wanted")
            .map_err(failed)?
    {
        optional.capabilities.push("request-headers".to_owned());
        optional.request_headers = wanted.map(|names| {
            names
                .into_iter()
                .map(|name| name.to_ascii_lowercase())
                .collect()
        });
    }
    Ok((bindings, optional, instance))
}

/// With 0.2's `voice-controls`, the supervisors the configured plugin gives a media endpoint
/// (`None`: every supervisor, and all of them for a 0.1 plugin, which cannot say).
fn media_supervisors(
    instance: &wasmtime::component::Instance,
    store: &mut Store<Sandbox>,
    api_version: &str,
) -> Result<Option<Vec<String>>, String> {
    if api_version.starts_with("0.1.") {
        return Ok(None);
    }
    Ok(probe::<Option<Vec<String>>>(
        instance,
        store,
        api_version,
        "voice-controls",
        "media-supervisors",
    )?
    .flatten())
}

/// Calls `interface.function()` of an optional exported interface, if the plugin exports it.
fn probe<T>(
    instance: &wasmtime::component::Instance,
    store: &mut Store<Sandbox>,
    api_version: &str,
    interface: &str,
    function: &str,
) -> Result<Option<T>, String>
where
    T: wasmtime::component::ComponentType + wasmtime::component::Lift + Send + Sync + 'static,
{
    let name = format!("switchboard:channel/{interface}@{api_version}");
    let Some(exported) = instance.get_export_index(&mut *store, None, &name) else {
        return Ok(None);
    };
    let Some(index) = instance.get_export_index(&mut *store, Some(&exported), function) else {
        return Ok(None);
    };
    instance
        .get_typed_func::<(), (T,)>(&mut *store, &index)
        .and_then(|typed| typed.call(&mut *store, ()).map(|(value,)| value))
        .map(Some)
        .map_err(|error| format!("{interface}.{function}: {error:#}"))
}

fn configure(
    bindings: &Bindings,
    store: &mut Store<Sandbox>,
    settings: &str,
    plugin: &str,
) -> Result<(), LoadError> {
    match bindings.configure(&mut *store, settings) {
        Ok(Ok(())) => Ok(()),
        Ok(Err((_, detail))) => Err(LoadError::Configure {
            plugin: plugin.to_owned(),
            detail,
        }),
        Err(trap) => Err(LoadError::Configure {
            plugin: plugin.to_owned(),
            detail: format!("configure trapped: {}", trap_summary(&trap)),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

fn source_hash(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The first line of a trap (the backtrace follows in `{:#}`).
fn trap_summary(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or_default().to_owned()
}
