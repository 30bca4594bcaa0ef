//! The daemon's one clock: wall-clock time as the engine takes it (the engine reads none of
//! its own; every input carries its time). Its own module, so that whatever needs the time
//! does not depend on the service that runs the daemon.

use crate::engine::Millis;

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now() -> Millis {
    Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as i64)
            .unwrap_or(0),
    )
}
