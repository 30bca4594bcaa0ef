//! Admin API identity: verifies `Authorization: Bearer <JWT>` (HS256 shared secret, or RS256 with a
//! PEM public key or a JWKS file), enforcing issuer, audience, `exp` (required) and `nbf` (when
//! present: Keycloak issues none), and turns Keycloak claims into an [`Actor`]:
//! `realm_access.roles` become roles, `groups` become teams through each team's configured group
//! paths. The only jsonwebtoken importer; also mints development tokens for `switchboard token`.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use crate::config::AuthConfig;
use crate::engine::{Actor, Role, Team, TeamId, UserId};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY: u64 = 30;

/// The claims Switchboard reads; others are ignored. `exp`/`nbf` are checked by the library
/// (and must be numbers: a string-typed `exp` is rejected, not skipped).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    realm_access: Option<RealmAccess>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct RealmAccess {
    #[serde(default)]
    roles: Vec<String>,
}

/// Token verification keys and rules, built once from `[auth]`.
pub struct Authenticator {
    issuer: String,
    audience: String,
    hs256: Option<DecodingKey>,
    rs256_pem: Option<DecodingKey>,
    /// JWKS keys by `kid` (RS256 only).
    jwks: Vec<(Option<String>, DecodingKey)>,
    /// Which group (a whole path or a bare name) grants which team.
    groups: HashMap<Box<str>, TeamId>,
}

/// When the token that authenticated a request expires (seconds since the epoch): a live
/// stream ends then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenExpiry(pub u64);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never appear in logs.
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("hs256", &self.hs256.is_some())
            .field("rs256_pem", &self.rs256_pem.is_some())
            .field("jwks_keys", &self.jwks.len())
            .finish()
    }
}

/// Why the keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a usable RS256 public key: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path} is not a JWKS document: {reason}")]
    Jwks { path: String, reason: String },
}

impl Authenticator {
    pub fn from_config(auth: &AuthConfig, teams: &[Team]) -> Result<Self, KeyError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| KeyError::Read {
                path: path.display().to_string(),
                reason: error.to_string(),
            })
        };
        let rs256_pem =
            match &auth.rs256_public_key_file {
                None => None,
                Some(path) => Some(DecodingKey::from_rsa_pem(&read(path)?).map_err(|error| {
                    KeyError::Pem {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    }
                })?),
            };
        let mut jwks = Vec::new();
        if let Some(path) = &auth.jwks_file {
            let jwks_error = |reason: String| KeyError::Jwks {
                path: path.display().to_string(),
                reason,
            };
            let set: JwkSet = serde_json::from_slice(&read(path)?)
                .map_err(|error| jwks_error(error.to_string()))?;
            for jwk in &set.keys {
                let key =
                    DecodingKey::from_jwk(jwk).map_err(|error| jwks_error(error.to_string()))?;
                jwks.push((jwk.common.key_id.clone(), key));
            }
        }
        Ok(Self {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            hs256: auth
                .hs256_secret
                .as_ref()
                .map(|secret| DecodingKey::from_secret(secret.expose().as_bytes())),
            rs256_pem,
            jwks,
            groups: teams
                .iter()
                .flat_map(|team| {
                    team.groups
                        .iter()
                        .map(move |group| (group.clone(), team.id.clone()))
                })
                .collect(),
        })
    }

    /// Verifies an `Authorization` header value and returns who is calling, and until when.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<(Actor, TokenExpiry), Problem> {
        let authorization = authorization.ok_or_else(|| {
            Problem::unauthorized("an `Authorization: Bearer <token>` header is required")
        })?;
        let token = authorization
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| Problem::unauthorized("the Authorization scheme must be Bearer"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the token is not a JWT"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => match &header.kid {
                Some(kid) => self
                    .jwks
                    .iter()
                    .find(|(id, _)| id.as_deref() == Some(kid.as_str()))
                    .map(|(_, key)| key)
                    .or(self.rs256_pem.as_ref()),
                None => self
                    .rs256_pem
                    .as_ref()
                    .or_else(|| self.jwks.first().map(|(_, key)| key)),
            },
            _ => None,
        }
        .ok_or_else(|| {
            Problem::unauthorized(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        // Keycloak's access tokens carry no `nbf`: it is checked when present, not required.
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|error| Problem::unauthorized(describe(error.kind())))?
            .claims;
        if claims.sub.is_empty() {
            return Err(Problem::unauthorized("the token's `sub` is empty"));
        }
        let expiry = TokenExpiry(claims.exp);
        Ok((self.actor(claims), expiry))
    }

    /// Keycloak claims as an [`Actor`]. A group grants a team only when it is one of the
    /// team's configured groups, compared as a whole path: `/billing/support` does not grant
    /// `support` unless configured to.
    fn actor(&self, claims: Claims) -> Actor {
        let roles = claims
            .realm_access
            .unwrap_or_default()
            .roles
            .iter()
            .filter_map(|role| match role.as_str() {
                "supervisor" => Some(Role::Supervisor),
                "admin" => Some(Role::Admin),
                "agent" => Some(Role::Agent),
                "ingest" => Some(Role::Ingest),
                _ => None,
            })
            .collect();
        let mut teams: Vec<TeamId> = Vec::new();
        for group in &claims.groups {
            let path = group.trim_end_matches('/');
            if let Some(team) = self.groups.get(path)
                && !teams.contains(team)
            {
                teams.push(team.clone());
            }
        }
        Actor {
            id: UserId::new(claims.sub),
            roles,
            teams,
        }
    }
}

/// What went wrong with a token, for the 401 answer (never the token itself).
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "the token's audience is not this API".to_owned(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the token lacks the required claim `{claim}`")
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("the token's `{claim}` claim is malformed (a number is expected)")
        }
        _ => "the token is invalid".to_owned(),
    }
}

/// What `switchboard token` puts in a development token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub subject: String,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub lifetime: std::time::Duration,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    preferred_username: &'a str,
    realm_access: RealmAccess,
    groups: Vec<String>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Mints an HS256 token with the configured secret, shaped like Keycloak's.
pub fn mint(auth: &AuthConfig, request: &TokenRequest, now_seconds: u64) -> Result<String, String> {
    let secret = auth
        .hs256_secret
        .as_ref()
        .ok_or("`auth.hs256_secret` is not set: `switchboard token` signs with it")?;
    let claims = MintedClaims {
        iss: &auth.issuer,
        aud: &auth.audience,
        sub: &request.subject,
        preferred_username: &request.subject,
        realm_access: RealmAccess {
            roles: request.roles.clone(),
        },
        groups: request
            .teams
            .iter()
            .map(|team| format!("/{}", team.trim_start_matches('/')))
            .collect(),
        iat: now_seconds,
        nbf: now_seconds,
        exp: now_seconds + request.lifetime.as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|error| error.to_string())
}
