//! Query strings of the `/v1` reads, checked one way everywhere: a parameter whose value does
//! not parse, is out of range or is given twice where one is meant is a 400 `invalid-query`
//! that names the parameter and says what it takes. Parameters a route does not know are
//! ignored (caches and frontends add their own).

use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// A request's query parameters, in order.
#[derive(Debug, Default)]
pub(super) struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| Self(pairs))
            .map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-query",
                    "the query string is not URL-encoded text",
                )
            })
    }
}

/// The 400 answer for a query parameter.
pub(super) fn invalid(name: &str, what: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        format!("`{name}` {what}"),
    )
}

impl Params {
    /// The parameter's one value, if given (empty if given empty).
    pub(super) fn one(&self, name: &str) -> Result<Option<&str>, Problem> {
        let mut values = self.0.iter().filter(|(key, _)| key == name);
        let first = values.next().map(|(_, value)| value.as_str());
        if values.next().is_some() {
            return Err(invalid(name, "is given more than once"));
        }
        Ok(first)
    }

    /// Every value of a repeatable parameter (`queue=a&queue=b`), empty ones left out.
    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// Every value of a repeatable parameter from a closed set.
    pub(super) fn choices<T: DeserializeOwned>(
        &self,
        name: &str,
        known: &[&str],
    ) -> Result<Vec<T>, Problem> {
        // An empty value is not one of the names: refused, like any other.
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, text)| {
                serde_json::from_value(serde_json::Value::from(text.as_str()))
                    .map_err(|_| invalid(name, &format!("must be one of {}", known.join(", "))))
            })
            .collect()
    }

    /// A page size: `default` when absent, else an integer from 1 to `max`.
    pub(super) fn limit(&self, name: &str, default: usize, max: usize) -> Result<usize, Problem> {
        match self.one(name)? {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=max).contains(limit))
                .ok_or_else(|| invalid(name, &format!("must be an integer from 1 to {max}"))),
        }
    }

    /// One of a closed set of names (a serde enum written in the API's spelling).
    pub(super) fn choice<T: DeserializeOwned>(
        &self,
        name: &str,
        known: &[&str],
    ) -> Result<Option<T>, Problem> {
        match self.one(name)? {
            None => Ok(None),
            Some(text) => serde_json::from_value(serde_json::Value::from(text))
                .map(Some)
                .map_err(|_| invalid(name, &format!("must be one of {}", known.join(", ")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Params;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn every_bad_value_is_the_same_kind_of_error() {
        for bad in ["-1", "abc", "10000000", "0", "1.5"] {
            let problem = params(&[("limit", bad)])
                .limit("limit", 100, 1000)
                .unwrap_err();
            assert_eq!(problem.code(), "invalid-query", "limit={bad}");
        }
        assert_eq!(params(&[]).limit("limit", 100, 1000).unwrap(), 100);
        assert_eq!(
            params(&[("limit", "1000")])
                .limit("limit", 100, 1000)
                .unwrap(),
            1000
        );
        assert!(
            params(&[("limit", "1"), ("limit", "2")])
                .limit("limit", 100, 1000)
                .is_err()
        );
    }
}
