//! The daemon end to end on a real RabbitMQ (`app::run` in-process): a provider webhook
//! published to the inbound exchange becomes a conversation, and its CloudEvent reaches a
//! subscriber of the outbound exchange; a poison message is dead-lettered with its reason while
//! the stream goes on; a redelivered message changes nothing; a publication the broker refuses
//! goes out again once it can; shutdown is clean; `switchboard-load` measures its three
//! phases against it. Names are this run's own and are deleted afterwards.

use std::path::Path;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use switchboard::config;
use switchboard_tests::{
    Lifetime, amqp_header, amqp_names, broker_client, component, fixture, subscribe,
};
use tokio_util::sync::CancellationToken;

async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    message_id: &str,
) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(message_id.into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Polls a queue until a message arrives or the time is up.
async fn get(
    channel: &Channel,
    queue: &str,
    within: Duration,
) -> Option<lapin::message::BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return Some(message);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The daemon of one test, on this run's own names.
struct Daemon {
    names: config::AmqpConfig,
    store: std::path::PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Daemon {
    /// Starts `app::run` over the shipped configuration with `[amqp]` set, and waits until it
    /// consumes: its queue, binding and exchanges exist by then (a message published to the
    /// inbound exchange before the binding would be unroutable and dropped).
    async fn start(client: &lapin::Connection, label: &str) -> Self {
        Self::start_with(client, label, |_| {}).await
    }

    /// [`Daemon::start`] with the configuration changed first.
    async fn start_with(
        client: &lapin::Connection,
        label: &str,
        change: impl FnOnce(&mut config::Config),
    ) -> Self {
        let names = amqp_names(label);
        let store = std::env::temp_dir().join(format!("switchboard-serve-{}", names.inbound_queue));
        let mut config = config::load_with_env(
            Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/switchboard.toml"
            )),
            &[],
        )
        .unwrap();
        config.store.path = store.clone();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.webhook_listen = Some("127.0.0.1:0".parse().unwrap());
        config.amqp = Some(names.clone());
        for plugin in &mut config.plugins {
            plugin.file = component(&plugin.id);
        }
        change(&mut config);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            switchboard::app::run(config, stop)
                .await
                .map_err(|error| format!("{error:#}"))
        });
        let mut consuming = false;
        for _ in 0..300 {
            let probe = client.create_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(queue) = probe
                .queue_declare(
                    names.inbound_queue.as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await
                && queue.consumer_count() > 0
            {
                consuming = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(consuming, "the daemon started consuming");
        Self {
            names,
            store,
            shutdown,
            task,
        }
    }

    /// Stops the daemon (it must shut down cleanly and in time) and deletes this run's
    /// topology and store.
    async fn stop(self, client: &lapin::Connection) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("shuts down in time")
            .unwrap()
            .unwrap();
        let cleanup = client.create_channel().await.unwrap();
        for queue in [&self.names.inbound_queue, &self.names.dead_letter_queue] {
            cleanup
                .queue_delete(queue.as_str().into(), Default::default())
                .await
                .unwrap();
        }
        for exchange in [&self.names.inbound_exchange, &self.names.outbound_exchange] {
            cleanup
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await
                .unwrap();
        }
        let _ = std::fs::remove_dir_all(self.store);
    }
}

/// With a broker, the webhook door answers after the broker confirmed the raw payload into
/// the inbound exchange (the consumer applies it as any other message); a wrong signature is
/// refused at the door and never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_door_answers_after_the_broker_confirmed_the_payload() {
    let Some(client) = broker_client().await else {
        return;
    };
    const APP_SECRET: &str = "door-over-amqp-app-secret";
    let door_port = switchboard_tests::free_port();
    let daemon = Daemon::start_with(&client, "door", |config| {
        config.server.webhook_listen = Some(format!("127.0.0.1:{door_port}").parse().unwrap());
        for plugin in &mut config.plugins {
            if plugin.id == "whatsapp-cloud" {
                plugin.settings = config::Secret::new(format!(
                    "{}\napp_secret = \"{APP_SECRET}\"\n",
                    plugin.settings.expose()
                ));
            }
        }
    })
    .await;
    let names = daemon.names.clone();
    let channel = client.create_channel().await.unwrap();
    let subscriber = subscribe(&channel, &names, Lifetime::Exclusive).await;
    let webhook = fixture("whatsapp", "text.json");
    let post = move |secret: &str| {
        let signature = format!(
            "sha256={}",
            switchboard_plugin_sdk::signature::hex(
                &switchboard_plugin_sdk::signature::hmac_sha256(secret.as_bytes(), &webhook)
            )
        );
        let output = std::process::Command::new("curl")
            .args([
                "-s",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
            ])
            .arg(format!(
                "http://127.0.0.1:{door_port}/webhooks/whatsapp-cloud"
            ))
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("X-Hub-Signature-256: {signature}")])
            .args(["--data-binary", "@-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = output;
        use std::io::Write as _;
        output.stdin.take().unwrap().write_all(&webhook).unwrap();
        String::from_utf8(output.wait_with_output().unwrap().stdout).unwrap()
    };
    let refused = tokio::task::spawn_blocking({
        let post = post.clone();
        move || post("not-the-secret")
    })
    .await
    .unwrap();
    assert_eq!(refused, "401");
    let taken = tokio::task::spawn_blocking(move || post(APP_SECRET))
        .await
        .unwrap();
    assert_eq!(taken, "200");
    let opened = get(&channel, &subscriber, Duration::from_secs(15))
        .await
        .expect("the webhook became a conversation through the broker");
    assert_eq!(
        amqp_header(&opened.delivery.properties, "cloudEvents_type").as_deref(),
        Some("dev.switchboard.conversation.opened")
    );
    // Nothing was dead-lettered: the refused webhook never reached the broker.
    assert!(
        get(
            &channel,
            &names.dead_letter_queue,
            Duration::from_millis(500)
        )
        .await
        .is_none()
    );
    daemon.stop(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_in_cloudevent_out_poison_dead_lettered_redelivery_harmless() {
    let Some(client) = broker_client().await else {
        return;
    };
    let daemon = Daemon::start(&client, "serve").await;
    let names = daemon.names.clone();
    let channel = client.create_channel().await.unwrap();
    let subscriber = subscribe(&channel, &names, Lifetime::Exclusive).await;

    let webhook = fixture("whatsapp", "text.json");
    publish(
        &channel,
        &names.inbound_exchange,
        "whatsapp-cloud",
        &webhook,
        "gateway-1",
    )
    .await;
    publish(
        &channel,
        &names.inbound_exchange,
        "whatsapp-cloud",
        b"{\"truncated",
        "gateway-2",
    )
    .await;

    let opened = get(&channel, &subscriber, Duration::from_secs(15))
        .await
        .expect("a conversation event");
    let properties = &opened.delivery.properties;
    assert_eq!(
        amqp_header(properties, "cloudEvents_type").as_deref(),
        Some("dev.switchboard.conversation.opened")
    );
    assert_eq!(
        amqp_header(properties, "cloudEvents_specversion").as_deref(),
        Some("1.0")
    );
    let subject = amqp_header(properties, "cloudEvents_subject").expect("the conversation id");
    assert!(subject.starts_with("c-"));
    assert_eq!(
        opened.delivery.routing_key.as_str(),
        format!("conversation.{subject}")
    );

    let dead = get(&channel, &names.dead_letter_queue, Duration::from_secs(15))
        .await
        .expect("the poison message was dead-lettered");
    assert_eq!(dead.delivery.data, b"{\"truncated");
    assert_eq!(
        amqp_header(&dead.delivery.properties, "switchboard-error").as_deref(),
        Some("invalid-payload")
    );

    // The AMQP door takes no larger payload than the HTTP one (`server.body_limit`, 1 MiB).
    let oversized = vec![b' '; 2 << 20];
    publish(
        &channel,
        &names.inbound_exchange,
        "whatsapp-cloud",
        &oversized,
        "gateway-3",
    )
    .await;
    let dead = get(&channel, &names.dead_letter_queue, Duration::from_secs(15))
        .await
        .expect("the oversized message was dead-lettered");
    assert_eq!(dead.delivery.data.len(), oversized.len(), "kept whole");
    assert_eq!(
        amqp_header(&dead.delivery.properties, "switchboard-error").as_deref(),
        Some("payload-too-large")
    );

    // The gateway retries the first webhook: nothing new happens.
    publish(
        &channel,
        &names.inbound_exchange,
        "whatsapp-cloud",
        &webhook,
        "gateway-1",
    )
    .await;
    assert!(
        get(&channel, &subscriber, Duration::from_secs(2))
            .await
            .is_none(),
        "a redelivery must not open a second conversation"
    );

    daemon.stop(&client).await;
}

/// A publication the broker refuses (a subscriber's queue is full and rejects new messages)
/// is neither dropped nor allowed to stall the rest: it is published again until the broker
/// takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publication_is_published_again_until_the_broker_takes_it() {
    let Some(client) = broker_client().await else {
        return;
    };
    let daemon = Daemon::start(&client, "refused").await;
    let names = daemon.names.clone();
    let channel = client.create_channel().await.unwrap();
    // A subscriber whose queue holds one message and refuses (nacks) publications beyond it.
    let full = format!("{}.full", names.outbound_exchange);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            full.as_str().into(),
            names.outbound_exchange.as_str().into(),
            "conversation.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&channel, "", &full, b"filler", "filler").await;

    publish(
        &channel,
        &names.inbound_exchange,
        "whatsapp-cloud",
        &fixture("whatsapp", "text.json"),
        "gateway-1",
    )
    .await;
    // Refused for as long as the queue is full.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let filler = get(&channel, &full, Duration::from_secs(1))
        .await
        .expect("the filler is still there");
    assert_eq!(filler.delivery.data, b"filler");

    // Room again: the refused publications go out (one at a time, as the queue allows).
    let mut types = Vec::new();
    while !types
        .iter()
        .any(|kind: &String| kind == "dev.switchboard.conversation.opened")
    {
        let message = get(&channel, &full, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("the refused publications were retried; got {types:?}"));
        types.push(
            amqp_header(&message.delivery.properties, "cloudEvents_type").unwrap_or_default(),
        );
    }
    daemon.stop(&client).await;
}

/// `switchboard-load` against a running daemon: every webhook comes back as its event (the
/// tool fails otherwise), and the report holds the three phases — end to end, the one-crossing
/// baseline and the two-crossing relay — with ratios that are the quotients of their
/// throughputs, and the daemon's CPU and bytes written per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_measures_end_to_end_the_baseline_and_the_relay() {
    use switchboard_load::{self as load, LoadPlan, Measurement};

    let Some(client) = broker_client().await else {
        return;
    };
    let daemon = Daemon::start(&client, "load").await;
    // The daemon runs in this process: its cost is counted with the tool's own here.
    let plan = LoadPlan {
        messages: 300,
        rate: None,
        daemon_pids: vec![std::process::id()],
    };
    let report = tokio::time::timeout(Duration::from_secs(120), load::run(&daemon.names, &plan))
        .await
        .expect("the load run ends")
        .expect("every webhook came back as its event");

    assert_eq!(report.messages, 300);
    assert!(report.message_bytes > 400, "{}", report.message_bytes);
    let phases: [(&str, &Measurement); 3] = [
        ("end to end", &report.end_to_end),
        ("baseline", &report.baseline),
        ("relay", &report.relay),
    ];
    for (phase, measured) in phases {
        assert!(measured.throughput_per_second > 0.0, "{phase}");
        assert!(measured.seconds > 0.0, "{phase}");
        let latency = &measured.latency_ms;
        assert!(
            0.0 <= latency.p50
                && latency.p50 <= latency.p90
                && latency.p90 <= latency.p99
                && latency.p99 <= latency.max,
            "{phase}: {latency:?}"
        );
    }
    let quotient = |part: &Measurement, whole: &Measurement| {
        part.throughput_per_second / whole.throughput_per_second
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    assert!(close(
        report.throughput_ratio,
        quotient(&report.end_to_end, &report.baseline)
    ));
    assert!(close(
        report.relay_ratio,
        quotient(&report.relay, &report.baseline)
    ));
    assert!(close(
        report.throughput_ratio_to_relay,
        quotient(&report.end_to_end, &report.relay)
    ));
    let daemon_cost = report.daemon.as_ref().expect("the daemon's cost, on Linux");
    assert!(daemon_cost.cpu_us_per_event > 0.0, "{daemon_cost:?}");
    assert!(daemon_cost.settle_seconds > 0.0);
    assert!(report.end_to_end.tool_cpu_us_per_message.is_some());
    assert!(report.relay_client_cpu_us_per_event.is_some());

    daemon.stop(&client).await;
}
