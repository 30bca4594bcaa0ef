//! Faults around a stream of provider messages, with the real `switchboard` binary against a
//! real RabbitMQ and names of its own: `kill -9` mid-stream then a restart; the broker
//! force-closing every connection; the broker stopped and started again, the inbound queue
//! deleted under the consumer (a server-cancelled consumer) and publishing blocked by a memory
//! alarm. Each time the daemon stays up (or comes back), `/readyz` follows the broker, every
//! message is applied exactly once (the store's state has each conversation's one customer
//! message scored once) and every notification is published at least once with the same id.
//! Once the stream is done, the daemon idles without using CPU.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use switchboard::config::AmqpConfig;
use switchboard_tests::{
    Lifetime, amqp_header, amqp_names, amqp_url, broker_client, free_port, rabbitmqctl,
    shipped_config_text, subscribe, switchboard_binary,
};

const MESSAGES: usize = 10_000;

/// The fault tests run one at a time: forcing the broker's connections closed would also cut
/// a test running beside it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config_file(dir: &Path, names: &AmqpConfig, port: u16) -> PathBuf {
    let text = shipped_config_text(dir, port).replace(
        "# [amqp]\n# url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
        &format!(
            "[amqp]\nurl = \"{}\"\ninbound_exchange = \"{}\"\ninbound_queue = \"{}\"\ndead_letter_queue = \"{}\"\noutbound_exchange = \"{}\"",
            amqp_url(),
            names.inbound_exchange,
            names.inbound_queue,
            names.dead_letter_queue,
            names.outbound_exchange
        ),
    );
    assert!(
        text.contains("[amqp]\nurl"),
        "the shipped config changed shape"
    );
    let file = dir.join("switchboard.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn start(config: &Path) -> Daemon {
    Daemon(
        Command::new(switchboard_binary())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

/// The daemon process of a test, killed when the test ends however it ends: a failed assertion
/// must not leave it running (holding the test's output open, so the test run never ends).
struct Daemon(Child);

impl std::ops::Deref for Daemon {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Already gone after a graceful stop or a kill -9: both calls then just fail.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the daemon consumes its inbound queue: by then its exchanges, queues and the
/// binding between them exist. The queue alone is not enough: a message published to the
/// inbound exchange before the binding is unroutable and the broker drops it (the first 14
/// messages of one CI run were lost that way, and the test stalled on them).
async fn wait_until_consuming(client: &Connection, names: &AmqpConfig) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let probe = client.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = probe
            .queue_declare(
                names.inbound_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await;
        if declared.is_ok_and(|queue| queue.consumer_count() > 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never consumed its inbound queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn queue_depth(client: &Connection, queue: &str) -> u32 {
    let channel = client.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

async fn publish_range(channel: &Channel, exchange: &str, range: std::ops::Range<usize>) {
    for i in range {
        let body = format!(
            "MessageSid=SM{i:032}&From=%2B1555{i:07}&To=%2B15005550006&Body=Hello+number+{i}&NumMedia=0&AccountSid=AC00000000000000000000000000000000&ApiVersion=2010-04-01"
        );
        // Mandatory: a message the broker could not route comes back instead of vanishing, and
        // fails the test here rather than as a stall later.
        let confirmation = channel
            .basic_publish(
                exchange.into(),
                "sms-twilio".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body.as_bytes(),
                BasicProperties::default()
                    .with_content_type("application/x-www-form-urlencoded".into())
                    .with_message_id(format!("gateway-{i}").into())
                    .with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "message {i} was not taken into the inbound queue: {confirmation:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)]
async fn kill_9_mid_stream_then_restart_applies_everything_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(client) = broker_client().await else {
        return;
    };
    let names = amqp_names("crash");
    let dir = std::env::temp_dir().join(format!("switchboard-crash-{}", names.inbound_queue));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = config_file(&dir, &names, port);

    let mut daemon = start(&config);
    wait_until_consuming(&client, &names).await;
    // A durable subscriber that outlives the daemon's restarts.
    let channel = confirming_channel(&client).await;
    let subscriber = subscribe(
        &client.create_channel().await.unwrap(),
        &names,
        Lifetime::Durable,
    )
    .await;

    // Kill the daemon without warning while the stream is still flowing into it: batches are
    // being committed, acknowledged and published around the kill.
    let publisher = confirming_channel(&client).await;
    let exchange = names.inbound_exchange.clone();
    let stream = tokio::spawn(async move { publish_range(&publisher, &exchange, 0..6_000).await });
    while queue_depth(&client, &subscriber).await < 1_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let consumed_before_kill = queue_depth(&client, &subscriber).await;
    stream.await.unwrap();
    let mut daemon = start(&config);
    publish_range(&channel, &names.inbound_exchange, 6_000..MESSAGES).await;

    // Wait until every message was consumed and the outbox drained into the subscriber.
    wait_until_published(&client, &names, &subscriber, MESSAGES, &mut daemon, port).await;
    assert_idle(&daemon).await;
    // The restarted daemon timed every publication it had confirmed: at least the
    // notifications the first one had not published.
    let confirmed = metric(port, "switchboard_outbox_confirm_seconds_count");
    assert!(
        confirmed >= MESSAGES as f64 - f64::from(consumed_before_kill),
        "{confirmed} confirms timed, {consumed_before_kill} published before the kill"
    );
    assert_eq!(
        metric(port, "switchboard_outbound_delay_seconds_count"),
        confirmed
    );
    nix_terminate(&daemon);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status}");

    // At least once, with stable ids: one `opened` per conversation, duplicates share ids.
    let (ids, deliveries) = opened_ids(&channel, &subscriber).await;
    assert_eq!(
        ids.len(),
        MESSAGES,
        "every conversation's notification was published ({deliveries} deliveries)"
    );
    eprintln!(
        "crash test: killed after {consumed_before_kill} notifications; {deliveries} deliveries for {} distinct ids ({} re-published after the restart)",
        ids.len(),
        deliveries - ids.len()
    );

    // Exactly once: rebuild the state from the store.
    assert_applied_exactly_once(&dir, &config, MESSAGES);
    assert_eq!(
        queue_depth(&client, &names.dead_letter_queue).await,
        0,
        "nothing was dead-lettered"
    );

    delete_topology(&channel, &names, &subscriber).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_force_closed_mid_stream_lose_and_duplicate_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(client) = broker_client().await else {
        return;
    };
    let names = amqp_names("reconnect");
    let dir = std::env::temp_dir().join(format!("switchboard-reconnect-{}", names.inbound_queue));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = config_file(&dir, &names, port);
    let mut daemon = start(&config);
    wait_until_consuming(&client, &names).await;
    let subscriber = subscribe(
        &client.create_channel().await.unwrap(),
        &names,
        Lifetime::Durable,
    )
    .await;
    const TOTAL: usize = 4_000;
    // Stream the first half, force-close the daemon's connections mid-stream (the test's own
    // connection goes too), then stream the rest on a new connection.
    {
        let publisher = confirming_channel(&client).await;
        publish_range(&publisher, &names.inbound_exchange, 0..TOTAL / 2).await;
    }
    while queue_depth(&client, &subscriber).await < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rabbitmqctl(&[
        "close_all_connections",
        "switchboard test: force-closed mid-stream",
    ]);
    let client = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = confirming_channel(&client).await;
    publish_range(&channel, &names.inbound_exchange, TOTAL / 2..TOTAL).await;

    wait_until_published(&client, &names, &subscriber, TOTAL, &mut daemon, port).await;
    nix_terminate(&daemon);
    assert!(daemon.wait().unwrap().success());

    let (ids, _) = opened_ids(&channel, &subscriber).await;
    assert_eq!(ids.len(), TOTAL);
    assert_applied_exactly_once(&dir, &config, TOTAL);
    delete_topology(&channel, &names, &subscriber).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `GET /readyz`'s status code (0 when nothing answers), with curl.
fn readyz(port: u16) -> u16 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/readyz"))
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

async fn wait_for_readyz(port: u16, status: u16, daemon: &mut Child, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while readyz(port) != status {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon must stay up ({what})"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status} ({what})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts the broker back as the test found it, even when an assertion failed midway.
struct BrokerRestorer;

impl Drop for BrokerRestorer {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

async fn confirming_channel(client: &Connection) -> Channel {
    let channel = client.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

/// Waits until the inbound queue is empty and `total` notifications reached the subscriber.
async fn wait_until_published(
    client: &Connection,
    names: &AmqpConfig,
    subscriber: &str,
    total: usize,
    daemon: &mut Child,
    port: u16,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let inbound = queue_depth(client, &names.inbound_queue).await;
        let published = queue_depth(client, subscriber).await;
        if inbound == 0 && published as usize >= total {
            return;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon must stay up when the broker fails it"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {inbound} inbound left, {published} published\n{}",
            stall_report(port, names)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One unlabelled series of the daemon's `/metrics` (panics when it is missing).
fn metric(port: u16, name: &str) -> f64 {
    let output = Command::new("curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// What the daemon and the broker say when a stream stalls: the daemon's counters (inbound,
/// outbox backlog, broker connection) and the inbound queue's unacknowledged deliveries.
fn stall_report(port: u16, names: &AmqpConfig) -> String {
    let metrics = Command::new("curl")
        .args(["-s", "-m", "2"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let counters: Vec<&str> = metrics
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && (line.starts_with("switchboard_inbound_total")
                    || line.starts_with("switchboard_outbox_backlog")
                    || line.starts_with("switchboard_broker_connected")
                    || line.starts_with("switchboard_commit_seconds_count")
                    || line.starts_with("switchboard_dead_lettered_total"))
        })
        .collect();
    let queues = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let inbound: Vec<&str> = queues
        .lines()
        .filter(|line| line.starts_with(names.inbound_queue.as_str()))
        .collect();
    format!(
        "daemon: {}\nbroker (name ready unacked consumers): {}",
        counters.join("; "),
        inbound.join("; ")
    )
}

/// The distinct CloudEvents ids of the `conversation.opened` notifications the subscriber got
/// (draining it), and how many deliveries there were in all.
async fn opened_ids(channel: &Channel, subscriber: &str) -> (HashSet<String>, usize) {
    let mut ids = HashSet::new();
    let mut deliveries = 0;
    while let Some(message) = channel
        .basic_get(subscriber.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        deliveries += 1;
        if amqp_header(&message.delivery.properties, "cloudEvents_type").as_deref()
            == Some("dev.switchboard.conversation.opened")
        {
            ids.insert(amqp_header(&message.delivery.properties, "cloudEvents_id").unwrap());
        }
    }
    (ids, deliveries)
}

/// Exactly once: the state rebuilt from the store has `total` conversations, each with its one
/// customer message scored once.
fn assert_applied_exactly_once(dir: &Path, config: &Path, total: usize) {
    let store = switchboard::store::RedbStore::open(&dir.join("data")).unwrap();
    let recovery = switchboard::store::Store::recover(&store).unwrap();
    let config = switchboard::config::load_with_env(config, &[]).unwrap();
    let engine = switchboard::engine::Engine::restore(
        config.engine_setup(Vec::new()),
        recovery.snapshot,
        &recovery.records,
    );
    assert_eq!(
        engine.state().conversations().count(),
        total,
        "one conversation per customer"
    );
    for conversation in engine.state().conversations() {
        assert_eq!(
            conversation.sentiment.samples, 1,
            "{} applied its message {} times",
            conversation.id, conversation.sentiment.samples
        );
    }
}

async fn delete_topology(channel: &Channel, names: &AmqpConfig, subscriber: &str) {
    for queue in [subscriber, &names.inbound_queue, &names.dead_letter_queue] {
        let _ = channel.queue_delete(queue.into(), Default::default()).await;
    }
    for exchange in [&names.inbound_exchange, &names.outbound_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_cancelled_consumer_and_memory_alarm_are_survived() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(client) = broker_client().await else {
        return;
    };
    let _restore = BrokerRestorer;
    let names = amqp_names("restart");
    let dir = std::env::temp_dir().join(format!("switchboard-restart-{}", names.inbound_queue));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = config_file(&dir, &names, port);
    let mut daemon = start(&config);
    wait_until_consuming(&client, &names).await;
    wait_for_readyz(port, 200, &mut daemon, "connected").await;
    let subscriber = subscribe(
        &client.create_channel().await.unwrap(),
        &names,
        Lifetime::Durable,
    )
    .await;
    let publisher = confirming_channel(&client).await;
    publish_range(&publisher, &names.inbound_exchange, 0..1_000).await;
    wait_until_published(&client, &names, &subscriber, 1_000, &mut daemon, port).await;

    // 1. The broker stops: the daemon stays up and says it is not ready; it comes back on its
    //    own when the broker does.
    drop(client);
    rabbitmqctl(&["stop_app"]);
    wait_for_readyz(port, 503, &mut daemon, "broker stopped").await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    wait_for_readyz(port, 200, &mut daemon, "broker back").await;
    let client = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = confirming_channel(&client).await;
    publish_range(&publisher, &names.inbound_exchange, 1_000..2_000).await;
    wait_until_published(&client, &names, &subscriber, 2_000, &mut daemon, port).await;

    // 2. The inbound queue is deleted under the consumer (the server cancels it): the daemon
    //    declares its topology again and consumes on.
    rabbitmqctl(&["delete_queue", &names.inbound_queue]);
    wait_until_consuming(&client, &names).await;
    wait_for_readyz(port, 200, &mut daemon, "consuming again").await;
    publish_range(&publisher, &names.inbound_exchange, 2_000..3_000).await;
    wait_until_published(&client, &names, &subscriber, 3_000, &mut daemon, port).await;

    // 3. A memory alarm blocks every publishing connection: the daemon keeps consuming and
    //    committing, holds its notifications in the outbox, and publishes them once unblocked.
    publish_range(&publisher, &names.inbound_exchange, 3_000..3_500).await;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon stays up while blocked"
    );
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    wait_until_published(&client, &names, &subscriber, 3_500, &mut daemon, port).await;

    nix_terminate(&daemon);
    assert!(
        daemon.wait().unwrap().success(),
        "graceful shutdown exits 0"
    );
    let channel = client.create_channel().await.unwrap();
    let (ids, deliveries) = opened_ids(&channel, &subscriber).await;
    assert_eq!(ids.len(), 3_500, "{deliveries} deliveries");
    assert_applied_exactly_once(&dir, &config, 3_500);
    assert_eq!(queue_depth(&client, &names.dead_letter_queue).await, 0);
    delete_topology(&channel, &names, &subscriber).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A daemon with nothing to do must not burn CPU. The outbox publisher once spun after 100 ms
/// without work, burning more than a core of this two-core machine: that is what this
/// catches, with a wide margin (a quarter of one core over two quiet seconds). An idle daemon
/// uses about 0.01 s there, but the store's indexer may still be folding the last commits (in
/// this debug build, after a restart that left it the crashed daemon's journal too), which is
/// work, not a spin.
async fn assert_idle(daemon: &Child) {
    // Past the publisher's idle flush of confirmed ids (100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_seconds(daemon);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(daemon) - before;
    assert!(used < 0.5, "an idle daemon used {used:.2} s of CPU in 2 s");
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(process: &Child) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.id())).unwrap();
    // The command name (field 2) may hold spaces; count from the `)` that closes it: the
    // fields after it start at field 3, so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let per_second = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let per_second: f64 = String::from_utf8_lossy(&per_second.stdout)
        .trim()
        .parse()
        .unwrap();
    ticks / per_second
}

/// SIGTERM (a graceful stop), without a dependency for one syscall.
fn nix_terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
