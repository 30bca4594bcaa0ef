//! A hostile test plugin (traps (panics)): it behaves on `describe`, `configure` and `encode`, and
//! misbehaves on `decode` when the body is `attack` (any other body decodes to nothing),
//! so tests can show the attack costs one call and the next call is served.

use switchboard_plugin_sdk::Plugin;
use switchboard_plugin_sdk::types::*;

#[derive(Debug)]
pub struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "hostile-trap".to_owned(),
            version: "0.1.0".to_owned(),
            channel: ChannelKind::Web,
            description: "traps (panics)".to_owned(),
        }
    }

    fn configure(_settings: String) -> Result<(), PluginError> {
        Ok(())
    }

    fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> {
        if request.body == b"attack" {
            attack();
        }
        Ok(Vec::new())
    }

    fn encode(_notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        Ok(Vec::new())
    }
}

/// Panics, which is a trap in WebAssembly; the message goes to stderr first.
fn attack() {
    let nothing: Option<u32> = std::hint::black_box(None);
    panic!("hostile plugin panicking on purpose: {nothing:?}");
}

switchboard_plugin_sdk::export_plugin!(Hostile, headers: []);
