//! Configuration step 2: raw sections -> typed [`Config`], checking values and references
//! (queues name known teams, agents known queues, ...). Every problem is recorded with its
//! position; nothing stops at the first.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{
    AmqpConfig, AriEvents, AuthConfig, ClusterConfig, Config, ConsoleConfig, DeliveryConfig,
    EngineConfig, OAuthConfig, PluginConfig, Problems, Secret, Sections, ServerConfig, StoreConfig,
    SupervisorConfig, millis, raw,
};
use crate::engine::{
    Agent, ChannelKind, Presence, Queue, QueueId, Setup, Team, TeamId, WrapUpCapacity,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_BODY_LIMIT: u64 = 1 << 20;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RATE_LIMIT: u32 = 1000;
const DEFAULT_UNAUTHENTICATED_RATE_LIMIT: u32 = 20;
/// Well above what one provider sends one daemon (the door's benchmark drives 2 000/s from
/// one address): the limits stop a flood, not a busy provider.
const DEFAULT_WEBHOOK_RATE_LIMIT: u32 = 10_000;
const DEFAULT_WEBHOOK_PLUGIN_RATE_LIMIT: u32 = 20_000;
const DEFAULT_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;
const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);
const DEFAULT_AGENT_CAPACITY: u32 = 3;

pub(super) fn validate(sink: &mut Problems<'_>, mut sections: Sections) -> Option<Config> {
    let server = server(sink, sections.server);
    let amqp = amqp(sink, sections.amqp);
    let cluster = cluster(sink, sections.cluster, &mut sections.store, amqp.is_some());
    let store = StoreConfig {
        path: sections
            .store
            .path
            .unwrap_or_else(|| "./data".to_owned())
            .into(),
    };
    let file = sink.file.clone();
    let auth = auth(sink, sections.auth, &file);
    let engine = engine(sink, sections.engine);
    let delivery = delivery(sink, sections.delivery);
    let console = console(sink, sections.console);
    let policies = policies(sink, sections.policies);
    let teams = teams(sink, sections.teams);
    let team_ids: HashSet<&str> = teams.iter().map(|team| team.id.as_str()).collect();
    let queues = queues(sink, sections.queues, &team_ids);
    let queue_ids: HashSet<&str> = queues.iter().map(|queue| queue.id.as_str()).collect();
    let agents = agents(sink, sections.agents, &team_ids, &queue_ids);
    let supervisors = supervisors(sink, sections.supervisors, &team_ids);
    let plugins = plugins(sink, sections.plugins, &queue_ids);
    if queues.is_empty() {
        sink.whole(
            "at least one `[[queues]]` entry is required: every conversation lands in a queue"
                .to_owned(),
        );
    }
    Some(Config {
        delivery,
        console,
        file: sink.file.clone(),
        server: server?,
        store,
        amqp,
        cluster,
        auth: auth?,
        engine,
        policies,
        teams,
        queues,
        agents,
        supervisors,
        plugins,
        files: std::mem::take(&mut sink.files),
    })
}

fn server(sink: &mut Problems<'_>, raw: raw::Server) -> Option<ServerConfig> {
    let listen = match raw.listen {
        Some(listen) => match listen.get_ref().parse() {
            Ok(address) => Some(address),
            Err(_) => {
                sink.at_spanned(
                    &listen,
                    format!("`server.listen` must be an address and port such as {DEFAULT_LISTEN}, not {:?}", listen.get_ref()),
                );
                None
            }
        },
        None => DEFAULT_LISTEN.parse().ok(),
    };
    let shutdown_grace = duration(sink, raw.shutdown_grace.as_ref(), "server.shutdown_grace")
        .unwrap_or(DEFAULT_GRACE);
    let body_limit = match &raw.body_limit {
        None => DEFAULT_BODY_LIMIT,
        Some(limit) => bytes(limit.get_ref()).unwrap_or_else(|| {
            sink.at_spanned(
                limit,
                format!(
                    "`server.body_limit` must be a size such as \"1MiB\", not {:?}",
                    limit.get_ref()
                ),
            );
            DEFAULT_BODY_LIMIT
        }),
    };
    let request_timeout = duration(sink, raw.request_timeout.as_ref(), "server.request_timeout")
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    let rate_limit = at_least_one(
        sink,
        raw.rate_limit,
        "server.rate_limit",
        DEFAULT_RATE_LIMIT,
    );
    let unauthenticated_rate_limit = at_least_one(
        sink,
        raw.unauthenticated_rate_limit,
        "server.unauthenticated_rate_limit",
        DEFAULT_UNAUTHENTICATED_RATE_LIMIT,
    );
    let webhook_rate_limit = at_least_one(
        sink,
        raw.webhook_rate_limit,
        "server.webhook_rate_limit",
        DEFAULT_WEBHOOK_RATE_LIMIT,
    );
    let webhook_plugin_rate_limit = at_least_one(
        sink,
        raw.webhook_plugin_rate_limit,
        "server.webhook_plugin_rate_limit",
        DEFAULT_WEBHOOK_PLUGIN_RATE_LIMIT,
    );
    let webhook_listen = raw.webhook_listen.and_then(|address| {
        address.get_ref().parse().ok().or_else(|| {
            sink.at_spanned(
                &address,
                format!(
                    "`server.webhook_listen` must be an address and port such as 127.0.0.1:8081, not {:?}",
                    address.get_ref()
                ),
            );
            None
        })
    });
    Some(ServerConfig {
        webhook_listen,
        webhook_rate_limit,
        webhook_plugin_rate_limit,
        listen: listen?,
        shutdown_grace,
        body_limit: usize::try_from(body_limit).unwrap_or(usize::MAX),
        request_timeout,
        rate_limit,
        unauthenticated_rate_limit,
        trust_forwarded: raw.trust_forwarded.unwrap_or(false),
        log_content: raw.log_content.unwrap_or(false),
        cors_origins: raw
            .cors_origins
            .iter()
            .flatten()
            .filter_map(|value| origin(sink, value))
            .collect(),
    })
}

fn amqp(sink: &mut Problems<'_>, raw: raw::Amqp) -> Option<AmqpConfig> {
    let url = raw.url?;
    let scheme_ok = url.get_ref().starts_with("amqp://") || url.get_ref().starts_with("amqps://");
    if !scheme_ok {
        // Never echo the URL: it usually carries the broker password.
        sink.at_spanned(
            &url,
            "`amqp.url` must start with amqp:// or amqps://".to_owned(),
        );
    }
    let prefetch = raw.prefetch.map_or(300, Spanned::into_inner);
    if prefetch == 0 {
        sink.whole("`amqp.prefetch` must be at least 1".to_owned());
    }
    let delivery_limit = raw.delivery_limit.map_or(5, Spanned::into_inner);
    Some(AmqpConfig {
        url: Secret::new(url.into_inner()),
        inbound_exchange: raw
            .inbound_exchange
            .unwrap_or_else(|| "switchboard.inbound".to_owned()),
        inbound_queue: raw
            .inbound_queue
            .unwrap_or_else(|| "switchboard.inbound".to_owned()),
        dead_letter_queue: raw
            .dead_letter_queue
            .unwrap_or_else(|| "switchboard.dead".to_owned()),
        outbound_exchange: raw
            .outbound_exchange
            .unwrap_or_else(|| "switchboard.outbound".to_owned()),
        delivery_queue: raw
            .delivery_queue
            .unwrap_or_else(|| "switchboard.delivery".to_owned()),
        prefetch,
        delivery_limit,
    })
}

/// Cluster mode: `[cluster]` with `store.postgres_url` and `[amqp] url`; `store.postgres_url`
/// without `[cluster]` is refused too (it would be silently ignored).
fn cluster(
    sink: &mut Problems<'_>,
    raw: raw::Cluster,
    store: &mut raw::Store,
    broker: bool,
) -> Option<ClusterConfig> {
    let url = store.postgres_url.take();
    let schema = store.postgres_schema.take();
    let configured = raw.node_id.is_some() || raw.partitions.is_some() || raw.lease.is_some();
    if !configured {
        for key in [url.as_ref(), schema.as_ref()].into_iter().flatten() {
            sink.at_spanned(
                key,
                "`store.postgres_url` and `store.postgres_schema` are for cluster mode: add a \
                 `[cluster]` section with `node_id`, or remove them"
                    .to_owned(),
            );
        }
        return None;
    }
    let node_id = match raw.node_id {
        Some(id) => {
            let text = id.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 64
                && text
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
            if valid {
                Some(id.into_inner())
            } else {
                sink.at_spanned(
                    &id,
                    format!(
                        "`cluster.node_id` must be 1 to 64 letters, digits, `.`, `_` or `-`, not {text:?}"
                    ),
                );
                None
            }
        }
        None => required::<String>(sink, None, "cluster.node_id"),
    };
    let partitions = match raw.partitions {
        Some(count) if !(1..=1024).contains(count.get_ref()) => {
            sink.at_spanned(
                &count,
                format!(
                    "`cluster.partitions` must be between 1 and 1024, not {}",
                    count.get_ref()
                ),
            );
            None
        }
        Some(count) => Some(count.into_inner()),
        None => Some(16),
    };
    let lease = match duration(sink, raw.lease.as_ref(), "cluster.lease") {
        Some(lease) if lease < Duration::from_secs(3) => {
            if let Some(raw) = &raw.lease {
                sink.at_spanned(
                    raw,
                    "`cluster.lease` must be at least 3s (a paused node's broker heartbeat, a quarter of it, must end its place as a consumer well before the lease can be taken)".to_owned(),
                );
            }
            None
        }
        Some(lease) => Some(lease),
        None if raw.lease.is_some() => None,
        // A dead node's partitions are served again within 10 s (a lease and a keeper round),
        // while a node paused for a few seconds (a busy machine) keeps them.
        None => Some(Duration::from_secs(8)),
    };
    let postgres_url = match url {
        Some(url) => {
            let text = url.get_ref();
            if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                Some(Secret::new(url.into_inner()))
            } else {
                // Never echo the URL: it may carry a password.
                sink.at_spanned(
                    &url,
                    "`store.postgres_url` must start with postgresql:// or postgres://".to_owned(),
                );
                None
            }
        }
        None => {
            sink.whole(
                "cluster mode needs `store.postgres_url` (the nodes' shared state)".to_owned(),
            );
            None
        }
    };
    let postgres_schema = match schema {
        Some(schema) => {
            let text = schema.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 63
                && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && text
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
            if !valid {
                sink.at_spanned(
                    &schema,
                    format!(
                        "`store.postgres_schema` must be a lowercase identifier (letters, digits, `_`), not {text:?}"
                    ),
                );
                None
            } else {
                Some(schema.into_inner())
            }
        }
        None => Some("switchboard".to_owned()),
    };
    if !broker {
        sink.whole(
            "cluster mode needs `[amqp] url`: the nodes share their work through RabbitMQ"
                .to_owned(),
        );
    }
    Some(ClusterConfig {
        node_id: node_id?,
        partitions: partitions?,
        lease: lease?,
        postgres_url: postgres_url?,
        postgres_schema: postgres_schema?,
    })
}

fn auth(sink: &mut Problems<'_>, raw: raw::Auth, file: &Path) -> Option<AuthConfig> {
    let issuer = required(sink, raw.issuer, "auth.issuer");
    let audience = required(sink, raw.audience, "auth.audience");
    if raw.hs256_secret.is_none() && raw.rs256_public_key_file.is_none() && raw.jwks_file.is_none()
    {
        sink.whole(
            "`[auth]` needs a key: `hs256_secret`, `rs256_public_key_file` or `jwks_file`"
                .to_owned(),
        );
    }
    if let Some(secret) = &raw.hs256_secret
        && secret.get_ref().len() < 32
    {
        sink.at_spanned(
            secret,
            "`auth.hs256_secret` must be at least 32 bytes long (RFC 7518 §3.2)".to_owned(),
        );
    }
    let base = file.parent().unwrap_or(Path::new("."));
    for (key, path) in [
        ("auth.rs256_public_key_file", &raw.rs256_public_key_file),
        ("auth.jwks_file", &raw.jwks_file),
    ] {
        if let Some(path) = path {
            sink.names_file(key.to_owned(), path.span(), base.join(path.get_ref()));
        }
    }
    Some(AuthConfig {
        issuer: issuer?,
        audience: audience?,
        hs256_secret: raw
            .hs256_secret
            .map(|secret| Secret::new(secret.into_inner())),
        rs256_public_key_file: raw
            .rs256_public_key_file
            .map(|path| base.join(path.into_inner())),
        jwks_file: raw.jwks_file.map(|path| base.join(path.into_inner())),
    })
}

fn engine(sink: &mut Problems<'_>, raw: raw::Engine) -> EngineConfig {
    let dedup_window = raw.dedup_window.map_or(1_000_000, Spanned::into_inner);
    EngineConfig {
        dedup_window: usize::try_from(dedup_window.max(1)).unwrap_or(usize::MAX),
        closed_retention: duration(
            sink,
            raw.closed_retention.as_ref(),
            "engine.closed_retention",
        )
        .unwrap_or(Duration::from_secs(3600)),
        idempotency_ttl: duration(sink, raw.idempotency_ttl.as_ref(), "engine.idempotency_ttl")
            .unwrap_or(Duration::from_secs(24 * 3600)),
        report_window: duration(sink, raw.report_window.as_ref(), "engine.report_window")
            .unwrap_or(Duration::from_secs(24 * 3600)),
        monitor_lease: duration(sink, raw.monitor_lease.as_ref(), "engine.monitor_lease")
            .unwrap_or(Duration::from_secs(120)),
    }
}

fn console(sink: &mut Problems<'_>, raw: raw::Console) -> ConsoleConfig {
    let oidc_issuer = raw.oidc_issuer.and_then(|issuer| {
        let text = issuer.get_ref().trim_end_matches('/').to_owned();
        if text.starts_with("https://") || text.starts_with("http://") {
            Some(text)
        } else {
            sink.at_spanned(
                &issuer,
                format!(
                    "`console.oidc_issuer` must be the provider's https:// URL, not {:?}",
                    issuer.get_ref()
                ),
            );
            None
        }
    });
    let defaults = ConsoleConfig::default();
    ConsoleConfig {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        oidc_issuer,
        client_id: raw.client_id.unwrap_or(defaults.client_id),
        scope: raw.scope.unwrap_or(defaults.scope),
        attention_wait: duration(sink, raw.attention_wait.as_ref(), "console.attention_wait")
            .unwrap_or(defaults.attention_wait),
        attention_sentiment: raw
            .attention_sentiment
            .unwrap_or(defaults.attention_sentiment),
    }
}

/// An origin as browsers send it: scheme, host and optional port, nothing else.
fn origin(sink: &mut Problems<'_>, value: &Spanned<String>) -> Option<String> {
    let text = value.get_ref();
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', '*', ' ']) => {
            Some(text.clone())
        }
        _ => {
            sink.at_spanned(
                value,
                format!(
                    "`server.cors_origins` entries are origins such as \"https://console.example.com\" (no path, no wildcard), not {text:?}"
                ),
            );
            None
        }
    }
}

/// A count that must be at least 1: its value, or `default` (with a problem) when it is 0.
fn at_least_one(
    sink: &mut Problems<'_>,
    value: Option<Spanned<u32>>,
    key: &str,
    default: u32,
) -> u32 {
    match value {
        Some(value) if *value.get_ref() == 0 => {
            sink.at_spanned(&value, format!("`{key}` must be at least 1"));
            default
        }
        Some(value) => value.into_inner(),
        None => default,
    }
}

fn delivery(sink: &mut Problems<'_>, raw: raw::Delivery) -> DeliveryConfig {
    DeliveryConfig {
        enabled: raw.enabled.unwrap_or(true),
        max_attempts: at_least_one(sink, raw.max_attempts, "delivery.max_attempts", 10),
        max_age: duration(sink, raw.max_age.as_ref(), "delivery.max_age")
            .unwrap_or(Duration::from_secs(24 * 3600)),
        connect_timeout: duration(
            sink,
            raw.connect_timeout.as_ref(),
            "delivery.connect_timeout",
        )
        .unwrap_or(Duration::from_secs(5)),
        timeout: duration(sink, raw.timeout.as_ref(), "delivery.timeout")
            .unwrap_or(Duration::from_secs(30)),
        concurrency: at_least_one(sink, raw.concurrency, "delivery.concurrency", 32) as usize,
        prefetch: at_least_one(sink, raw.prefetch, "delivery.prefetch", 1000).min(65_535),
    }
}

/// The `host` or `host:port` of an absolute http(s) URL (userinfo dropped, IPv6 kept in
/// brackets), as allowed hosts are written.
pub(crate) fn url_authority(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

/// The hosts a plugin's URL settings name (string values of keys ending in `url`, at any
/// depth): its default egress allowlist.
fn url_setting_hosts(table: &toml::Table, hosts: &mut Vec<String>) {
    for (key, value) in table {
        match value {
            toml::Value::String(text) if key.ends_with("url") => {
                if let Some(host) = url_authority(text)
                    && !hosts.contains(&host)
                {
                    hosts.push(host);
                }
            }
            toml::Value::Table(inner) => url_setting_hosts(inner, hosts),
            _ => {}
        }
    }
}

fn policies(
    sink: &mut Problems<'_>,
    raw: Vec<(Spanned<String>, raw::Policy)>,
) -> crate::engine::PerChannel<crate::engine::ChannelPolicy> {
    let mut policies = Setup::default_policies();
    for (channel_name, raw) in raw {
        let Some(channel) = ChannelKind::parse(channel_name.get_ref()) else {
            let known: Vec<&str> = ChannelKind::ALL.iter().map(|kind| kind.as_str()).collect();
            sink.at_spanned(
                &channel_name,
                format!(
                    "unknown channel `{}` in `[policy]` (known: {})",
                    channel_name.get_ref(),
                    known.join(", ")
                ),
            );
            continue;
        };
        let path = format!("policy.{channel}");
        let policy = policies.get_mut(channel);
        if let Some(limit) = raw.monitor_limit {
            if *limit.get_ref() == 0 {
                sink.at_spanned(&limit, format!("`{path}.monitor_limit` must be at least 1"));
            }
            policy.monitor_limit = limit.into_inner();
        }
        if let Some(tell) = raw.tell_agent_on_monitor {
            policy.tell_agent_on_monitor = tell;
        }
        if let Some(transfer) = raw.transfer {
            policy.transfer = transfer;
        }
        if let Some(units) = raw.capacity_units {
            if *units.get_ref() == 0 {
                sink.at_spanned(
                    &units,
                    format!("`{path}.capacity_units` must be at least 1"),
                );
            }
            policy.capacity_units = units.into_inner();
        }
        if let Some(wrap) = raw.wrap_up_capacity {
            policy.wrap_up_capacity = match wrap.get_ref().as_str() {
                "always" => WrapUpCapacity::Always,
                "never" => WrapUpCapacity::Never,
                text => match humantime::parse_duration(text) {
                    Ok(hold) => WrapUpCapacity::For(millis(hold)),
                    Err(_) => {
                        sink.at_spanned(
                            &wrap,
                            format!("`{path}.wrap_up_capacity` must be \"always\", \"never\" or a duration such as \"2m\", not {text:?}"),
                        );
                        continue;
                    }
                },
            };
        }
        if let Some(timeout) = raw.inactivity_timeout {
            policy.inactivity_timeout = if timeout.get_ref() == "none" {
                None
            } else {
                duration(sink, Some(&timeout), &format!("{path}.inactivity_timeout")).map(millis)
            };
        }
    }
    policies
}

fn teams(sink: &mut Problems<'_>, raw: Vec<raw::Team>) -> Vec<Team> {
    let mut seen = HashSet::new();
    let mut teams = Vec::new();
    for team in raw {
        let id = team.id.get_ref().trim_start_matches('/').to_owned();
        if !valid_id(&id) {
            sink.at_spanned(
                &team.id,
                format!(
                    "team id {:?} must be letters, digits, `-`, `_` or `.`",
                    team.id.get_ref()
                ),
            );
            continue;
        }
        if !seen.insert(id.clone()) {
            sink.at_spanned(&team.id, format!("team `{id}` is defined twice"));
            continue;
        }
        let groups = match team.groups {
            None => vec![format!("/{id}").into(), id.as_str().into()],
            Some(groups) => groups
                .iter()
                .filter_map(|group| {
                    let path = group.get_ref().trim_end_matches('/');
                    if path.is_empty() || path.contains("//") {
                        sink.at_spanned(
                            group,
                            format!("group {:?} is not a group path or name", group.get_ref()),
                        );
                        return None;
                    }
                    Some(path.into())
                })
                .collect(),
        };
        teams.push(Team {
            name: team.name.unwrap_or_else(|| id.clone()).into(),
            id: id.as_str().into(),
            groups,
        });
    }
    teams
}

fn queues(sink: &mut Problems<'_>, raw: Vec<raw::Queue>, teams: &HashSet<&str>) -> Vec<Queue> {
    let mut seen = HashSet::new();
    let mut queues = Vec::new();
    for queue in raw {
        let id = queue.id.get_ref().clone();
        if !valid_id(&id) {
            sink.at_spanned(
                &queue.id,
                format!("queue id {id:?} must be letters, digits, `-`, `_` or `.`"),
            );
            continue;
        }
        if !seen.insert(id.clone()) {
            sink.at_spanned(&queue.id, format!("queue `{id}` is defined twice"));
        }
        let team = queue.team.get_ref().trim_start_matches('/');
        if !teams.contains(team) {
            sink.at_spanned(
                &queue.team,
                format!("queue `{id}` names unknown team `{team}`"),
            );
        }
        let allowed_presences = match queue.allowed_presences {
            None => vec![Presence::Available, Presence::Busy],
            Some(list) => list
                .iter()
                .filter_map(|name| presence(sink, name))
                .collect(),
        };
        queues.push(Queue {
            name: queue.name.unwrap_or_else(|| id.clone()).into(),
            id: id.as_str().into(),
            team: TeamId::from(team),
            allowed_presences,
        });
    }
    queues
}

fn agents(
    sink: &mut Problems<'_>,
    raw: Vec<raw::Agent>,
    teams: &HashSet<&str>,
    queues: &HashSet<&str>,
) -> Vec<Agent> {
    let mut seen = HashSet::new();
    let mut agents = Vec::new();
    for agent in raw {
        let id = agent.id.get_ref().clone();
        if !valid_id(&id) {
            sink.at_spanned(
                &agent.id,
                format!("agent id {id:?} must be letters, digits, `-`, `_` or `.`"),
            );
            continue;
        }
        if !seen.insert(id.clone()) {
            sink.at_spanned(&agent.id, format!("agent `{id}` is defined twice"));
        }
        for queue in &agent.queues {
            if !queues.contains(queue.get_ref().as_str()) {
                sink.at_spanned(
                    queue,
                    format!("agent `{id}` names unknown queue `{}`", queue.get_ref()),
                );
            }
        }
        for team in &agent.teams {
            if !teams.contains(team.get_ref().trim_start_matches('/')) {
                sink.at_spanned(
                    team,
                    format!("agent `{id}` names unknown team `{}`", team.get_ref()),
                );
            }
        }
        let presence = agent
            .presence
            .as_ref()
            .map_or(Some(Presence::Offline), |name| presence(sink, name))
            .unwrap_or(Presence::Offline);
        agents.push(Agent {
            name: agent.name.unwrap_or_else(|| id.clone()).into(),
            id: id.as_str().into(),
            presence,
            capacity: agent.capacity.unwrap_or(DEFAULT_AGENT_CAPACITY),
            used: 0,
            elsewhere: 0,
            queues: agent
                .queues
                .iter()
                .map(|queue| QueueId::from(queue.get_ref().as_str()))
                .collect(),
            teams: agent
                .teams
                .iter()
                .map(|team| TeamId::from(team.get_ref().trim_start_matches('/')))
                .collect(),
            bot: agent.bot,
        });
    }
    agents
}

fn supervisors(
    sink: &mut Problems<'_>,
    raw: Vec<raw::Supervisor>,
    teams: &HashSet<&str>,
) -> Vec<SupervisorConfig> {
    raw.into_iter()
        .map(|supervisor| {
            for team in &supervisor.teams {
                if !teams.contains(team.get_ref().trim_start_matches('/')) {
                    sink.at_spanned(
                        team,
                        format!(
                            "supervisor `{}` names unknown team `{}`",
                            supervisor.id.get_ref(),
                            team.get_ref()
                        ),
                    );
                }
            }
            let id = supervisor.id.into_inner();
            SupervisorConfig {
                name: supervisor.name.unwrap_or_else(|| id.clone()),
                id,
                teams: supervisor
                    .teams
                    .into_iter()
                    .map(|team| team.into_inner().trim_start_matches('/').to_owned())
                    .collect(),
            }
        })
        .collect()
}

fn plugins(
    sink: &mut Problems<'_>,
    raw: Vec<(Spanned<String>, raw::Plugin)>,
    queues: &HashSet<&str>,
) -> Vec<PluginConfig> {
    let base = sink.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut plugins = Vec::new();
    for (id, plugin) in raw {
        // Handed to the plugin verbatim; serializing a parsed table cannot fail.
        let settings = toml::to_string(&plugin.config).unwrap_or_default();
        let name = id.get_ref().clone();
        if !valid_id(&name) || name == "canonical" {
            sink.at_spanned(
                &id,
                format!(
                    "plugin id {name:?} must be letters, digits, `-` or `_`, and not `canonical`"
                ),
            );
        }
        if !queues.contains(plugin.default_queue.get_ref().as_str()) {
            sink.at_spanned(
                &plugin.default_queue,
                format!(
                    "plugin `{name}` names unknown default queue `{}`",
                    plugin.default_queue.get_ref()
                ),
            );
        }
        let path = format!("plugins.{name}");
        let memory_limit = match &plugin.memory_limit {
            None => DEFAULT_MEMORY_LIMIT,
            Some(limit) => bytes(limit.get_ref()).unwrap_or_else(|| {
                sink.at_spanned(
                    limit,
                    format!(
                        "`{path}.memory_limit` must be a size such as \"64MiB\", not {:?}",
                        limit.get_ref()
                    ),
                );
                DEFAULT_MEMORY_LIMIT
            }),
        };
        let time_limit = duration(
            sink,
            plugin.time_limit.as_ref(),
            &format!("{path}.time_limit"),
        )
        .unwrap_or(DEFAULT_TIME_LIMIT);
        let file = base.join(plugin.file.get_ref());
        if plugin.enabled.unwrap_or(true) {
            sink.names_file(format!("{path}.file"), plugin.file.span(), file.clone());
        }
        let public_url = plugin.public_url.and_then(|url| {
            let text = url.get_ref();
            let absolute = (text.starts_with("https://") || text.starts_with("http://"))
                && text.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
            if absolute && !text.contains('#') {
                Some(url.into_inner())
            } else {
                sink.at_spanned(
                    &url,
                    format!(
                        "`{path}.public_url` must be an absolute http(s) URL without a fragment, such as \"https://hooks.example.com/webhooks/{name}\", not {text:?}"
                    ),
                );
                None
            }
        });
        for name in plugin.secrets.keys() {
            if !valid_id(name) {
                sink.whole(format!(
                    "`{path}.secrets.{name}`: a secret's name is letters, digits, `-` or `_` (plugins write it as {{{{secret:NAME}}}})"
                ));
            }
        }
        let allowed_hosts = match &plugin.allowed_hosts {
            Some(listed) => listed
                .iter()
                .filter_map(|host| {
                    let text = host.get_ref().trim().to_ascii_lowercase();
                    let valid = !text.is_empty()
                        && !text.contains(['/', '@', '?', '#', ' '])
                        && url_authority(&format!("http://{text}")).as_deref() == Some(text.as_str());
                    if valid {
                        Some(text)
                    } else {
                        sink.at_spanned(
                            host,
                            format!(
                                "`{path}.allowed_hosts`: {:?} is not a host or host:port (such as \"graph.facebook.com\" or \"127.0.0.1:9000\")",
                                host.get_ref()
                            ),
                        );
                        None
                    }
                })
                .collect(),
            None => {
                let mut hosts = Vec::new();
                url_setting_hosts(&plugin.config, &mut hosts);
                // The token endpoint, too.
                if let Some(host) = plugin
                    .oauth
                    .as_ref()
                    .and_then(|oauth| url_authority(oauth.token_url.get_ref()))
                    && !hosts.contains(&host)
                {
                    hosts.push(host);
                }
                hosts
            }
        };
        let oauth = plugin.oauth.map(|oauth| {
            if url_authority(oauth.token_url.get_ref()).is_none() {
                sink.at_spanned(
                    &oauth.token_url,
                    format!("`{path}.oauth.token_url` must be an http(s) URL"),
                );
            }
            OAuthConfig {
                token_url: oauth.token_url.into_inner(),
                client_id: oauth.client_id,
                client_secret: Secret::new(oauth.client_secret),
                scope: oauth.scope,
            }
        });
        let setting = |key: &str| {
            plugin
                .config
                .get(key)
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
        };
        let ari_events = match (setting("ari_url"), setting("application")) {
            (Some(url), Some(application)) => Some(AriEvents {
                url,
                application,
                user: setting("ari_user"),
            }),
            _ => None,
        };
        let rate_limit = plugin.rate_limit.and_then(|limit| {
            if *limit.get_ref() == 0 {
                sink.at_spanned(
                    &limit,
                    format!("`{path}.rate_limit` must be at least 1 request per second"),
                );
                None
            } else {
                Some(limit.into_inner())
            }
        });
        plugins.push(PluginConfig {
            rate_limit,
            oauth,
            ari_events,
            allowed_hosts,
            allowed_hosts_listed: plugin.allowed_hosts.is_some(),
            secrets: plugin
                .secrets
                .into_iter()
                .map(|(name, value)| (name, Secret::new(value)))
                .collect(),
            public_url,
            allow_unsigned: plugin.allow_unsigned.unwrap_or(false),
            file,
            default_queue: plugin.default_queue.get_ref().as_str().into(),
            enabled: plugin.enabled.unwrap_or(true),
            memory_limit,
            time_limit,
            settings: Secret::new(settings),
            id: name,
        });
    }
    plugins
}

fn required<T>(sink: &mut Problems<'_>, value: Option<Spanned<T>>, key: &str) -> Option<T> {
    match value {
        Some(value) => Some(value.into_inner()),
        None => {
            sink.whole(format!("`{key}` is required"));
            None
        }
    }
}

fn duration(
    sink: &mut Problems<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
) -> Option<Duration> {
    let value = value?;
    match humantime::parse_duration(value.get_ref()) {
        Ok(duration) => Some(duration),
        Err(_) => {
            sink.at_spanned(
                value,
                format!(
                    "`{key}` must be a duration such as \"10s\", \"5m\" or \"2h\", not {:?}",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

fn presence(sink: &mut Problems<'_>, name: &Spanned<String>) -> Option<Presence> {
    let parsed = Presence::parse(name.get_ref());
    if parsed.is_none() {
        let known: Vec<&str> = Presence::ALL
            .iter()
            .map(|presence| presence.as_str())
            .collect();
        sink.at_spanned(
            name,
            format!(
                "unknown presence {:?} (known: {})",
                name.get_ref(),
                known.join(", ")
            ),
        );
    }
    parsed
}

/// `64MiB`, `512KiB`, `1GiB` or a plain byte count.
pub(super) fn bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let number: u64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// Ids appear in URLs, routing keys and headers: keep them plain.
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
