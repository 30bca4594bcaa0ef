//! A hostile test plugin (allocates until it cannot): it behaves on `describe`, `configure` and `encode`, and
//! misbehaves on `decode` when the body is `attack` (any other body decodes to nothing),
//! so tests can show the attack costs one call and the next call is served.

use switchboard_plugin_sdk::Plugin;
use switchboard_plugin_sdk::types::*;

#[derive(Debug)]
pub struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "hostile-memory-bomb".to_owned(),
            version: "0.1.0".to_owned(),
            channel: ChannelKind::Web,
            description: "allocates until it cannot".to_owned(),
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

/// Allocates (and touches) memory without bound.
fn attack() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

switchboard_plugin_sdk::export_plugin!(Hostile, headers: []);
