//! Provider emulators for the delivery tests: small HTTP servers that speak a provider's API
//! as its documentation describes it and check what the real provider checks (credentials,
//! content type, required fields), refusing what it would refuse with its own error bodies.
//! Each records what it received, so that a test can assert the exact request.
//!
//! - [`twilio`]: Programmable Messaging `POST /2010-04-01/Accounts/{Sid}/Messages.json`
//!   (Twilio's OpenAPI `twilio_api_v2010`).
//! - [`meta`]: the WhatsApp Cloud API's `POST /{version}/{phone-number-id}/messages`.
//! - [`chatwoot`]: Chatwoot's messages and conversation status calls.
//! - [`genesys`]: Genesys Cloud's OAuth client-credentials grant and Open Messaging's
//!   agentless outbound message.
//! - [`ari`]: Asterisk's REST Interface, the events WebSocket and the channel requests a
//!   supervisor's voice session makes (ARI's Swagger, `rest-api/api-docs`).

pub mod ari;
pub mod chatwoot;
pub mod genesys;
pub mod meta;
pub mod twilio;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};

/// One request as an emulator received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    /// Lowercase names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status the emulator answered.
    pub status: u16,
    /// When it arrived (the delivery benchmark's latency).
    pub at: std::time::Instant,
}

impl Received {
    fn new(method: Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Self {
        Self {
            method,
            path: uri.path().to_owned(),
            headers: headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
            body: body.to_vec(),
            status: 0,
            at: std::time::Instant::now(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What every emulator keeps: its log of requests.
#[derive(Clone, Debug, Default)]
pub struct Log(Arc<Mutex<Vec<Received>>>);

impl Log {
    fn push(&self, received: Received) {
        self.0.lock().unwrap().push(received);
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    /// How many requests it accepted (2xx), without copying them.
    pub fn accepted_count(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|received| (200..300).contains(&received.status))
            .count()
    }

    /// The requests it accepted (2xx).
    pub fn accepted(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|received| (200..300).contains(&received.status))
            .collect()
    }
}

/// Serves `router` on a free loopback port until the runtime ends; returns the address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    address
}

/// `user:password` of a Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}
