//! The plugin author's side of the plugin step of the flow: the `switchboard:channel` WIT
//! bindings, the [`Plugin`] trait to implement, [`export_plugin!`] to export it, and the
//! helpers every channel needs (form bodies, constant-time HMAC checks, JSON, settings).
//!
//! ```ignore
//! use switchboard_plugin_sdk::{Plugin, types::*};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn describe() -> PluginInfo { /* id, version, channel, description */ }
//!     fn configure(settings: String) -> Result<(), PluginError> { Ok(()) }
//!     fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> { Ok(vec![]) }
//!     fn encode(notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> { Ok(vec![]) }
//! }
//!
//! switchboard_plugin_sdk::export_plugin!(Echo, headers: []); // the request headers it reads
//! ```
//!
//! See `plugin-sdk/README.md` for the walk-through and the build command.

pub mod arena;
pub mod form;
pub mod settings;
pub mod signature;
pub mod testing;
pub mod thread;

#[doc(hidden)]
pub mod bindings {
    //! Generated from `plugin-sdk/wit` (world `channel`).
    wit_bindgen::generate!({
        path: "wit",
        world: "channel",
        pub_export_macro: true,
        export_macro_name: "export_channel",
        default_bindings_module: "switchboard_plugin_sdk::bindings",
        additional_derives: [PartialEq, Clone],
    });
}

/// The trait a plugin implements: `describe`, `configure`, `decode`, `encode`.
pub use bindings::exports::switchboard::channel::plugin::Guest as Plugin;
/// The WIT types: requests, events, notifications, errors.
pub use bindings::switchboard::channel::types;

pub use serde_json as json;

use types::{Header, Inbound, PluginError};

/// The optional interface through which a plugin declares the request headers it reads;
/// [`export_plugin!`] implements it.
pub use bindings::exports::switchboard::channel::request_headers::Guest as RequestHeaders;

/// The answer the webhook door gives the provider (status, headers, body).
pub use bindings::exports::switchboard::channel::webhook::Answer;

/// How a plugin answers its provider on the webhook door (`/webhooks/{plugin}`). Every method
/// has the answer a provider without particular needs expects; implement the trait (and name
/// it in [`export_plugin!`] with `webhook`) to change them.
pub trait Webhook {
    /// Whether the configuration holds the secret that authenticates the provider's webhooks.
    /// The door refuses the traffic of a plugin that says `false` unless the daemon's
    /// configuration allows it unsigned, so say `true` only when `decode` checks a signature
    /// or a shared token.
    fn signed() -> bool {
        false
    }

    /// A `GET` on the door: the provider's verification handshake. `Ok(None)` (the default):
    /// not a handshake this plugin knows, and the door answers 404. `Err(Unauthorized)`: a
    /// wrong verify token, answered 403.
    fn handshake(request: Inbound) -> Result<Option<Answer>, PluginError> {
        let _ = request;
        Ok(None)
    }

    /// The answer to a `POST` whose events are durable (or that `decode` ignored with
    /// `Unsupported`, then `ignored` is true). The default: `200` with an empty body.
    fn acknowledge(request: Inbound, ignored: bool) -> Answer {
        let _ = (request, ignored);
        answer(200, None, Vec::new())
    }
}

/// An [`Answer`] with an optional content type.
pub fn answer(status: u16, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status,
        headers: content_type
            .map(|content_type| vec![header_pair("content-type", content_type)])
            .unwrap_or_default(),
        body: body.into(),
    }
}

/// The first value of a query parameter of the request's URL, percent-decoded (a handshake's
/// `hub.challenge`).
pub fn query_param(request: &Inbound, name: &str) -> Option<String> {
    let query = request.url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The webhook answers of a plugin that keeps the defaults (see [`Webhook`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct DefaultWebhook;

impl Webhook for DefaultWebhook {}

pub use bindings::exports::switchboard::channel::delivery_receipts::{Outcome, ProviderAnswer};

/// How a plugin reads its provider's answer to a request it encoded (implement it and name it
/// in [`export_plugin!`] with `receipts`): the provider's id for the message, so that its later
/// status callbacks (whose `decode` gives a receipt naming that id) attach to the message, and
/// sent or failed with the provider's own code. The default, `None`, keeps the host's reading
/// (2xx sent; any other final answer failed with the error body's `code` and `message`).
pub trait Receipts {
    /// `method`, `url` and `body` are the request's as encoded.
    fn answered(
        method: String,
        url: String,
        body: Vec<u8>,
        answer: ProviderAnswer,
    ) -> Option<Outcome> {
        let _ = (method, url, body, answer);
        None
    }
}

/// The receipts of a plugin that keeps the host's reading (see [`Receipts`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct DefaultReceipts;

impl Receipts for DefaultReceipts {}

/// Exports a [`Plugin`] implementation as the component's `plugin` interface, with the
/// request headers its `decode` reads and, with `webhook`, its own [`Webhook`] answers:
///
/// ```ignore
/// switchboard_plugin_sdk::export_plugin!(MyPlugin, headers: ["x-hub-signature-256"], webhook);
/// ```
///
/// The host then passes `decode` only those headers (lowercase names): every header is copied
/// into the sandbox on each call, about 0.2 µs apiece, and a webhook through a gateway brings a
/// dozen. `headers: []` for none; `export_plugin!(MyPlugin)` passes every header. Without
/// `webhook` the plugin answers with [`Webhook`]'s defaults (unsigned, no handshake, `200`);
/// with `receipts` it reads its provider's answers itself ([`Receipts`]). Options follow the
/// headers in any order: `export_plugin!(MyPlugin, headers: [], webhook, receipts)`.
///
/// On a native build (tests, benchmarks comparing wasm with native) nothing is exported, so
/// several plugins can be linked into one program.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident, headers: [$($name:expr),* $(,)?] $(, $option:ident)*) => {
        $crate::export_plugin!(@headers $plugin, ::std::option::Option::Some(
            ::std::vec![$(::std::string::String::from($name)),*]
        ));
        $crate::export_plugin!(@options $plugin $(, $option)*);
    };
    ($plugin:ident $(, $option:ident)*) => {
        $crate::export_plugin!(@headers $plugin, ::std::option::Option::None);
        $crate::export_plugin!(@options $plugin $(, $option)*);
    };
    (@options $plugin:ident $(, $option:ident)*) => {
        $crate::export_plugin!(@webhook $plugin, $crate::export_plugin!(@pick $plugin, $crate::DefaultWebhook, webhook $(, $option)*));
        $crate::export_plugin!(@receipts $plugin, $crate::export_plugin!(@pick $plugin, $crate::DefaultReceipts, receipts $(, $option)*));
        $crate::export_plugin!(@export $plugin);
    };
    // The plugin's own implementation when its option is named, else the default.
    (@pick $plugin:ident, $default:ty, $want:ident) => { $default };
    (@pick $plugin:ident, $default:ty, webhook, webhook $(, $rest:ident)*) => { $plugin };
    (@pick $plugin:ident, $default:ty, receipts, receipts $(, $rest:ident)*) => { $plugin };
    (@pick $plugin:ident, $default:ty, $want:ident, $other:ident $(, $rest:ident)*) => {
        $crate::export_plugin!(@pick $plugin, $default, $want $(, $rest)*)
    };
    (@receipts $plugin:ident, $reader:ty) => {
        impl $crate::bindings::exports::switchboard::channel::delivery_receipts::Guest for $plugin {
            fn answered(
                method: ::std::string::String,
                url: ::std::string::String,
                body: ::std::vec::Vec<u8>,
                answer: $crate::ProviderAnswer,
            ) -> ::std::option::Option<$crate::Outcome> {
                <$reader as $crate::Receipts>::answered(method, url, body, answer)
            }
        }
    };
    (@headers $plugin:ident, $wanted:expr) => {
        impl $crate::RequestHeaders for $plugin {
            fn wanted() -> ::std::option::Option<::std::vec::Vec<::std::string::String>> {
                $wanted
            }
        }
    };
    (@webhook $plugin:ident, $answers:ty) => {
        impl $crate::bindings::exports::switchboard::channel::webhook::Guest for $plugin {
            fn signed() -> bool {
                <$answers as $crate::Webhook>::signed()
            }
            fn handshake(
                request: $crate::types::Inbound,
            ) -> ::std::result::Result<::std::option::Option<$crate::Answer>, $crate::types::PluginError> {
                <$answers as $crate::Webhook>::handshake(request)
            }
            fn acknowledge(request: $crate::types::Inbound, ignored: bool) -> $crate::Answer {
                <$answers as $crate::Webhook>::acknowledge(request, ignored)
            }
        }
    };
    (@export $plugin:ident) => {
        #[cfg(target_family = "wasm")]
        $crate::bindings::export_channel!($plugin with_types_in $crate::bindings);
    };
}

/// Writes a line to the daemon's log, tagged with the plugin's id.
pub fn log(level: bindings::switchboard::channel::host::Level, message: &str) {
    #[cfg(target_family = "wasm")]
    bindings::switchboard::channel::host::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    let _ = (level, message);
}

pub use bindings::switchboard::channel::host::Level as LogLevel;

/// What the customer reads on a plain-text channel for a notification: a supervisor's public
/// message, or the joined and closed notices; `None` when there is nothing to tell the customer
/// (an internal consultant, a transfer, the end of a session, media controls).
pub fn customer_text(
    body: &types::NotificationBody,
    joined_notice: &str,
    closed_notice: &str,
) -> Option<String> {
    use types::{NotificationBody, SupervisionMode};
    match body {
        NotificationBody::Message(message) => Some(message.text.clone()),
        NotificationBody::SupervisorJoined(joined) => matches!(
            joined.mode,
            SupervisionMode::ConsultPublic | SupervisionMode::Barge
        )
        .then(|| joined_notice.to_owned()),
        NotificationBody::ClosedBySupervisor(_) => Some(closed_notice.to_owned()),
        NotificationBody::SupervisorLeft(_)
        | NotificationBody::Transferred(_)
        | NotificationBody::EndSession
        | NotificationBody::Media(_) => None,
    }
}

/// Where a credential goes in an outbound request: `{{secret:NAME}}`, which the delivery
/// worker replaces with `[plugins.<id>.secrets] NAME` at send time. Plugins never hold
/// credentials for outbound requests, so the outbox, the broker and the API never carry one.
pub fn secret(name: &str) -> String {
    format!("{{{{secret:{name}}}}}")
}

/// The webhook door's URL for this plugin (`plugins.<id>.public_url`), where a request needs
/// it: the host resolves it as the request comes out of the plugin (no secret: the outbox
/// holds the URL). In the request's URL and header values as it is; in a form body only as a
/// field's raw value, written with [`form::append_public_url`].
pub const PUBLIC_URL: &str = "{{public_url}}";

/// Where an OAuth access token goes: `{{oauth:NAME}}`. With OAuth client credentials in the
/// daemon's configuration (`[plugins.<id>.oauth]`) the delivery worker fetches, caches and
/// renews the token and puts it there; without them it puts the secret `NAME`, so a
/// deployment with a long-lived token keeps working.
pub fn oauth(name: &str) -> String {
    format!("{{{{oauth:{name}}}}}")
}

/// An `Authorization` value for HTTP Basic auth whose password is the secret `NAME` and whose
/// user is not secret (a Twilio account SID, an ARI user): the delivery worker fills in
/// `base64(user:password)`.
pub fn basic_auth(user: &str, password_secret: &str) -> String {
    format!("Basic {{{{basic:{user}:{password_secret}}}}}")
}

/// Declares that a request's body holds placeholders (`{{secret:…}}`, `{{oauth:…}}`,
/// `{{basic:…}}`) for the delivery worker to fill, for a provider that wants a credential in
/// the body; without it only the URL and headers are filled. Never declare it for a body that
/// carries text a person wrote unencoded (a JSON message): a supervisor who typed a
/// placeholder there would send the customer the secret.
pub fn body_placeholders() -> Header {
    header_pair("switchboard-placeholders", "body")
}

/// The refusal for a credential set in a plugin's settings that belongs in its secrets.
pub fn credential_in_settings(key: &str, plugin: &str) -> types::PluginError {
    types::PluginError::Config(format!(
        "`{key}` is a credential for outbound requests: set it under [plugins.{plugin}.secrets] (the delivery worker puts it into each request at send time), not in the plugin's settings"
    ))
}

/// The value of a request header (names are lowercase on the wire).
pub fn header<'a>(request: &'a Inbound, name: &str) -> Option<&'a str> {
    find_header(&request.headers, name)
}

/// The value of a header in a list, matched case-insensitively.
pub fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value.as_str())
}

/// A header for an outbound request.
pub fn header_pair(name: &str, value: impl Into<String>) -> Header {
    Header {
        name: name.to_owned(),
        value: value.into(),
    }
}

/// Parses a JSON body into `T` (which may borrow from the body), or says what is wrong with
/// it.
///
/// The body is checked to be UTF-8 once, as a whole ([`utf8`]), and then parsed as text:
/// parsing bytes checks every string separately, which measured about 7 % of a WhatsApp
/// decode in wasm.
pub fn json_body<'a, T: serde::Deserialize<'a>>(request: &'a Inbound) -> Result<T, PluginError> {
    let text = utf8(&request.body).map_err(|error| {
        PluginError::InvalidPayload(format!(
            "body is not the expected JSON: not UTF-8 ({error})"
        ))
    })?;
    serde_json::from_str(text).map_err(|error| {
        PluginError::InvalidPayload(format!("body is not the expected JSON: {error}"))
    })
}

/// The body as UTF-8 text.
pub fn text_body(request: &Inbound) -> Result<&str, PluginError> {
    utf8(&request.body).map_err(|_| PluginError::InvalidPayload("body is not UTF-8".to_owned()))
}

/// `bytes` as text, as [`std::str::from_utf8`] says, sooner when they are ASCII.
///
/// Provider payloads are nearly always ASCII (JSON escapes, form encoding), and ASCII is
/// UTF-8 as it is: seeing that takes one OR per eight bytes. `std::str::from_utf8`, as the
/// standard library is built for wasm32, took about 2.9 instructions a byte in a plugin
/// (callgrind: 2 900 of a WhatsApp decode's 35 000, against 460 natively); text that is not
/// ASCII still goes through it.
pub fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if is_ascii(bytes) {
        // SAFETY: every byte is below 0x80, and a sequence of ASCII bytes is valid UTF-8.
        #[allow(unsafe_code)]
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes)
}

/// [`utf8`] for bytes already owned: the same text as [`String::from_utf8`] gives, without
/// its byte-by-byte check when they are ASCII.
pub fn utf8_owned(bytes: Vec<u8>) -> Result<String, std::string::FromUtf8Error> {
    if is_ascii(&bytes) {
        // SAFETY: every byte is below 0x80, and a sequence of ASCII bytes is valid UTF-8.
        #[allow(unsafe_code)]
        return Ok(unsafe { String::from_utf8_unchecked(bytes) });
    }
    String::from_utf8(bytes)
}

/// Whether every byte is below 0x80: four 8-byte words OR-ed together a turn (in wasm, each
/// turn of a loop also checks the time budget), the high bits looked at once at the end.
/// `<[u8]>::is_ascii` in its place made a WhatsApp decode through the host 38 700
/// instructions against 34 800 (callgrind): more than the `str::from_utf8` it would skip.
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().expect("eight bytes"));
    let mut blocks = bytes.chunks_exact(32);
    let mut seen = 0u64;
    for block in blocks.by_ref() {
        seen |= word(&block[..8]) | word(&block[8..16]) | word(&block[16..24]) | word(&block[24..]);
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for chunk in words.by_ref() {
        seen |= word(chunk);
    }
    seen & HIGH_BITS == 0 && words.remainder().is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_agrees_with_the_standard_library_at_every_length_and_offset() {
        for length in 0..80 {
            let ascii = vec![b'a'; length];
            assert_eq!(utf8(&ascii), std::str::from_utf8(&ascii));
            for at in 0..length {
                for byte in [0x80, 0xc3, 0xff] {
                    let mut bytes = ascii.clone();
                    bytes[at] = byte;
                    assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes), "{length} {at}");
                    assert_eq!(utf8_owned(bytes.clone()), String::from_utf8(bytes));
                }
                // Valid text that is not ASCII.
                let mut text = ascii.clone();
                text.splice(at..at, "é".bytes());
                assert_eq!(utf8(&text), Ok(std::str::from_utf8(&text).unwrap()));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn utf8_agrees_with_the_standard_library(bytes in proptest::collection::vec(0u8..=255, 0..200)) {
            proptest::prop_assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes));
            proptest::prop_assert_eq!(utf8_owned(bytes.clone()), String::from_utf8(bytes));
        }
    }
}
