//! Meta's WhatsApp Cloud API, as its reference describes sending a message: `POST
//! /{version}/{phone-number-id}/messages` with `Authorization: Bearer <access token>` and a
//! JSON body (`messaging_product: "whatsapp"`, `to`, `type`, and the type's object), answered
//! `200` with `messages[].id` (the `wamid`). Errors are Graph's `{"error": {message, type,
//! code, error_data, fbtrace_id}}`: 190 an invalid token (401), 100 a bad parameter, 131047 a
//! free-form message more than 24 hours after the customer last wrote (400).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Log, Received};

/// A WhatsApp Business account as the emulator knows it.
#[derive(Debug)]
pub struct Meta {
    pub access_token: String,
    pub phone_number_id: String,
    /// Customers whose last message is more than 24 hours old: free-form text is refused
    /// with 131047.
    pub outside_window: Vec<String>,
    pub log: Log,
    sequence: AtomicU32,
}

impl Meta {
    pub fn new(access_token: &str, phone_number_id: &str, outside_window: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            access_token: access_token.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            outside_window: outside_window.iter().map(|id| (*id).to_owned()).collect(),
            log: Log::default(),
            sequence: AtomicU32::new(0),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/{version}/{phone}/messages", post(send_message))
            .with_state(self.clone())
    }
}

fn graph_error(
    status: StatusCode,
    code: u32,
    kind: &str,
    message: &str,
    details: &str,
) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({
            "error": {
                "message": message,
                "type": kind,
                "code": code,
                "error_data": { "messaging_product": "whatsapp", "details": details },
                "fbtrace_id": "AbCdEfGhIjKlMnOp",
            }
        })
        .to_string(),
    )
        .into_response()
}

async fn send_message(
    State(meta): State<Arc<Meta>>,
    Path((version, phone)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received::new(method, &uri, &headers, &body);
    let response = answer(&meta, &version, &phone, &headers, &body);
    received.status = response.status().as_u16();
    meta.log.push(received);
    response
}

fn answer(meta: &Meta, version: &str, phone: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if token != Some(meta.access_token.as_str()) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            190,
            "OAuthException",
            "Invalid OAuth access token - Cannot parse access token",
            "",
        );
    }
    if !version.starts_with('v') || phone != meta.phone_number_id {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "GraphMethodException",
            "Unsupported post request.",
            "",
        );
    }
    let json_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let Some(message) = json_type
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten()
    else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "OAuthException",
            "Invalid parameter",
            "The request body is not JSON.",
        );
    };
    if message["messaging_product"] != "whatsapp" {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "OAuthException",
            "(#100) The parameter messaging_product is required.",
            "messaging_product must be whatsapp",
        );
    }
    let Some(to) = message["to"].as_str() else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "OAuthException",
            "(#100) The parameter to is required.",
            "",
        );
    };
    if message["type"] == "text" && message["text"]["body"].as_str().is_none() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "OAuthException",
            "(#100) The parameter text['body'] is required.",
            "",
        );
    }
    if message["type"] == "text" && meta.outside_window.iter().any(|customer| customer == to) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            131047,
            "OAuthException",
            "(#131047) Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        );
    }
    let sequence = meta.sequence.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": to }],
            "messages": [{ "id": format!("wamid.EMULATED{sequence:08}") }],
        })
        .to_string(),
    )
        .into_response()
}
