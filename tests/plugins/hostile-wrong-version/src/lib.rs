//! A test plugin built against `switchboard:channel@9.0.0`: a well-formed plugin of an API
//! version the host does not support. Loading it must fail before instantiation, with a
//! message naming both versions.

// wit-bindgen's export glue (expanded here, not in the SDK) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "wit",
    world: "channel",
});

use exports::switchboard::channel::plugin::Guest;
use switchboard::channel::types::*;

#[derive(Debug)]
pub struct FromTheFuture;

impl Guest for FromTheFuture {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "hostile-wrong-version".to_owned(),
            version: "0.1.0".to_owned(),
            channel: ChannelKind::Web,
            description: "built against switchboard:channel@9.0.0".to_owned(),
        }
    }

    fn configure(_settings: String) -> Result<(), PluginError> {
        Ok(())
    }

    fn decode(_request: Inbound) -> Result<Vec<Event>, PluginError> {
        Ok(Vec::new())
    }

    fn encode(_notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        Ok(Vec::new())
    }
}

#[cfg(target_family = "wasm")]
export!(FromTheFuture);
