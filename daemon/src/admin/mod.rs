//! The admin HTTP API (README, "Admin API"), the flow's second front door: supervisors' reads and
//! commands, `POST /v1/inbound/{plugin}` (the embedded transport's entry), the live stream,
//! the operations endpoints and the supervisor console's files. The only axum importer.
//!
//! Layers, outermost first: request metrics and the server's clock -> CORS (listed origins
//! only) -> request-head limits -> framework errors as problem+json -> (for `/v1`)
//! authentication (a bearer token, or a stream ticket) -> per-caller rate limit -> timeout
//! (not on the stream) -> body limit -> handler. Handlers turn HTTP into engine commands, hand them to the single writer
//! ([`Service::submit`]) and answer once the commit is durable.

pub mod api;
pub mod auth;
mod console;
mod cors;
pub mod door;
mod listener;
mod openapi;
mod pages;
pub mod problem;
mod query;
mod routes;
mod sse;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use self::auth::{Authenticator, KeyError, TokenExpiry, TokenRequest, mint};
use self::listener::{ClientAddr, ProblemListener};
use self::problem::Problem;
use crate::config::ServerConfig;
use crate::engine::Actor;
use crate::metrics::family;
use crate::service::Service;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AdminContext {
    pub service: Arc<Service>,
    pub auth: Authenticator,
    pub body_limit: usize,
    pub request_timeout: Duration,
    rate: RateLimiter,
    /// Requests without a valid token, per client address.
    unauthenticated: RateLimiter,
    trust_forwarded: bool,
    /// The configuration file, read again by a plugin reload (settings and secrets).
    config_file: Option<std::path::PathBuf>,
    /// The delivery worker's dead deliveries.
    dead_letters: Arc<crate::delivery::dead::DeadLetters>,
    /// Walks through paged lists in progress.
    snapshots: pages::Snapshots,
    /// Stream tickets issued and not yet used.
    tickets: sse::Tickets,
    /// How far back the report reaches.
    report_window: Duration,
    /// The console's settings (served to it as `/console/config.json`).
    console: crate::config::ConsoleConfig,
    /// Whether `switchboard token` tokens work (an HS256 secret is configured): the console
    /// then offers its development sign-in.
    development_sign_in: bool,
    /// Browser origins allowed to call the API (CORS).
    cors_origins: Vec<HeaderValue>,
}

impl AdminContext {
    pub fn new(service: Arc<Service>, auth: Authenticator, server: &ServerConfig) -> Self {
        Self {
            auth,
            body_limit: server.body_limit,
            request_timeout: server.request_timeout,
            rate: RateLimiter::new(server.rate_limit),
            unauthenticated: RateLimiter::new(server.unauthenticated_rate_limit),
            trust_forwarded: server.trust_forwarded,
            dead_letters: Arc::new(crate::delivery::dead::DeadLetters::in_store(
                service.clone(),
            )),
            service,
            config_file: None,
            snapshots: pages::Snapshots::default(),
            tickets: sse::Tickets::default(),
            report_window: Duration::from_secs(24 * 3600),
            console: crate::config::ConsoleConfig::default(),
            development_sign_in: false,
            cors_origins: server
                .cors_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok())
                .collect(),
        }
    }

    /// What frontends see: the report window, the console's settings, and whether the
    /// development sign-in is offered.
    pub fn with_frontend(
        mut self,
        report_window: Duration,
        console: crate::config::ConsoleConfig,
        development_sign_in: bool,
    ) -> Self {
        self.report_window = report_window;
        self.console = console;
        self.development_sign_in = development_sign_in;
        self
    }

    /// Reloads read the plugin's settings and secrets again from `file` (the daemon's own
    /// configuration file; without it a reload keeps the settings it started with).
    pub fn with_config_file(mut self, file: std::path::PathBuf) -> Self {
        self.config_file = Some(file);
        self
    }

    /// Where the dead deliveries are (default: the store's, as on the embedded transport).
    pub fn with_dead_letters(mut self, dead: Arc<crate::delivery::dead::DeadLetters>) -> Self {
        self.dead_letters = dead;
        self
    }
}

type Shared = Arc<AdminContext>;

/// The whole API as one router (served by `app.rs`, driven in-process by the tests).
pub fn router(context: AdminContext) -> Router {
    let context = Arc::new(context);
    let (v1, _) = routes::v1().split_for_parts();
    let (stream, _) = sse::routes().split_for_parts();
    let (operations, _) = routes::operations().split_for_parts();
    let console = if context.console.enabled {
        console::routes()
    } else {
        Router::new()
    };
    let limited = v1
        .layer(DefaultBodyLimit::max(context.body_limit))
        .layer(middleware::from_fn_with_state(context.clone(), timeout));
    let v1 = limited
        .merge(stream)
        .layer(middleware::from_fn_with_state(context.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(
            context.clone(),
            authenticate,
        ));
    Router::new()
        .merge(operations)
        .merge(v1)
        .merge(console)
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no-route", "no such route") })
        .layer(middleware::from_fn(framework_problems))
        .layer(middleware::from_fn(head_limits))
        .layer(middleware::from_fn_with_state(context.clone(), cors::layer))
        .layer(middleware::from_fn_with_state(context.clone(), observe))
        .with_state(context)
}

/// Serves the API on `listener` until `stop` is cancelled; requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    context: AdminContext,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_router(listener, router(context), stop).await
}

/// Serves `router` on `listener` (client addresses known, parse errors as problem+json) until
/// `stop` is cancelled; requests in flight finish. The admin API's and the door's.
async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = router.into_make_service_with_connect_info::<ClientAddr>();
    axum::serve(ProblemListener::new(listener), router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// The response header carrying the server's clock.
const SERVER_TIME: header::HeaderName = header::HeaderName::from_static("switchboard-server-time");

/// Request metrics and a log line per request (method, route template, status, duration —
/// never headers, so never a token).
async fn observe(State(context): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let mut response = next.run(request).await;
    // The server's clock on every answer (milliseconds; `Date` has only seconds), so that a
    // frontend's ticking timers follow it rather than the browser's.
    if let Ok(now) = HeaderValue::from_str(&crate::clock::now().rfc3339()) {
        response.headers_mut().insert(SERVER_TIME, now);
    }
    let status = response.status();
    let metrics = context.service.metrics();
    metrics.count(
        family::HTTP_REQUESTS_TOTAL,
        &[&route, &method, status.as_str()],
        1,
    );
    metrics.observe_duration(family::HTTP_REQUEST_SECONDS, &[&route], started.elapsed());
    tracing::debug!(method = %method, route = %route, status = status.as_u16(), elapsed = ?started.elapsed(), "request");
    response
}

/// The largest request head (all header names and values) and URI the API takes; hyper's own
/// limits, far above these, answer before this runs (see `listener`).
const MAX_HEADER_BYTES: usize = 32 * 1024;
const MAX_URI_BYTES: usize = 8 * 1024;

/// Refuses oversized request heads before anything reads them: 431 and 414, as problem+json.
async fn head_limits(request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |path| path.as_str().len());
    if uri > MAX_URI_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!("the request's URI is {uri} bytes; at most {MAX_URI_BYTES} are taken"),
        )
        .into_response();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!(
                "the request's headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are taken"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// The framework's own errors (unknown route, wrong method, malformed JSON, body too large,
/// wrong content type) as problem+json like every other error.
async fn framework_problems(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "no-route",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let detail = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut problem = Problem::new(status, code, detail).into_response();
    // Keep what the framework said beyond the body (`Allow` on 405).
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}

/// Verifies the bearer token and puts the caller's [`Actor`] and the token's expiry into the
/// request. Requests without a valid token are limited per client address, and a client over
/// its limit is answered 429 before its token is even checked (verifying costs CPU).
async fn authenticate(State(context): State<Shared>, mut request: Request, next: Next) -> Response {
    let client = client_address(context.trust_forwarded, &request);
    if let Err(retry_after) = context.unauthenticated.peek(&client) {
        return too_many(
            retry_after,
            "too many requests without a valid token from this address",
        );
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    // A browser's EventSource cannot send the header: the stream also opens with a ticket.
    if authorization.is_none()
        && request.uri().path() == "/v1/stream"
        && let Some(ticket) = stream_ticket(request.uri())
    {
        return match context.tickets.redeem(&ticket) {
            Some((actor, expiry)) => {
                request.extensions_mut().insert(actor);
                request.extensions_mut().insert(expiry);
                next.run(request).await
            }
            None => {
                let _ = context.unauthenticated.check(&client);
                Problem::unauthorized("the stream ticket is unknown, used or expired")
                    .into_response()
            }
        };
    }
    match context.auth.authenticate(authorization) {
        Ok((actor, expiry)) => {
            context
                .service
                .attendance()
                .heard_from(actor.id.as_str(), crate::clock::now());
            request.extensions_mut().insert(actor);
            request.extensions_mut().insert(expiry);
            next.run(request).await
        }
        Err(problem) => {
            let _ = context.unauthenticated.check(&client);
            problem.into_response()
        }
    }
}

/// The `ticket` query parameter, if any.
fn stream_ticket(uri: &axum::http::Uri) -> Option<String> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .into_iter()
        .find(|(key, _)| key == "ticket")
        .map(|(_, value)| value)
}

/// Who is calling, by address: the connection's peer, or with `server.trust_forwarded` the
/// address the trusted proxy appended last to `X-Forwarded-For` (earlier entries are the
/// client's own word and can be forged).
fn client_address(trust_forwarded: bool, request: &Request) -> String {
    if trust_forwarded
        && let Some(forwarded) = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .rfind(|entry| !entry.is_empty())
    {
        return forwarded.to_owned();
    }
    request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map_or_else(String::new, |ConnectInfo(ClientAddr(address))| {
            address.ip().to_string()
        })
}

fn too_many(retry_after: u64, detail: &str) -> Response {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
        .retry_after(retry_after)
        .into_response()
}

/// A per-caller token bucket (keyed by the token's subject): `rate` requests per second,
/// bursts up to `rate`.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<Box<str>, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `caller` has a token left, without taking it: `Err(seconds)` to wait.
    fn peek(&self, caller: &str) -> Result<(), u64> {
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match buckets.get(caller) {
            Some(bucket) => {
                let tokens =
                    (bucket.tokens + bucket.at.elapsed().as_secs_f64() * self.rate).min(self.rate);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(((1.0 - tokens) / self.rate).ceil().max(1.0) as u64)
                }
            }
            None => Ok(()),
        }
    }

    /// `Ok` to go ahead, or `Err(seconds)` to wait.
    fn check(&self, caller: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if buckets.len() > 100_000 {
            // Forget idle callers (full buckets) so that the map stays bounded.
            let rate = self.rate;
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate < rate
            });
        }
        let bucket = buckets.entry(caller.into()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

async fn rate_limit(State(context): State<Shared>, request: Request, next: Next) -> Response {
    let caller = request
        .extensions()
        .get::<Actor>()
        .map(|actor| actor.id.as_str().to_owned())
        .unwrap_or_default();
    match context.rate.check(&caller) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => too_many(retry_after, "too many requests from this caller; slow down"),
    }
}

async fn timeout(State(context): State<Shared>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(context.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(
            "timeout",
            format!(
                "the request took longer than {:?}; if it was a command it may still have been applied (retry with the same Idempotency-Key)",
                context.request_timeout
            ),
            1,
        )
        .into_response(),
    }
}

/// A JSON answer with a status.
fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, Body::from(body)).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => Problem::internal(&error).into_response(),
    }
}
