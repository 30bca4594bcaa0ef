//! Delivery step, before a request leaves: OAuth 2.0 client-credentials tokens (RFC 6749
//! §4.4) for providers whose API tokens expire (Genesys Cloud). The worker asks the plugin's
//! token endpoint with its client id and secret (HTTP Basic, as RFC 6749 §2.3.1 prefers and
//! Genesys expects), keeps the token until a minute before `expires_in` runs out, and forgets
//! it when the provider answers 401, so that the next attempt fetches a fresh one. The token
//! is a [`Secret`]: it reaches the request and nothing else.

use std::time::{Duration, Instant};

use crate::config::{OAuthConfig, Secret};
use crate::delivery::{http, placeholder};

/// A token is renewed this long before it expires (clock skew, a request in flight).
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// When the endpoint says no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Cached {
    token: Secret,
    renew_at: Instant,
}

/// One plugin's token, fetched when needed.
#[derive(Debug)]
pub struct TokenSource {
    config: OAuthConfig,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl TokenSource {
    pub fn new(config: OAuthConfig) -> Self {
        Self {
            config,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A valid token: the cached one, or a new one from the token endpoint (one request at a
    /// time: requests waiting for it share it).
    pub async fn token(&self, client: &http::Client) -> Result<Secret, String> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && Instant::now() < current.renew_at
        {
            return Ok(current.token.clone());
        }
        let (token, lifetime) = self.fetch(client).await?;
        let renew_in = lifetime
            .saturating_sub(RENEW_BEFORE)
            .max(Duration::from_secs(1));
        *cached = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + renew_in,
        });
        Ok(token)
    }

    /// The provider refused the token (401): the next request fetches another.
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self, client: &http::Client) -> Result<(Secret, Duration), String> {
        let secrets = [(
            "client_secret".to_owned(),
            self.config.client_secret.clone(),
        )]
        .into_iter()
        .collect();
        let authorization = placeholder::fill(
            &format!(
                "Basic {{{{basic:{}:client_secret}}}}",
                self.config.client_id
            ),
            &secrets,
        )
        .map_err(|error| error.to_string())?;
        let mut body = "grant_type=client_credentials".to_owned();
        if let Some(scope) = &self.config.scope {
            body.push_str("&scope=");
            body.push_str(&form_escape(scope));
        }
        let headers = [
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("accept".to_owned(), "application/json".to_owned()),
            ("authorization".to_owned(), authorization),
        ];
        let answer = client
            .send("POST", &self.config.token_url, &headers, body.into_bytes())
            .await
            .map_err(|error| format!("the token endpoint: {error}"))?;
        let parsed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if answer.status != 200 {
            // RFC 6749 §5.2: `error` and `error_description`; never the body as such.
            let error = parsed["error"].as_str().unwrap_or("no error code");
            return Err(format!(
                "the token endpoint answered {}: {error}",
                answer.status
            ));
        }
        let token = parsed["access_token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .ok_or_else(|| "the token endpoint's answer has no access_token".to_owned())?;
        let lifetime = parsed["expires_in"]
            .as_u64()
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        Ok((Secret::new(token), lifetime))
    }
}

/// A form value, percent-encoded.
fn form_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') => {
                out.push(char::from(b));
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
