//! Inbound step for voice: the daemon holds Asterisk's ARI events WebSocket itself, for each
//! plugin whose settings name an ARI (`ari_url` and `application`: the voice-ari plugin), and
//! feeds every event to that plugin exactly as a webhook or an AMQP message would arrive. The
//! only module that imports tokio-tungstenite.
//!
//! The connection goes through the plugin's egress policy (its `allowed_hosts`, special
//! addresses only when listed), authenticates with HTTP Basic (`ari_user` and the plugin's
//! secret `ari_password`, filled in here as the delivery worker fills its placeholders), and
//! is made again with backoff whenever it drops. After each (re)connect, once subscribed, it
//! reconciles: `GET /channels` says which calls still exist, and every ongoing conversation of
//! the plugin whose channel is gone ends (the customer hung up while nobody listened).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::config::AriEvents;
use crate::delivery::{http, placeholder};
use crate::engine::{ChannelEvent, ConversationRef, EventBody, ExternalRef, PluginId};
use crate::pipeline::{Completion, Disposition, Submission};
use crate::service::Service;
use crate::transport::InboundMessage;
use crate::transport::amqp::InboundPublisher;

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One plugin's ARI events connection.
pub struct AriConnection {
    service: Arc<Service>,
    plugin: String,
    events: AriEvents,
    client: http::Client,
    /// With a broker: events go into the inbound exchange, as a gateway would publish them.
    broker: Option<Arc<InboundPublisher>>,
}

impl std::fmt::Debug for AriConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AriConnection")
            .field("plugin", &self.plugin)
            .field("application", &self.events.application)
            .finish_non_exhaustive()
    }
}

impl AriConnection {
    pub fn new(
        service: Arc<Service>,
        plugin: &str,
        events: AriEvents,
        client: http::Client,
        broker: Option<Arc<InboundPublisher>>,
    ) -> Self {
        Self {
            service,
            plugin: plugin.to_owned(),
            events,
            client,
            broker,
        }
    }

    /// Holds the connection until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let held = tokio::select! {
                () = stop.cancelled() => return,
                held = self.hold() => held,
            };
            match held {
                // It was up: start again from a short wait.
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(plugin = %self.plugin, error = %error, retry_in = ?backoff, "ARI events connection failed");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The `Authorization` header's value, if the plugin has an ARI user.
    fn authorization(&self) -> Result<Option<String>, String> {
        let Some(user) = &self.events.user else {
            return Ok(None);
        };
        let secrets = self
            .service
            .plugins()
            .iter()
            .find(|plugin| plugin.id() == self.plugin)
            .map(|plugin| plugin.secrets())
            .unwrap_or_default();
        placeholder::fill(
            &format!("Basic {{{{basic:{user}:ari_password}}}}"),
            &secrets,
        )
        .map(Some)
        .map_err(|error| error.to_string())
    }

    /// One connection: subscribe, reconcile, then every event until it drops (`Ok`) or cannot
    /// be made (`Err`).
    async fn hold(&self) -> Result<(), String> {
        let base = self.events.url.trim_end_matches('/');
        let stream = self
            .client
            .connect(base)
            .await
            .map_err(|error| error.to_string())?;
        let ws_base = base
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| {
                base.strip_prefix("http://")
                    .map(|rest| format!("ws://{rest}"))
            })
            .ok_or_else(|| "ari_url is not http(s)".to_owned())?;
        let url = format!(
            "{ws_base}/events?app={}",
            query_escape(&self.events.application)
        );
        let mut request = url
            .into_client_request()
            .map_err(|error| format!("not a WebSocket URL: {error}"))?;
        let authorization = self.authorization()?;
        if let Some(value) = &authorization {
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| "the ARI credentials do not fit in a header".to_owned())?;
            value.set_sensitive(true);
            request.headers_mut().insert("authorization", value);
        }
        let (mut socket, _) = tokio_tungstenite::client_async_tls(request, stream)
            .await
            .map_err(|error| format!("WebSocket handshake: {error}"))?;
        tracing::info!(plugin = %self.plugin, application = %self.events.application, "ARI events connected");
        // Subscribed now: whatever ends from here on arrives as an event; what ended while
        // nobody listened is found by asking.
        if let Err(error) = self.reconcile(authorization.as_deref()).await {
            tracing::warn!(plugin = %self.plugin, error = %error, "ARI reconciliation failed; calls that ended while disconnected stay open until their own events");
        }
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Text(text)) => self.feed(text.as_bytes()).await,
                Ok(Message::Binary(bytes)) => self.feed(&bytes).await,
                Ok(Message::Close(_)) => break,
                // Pings are answered by the socket itself.
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(plugin = %self.plugin, error = %error, "ARI events connection lost");
                    break;
                }
            }
        }
        tracing::info!(plugin = %self.plugin, "ARI events connection closed; connecting again");
        Ok(())
    }

    /// One event to the plugin, durably, before the next is read (so their order holds).
    async fn feed(&self, body: &[u8]) {
        let message = InboundMessage {
            ack: None,
            delivery_tag: 0,
            routing_key: self.plugin.clone(),
            content_type: Some("application/json".to_owned()),
            message_id: None,
            redelivered: false,
            headers: Vec::new(),
            body: body.to_vec(),
        };
        let mut wait = Duration::from_millis(100);
        loop {
            let outcome = match &self.broker {
                Some(broker) => broker
                    .publish(&message)
                    .await
                    .map_err(|error| error.to_string()),
                None => match self
                    .service
                    .submit(Submission::Inbound(message.clone()))
                    .await
                {
                    Ok(Completion::Inbound(Disposition::DeadLetter { code, detail })) => {
                        tracing::warn!(plugin = %self.plugin, code = %code, detail = %crate::telemetry::content(&detail), "an ARI event was refused");
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(error) => Err(error.to_string()),
                },
            };
            match outcome {
                Ok(()) => return,
                Err(error) if self.service.stopping.is_cancelled() => {
                    tracing::warn!(plugin = %self.plugin, error = %error, "stopping: an ARI event was not applied");
                    return;
                }
                Err(error) => {
                    // Busy or no broker: hold the socket (Asterisk buffers) and try again.
                    tracing::warn!(plugin = %self.plugin, error = %error, retry_in = ?wait, "an ARI event could not be applied yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Ends the ongoing conversations of this plugin whose channel Asterisk no longer has.
    async fn reconcile(&self, authorization: Option<&str>) -> Result<(), String> {
        let url = format!("{}/channels", self.events.url.trim_end_matches('/'));
        let headers: Vec<(String, String)> = authorization
            .map(|value| vec![("authorization".to_owned(), value.to_owned())])
            .unwrap_or_default();
        let answer = self
            .client
            .send("GET", &url, &headers, Vec::new())
            .await
            .map_err(|error| error.to_string())?;
        if answer.status != 200 {
            return Err(format!("GET /channels answered {}", answer.status));
        }
        let channels: Vec<serde_json::Value> = serde_json::from_slice(&answer.body)
            .map_err(|error| format!("GET /channels: not a list of channels ({error})"))?;
        let alive: HashSet<&str> = channels
            .iter()
            .filter_map(|channel| channel.get("id")?.as_str())
            .collect();
        let gone: Vec<Box<str>> = {
            let pipeline = self.service.pipeline().read().await;
            pipeline
                .engine()
                .state()
                .conversations()
                .filter(|conversation| {
                    conversation.state.is_ongoing()
                        && conversation.external.plugin.as_str() == self.plugin
                        && !alive.contains(&*conversation.external.key)
                })
                .map(|conversation| conversation.external.key.clone())
                .collect()
        };
        if gone.is_empty() {
            return Ok(());
        }
        tracing::info!(plugin = %self.plugin, calls = gone.len(), "calls that ended while the ARI connection was down: ending their conversations");
        let events = gone
            .into_iter()
            .map(|key| ChannelEvent {
                id: Some(format!("ari-reconciled:{key}").into_boxed_str()),
                source: PluginId::new(self.plugin.as_str()),
                body: EventBody::CustomerLeft {
                    conversation: ConversationRef::External(ExternalRef {
                        plugin: PluginId::new(self.plugin.as_str()),
                        key,
                    }),
                },
            })
            .collect();
        self.service
            .submit(Submission::Events(events))
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }
}

/// A query value, percent-encoded (an application name is usually plain).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
