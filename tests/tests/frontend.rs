//! The API a frontend needs (README, "What frontends need"), against the daemon binary fed by
//! Chatwoot webhooks through its door: paging pinned to a snapshot while the data moves,
//! filters and sort, the report's `stream_id` lined up with the stream, single-use stream
//! tickets, CORS for listed origins only, queue waits, per-conversation actions, and the
//! monitor lease ending a gone supervisor's seats.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_tests::{
    ServingBinary, curl, fixture, free_port, shipped_config_with_door, temp_dir,
};

struct Running {
    daemon: ServingBinary,
    door: u16,
    sam: String,
}

fn start(name: &str, extra: &str) -> Running {
    let dir = temp_dir(name);
    let (port, door) = (free_port(), free_port());
    let config = dir.join("switchboard.toml");
    let text = shipped_config_with_door(&dir, port, door)
        .replace(
            "[plugins.web-chat.config]",
            "allow_unsigned = true\n[plugins.web-chat.config]",
        )
        .replace("[engine]\n", &format!("[engine]\n{extra}\n"))
        + "\n[delivery]\nenabled = false\n";
    std::fs::write(&config, text).unwrap();
    let daemon = ServingBinary::start(config, port);
    let sam = daemon.supervisor_token("sup-sam", "support");
    Running { daemon, door, sam }
}

impl Running {
    /// A customer writes on Chatwoot conversation `thread`.
    fn customer(&self, thread: u64, name: &str, text: &str) {
        let mut payload: Value =
            serde_json::from_slice(&fixture("chatwoot", "message_created_incoming.json")).unwrap();
        payload["id"] = Value::from(thread * 1000 + u64::from(rand_suffix()));
        payload["content"] = Value::from(text);
        payload["sender"]["id"] = Value::from(thread + 5000);
        payload["sender"]["name"] = Value::from(name);
        payload["conversation"]["id"] = Value::from(thread);
        let (status, answer) = curl(&[
            "-X",
            "POST",
            &format!("http://127.0.0.1:{}/webhooks/web-chat", self.door),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &payload.to_string(),
        ]);
        assert_eq!(status, 200, "{answer}");
    }

    fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let (status, text) = curl(&[
            &format!("http://127.0.0.1:{}{path}", self.daemon.port),
            "-H",
            &format!("Authorization: Bearer {token}"),
        ]);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn post(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        self.daemon.call(token, "POST", path, body)
    }

    /// The stream's raw text for `seconds`, from `last_event_id`.
    fn stream(&self, token: &str, last_event_id: &str, seconds: u32) -> String {
        curl(&[
            "-N",
            "-m",
            &seconds.to_string(),
            &format!("http://127.0.0.1:{}/v1/stream", self.daemon.port),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            &format!("Last-Event-ID: {last_event_id}"),
        ])
        .1
    }

    fn id_of(&self, name: &str) -> String {
        let (_, report) = self.get(
            &self.sam,
            &format!("/v1/conversations?q={}", name.replace(' ', "%20")),
        );
        report["conversations"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A different message id per call within a test run (the door deduplicates by it).
fn rand_suffix() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn names(page: &Value) -> Vec<String> {
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["customer"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_walk_through_pages_is_pinned_to_its_snapshot_while_the_data_moves() {
    let run = start("frontend-paging", "");
    for n in 0..25 {
        run.customer(100 + n, &format!("Walker {n:02}"), "hello");
    }
    let (status, first) = run.get(&run.sam, "/v1/conversations?limit=10&sort=created");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["total"], 25);
    assert_eq!(first["count"], 10);
    let mut seen = names(&first);
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    // The data moves under the walk: new conversations, one force-closed.
    for n in 0..5 {
        run.customer(200 + n, &format!("Latecomer {n}"), "hi");
    }
    let closed = run.id_of("Walker 03");
    let (status, answer) = run.post(
        &run.sam,
        &format!("/v1/conversations/{closed}/force-close"),
        r#"{"confirm": true, "reason": "test"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    loop {
        let (status, page) = run.get(
            &run.sam,
            &format!("/v1/conversations?limit=10&cursor={cursor}"),
        );
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["stream_id"], first["stream_id"],
            "every page names the walk's position"
        );
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|n| format!("Walker {n:02}")).collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(
        sorted, expected,
        "each once, none of the later ones: {seen:?}"
    );

    // A new walk sees the moved data; the cursor is its caller's own.
    let (_, fresh) = run.get(&run.sam, "/v1/conversations?limit=10");
    assert_eq!(fresh["total"], 29);
    let sue = run.daemon.supervisor_token("sup-sue", "support");
    let cursor = fresh["next_cursor"].as_str().unwrap();
    let (status, problem) = run.get(&sue, &format!("/v1/conversations?cursor={cursor}"));
    assert_eq!(
        (status, problem["code"].as_str()),
        (410, Some("cursor-expired"))
    );
    let (status, problem) = run.get(&run.sam, "/v1/conversations?cursor=forged.10");
    assert_eq!(
        (status, problem["code"].as_str()),
        (410, Some("cursor-expired"))
    );
}

#[test]
fn filters_sort_search_actions_names_and_queue_waits() {
    let run = start("frontend-filters", "");
    run.customer(1, "Grace Hopper", "My order is late");
    run.customer(2, "Alan Turing", "This is terrible, awful service");
    run.customer(3, "Ada Lovelace", "Thanks, lovely");
    let turing = run.id_of("Turing");
    let (status, answer) = run.post(
        &run.sam,
        &format!("/v1/conversations/{turing}/assign"),
        r#"{"agent": "a-ana"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let (_, answer) = run.post(
        &run.sam,
        &format!("/v1/conversations/{turing}/monitor"),
        "{}",
    );
    assert_eq!(answer["state"], "active");

    let (_, page) = run.get(&run.sam, "/v1/conversations?q=TURING");
    assert_eq!(names(&page), ["Alan Turing"]);
    let row = &page["conversations"][0];
    assert_eq!(row["agent_name"], "Ana Souza");
    assert_eq!(row["queue_name"], "Support — chat and messaging");
    assert_eq!(row["actions"]["monitor"]["allowed"], false);
    assert_eq!(row["actions"]["monitor"]["code"], "already-participating");
    assert_eq!(row["actions"]["barge"]["allowed"], true);
    assert_eq!(row["actions"]["assign"]["code"], "invalid-state");
    assert!(
        row["actions"]["assign"]["detail"]
            .as_str()
            .unwrap()
            .contains("only open, unassigned")
    );
    let (_, page) = run.get(&run.sam, "/v1/conversations?supervised_by=me");
    assert_eq!(names(&page), ["Alan Turing"]);
    let (_, page) = run.get(
        &run.sam,
        "/v1/conversations?state=open&state=active&sort=sentiment",
    );
    assert_eq!(
        names(&page),
        ["Alan Turing", "Grace Hopper", "Ada Lovelace"]
    );
    let (_, page) = run.get(&run.sam, "/v1/conversations?state=active");
    assert_eq!(names(&page), ["Alan Turing"]);
    let (_, page) = run.get(&run.sam, "/v1/conversations?sort=-sentiment");
    assert_eq!(names(&page)[0], "Ada Lovelace");
    let (status, problem) = run.get(&run.sam, "/v1/conversations?sort=loudest");
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid-query"))
    );
    assert!(page["server_time"].as_str().unwrap().ends_with('Z'));

    // The details: actions, and every target with its verdict.
    let grace = run.id_of("Grace");
    let (_, detail) = run.get(&run.sam, &format!("/v1/conversations/{grace}"));
    assert_eq!(detail["actions"]["assign"]["allowed"], true);
    let queues = detail["targets"]["assign_queues"].as_array().unwrap();
    let same = queues.iter().find(|q| q["id"] == "support-chat").unwrap();
    assert_eq!(
        (same["allowed"].as_bool(), same["code"].as_str()),
        (Some(false), Some("same-queue"))
    );
    let chloe = detail["targets"]["assign_agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "a-chloe")
        .unwrap();
    assert_eq!(chloe["presence"], "away");
    assert_eq!(chloe["code"], "presence-not-allowed");

    std::thread::sleep(Duration::from_millis(1100));
    let (_, queues) = run.get(&run.sam, "/v1/queues");
    let chat = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == "support-chat")
        .unwrap();
    assert_eq!(chat["waiting"], 2);
    assert!(
        chat["longest_wait_seconds"].as_u64().unwrap() >= 1,
        "{chat}"
    );
    assert!(
        chat["average_wait_seconds"].as_u64().unwrap()
            <= chat["longest_wait_seconds"].as_u64().unwrap()
    );
}

#[test]
fn the_reports_stream_id_resumes_the_stream_missing_nothing_and_repeating_nothing() {
    let run = start("frontend-stream-id", "");
    run.customer(1, "Before Report", "one");
    let (_, report) = run.get(&run.sam, "/v1/conversations");
    let stream_id = report["stream_id"].as_str().unwrap().to_owned();
    run.customer(2, "After Report", "two");
    let text = run.stream(&run.sam, &stream_id, 2);
    assert!(text.contains("After Report"), "{text}");
    assert!(
        !text.contains("Before Report"),
        "nothing in the report is repeated: {text}"
    );
    assert!(!text.contains("event: gap"), "{text}");

    // A single-use ticket opens the stream without a header; a second use is refused.
    let (status, ticket) = run.post(&run.sam, "/v1/stream/ticket", "");
    assert_eq!(status, 200, "{ticket}");
    assert_eq!(ticket["expires_in"], 30);
    let url = format!(
        "http://127.0.0.1:{}/v1/stream?ticket={}&last_event_id={stream_id}",
        run.daemon.port,
        ticket["ticket"].as_str().unwrap()
    );
    let (status, text) = curl(&["-N", "-m", "2", &url]);
    assert_eq!(status, 200);
    assert!(
        text.contains("After Report") && !text.contains("Before Report"),
        "{text}"
    );
    let (status, problem) = curl(&["-m", "2", &url]);
    assert_eq!(status, 401, "{problem}");
}

#[test]
fn cors_answers_listed_origins_only() {
    let dir = temp_dir("frontend-cors");
    let port = free_port();
    let config = dir.join("switchboard.toml");
    let text = shipped_config_with_door(&dir, port, free_port()).replace(
        "[server]\n",
        "[server]\ncors_origins = [\"https://console.example.com\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    let daemon = ServingBinary::start(config, port);
    let url = format!("http://127.0.0.1:{port}/v1/conversations");
    let preflight = |origin: &str| {
        curl(&[
            "-X",
            "OPTIONS",
            &url,
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: GET",
            "-H",
            "Access-Control-Request-Headers: authorization",
            "-D",
            "-",
        ])
    };
    let (status, headers) = preflight("https://console.example.com");
    assert_eq!(status, 204, "{headers}");
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("access-control-allow-origin: https://console.example.com"));
    assert!(headers.contains("access-control-allow-headers:") && headers.contains("authorization"));
    assert!(!headers.contains("access-control-allow-credentials"));
    let (status, headers) = preflight("https://evil.example.com");
    assert_eq!(status, 403, "{headers}");
    assert!(
        !headers
            .to_ascii_lowercase()
            .contains("access-control-allow-origin")
    );
    let sam = daemon.supervisor_token("sup-sam", "support");
    let (status, headers) = curl(&[
        &url,
        "-H",
        &format!("Authorization: Bearer {sam}"),
        "-H",
        "Origin: https://console.example.com",
        "-D",
        "-",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(status, 200);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://console.example.com")
    );
    // The server's clock on every answer, readable across origins.
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("switchboard-server-time: 20"), "{headers}");
    assert!(
        headers.contains(
            "access-control-expose-headers: retry-after, location, switchboard-server-time"
        )
    );
}

#[test]
fn a_supervisor_gone_for_the_monitor_lease_loses_its_seats() {
    let run = start("frontend-lease", "monitor_lease = \"1s\"");
    run.customer(1, "Lease Customer", "hello");
    let id = run.id_of("Lease");
    let (status, answer) = run.post(
        &run.sam,
        &format!("/v1/conversations/{id}/assign"),
        r#"{"agent": "a-ben"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let sue = run.daemon.supervisor_token("sup-sue", "support");
    let (status, answer) = run.post(&sue, &format!("/v1/conversations/{id}/monitor"), "{}");
    assert_eq!(status, 200, "{answer}");
    // Sue keeps a stream open for longer than the lease: her seat stays.
    run.stream(&sue, "", 3);
    let (_, detail) = run.get(&run.sam, &format!("/v1/conversations/{id}"));
    assert_eq!(detail["supervisors"][0]["id"], "sup-sue", "{detail}");
    // Then she is gone (no stream, no request): the seat ends by itself.
    // (The server notices the closed stream at its next heartbeat at the latest, 15 s.)
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, detail) = run.get(&run.sam, &format!("/v1/conversations/{id}"));
        if detail["supervisors"].as_array().is_some_and(Vec::is_empty) {
            let reasons: HashSet<&str> = detail["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|line| line["event"] == "supervision-ended")
                .filter_map(|line| line["details"]["reason"].as_str())
                .collect();
            assert_eq!(reasons, HashSet::from(["lease-expired"]), "{detail}");
            break;
        }
        assert!(Instant::now() < deadline, "the seat never ended: {detail}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
