//! Voice end to end through the daemon's own ARI events WebSocket: the `switchboard` binary on
//! the embedded default with the voice-ari plugin pointed at the ARI emulator
//! (`tests/emulators/ari.rs`). A call entering the Stasis application becomes a conversation
//! with no bridge of ours in between; a supervisor's monitoring creates the snoop and rings the
//! supervisor's leg, stopping removes both (each with Basic auth filled in from the secret);
//! and when the connection drops while the customer hangs up, the daemon connects again and
//! ends the call's conversation.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_tests::emulators::{self, ari::Ari};
use switchboard_tests::{
    ServingBinary, curl, fixture, free_port, shipped_config_with_door, temp_dir,
};

const ARI_USER: &str = "switchboard";
const ARI_PASSWORD: &str = "canary-ari-password-3b7e";
const CALL: &str = "1749418783.42";

struct Daemon(ServingBinary);

impl std::ops::Deref for Daemon {
    type Target = ServingBinary;
    fn deref(&self) -> &ServingBinary {
        &self.0
    }
}

impl Daemon {
    fn start(dir: &Path, ari: u16) -> Self {
        let (port, door) = (free_port(), free_port());
        std::fs::write(dir.join("ari-password"), ARI_PASSWORD).unwrap();
        let text = shipped_config_with_door(dir, port, door)
            .replace(
                "ari_url = \"http://127.0.0.1:8088/ari\"",
                &format!("ari_url = \"http://127.0.0.1:{ari}/ari\"\nari_user = \"{ARI_USER}\""),
            )
            .replace(
                "allowed_hosts = [\"127.0.0.1:8088\"]",
                &format!(
                    "allowed_hosts = [\"127.0.0.1:{ari}\"]\nsecrets = {{ ari_password = {{ file = \"ari-password\" }} }}"
                ),
            );
        assert!(
            text.contains(&format!("127.0.0.1:{ari}/ari")),
            "the shipped voice-ari settings changed shape"
        );
        let config = dir.join("switchboard.toml");
        std::fs::write(&config, text).unwrap();
        Self(ServingBinary::start(config, port))
    }

    fn api(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let auth = format!("Authorization: Bearer {token}");
        let (status, text) = curl(&[
            "-X",
            method,
            url.as_str(),
            "-H",
            auth.as_str(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "{}",
        ]);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The call's conversation once `check` holds for it.
    fn wait_for(&self, token: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, report) = self.api("GET", "/v1/conversations", token);
            let call = report["conversations"]
                .as_array()
                .and_then(|all| {
                    all.iter()
                        .find(|summary| summary["customer"]["id"] == "+14155551234")
                })
                .cloned()
                .unwrap_or(Value::Null);
            if check(&call) {
                return call;
            }
            assert!(Instant::now() < deadline, "{what} never happened: {report}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn event(name: &str) -> Value {
    serde_json::from_slice(&fixture("ari", name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_arrive_over_the_daemons_own_ari_connection_and_supervision_drives_asterisk() {
    let ari = Ari::new(ARI_USER, ARI_PASSWORD, "switchboard");
    let port = emulators::serve(ari.router()).await.port();
    let dir = temp_dir("ari-events");
    let run = {
        let ari = ari.clone();
        move || {
            let daemon = Daemon::start(&dir, port);
            wait_until("the events connection", || ari.connections() == 1);
            let sam = daemon.supervisor_token("sup-sam", "support");

            // A call enters the application, an agent answers: a conversation, fed by the
            // daemon's own connection.
            ari.add_channel(CALL);
            assert_eq!(ari.push(&event("stasis-start.json")), 1);
            ari.add_channel("1749418805.43");
            ari.push(&event("agent-entered-bridge.json"));
            let call = daemon.wait_for(&sam, "the agent's answer", |call| call["agent"] == "a-ana");
            let id = call["id"].as_str().unwrap().to_owned();

            // Monitoring creates the snoop on the customer's leg and rings the supervisor.
            let (status, answer) =
                daemon.api("POST", &format!("/v1/conversations/{id}/monitor"), &sam);
            assert_eq!(status, 200, "{answer}");
            wait_until("the snoop and the supervisor's leg", || {
                ari.has_channel(&format!("snoop-sup-sam-{CALL}"))
                    && ari.has_channel(&format!("leg-sup-sam-{CALL}"))
            });
            // Both accepted: the supervisor's media is live.
            daemon.wait_for(&sam, "live media", |call| {
                call["supervisors"][0]["media"] == "live"
            });
            let requests = ari.log.all();
            let snoop = requests
                .iter()
                .find(|request| request.path == format!("/ari/channels/{CALL}/snoop"))
                .expect("a snoop request");
            assert_eq!(snoop.method, "POST");
            assert_eq!(snoop.status, 200);
            let basic = format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{ARI_USER}:{ARI_PASSWORD}")
                )
            );
            assert!(
                requests
                    .iter()
                    .all(|request| request.headers["authorization"] == basic)
            );

            // Stopping removes both.
            let (status, answer) =
                daemon.api("DELETE", &format!("/v1/conversations/{id}/monitor"), &sam);
            assert_eq!(status, 200, "{answer}");
            wait_until("the snoop and leg hung up", || {
                !ari.has_channel(&format!("snoop-sup-sam-{CALL}"))
                    && !ari.has_channel(&format!("leg-sup-sam-{CALL}"))
            });

            // The call's channel is gone before Asterisk says so: the snoop is refused (404),
            // and the session ends with the reason instead of a monitor that hears nothing.
            ari.remove_channel(CALL);
            let (status, answer) =
                daemon.api("POST", &format!("/v1/conversations/{id}/monitor"), &sam);
            assert_eq!(status, 200, "{answer}");
            daemon.wait_for(&sam, "the failed session's end", |call| {
                call["supervisors"].as_array().is_some_and(Vec::is_empty)
            });
            let (_, detail) = daemon.api("GET", &format!("/v1/conversations/{id}"), &sam);
            let ended = detail["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|line| line["event"] == "supervision-ended")
                .cloned()
                .unwrap_or_default();
            assert_eq!(ended["details"]["reason"], "media-failed", "{detail}");
            assert_eq!(ended["details"]["error"]["code"], "404", "{detail}");
            ari.add_channel(CALL);

            // The connection drops and the customer hangs up meanwhile (no event reaches
            // anyone): the daemon connects again, asks which calls are left, and ends this one.
            ari.drop_connections();
            ari.remove_channel(CALL);
            wait_until("a second events connection", || ari.connections() == 2);
            daemon.wait_for(&sam, "the call's end", |call| {
                call.is_null() || call["state"] != "active"
            });
            assert!(
                ari.log
                    .all()
                    .iter()
                    .any(|request| request.method == "GET" && request.path == "/ari/channels"),
                "reconciled with GET /channels"
            );
            let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
            assert!(
                !log.contains(ARI_PASSWORD),
                "the ARI password reached the log"
            );
        }
    };
    tokio::task::spawn_blocking(run).await.unwrap();
}
