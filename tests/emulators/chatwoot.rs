//! Chatwoot's Application API, as its API reference describes the calls Switchboard makes:
//! `POST /api/v1/accounts/{account_id}/conversations/{conversation_id}/messages` (an agent's
//! `api_access_token` header; JSON with `content`, `message_type` `outgoing`|`incoming`,
//! `private`; answered with the message) and
//! `POST …/conversations/{conversation_id}/toggle_status` (`status` `open`, `resolved`,
//! `pending` or `snoozed`; answered with `payload.current_status`). A missing or wrong token is
//! `401 {"error": "You need to sign in or sign up before continuing."}`, an unknown account or
//! conversation `404`, a wrong body `422`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::{Log, Received};

/// One Chatwoot account with its conversations.
#[derive(Debug)]
pub struct Chatwoot {
    pub account_id: u64,
    pub api_access_token: String,
    pub log: Log,
    /// Conversation id -> status (`open`, `resolved`, …).
    statuses: Mutex<HashMap<u64, String>>,
    sequence: AtomicU32,
}

impl Chatwoot {
    /// An account whose `conversations` are open.
    pub fn new(account_id: u64, api_access_token: &str, conversations: &[u64]) -> Arc<Self> {
        Arc::new(Self {
            account_id,
            api_access_token: api_access_token.to_owned(),
            log: Log::default(),
            statuses: Mutex::new(
                conversations
                    .iter()
                    .map(|id| (*id, "open".to_owned()))
                    .collect(),
            ),
            sequence: AtomicU32::new(0),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/api/v1/accounts/{account}/conversations/{conversation}/messages",
                post(create_message),
            )
            .route(
                "/api/v1/accounts/{account}/conversations/{conversation}/toggle_status",
                post(toggle_status),
            )
            .with_state(self.clone())
    }

    /// A conversation's status, if it exists.
    pub fn status(&self, conversation: u64) -> Option<String> {
        self.statuses.lock().unwrap().get(&conversation).cloned()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// The checks every call shares: the token, then the account and the conversation; the body
/// as JSON.
fn checked(
    chatwoot: &Chatwoot,
    account: u64,
    conversation: u64,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Value, (StatusCode, &'static str)> {
    let token = headers
        .get("api_access_token")
        .and_then(|value| value.to_str().ok());
    if token != Some(chatwoot.api_access_token.as_str()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "You need to sign in or sign up before continuing.",
        ));
    }
    if account != chatwoot.account_id || chatwoot.status(conversation).is_none() {
        return Err((StatusCode::NOT_FOUND, "Resource could not be found"));
    }
    serde_json::from_slice(body)
        .map_err(|_| (StatusCode::UNPROCESSABLE_ENTITY, "invalid JSON body"))
}

async fn create_message(
    State(chatwoot): State<Arc<Chatwoot>>,
    Path((account, conversation)): Path<(u64, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received::new(method, &uri, &headers, &body);
    let response = match checked(&chatwoot, account, conversation, &headers, &body) {
        Err((status, message)) => error(status, message),
        Ok(message) => {
            let content = message["content"].as_str().unwrap_or_default();
            let kind = message["message_type"].as_str().unwrap_or("outgoing");
            if content.is_empty() {
                error(StatusCode::UNPROCESSABLE_ENTITY, "Content can't be blank")
            } else if !matches!(kind, "outgoing" | "incoming") {
                error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "message_type is not valid",
                )
            } else {
                let id = chatwoot.sequence.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    json!({
                        "id": id,
                        "content": content,
                        "message_type": if kind == "outgoing" { 1 } else { 0 },
                        "private": message["private"].as_bool().unwrap_or(false),
                        "conversation_id": conversation,
                        "account_id": account,
                    })
                    .to_string(),
                )
                    .into_response()
            }
        }
    };
    received.status = response.status().as_u16();
    chatwoot.log.push(received);
    response
}

async fn toggle_status(
    State(chatwoot): State<Arc<Chatwoot>>,
    Path((account, conversation)): Path<(u64, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received::new(method, &uri, &headers, &body);
    let response = match checked(&chatwoot, account, conversation, &headers, &body) {
        Err((status, message)) => error(status, message),
        Ok(request) => match request["status"].as_str() {
            Some(status @ ("open" | "resolved" | "pending" | "snoozed")) => {
                chatwoot
                    .statuses
                    .lock()
                    .unwrap()
                    .insert(conversation, status.to_owned());
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    json!({
                        "meta": {},
                        "payload": { "success": true, "conversation_id": conversation, "current_status": status },
                    })
                    .to_string(),
                )
                    .into_response()
            }
            _ => error(StatusCode::UNPROCESSABLE_ENTITY, "status is not valid"),
        },
    };
    received.status = response.status().as_u16();
    chatwoot.log.push(received);
    response
}
