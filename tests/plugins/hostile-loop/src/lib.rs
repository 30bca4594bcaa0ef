//! A hostile test plugin (loops forever): it behaves on `describe`, `configure` and `encode`, and
//! misbehaves on `decode` when the body is `attack` (any other body decodes to nothing),
//! so tests can show the attack costs one call and the next call is served.

use switchboard_plugin_sdk::Plugin;
use switchboard_plugin_sdk::types::*;

#[derive(Debug)]
pub struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "hostile-loop".to_owned(),
            version: "0.1.0".to_owned(),
            channel: ChannelKind::Web,
            description: "loops forever".to_owned(),
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

/// Never returns: only the epoch deadline stops it.
#[allow(clippy::empty_loop)]
fn attack() {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

switchboard_plugin_sdk::export_plugin!(Hostile, headers: []);
