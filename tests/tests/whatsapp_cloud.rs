//! `whatsapp-cloud` through the real plugin host, on payloads shaped like Meta's documented
//! webhook samples (`tests/fixtures/whatsapp/`): every message type, batched entries,
//! statuses, `X-Hub-Signature-256`, and the 24-hour customer service window on the way out.

use std::sync::Arc;

use switchboard::engine::*;
use switchboard::plugin::{CallError, ChannelNotification, FailureKind, InboundRequest};
use switchboard_plugin_sdk::signature;
use switchboard_tests::{fixture, host, load, load_with_time_limit, try_load};

const SECRET: &str = "meta-app-secret-for-tests";
const SETTINGS: &str =
    "phone_number_id = \"106540352242922\"\napp_secret = \"meta-app-secret-for-tests\"\n";

fn webhook(body: Vec<u8>, signature: Option<String>) -> InboundRequest {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(signature) = signature {
        headers.push(("x-hub-signature-256".to_owned(), signature));
    }
    InboundRequest {
        method: "POST".to_owned(),
        url: "https://switchboard.example.com/v1/inbound/whatsapp-cloud".to_owned(),
        headers,
        content_type: Some("application/json".to_owned()),
        body,
        received_at: Millis(1_800_000_000_000),
    }
}

fn signed(name: &str) -> InboundRequest {
    let body = fixture("whatsapp", name);
    let signature = format!(
        "sha256={}",
        signature::hex(&signature::hmac_sha256(SECRET.as_bytes(), &body))
    );
    webhook(body, Some(signature))
}

fn messages(events: &[ChannelEvent]) -> Vec<(String, String, Option<String>)> {
    events
        .iter()
        .filter_map(|event| match &event.body {
            EventBody::Message {
                conversation,
                text,
                customer,
                ..
            } => Some((
                conversation.key.to_string(),
                text.to_string(),
                customer
                    .as_ref()
                    .and_then(|c| c.name.as_deref().map(str::to_owned)),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_text_message_with_the_profile_name() {
    let plugin = load(&host(), "whatsapp-cloud", SETTINGS);
    let events = plugin.decode(&signed("text.json")).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].id.as_deref(),
        Some("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=")
    );
    let [(thread, text, name)] = &messages(&events)[..] else {
        panic!("{events:?}")
    };
    assert_eq!(thread, "106540352242922/16505551234", "number/customer");
    assert!(
        text.starts_with("Hi, I ordered the blue running shoes"),
        "{text}"
    );
    assert_eq!(name.as_deref(), Some("Sheena Nelson"));
}

#[test]
fn batched_entries_messages_and_statuses() {
    let plugin = load(&host(), "whatsapp-cloud", SETTINGS);
    let events = plugin.decode(&signed("batched.json")).unwrap();
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(
        messages(&events),
        vec![
            (
                "106540352242922/16505551234".to_owned(),
                "Is it in stock?".to_owned(),
                Some("Sheena Nelson".to_owned())
            ),
            (
                "106540352242922/14155550199".to_owned(),
                "Where is my refund?".to_owned(),
                Some("Ravi Kumar".to_owned())
            ),
        ]
    );
    let receipts: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.body {
            EventBody::Receipt {
                conversation: ConversationRef::External(thread),
                status,
                ..
            } => Some((thread.key.to_string(), *status)),
            _ => None,
        })
        .collect();
    // A failed status keeps Meta's reason: code and words.
    let errors: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.body {
            EventBody::Receipt { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            None,
            Some(ProviderError {
                code: "131047".into(),
                text: "Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number.".into(),
            })
        ]
    );
    assert_eq!(
        receipts,
        vec![
            (
                "106540352242922/16505551234".to_owned(),
                ReceiptStatus::Read
            ),
            (
                "106540352242922/14155550199".to_owned(),
                ReceiptStatus::Failed
            )
        ]
    );
}

#[test]
fn media_interactive_button_and_location_messages() {
    let plugin = load(&host(), "whatsapp-cloud", SETTINGS);
    let text = |name: &str| -> Vec<String> {
        messages(&plugin.decode(&signed(name)).unwrap())
            .into_iter()
            .map(|(_, text, _)| text)
            .collect()
    };
    assert_eq!(
        text("image.json"),
        vec!["[image image/jpeg media:1003383421387256] The box arrived damaged"]
    );
    assert_eq!(
        text("interactive.json"),
        vec![
            "Priority Mail Express [priority_express]",
            "Cancel [cancel-button]"
        ]
    );
    assert_eq!(text("button.json"), vec!["Stop promotions [unsubscribe]"]);
    // A button reply names the message it answers (`context.id`).
    let replies: Vec<Option<String>> = plugin
        .decode(&signed("interactive.json"))
        .unwrap()
        .into_iter()
        .filter_map(|event| match event.body {
            EventBody::Message { reply_to, .. } => Some(reply_to.map(String::from)),
            _ => None,
        })
        .collect();
    assert_eq!(
        replies[0].as_deref(),
        Some("wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=")
    );
    assert_eq!(
        text("location.json"),
        vec!["[location 37.483307,-122.148403] Main office, 1 Hacker Way, Menlo Park, CA 94025"]
    );
    // What cannot be mapped still shows that the customer sent something.
    assert_eq!(
        text("contacts.json"),
        vec!["[contacts] Jane Doe +1 (650) 555-0100"]
    );
    assert_eq!(
        text("unsupported.json"),
        vec![
            "[unsupported] the customer sent a message WhatsApp cannot show: Message type unknown (131051)"
        ]
    );
    let statuses = plugin.decode(&signed("statuses.json")).unwrap();
    let ids: Vec<_> = statuses
        .iter()
        .map(|event| event.id.clone().unwrap())
        .collect();
    assert_eq!(ids[0].rsplit(':').next(), Some("sent"));
    assert_eq!(ids[1].rsplit(':').next(), Some("delivered"));
    assert_ne!(ids[0], ids[1], "each status is its own event");
}

/// The business number is part of the key: the same customer writing to two of the business's
/// numbers is two conversations, and a reply leaves from the number written to. A number the
/// settings do not list is refused.
#[test]
fn each_business_number_keeps_its_own_conversations() {
    let open = load(&host(), "whatsapp-cloud", "");
    let to_number = |number: &str| {
        let body = String::from_utf8(fixture("whatsapp", "text.json"))
            .unwrap()
            .replace("106540352242922", number);
        webhook(body.into_bytes(), None)
    };
    let threads: Vec<String> = ["106540352242922", "209876543210987"]
        .into_iter()
        .map(|number| {
            messages(&open.decode(&to_number(number)).unwrap())[0]
                .0
                .clone()
        })
        .collect();
    assert_eq!(
        threads,
        ["106540352242922/16505551234", "209876543210987/16505551234"]
    );
    let mut reply = supervisor_message(Some(Millis::HOUR));
    reply.thread = threads[1].clone();
    let requests = open.encode(&reply).unwrap();
    assert_eq!(
        requests[0].url,
        "https://graph.facebook.com/v21.0/209876543210987/messages"
    );
    let listed = load(
        &host(),
        "whatsapp-cloud",
        "phone_number_ids = [\"106540352242922\"]\n",
    );
    assert!(listed.decode(&to_number("106540352242922")).is_ok());
    match listed.decode(&to_number("209876543210987")) {
        Err(CallError::Plugin {
            kind: FailureKind::Unsupported,
            detail,
            ..
        }) => assert!(detail.contains("phone_number_ids"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn signatures_that_fail_are_unauthorized() {
    let plugin = load(&host(), "whatsapp-cloud", SETTINGS);
    let body = fixture("whatsapp", "text.json");
    let good = format!(
        "sha256={}",
        signature::hex(&signature::hmac_sha256(SECRET.as_bytes(), &body))
    );
    let mut tampered = body.clone();
    tampered[200] ^= 1;
    let wrong_key = format!(
        "sha256={}",
        signature::hex(&signature::hmac_sha256(b"other", &body))
    );
    for (request, why) in [
        (webhook(body.clone(), None), "missing"),
        (webhook(tampered, Some(good.clone())), "tampered body"),
        (webhook(body.clone(), Some(wrong_key)), "wrong secret"),
        (
            webhook(
                body.clone(),
                Some(good.trim_start_matches("sha256=").to_owned()),
            ),
            "no prefix",
        ),
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
fn malformed_truncated_and_hostile_bodies_are_typed_errors() {
    // Decoding the 4 MiB body takes a good part of the default 100 ms budget (`plugins decode`
    // on it runs 0.1 s longer than on a small body), and with the tests running in parallel it
    // once went past it. The budget is tested in `sandbox.rs`; here the point is the typed
    // error.
    let plugin = load_with_time_limit(
        &host(),
        "whatsapp-cloud",
        "phone_number_id = \"106540352242922\"\n",
        std::time::Duration::from_secs(2),
    );
    let text = fixture("whatsapp", "text.json");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge_string = format!("{{\"object\":\"{}\"}}", "x".repeat(4 << 20));
    let cases: Vec<(Vec<u8>, FailureKind)> = vec![
        (Vec::new(), FailureKind::InvalidPayload),
        (text[..text.len() / 2].to_vec(), FailureKind::InvalidPayload),
        (b"{\"object\":\"page\",\"entry\":[]}".to_vec(), FailureKind::Unsupported),
        (b"\xff\xfe\x00garbage".to_vec(), FailureKind::InvalidPayload),
        (deep.into_bytes(), FailureKind::InvalidPayload),
        (huge_string.into_bytes(), FailureKind::Unsupported),
        (b"{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[{\"field\":\"messages\",\"value\":{\"messages\":[{\"from\":1}]}}]}]}".to_vec(), FailureKind::InvalidPayload),
    ];
    for (body, expected) in cases {
        let size = body.len();
        match plugin.decode(&webhook(body, None)) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(kind, expected, "body of {size} bytes")
            }
            other => panic!("body of {size} bytes: {other:?}"),
        }
    }
    // The plugin is still healthy and serving.
    assert_eq!(plugin.decode(&webhook(text, None)).unwrap().len(), 1);
}

fn supervisor_message(last_customer_message: Option<i64>) -> ChannelNotification {
    let now = Millis(1_800_000_000_000);
    ChannelNotification {
        notification: Notification {
            id: NotificationId {
                position: Position {
                    public: 7,
                    silent: 0,
                },
                index: 1,
            },
            conversation: ConversationId::parse("c-0123456789abcdef0123"),
            audience: Audience::Channel {
                plugin: "whatsapp-cloud".into(),
                thread: "16505551234".into(),
                customer: "16505551234".into(),
            },
            body: NotificationBody::Message {
                author: Author::Supervisor("sup-sam".into()),
                text: Arc::from(
                    "Hi Sheena, I am Sam from the support team. A replacement is on its way.",
                ),
                visibility: Visibility::Public,
            },
        },
        thread: "16505551234".to_owned(),
        customer: "16505551234".to_owned(),
        customer_last_message_at: last_customer_message.map(|ago| Millis(now.0 - ago)),
        now,
    }
}

#[test]
fn outbound_messages_inside_the_service_window() {
    let plugin = load(&host(), "whatsapp-cloud", SETTINGS);
    let requests = plugin
        .encode(&supervisor_message(Some(Millis::HOUR)))
        .unwrap();
    let [request] = &requests[..] else {
        panic!("{requests:?}")
    };
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.url,
        "https://graph.facebook.com/v21.0/106540352242922/messages"
    );
    assert!(request.headers.contains(&(
        "authorization".to_owned(),
        "Bearer {{secret:access_token}}".to_owned()
    )));
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["to"], "16505551234");
    assert_eq!(body["type"], "text");
    assert_eq!(
        body["text"]["body"],
        "Hi Sheena, I am Sam from the support team. A replacement is on its way."
    );
}

#[test]
fn free_form_messages_are_refused_outside_the_24_hour_window() {
    let plugin = load(&host(), "whatsapp-cloud", SETTINGS);
    for last in [Some(25 * Millis::HOUR), None] {
        match plugin.encode(&supervisor_message(last)) {
            Err(CallError::Plugin {
                kind: FailureKind::Unsupported,
                detail,
                ..
            }) => {
                assert!(
                    detail.contains("24-hour customer service window"),
                    "{detail}"
                )
            }
            other => panic!("{last:?}: {other:?}"),
        }
    }
}

/// A credential for outbound requests never sits in a plugin's settings (from where it would
/// reach the outbox): the plugin refuses it and says where it goes.
#[test]
fn an_access_token_in_the_settings_is_refused_with_where_it_belongs() {
    let error = try_load(
        &host(),
        "whatsapp-cloud",
        "access_token = \"EAAG-secret\"\n",
    )
    .expect_err("a credential in the settings is refused")
    .to_string();
    assert!(
        error.contains("[plugins.whatsapp-cloud.secrets]"),
        "{error}"
    );
    assert!(!error.contains("EAAG-secret"), "{error}");
}
