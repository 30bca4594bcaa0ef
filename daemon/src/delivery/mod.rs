//! Last step of the flow for channel requests: the delivery worker sends what plugins encoded
//! (`channel.<plugin>` outbox entries) to the providers (README, "Delivery").
//!
//! Embedded, the durable outbox is its queue: an entry leaves the store only once it was
//! delivered or given up on (dead), so a crash loses nothing and re-sends at most what was in
//! flight; new entries come straight from each commit through the outbox feed, the store is
//! read at the start, after a resend and after the feed overflowed. On RabbitMQ the worker
//! consumes `switchboard.delivery` ([`crate::transport::amqp::delivery`]). Requests of one
//! conversation go one at a time, in commit order: a retry, however
//! long its `Retry-After`, holds back the later ones of its conversation and no other.
//! Credentials are filled in just before sending ([`placeholder`]); the egress policy and the
//! HTTP client live in [`http`]; a circuit per provider host in [`breaker`], OAuth tokens in
//! [`oauth`], a plugin's rate limit in [`pace`]. The outcome of a customer message goes back on
//! its conversation's timeline as a receipt (`sent`, or `failed` with the provider's error, as
//! the plugin read the answer when it exports `delivery-receipts`); a voice supervisor's media
//! requests come back as live or failed.

pub mod breaker;
pub mod dead;
pub mod http;
pub mod oauth;
pub mod pace;
pub mod placeholder;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher as _, Hasher as _, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::config::{AmqpConfig, DeliveryConfig, PluginConfig};
use crate::engine::{
    ChannelEvent, ConversationId, ConversationRef, EventBody, PluginId, ProviderError,
    ReceiptStatus,
};
use crate::metrics::family;
use crate::pipeline::Submission;
use crate::service::Service;
use crate::store::{DeadDelivery, OutboxEntry};
use crate::transport::amqp::delivery::{DeliveryQueue, RequestAck};

/// Routing keys of provider requests: `channel.<plugin>`.
const CHANNEL_PREFIX: &str = "channel.";
/// Outbox entries read at once.
const PAGE: usize = 256;
/// The first retry waits up to this long; each later one up to twice the one before.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// No retry waits longer than this (unless the provider's `Retry-After` says so).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where a request came from, and so how it leaves once delivered or given up on.
#[derive(Debug, Clone)]
enum Source {
    /// The embedded outbox: marked sent, or moved to the store's dead deliveries.
    Outbox,
    /// The broker's delivery queue: acknowledged, after a dead one is confirmed in the dead
    /// queue.
    Broker {
        ack: Arc<RequestAck>,
        queue: Arc<DeliveryQueue>,
        /// The lanes of this connection: a lost connection ends them (the broker hands their
        /// requests out again), without touching the next connection's.
        generation: u64,
    },
}

/// The header (set by a plugin, never sent) that says a request's body holds placeholders
/// for the worker to fill: `switchboard-placeholders: body`.
const BODY_PLACEHOLDERS: &str = "switchboard-placeholders";

/// One provider request taken from the outbox or the delivery queue.
#[derive(Debug, Clone)]
struct Job {
    entry: OutboxEntry,
    plugin: String,
    attempts: u32,
    source: Source,
}

impl Job {
    fn header(&self, name: &str) -> Option<&str> {
        self.entry
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The request's own headers (the `switchboard-*` ones describe it to the worker).
    fn provider_headers(&self) -> impl Iterator<Item = &(String, String)> {
        self.entry
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("switchboard-"))
    }

    /// The lane it waits in: its conversation (requests without one go alone).
    fn lane(&self) -> String {
        let key = self.entry.subject.as_deref().unwrap_or(&self.entry.id);
        match &self.source {
            Source::Outbox => key.to_owned(),
            Source::Broker { generation, .. } => format!("{generation}/{key}"),
        }
    }

    /// Whether its outcome belongs on the timeline: customer messages only (media requests
    /// of a silent monitor must leave no trace an agent could read).
    fn is_customer_message(&self) -> bool {
        self.header("switchboard-notification") == Some("message")
    }
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Delivered,
    /// Try again, not before this wait (the provider's `Retry-After`, if it said one).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The provider refused it for good (or the policy did): no retry.
    Permanent(ProviderError),
    /// Not sent: its host's circuit is open. Wait, without using up an attempt.
    Wait(Duration),
}

/// What the timeline says of a customer message's delivery.
#[derive(Debug, Clone)]
struct Outcome {
    status: ReceiptStatus,
    error: Option<ProviderError>,
    /// The provider's id for the message, as its plugin read it in the answer.
    provider_id: Option<String>,
}

impl Outcome {
    fn failed(error: ProviderError) -> Self {
        Self {
            status: ReceiptStatus::Failed,
            error: Some(error),
            provider_id: None,
        }
    }
}

/// The delivery worker of one daemon.
pub struct Worker {
    service: Arc<Service>,
    config: DeliveryConfig,
    clients: HashMap<String, http::Client>,
    permits: HashMap<String, Arc<Semaphore>>,
    /// The plugins with OAuth client credentials.
    tokens: HashMap<String, oauth::TokenSource>,
    /// The plugins with a rate limit.
    paces: HashMap<String, pace::Pace>,
    /// Jobs waiting per conversation; a lane exists while a task works through it.
    lanes: Mutex<HashMap<String, VecDeque<Job>>>,
    /// Ids of the outbox entries in a lane: a fresh read of the outbox (after an admin sent
    /// dead deliveries again) skips them.
    queued: Mutex<HashSet<String>>,
    breakers: breaker::Breakers,
    random: RandomState,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("plugins", &self.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for the service's plugins, each allowed the hosts its configuration allows
    /// (`allowed_hosts`, or the hosts of its URL settings).
    pub fn new(
        service: Arc<Service>,
        config: DeliveryConfig,
        plugins: &[PluginConfig],
    ) -> Result<Self, String> {
        let timeouts = http::Timeouts {
            connect: config.connect_timeout,
            total: config.timeout,
        };
        let mut clients = HashMap::new();
        let mut permits = HashMap::new();
        let mut tokens = HashMap::new();
        let mut paces = HashMap::new();
        for plugin in service.plugins() {
            let configured = plugins
                .iter()
                .find(|configured| configured.id == plugin.id());
            let (hosts, explicit) = configured.map_or((&[][..], false), |configured| {
                (
                    &configured.allowed_hosts[..],
                    configured.allowed_hosts_listed,
                )
            });
            if hosts.is_empty() {
                tracing::warn!(plugin = %plugin.id(), "no allowed_hosts and no URL setting: every request of this plugin will be refused");
            }
            if let Some(limit) = configured.and_then(|configured| configured.rate_limit) {
                paces.insert(plugin.id().to_owned(), pace::Pace::new(limit));
            }
            if let Some(oauth) = configured.and_then(|configured| configured.oauth.clone()) {
                tokens.insert(plugin.id().to_owned(), oauth::TokenSource::new(oauth));
            }
            clients.insert(
                plugin.id().to_owned(),
                http::Client::new(hosts, explicit, timeouts)?,
            );
            permits.insert(
                plugin.id().to_owned(),
                Arc::new(Semaphore::new(config.concurrency)),
            );
        }
        Ok(Self {
            service,
            config,
            clients,
            permits,
            tokens,
            paces,
            lanes: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashSet::new()),
            breakers: breaker::Breakers::default(),
            random: RandomState::new(),
        })
    }

    /// Works from the embedded outbox until `stop`: what an earlier run left undelivered
    /// first, then each commit's new requests.
    pub async fn run_embedded(self: Arc<Self>, stop: CancellationToken) {
        // Commits hand their entries over through the feed; the store is read at the start,
        // after an admin sent dead deliveries again (older ids), and when the feed overflowed.
        let feed = self.service.outbox_feed().cloned();
        // The newest id handed to a lane: the feed's entries up to it came from the store.
        let mut newest: Option<String> = None;
        let mut read_store = true;
        let mut first_read = true;
        loop {
            // A commit between the read and the wait leaves a permit: nothing is missed.
            let ready = self.service.delivery_ready.notified();
            if self
                .service
                .delivery_rescan
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                read_store = true;
            }
            if read_store {
                if let Some(feed) = &feed {
                    // What it holds is in the store too.
                    feed.restart();
                }
                self.read_outbox(&mut newest, first_read, &stop).await;
                read_store = feed.is_none();
                first_read = false;
            } else if let Some(feed) = &feed {
                match feed.take_all() {
                    Some(entries) => {
                        for entry in entries {
                            if newest.as_deref().is_some_and(|newest| *entry.id <= *newest) {
                                continue;
                            }
                            newest = Some(entry.id.clone());
                            self.offer(entry, false, &stop);
                        }
                    }
                    None => {
                        read_store = true;
                        continue;
                    }
                }
            }
            let handed_over = async {
                match &feed {
                    Some(feed) => feed.handed_over().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = ready => {}
                () = handed_over => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Every undelivered request in the outbox into its lane (those already in one skipped);
    /// `resumed`: left by the run before.
    async fn read_outbox(
        self: &Arc<Self>,
        newest: &mut Option<String>,
        resumed: bool,
        stop: &CancellationToken,
    ) {
        let mut after: Option<String> = None;
        loop {
            let store = self.service.store().clone();
            let from = after.clone();
            let page =
                tokio::task::spawn_blocking(move || store.outbox_after(from.as_deref(), PAGE))
                    .await;
            let entries = match page {
                Ok(Ok(entries)) => entries,
                Ok(Err(error)) => {
                    tracing::error!(error = %error, "the delivery worker cannot read the outbox");
                    return;
                }
                Err(error) => {
                    tracing::error!(error = %error, "the delivery worker's outbox read failed");
                    return;
                }
            };
            let Some(last) = entries.last() else { return };
            after = Some(last.id.clone());
            if newest.as_deref().is_none_or(|newest| *last.id > *newest) {
                *newest = Some(last.id.clone());
            }
            let full = entries.len() == PAGE;
            for entry in entries {
                self.offer(entry, resumed, stop);
            }
            if !full {
                return;
            }
        }
    }

    /// A provider request from the outbox into its lane, unless it is in one already.
    fn offer(self: &Arc<Self>, entry: OutboxEntry, resumed: bool, stop: &CancellationToken) {
        let Some(plugin) = entry.routing_key.strip_prefix(CHANNEL_PREFIX) else {
            return;
        };
        if !lock(&self.queued).insert(entry.id.clone()) {
            return;
        }
        if resumed {
            // Left by the run before: it may have reached the provider already, its answer
            // lost with that run.
            self.service
                .metrics()
                .count(family::DELIVERIES_TOTAL, &[plugin, "resumed"], 1);
        }
        let plugin = plugin.to_owned();
        self.enqueue(
            Job {
                entry,
                plugin,
                attempts: 0,
                source: Source::Outbox,
            },
            stop,
        );
    }

    /// Works from the broker's delivery queue until `stop`, connecting again (with backoff)
    /// whenever the connection is lost; `queue` is where the admin API finds the connection.
    pub async fn run_amqp(
        self: Arc<Self>,
        amqp: AmqpConfig,
        dead: Arc<dead::DeadLetters>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(200);
        let mut generation = 0u64;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let prefetch = u16::try_from(self.config.prefetch).unwrap_or(u16::MAX);
            let queue = match DeliveryQueue::connect(&amqp, prefetch).await {
                Ok(queue) => Arc::new(queue),
                Err(error) => {
                    tracing::warn!(error = %error, retry_in = ?backoff, "the delivery worker cannot reach the broker");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            generation += 1;
            dead.set_broker(Some(queue.clone()));
            let connection_stop = stop.child_token();
            match queue.consume("switchboard-delivery").await {
                Ok(mut requests) => {
                    tracing::info!(queue = %amqp.delivery_queue, "delivering from the broker's delivery queue");
                    loop {
                        let next = tokio::select! {
                            () = stop.cancelled() => break,
                            next = requests.next() => next,
                        };
                        let request = match next {
                            Some(Ok(request)) => request,
                            Some(Err(error)) => {
                                tracing::warn!(error = %error, "the delivery queue's consumer failed; connecting again");
                                break;
                            }
                            None => {
                                tracing::warn!(
                                    "the delivery queue's consumer ended; connecting again"
                                );
                                break;
                            }
                        };
                        let Some(plugin) = request.entry.routing_key.strip_prefix(CHANNEL_PREFIX)
                        else {
                            // Bound to channel.#: anything else was published here by hand.
                            let _ = request.ack.ack().await;
                            continue;
                        };
                        if request.redelivered {
                            self.service.metrics().count(
                                family::DELIVERIES_TOTAL,
                                &[plugin, "resumed"],
                                1,
                            );
                        }
                        let plugin = plugin.to_owned();
                        self.enqueue(
                            Job {
                                entry: request.entry,
                                plugin,
                                attempts: 0,
                                source: Source::Broker {
                                    ack: Arc::new(request.ack),
                                    queue: queue.clone(),
                                    generation,
                                },
                            },
                            &connection_stop,
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot consume the delivery queue; connecting again");
                }
            }
            // The lanes of this connection end; the broker hands their requests out again.
            connection_stop.cancel();
            dead.set_broker(None);
            queue.close().await;
        }
    }

    /// Puts a job behind the others of its conversation, starting a task for the lane if
    /// none works through it.
    fn enqueue(self: &Arc<Self>, job: Job, stop: &CancellationToken) {
        let lane = job.lane();
        let start = {
            let mut lanes = self
                .lanes
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            match lanes.get_mut(&lane) {
                Some(queue) => {
                    queue.push_back(job);
                    false
                }
                None => {
                    lanes.insert(lane.clone(), VecDeque::from([job]));
                    true
                }
            }
        };
        if start {
            tokio::spawn(self.clone().run_lane(lane, stop.clone()));
        }
    }

    /// Delivers a conversation's requests one after another, in order.
    async fn run_lane(self: Arc<Self>, lane: String, stop: CancellationToken) {
        loop {
            let job = {
                let mut lanes = self
                    .lanes
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                match lanes.get(&lane).and_then(|queue| queue.front()) {
                    Some(job) => job.clone(),
                    None => {
                        lanes.remove(&lane);
                        return;
                    }
                }
            };
            if !self.deliver(job, &stop).await {
                // Stopping: what is left stays in the outbox (or the queue) for the next start.
                if let Some(left) = lock(&self.lanes).remove(&lane) {
                    let mut queued = lock(&self.queued);
                    for job in left {
                        queued.remove(&job.entry.id);
                    }
                }
                return;
            }
            let mut lanes = self
                .lanes
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some(queue) = lanes.get_mut(&lane) {
                queue.pop_front();
            }
        }
    }

    /// Tries until delivered or dead; `false` when stopped first.
    async fn deliver(&self, mut job: Job, stop: &CancellationToken) -> bool {
        loop {
            job.attempts += 1;
            let mut answer = None;
            let verdict = self.attempt(&job, &mut answer).await;
            let metrics = self.service.metrics();
            match verdict {
                Verdict::Delivered => {
                    metrics.count(family::DELIVERIES_TOTAL, &[&job.plugin, "delivered"], 1);
                    let receipt =
                        self.read_answer(&job, answer.as_ref(), ReceiptStatus::Sent, None);
                    self.finish(&job, receipt, None).await;
                    return true;
                }
                Verdict::Permanent(error) => {
                    metrics.count(family::DELIVERIES_TOTAL, &[&job.plugin, "dead"], 1);
                    tracing::warn!(plugin = %job.plugin, id = %job.entry.id, code = %error.code, error = %crate::telemetry::content(&error.text), "delivery refused for good: dead-lettered");
                    let receipt = self.read_answer(
                        &job,
                        answer.as_ref(),
                        ReceiptStatus::Failed,
                        Some(error.clone()),
                    );
                    self.finish(&job, receipt, Some(error)).await;
                    return true;
                }
                Verdict::Wait(wait) => {
                    // Not sent: the attempt is not used up (its age still counts).
                    job.attempts -= 1;
                    if self.too_old(&job) {
                        metrics.count(family::DELIVERIES_TOTAL, &[&job.plugin, "dead"], 1);
                        let error = ProviderError {
                            code: "delivery-failed".into(),
                            text: "not delivered before max_age: the provider's host kept failing"
                                .into(),
                        };
                        self.finish(&job, Outcome::failed(error.clone()), Some(error))
                            .await;
                        return true;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Verdict::Retry { after, reason } => {
                    let age = now().0.saturating_sub(job.entry.time.0);
                    let too_old =
                        u128::try_from(age).unwrap_or(0) > self.config.max_age.as_millis();
                    if job.attempts >= self.config.max_attempts || too_old {
                        metrics.count(family::DELIVERIES_TOTAL, &[&job.plugin, "dead"], 1);
                        tracing::warn!(plugin = %job.plugin, id = %job.entry.id, attempts = job.attempts, reason = %crate::telemetry::content(&reason), "delivery still failing after its last attempt: dead-lettered");
                        let error = ProviderError {
                            code: "delivery-failed".into(),
                            text: format!(
                                "not delivered after {} attempts: {reason}",
                                job.attempts
                            )
                            .into(),
                        };
                        self.finish(&job, Outcome::failed(error.clone()), Some(error))
                            .await;
                        return true;
                    }
                    metrics.count(family::DELIVERIES_TOTAL, &[&job.plugin, "retried"], 1);
                    let wait = self.backoff(job.attempts).max(after.unwrap_or_default());
                    tracing::info!(plugin = %job.plugin, id = %job.entry.id, attempt = job.attempts, wait = ?wait, reason = %crate::telemetry::content(&reason), "delivery will be retried");
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Whether a request is older than `max_age`.
    fn too_old(&self, job: &Job) -> bool {
        let age = now().0.saturating_sub(job.entry.time.0);
        u128::try_from(age).unwrap_or(0) > self.config.max_age.as_millis()
    }

    /// Full jitter (a random wait up to the doubling bound), so that the retries of many
    /// requests refused together do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = FIRST_BACKOFF
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let mut hasher = self.random.build_hasher();
        hasher.write_u32(attempt);
        hasher.write_u128(now().0 as u128);
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        bound.mul_f64(fraction)
    }

    /// The plugin that encoded a job.
    fn plugin(&self, job: &Job) -> Option<&Arc<crate::plugin::Plugin>> {
        self.service
            .plugins()
            .iter()
            .find(|plugin| plugin.id() == job.plugin)
    }

    /// One attempt: credentials filled in, sent through the plugin's client.
    async fn attempt(&self, job: &Job, answered: &mut Option<http::Answer>) -> Verdict {
        let Some(plugin) = self.plugin(job) else {
            return Verdict::Permanent(ProviderError {
                code: "delivery-failed".into(),
                text: format!("plugin {} is not configured", job.plugin).into(),
            });
        };
        let (Some(client), Some(permits)) =
            (self.clients.get(&job.plugin), self.permits.get(&job.plugin))
        else {
            return Verdict::Permanent(ProviderError {
                code: "delivery-failed".into(),
                text: format!("no client for plugin {}", job.plugin).into(),
            });
        };
        let raw_url = job.header("switchboard-url").unwrap_or_default();
        if let Err(http::SendError::Refused(reason)) = client.check(raw_url) {
            return Verdict::Permanent(ProviderError {
                code: "egress-refused".into(),
                text: reason.into(),
            });
        }
        let secrets = plugin.secrets();
        // A secret not configured yet: the operator may add it and reload the plugin, so
        // this waits like a provider that is down, until the attempts run out.
        let missing = |error: placeholder::MissingSecret| Verdict::Retry {
            after: None,
            reason: error.to_string(),
        };
        let method = job
            .header("switchboard-method")
            .unwrap_or("POST")
            .to_owned();
        // An OAuth token, when the request asks for one and the plugin has client credentials.
        let source = self.tokens.get(&job.plugin);
        // A body is filled only when its plugin says it holds placeholders: a body carries
        // text people wrote, and a supervisor who types `{{secret:access_token}}` into a JSON
        // message must send the customer those characters, not the token.
        let body_text = match job.header(BODY_PLACEHOLDERS) {
            Some("body") => std::str::from_utf8(&job.entry.body).ok(),
            _ => None,
        };
        let wants_token = placeholder::wants_token(raw_url)
            || job
                .provider_headers()
                .any(|(_, value)| placeholder::wants_token(value))
            || body_text.is_some_and(placeholder::wants_token);
        let token = match source {
            Some(source) if wants_token => match source.token(client).await {
                Ok(token) => Some(token),
                Err(reason) => {
                    return Verdict::Retry {
                        after: None,
                        reason,
                    };
                }
            },
            _ => None,
        };
        let fill = |text: &str| placeholder::fill_with_token(text, &secrets, token.as_ref());
        let url = match fill(raw_url) {
            Ok(url) => url,
            Err(error) => return missing(error),
        };
        let mut headers = Vec::new();
        for (name, value) in job.provider_headers() {
            match fill(value) {
                Ok(value) => headers.push((name.clone(), value)),
                Err(error) => return missing(error),
            }
        }
        let body = match body_text {
            Some(text) if text.contains("{{") => match fill(text) {
                Ok(text) => text.into_bytes(),
                Err(error) => return missing(error),
            },
            _ => job.entry.body.clone(),
        };
        let host = authority(raw_url);
        if let breaker::Admission::Wait(wait) =
            self.breakers.admit(&host, std::time::Instant::now())
        {
            return Verdict::Wait(wait);
        }
        let _permit = permits.acquire().await;
        if let Some(pace) = self.paces.get(&job.plugin) {
            pace.wait().await;
        }
        let started = std::time::Instant::now();
        let sent = client.send(&method, &url, &headers, body).await;
        if let (Some(source), Some(_), Ok(answer)) = (source, &token, &sent)
            && answer.status == 401
        {
            // Revoked or expired early: the next attempt fetches another.
            source.forget().await;
        }
        let failed = match &sent {
            Ok(answer) => answer.status >= 500,
            Err(http::SendError::Transport(_)) => true,
            Err(http::SendError::Refused(_)) => false,
        };
        if failed {
            if self.breakers.failed(&host, std::time::Instant::now()) {
                tracing::warn!(plugin = %job.plugin, host = %host, "a provider host keeps failing: its requests wait (circuit open)");
                self.service
                    .metrics()
                    .count(family::DELIVERY_CIRCUITS_OPENED_TOTAL, &[&host], 1);
            }
        } else if self.breakers.succeeded(&host) {
            tracing::info!(plugin = %job.plugin, host = %host, "a provider host answers again (circuit closed)");
        }
        self.service.metrics().observe_duration(
            family::DELIVERY_SECONDS,
            &[&job.plugin],
            started.elapsed(),
        );
        match sent {
            Ok(answer) => {
                let verdict = if answer.status == 401 && token.is_some() {
                    Verdict::Retry {
                        after: None,
                        reason: "the provider refused the OAuth token (401); another is fetched"
                            .to_owned(),
                    }
                } else {
                    classify(&answer)
                };
                *answered = Some(answer);
                verdict
            }
            Err(http::SendError::Refused(reason)) => Verdict::Permanent(ProviderError {
                code: "egress-refused".into(),
                text: reason.into(),
            }),
            Err(http::SendError::Transport(reason)) => Verdict::Retry {
                after: None,
                reason,
            },
        }
    }

    /// A final answer's outcome for the timeline: the plugin's reading when it exports
    /// `delivery-receipts` (the provider's id for the message, its own error codes), else the
    /// host's (`status`, `error`).
    fn read_answer(
        &self,
        job: &Job,
        answer: Option<&http::Answer>,
        status: ReceiptStatus,
        error: Option<ProviderError>,
    ) -> Outcome {
        let host = Outcome {
            status,
            error,
            provider_id: None,
        };
        let (Some(answer), true) = (answer, job.is_customer_message()) else {
            return host;
        };
        let Some(plugin) = self.plugin(job) else {
            return host;
        };
        let reply = crate::plugin::ProviderReply {
            status: answer.status,
            content_type: answer.content_type.as_deref(),
            body: &answer.body,
        };
        match plugin.answered(&job.entry, reply) {
            Ok(Some(read)) => Outcome {
                status: read.status,
                error: read.error.or(host.error),
                provider_id: read.provider_id,
            },
            Ok(None) => host,
            Err(error) => {
                tracing::warn!(plugin = %job.plugin, error = %error, "the plugin could not read its provider's answer; the host's reading stands");
                host
            }
        }
    }

    /// A voice supervisor's media: live once the last part of its requests was accepted,
    /// failed as soon as one was refused for good (the engine then ends the supervisor's
    /// session, so that nobody monitors a call they cannot hear).
    async fn report_media(&self, job: &Job, dead: Option<&ProviderError>) {
        let (Some(supervisor), Some(part)) = (
            job.header("switchboard-supervisor"),
            job.header("switchboard-part"),
        ) else {
            return;
        };
        let last = part
            .split_once('/')
            .is_some_and(|(index, count)| index == count);
        if dead.is_none() && !last {
            return;
        }
        let Some(conversation) = job.entry.subject.as_deref().and_then(ConversationId::parse)
        else {
            return;
        };
        let label = if dead.is_some() { "failed" } else { "live" };
        let event = ChannelEvent {
            id: Some(format!("media:{}:{label}", job.entry.id).into_boxed_str()),
            source: PluginId::new(job.plugin.as_str()),
            body: EventBody::Media {
                conversation: ConversationRef::Id { id: conversation },
                supervisor: supervisor.into(),
                error: dead.cloned(),
            },
        };
        if let Err(error) = self.service.submit(Submission::Events(vec![event])).await {
            tracing::warn!(id = %job.entry.id, error = %error, "a supervisor's media state could not be committed");
        }
    }

    /// The outcome on the timeline (customer messages), then the request out of its source:
    /// delivered ones marked sent (acknowledged), dead ones (`dead`: why) kept.
    async fn finish(&self, job: &Job, outcome: Outcome, dead: Option<ProviderError>) {
        if job.is_customer_message()
            && let Some(conversation) = job.entry.subject.as_deref().and_then(ConversationId::parse)
        {
            let label = if dead.is_some() { "failed" } else { "sent" };
            let receipt = ChannelEvent {
                id: Some(format!("delivery:{}:{label}", job.entry.id).into_boxed_str()),
                source: PluginId::new(job.plugin.as_str()),
                body: EventBody::Receipt {
                    conversation: ConversationRef::Id { id: conversation },
                    message_id: job.entry.id.clone().into_boxed_str(),
                    status: outcome.status,
                    error: outcome.error,
                    provider_id: outcome.provider_id.map(String::into_boxed_str),
                },
            };
            if let Err(error) = self.service.submit(Submission::Events(vec![receipt])).await {
                tracing::warn!(id = %job.entry.id, error = %error, "a delivery's receipt could not be committed");
            }
        }
        self.report_media(job, dead.as_ref()).await;
        let dead = dead.map(|error| DeadDelivery {
            entry: job.entry.clone(),
            code: error.code.into(),
            detail: error.text.into(),
            attempts: job.attempts,
            failed_at: now(),
        });
        match &job.source {
            Source::Outbox => {
                let store = self.service.store().clone();
                let id = job.entry.id.clone();
                let done = tokio::task::spawn_blocking(move || match dead {
                    Some(dead) => store.bury(dead),
                    None => store.mark_sent(&[id]),
                })
                .await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::error!(id = %job.entry.id, error = %error, "a finished request stays in the outbox (it will be sent again after a restart)");
                    }
                    Err(error) => tracing::error!(error = %error, "marking a delivery failed"),
                }
                lock(&self.queued).remove(&job.entry.id);
            }
            Source::Broker { ack, queue, .. } => {
                if let Some(dead) = &dead
                    && let Err(error) = queue.bury(dead).await
                {
                    // Not acknowledged either: the broker hands it out again.
                    tracing::warn!(id = %job.entry.id, error = %error, "a dead delivery could not be put into the dead queue");
                    return;
                }
                if !matches!(ack.ack().await, Ok(true)) {
                    tracing::warn!(id = %job.entry.id, "a finished request's acknowledgement was lost with its channel: the broker will hand it out again");
                }
            }
        }
    }
}

/// The `host:port` part of a request URL (its circuit's key).
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Provider error codes that mean "slow down" although the HTTP status does not say so
/// (Meta answers its rate limits with 400): retried like a 429.
const RATE_LIMIT_CODES: &[i64] = &[
    // Twilio: too many requests.
    20429, // Meta Graph: application and account rate limits, Cloud API throughput, pair rate.
    4, 17, 32, 613, 80007, 130429, 131056,
];

/// An answer turned into what to do next: 2xx delivered; 408, 425, 429, 5xx and the
/// providers' rate-limit codes retried; any other status refused for good, with the
/// provider's own code and text when its body gives them.
fn classify(answer: &http::Answer) -> Verdict {
    let status = answer.status;
    if (200..300).contains(&status) {
        return Verdict::Delivered;
    }
    let (code, text) = provider_error(&answer.body);
    let rate_limited = code
        .as_deref()
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| RATE_LIMIT_CODES.contains(&code));
    let reason = format!(
        "HTTP {status}{}{}",
        code.as_deref()
            .map(|code| format!(" code {code}"))
            .unwrap_or_default(),
        text.as_deref()
            .map(|text| format!(": {text}"))
            .unwrap_or_default()
    );
    if matches!(status, 408 | 425 | 429) || status >= 500 || rate_limited {
        return Verdict::Retry {
            after: answer.retry_after,
            reason,
        };
    }
    Verdict::Permanent(ProviderError {
        code: code.unwrap_or_else(|| status.to_string()).into(),
        text: text.unwrap_or(reason).into(),
    })
}

/// The provider's error code and message from a JSON error body: Twilio's `code` and
/// `message`, Meta's `error.code` and `error.error_data.details` (or `error.message`),
/// Chatwoot's and Genesys' `message`.
fn provider_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_owned();
        return (None, (!text.is_empty()).then_some(text));
    };
    let scalar = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let error = value.get("error").filter(|error| error.is_object());
    let source = error.unwrap_or(&value);
    let code = source.get("code").and_then(scalar);
    let text = source
        .pointer("/error_data/details")
        .and_then(scalar)
        .or_else(|| source.get("message").and_then(scalar))
        .or_else(|| value.get("message").and_then(scalar));
    (code, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> http::Answer {
        http::Answer {
            status,
            content_type: Some("application/json".to_owned()),
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_delivered_retried_or_refused_as_providers_mean_them() {
        assert_eq!(
            classify(&answer(201, r#"{"sid":"SM1"}"#)),
            Verdict::Delivered
        );
        assert!(matches!(classify(&answer(503, "")), Verdict::Retry { .. }));
        assert!(matches!(classify(&answer(429, "")), Verdict::Retry { .. }));
        // Meta's rate limits come as 400s.
        assert!(matches!(
            classify(&answer(
                400,
                r#"{"error":{"code":130429,"message":"Rate limit hit"}}"#
            )),
            Verdict::Retry { .. }
        ));
        // Twilio 21610: the recipient unsubscribed. Not retried; its code and text kept.
        let Verdict::Permanent(error) = classify(&answer(
            400,
            r#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#,
        )) else {
            panic!("21610 is permanent")
        };
        assert_eq!(&*error.code, "21610");
        assert_eq!(&*error.text, "Attempt to send to unsubscribed recipient");
        // WhatsApp 131047: outside the 24-hour window.
        let Verdict::Permanent(error) = classify(&answer(
            400,
            r#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."}}}"#,
        )) else {
            panic!("131047 is permanent")
        };
        assert_eq!(&*error.code, "131047");
        assert!(error.text.contains("24 hours"));
        assert!(matches!(
            classify(&answer(404, "not found")),
            Verdict::Permanent(_)
        ));
    }
}
