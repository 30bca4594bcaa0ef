//! `GET /v1/stream`: the live stream as Server-Sent Events. Each subscriber gets the events of
//! the [`crate::stream::StreamHub`] it may see (decided there), with opaque ids
//! (`public.silent.index`) so that a reconnect with `Last-Event-ID` resumes from the hub's
//! window without gaps; when the window no longer reaches back that far, a `gap` event says so
//! (reload, then follow). The stream ends when the token that opened it expires, after a
//! `reauthenticate` event. Heartbeats (SSE comments) keep proxies from closing an idle stream.
//! A subscriber too slow to keep up is disconnected and resumes by reconnecting.
//!
//! Browsers read it with a `fetch` reader (which sends the `Authorization` header), or, where
//! only `EventSource` will do, with a single-use ticket from `POST /v1/stream/ticket` that
//! lives [`TICKET_TTL`]: a long-lived token never goes into a URL. An open stream counts as
//! its user being there, for the monitor lease ([`crate::attendance`]).

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
use crate::stream::{Cursor, StreamEvent, StreamPayload};

const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a stream ticket can be used.
pub(super) const TICKET_TTL: Duration = Duration::from_secs(30);

pub(super) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(stream))
        .routes(routes!(ticket))
}

/// Stream tickets issued and not yet used.
pub(super) struct Tickets {
    tokens: super::tokens::TokenSource,
    issued: std::sync::Mutex<std::collections::HashMap<String, Issued>>,
}

struct Issued {
    actor: Actor,
    expiry: TokenExpiry,
    at: std::time::Instant,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
    }
}

impl Default for Tickets {
    fn default() -> Self {
        Self {
            tokens: super::tokens::TokenSource::new(),
            issued: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl Tickets {
    fn issue(&self, actor: Actor, expiry: TokenExpiry) -> String {
        let ticket = self.tokens.next();
        let mut issued = self
            .issued
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        issued.retain(|_, old| old.at.elapsed() < TICKET_TTL);
        issued.insert(
            ticket.clone(),
            Issued {
                actor,
                expiry,
                at: std::time::Instant::now(),
            },
        );
        ticket
    }

    /// The caller a ticket stands for, once: a ticket is gone after its first use.
    pub(super) fn redeem(&self, ticket: &str) -> Option<(Actor, TokenExpiry)> {
        let mut issued = self
            .issued
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let found = issued.remove(ticket)?;
        (found.at.elapsed() < TICKET_TTL).then_some((found.actor, found.expiry))
    }
}

/// A single-use ticket that opens one stream as the caller (`GET /v1/stream?ticket=…`), for
/// browsers whose `EventSource` cannot send a header. It lives 30 seconds; the stream it opens
/// ends when the token that asked for it expires.
#[utoipa::path(post, path = "/v1/stream/ticket", tag = "stream",
    responses((status = 200, description = "the ticket", body = api::StreamTicket)))]
pub(super) async fn ticket(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Extension(expiry): Extension<TokenExpiry>,
) -> Response {
    if !(actor.may_supervise() || actor.has(Role::Agent)) {
        return Problem::forbidden("the stream is for supervisors, admins and agents")
            .into_response();
    }
    let ticket = context.tickets.issue(actor, expiry);
    super::json(
        axum::http::StatusCode::OK,
        &api::StreamTicket {
            ticket,
            expires_in: TICKET_TTL.as_secs(),
        },
    )
}

/// How long until `expiry` (zero when it has passed).
fn until(expiry: TokenExpiry) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(expiry.0).saturating_sub(now)
}

/// What a subscriber at `cursor` receives of `event`, moving its cursor: the event as SSE when
/// it is for `actor`, with the whole cursor as its id (on a cluster, one id per partition, so
/// that the stream resumes on any node). An event not for `actor` moves the cursor only when
/// its record is public: a subscriber's ids never carry a silent record's count that it could
/// not see (silent monitoring stays silent), and resuming replays such records, filtered again.
fn sent(event: &StreamEvent, actor: &Actor, cursor: &mut Cursor) -> Option<Event> {
    let Some(view) = event.view_for(actor) else {
        if event.id.position.silent == 0 {
            cursor.pass(event);
        }
        return None;
    };
    cursor.pass(event);
    Some(sse_event(event, view, cursor))
}

/// An event as SSE, its data in the API's wire types (the same shapes the REST routes answer).
fn sse_event(event: &StreamEvent, view: StreamPayload, cursor: &Cursor) -> Event {
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
        .id(cursor.to_string())
        .event(event.kind())
        .data(data.unwrap_or_default())
}

/// Live changes to the conversations the caller may see, and the messages of those it monitors
/// or has joined (agents: their conversations and the whispers addressed to them).
#[utoipa::path(get, path = "/v1/stream", tag = "stream",
    params(("Last-Event-ID" = Option<String>, Header, description = "resume after this event id (an opaque string from an earlier event, or a report's `stream_id`)"),
           ("ticket" = Option<String>, Query, description = "instead of the Authorization header: a ticket from POST /v1/stream/ticket (single use, 30 s)"),
           ("last_event_id" = Option<String>, Query, description = "as Last-Event-ID, for a first EventSource connection that cannot set the header")),
    responses((status = 200, description = "Server-Sent Events: `conversation` (a summary after a change), `timeline` (one timeline entry), `gap` (events were missed: reload), `reauthenticate` (the token expired; the stream ends: reconnect with a fresh token and `Last-Event-ID`)", content_type = "text/event-stream", body = String)))]
pub(super) async fn stream(
    State(context): State<Shared>,
    Extension(actor): Extension<Actor>,
    Extension(expiry): Extension<TokenExpiry>,
    headers: HeaderMap,
    params: super::query::Params,
) -> Response {
    if !(actor.may_supervise() || actor.has(Role::Agent)) {
        return Problem::forbidden("the stream is for supervisors, admins and agents")
            .into_response();
    }
    // EventSource sends the header itself when it reconnects; its first connection can only
    // name a position in the URL.
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            params
                .one("last_event_id")
                .ok()
                .flatten()
                .map(str::to_owned)
        })
        .and_then(|text| Cursor::parse(&text, context.service.hub().partitions()));
    let present = context
        .service
        .attendance()
        .stream_opened(actor.id.as_str());
    let subscription = context.service.hub().subscribe(after);
    let actor = Arc::new(actor);
    let mut first: Vec<Event> = Vec::new();
    if subscription.gap {
        first.push(Event::default().event("gap").data(
            "{\"detail\":\"events after your Last-Event-ID are no longer kept; reload the report\"}",
        ));
    }
    let mut cursor = subscription.cursor;
    first.extend(
        subscription
            .replay
            .iter()
            .filter_map(|replayed| sent(replayed, &actor, &mut cursor)),
    );
    let stop = context.service.stopping.clone();
    let expires = Box::pin(tokio::time::sleep(until(expiry)));
    let live = futures_util::stream::unfold(
        // `present` rides in the state, held as long as the stream is: the user is there.
        (
            subscription.live,
            actor,
            stop,
            expires,
            false,
            present,
            cursor,
        ),
        |(mut live, actor, stop, mut expires, expired, present, mut cursor)| async move {
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
                        return Some((notice, (live, actor, stop, expires, true, present, cursor)));
                    }
                    received = live.recv() => received,
                };
                match received {
                    Ok(next) => {
                        if let Some(sse) = sent(&next, &actor, &mut cursor) {
                            let state = (live, actor, stop, expires, false, present, cursor);
                            return Some((sse, state));
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
