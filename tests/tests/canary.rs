//! The secrets canary: the `switchboard` binary on RabbitMQ with a distinctive value in every
//! secret — the HS256 secret (from the environment), the broker password (a user of its own,
//! made with `rabbitmqctl`), each plugin's signature secret and its API credential (from
//! files) — driven through webhooks signed right and wrong, a poison message dead-lettered, a
//! supervisor's public message (a provider request carrying its credential placeholder), a
//! plugin reload, refused and accepted API calls. Then every byte of the data directory, every
//! message on the broker (outbound and dead letters), every log line (debug) and every API
//! answer is searched for each secret as written, in base64 at its three alignments, in hex
//! and percent-encoded: none may be there.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use switchboard_plugin_sdk::signature;
use switchboard_tests::{
    amqp_names, broker_client, contains, curl, files_under, fixture, free_port, secret_forms,
    shipped_config_with_door, switchboard_binary, temp_dir, with_stored_values_expanded,
};

const HS256: &str = "canary-hs256-secret-3f9a1c2e7b5d4a608e1f2c3b";
const AMQP_PASSWORD: &str = "canary-amqp-password-81d2";
const META_APP_SECRET: &str = "canary-meta-app-secret-5c70";
const META_TOKEN: &str = "canary-meta-access-token-a94e";
const TWILIO_TOKEN: &str = "canary-twilio-auth-token-2b6d";
const AMQP_USER: &str = "switchboard-canary";

/// A broker user whose password is the canary; `false` when `rabbitmqctl` cannot make one
/// (then the broker URL's password is not part of the search, and the test says so).
#[allow(clippy::print_stderr)]
fn broker_user() -> bool {
    let ctl = |args: &[&str]| {
        Command::new("rabbitmqctl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let _ = ctl(&["delete_user", AMQP_USER]);
    let made = ctl(&["add_user", AMQP_USER, AMQP_PASSWORD])
        && ctl(&["set_permissions", "-p", "/", AMQP_USER, ".*", ".*", ".*"]);
    if !made {
        eprintln!(
            "NOTE: rabbitmqctl could not make a broker user; the broker password is left out of the canary search"
        );
    }
    made
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_store_the_broker_the_logs_or_an_answer() {
    let Some(client) = broker_client().await else {
        return;
    };
    let with_broker_user = tokio::task::spawn_blocking(broker_user).await.unwrap();
    let names = amqp_names("canary");
    let url = if with_broker_user {
        format!("amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:5672/%2f")
    } else {
        "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()
    };
    let dir = temp_dir("canary");
    let (port, door) = (free_port(), free_port());
    std::fs::write(dir.join("meta-app-secret"), META_APP_SECRET).unwrap();
    std::fs::write(dir.join("meta-token"), format!("{META_TOKEN}\n")).unwrap();
    std::fs::write(dir.join("twilio-token"), TWILIO_TOKEN).unwrap();
    let text = shipped_config_with_door(&dir, port, door)
        .replace(
            "hs256_secret = \"dev-only-switchboard-hs256-secret-change-me\"",
            "hs256_secret = { env = \"CANARY_HS256\" }",
        )
        .replace(
            "# [amqp]\n# url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            &format!(
                "[amqp]\nurl = {{ env = \"CANARY_AMQP_URL\" }}\ninbound_exchange = \"{}\"\ninbound_queue = \"{}\"\ndead_letter_queue = \"{}\"\noutbound_exchange = \"{}\"",
                names.inbound_exchange,
                names.inbound_queue,
                names.dead_letter_queue,
                names.outbound_exchange
            ),
        )
        .replace(
            "# app_secret = \"...\"",
            "app_secret = { file = \"meta-app-secret\" }",
        )
        .replace(
            "[plugins.whatsapp-cloud.config]",
            "secrets = { access_token = { file = \"meta-token\" } }\n[plugins.whatsapp-cloud.config]",
        )
        .replace(
            "# auth_token = \"...\"",
            "auth_token = { file = \"twilio-token\" }",
        )
        .replace(
            "[plugins.sms-twilio.config]",
            "secrets = { auth_token = { file = \"twilio-token\" } }\n[plugins.sms-twilio.config]",
        );
    assert!(text.contains("CANARY_AMQP_URL") && text.contains("meta-token"));
    let config = dir.join("switchboard.toml");
    std::fs::write(&config, text).unwrap();

    // Everything the daemon publishes, as a subscriber bound to `#` sees it.
    let channel = client.create_channel().await.unwrap();
    let tap = format!("{}.canary-tap", names.outbound_exchange);
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };

    let log = dir.join("daemon.log");
    let daemon = Daemon(
        Command::new(switchboard_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .env("CANARY_HS256", HS256)
            .env("CANARY_AMQP_URL", &url)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&[&format!("http://127.0.0.1:{port}/readyz")]).0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    channel
        .queue_declare(tap.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            tap.as_str().into(),
            names.outbound_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut answers: Vec<String> = Vec::new();
    let config_path = config.clone();
    let token = move |args: &[&str]| {
        let output = Command::new(switchboard_binary())
            .args(["token", "--config"])
            .arg(&config_path)
            .args(args)
            .env("CANARY_HS256", HS256)
            .env(
                "CANARY_AMQP_URL",
                "amqp://placeholder:placeholder@127.0.0.1/",
            )
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let sam = token(&[
        "--sub",
        "sup-sam",
        "--role",
        "supervisor",
        "--team",
        "support",
    ]);
    let admin = token(&["--sub", "root", "--role", "admin"]);
    let api = |method: &str, path: &str, bearer: &str, body: Option<&str>| {
        let target = format!("http://127.0.0.1:{port}{path}");
        let auth = format!("Authorization: Bearer {bearer}");
        let mut args = vec!["-X", method, target.as_str(), "-H", auth.as_str()];
        if let Some(body) = body {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        curl(&args)
    };

    // Webhooks through the door: signed right, signed wrong.
    let webhook = fixture("whatsapp", "text.json");
    let webhook_text = String::from_utf8(webhook.clone()).unwrap();
    for secret in [META_APP_SECRET, "a-wrong-secret"] {
        let signed = format!(
            "sha256={}",
            signature::hex(&signature::hmac_sha256(secret.as_bytes(), &webhook))
        );
        let (_, answer) = curl(&[
            "-X",
            "POST",
            &format!("http://127.0.0.1:{door}/webhooks/whatsapp-cloud"),
            "-H",
            &format!("X-Hub-Signature-256: {signed}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &webhook_text,
        ]);
        answers.push(answer);
    }
    // A poison message straight into the inbound exchange: dead-lettered.
    channel
        .basic_publish(
            names.inbound_exchange.as_str().into(),
            "whatsapp-cloud".into(),
            Default::default(),
            b"{\"object\": \"whatsapp_business_account\", \"entry\": [",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // A supervisor writes publicly: a provider request with its placeholder goes out.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let (_, report) = api("GET", "/v1/conversations", &sam, None);
        let report: Value = serde_json::from_str(&report).unwrap_or(Value::Null);
        if let Some(id) = report["conversations"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the webhook never became a conversation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (path, body) in [
        ("assign", r#"{"agent": "a-ana"}"#),
        ("join", r#"{"mode": "public"}"#),
        (
            "messages",
            r#"{"text": "Hello from the canary", "visibility": "public"}"#,
        ),
    ] {
        let (status, answer) = api(
            "POST",
            &format!("/v1/conversations/{id}/{path}"),
            &sam,
            Some(body),
        );
        assert_eq!(status, 200, "{path}: {answer}");
        answers.push(answer);
    }
    // A reload (settings and secrets read again), refused calls, and what admins read.
    for (method, path, bearer) in [
        ("POST", "/v1/plugins/whatsapp-cloud/reload", admin.as_str()),
        ("GET", "/v1/plugins", admin.as_str()),
        ("GET", "/v1/outbox?limit=1000", admin.as_str()),
        ("GET", &format!("/v1/conversations/{id}"), admin.as_str()),
        ("GET", "/v1/conversations", "not-a-token"),
        ("GET", "/readyz", ""),
        ("GET", "/metrics", ""),
    ] {
        answers.push(api(method, path, bearer, None).1);
    }

    // What reached the broker: every outbound message and the dead letters.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut published: Vec<Vec<u8>> = Vec::new();
    for queue in [&tap, &names.dead_letter_queue] {
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let mut bytes = message.delivery.data.clone();
            if let Some(headers) = message.delivery.properties.headers() {
                for (name, value) in headers.inner() {
                    let value = match value {
                        lapin::types::AMQPValue::LongString(text) => text.to_string(),
                        other => format!("{other:?}"),
                    };
                    bytes.extend_from_slice(format!("\n{name}: {value}").as_bytes());
                }
            }
            published.push(bytes);
        }
    }
    assert!(
        published
            .iter()
            .any(|message| String::from_utf8_lossy(message).contains("{{secret:access_token}}")),
        "the provider request went out with its placeholder"
    );
    assert!(
        published.len() >= 3,
        "outbound events and the dead letter: {}",
        published.len()
    );

    // Stop, then search everything.
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    drop(daemon);
    let mut haystack: Vec<(String, Vec<u8>)> = answers
        .into_iter()
        .map(|answer| ("an API answer".to_owned(), answer.into_bytes()))
        .collect();
    haystack.extend(
        published
            .into_iter()
            .map(|message| ("a broker message".to_owned(), message)),
    );
    haystack.push(("the log".to_owned(), std::fs::read(&log).unwrap()));
    // The store's files with their compressed values expanded; the supervisor's message is in
    // them (the search reaches what the store compressed).
    let mut store = Vec::new();
    for file in files_under(&dir.join("data")) {
        let bytes = with_stored_values_expanded(&std::fs::read(&file).unwrap());
        store.extend_from_slice(&bytes);
        haystack.push((file.display().to_string(), bytes));
    }
    assert!(contains(&store, b"Hello from the canary"));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.lines().count() > 20, "debug logging ran");
    // The search finds a secret where one is: in its own file.
    let token_file = std::fs::read(dir.join("meta-token")).unwrap();
    assert!(
        secret_forms(META_TOKEN)
            .iter()
            .any(|form| contains(&token_file, form.as_bytes()))
    );
    let mut secrets = vec![HS256, META_APP_SECRET, META_TOKEN, TWILIO_TOKEN];
    if with_broker_user {
        secrets.push(AMQP_PASSWORD);
    }
    for secret in secrets {
        for form in secret_forms(secret) {
            for (place, bytes) in &haystack {
                assert!(
                    !contains(bytes, form.as_bytes()),
                    "{form} (a form of a secret) is in {place}"
                );
            }
        }
    }
    let cleanup = client.create_channel().await.unwrap();
    for queue in [&names.inbound_queue, &names.dead_letter_queue] {
        let _ = cleanup
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [&names.inbound_exchange, &names.outbound_exchange] {
        let _ = cleanup
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    if with_broker_user {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", AMQP_USER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
