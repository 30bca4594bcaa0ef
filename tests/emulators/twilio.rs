//! Twilio Programmable Messaging, as its API reference and OpenAPI description
//! (`twilio_api_v2010`: `CreateMessage`) define it: `POST
//! /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic auth with the account SID and
//! auth token, a form-encoded body with `To`, `From` (or `MessagingServiceSid`) and `Body` (or
//! `MediaUrl`), answered `201` with the Message resource. Errors are Twilio's JSON error body
//! (`code`, `message`, `more_info`, `status`): 20003 authentication, 21604/21603/21602 missing
//! parameters, 21610 an unsubscribed recipient, 20429 too many requests (HTTP 429).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::{Log, Received, basic_credentials};

/// A Twilio account as the emulator knows it.
#[derive(Debug)]
pub struct Twilio {
    pub account_sid: String,
    pub auth_token: String,
    /// Numbers that replied STOP: sending to them is refused with 21610.
    unsubscribed: std::sync::Mutex<Vec<String>>,
    /// The next this many requests are answered 429 (code 20429) with `Retry-After: 1`.
    pub throttle_next: AtomicU32,
    /// Twilio is down: every request is answered 503 (after the credentials check).
    pub down: std::sync::atomic::AtomicBool,
    pub log: Log,
    sequence: AtomicU32,
}

impl Twilio {
    /// An account whose `unsubscribed` numbers replied STOP.
    pub fn new(account_sid: &str, auth_token: &str, unsubscribed: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            unsubscribed: std::sync::Mutex::new(
                unsubscribed
                    .iter()
                    .map(|number| (*number).to_owned())
                    .collect(),
            ),
            throttle_next: AtomicU32::new(0),
            down: std::sync::atomic::AtomicBool::new(false),
            log: Log::default(),
            sequence: AtomicU32::new(0),
        })
    }

    /// The customer replied START: messages to the number are accepted again.
    pub fn resubscribe(&self, number: &str) {
        self.unsubscribed
            .lock()
            .unwrap()
            .retain(|unsubscribed| unsubscribed != number);
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(create_message),
            )
            .with_state(self.clone())
    }
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

async fn create_message(
    State(twilio): State<Arc<Twilio>>,
    Path(account): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut received = Received::new(method, &uri, &headers, &body);
    let response = answer(&twilio, &account, &headers, &body);
    received.status = response.status().as_u16();
    twilio.log.push(received);
    response
}

fn answer(twilio: &Twilio, account: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    match basic_credentials(headers) {
        Some((user, password)) if user == twilio.account_sid && password == twilio.auth_token => {
            if account != twilio.account_sid {
                return error(
                    StatusCode::NOT_FOUND,
                    20404,
                    "The requested resource was not found",
                );
            }
        }
        _ => return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"),
    }
    let form_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return error(
            StatusCode::BAD_REQUEST,
            20001,
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    if twilio.down.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "Service Unavailable",
        );
    }
    if twilio
        .throttle_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
    {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
        response
            .headers_mut()
            .insert("retry-after", "1".parse().expect("a header value"));
        return response;
    }
    let params: Vec<(String, String)> = form_urlencoded(body);
    let get = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let Some(to) = get("To") else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let from = get("From");
    if from.is_none() && get("MessagingServiceSid").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    let text = get("Body");
    if text.is_none() && get("MediaUrl").is_none() && get("ContentSid").is_none() {
        return error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    }
    if twilio.unsubscribed.lock().unwrap().contains(&to) {
        return error(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        );
    }
    let sid = format!(
        "SM{:032x}",
        u128::from(twilio.sequence.fetch_add(1, Ordering::SeqCst)) + 1
    );
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        json!({
            "account_sid": twilio.account_sid,
            "api_version": "2010-04-01",
            "body": text,
            "direction": "outbound-api",
            "from": from,
            "messaging_service_sid": get("MessagingServiceSid"),
            "num_segments": "1",
            "sid": sid,
            "status": "queued",
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", twilio.account_sid),
        })
        .to_string(),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs, decoded.
fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let decode = |text: &str| -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(byte) => {
                            out.push(byte);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}
