//! Telemetry beside the flow: the counters and histograms every step records (inbound by plugin
//! and outcome, dead letters by reason, commits, HTTP requests, supervision actions), rendered
//! by `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Hand-rolled rather than a metrics crate: the set is small and fixed, recording is one map
//! lookup under an uncontended lock, and the output stays the classic text format Prometheus
//! scrapes without content negotiation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// The metric families' names, one constant each: a name mistyped at a call site does not
/// compile (a family nobody defined would record nothing).
pub mod family {
    pub const BROKER_CONNECTED: &str = "switchboard_broker_connected";
    pub const CLUSTER_FENCED_WRITES_TOTAL: &str = "switchboard_cluster_fenced_writes_total";
    pub const CLUSTER_LEASE_ROUNDS_FAILED_TOTAL: &str =
        "switchboard_cluster_lease_rounds_failed_total";
    pub const CLUSTER_PARTITION_LAG_SECONDS: &str = "switchboard_cluster_partition_lag_seconds";
    pub const CLUSTER_PARTITIONS_OWNED: &str = "switchboard_cluster_partitions_owned";
    pub const CLUSTER_TAKEOVERS_TOTAL: &str = "switchboard_cluster_takeovers_total";
    pub const COMMIT_BATCH_SIZE: &str = "switchboard_commit_batch_size";
    pub const COMMIT_SECONDS: &str = "switchboard_commit_seconds";
    pub const DEAD_LETTERED_TOTAL: &str = "switchboard_dead_lettered_total";
    pub const DELIVERIES_TOTAL: &str = "switchboard_deliveries_total";
    pub const DELIVERY_SECONDS: &str = "switchboard_delivery_seconds";
    pub const DELIVERY_CIRCUITS_OPENED_TOTAL: &str = "switchboard_delivery_circuits_opened_total";
    pub const HTTP_REQUEST_SECONDS: &str = "switchboard_http_request_seconds";
    pub const HTTP_REQUESTS_TOTAL: &str = "switchboard_http_requests_total";
    pub const INBOUND_TOTAL: &str = "switchboard_inbound_total";
    pub const OUTBOUND_DELAY_SECONDS: &str = "switchboard_outbound_delay_seconds";
    pub const OUTBOX_BACKLOG: &str = "switchboard_outbox_backlog";
    pub const OUTBOX_CONFIRM_SECONDS: &str = "switchboard_outbox_confirm_seconds";
    pub const PLUGIN_CALL_SECONDS: &str = "switchboard_plugin_call_seconds";
    pub const SNAPSHOT_SECONDS: &str = "switchboard_snapshot_seconds";
    pub const SUPERVISION_ACTIONS_TOTAL: &str = "switchboard_supervision_actions_total";
    pub const WEBHOOK_ANSWER_SECONDS: &str = "switchboard_webhook_answer_seconds";
    pub const WEBHOOK_REQUESTS_TOTAL: &str = "switchboard_webhook_requests_total";
}

/// Label values of one series, in the order of the family's label names.
type Labels = Vec<String>;

/// Upper bounds (seconds) of latency histograms: 100 µs to ~3 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of the commit batch size histogram.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Cumulative counts per bucket of the family's bounds.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    labels: &'static [&'static str],
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Counter(BTreeMap<Labels, u64>),
    Gauge(BTreeMap<Labels, i64>),
    Histogram(&'static [f64], BTreeMap<Labels, Histogram>),
}

/// The daemon's metrics. One instance per daemon, shared by its tasks.
#[derive(Debug)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut families = BTreeMap::new();
        let mut add = |name, help, labels, kind| {
            families.insert(name, Family { help, labels, kind });
        };
        add(
            family::CLUSTER_PARTITIONS_OWNED,
            "Partitions whose lease this node holds (cluster mode).",
            &[][..],
            Kind::Gauge(BTreeMap::new()),
        );
        add(
            family::CLUSTER_TAKEOVERS_TOTAL,
            "Partitions this node took from another node (an expired or released lease).",
            &[][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::CLUSTER_FENCED_WRITES_TOTAL,
            "Commits PostgreSQL refused because another node had taken the partition over.",
            &["partition"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::CLUSTER_LEASE_ROUNDS_FAILED_TOTAL,
            "Lease rounds that could not reach PostgreSQL.",
            &[][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::CLUSTER_PARTITION_LAG_SECONDS,
            "How old this node's read model of each partition is (since its last refresh that reached it).",
            &["partition"][..],
            Kind::Gauge(BTreeMap::new()),
        );
        add(
            family::INBOUND_TOTAL,
            "Inbound provider messages by plugin (routing key) and outcome (applied, dead-lettered).",
            &["plugin", "outcome"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::WEBHOOK_REQUESTS_TOTAL,
            "Requests on the webhook door by plugin and outcome (accepted, duplicate, ignored, handshake, unauthorized, invalid, refused, unsigned, rate-limited, unavailable, unknown-plugin).",
            &["plugin", "outcome"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::WEBHOOK_ANSWER_SECONDS,
            "From a webhook reaching the door to its answer (commit included).",
            &["plugin"][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::DELIVERIES_TOTAL,
            "Provider requests by plugin and outcome: delivered, retried, dead, and resumed (taken up again after a restart or a lost broker connection: it may have reached the provider already, the only way a duplicate arises).",
            &["plugin", "outcome"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::DELIVERY_CIRCUITS_OPENED_TOTAL,
            "Times a provider host's circuit opened (failures in a row, or a failed trial).",
            &["host"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::DELIVERY_SECONDS,
            "Duration of one provider request, from sending to its answer.",
            &["plugin"][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::DEAD_LETTERED_TOTAL,
            "Inbound messages dead-lettered, by reason code.",
            &["reason"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::COMMIT_BATCH_SIZE,
            "Inputs per durable commit (group commit).",
            &[][..],
            Kind::Histogram(&BATCH_BUCKETS, BTreeMap::new()),
        );
        add(
            family::COMMIT_SECONDS,
            "Duration of one durable commit, fsync included.",
            &[][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::SNAPSHOT_SECONDS,
            "Duration of writing one snapshot (serialization, write, fsync, log truncation).",
            &[][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::OUTBOX_BACKLOG,
            "Outbox entries committed but not yet confirmed by the broker.",
            &[][..],
            Kind::Gauge(BTreeMap::new()),
        );
        add(
            family::OUTBOX_CONFIRM_SECONDS,
            "From handing a publication to the broker to its confirm (the broker's share of the way out).",
            &[][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::OUTBOUND_DELAY_SECONDS,
            "From processing the input that caused a notification to the broker's confirm of it (commit, outbox backlog and broker together; millisecond resolution).",
            &[][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::PLUGIN_CALL_SECONDS,
            "Duration of one plugin decode call, sandbox included.",
            &["plugin"][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::HTTP_REQUESTS_TOTAL,
            "Admin API requests by route template, method and status.",
            &["route", "method", "status"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::HTTP_REQUEST_SECONDS,
            "Admin API request duration by route template.",
            &["route"][..],
            Kind::Histogram(&LATENCY_BUCKETS, BTreeMap::new()),
        );
        add(
            family::SUPERVISION_ACTIONS_TOTAL,
            "Supervision commands by kind and outcome (ok, or the refusal code).",
            &["kind", "outcome"][..],
            Kind::Counter(BTreeMap::new()),
        );
        add(
            family::BROKER_CONNECTED,
            "1 while the AMQP connection is up (0 without a broker configured).",
            &[][..],
            Kind::Gauge(BTreeMap::new()),
        );
        Self {
            families: Mutex::new(families),
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Kind) -> R) -> Option<R> {
        let mut families = self
            .families
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        families.get_mut(name).map(|family| f(&mut family.kind))
    }

    /// Adds `by` to a counter series.
    pub fn count(&self, name: &str, labels: &[&str], by: u64) {
        self.with(name, |kind| {
            if let Kind::Counter(series) = kind {
                *series.entry(owned(labels)).or_default() += by;
            }
        });
    }

    pub fn set_gauge(&self, name: &str, labels: &[&str], value: i64) {
        self.with(name, |kind| {
            if let Kind::Gauge(series) = kind {
                series.insert(owned(labels), value);
            }
        });
    }

    /// Records one observation (seconds, or a size).
    pub fn observe(&self, name: &str, labels: &[&str], value: f64) {
        self.with(name, |kind| {
            if let Kind::Histogram(bounds, series) = kind {
                let histogram = series.entry(owned(labels)).or_insert_with(|| Histogram {
                    buckets: vec![0; bounds.len()],
                    ..Histogram::default()
                });
                for (bucket, bound) in histogram.buckets.iter_mut().zip(bounds.iter()) {
                    if value <= *bound {
                        *bucket += 1;
                    }
                }
                histogram.count += 1;
                histogram.sum += value;
            }
        });
    }

    pub fn observe_duration(&self, name: &str, labels: &[&str], duration: Duration) {
        self.observe(name, labels, duration.as_secs_f64());
    }

    /// The current value of a counter series (tests and the load tool read it).
    pub fn counter(&self, name: &str, labels: &[&str]) -> u64 {
        self.with(name, |kind| match kind {
            Kind::Counter(series) => series.get(&owned(labels)).copied().unwrap_or(0),
            _ => 0,
        })
        .unwrap_or(0)
    }

    /// Prometheus text format 0.0.4. `extra` is appended as is (series read at scrape time,
    /// such as the plugin host's own counters).
    pub fn render(&self, extra: &str) -> String {
        let families = self
            .families
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut out = String::with_capacity(4096);
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter(_) => "counter",
                Kind::Gauge(_) => "gauge",
                Kind::Histogram(..) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match &family.kind {
                Kind::Counter(series) => {
                    for (values, value) in series {
                        let _ = writeln!(out, "{name}{} {value}", labels(family.labels, values));
                    }
                }
                Kind::Gauge(series) => {
                    for (values, value) in series {
                        let _ = writeln!(out, "{name}{} {value}", labels(family.labels, values));
                    }
                }
                Kind::Histogram(bounds, series) => {
                    for (values, histogram) in series {
                        for (bound, count) in bounds.iter().zip(&histogram.buckets) {
                            let le = bound.to_string();
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {count}",
                                labels_with(family.labels, values, Some(("le", &le)))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            labels_with(family.labels, values, Some(("le", "+Inf"))),
                            histogram.count
                        );
                        let _ = writeln!(
                            out,
                            "{name}_sum{} {}",
                            labels(family.labels, values),
                            histogram.sum
                        );
                        let _ = writeln!(
                            out,
                            "{name}_count{} {}",
                            labels(family.labels, values),
                            histogram.count
                        );
                    }
                }
            }
        }
        out.push_str(extra);
        out
    }
}

fn owned(labels: &[&str]) -> Labels {
    labels.iter().map(|label| (*label).to_owned()).collect()
}

fn labels(names: &[&str], values: &[String]) -> String {
    labels_with(names, values, None)
}

/// `{name="value",...}` (nothing for no labels), with an extra pair such as `le` last.
fn labels_with(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect();
    if let Some((name, value)) = extra {
        pairs.push(format!("{name}=\"{}\"", escape(value)));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// Label value escaping of the text format: backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.count(family::INBOUND_TOTAL, &["sms-twilio", "applied"], 2);
        metrics.count(family::DEAD_LETTERED_TOTAL, &["bad \"sig\"\nnature"], 1);
        metrics.observe(family::COMMIT_BATCH_SIZE, &[], 7.0);
        let text = metrics.render("");
        assert!(
            text.contains(
                "switchboard_inbound_total{plugin=\"sms-twilio\",outcome=\"applied\"} 2\n"
            )
        );
        assert!(text.contains(r#"reason="bad \"sig\"\nnature"} 1"#));
        assert!(text.contains("switchboard_commit_batch_size_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("switchboard_commit_batch_size_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("switchboard_commit_batch_size_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("switchboard_commit_batch_size_count 1\n"));
        assert!(text.contains("# TYPE switchboard_commit_seconds histogram\n"));
        assert_eq!(
            metrics.counter(family::INBOUND_TOTAL, &["sms-twilio", "applied"]),
            2
        );
    }
}
