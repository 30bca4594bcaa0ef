//! The webhook door, in-process through its router over the shipped configuration with each
//! provider's secret set: every bundled webhook plugin signed right and wrong, with the answer
//! its provider documents (Twilio's empty TwiML, Meta's `hub.challenge` handshake), ignored
//! events answered 2xx, the same payload twice applied once, an unsigned plugin refused unless
//! allowed, nothing but `/webhooks/{plugin}` served, and rate limits. Then the real binary:
//! the door on its own listener, reached by `curl` as a provider would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use switchboard::admin::door::{self, DoorContext};
use switchboard::config::{self, Config};
use switchboard::service::Service;
use switchboard_plugin_sdk::signature;
use switchboard_tests::{
    curl, fixture, free_port, shipped_config_with_door, switchboard_binary, temp_dir,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const TWILIO_TOKEN: &str = "door-test-twilio-auth-token";
const META_SECRET: &str = "door-test-meta-app-secret";
const META_VERIFY: &str = "door-test-meta-verify-token";
const CHATWOOT_SECRET: &str = "door-test-chatwoot-secret";
const GENESYS_SECRET: &str = "door-test-genesys-secret";

/// The shipped configuration text with every webhook plugin's secret set (voice-ari, which
/// has no webhooks, stays unsigned).
fn config_text(dir: &Path, port: u16, door_port: u16) -> String {
    let text = shipped_config_with_door(dir, port, door_port)
        .replace(
            "# webhook_secret = \"...\"\nbase_url",
            &format!("webhook_secret = \"{CHATWOOT_SECRET}\"\nbase_url"),
        )
        .replace(
            "# auth_token = \"...\"",
            &format!("auth_token = \"{TWILIO_TOKEN}\""),
        )
        .replace(
            "# app_secret = \"...\"\n# verify_token = \"...\"",
            &format!("app_secret = \"{META_SECRET}\"\nverify_token = \"{META_VERIFY}\""),
        )
        .replace(
            "# webhook_secret = \"...\"\nintegration_id",
            &format!("webhook_secret = \"{GENESYS_SECRET}\"\nintegration_id"),
        );
    for secret in [TWILIO_TOKEN, META_SECRET, CHATWOOT_SECRET, GENESYS_SECRET] {
        assert!(text.contains(secret), "the shipped config changed shape");
    }
    text
}

fn load(text: &str, dir: &Path) -> Config {
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, text).unwrap();
    config::load_with_env(&file, &[]).unwrap()
}

struct Door {
    router: Router,
    service: Arc<Service>,
    stop: CancellationToken,
}

impl Drop for Door {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const DOOR: &str = "127.0.0.1:8081";

fn door() -> Door {
    let dir = temp_dir("door");
    door_from(&config_text(&dir, free_port(), 8081), &dir)
}

/// The door of a daemon with this configuration text, its writer running.
fn door_from(text: &str, dir: &Path) -> Door {
    let config = load(text, dir);
    let service = Arc::new(switchboard::app::build(&config).unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(service.clone().run_writer(stop.clone()));
    let router = door::router(DoorContext::new(
        service.clone(),
        &config.server,
        DOOR.parse().unwrap(),
        &config.plugins,
    ));
    Door {
        router,
        service,
        stop,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Door {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", DOOR);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn post(&self, plugin: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
        self.send(
            Method::POST,
            &format!("/webhooks/{plugin}"),
            headers,
            body.to_vec(),
        )
        .await
    }

    async fn conversations(&self) -> usize {
        self.service
            .read(|engine| engine.state().conversations().count())
            .await
    }

    fn counted(&self, plugin: &str, outcome: &str) -> u64 {
        self.service
            .metrics()
            .counter("switchboard_webhook_requests_total", &[plugin, outcome])
    }
}

fn twilio_signature(url: &str, body: &str, token: &str) -> String {
    let mut pairs: Vec<(String, String)> = switchboard_plugin_sdk::form::parse(body.as_bytes())
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    pairs.sort();
    let mut data = url.to_owned();
    for (name, value) in pairs {
        data.push_str(&name);
        data.push_str(&value);
    }
    signature::base64(&signature::hmac_sha1(token.as_bytes(), data.as_bytes()))
}

fn meta_signature(body: &[u8], secret: &str) -> String {
    format!(
        "sha256={}",
        signature::hex(&signature::hmac_sha256(secret.as_bytes(), body))
    )
}

fn form(headers: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    let mut all = vec![(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    all.extend(headers);
    all
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json".to_owned())
}

const INBOUND_SMS: &str = "ToCountry=US&SmsMessageSid=SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e&NumMedia=0&SmsSid=SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e&SmsStatus=received&Body=My+order+never+arrived&FromCountry=US&To=%2B15005550006&NumSegments=1&MessageSid=SM5f6a1c0e9f1c4c0b8a3c3d1a2b3c4d5e&AccountSid=AC00000000000000000000000000000000&From=%2B14155551234&ApiVersion=2010-04-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_is_answered_with_empty_twiml_and_a_wrong_signature_is_401() {
    let door = door();
    let url = format!("http://{DOOR}/webhooks/sms-twilio");
    let wrong = door
        .post(
            "sms-twilio",
            &form(vec![(
                "x-twilio-signature",
                twilio_signature(&url, INBOUND_SMS, "not-the-token"),
            )]),
            INBOUND_SMS.as_bytes(),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    assert!(!wrong.body.contains(TWILIO_TOKEN));
    assert_eq!(door.conversations().await, 0);

    // Signed over another URL (a forged Host would give one): refused as well.
    let elsewhere = door
        .post(
            "sms-twilio",
            &form(vec![(
                "x-twilio-signature",
                twilio_signature(
                    "http://evil.example/webhooks/sms-twilio",
                    INBOUND_SMS,
                    TWILIO_TOKEN,
                ),
            )]),
            INBOUND_SMS.as_bytes(),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED);

    let signed = form(vec![(
        "x-twilio-signature",
        twilio_signature(&url, INBOUND_SMS, TWILIO_TOKEN),
    )]);
    let right = door
        .post("sms-twilio", &signed, INBOUND_SMS.as_bytes())
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(right.headers["content-type"], "text/xml");
    assert!(
        right.body.contains("<Response></Response>"),
        "{}",
        right.body
    );
    assert_eq!(door.conversations().await, 1);
    assert_eq!(door.counted("sms-twilio", "accepted"), 1);
    assert_eq!(door.counted("sms-twilio", "unauthorized"), 2);

    // Twilio retries when it missed the answer: the same payload again changes nothing.
    let again = door
        .post("sms-twilio", &signed, INBOUND_SMS.as_bytes())
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(door.conversations().await, 1);
    assert_eq!(door.counted("sms-twilio", "duplicate"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_is_what_a_signature_covers() {
    let door = door();
    // Without `public_url`, a signature over the URL the provider was given elsewhere fails...
    let public = "https://hooks.example.com/webhooks/sms-twilio";
    let headers = form(vec![(
        "x-twilio-signature",
        twilio_signature(public, INBOUND_SMS, TWILIO_TOKEN),
    )]);
    let refused = door
        .post("sms-twilio", &headers, INBOUND_SMS.as_bytes())
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // ...and with it configured, it holds, whatever Host the request came with.
    let dir = temp_dir("door-public");
    let text = config_text(&dir, free_port(), 8081).replace(
        "# public_url = \"https://hooks.example.com/webhooks/sms-twilio\"",
        &format!("public_url = \"{public}\""),
    );
    let public_door = door_from(&text, &dir);
    let taken = public_door
        .post("sms-twilio", &headers, INBOUND_SMS.as_bytes())
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_handshake_echoes_the_challenge_only_for_the_verify_token() {
    let door = door();
    let handshake = |token: &str| {
        format!(
            "/webhooks/whatsapp-cloud?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}"
        )
    };
    let right = door
        .send(Method::GET, &handshake(META_VERIFY), &[], Vec::new())
        .await;
    assert_eq!(right.status, StatusCode::OK);
    assert_eq!(right.body, "1158201444");
    assert!(
        right.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let wrong = door
        .send(Method::GET, &handshake("guess"), &[], Vec::new())
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.body.contains("1158201444"));
    assert!(!wrong.body.contains(META_VERIFY));

    // Not a handshake at all.
    let plain = door
        .send(Method::GET, "/webhooks/whatsapp-cloud", &[], Vec::new())
        .await;
    assert_eq!(plain.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_webhooks_need_the_app_secret_and_ignored_events_are_2xx() {
    let door = door();
    let body = fixture("whatsapp", "text.json");
    let missing = door.post("whatsapp-cloud", &[json_type()], &body).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    let wrong = door
        .post(
            "whatsapp-cloud",
            &[
                json_type(),
                ("x-hub-signature-256", meta_signature(&body, "nope")),
            ],
            &body,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = door
        .post(
            "whatsapp-cloud",
            &[
                json_type(),
                ("x-hub-signature-256", meta_signature(&body, META_SECRET)),
            ],
            &body,
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(door.conversations().await, 1);

    // Another object than a WhatsApp business account: the plugin ignores it on purpose,
    // so Meta must not retry it for days.
    let other = br#"{"object":"instagram","entry":[]}"#;
    let ignored = door
        .post(
            "whatsapp-cloud",
            &[
                json_type(),
                ("x-hub-signature-256", meta_signature(other, META_SECRET)),
            ],
            other,
        )
        .await;
    assert_eq!(ignored.status, StatusCode::OK, "{}", ignored.body);
    assert_eq!(door.counted("whatsapp-cloud", "ignored"), 1);

    // Signed but not JSON: malformed, 400.
    let garbage = b"{not json";
    let malformed = door
        .post(
            "whatsapp-cloud",
            &[
                json_type(),
                ("x-hub-signature-256", meta_signature(garbage, META_SECRET)),
            ],
            garbage,
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(door.conversations().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatwoot_and_genesys_are_signed_their_own_way() {
    let door = door();
    let body = fixture("chatwoot", "message_created_incoming.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let chatwoot = |secret: &str| {
        let mut signed = now.as_bytes().to_vec();
        signed.push(b'.');
        signed.extend_from_slice(&body);
        vec![
            json_type(),
            ("x-chatwoot-timestamp", now.clone()),
            (
                "x-chatwoot-signature",
                format!(
                    "sha256={}",
                    signature::hex(&signature::hmac_sha256(secret.as_bytes(), &signed))
                ),
            ),
        ]
    };
    let wrong = door.post("web-chat", &chatwoot("nope"), &body).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = door
        .post("web-chat", &chatwoot(CHATWOOT_SECRET), &body)
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);

    let body = fixture("genesys", "inbound-text.json");
    let genesys = |secret: &str| {
        vec![
            json_type(),
            (
                "x-hub-signature-256",
                format!(
                    "sha256={}",
                    signature::base64(&signature::hmac_sha256(secret.as_bytes(), &body))
                ),
            ),
        ]
    };
    let wrong = door.post("open-messaging", &genesys("nope"), &body).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = door
        .post("open-messaging", &genesys(GENESYS_SECRET), &body)
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(door.conversations().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_plugin_is_refused_unless_allowed() {
    let door = door();
    let event = fixture("ari", "stasis-start.json");
    let refused = door.post("voice-ari", &[json_type()], &event).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert_eq!(door.conversations().await, 0);
    drop(door);

    // `allow_unsigned` sits in the plugin's own table, before its `config` sub-table.
    let dir = temp_dir("door-unsigned");
    let text = config_text(&dir, free_port(), 8081).replace(
        "[plugins.voice-ari.config]",
        "allow_unsigned = true\n[plugins.voice-ari.config]",
    );
    let allowed = door_from(&text, &dir);
    let taken = allowed.post("voice-ari", &[json_type()], &event).await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);
    assert_eq!(allowed.conversations().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_serves_webhooks_and_nothing_else() {
    let door = door();
    for path in [
        "/metrics",
        "/openapi.json",
        "/healthz",
        "/readyz",
        "/v1/conversations",
        "/v1/inbound/whatsapp-cloud",
        "/webhooks",
        "/webhooks/whatsapp-cloud/extra",
        "/webhooks/not-a-plugin",
        "/console/",
    ] {
        for method in [Method::GET, Method::POST] {
            let answer = door.send(method.clone(), path, &[], Vec::new()).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert!(!answer.body.contains("switchboard_"), "{path}");
        }
    }
    let put = door
        .send(Method::PUT, "/webhooks/whatsapp-cloud", &[], Vec::new())
        .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);

    // The body limit holds before the plugin runs.
    let huge = vec![b'a'; 2 << 20];
    let too_large = door.post("whatsapp-cloud", &[json_type()], &huge).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_limited() {
    let dir = temp_dir("door-rate");
    let text = config_text(&dir, free_port(), 8081).replace(
        "webhook_listen =",
        "webhook_rate_limit = 3\nwebhook_listen =",
    );
    let door = door_from(&text, &dir);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = door
            .send(
                Method::GET,
                "/webhooks/whatsapp-cloud?hub.mode=subscribe&hub.challenge=1&hub.verify_token=x",
                &[],
                Vec::new(),
            )
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(answer.headers.contains_key("retry-after"));
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, [403, 403, 403, 429, 429]);
}

/// The real binary: the door on its own port next to the admin API, reached by `curl`.
#[test]
fn the_binary_opens_the_door_on_its_own_listener() {
    let dir = temp_dir("door-binary");
    let (port, door_port) = (free_port(), free_port());
    let file = dir.join("switchboard.toml");
    // Twilio's token from a mounted secret file, rotated below.
    std::fs::write(dir.join("twilio-token"), format!("{TWILIO_TOKEN}\n")).unwrap();
    let text = config_text(&dir, port, door_port).replace(
        &format!("auth_token = \"{TWILIO_TOKEN}\""),
        "auth_token = { file = \"twilio-token\" }",
    );
    std::fs::write(&file, text).unwrap();
    let mut daemon = Command::new(switchboard_binary())
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&[&format!("http://127.0.0.1:{port}/readyz")]).0 != 200 {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let base = format!("http://127.0.0.1:{door_port}/webhooks");
    let (status, body) = curl(&[&format!(
        "{base}/whatsapp-cloud?hub.mode=subscribe&hub.challenge=42&hub.verify_token={META_VERIFY}"
    )]);
    assert_eq!((status, body.as_str()), (200, "42"));
    let sms_url = format!("{base}/sms-twilio");
    let post = |token: &str| {
        curl(&[
            "-X",
            "POST",
            &sms_url,
            "-H",
            &format!(
                "X-Twilio-Signature: {}",
                twilio_signature(&sms_url, INBOUND_SMS, token)
            ),
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-binary",
            INBOUND_SMS,
        ])
    };
    let (status, body) = post(TWILIO_TOKEN);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Response>"), "{body}");
    let (status, _) = curl(&[&format!("http://127.0.0.1:{door_port}/metrics")]);
    assert_eq!(status, 404);
    // The admin API still has its own port, and the webhook became a conversation there.
    let (status, metrics) = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "switchboard_webhook_requests_total{plugin=\"sms-twilio\",outcome=\"accepted\"} 1"
        ),
        "{metrics}"
    );

    // The token is rotated: after a reload (which reads the secret file again) only the new
    // one signs.
    std::fs::write(dir.join("twilio-token"), "rotated-twilio-token").unwrap();
    let admin = Command::new(switchboard_binary())
        .args(["token", "--config"])
        .arg(&file)
        .args(["--sub", "root", "--role", "admin"])
        .output()
        .unwrap();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
    let (status, body) = curl(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{port}/v1/plugins/sms-twilio/reload"),
        "-H",
        &format!("Authorization: Bearer {admin}"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("rotated-twilio-token"), "{body}");
    assert_eq!(post(TWILIO_TOKEN).0, 401);
    assert_eq!(post("rotated-twilio-token").0, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert!(daemon.wait().unwrap().success());
}
