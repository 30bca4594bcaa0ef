//! Genesys Cloud, as its developer documentation describes the parts Switchboard uses: the
//! OAuth client-credentials grant (`POST /oauth/token` on the login host, HTTP Basic with the
//! client id and secret, `grant_type=client_credentials`, answered with `access_token`,
//! `token_type` and `expires_in`; `401 invalid_client` otherwise) and Open Messaging's agentless
//! outbound message (`POST /api/v2/conversations/messages/agentless`, a bearer token, a JSON
//! body with `fromAddress`, `toAddress`, `toAddressMessengerType` and `textBody`; `401` with
//! Genesys' error body for a missing, unknown or expired token, `400` for a missing field).
//! Both paths on one server: the test points `token_url` and `api_base_url` at it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::{Log, Received, basic_credentials};

/// A Genesys Cloud organization with one OAuth client.
#[derive(Debug)]
pub struct Genesys {
    pub client_id: String,
    pub client_secret: String,
    /// Messages posted (accepted or not) and token requests, in order.
    pub log: Log,
    pub tokens_issued: AtomicU32,
    valid: Mutex<HashSet<String>>,
    sequence: AtomicU32,
}

impl Genesys {
    pub fn new(client_id: &str, client_secret: &str) -> Arc<Self> {
        Arc::new(Self {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            log: Log::default(),
            tokens_issued: AtomicU32::new(0),
            valid: Mutex::new(HashSet::new()),
            sequence: AtomicU32::new(0),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/oauth/token", post(token))
            .route("/api/v2/conversations/messages/agentless", post(agentless))
            .with_state(self.clone())
    }

    /// Every token issued so far stops working (they expired, or were revoked).
    pub fn expire_tokens(&self) {
        self.valid.lock().unwrap().clear();
    }

    /// Whether `token` was issued (the test checks it never reached the daemon's records).
    pub fn issued(&self, n: u32) -> String {
        format!("genesys-token-{n:04}-5ac1")
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({ "message": message, "code": code, "status": status.as_u16() }).to_string(),
    )
        .into_response()
}

async fn token(
    State(genesys): State<Arc<Genesys>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received::new(method, &uri, &headers, &body);
    let response = match basic_credentials(&headers) {
        Some((id, secret)) if id == genesys.client_id && secret == genesys.client_secret => {
            if body.as_ref() != b"grant_type=client_credentials" {
                (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/json")],
                    json!({ "error": "unsupported_grant_type" }).to_string(),
                )
                    .into_response()
            } else {
                let n = genesys.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
                let token = genesys.issued(n);
                genesys.valid.lock().unwrap().insert(token.clone());
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    json!({ "access_token": token, "token_type": "bearer", "expires_in": 86399 })
                        .to_string(),
                )
                    .into_response()
            }
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            json!({ "error": "invalid_client", "description": "client not found" }).to_string(),
        )
            .into_response(),
    };
    received.status = response.status().as_u16();
    genesys.log.push(received);
    response
}

async fn agentless(
    State(genesys): State<Arc<Genesys>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received::new(method, &uri, &headers, &body);
    let response = answer(&genesys, &headers, &body);
    received.status = response.status().as_u16();
    genesys.log.push(received);
    response
}

fn answer(genesys: &Genesys, headers: &HeaderMap, body: &Bytes) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match bearer {
        Some(token) if genesys.valid.lock().unwrap().contains(token) => {}
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication.required",
                "No authentication bearer token specified in authorization header.",
            );
        }
    }
    let json_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !json_type {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported.media.type",
            "Content-Type must be application/json",
        );
    }
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad.request",
            "The request could not be understood by the server due to malformed syntax.",
        );
    };
    for field in ["fromAddress", "toAddress", "toAddressMessengerType"] {
        if message[field].as_str().is_none_or(str::is_empty) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid.value",
                &format!("{field} is required"),
            );
        }
    }
    if message["textBody"].as_str().is_none() && message["messagingTemplate"].is_null() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid.value",
            "textBody or messagingTemplate is required",
        );
    }
    let n = genesys.sequence.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({
            "id": format!("agentless-{n}"),
            "conversationId": format!("conversation-{n}"),
            "fromAddress": message["fromAddress"],
            "toAddress": message["toAddress"],
            "messengerType": message["toAddressMessengerType"],
            "textBody": message["textBody"],
        })
        .to_string(),
    )
        .into_response()
}
