//! The load tool (`switchboard-load`): drives a running daemon through RabbitMQ and measures
//! it, beside the raw broker baseline of the same run. Outside the daemon's flow, hence a crate
//! of its own; it speaks lapin itself, as a gateway and a subscriber would.
//!
//! End to end: realistic Twilio SMS webhooks, each from a new customer, are published to the
//! inbound exchange (persistent, with confirms, pipelined); each opens a conversation, so each
//! yields exactly one `conversation.opened` CloudEvent on the outbound exchange, which a private
//! queue receives. The pipeline keeps order (one consumer, commit order, outbox order), so the
//! i-th event answers the i-th webhook and its latency is the difference of the two times.
//! Baseline: the same messages published with confirms to a fresh quorum queue and consumed
//! with acks (same size, durability and prefetch), timed the same way.
//! Relay: the broker's share of an end-to-end event. The same messages cross the broker twice,
//! as an event does (into a quorum queue, out to a second queue, each crossing with confirms),
//! relayed by a minimal client of its own connection that does nothing between the crossings:
//! no decode, engine or store. What end to end lacks against it is the daemon's own cost; what
//! it lacks against the baseline is the second crossing's.

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

use switchboard::config::AmqpConfig;
use switchboard::transport::TransportError;

/// Confirms awaited at once: enough to keep the broker busy, bounded for memory.
const CONFIRM_WINDOW: usize = 512;

/// Bound on each clean-up step after a phase (stopping the relay, closing its connection,
/// deleting its queue): the report is what matters, a broker slow to tidy up must not hold it.
const CLEAN_UP: Duration = Duration::from_secs(5);

/// How long the daemon's cost is still counted after the last event arrived: its store folds
/// the journal into redb about once a second, and those writes belong to the events too.
const SETTLE: Duration = Duration::from_secs(2);

/// What the load tool measures.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub messages: usize,
    /// Messages per second; `None` as fast as confirms allow.
    pub rate: Option<u32>,
    /// The daemon's processes (Linux; several for a cluster's nodes): their CPU time and the
    /// bytes they wrote are counted, summed, over the end-to-end phase.
    pub daemon_pids: Vec<u32>,
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
    /// Two crossings and nothing else (see the module's documentation).
    pub relay: Measurement,
    /// The relay's throughput as a share of the baseline's: the most end to end could reach
    /// against the baseline on this machine if the daemon cost nothing.
    pub relay_ratio: f64,
    /// End-to-end throughput as a share of the relay's: the daemon's own cost.
    pub throughput_ratio_to_relay: f64,
    /// What the daemon (or a cluster's daemons together) spent per event end to end (with
    /// `--daemon-pid`, Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonCost>,
    /// The relay's client alone, per event: this tool's CPU in the relay phase less its CPU
    /// end to end (the same publishing and consuming, without the relay). What a process that
    /// only moves each event between two queues spends: a floor under the daemon's CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_client_cpu_us_per_event: Option<f64>,
}

/// The daemon's own cost over the end-to-end phase and [`SETTLE`] after it.
#[derive(Debug, Serialize)]
pub struct DaemonCost {
    /// CPU time (user and system, every thread) per event, in microseconds.
    pub cpu_us_per_event: f64,
    /// Bytes the daemon caused to be written to storage, per event (journal, redb folds,
    /// snapshots: `write_bytes` of `/proc/<pid>/io`).
    pub bytes_written_per_event: f64,
    pub settle_seconds: f64,
}

/// A process's CPU time so far, every thread's (the dead ones' too), in nanoseconds: user and
/// system time of `/proc/<pid>/stat`, counted in the kernel's fixed 100 Hz user ticks (so a
/// phase of a second or more reads to within a percent or two).
fn cpu_nanos(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: fields are counted after it.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}

/// The CPU time and written bytes of `pids` so far, summed; `None` without pids or when one
/// cannot be read.
fn daemons_cost(pids: &[u32]) -> Option<(u64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold((0, 0), |(cpu, written), pid| {
        let pid = pid.to_string();
        Some((cpu + cpu_nanos(&pid)?, written + written_bytes(&pid)?))
    })
}

/// The bytes a process caused to be written to storage so far (`/proc/<pid>/io`).
fn written_bytes(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

#[derive(Debug, Serialize)]
pub struct Measurement {
    pub throughput_per_second: f64,
    pub latency_ms: Percentiles,
    pub seconds: f64,
    /// This tool's own CPU per message in the phase (Linux), publishing and consuming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_cpu_us_per_message: Option<f64>,
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
    declare_private(&subscriber, &queue).await?;
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
    let daemon_before = daemons_cost(&plan.daemon_pids);
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
    let daemon = match daemon_before {
        Some((cpu_before, written_before)) => {
            tokio::time::sleep(SETTLE).await;
            let events = plan.messages.max(1) as f64;
            daemons_cost(&plan.daemon_pids).map(|(cpu, written)| DaemonCost {
                cpu_us_per_event: cpu.saturating_sub(cpu_before) as f64 / 1000.0 / events,
                bytes_written_per_event: written.saturating_sub(written_before) as f64 / events,
                settle_seconds: SETTLE.as_secs_f64(),
            })
        }
        None => None,
    };

    // Baseline: the same bytes through a quorum queue of its own, nothing else.
    let baseline_queue = format!("switchboard.load.baseline.{run:x}");
    declare_quorum(&subscriber, &baseline_queue).await?;
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

    // Relay: into a quorum queue like the inbound one, out through a second queue like the
    // load's own outbound subscription, a minimal client in between.
    let relay_in = format!("switchboard.load.relay-in.{run:x}");
    let relay_out = format!("switchboard.load.relay-out.{run:x}");
    declare_quorum(&subscriber, &relay_in).await?;
    declare_private(&subscriber, &relay_out).await?;
    let relay_connection = Connection::connect(
        config.url.expose(),
        ConnectionProperties::default().with_connection_name("switchboard-load-relay".into()),
    )
    .await
    .map_err(broker)?;
    let stop_relay = tokio_util::sync::CancellationToken::new();
    let relaying = tokio::spawn(relay(
        relay_connection.create_channel().await.map_err(broker)?,
        relay_connection.create_channel().await.map_err(broker)?,
        relay_in.clone(),
        relay_out.clone(),
        config.prefetch,
        stop_relay.clone(),
    ));
    let relayed = measure(
        &connection,
        &subscriber,
        &relay_out,
        "",
        &relay_in,
        &bodies,
        plan,
        config.prefetch,
        |_| true,
    )
    .await;
    // Stopped, not aborted: in one run with the relay task aborted mid-batch, the clean-up
    // below never returned (lapin logged "invalid channel state: Closing"). Each of its steps
    // is bounded all the same.
    stop_relay.cancel();
    let relay_failure = match tokio::time::timeout(CLEAN_UP, relaying).await {
        Ok(Ok(Err(error))) => Some(error),
        _ => None,
    };
    let _ = tokio::time::timeout(CLEAN_UP, relay_connection.close(200, "load done".into())).await;
    let _ = tokio::time::timeout(
        CLEAN_UP,
        subscriber.queue_delete(relay_in.as_str().into(), QueueDeleteOptions::default()),
    )
    .await;
    let relayed = match (relayed, relay_failure) {
        (Ok(relayed), _) => relayed,
        (Err(_), Some(cause)) | (Err(cause), None) => return Err(cause),
    };

    let _ = connection.close(200, "load done".into()).await;
    let share = |part: &Measurement, whole: &Measurement| {
        part.throughput_per_second / whole.throughput_per_second.max(f64::MIN_POSITIVE)
    };
    Ok(LoadReport {
        messages: plan.messages,
        message_bytes,
        rate_requested: plan.rate,
        throughput_ratio: share(&end_to_end, &baseline),
        relay_ratio: share(&relayed, &baseline),
        throughput_ratio_to_relay: share(&end_to_end, &relayed),
        relay_client_cpu_us_per_event: relayed
            .tool_cpu_us_per_message
            .zip(end_to_end.tool_cpu_us_per_message)
            .map(|(relay, end_to_end)| relay - end_to_end),
        daemon,
        end_to_end,
        baseline,
        relay: relayed,
    })
}

/// A durable quorum queue, as the daemon's inbound queue is.
async fn declare_quorum(channel: &Channel, name: &str) -> Result<(), TransportError> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .map(drop)
        .map_err(broker)
}

/// A queue of this run alone, as a frontend's subscription would be: gone with its consumer or
/// its connection.
async fn declare_private(channel: &Channel, name: &str) -> Result<(), TransportError> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .map(drop)
        .map_err(broker)
}

/// The relay's client: consumes `from` as the daemon consumes its inbound queue (what is
/// buffered, up to the prefetch), republishes each message to `to` as the daemon publishes an
/// event (persistent, mandatory, CloudEvents headers, confirms awaited in a window, each batch
/// handed over at once), then acknowledges the batch with one `multiple` ack. Runs until
/// `stop`, then waits for the confirms still due.
async fn relay(
    consume: Channel,
    publish: Channel,
    from: String,
    to: String,
    prefetch: u16,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), TransportError> {
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    let mut deliveries = consume
        .basic_consume(
            from.as_str().into(),
            "load-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
    let mut confirms = VecDeque::new();
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            next = deliveries.next() => match next {
                Some(delivery) => delivery.map_err(broker)?,
                None => return Err(TransportError::Broker("the relay's consumer ended".to_owned())),
            },
        };
        let mut batch = vec![first];
        while batch.len() < usize::from(prefetch.max(1)) {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery.map_err(broker)?),
                _ => break,
            }
        }
        let started = futures_util::future::join_all(batch.iter().map(|delivery| {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map_or_else(String::new, ToString::to_string);
            let mut headers = FieldTable::default();
            for (name, value) in [
                ("cloudEvents_specversion", "1.0"),
                ("cloudEvents_id", id.as_str()),
                ("cloudEvents_source", "switchboard-load"),
                ("cloudEvents_type", "dev.switchboard.load.relayed"),
                ("cloudEvents_time", "2026-01-01T00:00:00.000Z"),
            ] {
                headers.insert(name.into(), AMQPValue::LongString(value.into()));
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/cloudevents+json".into())
                .with_message_id(id.as_str().into())
                .with_headers(headers);
            publish.basic_publish(
                "".into(),
                to.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
        }))
        .await;
        for confirm in started {
            confirms.push_back(confirm.map_err(broker)?);
        }
        while confirms.len() > CONFIRM_WINDOW {
            if let Some(confirm) = confirms.pop_front() {
                confirm.await.map_err(broker)?;
            }
        }
        if let Some(last) = batch.last() {
            last.ack(BasicAckOptions { multiple: true })
                .await
                .map_err(broker)?;
        }
    }
    let _ = consume
        .basic_cancel("load-relay".into(), Default::default())
        .await;
    for confirm in confirms {
        confirm.await.map_err(broker)?;
    }
    Ok(())
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
    let tool_before = cpu_nanos("self");
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
    let tool_cpu_us_per_message = tool_before
        .zip(cpu_nanos("self"))
        .map(|(before, after)| after.saturating_sub(before) as f64 / 1000.0 / total.max(1) as f64);
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
        tool_cpu_us_per_message,
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
