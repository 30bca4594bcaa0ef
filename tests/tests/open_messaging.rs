//! `open-messaging` (Genesys Cloud Open Messaging) through the real plugin host, on
//! normalized messages shaped like Genesys's documented examples (`tests/fixtures/genesys/`):
//! inbound text and attachments, the outbound webhook's agent message, receipts, typing, the
//! base64 `X-Hub-Signature-256`, and the agentless outbound request.

use std::sync::Arc;

use switchboard::engine::*;
use switchboard::plugin::{CallError, ChannelNotification, FailureKind, InboundRequest};
use switchboard_plugin_sdk::signature;
use switchboard_tests::{fixture, host, load};

const SECRET: &str = "genesys-outbound-webhook-secret";
const INTEGRATION: &str = "2b6f4a2e-8c3d-4a6b-9f5e-1d2c3b4a5e6f";
/// The integration is part of the thread key: the customer on another integration is another
/// conversation.
const THREAD: &str = "2b6f4a2e-8c3d-4a6b-9f5e-1d2c3b4a5e6f/grace.hopper@example.com";
const SETTINGS: &str = "integration_id = \"2b6f4a2e-8c3d-4a6b-9f5e-1d2c3b4a5e6f\"\nwebhook_secret = \"genesys-outbound-webhook-secret\"\n";

fn request(body: Vec<u8>, signature: Option<String>) -> InboundRequest {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(signature) = signature {
        headers.push(("x-hub-signature-256".to_owned(), signature));
    }
    InboundRequest {
        method: "POST".to_owned(),
        url: "https://switchboard.example.com/v1/inbound/open-messaging".to_owned(),
        headers,
        content_type: Some("application/json".to_owned()),
        body,
        received_at: Millis(1_800_000_000_000),
    }
}

fn signed(name: &str) -> InboundRequest {
    let body = fixture("genesys", name);
    let signature = format!(
        "sha256={}",
        signature::base64(&signature::hmac_sha256(SECRET.as_bytes(), &body))
    );
    request(body, Some(signature))
}

fn decode(name: &str) -> Vec<ChannelEvent> {
    load(&host(), "open-messaging", SETTINGS)
        .decode(&signed(name))
        .unwrap()
}

#[test]
fn inbound_text_and_attachments_are_customer_messages() {
    let events = decode("inbound-text.json");
    assert_eq!(
        events[0].id.as_deref(),
        Some("8d4c9d7a-2f51-4b8e-9a39-3c9c0d5f6b21")
    );
    match &events[0].body {
        EventBody::Message {
            conversation,
            sender: Sender::Customer,
            text,
            customer,
            channel,
            ..
        } => {
            assert_eq!(conversation.key.as_ref(), THREAD);
            assert_eq!(*channel, ChannelKind::Messaging);
            assert_eq!(&**text, "Hello, my invoice shows a double charge.");
            assert_eq!(
                customer.as_ref().unwrap().name.as_deref(),
                Some("Grace Hopper")
            );
        }
        other => panic!("{other:?}"),
    }
    match &decode("inbound-attachment.json")[0].body {
        EventBody::Message { text, .. } => {
            assert_eq!(
                &**text,
                "Here is the statement.\n[Image] https://files.example.com/statement.png statement.png"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_outbound_webhook_is_the_agent_speaking() {
    match &decode("outbound-agent.json")[0].body {
        EventBody::Message {
            conversation,
            sender: Sender::Agent(_),
            text,
            customer: None,
            ..
        } => {
            assert_eq!(
                conversation.key.as_ref(),
                THREAD,
                "the thread is the customer's"
            );
            assert!(text.starts_with("I can see the duplicate charge"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn receipts_and_typing() {
    let receipt = decode("receipt.json");
    assert!(matches!(
        &receipt[0].body,
        EventBody::Receipt {
            status: ReceiptStatus::Delivered,
            ..
        }
    ));
    assert_eq!(
        receipt[0].id.as_deref(),
        Some("00017fd6e4e5f2f88ed9d9d58b3ae9ee:Delivered")
    );
    assert!(matches!(
        &decode("typing.json")[..],
        [ChannelEvent {
            body: EventBody::Typing {
                sender: Sender::Customer,
                ..
            },
            ..
        }]
    ));
}

/// The per-integration inbound API (`POST /api/v2/conversations/messages/{integrationId}/inbound/open/message`,
/// `/event`, `/receipt`) takes bodies without `type` or `direction` (Genesys' SDK models
/// `OpenInboundNormalizedMessage`, `…Event`, and the receipt with `reasons` and
/// `isFinalReceipt`); the integration is in the URL.
#[test]
fn inbound_api_bodies_without_a_type() {
    let plugin = load(
        &host(),
        "open-messaging",
        "integration_ids = [\"f00dfeed-0000-4000-8000-000000000001\"]\n",
    );
    let inbound = |path: &str, body: &str| InboundRequest {
        url: format!(
            "https://api.mypurecloud.com/api/v2/conversations/messages/f00dfeed-0000-4000-8000-000000000001/inbound/open/{path}"
        ),
        ..request(body.as_bytes().to_vec(), None)
    };
    let customer = "f00dfeed-0000-4000-8000-000000000001/ada@example.com";
    let message = plugin
        .decode(&inbound(
            "message",
            r#"{"channel":{"messageId":"m-1","from":{"id":"ada@example.com","idType":"Email","firstName":"Ada","lastName":"Lovelace"},"time":"2025-06-08T21:40:00.000Z"},"text":"Is my order shipped?"}"#,
        ))
        .unwrap();
    match &message[..] {
        [
            ChannelEvent {
                body:
                    EventBody::Message {
                        conversation,
                        sender: Sender::Customer,
                        text,
                        ..
                    },
                ..
            },
        ] => {
            assert_eq!(conversation.key.as_ref(), customer);
            assert_eq!(&**text, "Is my order shipped?");
        }
        other => panic!("{other:?}"),
    }
    let typing = plugin
        .decode(&inbound(
            "event",
            r#"{"channel":{"from":{"id":"ada@example.com","idType":"Email"},"time":"2025-06-08T21:40:01.000Z"},"events":[{"eventType":"Typing","typing":{"type":"On","duration":5000}}]}"#,
        ))
        .unwrap();
    assert!(matches!(
        &typing[..],
        [ChannelEvent {
            body: EventBody::Typing {
                sender: Sender::Customer,
                ..
            },
            ..
        }]
    ));
    let receipt = plugin
        .decode(&inbound(
            "receipt",
            r#"{"id":"gc-msg-7","channel":{"to":{"id":"ada@example.com","idType":"Email"},"time":"2025-06-08T21:40:02.000Z"},"status":"Failed","reasons":[{"code":"RecipientOptedOut","message":"the customer opted out"}],"isFinalReceipt":true}"#,
        ))
        .unwrap();
    match &receipt[..] {
        [
            ChannelEvent {
                body:
                    EventBody::Receipt {
                        conversation,
                        status: ReceiptStatus::Failed,
                        message_id,
                        error,
                        ..
                    },
                ..
            },
        ] => {
            assert_eq!(conversation_key(conversation), customer);
            assert_eq!(&**message_id, "gc-msg-7");
            let error = error.as_ref().expect("the reason is kept");
            assert_eq!(
                (&*error.code, &*error.text),
                ("RecipientOptedOut", "the customer opted out")
            );
        }
        other => panic!("{other:?}"),
    }
    // Another integration than those listed is refused, with the list named.
    let other = InboundRequest {
        url:
            "https://api.mypurecloud.com/api/v2/conversations/messages/another/inbound/open/message"
                .to_owned(),
        ..inbound(
            "message",
            r#"{"channel":{"from":{"id":"ada@example.com"}},"text":"hi"}"#,
        )
    };
    match plugin.decode(&other) {
        Err(CallError::Plugin {
            kind: FailureKind::Unsupported,
            detail,
            ..
        }) => assert!(detail.contains("integration_ids"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

/// On the outbound webhook `channel.from` is the integration, receipts included: a receipt is
/// the customer's conversation's, not the integration's.
#[test]
fn a_webhook_receipt_belongs_to_the_customer() {
    let plugin = load(&host(), "open-messaging", SETTINGS);
    let body = format!(
        r#"{{"id":"gc-msg-8","channel":{{"platform":"Open","type":"Private","messageId":"gc-msg-8","from":{{"id":"{INTEGRATION}","idType":"Opaque"}},"to":{{"id":"grace.hopper@example.com","idType":"Email"}},"time":"2025-06-08T21:42:00.000Z"}},"type":"Receipt","status":"Delivered","direction":"Outbound"}}"#
    );
    let signature = format!(
        "sha256={}",
        signature::base64(&signature::hmac_sha256(SECRET.as_bytes(), body.as_bytes()))
    );
    let events = plugin
        .decode(&request(body.into_bytes(), Some(signature)))
        .unwrap();
    match &events[..] {
        [
            ChannelEvent {
                body: EventBody::Receipt { conversation, .. },
                ..
            },
        ] => {
            assert_eq!(conversation_key(conversation), THREAD)
        }
        other => panic!("{other:?}"),
    }
}

fn conversation_key(reference: &ConversationRef) -> &str {
    match reference {
        ConversationRef::External(external) => external.key.as_ref(),
        ConversationRef::Id { .. } => panic!("a plugin names threads"),
    }
}

#[test]
fn the_base64_signature_is_checked() {
    let plugin = load(&host(), "open-messaging", SETTINGS);
    let body = fixture("genesys", "inbound-text.json");
    let hex_instead = format!(
        "sha256={}",
        signature::hex(&signature::hmac_sha256(SECRET.as_bytes(), &body))
    );
    let wrong = format!(
        "sha256={}",
        signature::base64(&signature::hmac_sha256(b"other", &body))
    );
    for (request, why) in [
        (request(body.clone(), None), "missing"),
        (
            request(body.clone(), Some(hex_instead)),
            "hex instead of base64",
        ),
        (request(body.clone(), Some(wrong)), "wrong secret"),
    ] {
        match plugin.decode(&request) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(kind, FailureKind::Unauthorized, "{why}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }
}

#[test]
fn malformed_messages_are_typed_errors() {
    let plugin = load(&host(), "open-messaging", "integration_id = \"x\"\n");
    for (body, expected) in [
        (&b"[]"[..], FailureKind::InvalidPayload),
        (
            b"{\"channel\":{},\"type\":\"Text\",\"text\":\"hi\"}",
            FailureKind::InvalidPayload,
        ),
        (
            b"{\"channel\":{\"from\":{\"id\":\"a\"}},\"type\":\"Text\",\"direction\":\"Sideways\"}",
            FailureKind::InvalidPayload,
        ),
        (
            b"{\"channel\":{\"from\":{\"id\":\"a\"}},\"type\":\"Receipt\",\"status\":\"Lost\"}",
            FailureKind::InvalidPayload,
        ),
        (
            b"{\"channel\":{\"from\":{\"id\":\"a\"}},\"type\":\"Hologram\"}",
            FailureKind::Unsupported,
        ),
    ] {
        match plugin.decode(&request(body.to_vec(), None)) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(kind, expected, "{}", String::from_utf8_lossy(body))
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn supervisor_messages_go_out_agentless() {
    let plugin = load(&host(), "open-messaging", SETTINGS);
    let notification = ChannelNotification {
        notification: Notification {
            id: NotificationId {
                position: Position {
                    public: 3,
                    silent: 0,
                },
                index: 0,
            },
            conversation: ConversationId::parse("c-0123456789abcdef0123"),
            audience: Audience::Channel {
                plugin: "open-messaging".into(),
                thread: "grace.hopper@example.com".into(),
                customer: "grace.hopper@example.com".into(),
            },
            body: NotificationBody::Message {
                author: Author::Supervisor("sup-bea".into()),
                text: Arc::from("Hi Grace, Bea from billing here: the refund is confirmed."),
                visibility: Visibility::Public,
            },
        },
        thread: "grace.hopper@example.com".to_owned(),
        customer: "grace.hopper@example.com".to_owned(),
        customer_last_message_at: None,
        now: Millis(1_800_000_000_000),
    };
    let requests = plugin.encode(&notification).unwrap();
    let [request] = &requests[..] else {
        panic!("{requests:?}")
    };
    assert_eq!(
        request.url,
        "https://api.mypurecloud.com/api/v2/conversations/messages/agentless"
    );
    assert!(request.headers.contains(&(
        "authorization".to_owned(),
        "Bearer {{oauth:access_token}}".to_owned()
    )));
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["fromAddress"], "2b6f4a2e-8c3d-4a6b-9f5e-1d2c3b4a5e6f");
    assert_eq!(body["toAddress"], "grace.hopper@example.com");
    assert_eq!(body["toAddressMessengerType"], "open");
    assert_eq!(
        body["textBody"],
        "Hi Grace, Bea from billing here: the refund is confirmed."
    );
}
