//! Builders for a plugin's native tests (the plugin author's side, outside the daemon's flow):
//! the requests `decode` is given and the notifications `encode` is given, with the fields a
//! test does not care about filled in. Write your mapping as functions of the settings
//! (`pub fn decode(config: &Config, request: &Inbound)`, as the bundled plugins do) and test
//! them with several settings, no host needed:
//!
//! ```ignore
//! use switchboard_plugin_sdk::testing::{notification, request};
//!
//! let inbound = request(br#"{"chat_id": "42", "text": "hi"}"#)
//!     .header("x-signature", "sha256=...")
//!     .build();
//! let events = my_channel::decode(&config, &inbound).unwrap();
//!
//! let outgoing = notification("42", "customer-7").message("sup-1", "Hello").build();
//! let requests = my_channel::encode(&config, &outgoing).unwrap();
//! ```

use crate::types::{
    Author, Closing, Header, Inbound, Notification, NotificationBody, SupervisionMode,
    SupervisorEvent, TextMessage,
};

/// A fixed clock for tests: 2027-01-15T08:00:00Z, in milliseconds since the Unix epoch.
pub const NOW: i64 = 1_800_000_000_000;

/// An inbound request: `POST`, JSON unless said otherwise, received at [`NOW`].
pub fn request(body: impl Into<Vec<u8>>) -> RequestBuilder {
    RequestBuilder(Inbound {
        method: "POST".to_owned(),
        url: "https://switchboard.example/webhooks/my-channel".to_owned(),
        headers: vec![Header {
            name: "content-type".to_owned(),
            value: "application/json".to_owned(),
        }],
        content_type: Some("application/json".to_owned()),
        body: body.into(),
        received_at: NOW,
    })
}

/// Builds an [`Inbound`].
#[derive(Debug, Clone)]
pub struct RequestBuilder(Inbound);

impl RequestBuilder {
    /// A header (the name is lowered, as the host passes them).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        let name = name.to_ascii_lowercase();
        self.0.headers.retain(|header| header.name != name);
        self.0.headers.push(Header {
            name,
            value: value.into(),
        });
        self
    }

    /// The content type (and its header).
    pub fn content_type(self, content_type: &str) -> Self {
        let mut builder = self.header("content-type", content_type);
        builder.0.content_type = Some(content_type.to_owned());
        builder
    }

    /// The URL the provider called (what signatures such as Twilio's cover).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.0.url = url.into();
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.0.method = method.to_owned();
        self
    }

    /// When the host received it (signature freshness windows).
    pub fn received_at(mut self, millis: i64) -> Self {
        self.0.received_at = millis;
        self
    }

    pub fn build(self) -> Inbound {
        self.0
    }
}

/// A notification for a conversation's customer, at [`NOW`], whose customer last wrote a
/// minute before (inside any service window). Choose its body with one of the builder's
/// methods; the default is [`NotificationBody::EndSession`].
pub fn notification(thread: &str, customer: &str) -> NotificationBuilder {
    NotificationBuilder(Notification {
        id: "1.0".to_owned(),
        conversation: "c-00000000000000000001".to_owned(),
        thread: thread.to_owned(),
        customer: customer.to_owned(),
        customer_last_message_at: Some(NOW - 60_000),
        now: NOW,
        body: NotificationBody::EndSession,
    })
}

/// Builds a [`Notification`].
#[derive(Debug, Clone)]
pub struct NotificationBuilder(Notification);

impl NotificationBuilder {
    /// A supervisor's public message.
    pub fn message(mut self, supervisor: &str, text: &str) -> Self {
        self.0.body = NotificationBody::Message(TextMessage {
            author: Author::Supervisor(supervisor.to_owned()),
            text: text.to_owned(),
        });
        self
    }

    /// A supervisor joined (the customer is told for `ConsultPublic` and `Barge`).
    pub fn joined(mut self, supervisor: &str, mode: SupervisionMode) -> Self {
        self.0.body = NotificationBody::SupervisorJoined(SupervisorEvent {
            supervisor: supervisor.to_owned(),
            mode,
        });
        self
    }

    /// A supervisor closed the conversation.
    pub fn closed(mut self, supervisor: &str, reason: Option<&str>) -> Self {
        self.0.body = NotificationBody::ClosedBySupervisor(Closing {
            supervisor: supervisor.to_owned(),
            reason: reason.map(str::to_owned),
        });
        self
    }

    /// Any body.
    pub fn body(mut self, body: NotificationBody) -> Self {
        self.0.body = body;
        self
    }

    /// When the customer last wrote (`None`: never).
    pub fn customer_last_message_at(mut self, millis: Option<i64>) -> Self {
        self.0.customer_last_message_at = millis;
        self
    }

    /// The notification's id (the provider's idempotency key).
    pub fn id(mut self, id: &str) -> Self {
        self.0.id = id.to_owned();
        self
    }

    pub fn build(self) -> Notification {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_what_a_test_leaves_out() {
        let inbound = request("a=1")
            .content_type("application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", "sig")
            .url("https://hooks.example/webhooks/sms")
            .build();
        assert_eq!(
            inbound.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(inbound.headers.len(), 2);
        assert_eq!(crate::header(&inbound, "x-twilio-signature"), Some("sig"));
        let outgoing = notification("t", "c").message("sup-1", "Hello").build();
        assert!(matches!(
            outgoing.body,
            NotificationBody::Message(TextMessage { ref text, .. }) if text == "Hello"
        ));
        assert_eq!(outgoing.now, NOW);
    }
}
