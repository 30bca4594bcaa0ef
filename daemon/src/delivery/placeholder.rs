//! Delivery step, just before sending: credentials go into a plugin's request here and
//! nowhere earlier. Plugins write placeholders where a credential belongs; the store, the
//! outbox, the broker and the API only ever carry the placeholder. Only the URL and headers
//! are filled, and a body whose plugin marked it (`switchboard-placeholders: body`): bodies
//! carry text people wrote.
//!
//! - `{{secret:NAME}}` — the secret `NAME` of `[plugins.<id>.secrets]`, as it is.
//! - `{{basic:USER:NAME}}` — `base64("USER:" + secret NAME)`, for HTTP Basic auth whose user
//!   is not secret (a Twilio account SID, an ARI user): `Authorization: Basic {{basic:…}}`.
//! - `{{oauth:NAME}}` — the access token the worker got with the plugin's OAuth client
//!   credentials (`[plugins.<id>.oauth]`); without them, the secret `NAME`, so that a plugin
//!   works with a renewed token and with a static one alike.

use std::collections::BTreeMap;

use crate::config::Secret;

/// A placeholder names a secret the plugin's configuration does not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request needs secret `{0}`, which [plugins.<id>.secrets] does not set")]
pub struct MissingSecret(pub String);

/// `text` with every placeholder replaced; text without `{{` comes back as it is.
pub fn fill(text: &str, secrets: &BTreeMap<String, Secret>) -> Result<String, MissingSecret> {
    fill_with_token(text, secrets, None)
}

/// Whether `text` asks for an OAuth token.
pub fn wants_token(text: &str) -> bool {
    text.contains("{{oauth:")
}

/// [`fill`], with the OAuth access token for `{{oauth:NAME}}` (`None`: the secret `NAME`).
pub fn fill_with_token(
    text: &str,
    secrets: &BTreeMap<String, Secret>,
    token: Option<&Secret>,
) -> Result<String, MissingSecret> {
    if !text.contains("{{") {
        return Ok(text.to_owned());
    }
    let lookup = |name: &str| {
        secrets
            .get(name)
            .map(|secret| secret.expose().to_owned())
            .ok_or_else(|| MissingSecret(name.to_owned()))
    };
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        if let Some(name) = inner.strip_prefix("secret:") {
            out.push_str(&lookup(name)?);
        } else if let Some(name) = inner.strip_prefix("oauth:") {
            match token {
                Some(token) => out.push_str(token.expose()),
                None => out.push_str(&lookup(name)?),
            }
        } else if let Some(pair) = inner.strip_prefix("basic:")
            && let Some((user, name)) = pair.split_once(':')
        {
            out.push_str(&base64(format!("{user}:{}", lookup(name)?).as_bytes()));
        } else {
            // Not a placeholder of ours (a template language in a message body): as written.
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Standard base64 with padding (RFC 4648), for Basic auth.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> BTreeMap<String, Secret> {
        [("token", "t0k3n"), ("auth_token", "secret")]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Secret::new(value)))
            .collect()
    }

    #[test]
    fn placeholders_become_the_secrets_they_name() {
        let secrets = secrets();
        assert_eq!(
            fill("Bearer {{secret:token}}", &secrets).unwrap(),
            "Bearer t0k3n"
        );
        assert_eq!(
            fill(
                "https://api.telegram.org/bot{{secret:token}}/sendMessage",
                &secrets
            )
            .unwrap(),
            "https://api.telegram.org/bott0k3n/sendMessage"
        );
        // RFC 7617's example: Aladdin / open sesame.
        let aladdin = [("pw".to_owned(), Secret::new("open sesame"))]
            .into_iter()
            .collect();
        assert_eq!(
            fill("Basic {{basic:Aladdin:pw}}", &aladdin).unwrap(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(fill("no placeholder", &secrets).unwrap(), "no placeholder");
        assert_eq!(
            fill("Hello {{first_name}} {{secret:token}}", &secrets).unwrap(),
            "Hello {{first_name}} t0k3n"
        );
        assert_eq!(
            fill("open {{secret:token", &secrets).unwrap(),
            "open {{secret:token"
        );
        assert_eq!(
            fill("{{secret:missing}}", &secrets),
            Err(MissingSecret("missing".to_owned()))
        );
    }

    #[test]
    fn an_oauth_placeholder_takes_the_token_or_the_secret_of_its_name() {
        let secrets = secrets();
        let token = Secret::new("fetched");
        assert_eq!(
            fill_with_token("Bearer {{oauth:token}}", &secrets, Some(&token)).unwrap(),
            "Bearer fetched"
        );
        assert_eq!(
            fill("Bearer {{oauth:token}}", &secrets).unwrap(),
            "Bearer t0k3n"
        );
        assert!(wants_token("Bearer {{oauth:token}}"));
        assert!(!wants_token("Bearer {{secret:token}}"));
    }

    #[test]
    fn base64_pads_every_length() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
