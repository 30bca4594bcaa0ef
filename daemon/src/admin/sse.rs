//! `GET /v1/stream`: the live stream as Server-Sent Events. Each subscriber gets the events of
//! the [`crate::stream::StreamHub`] it may see (decided there), with opaque ids
//! (`public.silent.index`) so that a reconnect with `Last-Event-ID` resumes from the hub's
//! window without gaps; when the window no longer reaches back that far, a `gap` event says so
//! (reload, then follow). The stream ends when the token that opened it expires, after a
//! `reauthenticate` event. Heartbeats (SSE comments) keep proxies from closing an idle stream.
//! A subscriber too slow to keep up is disconnected and resumes by reconnecting.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt as _};
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TokenExpiry;
use super::problem::Problem;
use super::{Shared, api};
use crate::engine::{Actor, Role};
use crate::stream::{StreamEvent, StreamId, StreamPayload};

const HEARTBEAT: Duration = Duration::from_secs(15);

pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// How long until `expiry` (zero when it has passed).
fn until(expiry: TokenExpiry) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(expiry.0).saturating_sub(now)
}

/// An event as SSE, its data in the API's wire types (the same shapes the REST routes answer).
fn event(event: &StreamEvent, view: StreamPayload) -> Event {
    let data = match view {
        StreamPayload::Conversation(summary) => {
            serde_json::to_string(&api::Conversation::from(summary))
        }
        StreamPayload::Timeline(entry) => serde_json::to_string(&api::TimelineItem {
            conversation: entry.conversation.to_string(),
            line: api::TimelineLine::from(&entry),
        }),
    };
    Event::default()
        .id(event.id.to_string())
        .event(event.kind())
        .data(data.unwrap_or_default())
}

/// Live changes to the conversations the caller may see, and the messages of those it monitors
/// or has joined (agents: their conversations and the whispers addressed to them).
#[utoipa::path(get, path = "/v1/stream", tag = "stream",
    params(("Last-Event-ID" = Option<String>, Header, description = "resume after this event id (an opaque string from an earlier event)")),
    responses((status = 200, description = "Server-Sent Events: `conversation` (a summary after a change), `timeline` (one timeline entry), `gap` (events were missed: reload), `reauthenticate` (the token expired; the stream ends: reconnect with a fresh token and `Last-Event-ID`)", content_type = "text/event-stream", body = String)))]
pub(super) async fn stream(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Extension(expiry): Extension<TokenExpiry>,
    headers: HeaderMap,
) -> Response {
    if !(actor.may_supervise() || actor.has(Role::Agent)) {
        return Problem::forbidden("the stream is for supervisors, admins and agents")
            .into_response();
    }
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(StreamId::parse);
    let subscription = context.service.hub().subscribe(after);
    let actor = Arc::new(actor);
    let mut first: Vec<Event> = Vec::new();
    if subscription.gap {
        first.push(Event::default().event("gap").data(
            "{\"detail\":\"events after your Last-Event-ID are no longer kept; reload the report\"}",
        ));
    }
    first.extend(
        subscription
            .replay
            .iter()
            .filter_map(|replayed| replayed.view_for(&actor).map(|view| event(replayed, view))),
    );
    let stop = context.service.stopping.clone();
    let expires = Box::pin(tokio::time::sleep(until(expiry)));
    let live = futures_util::stream::unfold(
        (subscription.live, actor, stop, expires, false),
        |(mut live, actor, stop, mut expires, expired)| async move {
            if expired {
                return None;
            }
            loop {
                let received = tokio::select! {
                    () = stop.cancelled() => return None,
                    // The token that opened the stream is no longer valid: say so, then end.
                    // The client reconnects with a fresh token and its Last-Event-ID.
                    () = &mut expires => {
                        let notice = Event::default().event("reauthenticate").data(
                            "{\"detail\":\"the token that opened this stream has expired; reconnect with a fresh token and Last-Event-ID\"}",
                        );
                        return Some((notice, (live, actor, stop, expires, true)));
                    }
                    received = live.recv() => received,
                };
                match received {
                    Ok(next) => {
                        if let Some(view) = next.view_for(&actor) {
                            let sse = event(&next, view);
                            return Some((sse, (live, actor, stop, expires, false)));
                        }
                    }
                    // Too slow: end the stream; the client reconnects with its Last-Event-ID
                    // and resumes from the window.
                    Err(RecvError::Lagged(missed)) => {
                        tracing::info!(missed, "a stream subscriber fell behind; disconnecting it");
                        return None;
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(futures_util::stream::iter(first).chain(live).map(Ok));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}
