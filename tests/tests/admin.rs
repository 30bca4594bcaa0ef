//! The admin API through its router, in-process (`tower::ServiceExt::oneshot`), over the
//! shipped configuration, the real plugins and a real store: every route, refusal codes as
//! problem+json, the team-scoping matrix (a supervisor of one team never sees or changes
//! another team's conversation, through any route or the stream), token validation (expired,
//! not yet valid, wrongly signed, `alg: none`, wrong issuer or audience, string-typed
//! `exp`/`nbf`, RS256 by PEM and JWKS), idempotency, limits and framework errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard::admin::{self, AdminContext, Authenticator, TokenRequest};
use switchboard::config::{self, Config};
use switchboard::service::Service;
use switchboard_tests::{component, fixture, temp_dir};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const ISSUER: &str = "https://keycloak.switchboard.local/realms/switchboard";

struct Api {
    router: Router,
    config: Config,
    service: Arc<Service>,
    _stop: DropCancel,
}

/// Stops the writer when a test ends.
struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn shipped_config(env: &[(&str, &str)]) -> Config {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    let mut config = config::load_with_env(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/switchboard.toml"
        )),
        &env,
    )
    .unwrap();
    config.store.path = temp_dir("admin");
    for plugin in &mut config.plugins {
        plugin.file = component(&plugin.id);
    }
    config
}

fn api_with(config: Config) -> Api {
    let service = Arc::new(switchboard::app::build(&config).unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(service.clone().run_writer(stop.clone()));
    let auth = Authenticator::from_config(&config.auth, &config.teams).unwrap();
    let router = admin::router(AdminContext::new(service.clone(), auth, &config.server));
    Api {
        router,
        config,
        service,
        _stop: DropCancel(stop),
    }
}

fn api() -> Api {
    api_with(shipped_config(&[]))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Api {
    fn token(&self, sub: &str, roles: &[&str], teams: &[&str]) -> String {
        admin::mint(
            &self.config.auth,
            &TokenRequest {
                subject: sub.to_owned(),
                roles: roles.iter().map(|role| (*role).to_owned()).collect(),
                teams: teams.iter().map(|team| (*team).to_owned()).collect(),
                lifetime: Duration::from_secs(600),
            },
            now(),
        )
        .unwrap()
    }

    fn sam(&self) -> String {
        self.token("sup-sam", &["supervisor"], &["support"])
    }

    fn bea(&self) -> String {
        self.token("sup-bea", &["supervisor"], &["/billing"])
    }

    fn ingest(&self) -> String {
        self.token("gateway", &["ingest"], &[])
    }

    fn admin(&self) -> String {
        self.token("root", &["admin"], &[])
    }

    async fn raw(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body.to_vec())
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let (status, headers, body) = self.raw(request).await;
        if !status.is_success() {
            assert_eq!(
                headers.get(header::CONTENT_TYPE).unwrap(),
                "application/problem+json",
                "{status} must be problem+json: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        (status, value)
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(token), Some(body)).await
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, Some(token), None).await
    }

    /// Starts a conversation through `POST /v1/inbound/canonical` and returns its id.
    async fn start(&self, thread: &str, queue: &str, agent: Option<&str>) -> String {
        let started = json!({
            "id": format!("{thread}-start"), "source": "canonical", "type": "started",
            "conversation": {"plugin": "web-chat", "key": thread}, "channel": "web",
            "customer": {"id": format!("cust-{thread}"), "name": "Alice Doe"},
            "subject": "Refund for order 1234", "queue": queue
        });
        let (status, body) = self
            .post("/v1/inbound/canonical", &self.ingest(), started)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["events"], 1);
        if let Some(agent) = agent {
            let accepted = json!({
                "id": format!("{thread}-accept"), "source": "canonical", "type": "accepted",
                "conversation": {"plugin": "web-chat", "key": thread}, "agent": agent
            });
            let (status, body) = self
                .post("/v1/inbound/canonical", &self.ingest(), accepted)
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
        let (_, list) = self.get("/v1/conversations", &self.admin()).await;
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["customer"]["id"] == format!("cust-{thread}"))
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .expect("the conversation is in the report")
    }
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer_without_a_token() {
    let api = api();
    let (status, body) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["broker"]["status"], "not-configured");
    assert_eq!(body["store"]["status"], "up");
    assert_eq!(body["plugins"].as_array().unwrap().len(), 5);

    api.start("ops-1", "support-chat", None).await;
    let (status, _, text) = api
        .raw(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    for series in [
        "switchboard_inbound_total{plugin=\"canonical\",outcome=\"applied\"} 1",
        "switchboard_commit_seconds_count",
        "switchboard_commit_batch_size_bucket",
        "switchboard_http_requests_total{route=\"/v1/inbound/{plugin}\",method=\"POST\",status=\"202\"} 1",
        "switchboard_plugin_calls_total{plugin=\"web-chat\"}",
        "switchboard_outbox_backlog",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }

    let (status, document) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/v1/inbound/{plugin}",
        "/v1/conversations",
        "/v1/conversations/{id}",
        "/v1/conversations/{id}/monitor",
        "/v1/conversations/{id}/whisper",
        "/v1/conversations/{id}/join",
        "/v1/conversations/{id}/barge",
        "/v1/conversations/{id}/messages",
        "/v1/conversations/{id}/leave",
        "/v1/conversations/{id}/assign",
        "/v1/conversations/{id}/transfer",
        "/v1/conversations/{id}/force-close",
        "/v1/agents",
        "/v1/agents/{id}/presence",
        "/v1/queues",
        "/v1/plugins",
        "/v1/plugins/{id}/reload",
        "/v1/stream",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(paths["/v1/conversations/{id}/monitor"]["delete"].is_object());

    // Every route of the route table, as the document lists it, refuses a caller without a
    // token (the list is the router's own: a route added later is checked too). The limit on
    // unauthenticated requests is raised, so that each answer is the token check's.
    let mut config = shipped_config(&[]);
    config.server.unauthenticated_rate_limit = 1_000_000;
    let api = api_with(config);
    let mut checked = 0;
    for (path, item) in paths.iter().filter(|(path, _)| path.starts_with("/v1/")) {
        for (method, _) in item.as_object().unwrap() {
            let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            let uri = path.replace("{id}", "x").replace("{plugin}", "x");
            let (status, body) = api.call(method.clone(), &uri, None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            checked += 1;
        }
    }
    assert!(
        checked >= 22,
        "only {checked} /v1 operations in the document"
    );
    assert_eq!(
        paths["/v1/conversations/{id}/force-close"]["post"]["responses"]["409"]["content"]["application/problem+json"]
            ["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_monitors_whispers_joins_and_force_closes_with_every_step_on_the_timeline() {
    let api = api();
    let id = api.start("flow-1", "support-chat", Some("a-ana")).await;
    let sam = api.sam();

    let (status, list) = api.get("/v1/conversations?state=active", &sam).await;
    assert_eq!(status, StatusCode::OK);
    let row = &list["conversations"][0];
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["channel"], "web");
    assert_eq!(row["plugin"], "web-chat");
    assert_eq!(row["state"], "active");
    assert_eq!(row["subject"], "Refund for order 1234");
    assert_eq!(row["customer"]["name"], "Alice Doe");
    assert_eq!(row["queue"], "support-chat");
    assert_eq!(row["agent"], "a-ana");
    assert!(row["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(row["wait_seconds"].is_u64() && row["handle_seconds"].is_u64());
    assert!(row["sentiment"].is_object());
    let (_, filtered) = api.get("/v1/conversations?state=open", &sam).await;
    assert_eq!(filtered["count"], 0);
    let (_, filtered) = api.get("/v1/conversations?channel=sms", &sam).await;
    assert_eq!(filtered["count"], 0);
    let (_, filtered) = api
        .get("/v1/conversations?agent=a-ana&queue=support-chat", &sam)
        .await;
    assert_eq!(filtered["count"], 1);
    let (status, bad) = api.get("/v1/conversations?state=closed", &sam).await;
    assert_eq!(
        (status, code(&bad)),
        (StatusCode::BAD_REQUEST, "invalid-query"),
        "{bad}"
    );

    let base = format!("/v1/conversations/{id}");
    let (status, body) = api.post(&format!("{base}/monitor"), &sam, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "active");
    let (status, body) = api.post(&format!("{base}/monitor"), &sam, json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "already-participating")
    );
    assert_eq!(
        body["type"],
        "https://switchboard.dev/problems/already-participating"
    );
    let (status, body) = api
        .post(
            &format!("{base}/whisper"),
            &sam,
            json!({"text": "offer the refund"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post(&format!("{base}/whisper"), &sam, json!({"text": ""}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .post(&format!("{base}/join"), &sam, json!({"mode": "internal"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post(
            &format!("{base}/messages"),
            &sam,
            json!({"text": "I can help with that", "visibility": "internal"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, detail) = api.get(&base, &sam).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["supervisors"][0]["id"], "sup-sam");
    assert_eq!(detail["supervisors"][0]["mode"], "consult-internal");
    let roles: Vec<&str> = detail["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["customer", "agent", "supervisor"]);
    let (status, body) = api.post(&format!("{base}/leave"), &sam, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.post(&format!("{base}/barge"), &sam, json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "not-monitoring")
    );
    api.post(&format!("{base}/monitor"), &sam, json!({})).await;
    let (status, body) = api.post(&format!("{base}/barge"), &sam, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.post(&format!("{base}/leave"), &sam, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = api
        .post(
            &format!("{base}/force-close"),
            &sam,
            json!({"reason": "abusive"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "confirmation-required")
    );
    let (status, body) = api
        .post(
            &format!("{base}/force-close"),
            &sam,
            json!({"reason": "abusive", "confirm": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "closed");
    let (_, detail) = api.get(&base, &sam).await;
    let events: Vec<&str> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["event"].as_str().unwrap())
        .collect();
    for expected in [
        "created",
        "accepted",
        "supervision-started",
        "whisper",
        "supervision-changed",
        "message",
        "supervision-ended",
        "force-closed",
    ] {
        assert!(events.contains(&expected), "{expected} missing: {events:?}");
    }
    let (_, list) = api.get("/v1/conversations", &sam).await;
    assert_eq!(list["count"], 0, "closed conversations leave the report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_transfer_and_presence_answer_with_rule_codes() {
    let api = api();
    let sam = api.sam();
    let open = api.start("assign-1", "support-chat", None).await;
    let base = format!("/v1/conversations/{open}");
    let cases = [
        (
            json!({"agent": "bot-faq"}),
            StatusCode::CONFLICT,
            "target-is-bot",
        ),
        (
            json!({"agent": "a-chloe"}),
            StatusCode::CONFLICT,
            "presence-not-allowed",
        ),
        (
            json!({"agent": "a-nobody"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-agent",
        ),
        (
            json!({"queue": "nowhere"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-queue",
        ),
        (
            json!({"queue": "support-chat"}),
            StatusCode::CONFLICT,
            "same-queue",
        ),
        (
            json!({"agent": "a-ben", "queue": "billing"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            json!({"agent": 7}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            json!({"agent": "a-ben", "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
    ];
    for (body, status, expected) in cases {
        let (got, problem) = api
            .post(&format!("{base}/assign"), &sam, body.clone())
            .await;
        assert_eq!(
            (got, code(&problem)),
            (status, expected),
            "{body}: {problem}"
        );
    }
    // An override is audited and reported.
    let (status, body) = api
        .post(
            &format!("{base}/assign"),
            &sam,
            json!({"agent": "a-chloe", "override_presence": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "active");
    assert_eq!(body["overrides"], json!(["presence"]));
    let (status, body) = api
        .post(
            &format!("{base}/transfer"),
            &sam,
            json!({"agent": "a-chloe"}),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "same-agent"));
    let (status, body) = api
        .post(&format!("{base}/transfer"), &sam, json!({"agent": "a-ben"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Capacity: a-ben holds 3 units at most.
    for thread in ["cap-1", "cap-2"] {
        let id = api.start(thread, "support-chat", None).await;
        let (status, body) = api
            .post(
                &format!("/v1/conversations/{id}/assign"),
                &sam,
                json!({"agent": "a-ben"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let full = api.start("cap-3", "support-chat", None).await;
    let (status, body) = api
        .post(
            &format!("/v1/conversations/{full}/assign"),
            &sam,
            json!({"agent": "a-ben"}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "capacity-exceeded")
    );
    let (status, body) = api
        .post(
            &format!("/v1/conversations/{full}/assign"),
            &sam,
            json!({"agent": "a-ben", "override_capacity": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["capacity_exceeded_by"], 1);

    // Presence: the agent itself, an admin or a gateway; nobody else.
    let ana = api.token("a-ana", &["agent"], &["support"]);
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/agents/a-ana/presence",
            Some(&ana),
            Some(json!({"presence": "away"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/agents/a-ben/presence",
            Some(&ana),
            Some(json!({"presence": "away"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/agents/a-ben/presence",
            Some(&api.admin()),
            Some(json!({"presence": "napping"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/agents/a-zed/presence",
            Some(&api.ingest()),
            Some(json!({"presence": "away"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, agents) = api.get("/v1/agents", &sam).await;
    let ana_row = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["id"] == "a-ana")
        .unwrap()
        .clone();
    assert_eq!(ana_row["presence"], "away");
    let (_, queues) = api.get("/v1/queues", &sam).await;
    let ids: Vec<&str> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|queue| queue["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["support-chat", "support-voice"]);
}

/// The supervision rules' refusal codes not met above, each through the API as problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_refusal_reaches_the_caller_with_its_code() {
    let api = api();
    let sam = api.sam();
    let kim = api.token("sup-kim", &["supervisor"], &["support"]);
    let open = api.start("codes-open", "support-chat", None).await;
    let active = api
        .start("codes-active", "support-chat", Some("a-ana"))
        .await;
    // A web conversation routed to the voice queue, which a-ben does not serve.
    let voice_queue = api
        .start("codes-voice-queue", "support-voice", Some("a-ana"))
        .await;
    let conversation = |id: &str, action: &str| format!("/v1/conversations/{id}/{action}");

    // A voice call: one monitor at a time, no supervisor transfers.
    let started = json!({
        "id": "codes-call-start", "source": "canonical", "type": "started",
        "conversation": {"plugin": "voice-ari", "key": "codes-call"}, "channel": "voice",
        "customer": {"id": "cust-call"}, "queue": "support-voice"
    });
    api.post("/v1/inbound/canonical", &api.ingest(), started)
        .await;
    let accepted = json!({
        "id": "codes-call-accept", "source": "canonical", "type": "accepted",
        "conversation": {"plugin": "voice-ari", "key": "codes-call"}, "agent": "a-ana"
    });
    api.post("/v1/inbound/canonical", &api.ingest(), accepted)
        .await;
    let (_, calls) = api.get("/v1/conversations?channel=voice", &sam).await;
    let call = calls["conversations"][0]["id"].as_str().unwrap().to_owned();

    let (status, _) = api
        .post(&conversation(&call, "monitor"), &sam, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .post(&conversation(&active, "monitor"), &sam, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .post(&conversation(&active, "monitor"), &kim, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .post(&conversation(&active, "barge"), &sam, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let ana_supervising = api.token("a-ana", &["supervisor", "agent"], &["support"]);

    let cases: Vec<(String, String, Value, &str)> = vec![
        (
            conversation(&open, "monitor"),
            sam.clone(),
            json!({}),
            "invalid-state",
        ),
        (
            conversation(&active, "monitor"),
            ana_supervising,
            json!({}),
            "own-conversation",
        ),
        (
            conversation(&call, "monitor"),
            kim.clone(),
            json!({}),
            "monitor-limit",
        ),
        (
            conversation(&active, "messages"),
            kim.clone(),
            json!({"text": "hello", "visibility": "public"}),
            "not-joined",
        ),
        (
            conversation(&open, "leave"),
            kim.clone(),
            json!({}),
            "not-participating",
        ),
        (
            conversation(&active, "barge"),
            kim.clone(),
            json!({}),
            "barge-limit",
        ),
        (
            conversation(&call, "transfer"),
            sam.clone(),
            json!({"agent": "a-chloe"}),
            "channel-not-supported",
        ),
        (
            conversation(&voice_queue, "transfer"),
            sam.clone(),
            json!({"agent": "a-ben"}),
            "not-in-queue",
        ),
    ];
    for (uri, token, body, expected) in cases {
        let (status, problem) = api.post(&uri, &token, body).await;
        assert_eq!(
            (status, code(&problem)),
            (StatusCode::CONFLICT, expected),
            "{uri}: {problem}"
        );
        assert_eq!(
            problem["type"],
            format!("https://switchboard.dev/problems/{expected}")
        );
    }
    let (_, problem) = api
        .post(&conversation(&call, "monitor"), &kim, json!({}))
        .await;
    assert_eq!(
        problem["holders"],
        json!(["sup-sam"]),
        "a limit names who holds it"
    );

    // A channel event about a conversation nobody knows is refused with its rule's code.
    let stray = json!({
        "id": "codes-stray", "source": "canonical", "type": "accepted",
        "conversation": {"plugin": "web-chat", "key": "never-started"}, "agent": "a-ana"
    });
    let (status, problem) = api
        .post("/v1/inbound/canonical", &api.ingest(), stray)
        .await;
    assert_eq!(
        (status, code(&problem)),
        (StatusCode::CONFLICT, "unknown-conversation"),
        "{problem}"
    );
}

/// Every conversation route, the report and the stream, as a supervisor of the other team:
/// the conversation does not exist for it, exactly like one that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_never_sees_or_changes_another_teams_conversation() {
    let api = api();
    let billing = api.start("scope-1", "billing", Some("a-dev")).await;
    let support = api.start("scope-2", "support-chat", Some("a-ana")).await;
    let sam = api.sam();
    let bea = api.bea();
    let missing = "c-0000000000000000000f";

    let (_, list) = api.get("/v1/conversations", &sam).await;
    let ids: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [support.as_str()]);
    let (_, list) = api.get("/v1/conversations", &bea).await;
    assert_eq!(list["conversations"][0]["id"], billing.as_str());
    assert_eq!(list["count"], 1);
    let (_, list) = api.get("/v1/conversations?queue=billing", &sam).await;
    assert_eq!(list["count"], 0);

    let routes: [(Method, &str, Value); 12] = [
        (Method::GET, "", Value::Null),
        (Method::POST, "/monitor", json!({})),
        (Method::DELETE, "/monitor", Value::Null),
        (Method::POST, "/whisper", json!({"text": "hi"})),
        (Method::POST, "/join", json!({"mode": "public"})),
        (Method::POST, "/barge", json!({})),
        (
            Method::POST,
            "/messages",
            json!({"text": "hi", "visibility": "internal"}),
        ),
        (Method::POST, "/leave", json!({})),
        (Method::POST, "/assign", json!({"agent": "a-ana"})),
        (Method::POST, "/assign", json!({"queue": "support-chat"})),
        (Method::POST, "/transfer", json!({"agent": "a-ana"})),
        (
            Method::POST,
            "/force-close",
            json!({"reason": "x", "confirm": true}),
        ),
    ];
    for (method, suffix, body) in routes {
        let body = (!body.is_null()).then_some(body);
        let (foreign_status, foreign) = api
            .call(
                method.clone(),
                &format!("/v1/conversations/{billing}{suffix}"),
                Some(&sam),
                body.clone(),
            )
            .await;
        let (missing_status, absent) = api
            .call(
                method.clone(),
                &format!("/v1/conversations/{missing}{suffix}"),
                Some(&sam),
                body,
            )
            .await;
        assert_eq!(
            foreign_status,
            StatusCode::NOT_FOUND,
            "{method} {suffix}: {foreign}"
        );
        assert_eq!(
            missing_status,
            StatusCode::NOT_FOUND,
            "{method} {suffix}: {absent}"
        );
        // Same answer, but for the id itself.
        let normalise = |value: &Value, id: &str| value.to_string().replace(id, "ID");
        assert_eq!(
            normalise(&foreign, &billing),
            normalise(&absent, missing),
            "{method} {suffix}"
        );
    }
    // Nothing changed on the billing conversation.
    let (_, detail) = api.get(&format!("/v1/conversations/{billing}"), &bea).await;
    assert_eq!(detail["state"], "active");
    assert_eq!(detail["supervisors"], json!([]));
    assert_eq!(detail["agent"], "a-dev");

    // The roster is scoped too.
    let (_, agents) = api.get("/v1/agents", &sam).await;
    assert!(
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|agent| agent["id"] != "a-dev"),
        "{agents}"
    );

    // The stream: Sam sees the support conversation change, never the billing one.
    let mut stream = Stream::open(&api, &sam, None).await;
    api.post(
        &format!("/v1/conversations/{billing}/monitor"),
        &bea,
        json!({}),
    )
    .await;
    api.post(
        &format!("/v1/conversations/{support}/monitor"),
        &sam,
        json!({}),
    )
    .await;
    let events = stream
        .until(|event| event.data.contains(&support) && event.name == "conversation")
        .await;
    assert!(
        events.iter().all(|event| !event.data.contains(&billing)),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_routes_with_403() {
    let api = api();
    let id = api.start("roles-1", "support-chat", Some("a-ana")).await;
    let agent = api.token("a-ana", &["agent"], &["support"]);
    let sam = api.sam();
    let (status, body) = api.get("/v1/conversations", &agent).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let (status, _) = api
        .post(
            &format!("/v1/conversations/{id}/monitor"),
            &agent,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.get("/v1/plugins", &sam).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.post("/v1/inbound/canonical", &sam, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, plugins) = api.get("/v1/plugins", &api.admin()).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{plugins}");
    assert!(plugins["plugins"][0]["health"].is_string());
    let (status, reloaded) = api
        .post("/v1/plugins/sms-twilio/reload", &api.admin(), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{reloaded}");
    assert_eq!(reloaded["counters"]["reloads"], 1);
    let (status, _) = api
        .post("/v1/plugins/nope/reload", &api.admin(), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An admin sees every team.
    let (_, list) = api.get("/v1/conversations", &api.admin()).await;
    assert_eq!(list["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_payloads_enter_through_post_inbound() {
    let api = api();
    let ingest = api.ingest();
    let request = |key: &str| {
        Request::post("/v1/inbound/whatsapp-cloud")
            .header(header::AUTHORIZATION, format!("Bearer {ingest}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(fixture("whatsapp", "text.json")))
            .unwrap()
    };
    let (status, _, body) = api.raw(request("wa-1")).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let accepted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(accepted["events"], 1);
    let seq = api.service.read(|engine| engine.state().last_seq()).await;
    // The same payload again (a retried webhook): accepted, nothing changes.
    let (status, _, _) = api.raw(request("wa-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        api.service.read(|engine| engine.state().last_seq()).await,
        seq
    );
    let (_, list) = api
        .get("/v1/conversations?channel=whatsapp", &api.admin())
        .await;
    assert_eq!(list["count"], 1);
    assert_eq!(
        list["conversations"][0]["customer"]["name"],
        "Sheena Nelson"
    );

    // What the plugin cannot decode is refused with its code, and nothing is applied.
    let (status, body) = api
        .post(
            "/v1/inbound/whatsapp-cloud",
            &ingest,
            json!({"object": "page"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!code(&body).is_empty());
    let (status, body) = api.post("/v1/inbound/fax", &ingest, json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "unknown-plugin")
    );

    // The outbox is readable on the embedded transport.
    let (status, outbox) = api.get("/v1/outbox?limit=50", &api.admin()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        outbox["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["event_type"] == "dev.switchboard.conversation.opened"),
        "{outbox}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_answer() {
    let api = api();
    let id = api.start("idem-1", "support-chat", Some("a-ana")).await;
    let sam = api.sam();
    let (status, _) = api
        .post(&format!("/v1/conversations/{id}/monitor"), &sam, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let send = |key: &'static str, text: &'static str| {
        let uri = format!("/v1/conversations/{id}/whisper");
        let sam = sam.clone();
        let api = &api;
        async move {
            let request = Request::post(uri)
                .header(header::AUTHORIZATION, format!("Bearer {sam}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", key)
                .body(Body::from(json!({ "text": text }).to_string()))
                .unwrap();
            let (status, _, body) = api.raw(request).await;
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, first) = send("k-1", "hello").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["replayed"], false);
    let seq = api.service.read(|engine| engine.state().last_seq()).await;
    let (status, again) = send("k-1", "hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["replayed"], true);
    assert_eq!(
        api.service.read(|engine| engine.state().last_seq()).await,
        seq
    );
    let (status, other) = send("k-1", "something else").await;
    assert_eq!(
        (status, code(&other)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused")
    );
    // The same key and body on another conversation is another request, not a replay.
    let second = api.start("idem-2", "support-chat", Some("a-ben")).await;
    api.post(
        &format!("/v1/conversations/{second}/monitor"),
        &sam,
        json!({}),
    )
    .await;
    let request = Request::post(format!("/v1/conversations/{second}/whisper"))
        .header(header::AUTHORIZATION, format!("Bearer {sam}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "k-1")
        .body(Body::from(json!({ "text": "hello" }).to_string()))
        .unwrap();
    let (status, _, body) = api.raw(request).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_are_problems_and_limits_hold() {
    let api = api_with(shipped_config(&[
        ("SWITCHBOARD_SERVER__BODY_LIMIT", "1KiB"),
        ("SWITCHBOARD_SERVER__RATE_LIMIT", "20"),
    ]));
    let sam = api.sam();
    let id = api.start("limits-1", "support-chat", Some("a-ana")).await;
    let (status, body) = api.get("/v1/nothing-here", &sam).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "no-route"));
    let (status, body) = api.call(Method::GET, "/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, headers, body) = api
        .raw(
            Request::put(format!("/v1/conversations/{id}/monitor"))
                .header(header::AUTHORIZATION, format!("Bearer {sam}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(headers.contains_key(header::ALLOW));
    let bad_json = |body: &'static str, content_type: &'static str| {
        Request::post(format!("/v1/conversations/{id}/whisper"))
            .header(header::AUTHORIZATION, format!("Bearer {sam}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let (status, headers, _) = api.raw(bad_json("{\"text\": ", "application/json")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let (status, _, _) = api
        .raw(bad_json("text=hi", "application/x-www-form-urlencoded"))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = Box::leak(format!("{{\"text\": \"{}\"}}", "x".repeat(4096)).into_boxed_str());
    let (status, headers, _) = api.raw(bad_json(big, "application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");

    // 20 per second per caller: a burst beyond it is refused with Retry-After, another
    // caller is unaffected.
    let mut limited = None;
    for _ in 0..40 {
        let (status, headers, _) = api
            .raw(
                Request::get("/v1/queues")
                    .header(header::AUTHORIZATION, format!("Bearer {sam}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(headers);
            break;
        }
    }
    let headers = limited.expect("the burst was limited");
    assert!(headers.contains_key(header::RETRY_AFTER));
    let (status, _) = api.get("/v1/queues", &api.bea()).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- tokens --------------------------------------------------------------------------------

fn claims(overrides: Value) -> Value {
    let now = now();
    let mut claims = json!({
        "iss": ISSUER, "aud": "switchboard", "sub": "sup-sam",
        "realm_access": {"roles": ["supervisor"]}, "groups": ["/support"],
        "iat": now, "nbf": now - 5, "exp": now + 300
    });
    for (key, value) in overrides.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn auth_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/auth")
        .join(name)
}

fn rs256(claims: &Value, kid: Option<&str>) -> String {
    let key = std::fs::read(auth_fixture("rs256-private.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&key).unwrap()).unwrap()
}

fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let encode =
        |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT"})),
        encode(claims)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_strictly() {
    let api = api();
    let secret = api
        .config
        .auth
        .hs256_secret
        .as_ref()
        .unwrap()
        .expose()
        .to_owned();
    let now = now() as i64;
    let valid = hs256(&secret, &claims(json!({})));
    let (status, _) = api.get("/v1/queues", &valid).await;
    assert_eq!(status, StatusCode::OK);
    // Keycloak's access tokens carry no `nbf`.
    let keycloak_like = hs256(&secret, &claims(json!({"nbf": null})));
    let (status, body) = api.get("/v1/queues", &keycloak_like).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            hs256(&secret, &claims(json!({"exp": now - 3600}))),
        ),
        (
            "not yet valid",
            hs256(&secret, &claims(json!({"nbf": now + 3600}))),
        ),
        (
            "wrong secret",
            hs256("another-secret-entirely", &claims(json!({}))),
        ),
        ("alg none", unsigned(&claims(json!({})))),
        (
            "wrong issuer",
            hs256(
                &secret,
                &claims(json!({"iss": "https://evil.example/realms/x"})),
            ),
        ),
        (
            "wrong audience",
            hs256(&secret, &claims(json!({"aud": "someone-else"}))),
        ),
        (
            "string exp",
            hs256(&secret, &claims(json!({"exp": (now + 300).to_string()}))),
        ),
        (
            "string nbf",
            hs256(&secret, &claims(json!({"nbf": (now - 5).to_string()}))),
        ),
        ("no exp", hs256(&secret, &claims(json!({"exp": null})))),
        ("no sub", hs256(&secret, &claims(json!({"sub": null})))),
        ("garbage", "not.a.jwt".to_owned()),
        // RS256 is not configured in the shipped file: an RS256 token has no key here.
        ("unconfigured RS256", rs256(&claims(json!({})), None)),
    ];
    for (name, token) in &cases {
        let (status, body) = api.get("/v1/queues", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(code(&body), "unauthorized", "{name}");
        assert!(
            !body["detail"].as_str().unwrap().contains(token.as_str()),
            "{name}: the token must not be echoed"
        );
    }
    let (status, body) = api.call(Method::GET, "/v1/queues", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, headers, _) = api
        .raw(
            Request::get("/v1/queues")
                .header(header::AUTHORIZATION, "Basic c2FtOnNhbQ==")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_with_a_pem_key_or_a_jwks_file() {
    for (key, value) in [
        (
            "SWITCHBOARD_AUTH__RS256_PUBLIC_KEY_FILE",
            auth_fixture("rs256-public.pem"),
        ),
        ("SWITCHBOARD_AUTH__JWKS_FILE", auth_fixture("jwks.json")),
    ] {
        let value = value.display().to_string();
        let api = api_with(shipped_config(&[(key, value.as_str())]));
        let token = rs256(&claims(json!({})), Some("test-key-1"));
        let (status, body) = api.get("/v1/queues", &token).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        // Algorithm confusion: an HS256 token "signed" with the public key's bytes.
        let public = std::fs::read_to_string(auth_fixture("rs256-public.pem")).unwrap();
        let confused = hs256(&public, &claims(json!({})));
        let (status, _) = api.get("/v1/queues", &confused).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key}");
        let expired = rs256(&claims(json!({"exp": now() - 3600})), Some("test-key-1"));
        let (status, _) = api.get("/v1/queues", &expired).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key}");
    }
}

// ---- the stream ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    name: String,
    data: String,
}

struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    async fn open(api: &Api, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request =
            Request::get("/v1/stream").header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = api
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` if none comes within a second.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: String::new(),
                    name: "message".to_owned(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        event.id = id.trim().to_owned();
                    } else if let Some(name) = line.strip_prefix("event:") {
                        event.name = name.trim().to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        event.data.push_str(data.trim_start());
                    }
                }
                if event.data.is_empty() && event.id.is_empty() {
                    continue; // a heartbeat comment
                }
                return Some(event);
            }
            let frame = tokio::time::timeout(Duration::from_secs(1), self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// Events until one matches (panics when the stream goes quiet first).
    async fn until(&mut self, done: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        while let Some(event) = self.next().await {
            let finished = done(&event);
            seen.push(event);
            if finished {
                return seen;
            }
        }
        panic!("the awaited event never came; saw {seen:#?}");
    }

    /// Everything that arrives within a second.
    async fn drain(&mut self) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        while let Some(event) = self.next().await {
            seen.push(event);
        }
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_changes_messages_to_participants_and_whispers_to_agent_and_whisperer() {
    let api = api();
    let id = api.start("stream-1", "support-chat", Some("a-ana")).await;
    let sam = api.sam();
    let other = api.token("sup-kim", &["supervisor"], &["support"]);
    let agent = api.token("a-ana", &["agent"], &["support"]);
    let mut sam_stream = Stream::open(&api, &sam, None).await;
    let mut kim_stream = Stream::open(&api, &other, None).await;
    let mut agent_stream = Stream::open(&api, &agent, None).await;

    api.post(&format!("/v1/conversations/{id}/monitor"), &sam, json!({}))
        .await;
    let customer_message = json!({
        "id": "stream-1-m1", "source": "canonical", "type": "message",
        "conversation": {"plugin": "web-chat", "key": "stream-1"}, "channel": "web",
        "sender": {"kind": "customer"}, "text": "Where is my refund?"
    });
    let (status, body) = api
        .post("/v1/inbound/canonical", &api.ingest(), customer_message)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.post(
        &format!("/v1/conversations/{id}/whisper"),
        &sam,
        json!({"text": "secret coaching"}),
    )
    .await;

    let sam_events = sam_stream
        .until(|event| event.data.contains("secret coaching"))
        .await;
    assert!(
        sam_events
            .iter()
            .any(|e| e.name == "conversation" && e.data.contains(&id))
    );
    assert!(
        sam_events
            .iter()
            .any(|e| e.name == "timeline" && e.data.contains("Where is my refund?")),
        "the monitoring supervisor gets the live message: {sam_events:#?}"
    );
    let kim_events = kim_stream.drain().await;
    assert!(
        kim_events
            .iter()
            .any(|e| e.name == "conversation" && e.data.contains(&id)),
        "team supervisors see changes"
    );
    assert!(
        kim_events.iter().all(|e| !e.data.contains("secret coaching") && !e.data.contains("Where is my refund?")),
        "no whispers or messages for a supervisor not taking part: {kim_events:#?}"
    );
    let agent_events = agent_stream.drain().await;
    assert!(
        agent_events
            .iter()
            .any(|e| e.data.contains("secret coaching")),
        "the agent gets the whisper: {agent_events:#?}"
    );
    assert!(
        agent_events
            .iter()
            .all(|e| !e.data.contains("\"mode\":\"monitor\"")
                && !e.data.contains("supervision-started")),
        "silent monitoring stays silent to the agent: {agent_events:#?}"
    );

    // Resume: reconnecting with the last id seen replays what came after, without gaps.
    let last_seen = sam_events
        .iter()
        .find(|event| event.name == "timeline" && event.data.contains("Where is my refund?"))
        .unwrap()
        .id
        .clone();
    drop(sam_stream);
    api.post(&format!("/v1/conversations/{id}/leave"), &sam, json!({}))
        .await;
    let mut resumed = Stream::open(&api, &sam, Some(&last_seen)).await;
    let replayed = resumed
        .until(|event| event.data.contains("supervision-ended"))
        .await;
    assert!(
        replayed.iter().any(|e| e.data.contains("secret coaching")),
        "{replayed:#?}"
    );
    assert!(
        replayed.iter().all(|e| e.id != last_seen),
        "nothing before Last-Event-ID"
    );
    assert!(replayed.iter().all(|e| e.name != "gap"));
}

// ---- what probing from outside found -------------------------------------------------------

/// Teams come from whole group paths: `/billing/support` is not `/support`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_grants_a_team_only_by_its_whole_path() {
    let api = api();
    let id = api.start("groups-1", "support-chat", Some("a-ana")).await;
    let uri = format!("/v1/conversations/{id}");
    let (status, _) = api.get(&uri, &api.sam()).await;
    assert_eq!(status, StatusCode::OK, "`/support` grants support");
    for elsewhere in ["billing/support", "acme/support", "support/x"] {
        let token = api.token("sup-eve", &["supervisor"], &[elsewhere]);
        let (status, body) = api.get(&uri, &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "/{elsewhere}: {body}");
    }
}

/// An `Idempotency-Key` compares what the body means, not how it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_same_json_written_differently() {
    let api = api();
    let id = api.start("idem-format", "support-chat", None).await;
    let sam = api.sam();
    let send = |body: &'static str| {
        let request = Request::post(format!("/v1/conversations/{id}/assign"))
            .header(header::AUTHORIZATION, format!("Bearer {sam}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "assign-once")
            .body(Body::from(body))
            .unwrap();
        let api = &api;
        async move {
            let (status, _, body) = api.raw(request).await;
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, first) = send(r#"{"agent":"a-ana","override_presence":true}"#).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) =
        send("{\n  \"override_presence\": true,\n  \"agent\": \"a-ana\"\n}\n").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["replayed"], true);
    let (status, other) = send(r#"{"agent":"a-ben","override_presence":true}"#).await;
    assert_eq!(
        (status, code(&other)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused")
    );
}

/// Every query parameter is checked the same way: 400 `invalid-query`, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_validated_alike() {
    let api = api();
    let admin = api.admin();
    for query in [
        "limit=-1",
        "limit=abc",
        "limit=10000000",
        "limit=0",
        "after=zzz",
        "limit=5&limit=6",
        "limit=",
    ] {
        let (status, body) = api.get(&format!("/v1/outbox?{query}"), &admin).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "invalid-query"),
            "{query}: {body}"
        );
        let name = query.split('=').next().unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("`{name}`")),
            "{query}: {body}"
        );
    }
    for query in ["state=sleeping", "channel=fax", "channel="] {
        let (status, body) = api
            .get(&format!("/v1/conversations?{query}"), &api.sam())
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "invalid-query"),
            "{query}: {body}"
        );
    }
    let (status, body) = api.get("/v1/outbox?limit=1000", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .get(
            "/v1/conversations?state=active&channel=web&queue=&unknown=1",
            &api.sam(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A resent webhook says it was a duplicate and of which conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_payload_is_answered_as_a_duplicate() {
    let api = api();
    let webhook = fixture("whatsapp", "text.json");
    let post = || {
        let request = Request::post("/v1/inbound/whatsapp-cloud")
            .header(header::AUTHORIZATION, format!("Bearer {}", api.ingest()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(webhook.clone()))
            .unwrap();
        async {
            let (status, _, body) = api.raw(request).await;
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, first) = post().await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(
        (first["duplicate"].clone(), first["duplicates"].clone()),
        (json!(false), json!(0))
    );
    let conversation = first["conversations"][0].as_str().unwrap().to_owned();
    let (status, again) = post().await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["conversations"], json!([conversation]));
    let (_, headers, metrics) = api
        .raw(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(
            "switchboard_inbound_total{plugin=\"whatsapp-cloud\",outcome=\"duplicate\"} 1"
        ),
        "{metrics}"
    );
}

/// Timeline details show times as RFC 3339, like everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_in_timeline_details_are_rfc3339() {
    let api = api();
    let id = api.start("times-1", "support-chat", Some("a-ana")).await;
    let sam = api.sam();
    let base = format!("/v1/conversations/{id}");
    let (status, _) = api.post(&format!("{base}/monitor"), &sam, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(Method::DELETE, &format!("{base}/monitor"), Some(&sam), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, detail) = api.get(&base, &sam).await;
    let ended = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["event"] == "supervision-ended")
        .expect("the monitor's end is on the timeline");
    let started = ended["details"]["started_at"].as_str().expect("a string");
    let shape: String = started
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{started}");
}

/// Requests without a valid token are limited per client address, with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_rate_limited() {
    let api = api_with(shipped_config(&[(
        "SWITCHBOARD_SERVER__UNAUTHENTICATED_RATE_LIMIT",
        "10",
    )]));
    let mut limited = None;
    for _ in 0..40 {
        let (status, headers, body) = api
            .raw(
                Request::get("/v1/queues")
                    .header(header::AUTHORIZATION, "Bearer not.a.jwt")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (headers, body) = limited.expect("a burst of bad tokens was limited");
    assert!(headers.contains_key(header::RETRY_AFTER));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code(&body), "rate-limited");
}

/// A stream ends when the token that opened it expires, after saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_ends_when_its_token_expires() {
    let api = api();
    let short = admin::mint(
        &api.config.auth,
        &TokenRequest {
            subject: "sup-sam".to_owned(),
            roles: vec!["supervisor".to_owned()],
            teams: vec!["support".to_owned()],
            lifetime: Duration::from_secs(2),
        },
        now(),
    )
    .unwrap();
    let stream = Stream::open(&api, &short, None).await;
    // The body ends by itself once the token has expired.
    let body = tokio::time::timeout(Duration::from_secs(15), stream.body.collect())
        .await
        .expect("the stream ended")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let last = text
        .split("\n\n")
        .filter(|block| block.contains("event:"))
        .last()
        .unwrap_or_default();
    assert!(last.contains("event: reauthenticate"), "{text}");
}

/// The canonical ingest refuses what cannot be true, with coded 422s: a plugin that is not
/// configured, a channel the plugin does not carry, an agent of another team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_events_that_cannot_be_true_are_refused() {
    let api = api();
    let gateway = api.ingest();
    let started = |id: &str, plugin: &str, channel: &str| {
        json!({
            "id": id, "source": "canonical", "type": "started",
            "conversation": {"plugin": plugin, "key": id}, "channel": channel,
            "customer": {"id": "cust-1"}, "queue": "support-chat"
        })
    };
    for (body, expected) in [
        (started("no-plugin", "fax-gateway", "web"), "unknown-plugin"),
        (
            started("wrong-channel", "web-chat", "sms"),
            "channel-mismatch",
        ),
    ] {
        let (status, problem) = api.post("/v1/inbound/canonical", &gateway, body).await;
        assert_eq!(
            (status, code(&problem)),
            (StatusCode::UNPROCESSABLE_ENTITY, expected),
            "{problem}"
        );
    }
    api.start("cross-team", "support-chat", None).await;
    let accepted = json!({
        "id": "cross-team-accept", "source": "canonical", "type": "accepted",
        "conversation": {"plugin": "web-chat", "key": "cross-team"}, "agent": "a-dev"
    });
    let (status, problem) = api.post("/v1/inbound/canonical", &gateway, accepted).await;
    assert_eq!(
        (status, code(&problem)),
        (StatusCode::UNPROCESSABLE_ENTITY, "not-in-team"),
        "{problem}"
    );
}

/// On a call, a supervisor the voice plugin gives no phone (`supervisor_endpoints`) is refused
/// up front with 409 `no-media-endpoint`, instead of a success that does nothing; one with a
/// phone is not. A failed receipt's provider reason shows on the timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_needs_a_media_endpoint_and_receipts_keep_their_reason() {
    let api = api();
    let gateway = api.ingest();
    for body in [
        json!({
            "id": "endpoint-call", "source": "canonical", "type": "started",
            "conversation": {"plugin": "voice-ari", "key": "endpoint-call"}, "channel": "voice",
            "customer": {"id": "+14155550100"}, "queue": "support-voice"
        }),
        json!({
            "id": "endpoint-call-accept", "source": "canonical", "type": "accepted",
            "conversation": {"plugin": "voice-ari", "key": "endpoint-call"}, "agent": "a-ana"
        }),
    ] {
        let (status, body) = api.post("/v1/inbound/canonical", &gateway, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let (_, calls) = api.get("/v1/conversations?channel=voice", &api.sam()).await;
    let call = calls["conversations"][0]["id"].as_str().unwrap().to_owned();
    let phoneless = api.token("sup-zoe", &["supervisor"], &["support"]);
    for action in ["monitor", "barge"] {
        let (status, problem) = api
            .post(
                &format!("/v1/conversations/{call}/{action}"),
                &phoneless,
                json!({}),
            )
            .await;
        let expected = if action == "monitor" {
            "no-media-endpoint"
        } else {
            "not-monitoring"
        };
        assert_eq!(
            (status, code(&problem)),
            (StatusCode::CONFLICT, expected),
            "{problem}"
        );
    }
    let (status, body) = api
        .post(
            &format!("/v1/conversations/{call}/monitor"),
            &api.sam(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "sup-sam has a phone: {body}");

    let chat = api
        .start("receipt-reason", "support-chat", Some("a-ben"))
        .await;
    let failed = json!({
        "id": "receipt-1", "source": "canonical", "type": "receipt",
        "conversation": {"id": chat}, "message_id": "SM123", "status": "failed",
        "error": {"code": "30003", "text": "Unreachable destination handset"}
    });
    let (status, body) = api.post("/v1/inbound/canonical", &gateway, failed).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, detail) = api
        .get(&format!("/v1/conversations/{chat}"), &api.sam())
        .await;
    let receipt = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["event"] == "receipt")
        .expect("the receipt is on the timeline");
    assert_eq!(receipt["details"]["status"], "failed");
    assert_eq!(receipt["details"]["error"]["code"], "30003");
    assert_eq!(
        receipt["details"]["error"]["text"],
        "Unreachable destination handset"
    );
}
