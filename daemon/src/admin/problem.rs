//! Admin API errors: the one error type every handler returns, rendered as RFC 9457
//! `application/problem+json` with a stable `type` (`https://switchboard.dev/problems/<code>`)
//! and, for rule violations, the rule's `code`. It never carries internals: store and broker
//! failures are logged and answered with a generic detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::Refusal;

/// Where problem types live.
pub const PROBLEM_BASE: &str = "https://switchboard.dev/problems/";

/// An error answer (boxed: handlers return it in `Result`s on every path).
#[derive(Clone, Debug)]
pub struct Problem(Box<ProblemDetails>);

/// The problem+json body.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDetails {
    /// `https://switchboard.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The stable code (a supervision rule's code for 409 answers).
    pub code: String,
    /// For limit refusals: who holds the slots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<String>,
    /// Seconds to wait before retrying (429, 503).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            kind: format!("{PROBLEM_BASE}{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            holders: Vec::new(),
            retry_after: None,
        }))
    }

    /// The same problem, answered with `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    pub fn code(&self) -> &str {
        &self.0.code
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// The same answer for a conversation that does not exist and one outside the caller's
    /// teams: never reveal what the caller may not see.
    pub fn conversation_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no conversation {id:?}"),
        )
    }

    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", detail)
    }

    /// An internal failure: the detail is generic, the cause goes to the log.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request could not be completed; see the daemon's log",
        )
    }

    pub fn unavailable(code: &str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(retry_after)
    }
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Self {
        let status =
            StatusCode::from_u16(refusal.code.http_status()).unwrap_or(StatusCode::CONFLICT);
        let mut problem = Self::new(status, refusal.code.as_str(), refusal.detail);
        if status == StatusCode::CONFLICT {
            problem.0.title = "Supervision rule violated".to_owned();
        }
        problem.0.holders = refusal
            .holders
            .iter()
            .map(|holder| holder.as_str().to_owned())
            .collect();
        problem
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.0.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
        }
        response
    }
}
