//! The delivery worker's throughput, cost and added latency: the release `switchboard` binary
//! on the embedded default (store on disk) with `sms-twilio` pointed at the Twilio emulator
//! on loopback, driven through the admin API — supervisors' public messages, each committed,
//! then delivered over keep-alive connections, its receipt applied.
//!
//! ```sh
//! cargo build --release -p switchboard
//! cargo bench -p switchboard-tests --bench delivery
//! DELIVERY_SECONDS=20 DELIVERY_CLIENTS=32 cargo bench -p switchboard-tests --bench delivery
//! ```
//!
//! Phases, in one run on one machine (daemon, emulator and driver share its cores):
//! 1. **loopback bound**: the driver posts Twilio requests straight to the emulator, flat
//!    out — the most any deliverer could reach here;
//! 2. **API only**: supervisors' messages flat out with `[delivery] enabled = false` — what
//!    the API and the commits alone cost and sustain;
//! 3. **flat out**: the same with delivery on: deliveries per second in steady state and the
//!    daemon's CPU per delivery (its whole process: API, commit, delivery, receipt);
//! 4. **paced**: 1 000 messages per second; a delivery's added latency is the time from the
//!    API's answer (the message is committed) to the emulator receiving the request.
//!
//! One JSON line with every figure.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_tests::emulators::{self, twilio::Twilio};
use switchboard_tests::{ServingBinary, free_port, shipped_config_with_door, temp_dir};

const ACCOUNT: &str = "AC00000000000000000000000000000000";
const TOKEN: &str = "bench-twilio-auth-token";
const CONVERSATIONS: usize = 100;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The daemon's CPU time so far (user + system), from `/proc`.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the command.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn config(dir: &Path, port: u16, twilio: u16, delivering: bool) -> std::path::PathBuf {
    // The API's per-caller rate limit (1 000/s by default) would cap the driver: raised.
    let text = shipped_config_with_door(dir, port, free_port())
        .replace("rate_limit = 1000\n", "rate_limit = 1000000\n")
        .replace(
            "api_base_url = \"https://api.twilio.com\"",
            &format!("api_base_url = \"http://127.0.0.1:{twilio}\""),
        )
        .replace(
            "[plugins.sms-twilio.config]",
            &format!(
                "allowed_hosts = [\"127.0.0.1:{twilio}\"]\nsecrets = {{ auth_token = \"{TOKEN}\" }}\n[plugins.sms-twilio.config]"
            ),
        )
        + &format!(
            "\n[delivery]\nenabled = {delivering}\n\n[[agents]]\nid = \"a-bench\"\nname = \"Bench\"\ncapacity = 1000000\nqueues = [\"billing\"]\npresence = \"available\"\n"
        );
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, text).expect("the config");
    file
}

struct Api {
    client: reqwest::Client,
    base: String,
    supervisor: String,
    ingest: String,
}

impl Api {
    async fn post(&self, token: &str, path: &str, content_type: &str, body: String) -> u16 {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map(|answer| answer.status().as_u16())
            .unwrap_or(0)
    }

    /// Conversations with a customer each, assigned and joined publicly by the supervisor.
    async fn open(&self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 0..count {
            let from = format!("%2B1415666{n:04}");
            let body = format!(
                "MessageSid=SM{n:032}&SmsSid=SM{n:032}&AccountSid={ACCOUNT}&From={from}&To=%2B15005550006&Body=Hello&NumMedia=0"
            );
            let status = self
                .post(
                    &self.ingest,
                    "/v1/inbound/sms-twilio",
                    "application/x-www-form-urlencoded",
                    body,
                )
                .await;
            assert!(matches!(status, 200 | 202), "the customer's SMS: {status}");
        }
        let report: serde_json::Value = self
            .client
            .get(format!("{}/v1/conversations", self.base))
            .bearer_auth(&self.supervisor)
            .send()
            .await
            .expect("the report")
            .bytes()
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .expect("the report as JSON");
        for summary in report["conversations"].as_array().expect("conversations") {
            let id = summary["id"].as_str().expect("an id").to_owned();
            for (action, body) in [
                ("assign", r#"{"agent": "a-bench"}"#),
                ("join", r#"{"mode": "public"}"#),
            ] {
                let status = self
                    .post(
                        &self.supervisor,
                        &format!("/v1/conversations/{id}/{action}"),
                        "application/json",
                        body.to_owned(),
                    )
                    .await;
                assert_eq!(status, 200, "{action}");
            }
            ids.push(id);
        }
        assert_eq!(ids.len(), count);
        ids
    }

    /// One supervisor message, `m-<seq>`, to conversation `seq % n`; when it was committed.
    async fn message(&self, ids: &[String], seq: u64) -> Instant {
        let id = &ids[usize::try_from(seq).unwrap_or(0) % ids.len()];
        let status = self
            .post(
                &self.supervisor,
                &format!("/v1/conversations/{id}/messages"),
                "application/json",
                format!(r#"{{"text": "m-{seq}", "visibility": "public"}}"#),
            )
            .await;
        assert_eq!(status, 200, "a supervisor's message");
        Instant::now()
    }
}

/// Messages flat out from `clients` connections for `seconds`; how many were answered.
async fn flat_out(
    api: &Arc<Api>,
    ids: &Arc<Vec<String>>,
    clients: u64,
    seconds: u64,
    next: &Arc<AtomicU64>,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, ids, next) = (api.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < deadline {
                api.message(&ids, next.fetch_add(1, Ordering::Relaxed))
                    .await;
                sent += 1;
            }
            sent
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.expect("a driver task");
    }
    sent
}

fn main() {
    // reqwest is built without a crypto provider (the daemon's choice: ring, as lapin's TLS).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let seconds = env("DELIVERY_SECONDS", 10);
    let clients = env("DELIVERY_CLIENTS", 32);
    let twilio = Twilio::new(ACCOUNT, TOKEN, &[]);
    let twilio_port = emulators::serve(twilio.router()).await.port();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("a client");

    // 1. The loopback bound: Twilio requests straight to the emulator.
    let loopback = {
        let deadline = Instant::now() + Duration::from_secs(seconds.min(5));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    let answer = client
                        .post(format!("http://127.0.0.1:{twilio_port}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"))
                        .basic_auth(ACCOUNT, Some(TOKEN))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body("To=%2B14155550000&From=%2B15005550006&Body=loopback")
                        .send()
                        .await;
                    assert!(answer.is_ok_and(|answer| answer.status().as_u16() == 201));
                    sent += 1;
                }
                sent
            }));
        }
        let mut sent = 0u64;
        for task in tasks {
            sent += task.await.expect("a loopback task");
        }
        sent as f64 / started.elapsed().as_secs_f64()
    };

    let mut figures = serde_json::Map::new();
    figures.insert("loopback_requests_per_s".into(), loopback.round().into());
    for delivering in [false, true] {
        let dir = temp_dir(if delivering {
            "bench-delivery-on"
        } else {
            "bench-delivery-off"
        });
        let port = free_port();
        let file = config(&dir, port, twilio_port, delivering);
        let daemon = tokio::task::spawn_blocking(move || ServingBinary::start(file, port))
            .await
            .expect("the daemon");
        let pid = daemon.child.id();
        let api = Arc::new(Api {
            client: client.clone(),
            base: format!("http://127.0.0.1:{port}"),
            supervisor: daemon.token(&[
                "--sub",
                "sup-bea",
                "--role",
                "supervisor",
                "--team",
                "billing",
            ]),
            ingest: daemon.token(&["--sub", "gateway", "--role", "ingest"]),
        });
        let ids = Arc::new(api.open(CONVERSATIONS).await);
        let next = Arc::new(AtomicU64::new(0));
        // Warm up, then wait for the worker to catch up before measuring.
        flat_out(&api, &ids, clients, 2, &next).await;
        let settle = Instant::now() + Duration::from_secs(30);
        let mut last = usize::MAX;
        while delivering && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = twilio.log.accepted_count();
            if now == last {
                break;
            }
            last = now;
        }

        // Flat out: messages through the API, and (delivery on) their deliveries.
        let delivered_before = twilio.log.accepted_count();
        let cpu_before = cpu(pid);
        let started = Instant::now();
        let sent = flat_out(&api, &ids, clients, seconds, &next).await;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_used = cpu(pid).saturating_sub(cpu_before);
        let delivered = twilio.log.accepted_count() - delivered_before;
        if !delivering {
            figures.insert(
                "api_only_messages_per_s".into(),
                (sent as f64 / elapsed).round().into(),
            );
            figures.insert(
                "api_only_cpu_us_per_message".into(),
                (cpu_used.as_micros() as f64 / sent.max(1) as f64)
                    .round()
                    .into(),
            );
            continue;
        }
        figures.insert(
            "messages_per_s".into(),
            (sent as f64 / elapsed).round().into(),
        );
        figures.insert(
            "deliveries_per_s".into(),
            (delivered as f64 / elapsed).round().into(),
        );
        figures.insert(
            "daemon_cpu_us_per_delivery".into(),
            (cpu_used.as_micros() as f64 / delivered.max(1) as f64)
                .round()
                .into(),
        );
        figures.insert(
            "daemon_cpu_cores".into(),
            ((cpu_used.as_secs_f64() / elapsed * 100.0).round() / 100.0).into(),
        );

        // Let the backlog drain, then pace at 1 000/s and time each delivery.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let committed: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
        let paced_from = twilio.log.all().len();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let paced_until = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        while Instant::now() < paced_until {
            tick.tick().await;
            let (api, ids, committed) = (api.clone(), ids.clone(), committed.clone());
            let seq = next.fetch_add(1, Ordering::Relaxed);
            tasks.push(tokio::spawn(async move {
                let at = api.message(&ids, seq).await;
                committed
                    .lock()
                    .expect("the map")
                    .insert(format!("m-{seq}"), at);
            }));
        }
        for task in tasks {
            task.await.expect("a paced message");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let committed = committed.lock().expect("the map").clone();
        let mut latencies: Vec<Duration> = twilio.log.all()[paced_from..]
            .iter()
            .filter_map(|request| {
                let text = request.text();
                let seq = text.split("Body=").nth(1)?.split('&').next()?.to_owned();
                committed
                    .get(&seq)
                    .map(|at| request.at.saturating_duration_since(*at))
            })
            .collect();
        latencies.sort();
        let percentile = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
        };
        figures.insert("paced_rate_per_s".into(), 1000.into());
        figures.insert("paced_deliveries_timed".into(), latencies.len().into());
        figures.insert(
            "added_latency_p50_ms".into(),
            ((percentile(0.50) * 100.0).round() / 100.0).into(),
        );
        figures.insert(
            "added_latency_p99_ms".into(),
            ((percentile(0.99) * 100.0).round() / 100.0).into(),
        );
        drop(daemon);
    }
    println!("{}", serde_json::Value::Object(figures));
}
