//! How long the daemon takes to serve again after `kill -9` with a large state: 100 000
//! ongoing conversations of 11 inputs each (a start and 10 customer messages) are committed
//! into a store the way the daemon commits them (batches, one snapshot each time the log grows
//! by `max(10 000, conversations)` records); the process is then killed with `-9` mid-flight,
//! and the `switchboard` binary is started on that store and timed until `/readyz` answers 200
//! (journal replay, snapshot, log replay, plugins from the compile cache, the live stream's
//! window).
//!
//! ```sh
//! cargo build --release -p switchboard
//! cargo bench -p switchboard-tests --bench restart              # 100 000 conversations
//! RESTART_CONVERSATIONS=20000 cargo bench -p switchboard-tests --bench restart
//! RESTART_LOG=info cargo bench -p switchboard-tests --bench restart   # with the phases
//! ```
//!
//! One JSON line: the seeding figures, the store's size on disk, and `restart_ms`.

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::config;
use switchboard::engine::{ChannelKind, Engine, Millis, PluginPolicy};
use switchboard::pipeline::Pipeline;
use switchboard::store::{RedbStore, Store};
use switchboard::transport::InboundMessage;
use switchboard_tests::{free_port, shipped_config_text, switchboard_binary, temp_dir};

const MESSAGES_PER_CONVERSATION: usize = 10;
/// Inputs per commit while seeding (the daemon's AMQP batches are up to the prefetch, 300).
const BATCH: usize = 1_000;

fn main() {
    if let Ok(dir) = std::env::var("RESTART_BENCH_SEED") {
        seed(Path::new(&dir));
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is taken.
    let conversations: usize = std::env::var("RESTART_CONVERSATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100_000);
    let dir = temp_dir("restart-bench");
    let port = free_port();
    let config_file = dir.join("switchboard.toml");
    std::fs::write(&config_file, shipped_config_text(&dir, port)).unwrap();

    // A first run creates the store and fills the compile cache under it, as a daemon that
    // restarts finds them.
    // `RESTART_LOG=info` shows the daemon's log: the journal, read and replay phases.
    let log = std::env::var("RESTART_LOG").ok();
    let serve = || {
        Command::new(switchboard_binary())
            .args(["serve", "--config"])
            .arg(&config_file)
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .stderr(if log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap()
    };
    let mut first = serve();
    let url = format!("http://127.0.0.1:{port}/readyz");
    wait_ready(&url, &mut first, Instant::now());
    let _ = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status();
    first.wait().unwrap();

    // Seed in a child process, then kill it with -9 once it says it is done committing.
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("RESTART_BENCH_SEED", dir.join("data"))
        .env("RESTART_CONVERSATIONS", conversations.to_string())
        .env("RESTART_CONFIG", &config_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seeded = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut seeded)
        .unwrap();
    let seed_seconds = started.elapsed().as_secs_f64();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let bytes = directory_bytes(&dir.join("data"));

    let restart = Instant::now();
    let mut daemon = serve();
    let ready = wait_ready(&url, &mut daemon, restart);
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    println!(
        "{{\"conversations\":{conversations},\"inputs\":{},\"seeded\":{},\"seed_seconds\":{seed_seconds:.1},\"store_bytes\":{bytes},\"restart_ms\":{}}}",
        conversations * (MESSAGES_PER_CONVERSATION + 1),
        seeded.trim(),
        ready.as_millis()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The child: commits the conversations as the daemon would, says so on stdout, then waits
/// to be killed (what it committed since its last snapshot stays to be replayed).
fn seed(dir: &Path) {
    let conversations: usize = std::env::var("RESTART_CONVERSATIONS")
        .unwrap()
        .parse()
        .unwrap();
    let config =
        config::load_with_env(Path::new(&std::env::var("RESTART_CONFIG").unwrap()), &[]).unwrap();
    let queue = config
        .plugins
        .iter()
        .find(|plugin| plugin.id == "web-chat")
        .map(|plugin| plugin.default_queue.clone())
        .unwrap();
    let policies = vec![PluginPolicy {
        id: "web-chat".into(),
        channel: ChannelKind::Web,
        default_queue: queue,
        voice_controls: false,
        media_supervisors: None,
    }];
    let store: Arc<RedbStore> = Arc::new(RedbStore::open(dir).unwrap());
    let engine = Engine::restore(config.engine_setup(policies), None, &[]);
    let mut pipeline = Pipeline::new(engine, Vec::new(), store.clone());
    let mut last_snapshot = 0u64;
    let mut snapshots = 0usize;
    let now = Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let mut batch = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<InboundMessage>, pipeline: &mut Pipeline| {
        pipeline.process(batch, now).unwrap();
        batch.clear();
        // The daemon's snapshot rule (`Service::committed`).
        let state = pipeline.engine().state();
        let (last, count) = (state.last_seq(), state.conversation_count() as u64);
        if last - last_snapshot >= switchboard::service::SNAPSHOT_EVERY.max(count) {
            store.write_snapshot(&state.snapshot()).unwrap();
            last_snapshot = last;
            snapshots += 1;
        }
    };
    let message = |body: String| InboundMessage {
        ack: None,
        delivery_tag: 0,
        routing_key: "canonical".to_owned(),
        content_type: Some("application/json".to_owned()),
        message_id: None,
        redelivered: false,
        headers: Vec::new(),
        body: body.into_bytes(),
    };
    // Conversations are opened first, then written to round after round, as a contact
    // center's traffic interleaves them.
    for n in 0..conversations {
        batch.push(message(format!(
            r#"{{"id":"s-{n}","source":"canonical","type":"started","conversation":{{"plugin":"web-chat","key":"t-{n}"}},"channel":"web","customer":{{"id":"c-{n}","name":"Customer {n}"}},"subject":"Order {n}"}}"#
        )));
        if batch.len() == BATCH {
            flush(&mut batch, &mut pipeline);
        }
    }
    for round in 0..MESSAGES_PER_CONVERSATION {
        for n in 0..conversations {
            batch.push(message(format!(
                r#"{{"id":"m-{n}-{round}","source":"canonical","type":"message","conversation":{{"plugin":"web-chat","key":"t-{n}"}},"channel":"web","sender":{{"kind":"customer"}},"text":"Message {round} about my order {n}: where is it?","sentiment":-0.2}}"#
            )));
            if batch.len() == BATCH {
                flush(&mut batch, &mut pipeline);
            }
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut pipeline);
    }
    let state = pipeline.engine().state();
    println!(
        "{{\"last_seq\":{},\"snapshots\":{snapshots},\"records_since_snapshot\":{}}}",
        state.last_seq(),
        state.last_seq() - last_snapshot
    );
    std::thread::sleep(Duration::from_secs(3600));
}

/// Polls `/readyz` until it answers 200; the time from `since`.
fn wait_ready(url: &str, daemon: &mut std::process::Child, since: Instant) -> Duration {
    loop {
        let status = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "1",
                url,
            ])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        if status == "200" {
            return since.elapsed();
        }
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        assert!(since.elapsed() < Duration::from_secs(300), "never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
                    Ok(metadata) => metadata.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
