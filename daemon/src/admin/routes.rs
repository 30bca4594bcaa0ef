//! Admin API handlers: operations (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`) and
//! `/v1` (reports, supervision commands, roster, plugins, inbound). Each command becomes one
//! engine [`Command`] submitted to the single writer; the answer comes after the commit.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::api::{self, ReportQuery};
use super::pages::{Page, Pinned};
use super::problem::Problem;
use super::query::{Params, invalid as invalid_query};
use super::{Shared, json};
use crate::engine::report::{ReportFilter, ReportSort};
use crate::engine::{
    Action, Actor, AgentId, AssignTarget, ChannelKind, Code, Command, ConversationId,
    ConversationState, Idempotency, JoinMode, Presence, QueueId, Role, TimelineEvent, Visibility,
};
use crate::metrics::family;
use crate::pipeline::{Completion, Disposition, Submission};
use crate::service::SubmitError;
use crate::transport::InboundMessage;

/// The operations routes (no token), each with its handler and its OpenAPI entry.
pub(super) fn operations() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// The `/v1` routes, each path written once with its handlers and their OpenAPI entries.
pub(super) fn v1() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(inbound))
        .routes(routes!(conversations))
        .routes(routes!(conversation))
        .routes(routes!(monitor, stop_monitor))
        .routes(routes!(whisper))
        .routes(routes!(join))
        .routes(routes!(barge))
        .routes(routes!(message))
        .routes(routes!(leave))
        .routes(routes!(assign))
        .routes(routes!(transfer))
        .routes(routes!(force_close))
        .routes(routes!(agents))
        .routes(routes!(presence))
        .routes(routes!(queues))
        .routes(routes!(plugins))
        .routes(routes!(reload))
        .routes(routes!(outbox))
        .routes(routes!(dead_deliveries))
        .routes(routes!(resend_dead_deliveries))
}

// ---- operations ----------------------------------------------------------------------------

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "alive", body = api::Health)))]
pub(super) async fn healthz() -> Response {
    json(
        StatusCode::OK,
        &api::Health {
            status: "ok".to_owned(),
        },
    )
}

/// Readiness: store, plugins and (if configured) the broker are usable.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "ready", body = api::ReadinessReport),
        (status = 503, description = "not ready; per-component status", body = api::ReadinessReport),
    ))]
pub(super) async fn readyz(State(context): State<Shared>) -> Response {
    let service = context.service.clone();
    let readiness = tokio::task::spawn_blocking(move || service.readiness()).await;
    let Ok(readiness) = readiness else {
        return Problem::unavailable("not-ready", "readiness check failed", 1).into_response();
    };
    let report = api::ReadinessReport {
        ready: readiness.ready,
        store: api::ComponentState {
            status: readiness.store.status.to_owned(),
            detail: readiness.store.detail,
        },
        broker: api::ComponentState {
            status: readiness.broker.status.to_owned(),
            detail: readiness.broker.detail,
        },
        plugins: readiness
            .plugins
            .into_iter()
            .map(|plugin| api::PluginHealth {
                id: plugin.id,
                health: plugin.health.as_str().to_owned(),
            })
            .collect(),
        cluster: readiness.cluster.map(|cluster| api::ClusterNode {
            node_id: cluster.node_id,
            partitions: cluster.partitions,
            owned: cluster
                .owned
                .into_iter()
                .map(|owned| api::OwnedPartition {
                    partition: owned.partition,
                    epoch: owned.epoch,
                })
                .collect(),
        }),
    };
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &report)
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(context): State<Shared>) -> Response {
    let service = &context.service;
    let backlog = i64::try_from(service.outbox_backlog()).unwrap_or(i64::MAX);
    service
        .metrics()
        .set_gauge(family::OUTBOX_BACKLOG, &[], backlog);
    let mut extra = String::new();
    let plugins = service.plugins();
    if !plugins.is_empty() {
        extra.push_str("# HELP switchboard_plugin_calls_total Plugin calls (decode and encode) by plugin.\n# TYPE switchboard_plugin_calls_total counter\n");
        for plugin in plugins {
            let stats = plugin.stats();
            extra.push_str(&format!(
                "switchboard_plugin_calls_total{{plugin=\"{}\"}} {}\n",
                crate::metrics::escape(plugin.id()),
                stats.calls.load(std::sync::atomic::Ordering::Relaxed)
            ));
        }
        extra.push_str("# HELP switchboard_plugin_failures_total Plugin calls that failed, by plugin and kind.\n# TYPE switchboard_plugin_failures_total counter\n");
        for plugin in plugins {
            let stats = plugin.stats();
            for (kind, counter) in [
                ("plugin-error", &stats.plugin_errors),
                ("trap", &stats.traps),
                ("timeout", &stats.timeouts),
                ("out-of-memory", &stats.out_of_memory),
                ("circuit-open", &stats.rejected_by_breaker),
            ] {
                extra.push_str(&format!(
                    "switchboard_plugin_failures_total{{plugin=\"{}\",kind=\"{kind}\"}} {}\n",
                    crate::metrics::escape(plugin.id()),
                    counter.load(std::sync::atomic::Ordering::Relaxed)
                ));
            }
        }
    }
    let mut response = service.metrics().render(&extra).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi() -> Response {
    json(StatusCode::OK, &super::openapi::document())
}

// ---- helpers --------------------------------------------------------------------------------

fn require_supervisor(actor: &Actor) -> Result<(), Problem> {
    if actor.may_supervise() {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "this route needs the supervisor or admin role",
        ))
    }
}

/// Parses a JSON body; an empty body is the type's default (`{}`).
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, Problem> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE)
        && !bytes.is_empty()
    {
        let content_type = content_type.to_str().unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!("bodies are application/json, not {content_type:?}"),
            ));
        }
    }
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|error| Problem::invalid_body(error.to_string()))
}

fn conversation_id(id: &str) -> Result<ConversationId, Problem> {
    ConversationId::parse(id).ok_or_else(|| Problem::conversation_not_found(id))
}

/// `Idempotency-Key` with a fingerprint of what was asked: the method and route, the resource
/// (the same key on another conversation is another request) and the body.
fn idempotency(
    headers: &HeaderMap,
    route: &str,
    resource: &str,
    bytes: &Bytes,
) -> Result<Option<Idempotency>, Problem> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|key| {
            !key.is_empty() && key.len() <= 255 && key.bytes().all(|byte| byte.is_ascii_graphic())
        })
        .ok_or_else(|| {
            Problem::invalid_body("`Idempotency-Key` must be 1 to 255 visible ASCII characters")
        })?;
    let mut fingerprinted = route.as_bytes().to_vec();
    fingerprinted.push(0);
    fingerprinted.extend_from_slice(resource.as_bytes());
    fingerprinted.push(0);
    // The body's meaning, not its bytes: the same JSON re-formatted (spacing, key order) is
    // the same request. A body that is not JSON is refused by the route anyway.
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(value) => canonical_json(&value, &mut fingerprinted),
        Err(_) => fingerprinted.extend_from_slice(bytes),
    }
    Ok(Some(Idempotency {
        key: key.into(),
        fingerprint: xxhash_rust::xxh3::xxh3_64(&fingerprinted),
    }))
}

/// Writes `value` with object keys sorted and no spacing, so that equal JSON writes equally.
fn canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(object) => {
            let mut entries: Vec<_> = object.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::Value::from(key.as_str()).to_string().as_bytes());
                out.push(b':');
                canonical_json(value, out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

/// Submits a command and answers with its committed outcome.
pub(super) async fn command(
    context: &Shared,
    actor: Actor,
    idempotency: Option<Idempotency>,
    action: Action,
    id: &str,
) -> Response {
    let sets_presence = matches!(action, Action::SetPresence { .. });
    let submitted = context
        .service
        .submit(Submission::Command(Command {
            actor,
            idempotency,
            action,
        }))
        .await;
    match submitted {
        Ok(Completion::Command(Ok(reply))) => {
            json(StatusCode::OK, &api::CommandResult::from(reply))
        }
        Ok(Completion::Command(Err(refusal))) => match refusal.code {
            // Exactly the answer for a conversation that does not exist.
            Code::NotFound | Code::UnknownConversation => {
                Problem::conversation_not_found(id).into_response()
            }
            // The path names the agent: an unknown one is a missing resource, not a bad body.
            Code::UnknownAgent if sets_presence => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-agent",
                format!("no agent {id:?}"),
            )
            .into_response(),
            _ => Problem::from(refusal).into_response(),
        },
        Ok(Completion::Inbound(_)) => {
            Problem::internal(&"a command completed as inbound").into_response()
        }
        Err(error) => submit_failed(error).into_response(),
    }
}

fn submit_failed(error: SubmitError) -> Problem {
    match error {
        SubmitError::Busy => Problem::unavailable("busy", error.to_string(), 1),
        SubmitError::Stopping => Problem::unavailable("stopping", error.to_string(), 5),
        SubmitError::Store(_) => Problem::internal(&error),
        SubmitError::Unanswered => Problem::unavailable("unanswered", error.to_string(), 1),
        SubmitError::Unavailable(_) => Problem::unavailable("unavailable", error.to_string(), 2),
    }
}

macro_rules! try_problem {
    ($expression:expr) => {
        match $expression {
            Ok(value) => value,
            Err(problem) => return Problem::into_response(problem),
        }
    };
}

// ---- reads ----------------------------------------------------------------------------------

/// The ongoing conversations report: the report window (24 h by default), not closed, the
/// caller's teams; filtered, sorted and paged, each row with the caller's `actions`.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ReportQuery),
    responses((status = 200, description = "one page of ongoing conversations", body = api::ConversationList)))]
pub(super) async fn conversations(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    params: Params,
) -> Response {
    try_problem!(require_supervisor(&actor));
    let filter = try_problem!(report_filter(&params, &actor, context.report_window));
    let limit = try_problem!(params.limit("limit", 100, 1000));
    let page = match try_problem!(params.one("cursor")) {
        Some(cursor) => try_problem!(context.snapshots.resume(actor.id.as_str(), cursor, limit)),
        None => {
            let (rows, pinned) = context
                .service
                .read(|engine| {
                    let now = crate::clock::now();
                    let rows: Vec<api::Conversation> = engine
                        .ongoing(&actor, &filter, now)
                        .into_iter()
                        .map(|summary| {
                            let actions = engine.actions(&actor, summary.id, now);
                            api::Conversation::from(summary).with_actions(&actions)
                        })
                        .collect();
                    (rows, pinned_at(context.service.hub(), now))
                })
                .await;
            context
                .snapshots
                .begin(actor.id.as_str(), rows, pinned, limit)
        }
    };
    json(
        StatusCode::OK,
        &api::ConversationList {
            count: page.rows.len(),
            conversations: page.rows,
            total: page.total,
            next_cursor: page.next_cursor,
            stream_id: page.pinned.stream_id.unwrap_or_default(),
            server_time: page.pinned.server_time,
        },
    )
}

/// What a read reflects: the stream's head (every event up to it is in the answer) and the
/// server's clock. Read under the engine's lock, which the writer holds while it commits and
/// publishes, so the two agree.
fn pinned_at(hub: &crate::stream::StreamHub, now: crate::engine::Millis) -> Pinned {
    Pinned {
        stream_id: Some(hub.head().to_string()),
        server_time: now.rfc3339(),
    }
}

/// The report's filters and order from the query string.
fn report_filter(
    params: &Params,
    actor: &Actor,
    window: std::time::Duration,
) -> Result<ReportFilter, Problem> {
    let states: Vec<api::OngoingState> =
        params.choices("state", &["open", "active", "waiting", "wrap-up"])?;
    let channels: Vec<api::Channel> =
        params.choices("channel", &["web", "sms", "whatsapp", "messaging", "voice"])?;
    let supervised_by: Option<api::SupervisedBy> = params.choice("supervised_by", &["me"])?;
    let sort = match params.one("sort")? {
        None => ReportSort::NEWEST_FIRST,
        Some(text) => ReportSort::parse(text).ok_or_else(|| {
            invalid_query(
                "sort",
                "must be one of created, wait, handle, sentiment, each optionally with a leading -",
            )
        })?,
    };
    Ok(ReportFilter {
        states: states.into_iter().map(ConversationState::from).collect(),
        queues: params.all("queue").into_iter().map(QueueId::new).collect(),
        channels: channels.into_iter().map(ChannelKind::from).collect(),
        agents: params.all("agent").into_iter().map(AgentId::new).collect(),
        supervised_by: supervised_by.map(|_| actor.id.clone()),
        search: params
            .one("q")?
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(str::to_owned),
        sort,
        window: Some(i64::try_from(window.as_millis()).unwrap_or(i64::MAX)),
    })
}

/// One conversation with participants and timeline (whispers only for the whisperer, the
/// agent and admins).
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 200, description = "the conversation", body = api::ConversationDetail)))]
pub(super) async fn conversation(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    try_problem!(require_supervisor(&actor));
    let store = context.service.store().clone();
    // Everything under the engine's read lock, the timeline included (a short store read):
    // the writer commits and publishes under the write lock, so the answer and its
    // `stream_id` agree and a stream resumed from it repeats no timeline line.
    let found = context
        .service
        .read(|engine| {
            let now = crate::clock::now();
            let summary = engine.find(&actor, &id, now)?;
            let conversation = engine.state().conversation(summary.id)?;
            let participants = participants(conversation);
            let actions = engine.actions(&actor, summary.id, now);
            let targets = targets(engine, &actor, summary.id, now);
            let timeline = store.timeline(summary.id);
            Some((
                summary,
                participants,
                actions,
                targets,
                timeline,
                pinned_at(context.service.hub(), now),
            ))
        })
        .await;
    let Some((summary, participants, actions, targets, timeline, pinned)) = found else {
        return Problem::conversation_not_found(&id).into_response();
    };
    let timeline = match timeline {
        Ok(timeline) => timeline,
        Err(error) => return Problem::internal(&error).into_response(),
    };
    let me = actor.id.as_str();
    let agent = summary
        .agent
        .as_ref()
        .map(|agent| agent.as_str().to_owned());
    let timeline = timeline
        .iter()
        .filter(|entry| match &entry.event {
            TimelineEvent::Whisper { supervisor, .. } => {
                actor.is_admin() || supervisor.as_str() == me || agent.as_deref() == Some(me)
            }
            _ => entry.visibility != Visibility::Whisper || actor.is_admin(),
        })
        .map(api::TimelineLine::from)
        .collect();
    json(
        StatusCode::OK,
        &api::ConversationDetail {
            conversation: api::Conversation::from(summary).with_actions(&actions),
            participants,
            timeline,
            targets,
            stream_id: pinned.stream_id.unwrap_or_default(),
            server_time: pinned.server_time,
        },
    )
}

fn participants(conversation: &crate::engine::Conversation) -> Vec<api::Participant> {
    let mut participants = vec![api::Participant {
        id: conversation.customer.id.to_string(),
        role: "customer".to_owned(),
        mode: None,
    }];
    participants.extend(conversation.agent.iter().map(|agent| api::Participant {
        id: agent.as_str().to_owned(),
        role: "agent".to_owned(),
        mode: None,
    }));
    participants.extend(
        conversation
            .consultants
            .iter()
            .map(|agent| api::Participant {
                id: agent.as_str().to_owned(),
                role: "consultant".to_owned(),
                mode: None,
            }),
    );
    participants.extend(conversation.seats.iter().map(|seat| api::Participant {
        id: seat.supervisor.as_str().to_owned(),
        role: "supervisor".to_owned(),
        mode: Some(seat.mode.as_str().to_owned()),
    }));
    participants
}

/// Assign and transfer targets with their verdicts, agents shown with presence and capacity.
fn targets(
    engine: &crate::engine::Engine,
    actor: &Actor,
    id: ConversationId,
    now: crate::engine::Millis,
) -> api::Targets {
    let found = engine.targets(actor, id, now);
    let agent = |target: &crate::engine::report::TargetVerdict<AgentId>| {
        let roster = engine
            .state()
            .agents()
            .find(|agent| agent.id == target.target);
        api::AgentTarget {
            id: target.target.as_str().to_owned(),
            name: roster.map_or_else(String::new, |agent| agent.name.to_string()),
            presence: roster.map_or_else(String::new, |agent| agent.presence.as_str().to_owned()),
            capacity_used: roster.map_or(0, |agent| agent.used),
            capacity_total: roster.map_or(0, |agent| agent.capacity),
            verdict: (&target.verdict).into(),
        }
    };
    api::Targets {
        assign_agents: found.assign_agents.iter().map(agent).collect(),
        assign_queues: found
            .assign_queues
            .iter()
            .map(|target| api::QueueTarget {
                id: target.target.as_str().to_owned(),
                name: engine
                    .queue(target.target.as_str())
                    .map_or_else(String::new, |queue| queue.name.to_string()),
                verdict: (&target.verdict).into(),
            })
            .collect(),
        transfer_agents: found.transfer_agents.iter().map(agent).collect(),
    }
}

/// Agents of the caller's teams: presence, capacity, queues; paged.
#[utoipa::path(get, path = "/v1/agents", tag = "roster", params(api::PageQuery),
    responses((status = 200, description = "agents", body = api::AgentList)))]
pub(super) async fn agents(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    params: Params,
) -> Response {
    try_problem!(require_supervisor(&actor));
    let page = try_problem!(
        roster_page(&context, &actor, &params, |engine, actor, _| {
            engine
                .agents_for(actor)
                .into_iter()
                .map(api::Agent::from)
                .collect()
        })
        .await
    );
    json(
        StatusCode::OK,
        &api::AgentList {
            agents: page.rows,
            total: page.total,
            next_cursor: page.next_cursor,
            server_time: page.pinned.server_time,
        },
    )
}

/// Queues of the caller's teams, with waiting counts and waits; paged.
#[utoipa::path(get, path = "/v1/queues", tag = "roster", params(api::PageQuery),
    responses((status = 200, description = "queues", body = api::QueueList)))]
pub(super) async fn queues(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    params: Params,
) -> Response {
    try_problem!(require_supervisor(&actor));
    let page = try_problem!(
        roster_page(&context, &actor, &params, |engine, actor, now| {
            engine
                .queues_for(actor, now)
                .into_iter()
                .map(api::Queue::from)
                .collect()
        })
        .await
    );
    json(
        StatusCode::OK,
        &api::QueueList {
            queues: page.rows,
            total: page.total,
            next_cursor: page.next_cursor,
            server_time: page.pinned.server_time,
        },
    )
}

/// One page of a roster list: a new walk computes `list`, a cursor continues one.
async fn roster_page<T: Clone + Send + Sync + 'static>(
    context: &Shared,
    actor: &Actor,
    params: &Params,
    list: impl FnOnce(&crate::engine::Engine, &Actor, crate::engine::Millis) -> Vec<T>,
) -> Result<Page<T>, Problem> {
    let limit = params.limit("limit", 100, 1000)?;
    if let Some(cursor) = params.one("cursor")? {
        return context.snapshots.resume(actor.id.as_str(), cursor, limit);
    }
    let (rows, pinned) = context
        .service
        .read(|engine| {
            let now = crate::clock::now();
            (
                list(engine, actor, now),
                pinned_at(context.service.hub(), now),
            )
        })
        .await;
    Ok(context
        .snapshots
        .begin(actor.id.as_str(), rows, pinned, limit))
}

// ---- supervision commands -----------------------------------------------------------------

macro_rules! command_route {
    ($name:ident, $path:literal, $summary:literal, $body:ty, |$id:ident, $parsed:ident| $action:expr) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, tag = "supervision",
            params(("id" = String, Path, description = "conversation id"),
                   ("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for the same key and body", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
            request_body(content = $body, content_type = "application/json"),
            responses((status = 200, description = "done", body = api::CommandResult)))]
        pub(super) async fn $name(
            State(context): State<Shared>,
            Extension(actor): Extension<Actor>,
            Path(id): Path<String>,
            headers: HeaderMap,
            bytes: Bytes,
        ) -> Response {
            let idempotency = try_problem!(idempotency(&headers, concat!("POST ", $path), &id, &bytes));
            let $parsed: $body = try_problem!(body(&headers, &bytes));
            let $id = try_problem!(conversation_id(&id));
            let action = try_problem!($action);
            command(&context, actor, idempotency, action, &id).await
        }
    };
}

/// An empty JSON object (commands without a body accept `{}` or nothing).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

command_route!(
    monitor,
    "/v1/conversations/{id}/monitor",
    "Start silent monitoring.",
    Empty,
    |conversation, _body| Ok::<_, Problem>(Action::Monitor { conversation })
);

/// Stop silent monitoring.
#[utoipa::path(delete, path = "/v1/conversations/{id}/monitor", tag = "supervision",
    params(("id" = String, Path, description = "conversation id"),
           ("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for the same key", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    responses((status = 200, description = "done", body = api::CommandResult)))]
pub(super) async fn stop_monitor(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let idempotency = try_problem!(idempotency(
        &headers,
        "DELETE /v1/conversations/{id}/monitor",
        &id,
        &Bytes::new()
    ));
    let conversation = try_problem!(conversation_id(&id));
    command(
        &context,
        actor,
        idempotency,
        Action::StopMonitor { conversation },
        &id,
    )
    .await
}

command_route!(
    whisper,
    "/v1/conversations/{id}/whisper",
    "A message only the agent sees.",
    api::WhisperBody,
    |conversation, body| non_empty(&body.text).map(|text| Action::Whisper { conversation, text })
);

command_route!(
    join,
    "/v1/conversations/{id}/join",
    "Join as consultant (internal by default, or public).",
    api::JoinBody,
    |conversation, body| Ok::<_, Problem>(Action::Join {
        conversation,
        mode: match body.mode {
            api::JoinModeBody::Internal => JoinMode::Internal,
            api::JoinModeBody::Public => JoinMode::Public,
        },
    })
);

command_route!(
    barge,
    "/v1/conversations/{id}/barge",
    "Take part publicly: the customer sees and hears the supervisor.",
    Empty,
    |conversation, _body| Ok::<_, Problem>(Action::Barge { conversation })
);

command_route!(
    message,
    "/v1/conversations/{id}/messages",
    "Write into the conversation (internal: agents and supervisors; public: the customer too).",
    api::MessageBody,
    |conversation, body| non_empty(&body.text).map(|text| Action::Message {
        conversation,
        text,
        visibility: match body.visibility {
            api::VisibilityBody::Internal => Visibility::Internal,
            api::VisibilityBody::Public => Visibility::Public,
        },
    })
);

command_route!(
    leave,
    "/v1/conversations/{id}/leave",
    "Leave whatever role the caller has in the conversation.",
    Empty,
    |conversation, _body| Ok::<_, Problem>(Action::Leave { conversation })
);

command_route!(
    assign,
    "/v1/conversations/{id}/assign",
    "Assign to an agent (it becomes active) or a queue (it stays open).",
    api::AssignBody,
    |conversation, body| {
        let target = match (&body.agent, &body.queue) {
            (Some(agent), None) if !agent.is_empty() => {
                Ok(AssignTarget::Agent(AgentId::new(agent.as_str())))
            }
            (None, Some(queue)) if !queue.is_empty() => {
                Ok(AssignTarget::Queue(QueueId::new(queue.as_str())))
            }
            _ => Err(Problem::invalid_body(
                "give exactly one of `agent` and `queue`",
            )),
        };
        target.map(|target| Action::Assign {
            conversation,
            target,
            override_presence: body.override_presence,
            override_capacity: body.override_capacity,
        })
    }
);

command_route!(
    transfer,
    "/v1/conversations/{id}/transfer",
    "Transfer an active or waiting conversation to another agent.",
    api::TransferBody,
    |conversation, body| if body.agent.is_empty() {
        Err(Problem::invalid_body("`agent` is empty"))
    } else {
        Ok(Action::Transfer {
            conversation,
            agent: AgentId::new(body.agent.as_str()),
        })
    }
);

command_route!(
    force_close,
    "/v1/conversations/{id}/force-close",
    "End the conversation for everyone (`confirm: true` required).",
    api::ForceCloseBody,
    |conversation, body| Ok::<_, Problem>(Action::ForceClose {
        conversation,
        reason: body.reason.map(String::into_boxed_str),
        confirm: body.confirm,
    })
);

fn non_empty(text: &str) -> Result<Arc<str>, Problem> {
    if text.trim().is_empty() {
        Err(Problem::invalid_body("`text` is empty"))
    } else {
        Ok(Arc::from(text))
    }
}

/// Set an agent's presence: the agent itself, an admin, or a channel gateway (`ingest`).
#[utoipa::path(put, path = "/v1/agents/{id}/presence", tag = "roster",
    params(("id" = String, Path, description = "agent id"),
           ("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for the same key and body", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    request_body(content = api::PresenceBody, content_type = "application/json"),
    responses((status = 200, description = "done", body = api::CommandResult)))]
pub(super) async fn presence(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let allowed = actor.is_admin()
        || actor.has(Role::Ingest)
        || (actor.has(Role::Agent) && actor.id.as_str() == id);
    if !allowed {
        return Problem::forbidden(
            "only the agent itself, an admin or a gateway (ingest) sets presence",
        )
        .into_response();
    }
    let idempotency = try_problem!(idempotency(
        &headers,
        "PUT /v1/agents/{id}/presence",
        &id,
        &bytes
    ));
    let parsed: api::PresenceBody = try_problem!(body(&headers, &bytes));
    let Some(presence) = Presence::parse(&parsed.presence) else {
        let known: Vec<&str> = Presence::ALL.iter().map(|p| p.as_str()).collect();
        return Problem::invalid_body(format!(
            "presence {:?}: one of {}",
            parsed.presence,
            known.join(", ")
        ))
        .into_response();
    };
    let action = Action::SetPresence {
        agent: AgentId::new(id.as_str()),
        presence,
    };
    command(&context, actor, idempotency, action, &id).await
}

// ---- plugins --------------------------------------------------------------------------------

fn plugin_info(plugin: &crate::plugin::Plugin) -> api::PluginInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let description = plugin.description();
    let stats = plugin.stats();
    let calls = stats.calls.load(Relaxed);
    api::PluginInfo {
        id: plugin.id().to_owned(),
        channel: description.channel.as_str().to_owned(),
        version: description.version,
        api_version: description.api_version,
        hash: plugin.version_hash(),
        voice_controls: plugin.voice_controls(),
        webhook_signed: plugin.signed(),
        secrets: plugin.secret_names(),
        health: plugin.health().as_str().to_owned(),
        counters: api::PluginCounters {
            decodes: stats.decodes.load(Relaxed),
            encodes: stats.encodes.load(Relaxed),
            plugin_errors: stats.plugin_errors.load(Relaxed),
            traps: stats.traps.load(Relaxed),
            timeouts: stats.timeouts.load(Relaxed),
            out_of_memory: stats.out_of_memory.load(Relaxed),
            rejected_by_breaker: stats.rejected_by_breaker.load(Relaxed),
            reloads: stats.reloads.load(Relaxed),
            mean_call_micros: if calls == 0 {
                0.0
            } else {
                stats.call_nanos.load(Relaxed) as f64 / calls as f64 / 1000.0
            },
        },
    }
}

/// Loaded plugins with version, health and counters (admin).
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins",
    responses((status = 200, description = "plugins", body = api::PluginList)))]
pub(super) async fn plugins(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
) -> Response {
    if !actor.is_admin() {
        return Problem::forbidden("plugins are for admins").into_response();
    }
    json(
        StatusCode::OK,
        &api::PluginList {
            plugins: context
                .service
                .plugins()
                .iter()
                .map(|p| plugin_info(p))
                .collect(),
        },
    )
}

/// Hot reload: the plugin's file is loaded again and swapped in atomically after a smoke test;
/// calls in flight finish on the old version (admin).
#[utoipa::path(post, path = "/v1/plugins/{id}/reload", tag = "plugins",
    params(("id" = String, Path, description = "plugin id")),
    responses((status = 200, description = "reloaded", body = api::PluginInfo)))]
pub(super) async fn reload(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if !actor.is_admin() {
        return Problem::forbidden("plugins are for admins").into_response();
    }
    let Some(plugin) = context
        .service
        .plugins()
        .iter()
        .find(|plugin| plugin.id() == id)
        .cloned()
    else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!("no plugin {id:?}"),
        )
        .into_response();
    };
    let reloaded = {
        let plugin = plugin.clone();
        let file = context.config_file.clone();
        tokio::task::spawn_blocking(move || match file {
            // Settings and secrets as the configuration (and the files and variables it
            // names) says now: a rotated secret takes effect without a restart.
            Some(file) => {
                let config = crate::config::load(&file).map_err(|error| error.to_string())?;
                let configured = config
                    .plugins
                    .iter()
                    .find(|configured| configured.id == plugin.id())
                    .ok_or_else(|| {
                        "the configuration no longer names this plugin; restart to remove it"
                            .to_owned()
                    })?;
                plugin
                    .reload_with(crate::plugin::PluginSettings::from_config(configured))
                    .map_err(|error| error.to_string())
            }
            None => plugin.reload().map_err(|error| error.to_string()),
        })
        .await
    };
    match reloaded {
        Ok(Ok(_)) => json(StatusCode::OK, &plugin_info(&plugin)),
        Ok(Err(error)) => Problem::new(
            StatusCode::CONFLICT,
            "reload-failed",
            format!("the current version stays: {error}"),
        )
        .into_response(),
        Err(error) => Problem::internal(&error).into_response(),
    }
}

/// The outbox in commit order: what was (or, on the embedded transport, would be) published,
/// with routing key and CloudEvents type (admin). On RabbitMQ it holds what the broker has not
/// confirmed yet; on the embedded transport the newest 10 000 entries.
#[utoipa::path(get, path = "/v1/outbox", tag = "plugins", params(api::OutboxQuery),
    responses((status = 200, description = "outbox entries", body = api::OutboxPage)))]
pub(super) async fn outbox(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    params: Params,
) -> Response {
    if !actor.is_admin() {
        return Problem::forbidden("the outbox is for admins").into_response();
    }
    let limit = try_problem!(params.limit("limit", 100, 1000));
    let after = try_problem!(params.one("after")).map(str::to_owned);
    if let Some(after) = &after
        && !crate::store::is_outbox_id(after)
    {
        return invalid_query(
            "after",
            "must be an outbox entry id (a page's `next_after`)",
        )
        .into_response();
    }
    let store = context.service.store().clone();
    let page =
        tokio::task::spawn_blocking(move || store.outbox_after(after.as_deref(), limit)).await;
    match page {
        Ok(Ok(entries)) => json(
            StatusCode::OK,
            &api::OutboxPage {
                next_after: entries.last().map(|entry| entry.id.clone()),
                entries: entries.into_iter().map(api::OutboxItem::from).collect(),
            },
        ),
        Ok(Err(error)) => Problem::internal(&error).into_response(),
        Err(error) => Problem::internal(&error).into_response(),
    }
}

/// Provider requests the delivery worker gave up on, oldest first, each with the provider's
/// code and text (admin). Embedded, they are kept in the store; on RabbitMQ, in the dead-letter
/// queue (read without taking them).
#[utoipa::path(get, path = "/v1/deliveries/dead", tag = "plugins", params(api::DeadQuery),
    responses((status = 200, description = "dead deliveries", body = api::DeadDeliveries),
              (status = 409, description = "the delivery worker is off: `delivery-disabled`")))]
pub(super) async fn dead_deliveries(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    params: Params,
) -> Response {
    if !actor.is_admin() {
        return Problem::forbidden("dead deliveries are for admins").into_response();
    }
    let limit = try_problem!(params.limit("limit", 100, 1000));
    match context.dead_letters.list(limit).await {
        Ok(dead) => json(
            StatusCode::OK,
            &api::DeadDeliveries {
                deliveries: dead.into_iter().map(api::DeadDeliveryItem::from).collect(),
            },
        ),
        Err(error) => dead_letters_problem(&error).into_response(),
    }
}

/// Sends dead deliveries again (admin): those whose ids the body lists, or all of them with
/// `{}`. Answered once they are durably back in the delivery worker's queue (the
/// outbox, or `switchboard.delivery`); the worker then tries each afresh.
#[utoipa::path(post, path = "/v1/deliveries/dead/resend", tag = "plugins",
    request_body(content = api::ResendBody, content_type = "application/json"),
    responses((status = 200, description = "sent again", body = api::Resent),
              (status = 409, description = "the delivery worker is off: `delivery-disabled`")))]
pub(super) async fn resend_dead_deliveries(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    if !actor.is_admin() {
        return Problem::forbidden("dead deliveries are for admins").into_response();
    }
    // Explicit, as the schema says: an empty request must not resend everything by accident.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Problem::invalid_body(
            "a JSON body is required: {\"ids\": [...]} for those, {} for all".to_owned(),
        )
        .into_response();
    }
    let parsed: api::ResendBody = try_problem!(body(&headers, &bytes));
    match context.dead_letters.resend(parsed.ids).await {
        Ok(resent) => json(StatusCode::OK, &api::Resent { resent }),
        Err(error) => dead_letters_problem(&error).into_response(),
    }
}

fn dead_letters_problem(error: &crate::delivery::dead::DeadLettersError) -> Problem {
    use crate::delivery::dead::DeadLettersError;
    match error {
        DeadLettersError::Disabled => {
            Problem::new(StatusCode::CONFLICT, "delivery-disabled", error.to_string())
        }
        DeadLettersError::Unavailable => {
            Problem::unavailable("broker-unavailable", error.to_string(), 5)
        }
        DeadLettersError::Failed(reason) => Problem::internal(reason),
    }
}

// ---- inbound --------------------------------------------------------------------------------

/// A raw provider payload, exactly as an AMQP inbound message (role `ingest` or `admin`).
/// Answered once the events it became are durable. `Idempotency-Key` (or `Message-Id`)
/// deduplicates a resent payload.
#[utoipa::path(post, path = "/v1/inbound/{plugin}", tag = "inbound",
    params(("plugin" = String, Path, description = "plugin id, or `canonical`"),
           ("Idempotency-Key" = Option<String>, Header, description = "deduplication key (as the AMQP message_id)", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    request_body(description = "the provider payload, byte for byte; for `canonical`, a canonical event", content(
        (api::CanonicalEvent = "application/json"),
        (String = "*/*"),
    )),
    responses((status = 202, description = "durable", body = api::InboundAccepted)))]
pub(super) async fn inbound(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Path(plugin): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    bytes: Bytes,
) -> Response {
    if !(actor.has(Role::Ingest) || actor.is_admin()) {
        return Problem::forbidden("posting provider payloads needs the ingest role")
            .into_response();
    }
    if plugin != "canonical" && !context.service.plugins().iter().any(|p| p.id() == plugin) {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-plugin",
            format!("no plugin {plugin:?} is configured"),
        )
        .into_response();
    }
    let message = inbound_message(&plugin, &headers, &uri, bytes);
    match context.service.submit(Submission::Inbound(message)).await {
        Ok(Completion::Inbound(Disposition::Done {
            events,
            duplicates,
            conversations,
        })) => json(
            StatusCode::ACCEPTED,
            &api::InboundAccepted {
                events,
                duplicates,
                duplicate: events > 0 && duplicates == events,
                conversations: conversations.iter().map(ToString::to_string).collect(),
            },
        ),
        Ok(Completion::Inbound(Disposition::DeadLetter { code, detail })) => {
            tracing::warn!(plugin = %plugin, code = %code, detail = %crate::telemetry::content(&detail), "inbound payload refused");
            let status = match code.as_str() {
                // The plugin failed (trap, budget, memory, breaker): the payload may be fine.
                code if code.starts_with("plugin-") && code != "plugin-config" => {
                    StatusCode::BAD_GATEWAY
                }
                "payload-too-large" => StatusCode::PAYLOAD_TOO_LARGE,
                // What cannot be true of the payload, whatever the state.
                "invalid-payload" | "unauthorized" | "unsupported" | "plugin-config"
                | "unknown-plugin" | "channel-mismatch" | "not-in-team" | "unknown-agent"
                | "unknown-queue" => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::CONFLICT,
            };
            Problem::new(status, &code, detail).into_response()
        }
        Ok(Completion::Command(_)) => {
            Problem::internal(&"inbound completed as a command").into_response()
        }
        Err(error) => submit_failed(error).into_response(),
    }
}

/// The HTTP request as an inbound message: headers lowercased (without the bearer token), and
/// `switchboard-url` the URL the provider called (signature schemes sign it): the
/// `switchboard-url` header if a gateway set one, else rebuilt from `X-Forwarded-Proto`/`Host`.
fn inbound_message(
    plugin: &str,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    bytes: Bytes,
) -> InboundMessage {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .filter_map(|(name, value)| {
            Some((
                name.as_str().to_ascii_lowercase(),
                value.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    if !pairs.iter().any(|(name, _)| name == "switchboard-url") {
        let header_value = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let scheme = header_value("x-forwarded-proto").unwrap_or_else(|| "http".to_owned());
        let host = header_value("x-forwarded-host")
            .or_else(|| header_value("host"))
            .unwrap_or_else(|| "localhost".to_owned());
        let path = uri.path_and_query().map_or("/", |path| path.as_str());
        pairs.push((
            "switchboard-url".to_owned(),
            format!("{scheme}://{host}{path}"),
        ));
    }
    let message_id = ["idempotency-key", "message-id"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|value| value.to_str().ok()))
        .map(|id| format!("http:{id}"));
    InboundMessage {
        ack: None,
        delivery_tag: 0,
        routing_key: plugin.to_owned(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        message_id,
        redelivered: false,
        headers: pairs,
        body: bytes.to_vec(),
    }
}
