//! The README's walkthrough, run for real: the `switchboard` binary on the embedded default (no
//! broker), `switchboard token`, a WhatsApp webhook posted to `POST /v1/inbound/...`, the
//! report, assign, monitor, whisper, force-close, each step seen on `GET /v1/stream` by a
//! `curl -N` client; then SIGTERM (exit 0) and a restart that finds the conversation again.
//! After `kill -9`, the store opens without walking its whole file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_tests::{
    ServingBinary, free_port, shipped_config_text, switchboard_binary, temp_dir,
};

/// The shipped configuration with this test's store, port and the test-built plugins.
fn config_file(dir: &Path, port: u16) -> PathBuf {
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, shipped_config_text(dir, port)).unwrap();
    file
}

fn serve(config: &Path) -> Child {
    Command::new(switchboard_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn token(config: &Path, args: &[&str]) -> String {
    let output = Command::new(switchboard_binary())
        .args(["token", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `curl` as the README uses it; returns the status and the body as JSON.
fn curl(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, Value) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}", url])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(body) = body {
        command.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let output = command.output().expect("curl is installed");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn wait_ready(port: u16, daemon: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = curl("GET", &format!("http://127.0.0.1:{port}/readyz"), "", None);
        if status == 200 {
            return;
        }
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `request` on a fresh connection and reads the whole answer (the server closes it).
fn raw_exchange(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer (and close) before it has read everything we send.
    let _ = connection.write_all(request);
    let mut answer = Vec::new();
    let _ = connection.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// hyper answers these before any handler runs; they must still be problem+json.
fn requests_the_parser_refuses_get_problems(port: u16) {
    let many_headers: String = (0..200).map(|i| format!("x-probe-{i}: {i}\r\n")).collect();
    let large_header = format!("x-probe: {}\r\n", "a".repeat(40_000));
    let huge_header = format!("x-probe: {}\r\n", "a".repeat(1_000_000));
    let long_uri = format!("/v1/{}", "a".repeat(10_000));
    let huge_uri = format!("/v1/{}", "a".repeat(70_000));
    for (name, request, status, code) in [
        (
            "too many headers",
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n"),
            "431",
            "headers-too-large",
        ),
        (
            "too large a header",
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{large_header}\r\n"),
            "431",
            "headers-too-large",
        ),
        (
            "far too large a header (hyper's limit)",
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{huge_header}\r\n"),
            "431",
            "headers-too-large",
        ),
        (
            "too long a URI",
            format!("GET {long_uri} HTTP/1.1\r\nhost: x\r\n\r\n"),
            "414",
            "uri-too-long",
        ),
        (
            "far too long a URI (hyper's limit)",
            format!("GET {huge_uri} HTTP/1.1\r\nhost: x\r\n\r\n"),
            "414",
            "uri-too-long",
        ),
        (
            "not HTTP",
            "GET / HTTP/1.1\r\nbad header line\r\n\r\n".to_owned(),
            "400",
            "bad-request",
        ),
    ] {
        let answer = raw_exchange(port, request.as_bytes());
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {answer}"
        );
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{name}: {answer}"
        );
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let problem: Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], code, "{name}");
    }
}

/// The shipped default (with the plugins built) passes `check-config`.
#[test]
fn check_config_accepts_the_shipped_default() {
    let dir = temp_dir("check-config");
    let config = config_file(&dir, free_port());
    let output = Command::new(switchboard_binary())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("switchboard.toml: ok"), "{stdout}");
    assert!(stdout.contains("embedded transport"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `check-config` checks every file the configuration names, before `serve` would fail on it.
#[test]
fn check_config_names_missing_files_with_their_resolved_path() {
    let dir = temp_dir("check-config");
    let text =
        shipped_config_text(&dir, free_port()).replace("voice_ari.wasm", "no_such_plugin.wasm");
    let config = dir.join("switchboard.toml");
    std::fs::write(&config, text).unwrap();
    for command in ["check-config", "serve"] {
        let output = Command::new(switchboard_binary())
            .args([command, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{command}: {stderr}");
        let problem = stderr
            .lines()
            .find(|line| line.contains("no_such_plugin.wasm"))
            .unwrap_or_else(|| panic!("{command}: {stderr}"));
        assert!(problem.contains("`plugins.voice-ari.file`"), "{problem}");
        assert!(
            problem.contains(": /"),
            "the path is resolved (absolute): {problem}"
        );
        assert!(
            problem.starts_with(&format!("{}:", config.display())),
            "file, line and column: {problem}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn terminate(daemon: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = daemon.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit}");
}

#[test]
fn the_readme_walkthrough_works_on_the_embedded_default() {
    let dir = temp_dir("serve-embedded");
    let port = free_port();
    let config = config_file(&dir, port);
    let base = format!("http://127.0.0.1:{port}");
    let mut daemon = serve(&config);
    wait_ready(port, &mut daemon);
    let (_, ready) = curl("GET", &format!("{base}/readyz"), "", None);
    assert_eq!(ready["broker"]["status"], "not-configured");
    requests_the_parser_refuses_get_problems(port);

    let supervisor = token(
        &config,
        &[
            "--sub",
            "sup-sam",
            "--role",
            "supervisor",
            "--team",
            "support",
        ],
    );
    let gateway = token(&config, &["--sub", "gateway", "--role", "ingest"]);
    let stream = Command::new("curl")
        .args(["-s", "-N", "-m", "30", &format!("{base}/v1/stream")])
        .args(["-H", &format!("Authorization: Bearer {supervisor}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let webhook = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/whatsapp/text.json"
    ))
    .unwrap();
    let (status, accepted) = curl(
        "POST",
        &format!("{base}/v1/inbound/whatsapp-cloud"),
        &gateway,
        Some(&webhook),
    );
    assert_eq!((status, accepted["events"].as_u64()), (202, Some(1)));
    let (status, report) = curl(
        "GET",
        &format!("{base}/v1/conversations"),
        &supervisor,
        None,
    );
    assert_eq!(status, 200);
    let id = report["conversations"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conversation = format!("{base}/v1/conversations/{id}");
    for (action, body) in [
        ("assign", Some(r#"{"agent": "a-ana"}"#)),
        ("monitor", None),
        ("whisper", Some(r#"{"text": "Offer the refund"}"#)),
        (
            "force-close",
            Some(r#"{"reason": "resolved by phone", "confirm": true}"#),
        ),
    ] {
        let (status, answer) = curl(
            "POST",
            &format!("{conversation}/{action}"),
            &supervisor,
            body,
        );
        assert_eq!(status, 200, "{action}: {answer}");
    }
    let (_, detail) = curl("GET", &conversation, &supervisor, None);
    assert_eq!(detail["state"], "closed");

    // Every step reached the stream.
    std::thread::sleep(Duration::from_millis(500));
    terminate(&mut daemon);
    let output = stream.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&output.stdout);
    for step in [
        "\"event\":\"assigned-to-agent\"",
        "\"event\":\"supervision-started\"",
        "\"text\":\"Offer the refund\"",
        "\"event\":\"force-closed\"",
    ] {
        assert!(
            events.contains(step),
            "{step} missing from the stream:\n{events}"
        );
    }

    // A restart rebuilds the state from the store, and the stream's window with it: a client
    // that resumes from the first event it saw misses nothing after it.
    let first_id = events
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .map(|id| id.trim().to_owned())
        .expect("stream events carry ids");
    let mut daemon = serve(&config);
    wait_ready(port, &mut daemon);
    let resumed = Command::new("curl")
        .args(["-s", "-N", "-m", "3", &format!("{base}/v1/stream")])
        .args(["-H", &format!("Authorization: Bearer {supervisor}")])
        .args(["-H", &format!("Last-Event-ID: {first_id}")])
        .output()
        .unwrap();
    let resumed = String::from_utf8_lossy(&resumed.stdout);
    assert!(!resumed.contains("event: gap"), "{resumed}");
    for step in [
        "\"event\":\"supervision-started\"",
        "\"event\":\"force-closed\"",
    ] {
        assert!(
            resumed.contains(step),
            "{step} missing after the restart:\n{resumed}"
        );
    }
    assert!(
        !resumed.contains(&format!("id: {first_id}\n")),
        "the event resumed from is not repeated"
    );
    let (status, detail) = curl("GET", &conversation, &supervisor, None);
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["state"], "closed");
    assert!(
        detail["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|line| line["event"] == "force-closed")
    );
    terminate(&mut daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// A restart after `kill -9` loads redb's allocator state instead of rebuilding it by walking
/// the whole database file (the restart benchmark's largest phase before every durable commit
/// recorded it): the daemon says when it has to walk, and here it must not.
#[test]
fn after_kill_9_the_store_opens_without_walking_its_whole_file() {
    let dir = temp_dir("kill-9-open");
    let port = free_port();
    let config = config_file(&dir, port);
    let daemon = ServingBinary::start(config.clone(), port);
    let gateway = daemon.token(&["--sub", "gateway", "--role", "ingest"]);
    let supervisor = daemon.supervisor_token("sup-sam", "support");
    let webhook = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/whatsapp/text.json"
    ))
    .unwrap();
    let (status, _) = daemon.call(&gateway, "POST", "/v1/inbound/whatsapp-cloud", &webhook);
    assert_eq!(status, 202);
    // The store folds its journal into redb about once a second; let a durable fold happen
    // (the kill may come before one too: the commit that opened the store was durable).
    std::thread::sleep(Duration::from_millis(1_500));
    drop(daemon); // SIGKILL

    let daemon = ServingBinary::start(config, port);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("opened the store"), "{log}");
    assert!(!log.contains("not closed cleanly"), "{log}");
    let (status, report) = daemon.call(&supervisor, "GET", "/v1/conversations", "");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["conversations"].as_array().map(Vec::len), Some(1));
}
