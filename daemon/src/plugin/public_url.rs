//! Plugin boundary, after encode: `{{public_url}}` in a plugin's request becomes the webhook
//! door's URL for that plugin (`plugins.<id>.public_url`), for providers that send delivery
//! statuses only to a callback URL given with each request (Twilio's `StatusCallback`). It is
//! resolved here, before the request is stored, because it is no secret and an external
//! delivery worker needs it as much as the daemon's own.
//!
//! In a form-encoded body it counts only as a field's whole, raw value (`StatusCallback=
//! {{public_url}}`, braces unencoded): text a person wrote is always percent-encoded there, so
//! no customer or supervisor can make one. Without a `public_url` the field is left out, so
//! the provider simply sends no statuses. In the URL and header values it is replaced as it
//! is (a header that is only the placeholder is left out without a `public_url`).

use super::OutboundRequest;

const PLACEHOLDER: &str = "{{public_url}}";

/// `request` with `{{public_url}}` resolved against `public_url`.
pub(super) fn resolve(mut request: OutboundRequest, public_url: Option<&str>) -> OutboundRequest {
    if request.url.contains(PLACEHOLDER) {
        request.url = request.url.replace(PLACEHOLDER, public_url.unwrap_or(""));
    }
    request.headers.retain_mut(|(_, value)| {
        if !value.contains(PLACEHOLDER) {
            return true;
        }
        match public_url {
            Some(url) => {
                *value = value.replace(PLACEHOLDER, url);
                true
            }
            None => value != PLACEHOLDER,
        }
    });
    let form = request.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("content-type")
            && value.starts_with("application/x-www-form-urlencoded")
    });
    if form && contains(&request.body, PLACEHOLDER.as_bytes()) {
        request.body = resolve_form(&request.body, public_url);
    }
    request
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A form body with each `key={{public_url}}` field made `key=<url, form-encoded>`, or left
/// out without a URL.
fn resolve_form(body: &[u8], public_url: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    for field in body.split(|&byte| byte == b'&') {
        let resolved = match field.split(|&byte| byte == b'=').collect::<Vec<_>>()[..] {
            [key, value] if value == PLACEHOLDER.as_bytes() => match public_url {
                Some(url) => {
                    let mut field = key.to_vec();
                    field.push(b'=');
                    field.extend(form_encode(url).bytes());
                    Some(field)
                }
                None => None,
            },
            _ => Some(field.to_vec()),
        };
        if let Some(field) = resolved {
            if !out.is_empty() {
                out.push(b'&');
            }
            out.extend(field);
        }
    }
    out
}

/// `application/x-www-form-urlencoded` encoding of a value (WHATWG URL, "urlencoded
/// serializing"): alphanumerics and `*-._` as they are, space as `+`, every other byte as
/// `%XX`.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio(body: &str) -> OutboundRequest {
        OutboundRequest {
            method: "POST".to_owned(),
            url: "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json".to_owned(),
            headers: vec![(
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            )],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_form_field_that_is_the_placeholder_becomes_the_url_or_goes() {
        let request = twilio("To=%2B1555&Body=hi&StatusCallback={{public_url}}");
        let resolved = resolve(
            request.clone(),
            Some("https://hooks.example.com/webhooks/sms-twilio?k=1"),
        );
        assert_eq!(
            String::from_utf8(resolved.body).unwrap(),
            "To=%2B1555&Body=hi&StatusCallback=https%3A%2F%2Fhooks.example.com%2Fwebhooks%2Fsms-twilio%3Fk%3D1"
        );
        let without = resolve(request, None);
        assert_eq!(
            String::from_utf8(without.body).unwrap(),
            "To=%2B1555&Body=hi"
        );
    }

    #[test]
    fn text_a_person_wrote_cannot_make_a_placeholder() {
        // A supervisor's message "{{public_url}}" reaches the body percent-encoded.
        let body = "Body=%7B%7Bpublic_url%7D%7D&To=%2B1555";
        let resolved = resolve(twilio(body), Some("https://hooks.example.com"));
        assert_eq!(String::from_utf8(resolved.body).unwrap(), body);
        // Nor does a JSON body's text count.
        let json = OutboundRequest {
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: br#"{"text":"{{public_url}}"}"#.to_vec(),
            ..twilio("")
        };
        assert_eq!(
            resolve(json.clone(), Some("https://hooks.example.com")).body,
            json.body
        );
    }

    #[test]
    fn urls_and_headers_take_it_as_it_is() {
        let request = OutboundRequest {
            url: "https://api.example.com/subscribe?callback={{public_url}}".to_owned(),
            headers: vec![
                ("x-callback".to_owned(), "{{public_url}}".to_owned()),
                ("x-other".to_owned(), "kept".to_owned()),
            ],
            ..twilio("")
        };
        let resolved = resolve(request.clone(), Some("https://hooks.example.com/w"));
        assert_eq!(
            resolved.url,
            "https://api.example.com/subscribe?callback=https://hooks.example.com/w"
        );
        assert_eq!(resolved.headers[0].1, "https://hooks.example.com/w");
        let without = resolve(request, None);
        assert_eq!(
            without.headers,
            [("x-other".to_owned(), "kept".to_owned())],
            "a header that is only the placeholder goes"
        );
    }
}
