//! The supervisor console (`/console/`, README "The supervisor console"): plain HTML, CSS and ES
//! modules from `daemon/console/`, embedded in the binary at build time (no Node, npm or bundler),
//! served without a token (they hold no data: the page signs in and calls `/v1` with its own
//! token), under a strict Content-Security-Policy: scripts and styles only from this origin, no
//! inline script, network only to this origin and the configured OpenID provider, no framing.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;

use super::Shared;
use super::problem::Problem;

/// The console's files: name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "auth.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/auth.js"),
    ),
    (
        "stream.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/stream.js"),
    ),
    (
        "table.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/table.js"),
    ),
    (
        "detail.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/detail.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/dom.js"),
    ),
];

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(index))
        .route("/console/config.json", get(settings))
        .route("/console/{file}", get(file))
}

/// What the page needs to know before it signs in.
#[derive(Serialize)]
struct Settings<'a> {
    oidc_issuer: Option<&'a str>,
    client_id: &'a str,
    scope: &'a str,
    /// `switchboard token` tokens are accepted (an HS256 secret is configured).
    development_sign_in: bool,
    attention_wait_seconds: u64,
    attention_sentiment: f32,
    report_window_seconds: u64,
}

async fn settings(State(context): State<Shared>) -> Response {
    let console = &context.console;
    let settings = Settings {
        oidc_issuer: console.oidc_issuer.as_deref(),
        client_id: &console.client_id,
        scope: &console.scope,
        development_sign_in: context.development_sign_in,
        attention_wait_seconds: console.attention_wait.as_secs(),
        attention_sentiment: console.attention_sentiment,
        report_window_seconds: context.report_window.as_secs(),
    };
    let mut response = super::json(StatusCode::OK, &settings);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn index(state: State<Shared>) -> Response {
    file(state, Path("index.html".to_owned())).await
}

async fn file(State(context): State<Shared>, Path(name): Path<String>) -> Response {
    let Some((_, content_type, bytes)) = FILES.iter().find(|(file, _, _)| *file == name) else {
        return Problem::new(StatusCode::NOT_FOUND, "no-route", "no such console file")
            .into_response();
    };
    let mut response = (*bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Embedded files change only with the binary; revalidating is cheap on loopback and keeps
    // an upgraded daemon from serving yesterday's script next to today's API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(policy) = HeaderValue::from_str(&content_security_policy(
        context.console.oidc_issuer.as_deref(),
    )) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// Scripts, styles and connections from this origin only (plus the OpenID provider's
/// origin, for discovery and the token endpoint); nothing inline, nothing framed.
fn content_security_policy(issuer: Option<&str>) -> String {
    let provider = issuer.and_then(origin_of).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {provider}; form-action 'self' {provider}; base-uri 'none'; \
         frame-ancestors 'none'"
    )
}

/// `https://host:port` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    (!host.is_empty() && !host.contains([' ', ';', '\'', '"']))
        .then(|| format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_only_this_origin_and_the_provider() {
        let policy = content_security_policy(Some("https://sso.example.com/realms/acme"));
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(
            policy.contains("connect-src 'self' https://sso.example.com;"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
        let without = content_security_policy(None);
        assert!(without.contains("connect-src 'self' ;"), "{without}");
        assert_eq!(origin_of("https://a;b/x"), None);
    }
}
