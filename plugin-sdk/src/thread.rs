//! Thread keys that keep a business's endpoints apart (decode writes them, encode reads them
//! back from the notification): the same customer writing to two of the business's numbers,
//! accounts or integrations is two conversations, not one. A key is
//! `<endpoint>/<customer thread>`: the endpoint (a phone number id, a number, an account, an
//! integration) never contains `/`, so the key splits at its first one.

use crate::types::PluginError;

/// The thread key of `thread` on `endpoint`.
pub fn key(endpoint: &str, thread: &str) -> String {
    let mut key = String::with_capacity(endpoint.len() + 1 + thread.len());
    key.push_str(endpoint);
    key.push('/');
    key.push_str(thread);
    key
}

/// A thread key's endpoint and thread; `None` as the endpoint for a key written without one
/// (by a plugin version before endpoints were part of keys).
pub fn split(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((endpoint, thread)) => (Some(endpoint), thread),
        None => (None, key),
    }
}

/// The endpoint to answer a thread from: the key's, or for a key written without one the
/// `configured` default (`setting` names it in the error when there is none).
pub fn endpoint_or<'a>(
    key: &'a str,
    configured: Option<&'a str>,
    setting: &str,
) -> Result<&'a str, PluginError> {
    split(key).0.or(configured).ok_or_else(|| {
        PluginError::Config(format!(
            "`{setting}` is needed for a conversation whose key names no endpoint (opened by an earlier version)"
        ))
    })
}

/// Checks `endpoint` against the endpoints a plugin's settings list (`what` names them, e.g.
/// `phone_number_ids`): with none listed every endpoint is served.
pub fn check_endpoint(endpoint: &str, listed: &[String], what: &str) -> Result<(), PluginError> {
    if listed.is_empty() || listed.iter().any(|served| served == endpoint) {
        Ok(())
    } else {
        Err(PluginError::Unsupported(format!(
            "{endpoint:?} is not one of this plugin's `{what}` ({})",
            listed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_slash() {
        assert_eq!(
            key("106540352242922", "16505551234"),
            "106540352242922/16505551234"
        );
        assert_eq!(
            split("integration-1/user/with/slashes"),
            (Some("integration-1"), "user/with/slashes")
        );
        assert_eq!(split("16505551234"), (None, "16505551234"));
        assert!(check_endpoint("a", &[], "numbers").is_ok());
        assert!(check_endpoint("a", &["a".to_owned()], "numbers").is_ok());
        let refused = check_endpoint("b", &["a".to_owned()], "numbers").unwrap_err();
        assert!(
            matches!(refused, PluginError::Unsupported(ref text) if text.contains("`numbers`"))
        );
    }
}
