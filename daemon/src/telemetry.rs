//! Process setup, before anything else runs: logs to stderr through `tracing`, human-readable
//! on a terminal, JSON with `--log-format json`. The only importer of `tracing_subscriber`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Whether log lines may carry conversation content: message texts, whispers, payload
/// bodies, and the customer identifiers inside rule and plugin details. Off unless an
/// operator turns it on (`server.log_content`), since logs travel further than the store.
static LOG_CONTENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets [`content`]'s switch, once, from the configuration.
pub fn log_content(enabled: bool) {
    LOG_CONTENT.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// `text` when content logging is on, else a placeholder that says why it is missing.
pub fn content(text: &str) -> &str {
    if LOG_CONTENT.load(std::sync::atomic::Ordering::Relaxed) {
        text
    } else {
        "[content not logged: set server.log_content = true to log it]"
    }
}
