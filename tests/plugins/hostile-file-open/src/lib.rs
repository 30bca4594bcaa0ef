//! A hostile test plugin: on `decode` of the body `attack` it tries the file system, the
//! network, the environment and the clock, and reports what it reached as an `unsupported`
//! error (the test expects every attempt to have failed and the clock to read the epoch).

use switchboard_plugin_sdk::Plugin;
use switchboard_plugin_sdk::types::*;

#[derive(Debug)]
pub struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo {
            id: "hostile-file-open".to_owned(),
            version: "0.1.0".to_owned(),
            channel: ChannelKind::Web,
            description: "tries to read files and reach the network".to_owned(),
        }
    }

    fn configure(_settings: String) -> Result<(), PluginError> {
        Ok(())
    }

    fn decode(request: Inbound) -> Result<Vec<Event>, PluginError> {
        if request.body != b"attack" {
            return Ok(Vec::new());
        }
        let reached = |ok: bool| if ok { "REACHED" } else { "denied" };
        let file = std::fs::read("/etc/passwd").is_ok();
        let dir = std::fs::read_dir("/").is_ok();
        let create = std::fs::write("/tmp/switchboard-escape", b"x").is_ok();
        let socket = std::net::TcpStream::connect("127.0.0.1:5672").is_ok();
        let env = std::env::vars().count() > 0;
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        Err(PluginError::Unsupported(format!(
            "file {} dir {} create {} socket {} env {} clock {clock}",
            reached(file),
            reached(dir),
            reached(create),
            reached(socket),
            reached(env),
        )))
    }

    fn encode(_notification: Notification) -> Result<Vec<OutboundRequest>, PluginError> {
        Ok(Vec::new())
    }
}

switchboard_plugin_sdk::export_plugin!(Hostile, headers: []);
