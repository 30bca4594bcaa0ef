//! `voice-ari` through the real plugin host, on Asterisk ARI events shaped like the ARI
//! documentation's (`tests/fixtures/ari/`): the call's lifecycle, the agent's leg entering and
//! leaving the call's bridge, hold, DTMF; its `voice-controls` export; and the ARI requests
//! for listening (snoop `spy=both`), coaching (whisper snoop), barging and hanging up.

use switchboard::engine::*;
use switchboard::plugin::{CallError, ChannelNotification, FailureKind, InboundRequest, Plugin};
use switchboard_tests::{fixture, host, load};

const SETTINGS: &str = r#"
ari_url = "http://127.0.0.1:8088/ari"
application = "switchboard"
ari_user = "switchboard"
agent_endpoints = { "PJSIP/1001" = "a-ana" }
supervisor_endpoints = { "sup-sam" = "PJSIP/1101" }
joined_sound = "beep"
"#;

const CALL: &str = "1749418783.42";

fn event(name: &str) -> InboundRequest {
    InboundRequest {
        method: "POST".to_owned(),
        url: "ws://127.0.0.1:8088/ari/events?app=switchboard".to_owned(),
        headers: Vec::new(),
        content_type: Some("application/json".to_owned()),
        body: fixture("ari", name),
        received_at: Millis(1_800_000_000_000),
    }
}

fn plugin(settings: &str) -> Plugin {
    load(&host(), "voice-ari", settings)
}

fn bodies(plugin: &Plugin, name: &str) -> Vec<EventBody> {
    plugin
        .decode(&event(name))
        .unwrap()
        .into_iter()
        .map(|event| event.body)
        .collect()
}

#[test]
fn it_declares_voice_controls() {
    let plugin = plugin(SETTINGS);
    assert!(plugin.voice_controls());
    let description = plugin.description();
    assert_eq!(description.channel, ChannelKind::Voice);
    assert!(
        description
            .capabilities
            .contains(&"voice-controls".to_owned())
    );
    assert!(description.capabilities.contains(&"voice:coach".to_owned()));
    // Plugins without the export do not.
    assert!(
        !load(
            &host(),
            "sms-twilio",
            "account_sid = \"AC0\"\nfrom = \"+1\"\n"
        )
        .voice_controls()
    );
}

/// The agent `a-ana` accepted the call `CALL`, and nothing else happened.
fn assert_ana_joined_the_call(bodies: &[EventBody]) {
    match bodies {
        [
            EventBody::Accepted {
                conversation: ConversationRef::External(thread),
                agent,
            },
        ] => {
            assert_eq!(thread.key.as_ref(), CALL);
            assert_eq!(agent.as_str(), "a-ana");
        }
        other => panic!("{other:#?}"),
    }
}

/// A call the business places is outbound, and its customer is the number called: the
/// application says so as it originates (`direction=outbound`, `customer=`), or the caller is
/// one of `business_numbers` (then the connected line is the customer).
#[test]
fn originated_calls_are_outbound_to_the_number_called() {
    let plugin = plugin(&format!(
        "{SETTINGS}business_numbers = [\"+15005550006\"]\n"
    ));
    let started = |args: &str, connected: &str| {
        let body = String::from_utf8(fixture("ari", "stasis-start.json"))
            .unwrap()
            .replace(
                r#""args":["queue=support-voice"]"#,
                &format!(r#""args":[{args}]"#),
            )
            .replace(
                r#""caller":{"name":"Ada Lovelace","number":"+14155551234"}"#,
                r#""caller":{"name":"Acme","number":"+15005550006"}"#,
            )
            .replace(r#""connected":{"name":"","number":""}"#, connected);
        let mut request = event("stasis-start.json");
        request.body = body.into_bytes();
        match &plugin
            .decode(&request)
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect::<Vec<_>>()[..]
        {
            [
                EventBody::Started {
                    direction,
                    customer,
                    ..
                },
            ] => (*direction, customer.id.to_string()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        started(
            r#""direction=outbound","customer=+14155550123""#,
            r#""connected":{"name":"","number":""}"#
        ),
        (Direction::Outbound, "+14155550123".to_owned())
    );
    assert_eq!(
        started(
            r#""queue=support-voice""#,
            r#""connected":{"name":"Grace","number":"+14155550777"}"#
        ),
        (Direction::Outbound, "+14155550777".to_owned()),
        "the caller is a business number"
    );
    // The customer's own call stays inbound, from the caller.
    match &bodies(&plugin, "stasis-start.json")[..] {
        [
            EventBody::Started {
                direction,
                customer,
                ..
            },
        ] => {
            assert_eq!(*direction, Direction::Inbound);
            assert_eq!(customer.id.as_ref(), "+14155551234");
        }
        other => panic!("{other:?}"),
    }
}

/// Which supervisors have a phone to ring comes from the configuration, after it is read.
#[test]
fn supervisors_with_a_media_endpoint_are_declared() {
    assert_eq!(
        plugin(SETTINGS).description().media_supervisors,
        Some(vec!["sup-sam".to_owned()])
    );
}

#[test]
fn the_call_lifecycle() {
    let plugin = plugin(SETTINGS);
    match &bodies(&plugin, "stasis-start.json")[..] {
        [
            EventBody::Started {
                conversation,
                customer,
                queue,
                channel,
                ..
            },
        ] => {
            assert_eq!(conversation.key.as_ref(), CALL);
            assert_eq!(*channel, ChannelKind::Voice);
            assert_eq!(customer.id.as_ref(), "+14155551234");
            assert_eq!(customer.name.as_deref(), Some("Ada Lovelace"));
            assert_eq!(queue.as_ref().map(|q| q.as_str()), Some("support-voice"));
        }
        other => panic!("{other:#?}"),
    }
    assert_ana_joined_the_call(&bodies(&plugin, "agent-entered-bridge.json"));
    assert!(matches!(
        &bodies(&plugin, "hold.json")[..],
        [EventBody::Paused { .. }]
    ));
    assert!(matches!(
        &bodies(&plugin, "unhold.json")[..],
        [EventBody::Resumed { .. }]
    ));
    assert!(bodies(&plugin, "state-change.json").is_empty());
    assert!(matches!(
        &bodies(&plugin, "agent-left-bridge.json")[..],
        [EventBody::AgentLeft { .. }]
    ));
    for name in ["hangup.json", "destroyed.json", "stasis-end.json"] {
        assert!(
            matches!(&bodies(&plugin, name)[..], [EventBody::CustomerLeft { .. }]),
            "{name}"
        );
    }
}

/// What every Stasis application receives all the time (shapes from Asterisk's
/// `rest-api/api-docs/events.json`): acknowledged with no events, never dead-lettered.
#[test]
fn routine_ari_events_are_ignored() {
    let plugin = plugin(SETTINGS);
    let channel = r#""channel":{"id":"1749418783.42","name":"PJSIP/+14155551234-00000012","state":"Up","caller":{"name":"","number":"+14155551234"},"connected":{"name":"","number":""},"accountcode":"","dialplan":{"context":"from-trunk","exten":"100","priority":1},"creationtime":"2025-06-08T21:39:43.000+0000","language":"en"}"#;
    let routine = [
        format!(r#"{{"type":"ChannelVarset","variable":"BRIDGEPEER","value":"PJSIP/1001-00000013",{channel}}}"#),
        r#"{"type":"ChannelVarset","variable":"GLOBAL_FLAG","value":"1"}"#.to_owned(),
        format!(r#"{{"type":"ChannelDialplan","dialplan_app":"Stasis","dialplan_app_data":"switchboard",{channel}}}"#),
        format!(r#"{{"type":"ChannelConnectedLine",{channel}}}"#),
        format!(r#"{{"type":"ChannelTalkingStarted",{channel}}}"#),
        format!(r#"{{"type":"ChannelTalkingFinished","duration":1200,{channel}}}"#),
        format!(r#"{{"type":"ChannelCallerId","caller_presentation":0,"caller_presentation_txt":"Presentation Allowed, Not Screened",{channel}}}"#),
        format!(r#"{{"type":"ChannelCreated",{channel}}}"#),
        format!(r#"{{"type":"ChannelStateChange",{channel}}}"#),
        r#"{"type":"PlaybackStarted","playback":{"id":"pb-1","media_uri":"sound:beep","target_uri":"channel:1749418783.42","language":"en","state":"playing"}}"#.to_owned(),
        r#"{"type":"PlaybackFinished","playback":{"id":"pb-1","media_uri":"sound:beep","target_uri":"channel:1749418783.42","language":"en","state":"done"}}"#.to_owned(),
        r#"{"type":"BridgeCreated","bridge":{"id":"5f3c2a1e-0b9d-4c55-9b7e-3f1f5a2d9c10","technology":"simple_bridge","bridge_type":"mixing","bridge_class":"stasis","creator":"Stasis","name":"","channels":[]}}"#.to_owned(),
        r#"{"type":"BridgeDestroyed","bridge":{"id":"5f3c2a1e-0b9d-4c55-9b7e-3f1f5a2d9c10","technology":"simple_bridge","bridge_type":"mixing","bridge_class":"stasis","creator":"Stasis","name":"","channels":[]}}"#.to_owned(),
        r#"{"type":"DeviceStateChanged","device_state":{"name":"PJSIP/1001","state":"INUSE"}}"#.to_owned(),
        r#"{"type":"EndpointStateChange","endpoint":{"technology":"PJSIP","resource":"1001","state":"online","channel_ids":[]}}"#.to_owned(),
        r#"{"type":"Dial","peer":{"id":"1749418805.43","name":"PJSIP/1001-00000013","state":"Ring"},"dialstatus":"RINGING"}"#.to_owned(),
    ];
    for body in routine {
        let mut request = event("hold.json");
        request.body = body.clone().into_bytes();
        match plugin.decode(&request) {
            Ok(events) => assert!(events.is_empty(), "{body}: {events:?}"),
            Err(error) => panic!("{body}: {error:?}"),
        }
    }
}

/// Asterisk names a bridge with a UUID unless told otherwise: the bridge's channel list says
/// which call the agent joined.
#[test]
fn an_agent_joins_a_call_through_a_bridge_of_any_name() {
    let plugin = plugin(SETTINGS);
    let mut request = event("agent-entered-bridge.json");
    let body = String::from_utf8(request.body.clone()).unwrap().replace(
        r#""bridge":{"id":"1749418783.42""#,
        r#""bridge":{"id":"5f3c2a1e-0b9d-4c55-9b7e-3f1f5a2d9c10""#,
    );
    request.body = body.into_bytes();
    let bodies: Vec<EventBody> = plugin
        .decode(&request)
        .unwrap()
        .into_iter()
        .map(|event| event.body)
        .collect();
    assert_ana_joined_the_call(&bodies);
}

#[test]
fn dtmf_digits_are_not_recorded_unless_asked() {
    assert!(bodies(&plugin(SETTINGS), "dtmf.json").is_empty());
    let recording = plugin(&format!("{SETTINGS}record_dtmf = true\n"));
    assert!(matches!(
        &bodies(&recording, "dtmf.json")[..],
        [EventBody::Message {
            visibility: Visibility::Internal,
            ..
        }]
    ));
}

#[test]
fn malformed_events_are_typed_errors() {
    let plugin = plugin(SETTINGS);
    for (body, expected) in [
        (&b"{"[..], FailureKind::InvalidPayload),
        (b"{\"channel\":{}}", FailureKind::InvalidPayload),
        (b"{\"type\":\"StasisStart\"}", FailureKind::InvalidPayload),
        (
            b"{\"type\":\"FaxReceived\",\"channel\":{\"id\":\"1\"}}",
            FailureKind::Unsupported,
        ),
        // Routine events are ignored only in their documented shape.
        (b"{\"type\":\"ChannelVarset\"}", FailureKind::InvalidPayload),
        (
            b"{\"type\":\"PlaybackStarted\"}",
            FailureKind::InvalidPayload,
        ),
        (
            b"{\"type\":\"ChannelStateChange\"}",
            FailureKind::InvalidPayload,
        ),
    ] {
        let mut request = event("hold.json");
        request.body = body.to_vec();
        match plugin.decode(&request) {
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
                    public: 5,
                    silent: 0,
                },
                index: 0,
            },
            conversation: ConversationId::parse("c-0123456789abcdef0123"),
            audience: Audience::Channel {
                plugin: "voice-ari".into(),
                thread: CALL.into(),
                customer: "+14155551234".into(),
            },
            body,
        },
        thread: CALL.to_owned(),
        customer: "+14155551234".to_owned(),
        customer_last_message_at: None,
        now: Millis(1_800_000_000_000),
    }
}

fn urls(plugin: &Plugin, body: NotificationBody) -> Vec<String> {
    plugin
        .encode(&notification(body))
        .unwrap()
        .into_iter()
        .map(|request| format!("{} {}", request.method, request.url))
        .collect()
}

#[test]
fn listen_coach_barge_stop_and_hang_up_become_ari_requests() {
    let plugin = plugin(SETTINGS);
    let supervisor = UserId::from("sup-sam");
    let listen = urls(
        &plugin,
        NotificationBody::Media {
            control: MediaControl::Listen {
                supervisor: supervisor.clone(),
                agent: Some("a-ana".into()),
            },
        },
    );
    assert_eq!(listen.len(), 2, "{listen:?}");
    assert!(listen[0].starts_with(&format!("POST http://127.0.0.1:8088/ari/channels/{CALL}/snoop?spy=both&whisper=none&app=switchboard")), "{listen:?}");
    assert!(listen[0].contains("snoopId=snoop-sup-sam-"), "{listen:?}");
    assert!(
        listen[1].starts_with(
            "POST http://127.0.0.1:8088/ari/channels?endpoint=PJSIP%2F1101&app=switchboard"
        ),
        "{listen:?}"
    );

    let coach = urls(
        &plugin,
        NotificationBody::Media {
            control: MediaControl::Coach {
                supervisor: supervisor.clone(),
                agent: None,
            },
        },
    );
    assert!(
        coach[0].contains("spy=both&whisper=in"),
        "the whisper reaches the agent only: {coach:?}"
    );

    let barge = urls(
        &plugin,
        NotificationBody::Media {
            control: MediaControl::Join {
                supervisor: supervisor.clone(),
                mode: JoinMode::Public,
            },
        },
    );
    assert_eq!(barge.len(), 1);
    assert!(
        barge[0].contains(&format!("appArgs=role%3Dsupervisor%2Cbridge%3D{CALL}")),
        "{barge:?}"
    );

    let stop = urls(
        &plugin,
        NotificationBody::Media {
            control: MediaControl::Stop { supervisor },
        },
    );
    assert_eq!(
        stop,
        vec![
            format!("DELETE http://127.0.0.1:8088/ari/channels/snoop-sup-sam-{CALL}"),
            format!("DELETE http://127.0.0.1:8088/ari/channels/leg-sup-sam-{CALL}"),
        ]
    );

    let hang_up = plugin
        .encode(&notification(NotificationBody::EndSession))
        .unwrap();
    assert_eq!(hang_up[0].method, "DELETE");
    assert_eq!(
        hang_up[0].url,
        format!("http://127.0.0.1:8088/ari/channels/{CALL}?reason=normal")
    );
    assert!(
        hang_up[0]
            .headers
            .iter()
            .any(|(name, value)| name == "authorization"
                && value == "Basic {{basic:switchboard:ari_password}}")
    );

    // Text has no ARI equivalent.
    let message = NotificationBody::Message {
        author: Author::Supervisor("sup-sam".into()),
        text: "hi".into(),
        visibility: Visibility::Public,
    };
    assert!(plugin.encode(&notification(message)).unwrap().is_empty());
}

#[test]
fn an_unknown_supervisor_endpoint_is_a_config_error() {
    let plugin = plugin(SETTINGS);
    let request = notification(NotificationBody::Media {
        control: MediaControl::Listen {
            supervisor: "sup-nobody".into(),
            agent: None,
        },
    });
    match plugin.encode(&request) {
        Err(CallError::Plugin {
            kind: FailureKind::Config,
            detail,
            ..
        }) => assert!(detail.contains("sup-nobody"), "{detail}"),
        other => panic!("{other:?}"),
    }
}
