//! `web-chat` (Chatwoot) through the real plugin host, on payloads shaped like Chatwoot's
//! documented webhook events (`tests/fixtures/chatwoot/`): conversation lifecycle, incoming,
//! outgoing and private messages, assignments, typing, `X-Chatwoot-Signature` over
//! `timestamp.body` with its freshness window, and the create-message API on the way out.

use std::sync::Arc;

use switchboard::engine::*;
use switchboard::plugin::{CallError, ChannelNotification, FailureKind, InboundRequest};
use switchboard_plugin_sdk::signature;
use switchboard_tests::{fixture, host, load};

const SECRET: &str = "chatwoot-webhook-secret";
const NOW: i64 = 1_749_419_000;
const SETTINGS: &str = r#"
base_url = "https://chat.example.com"
account_id = 1
webhook_secret = "chatwoot-webhook-secret"
agents = { "7" = "a-ana", "8" = "a-ben" }
teams = { "Support" = "support-chat", "Billing" = "billing" }
"#;

fn webhook(
    body: Vec<u8>,
    timestamp: i64,
    signature: Option<String>,
    delivery: &str,
) -> InboundRequest {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-chatwoot-timestamp".to_owned(), timestamp.to_string()),
        ("x-chatwoot-delivery".to_owned(), delivery.to_owned()),
    ];
    if let Some(signature) = signature {
        headers.push(("x-chatwoot-signature".to_owned(), signature));
    }
    InboundRequest {
        method: "POST".to_owned(),
        url: "https://switchboard.example.com/v1/inbound/web-chat".to_owned(),
        headers,
        content_type: Some("application/json".to_owned()),
        body,
        received_at: Millis(NOW * 1000),
    }
}

fn sign(timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "sha256={}",
        signature::hex(&signature::hmac_sha256(SECRET.as_bytes(), &message))
    )
}

fn signed(name: &str) -> InboundRequest {
    let body = fixture("chatwoot", name);
    let signature = sign(NOW - 2, &body);
    webhook(body, NOW - 2, Some(signature), &format!("delivery-{name}"))
}

fn bodies(name: &str) -> Vec<EventBody> {
    let plugin = load(&host(), "web-chat", SETTINGS);
    plugin
        .decode(&signed(name))
        .unwrap()
        .into_iter()
        .map(|event| event.body)
        .collect()
}

#[test]
fn conversation_created_starts_it_in_the_team_queue_with_its_assignee() {
    let events = bodies("conversation_created.json");
    match &events[..] {
        [
            EventBody::Started {
                conversation,
                channel,
                customer,
                queue,
                ..
            },
            EventBody::Accepted { agent, .. },
        ] => {
            assert_eq!(conversation.key.as_ref(), "1/42", "account/conversation");
            assert_eq!(*channel, ChannelKind::Web);
            assert_eq!(customer.id.as_ref(), "contact-77");
            assert_eq!(customer.name.as_deref(), Some("Ada Lovelace"));
            assert_eq!(queue.as_ref().map(|q| q.as_str()), Some("support-chat"));
            assert_eq!(agent.as_str(), "a-ana");
        }
        other => panic!("{other:#?}"),
    }
}

/// The Chatwoot account is part of the key: the same conversation id in another account is
/// another conversation, answered through that account's API; an account the settings do
/// not list is refused.
#[test]
fn each_account_keeps_its_own_conversations() {
    let plugin = load(
        &host(),
        "web-chat",
        "base_url = \"https://chat.example.com\"\n",
    );
    let of_account = |account: u64| {
        let body = String::from_utf8(fixture("chatwoot", "conversation_created.json"))
            .unwrap()
            .replace("\"account_id\":1", &format!("\"account_id\":{account}"));
        webhook(
            body.into_bytes(),
            NOW - 2,
            None,
            &format!("delivery-{account}"),
        )
    };
    let thread = |request: InboundRequest| match &plugin.decode(&request).unwrap()[0].body {
        EventBody::Started { conversation, .. } => conversation.key.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(thread(of_account(1)), "1/42");
    assert_eq!(thread(of_account(2)), "2/42");
    let mut reply = notification(NotificationBody::EndSession);
    reply.thread = "2/42".to_owned();
    assert_eq!(
        plugin.encode(&reply).unwrap()[0].url,
        "https://chat.example.com/api/v1/accounts/2/conversations/42/toggle_status"
    );
    let listed = load(
        &host(),
        "web-chat",
        "base_url = \"https://chat.example.com\"\naccount_ids = [1]\n",
    );
    assert!(listed.decode(&of_account(1)).is_ok());
    match listed.decode(&of_account(2)) {
        Err(CallError::Plugin {
            kind: FailureKind::Unsupported,
            detail,
            ..
        }) => assert!(detail.contains("account_ids"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn incoming_outgoing_private_and_activity_messages() {
    match &bodies("message_created_incoming.json")[..] {
        [
            EventBody::Message {
                sender: Sender::Customer,
                text,
                visibility: Visibility::Public,
                customer,
                ..
            },
        ] => {
            assert_eq!(
                &**text,
                "Hi, where is my order #1042? It was due on Monday."
            );
            assert_eq!(
                customer.as_ref().unwrap().name.as_deref(),
                Some("Ada Lovelace")
            );
        }
        other => panic!("{other:#?}"),
    }
    match &bodies("message_created_outgoing.json")[..] {
        [
            EventBody::Message {
                sender: Sender::Agent(agent),
                visibility: Visibility::Public,
                ..
            },
        ] => {
            assert_eq!(agent.as_str(), "a-ana")
        }
        other => panic!("{other:#?}"),
    }
    assert!(matches!(
        &bodies("message_created_private.json")[..],
        [EventBody::Message {
            visibility: Visibility::Internal,
            ..
        }]
    ));
    assert!(
        bodies("message_created_activity.json").is_empty(),
        "Chatwoot's activity lines are not messages"
    );
}

#[test]
fn status_assignment_team_and_typing() {
    assert!(matches!(
        &bodies("conversation_status_changed.json")[..],
        [EventBody::Closed { .. }]
    ));
    match &bodies("conversation_updated.json")[..] {
        [
            EventBody::Accepted { agent, .. },
            EventBody::Updated { queue, .. },
        ] => {
            assert_eq!(agent.as_str(), "a-ben");
            assert_eq!(queue.as_ref().map(|q| q.as_str()), Some("billing"));
        }
        other => panic!("{other:#?}"),
    }
    assert!(matches!(
        &bodies("conversation_typing_on.json")[..],
        [EventBody::Typing {
            sender: Sender::Customer,
            ..
        }]
    ));
}

#[test]
fn signature_and_freshness_window() {
    let plugin = load(&host(), "web-chat", SETTINGS);
    let body = fixture("chatwoot", "message_created_incoming.json");
    let stale = NOW - 3600;
    let future = NOW + 3600;
    for (request, why) in [
        (webhook(body.clone(), NOW, None, "d1"), "missing signature"),
        (
            webhook(body.clone(), NOW, Some(sign(NOW - 1, &body)), "d2"),
            "signed another timestamp",
        ),
        (
            webhook(body.clone(), stale, Some(sign(stale, &body)), "d3"),
            "stale",
        ),
        (
            webhook(body.clone(), future, Some(sign(future, &body)), "d4"),
            "from the future",
        ),
        (
            webhook(
                b"{\"event\":\"message_created\"}".to_vec(),
                NOW,
                Some(sign(NOW, &body)),
                "d5",
            ),
            "other body",
        ),
    ] {
        match plugin.decode(&request) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(kind, FailureKind::Unauthorized, "{why}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    let fresh = webhook(body.clone(), NOW - 10, Some(sign(NOW - 10, &body)), "d6");
    let events = plugin.decode(&fresh).unwrap();
    assert_eq!(
        events[0].id.as_deref(),
        Some("d6:message"),
        "the delivery id deduplicates redeliveries"
    );
}

#[test]
fn malformed_payloads_are_typed_errors() {
    let plugin = load(
        &host(),
        "web-chat",
        "base_url = \"https://chat.example.com\"\naccount_id = 1\n",
    );
    for (body, expected) in [
        (&b"not json"[..], FailureKind::InvalidPayload),
        (b"{}", FailureKind::InvalidPayload),
        (
            b"{\"event\":\"message_created\"}",
            FailureKind::InvalidPayload,
        ),
        (
            b"{\"event\":\"message_created\",\"id\":1,\"conversation\":{\"id\":\"x\"}}",
            FailureKind::InvalidPayload,
        ),
        (
            b"{\"event\":\"campaign_triggered\"}",
            FailureKind::Unsupported,
        ),
    ] {
        match plugin.decode(&webhook(body.to_vec(), NOW, None, "d")) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(kind, expected, "{}", String::from_utf8_lossy(body))
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

fn notification(body: NotificationBody) -> ChannelNotification {
    ChannelNotification {
        notification: Notification {
            id: NotificationId {
                position: Position {
                    public: 9,
                    silent: 0,
                },
                index: 0,
            },
            conversation: ConversationId::parse("c-0123456789abcdef0123"),
            audience: Audience::Channel {
                plugin: "web-chat".into(),
                thread: "42".into(),
                customer: "contact-77".into(),
            },
            body,
        },
        thread: "42".to_owned(),
        customer: "contact-77".to_owned(),
        customer_last_message_at: None,
        now: Millis(NOW * 1000),
    }
}

#[test]
fn outbound_create_message_and_resolve() {
    let plugin = load(&host(), "web-chat", SETTINGS);
    let requests = plugin
        .encode(&notification(NotificationBody::Message {
            author: Author::Supervisor("sup-sam".into()),
            text: Arc::from("Hi Ada, I am the team lead; a replacement ships today."),
            visibility: Visibility::Public,
        }))
        .unwrap();
    let [request] = &requests[..] else {
        panic!("{requests:?}")
    };
    assert_eq!(
        request.url,
        "https://chat.example.com/api/v1/accounts/1/conversations/42/messages"
    );
    assert!(request.headers.contains(&(
        "api_access_token".to_owned(),
        "{{secret:api_access_token}}".to_owned()
    )));
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["message_type"], "outgoing");
    assert_eq!(body["private"], false);
    assert_eq!(
        body["content"],
        "Hi Ada, I am the team lead; a replacement ships today."
    );

    let closing = plugin
        .encode(&notification(NotificationBody::EndSession))
        .unwrap();
    assert_eq!(
        closing[0].url,
        "https://chat.example.com/api/v1/accounts/1/conversations/42/toggle_status"
    );
    let body: serde_json::Value = serde_json::from_slice(&closing[0].body).unwrap();
    assert_eq!(body["status"], "resolved");
}
