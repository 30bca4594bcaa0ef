//! The delivery worker end to end: the `switchboard` binary with its plugins pointed at
//! provider emulators (`tests/emulators/`), customers writing through the webhook door,
//! supervisors joining publicly and writing. Each emulator must receive exactly what its
//! provider needs (method, path, credentials filled in from `[plugins.<id>.secrets]` or fetched
//! with OAuth client credentials, body), in order: a 429 storm honoured; permanent refusals
//! (Twilio 21610, WhatsApp 131047) and the egress policy (a metadata address) end as `failed`
//! receipts and dead deliveries an admin can send again; Twilio's status callback lands on the
//! message the plugin read Twilio's `sid` for; a provider that is down gets a rest (a circuit
//! per host); a daemon killed mid-delivery loses nothing (embedded, and on RabbitMQ with a
//! second daemon taking the delivery queue over); and no secret reaches the store, the API or
//! the logs.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use switchboard_plugin_sdk::signature;
use switchboard_tests::emulators::{
    self, chatwoot::Chatwoot, genesys::Genesys, meta::Meta, twilio::Twilio,
};
use switchboard_tests::{
    ServingBinary, call, contains, curl, files_under, fixture, free_port, secret_forms,
    shipped_config_with_door, temp_dir, with_stored_values_expanded,
};

const ACCOUNT: &str = "AC00000000000000000000000000000000";
/// Distinctive values, searched for in everything the daemon wrote or answered.
const TWILIO_TOKEN: &str = "canary-twilio-auth-token-5f1e";
const META_TOKEN: &str = "canary-meta-access-token-9c2d";
const META_APP_SECRET: &str = "canary-meta-app-secret-77ab";
const PHONE_NUMBER_ID: &str = "106540352242922";
const UNSUBSCRIBED: &str = "+14155559999";
const OUTSIDE_WINDOW: &str = "16505550000";

struct Daemon {
    serving: ServingBinary,
    door: u16,
}

impl std::ops::Deref for Daemon {
    type Target = ServingBinary;
    fn deref(&self) -> &ServingBinary {
        &self.serving
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut ServingBinary {
        &mut self.serving
    }
}

impl Daemon {
    fn start(dir: &Path, twilio: u16, meta: u16) -> Self {
        Self::start_with(dir, twilio, meta, "")
    }

    /// [`Daemon::start`] with `extra` (TOML tables) appended to the configuration.
    fn start_with(dir: &Path, twilio: u16, meta: u16, extra: &str) -> Self {
        let (port, door) = (free_port(), free_port());
        std::fs::write(dir.join("twilio-token"), format!("{TWILIO_TOKEN}\n")).unwrap();
        std::fs::write(dir.join("meta-token"), META_TOKEN).unwrap();
        let text = shipped_config_with_door(dir, port, door)
            .replace(
                "api_base_url = \"https://api.twilio.com\"",
                &format!(
                    "api_base_url = \"http://127.0.0.1:{twilio}\"\nauth_token = {{ file = \"twilio-token\" }}"
                ),
            )
            .replace(
                "[plugins.sms-twilio.config]",
                &format!(
                    "allowed_hosts = [\"127.0.0.1:{twilio}\"]\nsecrets = {{ auth_token = {{ file = \"twilio-token\" }} }}\npublic_url = \"http://127.0.0.1:{door}/webhooks/sms-twilio\"\n[plugins.sms-twilio.config]"
                ),
            )
            .replace(
                "api_base_url = \"https://graph.facebook.com\"",
                &format!(
                    "api_base_url = \"http://127.0.0.1:{meta}\"\napp_secret = \"{META_APP_SECRET}\""
                ),
            )
            .replace(
                "[plugins.whatsapp-cloud.config]",
                &format!(
                    "allowed_hosts = [\"127.0.0.1:{meta}\"]\nsecrets = {{ access_token = {{ file = \"meta-token\" }} }}\n[plugins.whatsapp-cloud.config]"
                ),
            )
            // Genesys pointed at the cloud metadata address: the egress policy must refuse it
            // although the plugin's own settings name it.
            .replace(
                "api_base_url = \"https://api.mypurecloud.com\"",
                "api_base_url = \"http://169.254.169.254\"\nwebhook_secret = \"genesys-secret\"",
            )
            + extra;
        let config = dir.join("switchboard.toml");
        std::fs::write(&config, text).unwrap();
        Self {
            serving: ServingBinary::start(config, port),
            door,
        }
    }

    fn api(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let auth = format!("Authorization: Bearer {token}");
        let mut args = vec!["-X", method, url.as_str(), "-H", auth.as_str()];
        if let Some(body) = body {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let (status, text) = curl(&args);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A customer's SMS through the door, signed as Twilio signs.
    fn sms(&self, from: &str, text: &str, sid: &str) {
        self.twilio_webhook(&format!(
            "MessageSid={sid}&SmsSid={sid}&AccountSid={ACCOUNT}&From={}&To=%2B15005550006&Body={}&NumMedia=0",
            from.replace('+', "%2B"),
            text.replace(' ', "+")
        ));
    }

    /// A form Twilio posts to the door (an SMS, a status callback), signed as Twilio signs.
    fn twilio_webhook(&self, body: &str) {
        let url = format!("http://127.0.0.1:{}/webhooks/sms-twilio", self.door);
        let mut pairs: Vec<(String, String)> = switchboard_plugin_sdk::form::parse(body.as_bytes())
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        pairs.sort();
        let mut data = url.clone();
        for (name, value) in pairs {
            data.push_str(&name);
            data.push_str(&value);
        }
        let signature = signature::base64(&signature::hmac_sha1(
            TWILIO_TOKEN.as_bytes(),
            data.as_bytes(),
        ));
        let (status, answer) = curl(&[
            "-X",
            "POST",
            &url,
            "-H",
            &format!("X-Twilio-Signature: {signature}"),
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-binary",
            body,
        ]);
        assert_eq!(status, 200, "{answer}");
    }

    /// A customer's WhatsApp message through the door, signed as Meta signs.
    fn whatsapp(&self, from: &str, wamid: &str) {
        let body = String::from_utf8(fixture("whatsapp", "text.json"))
            .unwrap()
            .replace("16505551234", from)
            .replace("wamid.", &format!("wamid.{wamid}"));
        let signature = format!(
            "sha256={}",
            signature::hex(&signature::hmac_sha256(
                META_APP_SECRET.as_bytes(),
                body.as_bytes()
            ))
        );
        let (status, answer) = curl(&[
            "-X",
            "POST",
            &format!("http://127.0.0.1:{}/webhooks/whatsapp-cloud", self.door),
            "-H",
            &format!("X-Hub-Signature-256: {signature}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ]);
        assert_eq!(status, 200, "{answer}");
    }

    /// The id of the conversation whose customer is `customer`. On RabbitMQ the door answers
    /// once the webhook is in the broker, and the consumer applies it a moment later: wait
    /// for it.
    fn conversation(&self, token: &str, customer: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, report) = self.api("GET", "/v1/conversations", token, None);
            let found = report["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|summary| summary["customer"]["id"] == customer)
                .map(|summary| summary["id"].as_str().unwrap().to_owned());
            if let Some(id) = found {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "no conversation of {customer}: {report}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Assign, join publicly, write: the supervisor's public message goes to the customer.
    fn write_publicly(&self, token: &str, id: &str, agent: &str, text: &str) {
        let path = |action: &str| format!("/v1/conversations/{id}/{action}");
        let assigned = self.api(
            "POST",
            &path("assign"),
            token,
            Some(&format!(r#"{{"agent": "{agent}"}}"#)),
        );
        assert_eq!(assigned.0, 200, "{}", assigned.1);
        let joined = self.api("POST", &path("join"), token, Some(r#"{"mode": "public"}"#));
        assert_eq!(joined.0, 200, "{}", joined.1);
        let written = self.api(
            "POST",
            &path("messages"),
            token,
            Some(&format!(r#"{{"text": "{text}", "visibility": "public"}}"#)),
        );
        assert_eq!(written.0, 200, "{}", written.1);
    }

    /// A customer's SMS and a supervisor's public answer (two requests: the joined notice,
    /// the message) while Twilio answers every request 429: returns once the worker tried, so
    /// that both requests are held, waiting for a retry. The supervisor's token.
    fn held_in_a_429_storm(&self, twilio: &Twilio, sid: &str) -> String {
        let bea = self.supervisor_token("sup-bea", "billing");
        twilio.throttle_next.store(u32::MAX, Ordering::SeqCst);
        self.sms("+14155551234", "Where is my refund", sid);
        let id = self.conversation(&bea, "+14155551234");
        self.write_publicly(&bea, &id, "a-dev", "Your refund left today");
        let deadline = Instant::now() + Duration::from_secs(30);
        while twilio.log.all().is_empty() {
            assert!(Instant::now() < deadline, "the worker never tried");
            std::thread::sleep(Duration::from_millis(50));
        }
        bea
    }

    /// The conversation's receipts (`details` of its `receipt` timeline lines), once `count`
    /// are there.
    fn receipts(&self, token: &str, id: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, conversation) =
                self.api("GET", &format!("/v1/conversations/{id}"), token, None);
            let receipts: Vec<Value> = conversation["timeline"]
                .as_array()
                .map(|lines| {
                    lines
                        .iter()
                        .filter(|line| line["event"] == "receipt")
                        .map(|line| line["details"].clone())
                        .collect()
                })
                .unwrap_or_default();
            if receipts.len() >= count {
                return receipts;
            }
            assert!(
                Instant::now() < deadline,
                "{count} receipts never came: {conversation}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_messages_reach_the_providers_with_their_credentials_and_outcomes() {
    let twilio = Twilio::new(ACCOUNT, TWILIO_TOKEN, &[UNSUBSCRIBED]);
    let meta = Meta::new(META_TOKEN, PHONE_NUMBER_ID, &[OUTSIDE_WINDOW]);
    let twilio_port = emulators::serve(twilio.router()).await.port();
    let meta_port = emulators::serve(meta.router()).await.port();
    let dir = temp_dir("delivery");
    let daemon = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || Daemon::start(&dir, twilio_port, meta_port)
    })
    .await
    .unwrap();
    let daemon = std::sync::Arc::new(daemon);
    let run = {
        let daemon = daemon.clone();
        let twilio = twilio.clone();
        let meta = meta.clone();
        move || {
            let bea = daemon.supervisor_token("sup-bea", "billing");
            let sam = daemon.supervisor_token("sup-sam", "support");

            // SMS: a 429 storm on the first two attempts, honoured; both requests (the joined
            // notice, then the message) arrive once each, in order, with Basic auth.
            twilio.throttle_next.store(2, Ordering::SeqCst);
            daemon.sms(
                "+14155551234",
                "Where is my refund",
                "SM00000000000000000000000000000001",
            );
            let sms = daemon.conversation(&bea, "+14155551234");
            daemon.write_publicly(&bea, &sms, "a-dev", "Your refund left today");
            let receipts = daemon.receipts(&bea, &sms, 1);
            assert_eq!(receipts[0]["status"], "sent", "{receipts:?}");
            // The plugin read Twilio's answer: the message's `sid`, which Twilio's status
            // callback then names; `delivered` lands on our message.
            let sid = receipts[0]["provider_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no sid: {receipts:?}"))
                .to_owned();
            assert!(sid.starts_with("SM"), "{sid}");
            let ours = receipts[0]["message_id"].clone();
            // Twilio posts the message's statuses where its `StatusCallback` says: the door's
            // URL for the plugin, which the daemon filled in.
            let callback = format!(
                "StatusCallback={}",
                form_encoded(&format!(
                    "http://127.0.0.1:{}/webhooks/sms-twilio",
                    daemon.door
                ))
            );
            let message = twilio.log.accepted();
            assert!(
                message
                    .last()
                    .is_some_and(|request| request.text().contains(&callback)),
                "{message:#?}"
            );
            daemon.twilio_webhook(&format!(
                "MessageSid={sid}&SmsSid={sid}&AccountSid={ACCOUNT}&MessageStatus=delivered&To=%2B14155551234&From=%2B15005550006"
            ));
            let receipts = daemon.receipts(&bea, &sms, 2);
            assert_eq!(receipts[1]["status"], "delivered", "{receipts:?}");
            assert_eq!(receipts[1]["message_id"], ours, "{receipts:?}");
            assert_eq!(receipts[1]["provider_id"], sid.as_str(), "{receipts:?}");
            // The report shows where the newest outgoing message stands.
            let (_, report) = daemon.api("GET", "/v1/conversations", &bea, None);
            let row = report["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|row| row["id"] == sms.as_str())
                .cloned()
                .unwrap_or_default();
            assert_eq!(row["last_delivery"]["status"], "delivered", "{row}");
            assert_eq!(row["last_delivery"]["message_id"], ours, "{row}");
            let accepted = twilio.log.accepted();
            assert_eq!(accepted.len(), 2, "{accepted:#?}");
            assert!(
                accepted[0].text().contains("joined"),
                "{}",
                accepted[0].text()
            );
            assert!(
                accepted[1].text().contains("Body=Your+refund+left+today"),
                "{}",
                accepted[1].text()
            );
            for request in &accepted {
                assert_eq!(
                    request.path,
                    format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
                );
                assert!(request.text().contains("To=%2B14155551234"));
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{ACCOUNT}:{TWILIO_TOKEN}"))
                );
                assert_eq!(request.headers["authorization"], expected);
                assert!(request.headers.contains_key("i-twilio-idempotency-token"));
            }
            assert_eq!(
                twilio
                    .log
                    .all()
                    .iter()
                    .filter(|request| request.status == 429)
                    .count(),
                2
            );

            // An unsubscribed customer: Twilio refuses for good (21610), once, and the
            // timeline says why.
            daemon.sms(UNSUBSCRIBED, "STOP", "SM00000000000000000000000000000002");
            let stopped = daemon.conversation(&bea, UNSUBSCRIBED);
            daemon.write_publicly(&bea, &stopped, "a-dev", "Are you still there");
            let receipts = daemon.receipts(&bea, &stopped, 1);
            assert_eq!(receipts[0]["status"], "failed", "{receipts:?}");
            assert_eq!(receipts[0]["error"]["code"], "21610", "{receipts:?}");
            let refused = twilio
                .log
                .all()
                .into_iter()
                .filter(|request| request.status == 400)
                .count();
            assert_eq!(
                refused, 2,
                "the joined notice and the message, each tried once"
            );

            // WhatsApp: the bearer token filled in; a customer outside the 24-hour window
            // refused with 131047.
            daemon.whatsapp("16505551234", "A");
            let chat = daemon.conversation(&sam, "16505551234");
            daemon.write_publicly(&sam, &chat, "a-ana", "Hello from a supervisor");
            let receipts = daemon.receipts(&sam, &chat, 1);
            assert_eq!(receipts[0]["status"], "sent", "{receipts:?}");
            let sent = meta.log.accepted();
            assert!(sent.iter().all(|request| request.headers["authorization"]
                == format!("Bearer {META_TOKEN}")
                && request.path == format!("/v21.0/{PHONE_NUMBER_ID}/messages")));
            assert!(
                sent.iter()
                    .any(|request| request.text().contains("Hello from a supervisor"))
            );
            // A supervisor who types a placeholder sends the customer that text, never the
            // secret it names: only a request's URL and headers are filled (and a body its
            // plugin declared, which no bundled plugin does).
            let written = daemon.api(
                "POST",
                &format!("/v1/conversations/{chat}/messages"),
                &sam,
                Some(r#"{"text": "Token: {{secret:access_token}}", "visibility": "public"}"#),
            );
            assert_eq!(written.0, 200, "{}", written.1);
            daemon.receipts(&sam, &chat, 2);
            let typed = meta.log.accepted();
            let typed = typed
                .iter()
                .find(|request| request.text().contains("Token: "))
                .expect("the message with a placeholder was delivered");
            assert!(
                typed.text().contains("Token: {{secret:access_token}}")
                    && !typed.text().contains(META_TOKEN),
                "{}",
                typed.text()
            );
            daemon.whatsapp(OUTSIDE_WINDOW, "B");
            let late = daemon.conversation(&sam, OUTSIDE_WINDOW);
            daemon.write_publicly(&sam, &late, "a-ana", "Late reply");
            let receipts = daemon.receipts(&sam, &late, 1);
            assert_eq!(receipts[0]["status"], "failed", "{receipts:?}");
            assert_eq!(receipts[0]["error"]["code"], "131047", "{receipts:?}");

            // Genesys, whose settings point at the metadata address: refused by the egress
            // policy, never sent.
            let genesys = fixture("genesys", "inbound-text.json");
            let signed = format!(
                "sha256={}",
                signature::base64(&signature::hmac_sha256(b"genesys-secret", &genesys))
            );
            let (status, _) = curl(&[
                "-X",
                "POST",
                &format!("http://127.0.0.1:{}/webhooks/open-messaging", daemon.door),
                "-H",
                &format!("X-Hub-Signature-256: {signed}"),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                std::str::from_utf8(&genesys).unwrap(),
            ]);
            assert_eq!(status, 200);
            let messaging = daemon.conversation(&sam, "grace.hopper@example.com");
            daemon.write_publicly(&sam, &messaging, "a-ana", "Checking your invoice");
            let receipts = daemon.receipts(&sam, &messaging, 1);
            assert_eq!(receipts[0]["status"], "failed", "{receipts:?}");
            assert_eq!(
                receipts[0]["error"]["code"], "egress-refused",
                "{receipts:?}"
            );

            // Every refused request is a dead delivery, with the provider's code; credentials
            // stay placeholders there too.
            let admin = daemon.token(&["--sub", "root", "--role", "admin"]);
            let (status, dead) = daemon.api("GET", "/v1/deliveries/dead", &admin, None);
            assert_eq!(status, 200, "{dead}");
            let codes: Vec<&str> = dead["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|dead| dead["code"].as_str().unwrap())
                .collect();
            for code in ["21610", "131047", "egress-refused"] {
                assert!(codes.contains(&code), "no {code} among {dead}");
            }
            let unsubscribed: Vec<String> = dead["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dead| dead["code"] == "21610")
                .map(|dead| {
                    assert_eq!(dead["request"]["routing_key"], "channel.sms-twilio");
                    assert!(
                        dead["request"].to_string().contains(":auth_token}}"),
                        "{dead}"
                    );
                    dead["request"]["id"].as_str().unwrap().to_owned()
                })
                .collect();
            assert_eq!(unsubscribed.len(), 2, "{dead}");
            let (status, _) = daemon.api("GET", "/v1/deliveries/dead", &sam, None);
            assert_eq!(status, 403, "dead deliveries are for admins");

            // The customer texts START; an admin sends the two dead requests again, and they
            // arrive, in order, with a `sent` receipt on the timeline.
            twilio.resubscribe(UNSUBSCRIBED);
            let body = serde_json::json!({ "ids": unsubscribed }).to_string();
            let (status, resent) =
                daemon.api("POST", "/v1/deliveries/dead/resend", &admin, Some(&body));
            assert_eq!(status, 200, "{resent}");
            assert_eq!(resent["resent"].as_array().unwrap().len(), 2, "{resent}");
            let receipts = daemon.receipts(&bea, &stopped, 2);
            assert_eq!(receipts[1]["status"], "sent", "{receipts:?}");
            let arrived: Vec<String> = twilio
                .log
                .accepted()
                .iter()
                .filter(|request| request.text().contains("To=%2B14155559999"))
                .map(|request| request.text())
                .collect();
            assert_eq!(arrived.len(), 2, "{arrived:#?}");
            assert!(arrived[0].contains("joined") && arrived[1].contains("Are+you+still+there"));
            let (_, dead) = daemon.api("GET", "/v1/deliveries/dead", &admin, None);
            assert!(
                !dead.to_string().contains("21610"),
                "sent again, no longer dead: {dead}"
            );

            // Nothing the daemon keeps or answers carries a credential.
            let (_, outbox) = daemon.api("GET", "/v1/outbox?limit=1000", &admin, None);
            let (_, plugins) = daemon.api("GET", "/v1/plugins", &admin, None);
            let mut seen = vec![outbox.to_string(), plugins.to_string(), dead.to_string()];
            seen.push(std::fs::read_to_string(&daemon.log).unwrap_or_default());
            for conversation in [&sms, &stopped, &chat, &late, &messaging] {
                let (_, details) = daemon.api(
                    "GET",
                    &format!("/v1/conversations/{conversation}"),
                    &admin,
                    None,
                );
                seen.push(details.to_string());
            }
            (seen, daemon.log.clone())
        }
    };
    let (answers, _log) = tokio::task::spawn_blocking(run).await.unwrap();
    let mut haystack: Vec<Vec<u8>> = answers.into_iter().map(String::into_bytes).collect();
    haystack.extend(
        files_under(&dir.join("data"))
            .into_iter()
            .map(|file| with_stored_values_expanded(&std::fs::read(&file).unwrap_or_default())),
    );
    // The search would find the token inside the Basic header the worker sends.
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TWILIO_TOKEN}"));
    assert!(
        secret_forms(TWILIO_TOKEN)
            .iter()
            .any(|form| contains(basic.as_bytes(), form.as_bytes()))
    );
    for secret in [TWILIO_TOKEN, META_TOKEN] {
        for form in secret_forms(secret) {
            for bytes in &haystack {
                assert!(
                    !contains(bytes, form.as_bytes()),
                    "a secret ({form}) was found in what the daemon kept or answered"
                );
            }
        }
    }
}

/// The shipped configuration changed by `change`, served; the daemon and its door's port.
fn serve_changed(dir: &Path, change: impl FnOnce(String) -> String) -> (ServingBinary, u16) {
    let (port, door) = (free_port(), free_port());
    let config = dir.join("switchboard.toml");
    std::fs::write(&config, change(shipped_config_with_door(dir, port, door))).unwrap();
    (ServingBinary::start(config, port), door)
}

/// A token of `sup-sam`, supervisor of the support team.
fn support_supervisor(daemon: &ServingBinary) -> String {
    daemon.supervisor_token("sup-sam", "support")
}

/// `[amqp]` tables for a daemon on the test broker: `names` shared (outbound exchange, delivery
/// and dead queues), the inbound exchange and queue of its own (`inbound`), so that each
/// daemon's customers stay with it while both serve `switchboard.delivery`.
fn amqp_tables(names: &switchboard::config::AmqpConfig, inbound: &str) -> String {
    format!(
        "\n[amqp]\nurl = \"{}\"\ninbound_exchange = \"{inbound}\"\ninbound_queue = \"{inbound}\"\ndead_letter_queue = \"{}\"\noutbound_exchange = \"{}\"\ndelivery_queue = \"{}\"\n",
        switchboard_tests::amqp_url(),
        names.dead_letter_queue,
        names.outbound_exchange,
        names.delivery_queue
    )
}

/// On RabbitMQ: the worker consumes `switchboard.delivery`; a daemon killed while a request is
/// held (a 429 storm) loses nothing, as a second daemon's standby consumer takes the queue over
/// and delivers in order, counting what it resumed; a permanent refusal lands in the broker's
/// dead queue with its code, is listed by the admin API, and is sent again on an admin's word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_a_killed_worker_loses_nothing_and_dead_deliveries_are_sent_again() {
    let Some(client) = switchboard_tests::broker_client().await else {
        return;
    };
    let names = switchboard_tests::amqp_names("delivery");
    let twilio = Twilio::new(ACCOUNT, TWILIO_TOKEN, &[UNSUBSCRIBED]);
    let meta = Meta::new(META_TOKEN, PHONE_NUMBER_ID, &[]);
    let twilio_port = emulators::serve(twilio.router()).await.port();
    let meta_port = emulators::serve(meta.router()).await.port();
    let (dir_a, dir_b) = (temp_dir("delivery-amqp-a"), temp_dir("delivery-amqp-b"));
    let inbound_a = format!("{}.a", names.inbound_queue);
    let inbound_b = format!("{}.b", names.inbound_queue);
    let run = {
        let twilio = twilio.clone();
        let names = names.clone();
        let (inbound_a, inbound_b) = (inbound_a.clone(), inbound_b.clone());
        move || {
            let mut first = Daemon::start_with(
                &dir_a,
                twilio_port,
                meta_port,
                &amqp_tables(&names, &inbound_a),
            );
            let bea = first.held_in_a_429_storm(&twilio, "SM00000000000000000000000000000011");
            // The second daemon's consumer waits behind the first's; the first dies mid-retry.
            let second = Daemon::start_with(
                &dir_b,
                twilio_port,
                meta_port,
                &amqp_tables(&names, &inbound_b),
            );
            std::thread::sleep(Duration::from_millis(500));
            first.child.kill().unwrap();
            first.child.wait().unwrap();
            twilio.throttle_next.store(0, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(30);
            let to_customer = || -> Vec<String> {
                twilio
                    .log
                    .accepted()
                    .iter()
                    .filter(|request| request.text().contains("To=%2B14155551234"))
                    .map(|request| request.text())
                    .collect()
            };
            while to_customer().len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "the second daemon never delivered: {:#?}",
                    twilio.log.all()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let delivered = to_customer();
            assert_eq!(delivered.len(), 2, "{delivered:#?}");
            assert!(delivered[0].contains("joined"), "in order: {delivered:#?}");
            assert!(delivered[1].contains("Your+refund"), "{delivered:#?}");
            let (_, metrics) = curl(&[&format!("http://127.0.0.1:{}/metrics", second.port)]);
            assert!(
                metrics.lines().any(|line| line.starts_with(
                    "switchboard_deliveries_total{plugin=\"sms-twilio\",outcome=\"resumed\"}"
                ) && !line.ends_with(" 0")),
                "the resumed requests are counted: {metrics}"
            );

            // A permanent refusal on the second daemon: in the broker's dead queue, listed,
            // then sent again once the customer resubscribed.
            let admin = second.token(&["--sub", "root", "--role", "admin"]);
            second.sms(UNSUBSCRIBED, "STOP", "SM00000000000000000000000000000012");
            let stopped = second.conversation(&bea, UNSUBSCRIBED);
            second.write_publicly(&bea, &stopped, "a-dev", "Are you still there");
            let receipts = second.receipts(&bea, &stopped, 1);
            assert_eq!(receipts[0]["error"]["code"], "21610", "{receipts:?}");
            let deadline = Instant::now() + Duration::from_secs(30);
            let dead = loop {
                let (status, dead) = second.api("GET", "/v1/deliveries/dead", &admin, None);
                assert_eq!(status, 200, "{dead}");
                if dead["deliveries"]
                    .as_array()
                    .is_some_and(|dead| dead.len() == 2)
                {
                    break dead;
                }
                assert!(Instant::now() < deadline, "never dead-lettered: {dead}");
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                dead["deliveries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|dead| dead["code"] == "21610"
                        && dead["request"]["routing_key"] == "channel.sms-twilio"),
                "{dead}"
            );
            twilio.resubscribe(UNSUBSCRIBED);
            let (status, resent) =
                second.api("POST", "/v1/deliveries/dead/resend", &admin, Some("{}"));
            assert_eq!(status, 200, "{resent}");
            assert_eq!(resent["resent"].as_array().unwrap().len(), 2, "{resent}");
            let receipts = second.receipts(&bea, &stopped, 2);
            assert_eq!(receipts[1]["status"], "sent", "{receipts:?}");
            let (_, dead) = second.api("GET", "/v1/deliveries/dead", &admin, None);
            assert_eq!(dead["deliveries"], serde_json::json!([]), "{dead}");
        }
    };
    let outcome = tokio::task::spawn_blocking(run).await;
    let channel = client.create_channel().await.unwrap();
    for queue in [
        &inbound_a,
        &inbound_b,
        &names.dead_letter_queue,
        &names.delivery_queue,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [&inbound_a, &inbound_b, &names.outbound_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    outcome.unwrap();
}

/// A provider that is down gets a rest: once its host failed five times in a row, the requests
/// of every conversation wait without being sent (a circuit per host), one trial goes through
/// after the rest, and once the provider is back everything arrives, each conversation's
/// requests in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_gets_a_rest_then_everything_arrives_in_order() {
    let twilio = Twilio::new(ACCOUNT, TWILIO_TOKEN, &[]);
    let meta = Meta::new(META_TOKEN, PHONE_NUMBER_ID, &[]);
    let twilio_port = emulators::serve(twilio.router()).await.port();
    let meta_port = emulators::serve(meta.router()).await.port();
    let dir = temp_dir("delivery-breaker");
    let run = {
        let twilio = twilio.clone();
        move || {
            let daemon = Daemon::start(&dir, twilio_port, meta_port);
            let bea = daemon.supervisor_token("sup-bea", "billing");
            twilio.down.store(true, Ordering::SeqCst);
            // Five conversations, as many as the billing agents can take.
            let customers: Vec<String> = (0..5).map(|n| format!("+1415555010{n}")).collect();
            for (n, customer) in customers.iter().enumerate() {
                daemon.sms(customer, "Hello", &format!("SM{n:032}"));
                let id = daemon.conversation(&bea, customer);
                let agent = if n < 3 { "a-dev" } else { "a-emma" };
                daemon.write_publicly(&bea, &id, agent, "We are on it");
            }
            let opened = || {
                let (_, metrics) = curl(&[&format!("http://127.0.0.1:{}/metrics", daemon.port)]);
                metrics.lines().any(|line| {
                    line.starts_with("switchboard_delivery_circuits_opened_total{host=\"127.0.0.1:")
                        && !line.ends_with(" 0")
                })
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !opened() {
                assert!(Instant::now() < deadline, "the circuit never opened");
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(300));
            let refused = twilio.log.all().len();
            assert!(refused >= 5, "{refused}");
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(
                twilio.log.all().len(),
                refused,
                "nothing is sent to a resting host"
            );

            twilio.down.store(false, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(60);
            while twilio.log.accepted().len() < 2 * customers.len() {
                assert!(
                    Instant::now() < deadline,
                    "not everything arrived: {:#?}",
                    twilio.log.accepted()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            for customer in &customers {
                let to = format!("To={}", customer.replace('+', "%2B"));
                let arrived: Vec<String> = twilio
                    .log
                    .accepted()
                    .iter()
                    .map(|request| request.text())
                    .filter(|text| text.contains(&to))
                    .collect();
                assert_eq!(arrived.len(), 2, "{arrived:#?}");
                assert!(arrived[0].contains("joined") && arrived[1].contains("We+are+on+it"));
            }
        }
    };
    tokio::task::spawn_blocking(run).await.unwrap();
}

/// Genesys Cloud's API tokens expire: with `[plugins.open-messaging.oauth]` the worker gets one
/// with the client credentials, reuses it, and fetches another when Genesys refuses it; the
/// client secret and the tokens reach Genesys and nothing the daemon keeps or answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genesys_tokens_are_fetched_with_client_credentials_reused_and_renewed() {
    const CLIENT_ID: &str = "7de3af06-c0b3-4f9b-af45-72f4a1403797";
    const CLIENT_SECRET: &str = "canary-genesys-client-secret-0d4f";
    let genesys = Genesys::new(CLIENT_ID, CLIENT_SECRET);
    let genesys_port = emulators::serve(genesys.router()).await.port();
    let dir = temp_dir("delivery-oauth");
    let run = {
        let genesys = genesys.clone();
        let dir = dir.clone();
        move || {
            std::fs::write(dir.join("genesys-secret"), CLIENT_SECRET).unwrap();
            let (daemon, door) = serve_changed(&dir, |text| {
                text.replace(
                    "api_base_url = \"https://api.mypurecloud.com\"",
                    &format!(
                        "api_base_url = \"http://127.0.0.1:{genesys_port}\"\nwebhook_secret = \"genesys-secret\""
                    ),
                )
                .replace(
                    "[plugins.open-messaging.config]",
                    &format!(
                        "allowed_hosts = [\"127.0.0.1:{genesys_port}\"]\noauth = {{ token_url = \"http://127.0.0.1:{genesys_port}/oauth/token\", client_id = \"{CLIENT_ID}\", client_secret = {{ file = \"genesys-secret\" }} }}\n[plugins.open-messaging.config]"
                    ),
                )
            });
            let port = daemon.port;
            let sam = support_supervisor(&daemon);
            let api = |method: &str, path: &str, body: &str| call(port, &sam, method, path, body);
            let inbound = fixture("genesys", "inbound-text.json");
            let signed = format!(
                "sha256={}",
                signature::base64(&signature::hmac_sha256(b"genesys-secret", &inbound))
            );
            let (status, _) = curl(&[
                "-X",
                "POST",
                &format!("http://127.0.0.1:{door}/webhooks/open-messaging"),
                "-H",
                &format!("X-Hub-Signature-256: {signed}"),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                std::str::from_utf8(&inbound).unwrap(),
            ]);
            assert_eq!(status, 200);
            let (_, report) = api("GET", "/v1/conversations", "{}");
            let id = report["conversations"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            for (action, body) in [
                ("assign", r#"{"agent": "a-ana"}"#),
                ("join", r#"{"mode": "public"}"#),
                (
                    "messages",
                    r#"{"text": "Checking your invoice", "visibility": "public"}"#,
                ),
            ] {
                let (status, answer) =
                    api("POST", &format!("/v1/conversations/{id}/{action}"), body);
                assert_eq!(status, 200, "{answer}");
            }
            let messages = || {
                genesys
                    .log
                    .accepted()
                    .into_iter()
                    .filter(|request| request.path.ends_with("/agentless"))
                    .collect::<Vec<_>>()
            };
            let wait = |count: usize| {
                let deadline = Instant::now() + Duration::from_secs(30);
                while messages().len() < count {
                    assert!(Instant::now() < deadline, "{:#?}", genesys.log.all());
                    std::thread::sleep(Duration::from_millis(100));
                }
            };
            wait(2);
            let first = genesys.issued(1);
            assert!(
                messages()
                    .iter()
                    .all(|request| request.headers["authorization"] == format!("Bearer {first}"))
            );
            assert!(messages()[1].text().contains("Checking your invoice"));
            assert_eq!(
                genesys.tokens_issued.load(Ordering::SeqCst),
                1,
                "one token, reused"
            );

            // The token expires: Genesys answers 401, the worker fetches another and delivers.
            genesys.expire_tokens();
            let (status, answer) = api(
                "POST",
                &format!("/v1/conversations/{id}/messages"),
                r#"{"text": "Refund issued", "visibility": "public"}"#,
            );
            assert_eq!(status, 200, "{answer}");
            wait(3);
            assert_eq!(genesys.tokens_issued.load(Ordering::SeqCst), 2);
            assert_eq!(
                messages()[2].headers["authorization"],
                format!("Bearer {}", genesys.issued(2))
            );
            let admin = daemon.token(&["--sub", "root", "--role", "admin"]);
            let mut seen = vec![std::fs::read_to_string(&daemon.log).unwrap_or_default()];
            for path in [
                "/v1/outbox?limit=1000",
                "/v1/plugins",
                &format!("/v1/conversations/{id}"),
            ] {
                seen.push(
                    curl(&[
                        &format!("http://127.0.0.1:{port}{path}"),
                        "-H",
                        &format!("Authorization: Bearer {admin}"),
                    ])
                    .1,
                );
            }
            (seen, [first, genesys.issued(2)])
        }
    };
    let (answers, tokens) = tokio::task::spawn_blocking(run).await.unwrap();
    let mut haystack: Vec<Vec<u8>> = answers.into_iter().map(String::into_bytes).collect();
    haystack.extend(
        files_under(&dir.join("data"))
            .into_iter()
            .map(|file| with_stored_values_expanded(&std::fs::read(&file).unwrap_or_default())),
    );
    for secret in [CLIENT_SECRET, tokens[0].as_str(), tokens[1].as_str()] {
        for form in secret_forms(secret) {
            for bytes in &haystack {
                assert!(
                    !contains(bytes, form.as_bytes()),
                    "a credential ({form}) was found in what the daemon kept or answered"
                );
            }
        }
    }
}

/// Embedded: a daemon killed with `-9` while its requests wait out a 429 storm loses none of
/// them; the next start on the same store sends them, in order, and counts them as resumed
/// (the only requests that may reach a provider twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_daemon_killed_mid_delivery_loses_nothing() {
    let twilio = Twilio::new(ACCOUNT, TWILIO_TOKEN, &[]);
    let meta = Meta::new(META_TOKEN, PHONE_NUMBER_ID, &[]);
    let twilio_port = emulators::serve(twilio.router()).await.port();
    let meta_port = emulators::serve(meta.router()).await.port();
    let dir = temp_dir("delivery-kill");
    let run = {
        let twilio = twilio.clone();
        move || {
            let mut first = Daemon::start(&dir, twilio_port, meta_port);
            first.held_in_a_429_storm(&twilio, "SM00000000000000000000000000000021");
            first.child.kill().unwrap();
            first.child.wait().unwrap();
            twilio.throttle_next.store(0, Ordering::SeqCst);

            let second = Daemon::start(&dir, twilio_port, meta_port);
            let deadline = Instant::now() + Duration::from_secs(30);
            while twilio.log.accepted().len() < 2 {
                assert!(Instant::now() < deadline, "{:#?}", twilio.log.all());
                std::thread::sleep(Duration::from_millis(100));
            }
            let delivered: Vec<String> = twilio
                .log
                .accepted()
                .iter()
                .map(|request| request.text())
                .collect();
            assert_eq!(delivered.len(), 2, "{delivered:#?}");
            assert!(delivered[0].contains("joined") && delivered[1].contains("Your+refund"));
            let (_, metrics) = curl(&[&format!("http://127.0.0.1:{}/metrics", second.port)]);
            assert!(
                metrics.lines().any(|line| line
                    == "switchboard_deliveries_total{plugin=\"sms-twilio\",outcome=\"resumed\"} 2"),
                "both requests counted as resumed: {metrics}"
            );
        }
    };
    tokio::task::spawn_blocking(run).await.unwrap();
}

/// Web chat, as the issue's end-to-end story runs it: a customer writes on Chatwoot, a
/// supervisor monitors, joins publicly and writes, then force-closes; Chatwoot receives the
/// joined notice, the message and the closing notice as outgoing messages, in order, then the
/// conversation resolved — each with the agent token filled in from the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_chat_supervised_to_its_end_reaches_chatwoot_in_order() {
    const CHATWOOT_TOKEN: &str = "canary-chatwoot-token-61c2";
    let chatwoot = Chatwoot::new(1, CHATWOOT_TOKEN, &[42]);
    let chatwoot_port = emulators::serve(chatwoot.router()).await.port();
    let dir = temp_dir("delivery-chatwoot");
    let run = {
        let chatwoot = chatwoot.clone();
        move || {
            let (daemon, door) = serve_changed(&dir, |text| {
                text.replace(
                    "base_url = \"http://127.0.0.1:3000\"",
                    &format!("base_url = \"http://127.0.0.1:{chatwoot_port}\""),
                )
                .replace(
                    "[plugins.web-chat.config]",
                    &format!(
                        "allow_unsigned = true\nallowed_hosts = [\"127.0.0.1:{chatwoot_port}\"]\nsecrets = {{ api_access_token = \"{CHATWOOT_TOKEN}\" }}\n[plugins.web-chat.config]"
                    ),
                )
            });
            let port = daemon.port;
            let sam = support_supervisor(&daemon);
            let api = |path: &str, body: &str| {
                let (status, answer) = call(port, &sam, "POST", path, body);
                assert_eq!(status, 200, "{path}: {answer}");
            };
            let (status, answer) = curl(&[
                "-X",
                "POST",
                &format!("http://127.0.0.1:{door}/webhooks/web-chat"),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                std::str::from_utf8(&fixture("chatwoot", "message_created_incoming.json")).unwrap(),
            ]);
            assert_eq!(status, 200, "{answer}");
            let (_, report) = curl(&[
                &format!("http://127.0.0.1:{port}/v1/conversations"),
                "-H",
                &format!("Authorization: Bearer {sam}"),
            ]);
            let report: Value = serde_json::from_str(&report).unwrap();
            let id = report["conversations"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let path = |action: &str| format!("/v1/conversations/{id}/{action}");
            api(&path("assign"), r#"{"agent": "a-ana"}"#);
            api(&path("monitor"), "{}");
            api(&path("join"), r#"{"mode": "public"}"#);
            api(
                &path("messages"),
                r#"{"text": "I am looking into it", "visibility": "public"}"#,
            );
            api(
                &path("force-close"),
                r#"{"reason": "resolved by supervisor", "confirm": true}"#,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while chatwoot.status(42).as_deref() != Some("resolved") {
                assert!(Instant::now() < deadline, "{:#?}", chatwoot.log.all());
                std::thread::sleep(Duration::from_millis(100));
            }
            let received = chatwoot.log.all();
            assert!(received.iter().all(|request| request.status == 200
                && request.headers["api_access_token"] == CHATWOOT_TOKEN));
            let paths: Vec<&str> = received
                .iter()
                .map(|request| request.path.rsplit('/').next().unwrap())
                .collect();
            assert_eq!(
                paths,
                ["messages", "messages", "messages", "toggle_status"],
                "{received:#?}"
            );
            let texts: Vec<Value> = received
                .iter()
                .map(|request| serde_json::from_slice(&request.body).unwrap())
                .collect();
            assert!(
                texts[0]["content"].as_str().unwrap().contains("joined"),
                "{texts:?}"
            );
            assert_eq!(texts[1]["content"], "I am looking into it");
            assert_eq!(texts[1]["private"], false);
            assert_eq!(texts[3]["status"], "resolved");
        }
    };
    tokio::task::spawn_blocking(run).await.unwrap();
}

/// A value as a form body carries it.
fn form_encoded(value: &str) -> String {
    String::from_utf8(switchboard_plugin_sdk::form::encode([("k", value)])).unwrap()[2..].to_owned()
}
