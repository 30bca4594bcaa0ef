//! `switchboard load`: drives a running daemon through RabbitMQ and measures it, beside the raw
//! broker baseline of the same run. Outside the daemon's flow; inside the AMQP module because
//! it speaks lapin.
//!
//! End to end: realistic Twilio SMS webhooks, each from a new customer, are published to the
//! inbound exchange (persistent, with confirms, pipelined); each opens a conversation, so each
//! yields exactly one `conversation.opened` CloudEvent on the outbound exchange, which a private
//! queue receives. The pipeline keeps order (one consumer, commit order, outbox order), so the
//! i-th event answers the i-th webhook and its latency is the difference of the two times.
//! Baseline: the same messages published with confirms to a fresh quorum queue and consumed
//! with acks (same size, durability and prefetch), timed the same way.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;

use super::super::TransportError;
use crate::config::AmqpConfig;

/// Confirms awaited at once: enough to keep the broker busy, bounded for memory.
const CONFIRM_WINDOW: usize = 512;

/// What `switchboard load` measures.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub messages: usize,
    /// Messages per second; `None` as fast as confirms allow.
    pub rate: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub messages: usize,
    pub message_bytes: usize,
    pub rate_requested: Option<u32>,
    pub end_to_end: Measurement,
    pub baseline: Measurement,
    /// End-to-end throughput as a share of the baseline's.
    pub throughput_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Measurement {
    pub throughput_per_second: f64,
    pub latency_ms: Percentiles,
    pub seconds: f64,
    /// How busy the whole machine was during this phase (Linux only): the figures above mean
    /// little on a virtual machine whose host took much of its time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu: Option<MachineCpu>,
}

/// The machine's CPU time over a phase, in percent of all its CPUs' time (`/proc/stat`).
#[derive(Debug, Serialize)]
pub struct MachineCpu {
    /// Running anything (broker, daemon, this tool, the rest).
    pub busy_percent: f64,
    /// Taken by the hypervisor for other guests while this machine wanted to run.
    pub steal_percent: f64,
}

/// The `cpu` line of `/proc/stat`: (busy, steal, total) in clock ticks.
fn cpu_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    Some((busy, steal, busy + steal + idle + iowait))
}

fn machine_cpu(before: Option<(u64, u64, u64)>) -> Option<MachineCpu> {
    let (busy0, steal0, total0) = before?;
    let (busy1, steal1, total1) = cpu_ticks()?;
    let total = total1.checked_sub(total0).filter(|&total| total > 0)? as f64;
    Some(MachineCpu {
        busy_percent: (busy1.saturating_sub(busy0) as f64 / total * 1000.0).round() / 10.0,
        steal_percent: (steal1.saturating_sub(steal0) as f64 / total * 1000.0).round() / 10.0,
    })
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn broker(error: lapin::Error) -> TransportError {
    TransportError::Broker(error.to_string())
}

/// A Twilio inbound SMS webhook from customer `n` (about 460 bytes, like the real thing).
fn webhook(run: u128, n: usize) -> Vec<u8> {
    format!(
        "ToCountry=US&ToState=CA&SmsMessageSid=SM{run:016x}{n:016x}&NumMedia=0&ToCity=SAN+FRANCISCO&FromZip=94105&SmsSid=SM{run:016x}{n:016x}&FromState=CA&SmsStatus=received&FromCity=SAN+FRANCISCO&Body=Hi%21+My+order+never+arrived.+Can+you+help%3F&FromCountry=US&To=%2B15005550006&ToZip=94105&NumSegments=1&MessageSid=SM{run:016x}{n:016x}&AccountSid=AC00000000000000000000000000000000&From=%2B1{:010}&ApiVersion=2010-04-01",
        (run as u64 % 1_000_000) * 10_000 + n as u64
    )
    .into_bytes()
}

/// Runs the plan against the daemon configured by `config` and the broker baseline.
pub async fn run(config: &AmqpConfig, plan: &LoadPlan) -> Result<LoadReport, TransportError> {
    let connection = Connection::connect(
        config.url.expose(),
        ConnectionProperties::default().with_connection_name("switchboard-load".into()),
    )
    .await
    .map_err(broker)?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    let bodies: Vec<Vec<u8>> = (0..plan.messages).map(|n| webhook(run, n)).collect();
    let message_bytes = bodies.first().map_or(0, Vec::len);

    // End to end: subscribe first, then stream webhooks into the daemon.
    let subscriber = connection.create_channel().await.map_err(broker)?;
    let queue = format!("switchboard.load.{run:x}");
    subscriber
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    subscriber
        .queue_bind(
            queue.as_str().into(),
            config.outbound_exchange.as_str().into(),
            "conversation.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    let end_to_end = measure(
        &connection,
        &subscriber,
        &queue,
        config.inbound_exchange.as_str(),
        "sms-twilio",
        &bodies,
        plan,
        config.prefetch,
        |properties| {
            header(properties, "cloudEvents_type").as_deref()
                == Some("dev.switchboard.conversation.opened")
        },
    )
    .await?;

    // Baseline: the same bytes through a quorum queue of its own, nothing else.
    let baseline_queue = format!("switchboard.load.baseline.{run:x}");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    subscriber
        .queue_declare(
            baseline_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .map_err(broker)?;
    let baseline = measure(
        &connection,
        &subscriber,
        &baseline_queue,
        "",
        &baseline_queue,
        &bodies,
        plan,
        config.prefetch,
        |_| true,
    )
    .await;
    let _ = subscriber
        .queue_delete(
            baseline_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    let baseline = baseline?;
    let _ = connection.close(200, "load done".into()).await;
    Ok(LoadReport {
        messages: plan.messages,
        message_bytes,
        rate_requested: plan.rate,
        throughput_ratio: end_to_end.throughput_per_second
            / baseline.throughput_per_second.max(f64::MIN_POSITIVE),
        end_to_end,
        baseline,
    })
}

/// Publishes `bodies` to `exchange`/`routing_key` while consuming `queue`, pairing the i-th
/// received message (that `counts`) with the i-th sent.
#[allow(clippy::too_many_arguments)]
async fn measure(
    connection: &Connection,
    consumer_channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
    plan: &LoadPlan,
    prefetch: u16,
    counts: impl Fn(&BasicProperties) -> bool,
) -> Result<Measurement, TransportError> {
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker)?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            format!("load-{queue}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    let publisher = connection.create_channel().await.map_err(broker)?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;

    let started = Instant::now();
    let cpu_before = cpu_ticks();
    let total = bodies.len();
    let sent_at: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> =
        std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let sending = {
        let sent_at = sent_at.clone();
        let bodies = bodies.to_vec();
        let exchange = exchange.to_owned();
        let routing_key = routing_key.to_owned();
        let rate = plan.rate;
        tokio::spawn(async move {
            let mut window = VecDeque::new();
            let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            let mut next = Instant::now();
            for (n, body) in bodies.iter().enumerate() {
                if let Some(interval) = interval {
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        tokio::time::sleep(next - now).await;
                    }
                }
                let properties = BasicProperties::default()
                    .with_content_type("application/x-www-form-urlencoded".into())
                    .with_message_id(format!("load-{n}").as_str().into())
                    .with_delivery_mode(2);
                sent_at
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .push(Instant::now());
                let confirm = publisher
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .map_err(broker)?;
                window.push_back(confirm);
                if window.len() >= CONFIRM_WINDOW
                    && let Some(confirm) = window.pop_front()
                {
                    confirm.await.map_err(broker)?;
                }
            }
            for confirm in window {
                confirm.await.map_err(broker)?;
            }
            Ok::<(), TransportError>(())
        })
    };
    // Consume as the daemon does: take what is buffered (up to the prefetch), then acknowledge
    // it with one `multiple` ack. Acknowledging each message and awaiting it would make this
    // loop, not the broker, the bottleneck of both measurements.
    let mut latencies = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut batch = Vec::with_capacity(usize::from(prefetch));
    while latencies.len() < total {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .map_err(|_| {
                TransportError::Broker(format!(
                    "no message for 30 s after {} of {total}",
                    latencies.len()
                ))
            })?;
        let Some(delivery) = next else {
            return Err(TransportError::Broker("the load consumer ended".to_owned()));
        };
        batch.push((delivery.map_err(broker)?, Instant::now()));
        while batch.len() < usize::from(prefetch.max(1)) {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => batch.push((delivery.map_err(broker)?, Instant::now())),
                _ => break,
            }
        }
        if let Some((last, _)) = batch.last() {
            last.ack(BasicAckOptions { multiple: true })
                .await
                .map_err(broker)?;
        }
        let sent_at = sent_at.lock().unwrap_or_else(|poison| poison.into_inner());
        for (delivery, received) in batch.drain(..) {
            if !counts(&delivery.properties) {
                continue;
            }
            let sent = sent_at.get(latencies.len()).copied().unwrap_or(received);
            latencies.push(received.saturating_duration_since(sent));
        }
        drop(sent_at);
        if Instant::now() > deadline {
            return Err(TransportError::Broker(
                "load run exceeded 10 minutes".to_owned(),
            ));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let machine_cpu = machine_cpu(cpu_before);
    sending
        .await
        .map_err(|error| TransportError::Broker(error.to_string()))??;
    let _ = consumer_channel
        .basic_cancel(format!("load-{queue}").as_str().into(), Default::default())
        .await;
    Ok(Measurement {
        throughput_per_second: total as f64 / seconds,
        latency_ms: percentiles(&mut latencies),
        seconds,
        machine_cpu,
    })
}

fn percentiles(latencies: &mut [Duration]) -> Percentiles {
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies
            .get(index)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    properties.headers().as_ref().and_then(|table| {
        table
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == name)
            .and_then(|(_, value)| match value {
                AMQPValue::LongString(text) => Some(text.to_string()),
                _ => None,
            })
    })
}
