//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations and
//! the wire types in `api.rs`. The errors every `/v1` route can answer (401, 403, 404, 409,
//! 413, 415, 422, 429, 503, all problem+json) are added here once rather than on each handler.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::api;
use super::problem::ProblemDetails;
use super::routes;
use super::sse;

/// What the routes do not say: the title, the licence, the shared schemas and the security
/// scheme. The paths come from the route table itself ([`routes::operations`], [`routes::v1`],
/// [`sse::routes`]), each written once with its handler.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard admin API",
        description = "Supervise live contact-center conversations on every channel. Errors are RFC 9457 problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ProblemDetails, api::Conversation, api::ConversationList, api::ConversationDetail)),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The generated document: the route table's paths, then the security scheme and the problem
/// answers every `/v1` route can give.
pub(super) fn document() -> Document {
    let (_, operations) = routes::operations().split_for_parts();
    let (_, v1) = routes::v1().split_for_parts();
    let (_, stream) = sse::routes().split_for_parts();
    let mut document = ApiDoc::openapi();
    for part in [operations, v1, stream] {
        document.merge(part);
    }
    Security.modify(&mut document);
    ProblemResponses.modify(&mut document);
    document
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Keycloak-style JWT (HS256 or RS256): iss, aud, exp and nbf checked; roles from realm_access.roles, teams from groups.",
                    ))
                    .build(),
            ),
        );
    }
}

struct ProblemResponses;

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build()
}

impl ProblemResponses {
    fn add(path: &str, operation: &mut Operation, has_body: bool) {
        let responses = &mut operation.responses.responses;
        let mut add = |status: &str, description: &str| {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| problem(description).into());
        };
        if path.starts_with("/v1/") {
            add("401", "missing, expired or invalid bearer token");
            add("403", "the caller's role does not allow this");
            add("429", "rate limit exceeded (see Retry-After)");
            if path != "/v1/stream" {
                add("503", "busy, shutting down or timed out (see Retry-After)");
            }
            if path.contains('{') {
                add(
                    "404",
                    "no such conversation, agent or plugin (or not in the caller's teams)",
                );
            }
            add("400", "malformed query parameters");
            add("422", "invalid parameters or body");
        }
        if path.starts_with("/v1/conversations/{id}/") || path.starts_with("/v1/agents/{id}") {
            add(
                "409",
                "a supervision rule forbids this now; `code` names the rule",
            );
        }
        if path == "/v1/inbound/{plugin}" {
            add(
                "409",
                "a supervision rule refused one of the payload's events",
            );
            add(
                "502",
                "the plugin failed (trap, time or memory budget, circuit open)",
            );
        }
        if path == "/v1/plugins/{id}/reload" {
            add(
                "409",
                "the new version failed to load; the current one stays",
            );
        }
        if ["/v1/conversations", "/v1/agents", "/v1/queues"].contains(&path) {
            add(
                "410",
                "`cursor-expired`: the walk's snapshot is gone; start again without a cursor",
            );
        }
        if has_body {
            add("413", "request body too large");
            add("415", "the body is not JSON");
        }
    }
}

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut Document) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let PathItem {
                get,
                put,
                post,
                delete,
                ..
            } = item;
            for (operation, has_body) in [(get, false), (delete, false), (put, true), (post, true)]
            {
                if let Some(operation) = operation.as_mut() {
                    Self::add(path, operation, has_body);
                }
            }
        }
    }
}
