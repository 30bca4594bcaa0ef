//! The webhook door, the flow's provider entry (README, "The webhook door"): a second
//! listener, `server.webhook_listen`, serving `POST` and `GET /webhooks/{plugin}` and nothing
//! else, so that it can face the internet while the admin API stays private.
//!
//! The provider's own signature is its authentication (checked by the plugin's `decode`); a
//! plugin whose configuration holds no signature secret is refused unless it is allowed
//! unsigned. Layers, outermost first: request head limits -> per-address and per-plugin rate
//! limits -> body limit -> timeout -> handler. Embedded, a webhook becomes an inbound message
//! for the single writer exactly as `POST /v1/inbound/{plugin}` does and is answered after the
//! commit; with RabbitMQ the plugin decodes it here and it is answered once the broker
//! confirmed the raw payload into the inbound exchange. Either way the answer is the one the
//! plugin decides (`webhook.acknowledge`), and a provider's retry after a lost answer is
//! deduplicated by the provider's event ids.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::problem::Problem;
use super::{RateLimiter, framework_problems, head_limits, too_many};
use crate::config::{PluginConfig, ServerConfig};
use crate::metrics::family;
use crate::pipeline::{Completion, Disposition, Submission};
use crate::plugin::{CallError, FailureKind, InboundRequest, Plugin, WebhookAnswer};
use crate::service::{Service, SubmitError};
use crate::transport::InboundMessage;
use crate::transport::amqp::InboundPublisher;

/// The header through which a gateway tells `/v1/inbound` the URL the provider called; on the
/// door the daemon says it itself, and a provider's (or an attacker's) copy is dropped.
const URL_HEADER: &str = "switchboard-url";

/// How long a provider is asked to wait when the plugin or the store cannot take its webhook.
const RETRY_AFTER_SECONDS: u64 = 5;

/// What the door knows of one plugin beyond the plugin itself.
#[derive(Clone, Debug)]
struct DoorPlugin {
    public_url: Option<String>,
    allow_unsigned: bool,
}

/// Everything the door's handlers share.
#[derive(Debug)]
pub struct DoorContext {
    service: Arc<Service>,
    plugins: HashMap<String, DoorPlugin>,
    /// The door's own address: the request's URL when neither `public_url` nor a trusted
    /// proxy says otherwise.
    listen: SocketAddr,
    body_limit: usize,
    request_timeout: Duration,
    trust_forwarded: bool,
    per_address: RateLimiter,
    per_plugin: RateLimiter,
    /// With a broker: where taken webhooks go (answered after its confirm).
    broker: Option<Arc<InboundPublisher>>,
}

impl DoorContext {
    pub fn new(
        service: Arc<Service>,
        server: &ServerConfig,
        listen: SocketAddr,
        plugins: &[PluginConfig],
    ) -> Self {
        for plugin in service.plugins() {
            let allowed = plugins
                .iter()
                .any(|config| config.id == plugin.id() && config.allow_unsigned);
            if !plugin.signed() && allowed {
                tracing::warn!(plugin = %plugin.id(), "the webhook door takes this plugin's webhooks unsigned (allow_unsigned): anyone who can reach the door can post them");
            }
        }
        Self {
            plugins: plugins
                .iter()
                .map(|plugin| {
                    (
                        plugin.id.clone(),
                        DoorPlugin {
                            public_url: plugin.public_url.clone(),
                            allow_unsigned: plugin.allow_unsigned,
                        },
                    )
                })
                .collect(),
            service,
            listen,
            body_limit: server.body_limit,
            request_timeout: server.request_timeout,
            trust_forwarded: server.trust_forwarded,
            per_address: RateLimiter::new(server.webhook_rate_limit),
            per_plugin: RateLimiter::new(server.webhook_plugin_rate_limit),
            broker: None,
        }
    }

    /// With RabbitMQ: a webhook the plugin takes is published into the inbound exchange and
    /// answered once the broker confirmed it, instead of being committed here.
    pub fn with_broker(mut self, broker: Option<Arc<InboundPublisher>>) -> Self {
        self.broker = broker;
        self
    }
}

type Shared = Arc<DoorContext>;

/// The door as one router (served by [`serve`], driven in-process by the tests).
pub fn router(context: DoorContext) -> Router {
    let context = Arc::new(context);
    Router::new()
        .route("/webhooks/{plugin}", get(handshake).post(webhook))
        .layer(middleware::from_fn_with_state(context.clone(), timeout))
        .layer(DefaultBodyLimit::max(context.body_limit))
        .layer(middleware::from_fn_with_state(context.clone(), rate_limit))
        .fallback(|| async { no_route() })
        .layer(middleware::from_fn(framework_problems))
        .layer(middleware::from_fn(head_limits))
        .with_state(context)
}

/// Serves the door on `listener` until `stop` is cancelled; requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    context: DoorContext,
    stop: CancellationToken,
) -> std::io::Result<()> {
    super::serve_router(listener, router(context), stop).await
}

/// Per client address, then per plugin: a flood from one address stops at its own limit,
/// and many addresses together at the plugin's.
async fn rate_limit(State(context): State<Shared>, request: Request, next: Next) -> Response {
    let client = super::client_address(context.trust_forwarded, &request);
    let plugin = request
        .uri()
        .path()
        .strip_prefix("/webhooks/")
        .unwrap_or_default()
        .to_owned();
    let limited = context
        .per_address
        .check(&client)
        .map_err(|wait| (wait, "too many webhooks from this address"))
        .and_then(|()| {
            context
                .per_plugin
                .check(&plugin)
                .map_err(|wait| (wait, "too many webhooks for this plugin"))
        });
    match limited {
        Ok(()) => next.run(request).await,
        Err((retry_after, detail)) => {
            if context.plugins.contains_key(&plugin) {
                count(&context, &plugin, "rate-limited");
            }
            too_many(retry_after, detail)
        }
    }
}

async fn timeout(State(context): State<Shared>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(context.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(
            "timeout",
            "the webhook could not be handled in time; send it again",
            RETRY_AFTER_SECONDS,
        )
        .into_response(),
    }
}

fn count(context: &DoorContext, plugin: &str, outcome: &str) {
    context
        .service
        .metrics()
        .count(family::WEBHOOK_REQUESTS_TOTAL, &[plugin, outcome], 1);
}

/// The configured, loaded plugin of that id; the same 404 for one that is not configured and
/// one that failed to load (the door tells the internet nothing about its configuration).
fn find(context: &DoorContext, plugin: &str) -> Option<(Arc<Plugin>, DoorPlugin)> {
    let door = context.plugins.get(plugin).cloned()?;
    let loaded = context
        .service
        .plugins()
        .iter()
        .find(|loaded| loaded.id() == plugin)
        .cloned()?;
    Some((loaded, door))
}

fn no_route() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "no-route", "no such route").into_response()
}

/// `GET /webhooks/{plugin}`: the provider's verification handshake, answered by the plugin.
async fn handshake(
    State(context): State<Shared>,
    Path(plugin): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Some((loaded, door)) = find(&context, &plugin) else {
        return no_route();
    };
    let request = InboundRequest {
        method: Method::GET.to_string(),
        url: request_url(&context, &door, &headers, &uri),
        headers: header_pairs(&headers),
        content_type: None,
        body: Vec::new(),
        received_at: crate::clock::now(),
    };
    match loaded.handshake(&request) {
        Ok(Some(answer)) => {
            count(&context, &plugin, "handshake");
            provider_answer(answer)
        }
        Ok(None) => Problem::new(
            StatusCode::NOT_FOUND,
            "no-handshake",
            "not a verification request this plugin answers",
        )
        .into_response(),
        Err(error) => {
            let (status, outcome) = match &error {
                CallError::Plugin {
                    kind: FailureKind::Unauthorized,
                    ..
                } => (StatusCode::FORBIDDEN, "unauthorized"),
                CallError::Plugin {
                    kind: FailureKind::InvalidPayload | FailureKind::Unsupported,
                    ..
                } => (StatusCode::BAD_REQUEST, "invalid"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            count(&context, &plugin, outcome);
            refusal(status, error.code(), &plugin, &error.to_string())
        }
    }
}

/// `POST /webhooks/{plugin}`: the provider's webhook, byte for byte, answered after the commit.
async fn webhook(
    State(context): State<Shared>,
    Path(plugin): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let Some((loaded, door)) = find(&context, &plugin) else {
        return no_route();
    };
    if !loaded.signed() && !door.allow_unsigned {
        count(&context, &plugin, "unsigned");
        return Problem::new(
            StatusCode::FORBIDDEN,
            "unsigned-plugin",
            "this plugin's configuration holds no signature secret, so the door cannot tell its provider from anyone else; configure the secret (or allow_unsigned for development)",
        )
        .into_response();
    }
    let url = request_url(&context, &door, &headers, &uri);
    let mut pairs = header_pairs(&headers);
    pairs.push((URL_HEADER.to_owned(), url.clone()));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let message = InboundMessage {
        ack: None,
        delivery_tag: 0,
        routing_key: plugin.clone(),
        content_type: content_type.clone(),
        message_id: None,
        redelivered: false,
        headers: pairs.clone(),
        body: body.to_vec(),
    };
    let request = || InboundRequest {
        method: Method::POST.to_string(),
        url: url.clone(),
        headers: pairs.clone(),
        content_type: content_type.clone(),
        body: body.to_vec(),
        received_at: crate::clock::now(),
    };
    if let Some(broker) = &context.broker {
        let response = through_broker(&context, &loaded, &plugin, broker, message, request()).await;
        context.service.metrics().observe_duration(
            family::WEBHOOK_ANSWER_SECONDS,
            &[&plugin],
            started.elapsed(),
        );
        return response;
    }
    let completion = context.service.submit(Submission::Inbound(message)).await;
    let response = match completion {
        Ok(Completion::Inbound(Disposition::Done {
            events, duplicates, ..
        })) => {
            let outcome = if events > 0 && duplicates == events {
                "duplicate"
            } else {
                "accepted"
            };
            acknowledge(&context, &loaded, &request(), false, outcome)
        }
        Ok(Completion::Inbound(Disposition::DeadLetter { code, detail })) => {
            dead_end(&context, &loaded, &plugin, &code, &detail, request)
        }
        Ok(Completion::Command(_)) => {
            Problem::internal(&"a webhook completed as a command").into_response()
        }
        Err(error @ (SubmitError::Stopping | SubmitError::Busy)) => {
            count(&context, &plugin, "unavailable");
            Problem::unavailable(
                if matches!(error, SubmitError::Busy) {
                    "busy"
                } else {
                    "stopping"
                },
                "the webhook cannot be taken now; send it again",
                RETRY_AFTER_SECONDS,
            )
            .into_response()
        }
        Err(error) => {
            count(&context, &plugin, "unavailable");
            tracing::error!(plugin = %plugin, error = %error, "a webhook could not be committed");
            Problem::unavailable(
                "store-unavailable",
                "the webhook could not be stored; send it again",
                RETRY_AFTER_SECONDS,
            )
            .into_response()
        }
    };
    context.service.metrics().observe_duration(
        family::WEBHOOK_ANSWER_SECONDS,
        &[&plugin],
        started.elapsed(),
    );
    response
}

/// With RabbitMQ: the plugin decodes here (its verdict decides the answer), and what it takes
/// goes into the inbound exchange, byte for byte, for whichever daemon consumes it; the answer
/// waits for the broker's confirm. What it ignores or refuses is not published.
async fn through_broker(
    context: &DoorContext,
    loaded: &Plugin,
    plugin: &str,
    broker: &InboundPublisher,
    message: InboundMessage,
    request: InboundRequest,
) -> Response {
    let decoded = if message.body.len() > context.body_limit {
        Err(("payload-too-large".to_owned(), String::new()))
    } else {
        loaded
            .decode(&request)
            .map_err(|error| (error.code().to_owned(), error.to_string()))
    };
    if let Err((code, detail)) = decoded {
        return dead_end(context, loaded, plugin, &code, &detail, || request.clone());
    }
    match broker.publish(&message).await {
        Ok(()) => acknowledge(context, loaded, &request, false, "accepted"),
        Err(error) => {
            count(context, plugin, "unavailable");
            tracing::warn!(plugin = %plugin, error = %error, "a webhook could not be handed to the broker");
            Problem::unavailable(
                "broker-unavailable",
                "the webhook could not be stored; send it again",
                RETRY_AFTER_SECONDS,
            )
            .into_response()
        }
    }
}

/// The plugin's answer to a webhook it took (or deliberately ignored).
fn acknowledge(
    context: &DoorContext,
    plugin: &Plugin,
    request: &InboundRequest,
    ignored: bool,
    outcome: &str,
) -> Response {
    count(context, plugin.id(), outcome);
    match plugin.acknowledge(request, ignored) {
        Ok(answer) => provider_answer(answer),
        // The events are committed: the provider must not send them again, whatever the
        // plugin's answer would have said.
        Err(error) => {
            tracing::warn!(plugin = %plugin.id(), error = %error, "the plugin's webhook answer failed; answering 200");
            StatusCode::OK.into_response()
        }
    }
}

/// The answer to a webhook the pipeline refused: ignored events are 2xx, a bad signature 401,
/// a malformed payload 400, a failing or overloaded plugin 503 with `Retry-After`.
fn dead_end(
    context: &DoorContext,
    loaded: &Plugin,
    plugin: &str,
    code: &str,
    detail: &str,
    request: impl FnOnce() -> InboundRequest,
) -> Response {
    let (status, outcome) = match code {
        "unsupported" => return acknowledge(context, loaded, &request(), true, "ignored"),
        "unauthorized" => (StatusCode::UNAUTHORIZED, "unauthorized"),
        "invalid-payload" => (StatusCode::BAD_REQUEST, "invalid"),
        "payload-too-large" => (StatusCode::PAYLOAD_TOO_LARGE, "invalid"),
        // A broken configuration, a trap, a timeout, the breaker: the payload may be fine,
        // and the provider's retry may find the plugin working again.
        code if code.starts_with("plugin-") => {
            count(context, plugin, "unavailable");
            tracing::warn!(plugin = %plugin, code = %code, "a webhook failed in its plugin; asking the provider to retry");
            return Problem::unavailable(
                code,
                "the webhook could not be handled now; send it again",
                RETRY_AFTER_SECONDS,
            )
            .into_response();
        }
        // Well-formed and authentic, refused by a rule (an unknown agent, a channel
        // mismatch): resending cannot change that.
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
    };
    count(context, plugin, outcome);
    refusal(status, code, plugin, detail)
}

/// An error answer: its code and a short detail, never the payload.
fn refusal(status: StatusCode, code: &str, plugin: &str, detail: &str) -> Response {
    tracing::info!(plugin = %plugin, code = %code, detail = %crate::telemetry::content(detail), "webhook refused");
    let detail = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            "the request is not signed as this plugin's provider signs it"
        }
        StatusCode::BAD_REQUEST => "the payload is not in this provider's format",
        StatusCode::PAYLOAD_TOO_LARGE => "the payload is larger than the door takes",
        _ => "the webhook was refused",
    };
    Problem::new(status, code, detail).into_response()
}

/// Headers a plugin's answer may not set: the connection's own, and cookies.
const REFUSED_ANSWER_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn provider_answer(answer: WebhookAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|status| !status.is_informational())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, Body::from(answer.body)).into_response();
    for (name, value) in answer.headers {
        if REFUSED_ANSWER_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The request's headers for the plugin, lowercase, without the daemon's own URL header.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str() != URL_HEADER)
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// The URL the provider called, which signatures such as Twilio's cover: the plugin's
/// `public_url` (with the request's query), else with `server.trust_forwarded` the proxy's
/// `X-Forwarded-Proto` / `X-Forwarded-Host`, else the door's own address. The `Host` header
/// is used only when it names the door's own address (an attacker may send any `Host`).
fn request_url(context: &DoorContext, door: &DoorPlugin, headers: &HeaderMap, uri: &Uri) -> String {
    let query = uri.query();
    if let Some(public) = &door.public_url {
        return match query {
            Some(query) if !public.contains('?') => format!("{public}?{query}"),
            _ => public.clone(),
        };
    }
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let last = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .rfind(|entry| !entry.is_empty())
            .map(str::to_owned)
    };
    if context.trust_forwarded
        && let Some(host) = last("x-forwarded-host")
    {
        let scheme = last("x-forwarded-proto").unwrap_or_else(|| "https".to_owned());
        return format!("{scheme}://{host}{path}");
    }
    let own = own_authority(context.listen);
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| names_the_door(host, context.listen))
        .map_or(own, str::to_owned);
    format!("http://{host}{path}")
}

/// `ip:port` of the door, with an unspecified listen address (`0.0.0.0`) read as loopback.
fn own_authority(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    };
    SocketAddr::new(ip, listen.port()).to_string()
}

/// Whether a `Host` header names the door itself: its own address, or `localhost` with its
/// port when it listens on loopback.
fn names_the_door(host: &str, listen: SocketAddr) -> bool {
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(listen.port()) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    match name.parse::<IpAddr>() {
        Ok(ip) => ip == listen.ip() || (ip.is_loopback() && listen.ip().is_loopback()),
        Err(_) => name.eq_ignore_ascii_case("localhost") && listen.ip().is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_that_names_the_door_is_taken() {
        let door: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert!(names_the_door("127.0.0.1:8081", door));
        assert!(names_the_door("localhost:8081", door));
        assert!(names_the_door("[::1]:8081", door));
        assert!(!names_the_door("evil.example:8081", door));
        assert!(!names_the_door("127.0.0.1:9999", door));
        assert!(!names_the_door("127.0.0.1", door));
        let public: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        assert!(!names_the_door("localhost:8081", public));
        assert_eq!(own_authority(public), "127.0.0.1:8081");
    }

    #[test]
    fn an_answer_cannot_set_cookies_or_framing() {
        let response = provider_answer(WebhookAnswer {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/xml".into()),
                ("set-cookie".into(), "a=b".into()),
                ("transfer-encoding".into(), "chunked".into()),
            ],
            body: b"<Response/>".to_vec(),
        });
        assert_eq!(response.headers()["content-type"], "text/xml");
        assert!(response.headers().get("set-cookie").is_none());
        assert!(response.headers().get("transfer-encoding").is_none());
    }
}
