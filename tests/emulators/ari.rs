//! Asterisk's REST Interface (ARI), as its Swagger description (`rest-api/api-docs` in the
//! Asterisk repository: `events.json`, `channels.json`) defines it: the events WebSocket
//! `GET /ari/events?app=…` (Basic auth, `app` required), `GET /ari/channels` (the live
//! channels), `POST /ari/channels/{channelId}/snoop` (`spy`, `whisper`, `app` required; 404
//! for an unknown channel), `POST /ari/channels` (originate: `endpoint` and `app` required),
//! `POST /ari/channels/{channelId}/play` and `DELETE /ari/channels/{channelId}` (404 for an
//! unknown channel). ARI answers errors as `{"message": …}`; parameters come in the query
//! string. The emulator keeps the live channels, so that a snoop or a hang-up refers to one
//! that exists, and can push events to the application and drop its connections.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;
use tokio::sync::broadcast;

use super::{Log, Received, basic_credentials};

/// An Asterisk with one Stasis application.
#[derive(Debug)]
pub struct Ari {
    pub user: String,
    pub password: String,
    pub application: String,
    /// Every REST request, for the test to check.
    pub log: Log,
    channels: Mutex<HashSet<String>>,
    events: broadcast::Sender<Frame>,
    connections: Mutex<u32>,
}

#[derive(Debug, Clone)]
enum Frame {
    Event(String),
    /// Close every events connection (Asterisk restarting, a network cut).
    Drop,
}

impl Ari {
    pub fn new(user: &str, password: &str, application: &str) -> Arc<Self> {
        Arc::new(Self {
            user: user.to_owned(),
            password: password.to_owned(),
            application: application.to_owned(),
            log: Log::default(),
            channels: Mutex::new(HashSet::new()),
            events: broadcast::channel(1024).0,
            connections: Mutex::new(0),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ari/events", get(events))
            .route("/ari/channels", get(list_channels).post(originate))
            .route("/ari/channels/{id}", delete(hang_up))
            .route("/ari/channels/{id}/snoop", post(snoop))
            .route("/ari/channels/{id}/play", post(play))
            .with_state(self.clone())
    }

    /// Events connections opened so far.
    pub fn connections(&self) -> u32 {
        *self.connections.lock().unwrap()
    }

    /// Whether a channel is up.
    pub fn has_channel(&self, id: &str) -> bool {
        self.channels.lock().unwrap().contains(id)
    }

    /// A channel exists (a call entered), without an event.
    pub fn add_channel(&self, id: &str) {
        self.channels.lock().unwrap().insert(id.to_owned());
    }

    /// A channel is gone (hung up), without an event: what happens while nobody listens.
    pub fn remove_channel(&self, id: &str) {
        self.channels.lock().unwrap().remove(id);
    }

    /// Sends an event to every connected application; the number of receivers.
    pub fn push(&self, event: &serde_json::Value) -> usize {
        self.events
            .send(Frame::Event(event.to_string()))
            .unwrap_or(0)
    }

    /// Closes every events connection.
    pub fn drop_connections(&self) {
        let _ = self.events.send(Frame::Drop);
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        basic_credentials(headers)
            .is_some_and(|(user, password)| user == self.user && password == self.password)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn events(
    State(ari): State<Arc<Ari>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !ari.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Authentication required");
    }
    let Some(app) = query.get("app") else {
        return error(StatusCode::BAD_REQUEST, "app parameter is required");
    };
    if app.split(',').all(|app| app != ari.application) {
        return error(
            StatusCode::BAD_REQUEST,
            "Invalid application provided in param [app].",
        );
    }
    *ari.connections.lock().unwrap() += 1;
    let receiver = ari.events.subscribe();
    upgrade.on_upgrade(move |socket| forward(socket, receiver))
}

async fn forward(mut socket: WebSocket, mut receiver: broadcast::Receiver<Frame>) {
    while let Ok(frame) = receiver.recv().await {
        match frame {
            Frame::Event(text) => {
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            Frame::Drop => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// Records a REST request, answering after the auth check.
fn recorded(
    ari: &Ari,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    answer: impl FnOnce() -> Response,
) -> Response {
    let mut received = Received::new(method, uri, headers, &Bytes::new());
    let response = if ari.authorized(headers) {
        answer()
    } else {
        error(StatusCode::UNAUTHORIZED, "Authentication required")
    };
    received.status = response.status().as_u16();
    ari.log.push(received);
    response
}

fn channel_json(id: &str) -> String {
    json!({ "id": id, "name": format!("PJSIP/{id}"), "state": "Up" }).to_string()
}

async fn list_channels(
    State(ari): State<Arc<Ari>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    recorded(&ari, method, &uri, &headers, || {
        let channels: Vec<serde_json::Value> = ari
            .channels
            .lock()
            .unwrap()
            .iter()
            .map(|id| json!({ "id": id, "name": format!("PJSIP/{id}"), "state": "Up" }))
            .collect();
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            serde_json::Value::Array(channels).to_string(),
        )
            .into_response()
    })
}

async fn originate(
    State(ari): State<Arc<Ari>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    recorded(&ari, method, &uri, &headers, || {
        if !query.contains_key("endpoint") {
            return error(StatusCode::BAD_REQUEST, "Endpoint must be specified");
        }
        if !query.contains_key("app") && !query.contains_key("extension") {
            return error(
                StatusCode::BAD_REQUEST,
                "Application or extension must be specified",
            );
        }
        let id = query
            .get("channelId")
            .cloned()
            .unwrap_or_else(|| format!("originated-{}", ari.log.all().len()));
        ari.add_channel(&id);
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            channel_json(&id),
        )
            .into_response()
    })
}

async fn snoop(
    State(ari): State<Arc<Ari>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    recorded(&ari, method, &uri, &headers, || {
        if !query.contains_key("app") {
            return error(StatusCode::BAD_REQUEST, "app parameter is required");
        }
        let valid = |name: &str| {
            query
                .get(name)
                .is_none_or(|value| matches!(value.as_str(), "none" | "both" | "out" | "in"))
        };
        if !valid("spy") || !valid("whisper") {
            return error(StatusCode::BAD_REQUEST, "Invalid direction specified");
        }
        if !ari.has_channel(&id) {
            return error(StatusCode::NOT_FOUND, "Channel not found");
        }
        let snoop = query
            .get("snoopId")
            .cloned()
            .unwrap_or_else(|| format!("snoop-{id}"));
        ari.add_channel(&snoop);
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            channel_json(&snoop),
        )
            .into_response()
    })
}

async fn play(
    State(ari): State<Arc<Ari>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    recorded(&ari, method, &uri, &headers, || {
        if !query.contains_key("media") {
            return error(StatusCode::BAD_REQUEST, "media parameter is required");
        }
        if !ari.has_channel(&id) {
            return error(StatusCode::NOT_FOUND, "Channel not found");
        }
        (
            StatusCode::CREATED,
            [("content-type", "application/json")],
            json!({ "id": "playback", "state": "queued" }).to_string(),
        )
            .into_response()
    })
}

async fn hang_up(
    State(ari): State<Arc<Ari>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    recorded(&ari, method, &uri, &headers, || {
        if !ari.channels.lock().unwrap().remove(&id) {
            return error(StatusCode::NOT_FOUND, "Channel not found");
        }
        StatusCode::NO_CONTENT.into_response()
    })
}
