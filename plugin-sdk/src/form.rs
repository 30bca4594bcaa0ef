//! `application/x-www-form-urlencoded` bodies (Twilio webhooks, the Twilio Messages API).

use std::borrow::Cow;

use crate::types::PluginError;

/// One decoded `name=value` pair. It borrows from the body unless decoding changed it (`+`
/// or `%`): most of a webhook's fields are plain, and copying every one into a `String` of
/// its own was about an eighth of a Twilio decode in wasm (measured with `perf`).
pub type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The form's pairs, in order (a key may repeat).
pub fn parse(body: &[u8]) -> Vec<Pair<'_>> {
    form_urlencoded::parse(body).collect()
}

/// The first value of `key`.
pub fn get<'a>(pairs: &'a [Pair<'_>], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_ref())
}

/// The first value of `key`, or an `invalid-payload` error naming it.
pub fn require<'a>(pairs: &'a [Pair<'_>], key: &str) -> Result<&'a str, PluginError> {
    get(pairs, key)
        .ok_or_else(|| PluginError::InvalidPayload(format!("form field `{key}` is missing")))
}

/// Encodes pairs as a form body.
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_plus_and_percent() {
        let body = encode([("Body", "Hi there + 100%"), ("To", "+15005550006")]);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "Body=Hi+there+%2B+100%25&To=%2B15005550006"
        );
        let pairs = parse(&body);
        assert_eq!(get(&pairs, "Body"), Some("Hi there + 100%"));
        assert!(
            matches!(pairs[0].0, Cow::Borrowed("Body")),
            "plain text is not copied"
        );
        assert!(matches!(pairs[1].1, Cow::Owned(_)), "decoded text is");
        assert!(require(&pairs, "From").is_err());
    }
}
