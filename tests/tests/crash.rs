//! `kill -9` in the middle of a stream of 10 000 provider messages, then a restart: every
//! message is applied exactly once (the store's state has each conversation's one customer
//! message scored exactly once) and every notification is published at least once with the
//! same id. Runs the real `switchboard` binary against a real RabbitMQ, with names of its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use switchboard::config::AmqpConfig;
use switchboard_tests::{amqp_header, amqp_names, amqp_url, broker_client, plugins_dir};

const MESSAGES: usize = 10_000;

/// The fault tests run one at a time: forcing the broker's connections closed would also cut
/// a test running beside it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `switchboard` binary `cargo test --workspace` built next to this test.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("switchboard");
    assert!(
        binary.exists(),
        "{} is missing: run with `cargo test --workspace`",
        binary.display()
    );
    binary
}

fn config_file(dir: &Path, names: &AmqpConfig) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/switchboard.toml"
    ))
    .unwrap();
    let mut text = shipped
        .replace(
            "../target/plugins/wasm32-wasip2/plugin/",
            &format!("{}/", plugins_dir().display()),
        )
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "path = \"./data\"",
            &format!("path = \"{}\"", dir.join("data").display()),
        );
    text = text.replace(
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

fn start(config: &Path) -> Child {
    Command::new(binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

async fn wait_for_topology(client: &Connection, names: &AmqpConfig) {
    for _ in 0..300 {
        let probe = client.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if probe
            .queue_declare(
                names.inbound_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the daemon never declared its topology");
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
        channel
            .basic_publish(
                exchange.into(),
                "sms-twilio".into(),
                BasicPublishOptions::default(),
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
    let config = config_file(&dir, &names);

    let mut daemon = start(&config);
    wait_for_topology(&client, &names).await;
    // A durable subscriber that outlives the daemon's restarts.
    let channel = client.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let subscriber = format!("{}.subscriber", names.outbound_exchange);
    channel
        .queue_declare(
            subscriber.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            subscriber.as_str().into(),
            names.outbound_exchange.as_str().into(),
            "conversation.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Kill the daemon without warning while the stream is still flowing into it: batches are
    // being committed, acknowledged and published around the kill.
    let publisher = client.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let inbound = queue_depth(&client, &names.inbound_queue).await;
        let published = queue_depth(&client, &subscriber).await;
        if inbound == 0 && published as usize >= MESSAGES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {inbound} inbound left, {published} published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix_terminate(&daemon);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status}");

    // At least once, with stable ids: one `opened` per conversation, duplicates share ids.
    let mut ids = HashSet::new();
    let mut deliveries = 0;
    while let Some(message) = channel
        .basic_get(subscriber.as_str().into(), BasicGetOptions { no_ack: true })
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
    let store = switchboard::store::RedbStore::open(&dir.join("data")).unwrap();
    let recovery = switchboard::store::Store::recover(&store).unwrap();
    let config = switchboard::config::load_with_env(&config, &[]).unwrap();
    let engine = switchboard::engine::Engine::restore(
        config.engine_setup(Vec::new()),
        recovery.snapshot,
        &recovery.records,
    );
    let conversations: Vec<_> = engine.state().conversations().collect();
    assert_eq!(
        conversations.len(),
        MESSAGES,
        "one conversation per customer"
    );
    for conversation in &conversations {
        assert_eq!(
            conversation.sentiment.samples, 1,
            "{} applied its message {} times",
            conversation.id, conversation.sentiment.samples
        );
    }
    assert_eq!(
        queue_depth(&client, &names.dead_letter_queue).await,
        0,
        "nothing was dead-lettered"
    );

    for queue in [&subscriber, &names.inbound_queue, &names.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    for exchange in [&names.inbound_exchange, &names.outbound_exchange] {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .unwrap();
    }
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
    let config = config_file(&dir, &names);
    let mut daemon = start(&config);
    wait_for_topology(&client, &names).await;
    let subscriber = format!("{}.subscriber", names.outbound_exchange);
    {
        let channel = client.create_channel().await.unwrap();
        channel
            .queue_declare(
                subscriber.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                subscriber.as_str().into(),
                names.outbound_exchange.as_str().into(),
                "conversation.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    const TOTAL: usize = 4_000;
    // Stream the first half, force-close the daemon's connections mid-stream (the test's own
    // connection goes too), then stream the rest on a new connection.
    {
        let publisher = client.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish_range(&publisher, &names.inbound_exchange, 0..TOTAL / 2).await;
    }
    while queue_depth(&client, &subscriber).await < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = Command::new("rabbitmqctl")
        .args([
            "close_all_connections",
            "switchboard test: force-closed mid-stream",
        ])
        .output()
        .expect("rabbitmqctl is installed with the broker");
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let client = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = client.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_range(&channel, &names.inbound_exchange, TOTAL / 2..TOTAL).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let inbound = queue_depth(&client, &names.inbound_queue).await;
        let published = queue_depth(&client, &subscriber).await;
        if inbound == 0 && published as usize >= TOTAL {
            break;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon must stay up when the broker drops it"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {inbound} inbound left, {published} published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix_terminate(&daemon);
    assert!(daemon.wait().unwrap().success());

    let mut ids = HashSet::new();
    while let Some(message) = channel
        .basic_get(subscriber.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        if amqp_header(&message.delivery.properties, "cloudEvents_type").as_deref()
            == Some("dev.switchboard.conversation.opened")
        {
            ids.insert(amqp_header(&message.delivery.properties, "cloudEvents_id").unwrap());
        }
    }
    assert_eq!(ids.len(), TOTAL);
    let store = switchboard::store::RedbStore::open(&dir.join("data")).unwrap();
    let recovery = switchboard::store::Store::recover(&store).unwrap();
    let config = switchboard::config::load_with_env(&config, &[]).unwrap();
    let engine = switchboard::engine::Engine::restore(
        config.engine_setup(Vec::new()),
        recovery.snapshot,
        &recovery.records,
    );
    assert_eq!(engine.state().conversations().count(), TOTAL);
    assert!(
        engine
            .state()
            .conversations()
            .all(|c| c.sentiment.samples == 1),
        "each message applied exactly once"
    );

    for queue in [&subscriber, &names.inbound_queue, &names.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    for exchange in [&names.inbound_exchange, &names.outbound_exchange] {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM (a graceful stop), without a dependency for one syscall.
fn nix_terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
