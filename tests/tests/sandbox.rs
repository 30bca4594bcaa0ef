//! The plugin sandbox with hostile plugins (`tests/plugins/hostile-*`): an infinite loop, a
//! memory bomb, a trap, a plugin that tries files, network, environment and clock, and one
//! built for another API version. Each attack costs the call that hit it; the next call on
//! the same plugin is served by a fresh instance, and other plugins never notice. And a plugin
//! sees only the request headers it declares (`request-headers`), all of them if it was built
//! before that interface existed.

use std::time::{Duration, Instant};

use switchboard::engine::{EventBody, Millis};
use switchboard::plugin::{
    CallError, Health, InboundRequest, LoadError, PluginHost, PluginSettings,
};
use switchboard_tests::{component, host, load, temp_dir, try_load};

fn body(text: &str) -> InboundRequest {
    InboundRequest {
        method: "POST".to_owned(),
        url: "https://switchboard.example/v1/inbound/hostile".to_owned(),
        headers: Vec::new(),
        content_type: Some("text/plain".to_owned()),
        body: text.as_bytes().to_vec(),
        received_at: Millis(0),
    }
}

fn sms() -> InboundRequest {
    InboundRequest {
        method: "POST".to_owned(),
        url: "https://switchboard.example/v1/inbound/sms-twilio".to_owned(),
        headers: Vec::new(),
        content_type: Some("application/x-www-form-urlencoded".to_owned()),
        body: b"MessageSid=SM1&From=%2B14155551234&To=%2B15005550006&Body=hello".to_vec(),
        received_at: Millis(0),
    }
}

const SMS_SETTINGS: &str = "account_sid = \"AC0\"\nfrom = \"+15005550006\"\n";

#[test]
fn an_infinite_loop_costs_one_call() {
    let host = host();
    let looping = load(&host, "hostile-loop", "");
    let started = Instant::now();
    let error = looping.decode(&body("attack")).unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, CallError::Timeout { .. }), "{error}");
    assert_eq!(error.code(), "plugin-timeout");
    // Behaviour, not speed: with a 100 ms budget the loop is interrupted rather than left to
    // run. The bound is a hundred times the budget, so that a loaded CI machine never fails
    // it and a host that stopped interrupting always does.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        looping.decode(&body("hello")).unwrap().is_empty(),
        "the next call is served"
    );
    assert_eq!(
        looping
            .stats()
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_memory_bomb_hits_its_cap() {
    let host = host();
    let bomb = host
        .load(PluginSettings {
            id: "hostile-memory-bomb".to_owned(),
            file: component("hostile-memory-bomb"),
            memory_limit: 16 << 20,
            time_limit: Duration::from_secs(5),
            settings: String::new(),
            secrets: Default::default(),
            public_url: None,
        })
        .unwrap();
    let error = bomb.decode(&body("attack")).unwrap_err();
    assert!(
        matches!(error, CallError::OutOfMemory { limit, .. } if limit == 16 << 20),
        "{error}"
    );
    assert_eq!(error.code(), "plugin-out-of-memory");
    assert!(bomb.decode(&body("hello")).unwrap().is_empty());
}

#[test]
fn a_trap_retires_the_instance_only() {
    let host = host();
    let trapping = load(&host, "hostile-trap", "");
    let error = trapping.decode(&body("attack")).unwrap_err();
    assert!(matches!(error, CallError::Trap { .. }), "{error}");
    assert_eq!(error.code(), "plugin-trap");
    assert!(
        error.to_string().contains("hostile-trap 0.1.0"),
        "errors name plugin and version: {error}"
    );
    assert!(trapping.decode(&body("hello")).unwrap().is_empty());
    let stats = trapping.stats();
    assert_eq!(stats.traps.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(
        stats
            .instances_retired
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn no_files_network_environment_or_clock() {
    let host = host();
    let prying = load(&host, "hostile-file-open", "");
    match prying.decode(&body("attack")) {
        Err(CallError::Plugin { detail, .. }) => {
            assert_eq!(
                detail, "file denied dir denied create denied socket denied env denied clock 0",
                "the sandbox granted something"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!std::path::Path::new("/tmp/switchboard-escape").exists());
}

#[test]
fn another_api_version_is_refused_before_instantiation() {
    let host = host();
    let error = try_load(&host, "hostile-wrong-version", "").unwrap_err();
    assert!(matches!(error, LoadError::ApiVersion { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("switchboard:channel@9.0.0"), "{message}");
    assert!(
        message.contains("0.1.0, 0.2.0"),
        "names every supported version: {message}"
    );
}

#[test]
fn a_plugin_that_keeps_failing_is_put_behind_a_breaker() {
    let host = host();
    let trapping = load(&host, "hostile-trap", "");
    for _ in 0..5 {
        assert!(matches!(
            trapping.decode(&body("attack")),
            Err(CallError::Trap { .. })
        ));
    }
    assert_eq!(trapping.health(), Health::Unhealthy);
    let refused = trapping.decode(&body("hello")).unwrap_err();
    assert!(
        matches!(refused, CallError::CircuitOpen { .. }),
        "{refused}"
    );
    assert_eq!(refused.code(), "plugin-unavailable");
    // After the first backoff (1 s) one call is let through; a success closes the breaker.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(trapping.decode(&body("hello")).unwrap().is_empty());
    assert_eq!(trapping.health(), Health::Healthy);
}

#[test]
fn other_plugins_keep_serving_while_one_misbehaves() {
    let host = host();
    let looping = load(&host, "hostile-loop", "");
    let texts = load(&host, "sms-twilio", SMS_SETTINGS);
    std::thread::scope(|scope| {
        let attacker = scope.spawn(|| {
            for _ in 0..5 {
                let _ = looping.decode(&body("attack"));
            }
        });
        let mut served = 0;
        while !attacker.is_finished() {
            assert_eq!(texts.decode(&sms()).unwrap().len(), 1);
            served += 1;
        }
        assert!(
            served > 10,
            "sms-twilio served only {served} calls during the attack"
        );
    });
}

#[test]
fn hot_reload_swaps_atomically_and_drops_nothing() {
    let dir = temp_dir("sandbox");
    let file = dir.join("sms_twilio.wasm");
    std::fs::copy(component("sms-twilio"), &file).unwrap();
    let host = PluginHost::new(64 << 20, Some(dir.join("cache"))).unwrap();
    let plugin = host
        .load(PluginSettings {
            id: "sms-twilio".to_owned(),
            file: file.clone(),
            memory_limit: 64 << 20,
            time_limit: Duration::from_millis(100),
            settings: SMS_SETTINGS.to_owned(),
            secrets: Default::default(),
            public_url: None,
        })
        .unwrap();
    assert!(
        plugin.reload_if_changed().unwrap().is_none(),
        "unchanged file, no reload"
    );
    let before = plugin.version_hash();
    // A new build of the same plugin: the same component plus a custom section.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&custom_section("switchboard-test", b"build 2"));
    let replaced = dir.join("replacement.wasm");
    std::fs::write(&replaced, &bytes).unwrap();
    std::fs::rename(&replaced, &file).unwrap();
    std::thread::scope(|scope| {
        let caller = scope.spawn(|| {
            let mut calls = 0;
            for _ in 0..2000 {
                assert_eq!(
                    plugin.decode(&sms()).unwrap().len(),
                    1,
                    "a call failed during reload"
                );
                calls += 1;
            }
            calls
        });
        assert!(plugin.reload_if_changed().unwrap().is_some());
        for _ in 0..5 {
            plugin.reload().unwrap();
        }
        assert_eq!(caller.join().unwrap(), 2000);
    });
    assert_ne!(plugin.version_hash(), before);
    // A replacement that is another plugin is refused; the current version stays.
    std::fs::copy(component("hostile-trap"), &file).unwrap();
    assert!(matches!(
        plugin.reload_if_changed(),
        Err(LoadError::IdMismatch { .. })
    ));
    assert_eq!(plugin.decode(&sms()).unwrap().len(), 1);
}

#[test]
fn compiled_plugins_are_cached_on_disk() {
    let dir = temp_dir("sandbox");
    let settings = PluginSettings {
        id: "sms-twilio".to_owned(),
        file: component("sms-twilio"),
        memory_limit: 64 << 20,
        time_limit: Duration::from_millis(100),
        settings: SMS_SETTINGS.to_owned(),
        secrets: Default::default(),
        public_url: None,
    };
    let first = PluginHost::new(64 << 20, Some(dir.clone()))
        .unwrap()
        .load(settings.clone())
        .unwrap();
    assert!(!first.loaded_from_cache());
    let second = PluginHost::new(64 << 20, Some(dir.clone()))
        .unwrap()
        .load(settings)
        .unwrap();
    assert!(second.loaded_from_cache());
    assert_eq!(second.decode(&sms()).unwrap().len(), 1);
}

#[test]
fn junk_files_are_refused_with_a_clear_message() {
    let dir = temp_dir("sandbox");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let error = host()
        .load(PluginSettings {
            id: "junk".to_owned(),
            file: junk,
            memory_limit: 64 << 20,
            time_limit: Duration::from_millis(100),
            settings: String::new(),
            secrets: Default::default(),
            public_url: None,
        })
        .unwrap_err();
    assert!(matches!(error, LoadError::Invalid { .. }), "{error}");
}

/// A plugin that declares its request headers is passed only those; one built before
/// `request-headers` existed is passed them all.
#[test]
fn plugins_see_only_the_request_headers_they_declare() {
    let host = host();
    let whatsapp = load(
        &host,
        "whatsapp-cloud",
        "phone_number_id = \"106540352242922\"\n",
    );
    let description = whatsapp.description();
    assert_eq!(
        description.request_headers,
        Some(vec!["x-hub-signature-256".to_owned()])
    );
    assert!(
        description
            .capabilities
            .contains(&"request-headers".to_owned())
    );

    // A plugin built against 0.1.0 and its `baseline` world (no `request-headers`, as before
    // it existed) still loads, through the host's 0.1 bindings, and is passed every header.
    let legacy = load(&host, "legacy-echo", "");
    let description = legacy.description();
    assert_eq!(description.api_version, "0.1.0");
    assert_eq!(description.request_headers, None);
    assert!(description.capabilities.is_empty(), "{description:?}");
    let mut request = body("hello");
    request.headers = [
        ("cookie", "session=1"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-hub-signature-256", "sha256=00"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .to_vec();
    let events = legacy.decode(&request).unwrap();
    let [event] = events.as_slice() else {
        panic!("one event expected: {events:?}");
    };
    let EventBody::Message { text, reply_to, .. } = &event.body else {
        panic!("a message expected: {event:?}");
    };
    assert_eq!(&**text, "cookie,x-forwarded-for,x-hub-signature-256");
    assert_eq!(
        reply_to, &None,
        "0.1 carries no reply-to: the adapter says none"
    );
}

/// A WebAssembly custom section (id 0): allowed anywhere in a component, ignored by it.
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut content = leb128(name.len());
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut section = vec![0u8];
    section.extend(leb128(content.len()));
    section.extend(content);
    section
}

fn leb128(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
