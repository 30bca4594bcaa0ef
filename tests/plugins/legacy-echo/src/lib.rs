//! A test plugin built with plain wit-bindgen against the 0.1.0 package (`plugin-sdk/wit-0.1`)
//! and its `baseline` world: it exports only the `plugin` interface, like a plugin built before
//! `request-headers` and 0.2.0 existed. The host must still load it through its 0.1 bindings
//! and pass it every request header; `decode` echoes the header names it was given as the text
//! of one message, so a test can see them.

// wit-bindgen's export glue (expanded here, not in the SDK) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../../plugin-sdk/wit-0.1",
    world: "baseline",
});

use exports::switchboard::channel::plugin::Guest;
use switchboard::channel::types::*;

#[derive(Debug)]
pub struct LegacyEcho;

impl Guest for LegacyEcho {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "legacy-echo".to_owned(),
            version: "0.1.0".to_owned(),
            channel: ChannelKind::Web,
            description: "echoes the request header names it is given".to_owned(),
        }
    }

    fn configure(_settings: String) -> Result<(), PluginError> {
        Ok(())
    }

    fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> {
        let names: Vec<&str> = request
            .headers
            .iter()
            .map(|header| header.name.as_str())
            .collect();
        Ok(vec![Event {
            id: None,
            body: EventBody::Message(Message {
                thread: "echo".to_owned(),
                sender: Sender::Customer,
                text: names.join(","),
                visibility: Visibility::Public,
                sentiment: None,
                customer: Some(Customer {
                    id: "echo".to_owned(),
                    name: None,
                }),
            }),
        }])
    }

    fn encode(_notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        Ok(Vec::new())
    }
}

#[cfg(target_family = "wasm")]
export!(LegacyEcho);
