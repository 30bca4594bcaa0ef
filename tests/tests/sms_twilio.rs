//! `sms-twilio` through the real plugin host: Twilio's documented inbound webhook and status
//! callback shapes, signatures that pass and fail, outbound Messages API requests.

use std::sync::Arc;

use switchboard::engine::*;
use switchboard::plugin::{CallError, ChannelNotification, FailureKind, InboundRequest};
use switchboard_plugin_sdk::signature;
use switchboard_tests::{host, load};

const TOKEN: &str = "12345-auth-token";
const URL: &str = "https://switchboard.example.com/v1/inbound/sms-twilio";

fn settings(with_token: bool) -> String {
    let token = if with_token {
        format!("auth_token = \"{TOKEN}\"\n")
    } else {
        String::new()
    };
    format!(
        "account_sid = \"AC00000000000000000000000000000000\"\nfrom = \"+15005550006\"\n{token}"
    )
}

/// An inbound SMS webhook as Twilio documents it (form-encoded, all standard parameters).
fn inbound_sms() -> String {
    [
        "ToCountry=US",
        "ToState=CA",
        "SmsMessageSid=SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e",
        "NumMedia=0",
        "ToCity=SAN+FRANCISCO",
        "FromZip=94105",
        "SmsSid=SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e",
        "FromState=CA",
        "SmsStatus=received",
        "FromCity=SAN+FRANCISCO",
        "Body=Hi%21+My+order+%231042+never+arrived.+Can+you+help%3F",
        "FromCountry=US",
        "To=%2B15005550006",
        "ToZip=94105",
        "NumSegments=1",
        "MessageSid=SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e",
        "AccountSid=AC00000000000000000000000000000000",
        "From=%2B14155551234",
        "ApiVersion=2010-04-01",
    ]
    .join("&")
}

fn sign(url: &str, body: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_pairs(body);
    pairs.sort();
    let mut data = url.to_owned();
    for (name, value) in pairs {
        data.push_str(&name);
        data.push_str(&value);
    }
    signature::base64(&signature::hmac_sha1(TOKEN.as_bytes(), data.as_bytes()))
}

fn form_pairs(body: &str) -> Vec<(String, String)> {
    switchboard_plugin_sdk::form::parse(body.as_bytes())
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

fn request(body: String, signature: Option<String>) -> InboundRequest {
    let mut headers = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(signature) = signature {
        headers.push(("x-twilio-signature".to_owned(), signature));
    }
    InboundRequest {
        method: "POST".to_owned(),
        url: URL.to_owned(),
        headers,
        content_type: Some("application/x-www-form-urlencoded".to_owned()),
        body: body.into_bytes(),
        received_at: Millis(1_800_000_000_000),
    }
}

#[test]
fn an_inbound_sms_becomes_a_customer_message() {
    let host = host();
    let plugin = load(&host, "sms-twilio", &settings(true));
    assert_eq!(plugin.description().channel, ChannelKind::Sms);
    let body = inbound_sms();
    let signature = sign(URL, &body);
    let events = plugin.decode(&request(body, Some(signature))).unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(
        event.id.as_deref(),
        Some("SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e")
    );
    assert_eq!(event.source, PluginId::from("sms-twilio"));
    match &event.body {
        EventBody::Message {
            conversation,
            channel,
            sender,
            text,
            customer,
            ..
        } => {
            assert_eq!(
                conversation.key.as_ref(),
                "+15005550006/+14155551234",
                "the business number written to, then the customer"
            );
            assert_eq!(*channel, ChannelKind::Sms);
            assert_eq!(*sender, Sender::Customer);
            assert_eq!(&**text, "Hi! My order #1042 never arrived. Can you help?");
            assert_eq!(customer.as_ref().unwrap().id.as_ref(), "+14155551234");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn signatures_that_fail_are_unauthorized() {
    let host = host();
    let plugin = load(&host, "sms-twilio", &settings(true));
    let body = inbound_sms();
    let good = sign(URL, &body);
    for (request, why) in [
        (request(body.clone(), None), "missing"),
        (
            request(body.clone(), Some(sign("https://attacker.example/", &body))),
            "other URL",
        ),
        (
            request(body.replace("never+arrived", "arrived"), Some(good.clone())),
            "tampered body",
        ),
        (
            request(body.clone(), Some("not base64!".to_owned())),
            "garbage",
        ),
    ] {
        match plugin.decode(&request) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(
                    kind,
                    switchboard::plugin::FailureKind::Unauthorized,
                    "{why}"
                )
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    // Without a token configured nothing is checked (development).
    let open = load(&host, "sms-twilio", &settings(false));
    assert_eq!(open.decode(&request(body, None)).unwrap().len(), 1);
}

#[test]
fn mms_media_and_status_callbacks() {
    let host = host();
    let plugin = load(&host, "sms-twilio", &settings(false));
    let mms = "MessageSid=MM800f449d0399ed014aae2bcc0cc2f2ec&From=%2B14155551234&To=%2B15005550006&Body=&NumMedia=1&MediaContentType0=image%2Fjpeg&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC0%2FMessages%2FMM8%2FMedia%2FME1&AccountSid=AC00000000000000000000000000000000&ApiVersion=2010-04-01";
    let events = plugin.decode(&request(mms.to_owned(), None)).unwrap();
    match &events[0].body {
        EventBody::Message { text, .. } => assert!(
            text.starts_with("[image/jpeg] https://api.twilio.com/"),
            "{text}"
        ),
        other => panic!("{other:?}"),
    }
    let delivered = "SmsSid=SM5f6a&SmsStatus=delivered&MessageStatus=delivered&To=%2B14155551234&MessageSid=SM5f6a&AccountSid=AC00000000000000000000000000000000&From=%2B15005550006&ApiVersion=2010-04-01";
    let events = plugin.decode(&request(delivered.to_owned(), None)).unwrap();
    assert_eq!(events[0].id.as_deref(), Some("SM5f6a:delivered"));
    match &events[0].body {
        EventBody::Receipt {
            status: ReceiptStatus::Delivered,
            conversation: ConversationRef::External(thread),
            ..
        } => assert_eq!(
            thread.key.as_ref(),
            "+15005550006/+14155551234",
            "a status callback's From is the business number"
        ),
        other => panic!("{other:?}"),
    }
    // An undelivered message keeps Twilio's `ErrorCode` (and `ErrorMessage`, when sent).
    let undelivered = delivered.replace("delivered", "undelivered")
        + "&ErrorCode=30003&ErrorMessage=Unreachable+destination+handset";
    match &plugin.decode(&request(undelivered, None)).unwrap()[0].body {
        EventBody::Receipt {
            status: ReceiptStatus::Failed,
            error: Some(error),
            ..
        } => {
            assert_eq!(&*error.code, "30003");
            assert_eq!(&*error.text, "Unreachable destination handset");
        }
        other => panic!("{other:?}"),
    }
    let queued = delivered.replace("delivered", "queued");
    assert!(plugin.decode(&request(queued, None)).unwrap().is_empty());
}

/// The business number is part of the key, a reply leaves from the number written to, and a
/// number the settings do not list is refused.
#[test]
fn each_business_number_keeps_its_own_conversations() {
    let host = host();
    let open = load(&host, "sms-twilio", &settings(false));
    let to = |number: &str| {
        request(
            inbound_sms().replace(
                "To=%2B15005550006",
                &format!("To={}", number.replace('+', "%2B")),
            ),
            None,
        )
    };
    let thread = |request: InboundRequest| match &open.decode(&request).unwrap()[0].body {
        EventBody::Message { conversation, .. } => conversation.key.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(thread(to("+15005550006")), "+15005550006/+14155551234");
    assert_eq!(thread(to("+15005550007")), "+15005550007/+14155551234");
    let listed = load(
        &host,
        "sms-twilio",
        &format!("{}numbers = [\"+15005550006\"]\n", settings(false)),
    );
    assert!(listed.decode(&to("+15005550006")).is_ok());
    match listed.decode(&to("+15005550007")) {
        Err(CallError::Plugin {
            kind: FailureKind::Unsupported,
            detail,
            ..
        }) => assert!(detail.contains("`numbers`"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_payloads_are_typed_errors() {
    let host = host();
    let plugin = load(&host, "sms-twilio", &settings(false));
    for body in [
        "",
        "garbage",
        "From=%2B1&Body=hi",
        "MessageSid=SM1&Body=hi",
        "%%%%&&&==",
        // `NumMedia` is a count from 0 to 10; read as 0 it would drop attachments silently.
        "MessageSid=SM1&From=%2B1&To=%2B2&Body=hi&NumMedia=three",
        "MessageSid=SM1&From=%2B1&To=%2B2&Body=hi&NumMedia=-1",
        "MessageSid=SM1&From=%2B1&To=%2B2&Body=hi&NumMedia=11",
    ] {
        match plugin.decode(&request(body.to_owned(), None)) {
            Err(CallError::Plugin { kind, .. }) => {
                assert_eq!(
                    kind,
                    switchboard::plugin::FailureKind::InvalidPayload,
                    "{body:?}"
                )
            }
            other => panic!("{body:?}: {other:?}"),
        }
    }
    let mut json = request("{}".to_owned(), None);
    json.content_type = Some("application/json".to_owned());
    assert!(matches!(
        plugin.decode(&json),
        Err(CallError::Plugin { .. })
    ));
}

#[test]
fn a_supervisor_message_becomes_a_messages_api_request() {
    let host = host();
    let plugin = load(
        &host,
        "sms-twilio",
        &format!("{}outbound_auth = \"basic\"\n", settings(true)),
    );
    let notification = ChannelNotification {
        notification: Notification {
            id: NotificationId {
                position: Position {
                    public: 42,
                    silent: 0,
                },
                index: 0,
            },
            conversation: ConversationId::parse("c-0123456789abcdef0123"),
            audience: Audience::Channel {
                plugin: "sms-twilio".into(),
                thread: "+14155551234".into(),
                customer: "+14155551234".into(),
            },
            body: NotificationBody::Message {
                author: Author::Supervisor("sup-sam".into()),
                text: Arc::from("Hello, I am Sam, the team lead. I will sort this out."),
                visibility: Visibility::Public,
            },
        },
        thread: "+14155551234".to_owned(),
        customer: "+14155551234".to_owned(),
        customer_last_message_at: None,
        now: Millis(1_800_000_000_000),
    };
    let requests = plugin.encode(&notification).unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.url,
        "https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000/Messages.json"
    );
    let form = form_pairs(std::str::from_utf8(&request.body).unwrap());
    assert!(form.contains(&("To".to_owned(), "+14155551234".to_owned())));
    assert!(form.contains(&("From".to_owned(), "+15005550006".to_owned())));
    assert!(form.contains(&(
        "Body".to_owned(),
        "Hello, I am Sam, the team lead. I will sort this out.".to_owned()
    )));
    assert!(
        request
            .headers
            .iter()
            .any(|(name, value)| name == "authorization"
                && value == "Basic {{basic:AC00000000000000000000000000000000:auth_token}}")
    );
    assert!(
        request
            .headers
            .iter()
            .any(|(name, value)| name == "i-twilio-idempotency-token" && value == "42.0")
    );

    // A whisper can never be encoded for the customer, whatever reaches the host.
    let mut whisper = notification.clone();
    whisper.notification.body = NotificationBody::Whisper {
        supervisor: "sup-sam".into(),
        text: Arc::from("offer a refund"),
    };
    assert!(plugin.encode(&whisper).unwrap().is_empty());
}
