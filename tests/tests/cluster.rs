//! Several daemons, as an operator runs them: three `switchboard serve` processes in cluster
//! mode on the real RabbitMQ and PostgreSQL, each with its own API port. Canonical events are
//! published to the inbound exchange while one node is killed with `-9` at a third and another
//! at two thirds, then restarted; supervisors' force-closes go to every node meanwhile, retried
//! with their `Idempotency-Key` when refused as retryable; then a node is paused with SIGSTOP
//! past its lease and resumed. Afterwards the history is checked Jepsen-style: every
//! conversation exists once, with each of its messages once and in order, each force-close
//! applied exactly once, and every node answers the same report; a client's stream cursor from
//! one node resumes on the others.
//!
//! The size is `SWITCHBOARD_CLUSTER_CONVERSATIONS` conversations of three events each (CI: 300;
//! `.ci/bench` runs 6 667, the 20 000 events of the full run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use switchboard_tests::{amqp_names, broker_client, call, curl, free_port, shipped_config_text};

const PARTITIONS: u32 = 6;
const LEASE_SECONDS: u64 = 3;

fn postgres_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs SQL with `psql` (the client PostgreSQL ships); `None` when the server does not answer.
fn psql(sql: &str) -> Option<String> {
    let output = Command::new("psql")
        .args([&postgres_url(), "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One node: its configuration, port and process (killed when dropped).
struct Node {
    id: String,
    config: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Node {
    fn new(dir: &Path, id: &str, shared: &Path, amqp: &str, schema: &str) -> Self {
        let port = free_port();
        let own = dir.join(id);
        std::fs::create_dir_all(&own).unwrap();
        // The shipped configuration, this node's ports, the shared plugin cache, the run's
        // broker names, and the cluster.
        let text = shipped_config_text(shared, port).replace(
            "[store]\n",
            &format!(
                "[store]\npostgres_url = \"{}\"\npostgres_schema = \"{schema}\"\n",
                postgres_url()
            ),
        ) + &format!(
            "\n{amqp}\n[cluster]\nnode_id = \"{id}\"\npartitions = {PARTITIONS}\nlease = \"{LEASE_SECONDS}s\"\n"
        );
        let config = own.join("switchboard.toml");
        std::fs::write(&config, text).unwrap();
        Self {
            id: id.to_owned(),
            config,
            port,
            log: own.join("daemon.log"),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(switchboard_tests::switchboard_binary())
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.get("/readyz").0 != 200 {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(exited.is_none(), "{} exited: {}", self.id, self.log_text());
            assert!(Instant::now() < deadline, "{} never ready", self.id);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn get(&self, path: &str) -> (u16, String) {
        curl(&[&format!("http://127.0.0.1:{}{path}", self.port)])
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn token(&self) -> String {
        let output = Command::new(switchboard_tests::switchboard_binary())
            .args(["token", "--config"])
            .arg(&self.config)
            .args(["--sub", "sup-cluster", "--role", "admin"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// The partitions `/readyz` says this node serves.
    fn owned(&self) -> BTreeSet<u64> {
        let (_, body) = self.get("/readyz");
        let ready: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        ready["cluster"]["owned"]
            .as_array()
            .map(|owned| {
                owned
                    .iter()
                    .filter_map(|entry| entry["partition"].as_u64())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every ongoing conversation in the report, walked page by page.
    fn report(&self, token: &str) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut path = "/v1/conversations?limit=1000".to_owned();
        loop {
            let (status, page) = call(self.port, token, "GET", &path, "");
            assert_eq!(status, 200, "{} {path}: {page}", self.id);
            rows.extend(page["conversations"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/v1/conversations?limit=1000&cursor={cursor}"),
                None => return rows,
            }
        }
    }
}

fn count_events(text: &str, kind: &str) -> usize {
    text.lines()
        .filter(|line| *line == format!("event: {kind}"))
        .count()
}

fn head(text: &str) -> String {
    text.chars().take(600).collect()
}

/// The stream `seen` on node-0 carried what the partitions committed, summaries and timeline
/// lines; resumed on the same node right away it goes on from the last id (the window still
/// holds it).
fn check_stream(nodes: &[Node], token: &str, dir: &Path, seen: &str) {
    assert!(
        count_events(seen, "conversation") > 0 && count_events(seen, "timeline") > 0,
        "{}",
        head(seen)
    );
    assert_eq!(count_events(seen, "gap"), 0, "{}", head(seen));
    let last = seen
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_owned();
    let resumed_file = dir.join("resumed.txt");
    stream_from(&nodes[0], token, Some(&last), 2, &resumed_file)
        .wait()
        .unwrap();
    let resumed = std::fs::read_to_string(&resumed_file).unwrap();
    assert_eq!(count_events(&resumed, "gap"), 0, "{}", head(&resumed));
    assert!(
        !resumed.contains(&format!("id: {last}\n")),
        "the last event seen came again: {}",
        head(&resumed)
    );
}

/// A stream cursor (`partition:public.silent.index`, comma separated) as a map.
fn cursor(text: &str) -> BTreeMap<u32, (u64, u32, u32)> {
    text.split(',')
        .map(|entry| {
            let (partition, id) = entry
                .split_once(':')
                .unwrap_or_else(|| panic!("a partition per entry: {text:?}"));
            let parts: Vec<&str> = id.split('.').collect();
            (
                partition.parse().unwrap(),
                (
                    parts[0].parse().unwrap(),
                    parts[1].parse().unwrap(),
                    parts[2].parse().unwrap(),
                ),
            )
        })
        .collect()
}

/// The events of a stream an admin read, each named by the entry of the cursor it moved (its
/// partition and its id there: the same on every node), starting from `from`.
fn stream_events(text: &str, from: &str) -> Vec<(u32, (u64, u32, u32))> {
    let mut at = cursor(from);
    let mut events = Vec::new();
    for id in text.lines().filter_map(|line| line.strip_prefix("id: ")) {
        let next = cursor(id);
        let moved: Vec<_> = next
            .iter()
            .filter(|(partition, id)| at.get(partition) != Some(id))
            .map(|(partition, id)| (*partition, *id))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "an event moves one partition: {from} -> {id}"
        );
        events.extend(moved);
        at = next;
    }
    events
}

/// A client's stream cursor from one node resumes on another: the second replays exactly what
/// followed the cursor in each partition, however the two interleaved the partitions. Runs
/// when every node is up and has followed the same partitions since its start; `publish`
/// makes new events while the first stream is open.
async fn check_stream_across_nodes(
    nodes: &[Node],
    token: &str,
    dir: &Path,
    publish: impl AsyncFnOnce(),
) {
    let (status, report) = call(nodes[1].port, token, "GET", "/v1/conversations?limit=1", "");
    assert_eq!(status, 200, "{report}");
    let from = report["stream_id"].as_str().unwrap().to_owned();
    let first_file = dir.join("across-first.txt");
    let mut first = stream_from(&nodes[1], token, Some(&from), 6, &first_file);
    publish().await;
    first.wait().unwrap();
    let first = std::fs::read_to_string(&first_file).unwrap();
    assert_eq!(count_events(&first, "gap"), 0, "{}", head(&first));
    let seen = stream_events(&first, &from);
    assert!(seen.len() >= 4, "the stream carried {} events", seen.len());
    let ids: Vec<&str> = first
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .collect();
    let middle = ids[ids.len() / 2 - 1].to_owned();
    let after_middle: BTreeSet<_> = seen[ids.len() / 2..].iter().copied().collect();
    for other in [&nodes[2], &nodes[0]] {
        let file = dir.join(format!("across-{}.txt", other.id));
        stream_from(other, token, Some(&middle), 2, &file)
            .wait()
            .unwrap();
        let resumed = std::fs::read_to_string(&file).unwrap();
        assert_eq!(count_events(&resumed, "gap"), 0, "{}", head(&resumed));
        let replayed = stream_events(&resumed, &middle);
        let unique: BTreeSet<_> = replayed.iter().copied().collect();
        assert_eq!(
            unique.len(),
            replayed.len(),
            "an event came twice on {}",
            other.id
        );
        let missing: Vec<_> = after_middle.difference(&unique).collect();
        assert!(
            missing.is_empty(),
            "{} did not replay {missing:?}",
            other.id
        );
        // Anything else came after the first stream ended (a later change, live).
        let end = cursor(ids[ids.len() - 1]);
        for (partition, id) in unique.difference(&after_middle) {
            assert!(
                end.get(partition).is_none_or(|last| id > last),
                "{} replayed {partition}:{id:?}, at or before the cursor",
                other.id
            );
        }
    }
}

/// `curl -N` on a node's `GET /v1/stream` for `seconds`, into `file`.
fn stream_from(node: &Node, token: &str, after: Option<&str>, seconds: u32, file: &Path) -> Child {
    let mut command = Command::new("curl");
    command
        .args(["-sN", "-m", &seconds.to_string()])
        .arg(format!("http://127.0.0.1:{}/v1/stream", node.port))
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(after) = after {
        command.args(["-H", &format!("Last-Event-ID: {after}")]);
    }
    command
        .stdout(std::fs::File::create(file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Publishes conversation `i`'s events to the inbound exchange, each confirmed.
async fn publish(channel: &lapin::Channel, exchange: &str, i: usize) {
    for (_, event) in events(i) {
        send(channel, exchange, &event).await;
    }
}

/// Publishes one canonical event (its `id` as the message id) to the inbound exchange,
/// persistent, and waits for the broker's confirm.
async fn send(channel: &lapin::Channel, exchange: &str, event: &Value) {
    channel
        .basic_publish(
            exchange.into(),
            "canonical".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &serde_json::to_vec(event).unwrap(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(event["id"].as_str().unwrap().into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A customer's later message on conversation `i`'s thread: `{nth} of {i}`.
fn later_message(i: usize, nth: &str) -> Value {
    json!({"id": format!("cluster-{i}-{nth}"), "source": "canonical", "type": "message",
        "conversation": {"plugin": "web-chat", "key": format!("cluster-{i}")},
        "channel": "web", "sender": {"kind": "customer"}, "text": format!("{nth} of {i}")})
}

fn conversations() -> usize {
    std::env::var("SWITCHBOARD_CLUSTER_CONVERSATIONS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(300)
}

/// Conversation `i`'s three events: started, then two customer messages.
fn events(i: usize) -> [(String, Value); 3] {
    let thread = format!("cluster-{i}");
    let conversation = json!({"plugin": "web-chat", "key": thread});
    [
        (
            format!("{thread}-start"),
            json!({"id": format!("{thread}-start"), "source": "canonical", "type": "started",
                   "conversation": conversation, "channel": "web",
                   "customer": {"id": format!("cust-{i}")}, "queue": "support-chat"}),
        ),
        (
            format!("{thread}-m1"),
            json!({"id": format!("{thread}-m1"), "source": "canonical", "type": "message",
                   "conversation": conversation, "channel": "web",
                   "sender": {"kind": "customer"}, "text": format!("first of {i}")}),
        ),
        (
            format!("{thread}-m2"),
            json!({"id": format!("{thread}-m2"), "source": "canonical", "type": "message",
                   "conversation": conversation, "channel": "web",
                   "sender": {"kind": "customer"}, "text": format!("second of {i}")}),
        ),
    ]
}

/// Force-closes `id` through the nodes in turn (starting at `first`), with one
/// `Idempotency-Key`, until one answers 200; every other answer must be retryable (503, or
/// no answer from a node that is down). Returns the answer.
fn force_close(nodes: &[Node], token: &str, id: &str, first: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = first;
    loop {
        let node = &nodes[attempt % nodes.len()];
        attempt += 1;
        let (status, body) = curl(&[
            "-X",
            "POST",
            &format!(
                "http://127.0.0.1:{}/v1/conversations/{id}/force-close",
                node.port
            ),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Idempotency-Key: close-{id}"),
            "--data-binary",
            r#"{"reason": "cluster test", "confirm": true}"#,
        ]);
        match status {
            200 => return serde_json::from_str(&body).unwrap(),
            // Down (killed or paused: curl gives up), or told to retry.
            0 | 503 => {}
            other => panic!("force-close of {id} on {}: {other} {body}", node.id),
        }
        assert!(
            Instant::now() < deadline,
            "force-close of {id} never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)]
async fn three_nodes_lose_nothing_and_apply_nothing_twice_across_kill_9_and_sigstop() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(client) = services().await else {
        return;
    };
    let names = amqp_names("cluster");
    let schema = fresh_schema("cluster");
    let amqp = switchboard_tests::amqp_table(&names);
    let dir = switchboard_tests::temp_dir("cluster");
    let mut nodes: Vec<Node> = (0..3)
        .map(|n| Node::new(&dir, &format!("node-{n}"), &dir, &amqp, &schema))
        .collect();
    // The first node compiles the plugins into the shared cache; the others read it.
    nodes[0].start();
    nodes[1].start();
    nodes[2].start();
    let token = nodes[0].token();
    // Partitions spread over the three nodes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().map(|node| node.owned().len()).sum::<usize>() != PARTITIONS as usize
        || nodes.iter().any(|node| node.owned().len() != 2)
    {
        assert!(
            Instant::now() < deadline,
            "partitions never spread: {:?}",
            nodes
                .iter()
                .map(|node| node.get("/readyz"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let channel = client.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    // A supervisor's live stream on node-0, for the first seconds of the run; checked once it
    // ended (`check_stream`).
    let stream_file = dir.join("stream.txt");
    let mut stream = stream_from(&nodes[0], &token, None, 4, &stream_file);
    let mut stream_checked = false;
    let total = conversations();
    let started = Instant::now();
    let mut closes: Vec<(usize, String)> = Vec::new();
    let mut closed: BTreeMap<usize, Value> = BTreeMap::new();
    for i in 0..total {
        publish(&channel, &names.inbound_exchange, i).await;
        if !stream_checked && stream.try_wait().unwrap().is_some() {
            let seen = std::fs::read_to_string(&stream_file).unwrap();
            check_stream(&nodes, &token, &dir, &seen);
            stream_checked = true;
        }
        if i == total / 3 {
            nodes[1].kill_9();
        }
        if i == 2 * total / 3 {
            nodes[2].kill_9();
            nodes[1].start();
        }
        // Every tenth conversation is force-closed once it is visible, through whichever
        // node is up (and through the killed ones too: they answer nothing, and the closing
        // moves on to the next node with the same key).
        if i % 10 == 5 {
            let thread = format!("cust-{}", i - 5);
            closes.push((i - 5, thread));
        }
        if i % 10 != 9 || closes.is_empty() {
            continue;
        }
        let visible: Vec<(usize, String)> = {
            let up = nodes.iter().find(|node| node.child.is_some()).unwrap();
            let rows = up.report(&token);
            closes
                .iter()
                .filter_map(|(index, customer)| {
                    rows.iter()
                        .find(|row| row["customer"]["id"] == customer.as_str())
                        .map(|row| (*index, row["id"].as_str().unwrap().to_owned()))
                })
                .collect()
        };
        for (index, id) in visible {
            let answer = force_close(&nodes, &token, &id, index);
            closes.retain(|(pending, _)| *pending != index);
            closed.insert(index, json!({"id": id, "answer": answer}));
        }
    }
    nodes[2].start();
    if !stream_checked {
        stream.wait().unwrap();
        let seen = std::fs::read_to_string(&stream_file).unwrap();
        check_stream(&nodes, &token, &dir, &seen);
    }
    eprintln!("published {} events in {:?}", total * 3, started.elapsed());

    // A node paused past its lease: the others take its partitions over; resumed, it finds
    // them gone, and whatever it tries to write is refused.
    nodes[0].signal("-STOP");
    let paused_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes[1].owned().len() + nodes[2].owned().len() != PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "the paused node's partitions were never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("taken over {:?} after the pause", paused_at.elapsed());
    nodes[0].signal("-CONT");
    // Resumed, it learns it lost its leases (its writes are refused meanwhile) and may find
    // its broker connection gone (the broker stopped hearing from it): then it exits with an
    // error for its supervisor to restart it, as here.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    let exited = nodes[0].child.as_mut().unwrap().try_wait().unwrap();
    if let Some(status) = exited {
        assert!(
            !status.success(),
            "a node that lost its broker exits with an error"
        );
        nodes[0].child = None;
        nodes[0].start();
    }
    let fenced: u64 = nodes[0]
        .get("/metrics")
        .1
        .lines()
        .filter(|line| line.starts_with("switchboard_cluster_fenced_writes_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    eprintln!(
        "the resumed node {}; {fenced} of its writes refused by fencing since",
        if exited.is_some() {
            "exited and was restarted"
        } else {
            "lives on"
        }
    );

    // The rest of the closes, now that everything was published.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !closes.is_empty() {
        let rows = nodes[1].report(&token);
        let pending = std::mem::take(&mut closes);
        for (index, customer) in pending {
            match rows
                .iter()
                .find(|row| row["customer"]["id"] == customer.as_str())
            {
                Some(row) => {
                    let id = row["id"].as_str().unwrap().to_owned();
                    let answer = force_close(&nodes, &token, &id, index);
                    closed.insert(index, json!({"id": id, "answer": answer}));
                }
                None => closes.push((index, customer)),
            }
        }
        assert!(
            Instant::now() < deadline,
            "conversations never appeared: {closes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every node settles on the same report: the conversations not closed, each once.
    let expected = total - closed.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reports;
    loop {
        reports = nodes
            .iter()
            .map(|node| node.report(&token))
            .collect::<Vec<_>>();
        if reports.iter().all(|rows| rows.len() == expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reports never settled: {:?} rows, {expected} expected",
            reports.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{} conversations, {} force-closed, {expected} ongoing on every node, {:?} after the first event (two kills, a pause, a restart and the checks included)",
        total,
        closed.len(),
        started.elapsed()
    );
    let ids = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .map(|row| row["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&reports[0]), ids(&reports[1]));
    assert_eq!(ids(&reports[0]), ids(&reports[2]));
    let customers: BTreeSet<&str> = reports[0]
        .iter()
        .map(|row| row["customer"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(customers.len(), expected, "a conversation exists twice");

    // A daemon started without cluster mode on the same broker and queue finds the cluster's
    // mark, says why, and does not consume (it is not ready).
    {
        let single_dir = switchboard_tests::temp_dir("cluster-single");
        let single_port = free_port();
        let single_config = single_dir.join("switchboard.toml");
        std::fs::write(
            &single_config,
            shipped_config_text(&single_dir, single_port) + &amqp,
        )
        .unwrap();
        let log = single_dir.join("daemon.log");
        let mut single = Node {
            id: "single".to_owned(),
            config: single_config.clone(),
            port: single_port,
            log: log.clone(),
            child: Some(
                Command::new(switchboard_tests::switchboard_binary())
                    .args(["serve", "--config"])
                    .arg(&single_config)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap(),
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("daemons in cluster mode consume")
        {
            assert!(
                Instant::now() < deadline,
                "{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, readiness) = curl(&[&format!("http://127.0.0.1:{single_port}/readyz")]);
        assert_eq!(status, 503, "{readiness}");
        single.kill_9();
    }

    // Each conversation's history: created once, its two messages once each and in order;
    // a closed one closed exactly once.
    let mut histories: Vec<(String, bool)> = reports[0]
        .iter()
        .map(|row| (row["id"].as_str().unwrap().to_owned(), false))
        .collect();
    histories.extend(
        closed
            .values()
            .map(|closed| (closed["id"].as_str().unwrap().to_owned(), true)),
    );
    for (index, (id, was_closed)) in histories.iter().enumerate() {
        let node = &nodes[index % nodes.len()];
        let (status, detail) = call(
            node.port,
            &token,
            "GET",
            &format!("/v1/conversations/{id}"),
            "",
        );
        assert_eq!(status, 200, "{id}: {detail}");
        let timeline = detail["timeline"].as_array().unwrap();
        let of = |event: &str| {
            timeline
                .iter()
                .filter(|line| line["event"] == event)
                .count()
        };
        let texts: Vec<&str> = timeline
            .iter()
            .filter(|line| line["event"] == "message")
            .filter_map(|line| line["details"]["text"].as_str())
            .collect();
        assert_eq!(of("created"), 1, "{id}: {timeline:?}");
        assert_eq!(texts.len(), 2, "{id}: {texts:?}");
        assert!(
            texts[0].starts_with("first of") && texts[1].starts_with("second of"),
            "{id}: {texts:?}"
        );
        assert_eq!(
            of("force-closed"),
            usize::from(*was_closed),
            "{id}: {timeline:?}"
        );
    }

    // Nothing inbound was dead-lettered (deliveries the test's configuration cannot send are,
    // under their own routing keys).
    let mut dead_inbound = 0;
    while let Some(message) = channel
        .basic_get(
            names.dead_letter_queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        if message.delivery.routing_key.as_str() == "canonical" {
            dead_inbound += 1;
        }
    }
    assert_eq!(dead_inbound, 0, "inbound messages were dead-lettered");

    // With every node up, a stream's cursor from one node resumes on the others.
    check_stream_across_nodes(&nodes, &token, &dir, async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in total..total + 20 {
            publish(&channel, &names.inbound_exchange, i).await;
        }
    })
    .await;

    drop(nodes);
    let _ = psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    let _ = channel
        .exchange_delete(names.inbound_exchange.as_str().into(), Default::default())
        .await;
}

/// One cluster test at a time: each starts several daemons on the two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether RabbitMQ and PostgreSQL answer (failing where CI requires them, saying so where it
/// does not).
async fn services() -> Option<lapin::Connection> {
    let client = broker_client().await?;
    if psql("SELECT 1").is_none() {
        assert!(
            std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "SWITCHBOARD_REQUIRE_POSTGRES=1 but PostgreSQL does not answer at {}",
            postgres_url()
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "SKIPPED: no PostgreSQL at the test URL; set SWITCHBOARD_REQUIRE_POSTGRES=1 to fail instead"
            );
        }
        return None;
    }
    Some(client)
}

/// A fresh schema name for one test run.
fn fresh_schema(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// `switchboard cluster import`: a single daemon's embedded store (killed, so its journal is
/// left as a crash leaves it) moves into a new cluster, whose node then answers the same
/// report and timelines under the same conversation ids, routes a command and a thread's next
/// message to the conversations that moved, and refuses a second import. Then the broker's
/// connections are forced closed mid-stream: the node exits, is restarted, and nothing is
/// lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_into_a_new_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(client) = services().await else {
        return;
    };
    let dir = switchboard_tests::temp_dir("cluster-import");
    // The single daemon, as it ran before: conversations, messages, two force-closed.
    let single_dir = dir.join("single");
    std::fs::create_dir_all(&single_dir).unwrap();
    let single_port = free_port();
    let single_config = single_dir.join("switchboard.toml");
    std::fs::write(
        &single_config,
        shipped_config_text(&single_dir, single_port),
    )
    .unwrap();
    let mut single = switchboard_tests::ServingBinary::start(single_config, single_port);
    let ingest = single.token(&["--sub", "gateway", "--role", "ingest"]);
    let admin = single.token(&["--sub", "sup-import", "--role", "admin"]);
    const CONVERSATIONS: usize = 24;
    for i in 0..CONVERSATIONS {
        for (_, event) in events(i) {
            let (status, answer) =
                single.call(&ingest, "POST", "/v1/inbound/canonical", &event.to_string());
            assert!(matches!(status, 200 | 202), "{status}: {answer}");
        }
    }
    let report = |port: u16, token: &str| -> Vec<Value> {
        let (status, page) = call(port, token, "GET", "/v1/conversations?limit=1000", "");
        assert_eq!(status, 200, "{page}");
        page["conversations"].as_array().unwrap().clone()
    };
    let rows = report(single_port, &admin);
    assert_eq!(rows.len(), CONVERSATIONS);
    for row in &rows[..2] {
        let id = row["id"].as_str().unwrap();
        let (status, answer) = single.call(
            &admin,
            "POST",
            &format!("/v1/conversations/{id}/force-close"),
            r#"{"reason": "before the move", "confirm": true}"#,
        );
        assert_eq!(status, 200, "{answer}");
    }
    let timelines = |port: u16, token: &str, rows: &[Value]| -> BTreeMap<String, Value> {
        rows.iter()
            .map(|row| {
                let id = row["id"].as_str().unwrap();
                let (status, detail) =
                    call(port, token, "GET", &format!("/v1/conversations/{id}"), "");
                assert_eq!(status, 200, "{detail}");
                (id.to_owned(), detail["timeline"].clone())
            })
            .collect()
    };
    let shape = |rows: &[Value]| -> BTreeMap<String, (Value, Value, Value)> {
        rows.iter()
            .map(|row| {
                (
                    row["id"].as_str().unwrap().to_owned(),
                    (
                        row["customer"].clone(),
                        row["state"].clone(),
                        row["queue"].clone(),
                    ),
                )
            })
            .collect()
    };
    let before = report(single_port, &admin);
    assert_eq!(before.len(), CONVERSATIONS - 2);
    let before_timelines = timelines(single_port, &admin, &before);
    single.child.kill().unwrap();
    single.child.wait().unwrap();

    // The cluster's configuration, and the import into it.
    let names = amqp_names("cluster-import");
    let amqp = switchboard_tests::amqp_table(&names);
    let schema = fresh_schema("cluster_import");
    let mut node = Node::new(&dir, "node-0", &dir, &amqp, &schema);
    let import_from = |node: &Node, from: &Path| {
        Command::new(switchboard_tests::switchboard_binary())
            .args(["cluster", "import", "--config"])
            .arg(&node.config)
            .arg("--from")
            .arg(from)
            .output()
            .unwrap()
    };
    let import = |node: &Node| import_from(node, &single_dir.join("data"));
    // A path that holds no store is refused, and leaves the cluster new.
    let mistyped = import_from(&node, &single_dir.join("dta"));
    assert_eq!(mistyped.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&mistyped.stderr).contains("holds no embedded store"),
        "{}",
        String::from_utf8_lossy(&mistyped.stderr)
    );
    assert!(!single_dir.join("dta").exists());
    let imported = import(&node);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let summary: Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(summary["conversations"], CONVERSATIONS, "{summary}");
    assert_eq!(
        summary["partitions"].as_array().unwrap().len(),
        PARTITIONS as usize
    );
    assert!(summary["moved"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["timeline_entries"].as_u64().unwrap() >= 3 * CONVERSATIONS as u64);
    let again = import(&node);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds conversations"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A node of the new cluster answers what the single daemon answered.
    node.start();
    let token = node.token();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = node.report(&token);
    while after.len() != before.len() {
        assert!(Instant::now() < deadline, "{} rows", after.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = node.report(&token);
    }
    assert_eq!(shape(&after), shape(&before));
    assert_eq!(timelines(node.port, &token, &after), before_timelines);

    // The thread's next message reaches the conversation that moved, and a command on it
    // reaches its partition.
    let channel = client.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let moved = after
        .iter()
        .find(|row| row["customer"]["id"] == "cust-5")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        &channel,
        &names.inbound_exchange,
        &later_message(5, "third"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, detail) = call(
            node.port,
            &token,
            "GET",
            &format!("/v1/conversations/{moved}"),
            "",
        );
        let texts: Vec<&str> = detail["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|line| line["details"]["text"].as_str())
            .collect();
        if texts.contains(&"third of 5") {
            assert_eq!(texts, ["first of 5", "second of 5", "third of 5"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message never arrived: {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        node.report(&token).len(),
        before.len(),
        "no new conversation"
    );
    let answer = force_close(std::slice::from_ref(&node), &token, &moved, 0);
    assert_eq!(answer["conversation"], moved.as_str(), "{answer}");
    assert_eq!(answer["state"], "closed", "{answer}");

    // The broker's connections forced closed mid-stream: the node exits with an error
    // (crash-only: its state is in PostgreSQL), is started again as its supervisor would, and
    // what was published before and after is applied once each, in order.
    let streamed = 8..18;
    for i in streamed.clone() {
        send(
            &channel,
            &names.inbound_exchange,
            &later_message(i, "third"),
        )
        .await;
    }
    switchboard_tests::rabbitmqctl(&["close_all_connections", "cluster test: forced closed"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !exited.success(),
        "a node that lost its broker exits with an error"
    );
    node.child = None;
    node.start();
    let client = broker_client().await.unwrap();
    let channel = client.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in streamed.clone() {
        send(
            &channel,
            &names.inbound_exchange,
            &later_message(i, "fourth"),
        )
        .await;
    }
    let rows = node.report(&token);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in streamed {
        let id = rows
            .iter()
            .find(|row| row["customer"]["id"] == format!("cust-{i}").as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        loop {
            let (_, detail) = call(
                node.port,
                &token,
                "GET",
                &format!("/v1/conversations/{id}"),
                "",
            );
            let texts: Vec<String> = detail["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|line| line["details"]["text"].as_str().map(str::to_owned))
                .collect();
            if texts.len() >= 4 {
                let expected: Vec<String> = ["first", "second", "third", "fourth"]
                    .iter()
                    .map(|text| format!("{text} of {i}"))
                    .collect();
                assert_eq!(texts, expected);
                break;
            }
            assert!(Instant::now() < deadline, "{id}: {texts:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    node.kill_9();
    let _ = psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    let _ = channel
        .exchange_delete(names.inbound_exchange.as_str().into(), Default::default())
        .await;
}
