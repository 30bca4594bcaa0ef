//! `application/x-www-form-urlencoded` bodies (Twilio webhooks, the Twilio Messages API).
//!
//! Parsing is the SDK's own, with `form_urlencoded`'s exact results (a property test holds
//! them equal): it looks for the delimiters eight bytes at a time and decodes each field in
//! one pass. `form_urlencoded` walks the body byte by byte three times (`&`/`=`, `+`, `%`),
//! and in wasm every turn of a loop also checks the time budget's epoch: that walk was over
//! half of a Twilio decode through the host, 2.4 times its native cost (`perf`, wasmtime's
//! perf map).

use std::borrow::Cow;

use crate::types::PluginError;

/// One decoded `name=value` pair. It borrows from the body unless decoding changed it (`+`
/// or `%`): most of a webhook's fields are plain, and copying every one into a `String` of
/// its own was about an eighth of a Twilio decode in wasm (measured with `perf`).
pub type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The form's pairs, in order (a key may repeat): split at `&`, empty fields skipped, each
/// split at its first `=` (none: an empty value); `+` is a space and `%XX` a byte, and text
/// that is not UTF-8 is decoded lossily, as browsers and `form_urlencoded` do.
pub fn parse(body: &[u8]) -> Vec<Pair<'_>> {
    // One UTF-8 check of the whole body (`crate::utf8`): a field of valid text split at the
    // ASCII delimiters is valid text itself, so fields with nothing to decode are borrowed as
    // they are. Checking each field with `from_utf8_lossy` walked them a byte a turn and took
    // a tenth of a Twilio decode in wasm (`perf`, wasmtime's perf map).
    let text = crate::utf8(body).ok();
    let as_text = |start: usize, end: usize| text.and_then(|text| text.get(start..end));
    let mut pairs = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let rest = &body[start..];
        let end = find(rest, b'&', b'&').map_or(body.len(), |at| start + at);
        let field = &body[start..end];
        let field_start = start;
        start = end + 1;
        if field.is_empty() {
            continue;
        }
        let (name_end, value_start) = match find(field, b'=', b'=') {
            Some(at) => (field_start + at, field_start + at + 1),
            None => (end, end),
        };
        pairs.push((
            decode(&body[field_start..name_end], as_text(field_start, name_end)),
            decode(&body[value_start..end], as_text(value_start, end)),
        ));
    }
    pairs
}

/// One name or value: `+` -> space, `%XX` -> the byte (a `%` not followed by two hex digits
/// stays as it is), then UTF-8, lossily. Borrows when there is nothing to decode; `text` is
/// the same bytes when they are known to be UTF-8 already.
fn decode<'a>(bytes: &'a [u8], text: Option<&'a str>) -> Cow<'a, str> {
    let Some(first) = find(bytes, b'+', b'%') else {
        return match text {
            Some(text) => Cow::Borrowed(text),
            None => String::from_utf8_lossy(bytes),
        };
    };
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = first;
    decoded.extend_from_slice(&bytes[..at]);
    while at < bytes.len() {
        match bytes[at] {
            b'+' => {
                decoded.push(b' ');
                at += 1;
            }
            b'%' => match (
                bytes.get(at + 1).and_then(hex),
                bytes.get(at + 2).and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    decoded.push(high << 4 | low);
                    at += 3;
                }
                _ => {
                    decoded.push(b'%');
                    at += 1;
                }
            },
            _ => {
                // A run of plain bytes up to the next escape, copied at once.
                let run = find(&bytes[at..], b'+', b'%').map_or(bytes.len(), |next| at + next);
                decoded.extend_from_slice(&bytes[at..run]);
                at = run;
            }
        }
    }
    Cow::Owned(match crate::utf8_owned(decoded) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

fn hex(digit: &u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The index of the first `a` or `b` in `bytes`, eight bytes a turn: a byte of `word ^ a`
/// is zero where `a` is, and `(x - 0x01..) & !x & 0x80..` sets the high bit of each zero
/// byte (a borrow can also mark bytes above a zero, never below one, so the lowest mark is
/// the first match). Not `memchr::memchr2` (already linked through serde_json): without
/// `simd128` its portable path reads a `usize` a turn, four bytes on wasm32.
fn find(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES << 7;
    let (fill_a, fill_b) = (ONES * u64::from(a), ONES * u64::from(b));
    let mut words = bytes.chunks_exact(8);
    for (index, chunk) in words.by_ref().enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        let (xa, xb) = (word ^ fill_a, word ^ fill_b);
        let found = ((xa.wrapping_sub(ONES) & !xa) | (xb.wrapping_sub(ONES) & !xb)) & HIGHS;
        if found != 0 {
            return Some(index * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    let tail = bytes.len() - words.remainder().len();
    words
        .remainder()
        .iter()
        .position(|&byte| byte == a || byte == b)
        .map(|at| tail + at)
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

/// Appends `key={{public_url}}` to a form body made by [`encode`]: the host puts the webhook
/// door's URL for this plugin there (form-encoded) when it stores the request, and leaves the
/// field out when the plugin has no `public_url`. For providers that send delivery statuses
/// only to a callback URL given with each request (Twilio's `StatusCallback`). The braces stay
/// unencoded on purpose: encoded text (anything a person wrote) can never count as one.
pub fn append_public_url(body: &mut Vec<u8>, key: &str) {
    let key = encode([(key, "")]);
    if !body.is_empty() {
        body.push(b'&');
    }
    body.extend_from_slice(&key);
    body.extend_from_slice(crate::PUBLIC_URL.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_url_field_keeps_its_placeholder_raw() {
        let mut body = encode([("Body", "{{public_url}}")]);
        append_public_url(&mut body, "StatusCallback");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "Body=%7B%7Bpublic_url%7D%7D&StatusCallback={{public_url}}"
        );
    }

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

    #[test]
    fn odd_forms_parse_as_form_urlencoded_parses_them() {
        for body in [
            "",
            "&&",
            "a",
            "a=",
            "=b",
            "a=b=c&&d",
            "x=%zz%4&y=%%41%2",
            "To=%2B1%20555+%2b&Body=caf%C3%A9+%E2%82%AC",
            "bad=%FF%FE+utf8&next=1",
            "long=abcdefghijklmnopqrstuvwxyz0123456789%26and+more+text+after&z=%3D",
        ] {
            let expected: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            let ours: Vec<(String, String)> = parse(body.as_bytes())
                .into_iter()
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            assert_eq!(ours, expected, "{body:?}");
        }
    }

    #[test]
    fn find_gives_the_first_of_either_byte_at_every_offset() {
        for length in 0..40 {
            for at in 0..length {
                let mut bytes = vec![b'x'; length];
                bytes[at] = b'%';
                if at + 3 < length {
                    bytes[at + 3] = b'+';
                }
                assert_eq!(find(&bytes, b'+', b'%'), Some(at), "{length} {at}");
                assert_eq!(
                    find(&bytes, b'+', b'+'),
                    (at + 3 < length).then_some(at + 3)
                );
            }
            assert_eq!(find(&vec![b'x'; length], b'+', b'%'), None);
        }
        // `$` is `%` ^ 1: after a match, the borrow marks those bytes too.
        assert_eq!(find(b"abc%$$$$", b'%', b'%'), Some(3));
        assert_eq!(find(b"$$$$$$$$$%", b'%', b'+'), Some(9));
    }

    proptest::proptest! {
        #[test]
        fn any_body_parses_as_form_urlencoded_parses_it(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"&=+%aF09zZ".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..64,
            )
        ) {
            let expected: Vec<Pair<'_>> = form_urlencoded::parse(&body).collect();
            proptest::prop_assert_eq!(parse(&body), expected);
        }
    }
}
