//! Configuration step 1: the TOML file as written — one serde struct per section, one doc
//! comment per key (this is the key reference). Unknown keys are collected by `config::load`
//! and reported, all of them, with their position.

use serde::Deserialize;
use toml::Spanned;

/// `[server]`: the admin HTTP API.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Server {
    /// Address and port the admin API listens on. Default `127.0.0.1:8080`.
    pub listen: Option<Spanned<String>>,
    /// How long SIGTERM/SIGINT waits for in-flight work before exiting, e.g. `"10s"`.
    /// Default `10s`.
    pub shutdown_grace: Option<Spanned<String>>,
    /// Largest request body the API accepts (413 above it), e.g. `"1MiB"`. Default `1MiB`.
    pub body_limit: Option<Spanned<String>>,
    /// Time a request may take before it is answered 503 (the live stream excepted).
    /// Default `10s`.
    pub request_timeout: Option<Spanned<String>>,
    /// Requests per second each caller (token subject) may make, bursts up to one second's
    /// worth; beyond it 429 with `Retry-After`. Default 1000.
    pub rate_limit: Option<Spanned<u32>>,
    /// Requests per second each client address may make without a valid token (bursts up
    /// to one second's worth); beyond it 429 with `Retry-After`, before the token is even
    /// checked. Default 20.
    pub unauthenticated_rate_limit: Option<Spanned<u32>>,
    /// Whether a reverse proxy in front of the daemon is trusted to say who the client is:
    /// then the client address is the last entry of `X-Forwarded-For`, and on the webhook
    /// door the URL a provider called comes from `X-Forwarded-Proto` and `X-Forwarded-Host`.
    /// Default false (the connection's peer address; the headers are ignored).
    pub trust_forwarded: Option<bool>,
    /// Address and port of the webhook door: `POST` and `GET /webhooks/{plugin}` and nothing
    /// else, safe to expose to providers. Unset: no door.
    pub webhook_listen: Option<Spanned<String>>,
    /// Webhooks per second each client address may send to the door (bursts up to one
    /// second's worth); beyond it 429 with `Retry-After`. Default 10000.
    pub webhook_rate_limit: Option<Spanned<u32>>,
    /// Webhooks per second the door takes for each plugin, from all addresses together.
    /// Default 20000.
    pub webhook_plugin_rate_limit: Option<Spanned<u32>>,
    /// Whether logs may carry conversation content: message and whisper texts, payload
    /// bodies, customer identifiers in refusal details. Default false.
    pub log_content: Option<bool>,
    /// Origins (`https://console.example.com`) whose browser pages may call the API across
    /// origins (CORS). Default none: only the console the daemon serves itself, which is
    /// same-origin.
    pub cors_origins: Option<Vec<Spanned<String>>>,
}

/// `[console]`: the supervisor console served at `/console/`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Console {
    /// Serve it (default true).
    pub enabled: Option<bool>,
    /// The OpenID provider the console signs in with (authorization code with PKCE), e.g.
    /// `https://keycloak.example.com/realms/acme`. Unset: only the development sign-in, and
    /// that only with `auth.hs256_secret`.
    pub oidc_issuer: Option<Spanned<String>>,
    /// The console's public client id at that provider. Default `switchboard-console`.
    pub client_id: Option<String>,
    /// Scopes asked for. Default `openid profile`.
    pub scope: Option<String>,
    /// A conversation waiting longer than this is marked for attention. Default `2m`.
    pub attention_wait: Option<Spanned<String>>,
    /// A conversation whose sentiment score is at or below this is marked for attention.
    /// Default -0.3.
    pub attention_sentiment: Option<f32>,
}

/// `[store]`: where the state is kept.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Store {
    /// Directory of the embedded store, relative to the working directory. Default `./data`.
    /// Not used in cluster mode.
    pub path: Option<String>,
    /// PostgreSQL, for cluster mode (required with `[cluster]`, refused without it), e.g.
    /// `postgresql://switchboard@db.internal:5432/switchboard`. A password belongs in
    /// `{ env = "VAR" }` or `{ file = "path" }`. TLS (`sslmode=require`) is not supported:
    /// reach PostgreSQL over a trusted network or a local TLS proxy.
    pub postgres_url: Option<Spanned<String>>,
    /// The PostgreSQL schema the cluster's tables live in (created if missing). Default
    /// `switchboard`; clusters sharing one database need one each.
    pub postgres_schema: Option<Spanned<String>>,
}

/// `[cluster]`: several daemons sharing one RabbitMQ and one PostgreSQL. Without this section
/// the daemon runs alone on its embedded store.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Cluster {
    /// This daemon's name in the cluster, unique among its nodes (letters, digits, `.`, `_`,
    /// `-`; up to 64). Required.
    pub node_id: Option<Spanned<String>>,
    /// Partitions the conversations are divided into, fixed when the cluster is created (every
    /// node checks it). More partitions than nodes lets the work spread as nodes join. Default
    /// 16, at most 1024.
    pub partitions: Option<Spanned<u32>>,
    /// How long a partition's lease lasts without renewal: a dead node's partitions are taken
    /// over after it (give or take a keeper round: a second). Default `8s`, at least `3s`.
    pub lease: Option<Spanned<String>>,
}

/// `[amqp]`: RabbitMQ. Without `url` the daemon runs on its embedded transport.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Amqp {
    /// Broker URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`. Unset: embedded transport.
    pub url: Option<Spanned<String>>,
    /// Inbound topic exchange. Default `switchboard.inbound`.
    pub inbound_exchange: Option<String>,
    /// Inbound quorum queue, bound with `#`. Default `switchboard.inbound`.
    pub inbound_queue: Option<String>,
    /// Dead-letter queue for messages that cannot be handled. Default `switchboard.dead`.
    pub dead_letter_queue: Option<String>,
    /// Outbound topic exchange. Default `switchboard.outbound`.
    pub outbound_exchange: Option<String>,
    /// The delivery worker's quorum queue, bound to `channel.#` on the outbound exchange
    /// (declared only with `[delivery] enabled`). Default `switchboard.delivery`.
    pub delivery_queue: Option<String>,
    /// Unacknowledged deliveries in flight (the batch size bound). Default 300.
    pub prefetch: Option<Spanned<u16>>,
    /// Redeliveries before the broker dead-letters a message (`x-delivery-limit`). Default 5.
    pub delivery_limit: Option<Spanned<u32>>,
}

/// `[plugins.<id>.oauth]`.
#[derive(Debug, Deserialize)]
pub(crate) struct OAuth {
    /// The token endpoint, e.g. `https://login.mypurecloud.com/oauth/token`.
    pub token_url: Spanned<String>,
    pub client_id: String,
    /// Write it as `{ env = "VAR" }` or `{ file = "path" }`.
    pub client_secret: String,
    /// Space-separated scopes to ask for; none by default.
    pub scope: Option<String>,
}

/// `[auth]`: JWT bearer tokens as Keycloak issues them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Auth {
    /// Expected `iss` claim. Required.
    pub issuer: Option<Spanned<String>>,
    /// Expected `aud` claim. Required.
    pub audience: Option<Spanned<String>>,
    /// Shared secret for HS256 tokens (also what `switchboard token` signs with).
    pub hs256_secret: Option<Spanned<String>>,
    /// PEM file with the RS256 public key.
    pub rs256_public_key_file: Option<Spanned<String>>,
    /// JWKS file with RS256 keys (selected by `kid`).
    pub jwks_file: Option<Spanned<String>>,
}

/// `[engine]`: bounds of the supervision engine's memory.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Engine {
    /// Input ids remembered for deduplication. Default 1 000 000.
    pub dedup_window: Option<Spanned<u64>>,
    /// How long a closed conversation stays in memory (it stays in the store). Default `1h`.
    pub closed_retention: Option<Spanned<String>>,
    /// How long an `Idempotency-Key` replays its first answer. Default `24h`.
    pub idempotency_ttl: Option<Spanned<String>>,
    /// How far back the ongoing conversations report reaches (by creation). Default `24h`,
    /// as Dynamics 365's.
    pub report_window: Option<Spanned<String>>,
    /// A supervisor whose live streams have all been gone this long loses its seats (a
    /// closed browser tab frees its monitor slot). Any authenticated request also counts as
    /// being there. Default `2m`.
    pub monitor_lease: Option<Spanned<String>>,
}

/// `[delivery]`: the delivery worker, which sends the provider requests plugins encode.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Delivery {
    /// Send them (default true). False: they stay in the outbox (and on RabbitMQ go to
    /// `channel.<plugin>`) for an external worker.
    pub enabled: Option<bool>,
    /// Attempts before a delivery is dead-lettered (`delivery-failed`). Default 10.
    pub max_attempts: Option<Spanned<u32>>,
    /// Age after which a delivery still failing is dead-lettered, e.g. `"24h"`. Default `24h`.
    pub max_age: Option<Spanned<String>>,
    /// Time to open a connection to a provider. Default `5s`.
    pub connect_timeout: Option<Spanned<String>>,
    /// Time a request may take, answer included. Default `30s`.
    pub timeout: Option<Spanned<String>>,
    /// Requests in flight per plugin. Default 32.
    pub concurrency: Option<Spanned<u32>>,
    /// On RabbitMQ: requests the worker holds at once from `switchboard.delivery` (those
    /// waiting behind an earlier one of their conversation included). Default 1000.
    pub prefetch: Option<Spanned<u32>>,
}

/// `[policy.<channel>]`: rules that differ between platforms, per channel kind
/// (`web`, `sms`, `whatsapp`, `messaging`, `voice`). Every key is optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Policy {
    /// Supervisors listening at once. Default 1 on voice, 5 elsewhere.
    pub monitor_limit: Option<Spanned<u32>>,
    /// Tell the agent when silent monitoring starts. Default false.
    pub tell_agent_on_monitor: Option<bool>,
    /// Supervisors may transfer. Default true except on voice.
    pub transfer: Option<bool>,
    /// Capacity units an active conversation takes. Default 1.
    pub capacity_units: Option<Spanned<u32>>,
    /// Capacity during wrap-up: `"always"`, `"never"` or a duration such as `"2m"`.
    /// Default `always`.
    pub wrap_up_capacity: Option<Spanned<String>>,
    /// Silence after which a conversation closes, or `"none"`. Default `24h` on WhatsApp,
    /// `2h` on SMS, none elsewhere.
    pub inactivity_timeout: Option<Spanned<String>>,
}

/// `[[teams]]`: units of supervisor scoping (Keycloak groups).
#[derive(Debug, Deserialize)]
pub(crate) struct Team {
    /// Team id: the group name without its leading `/`.
    pub id: Spanned<String>,
    /// Display name. Default: the id.
    pub name: Option<String>,
    /// Identity-provider groups that grant this team, as whole paths (`/acme/support`) or
    /// bare names, compared exactly: a group elsewhere in the tree with the same last segment
    /// grants nothing. Default: `/<id>` and `<id>`.
    pub groups: Option<Vec<Spanned<String>>>,
}

/// `[[queues]]`: where conversations wait for an agent.
#[derive(Debug, Deserialize)]
pub(crate) struct Queue {
    pub id: Spanned<String>,
    /// Display name. Default: the id.
    pub name: Option<String>,
    /// The team that owns the queue (and whose supervisors see its conversations).
    pub team: Spanned<String>,
    /// Presences an agent may have to be assigned from this queue.
    /// Default `["available", "busy"]`.
    pub allowed_presences: Option<Vec<Spanned<String>>>,
}

/// `[[agents]]`: the roster.
#[derive(Debug, Deserialize)]
pub(crate) struct Agent {
    /// Agent id: the `sub` of the agent's token.
    pub id: Spanned<String>,
    /// Display name. Default: the id.
    pub name: Option<String>,
    /// Capacity units. Default 3.
    pub capacity: Option<u32>,
    /// Queues the agent serves.
    #[serde(default)]
    pub queues: Vec<Spanned<String>>,
    /// Extra teams (the teams of its queues are implied).
    #[serde(default)]
    pub teams: Vec<Spanned<String>>,
    /// Presence at start. Default `offline`.
    pub presence: Option<Spanned<String>>,
    /// A bot: never the target of an assignment or transfer.
    #[serde(default)]
    pub bot: bool,
}

/// `[[supervisors]]`: known supervisors (display names, and `switchboard token` defaults).
#[derive(Debug, Deserialize)]
pub(crate) struct Supervisor {
    pub id: Spanned<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub teams: Vec<Spanned<String>>,
}

/// `[plugins.<id>]`: a channel plugin.
#[derive(Debug, Deserialize)]
pub(crate) struct Plugin {
    /// The plugin's `.wasm` component, relative to the config file's directory.
    pub file: Spanned<String>,
    /// Queue for new conversations whose events name none.
    pub default_queue: Spanned<String>,
    /// Load it (default true).
    pub enabled: Option<bool>,
    /// Memory cap per instance, e.g. `"64MiB"`. Default 64 MiB.
    pub memory_limit: Option<Spanned<String>>,
    /// Time budget per call, e.g. `"100ms"`. Default 100 ms.
    pub time_limit: Option<Spanned<String>>,
    /// The URL the provider was given for this plugin's webhooks (what signatures such as
    /// Twilio's cover), e.g. `https://hooks.example.com/webhooks/sms-twilio`. Unset: the URL
    /// the request reached (see `server.trust_forwarded`).
    pub public_url: Option<Spanned<String>>,
    /// Take this plugin's webhooks on the door although its configuration holds no
    /// signature secret (development only; a warning at start). Default false.
    pub allow_unsigned: Option<bool>,
    /// The hosts (`name` or `name:port`) the plugin's requests may go to. Default: the hosts
    /// of its URL settings (keys ending in `url`). Loopback, private, link-local and
    /// cloud-metadata addresses are refused unless listed here as addresses.
    pub allowed_hosts: Option<Vec<Spanned<String>>>,
    /// Named credentials for the delivery worker, which puts them where the plugin's requests
    /// say `{{secret:NAME}}` at send time; never handed to the plugin, never stored. Write
    /// each as `{ env = "VAR" }` or `{ file = "path" }`.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Requests per second the delivery worker sends for this plugin at most (the provider's
    /// metered throughput); requests beyond wait their turn. Unset: no limit but
    /// `delivery.concurrency`.
    pub rate_limit: Option<Spanned<u32>>,
    /// OAuth 2.0 client credentials (RFC 6749 §4.4) for providers whose API tokens expire
    /// (Genesys Cloud): the delivery worker fetches a token from `token_url`, caches and renews
    /// it, and puts it where the plugin's requests say `{{oauth:NAME}}`.
    pub oauth: Option<OAuth>,
    /// The plugin's own settings (secrets included), handed to the plugin as TOML.
    #[serde(default)]
    pub config: toml::Table,
}
