//! Plugin step, per instance: the store's data — WASI with nothing granted (no files,
//! sockets, environment or real clock), a memory cap that remembers when it refused growth,
//! guest stderr captured for the log, and the `host` import (the plugin's log).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

/// Guest stderr kept per instance; an instance past half of it is retired, so a chatty
/// plugin never sees a failing write (Rust's `eprintln!` would panic on one).
pub(super) const STDERR_CAPACITY: usize = 1 << 20;
/// Longest log line taken from a plugin.
const MAX_LOG_LINE: usize = 4096;

/// The data of one plugin instance's store.
pub(crate) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limits,
    pub(super) stderr: MemoryOutputPipe,
    /// Bytes of stderr already written to the log.
    pub(super) stderr_logged: usize,
    plugin: Arc<str>,
}

impl Sandbox {
    pub(super) fn new(plugin: Arc<str>, memory_limit: usize) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .stdout(stderr.clone())
            // No real time: a plugin gets the time it needs inside its request
            // (`received-at`, `now`), which keeps decode and encode reproducible.
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                memory: memory_limit,
                refused: false,
            },
            stderr,
            stderr_logged: 0,
            plugin,
        }
    }

    /// Writes what the guest printed since the last call to the log, line by line.
    pub(super) fn drain_stderr(&mut self) {
        let contents = self.stderr.contents();
        if contents.len() <= self.stderr_logged {
            return;
        }
        let fresh = String::from_utf8_lossy(&contents[self.stderr_logged..]).into_owned();
        self.stderr_logged = contents.len();
        for line in fresh.lines().filter(|line| !line.trim().is_empty()) {
            tracing::warn!(plugin = %self.plugin, stderr = %truncate(line), "plugin wrote to stderr");
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Sandbox {
    /// A plugin's log line, whichever version's `host` interface it came through.
    fn log_line(&self, level: tracing::Level, message: &str) {
        let plugin = &*self.plugin;
        let message = truncate(message);
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
        }
    }
}

/// The `host` import of every supported version: the same log.
macro_rules! host_import {
    ($version:ident) => {
        impl super::bindings::$version::switchboard::channel::host::Host for Sandbox {
            fn log(
                &mut self,
                level: super::bindings::$version::switchboard::channel::host::Level,
                message: String,
            ) {
                use super::bindings::$version::switchboard::channel::host::Level;
                let level = match level {
                    Level::Trace => tracing::Level::TRACE,
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.log_line(level, &message);
            }
        }
    };
}

host_import!(v0_1);
host_import!(v0_2);

fn truncate(text: &str) -> &str {
    if text.len() <= MAX_LOG_LINE {
        return text;
    }
    let mut end = MAX_LOG_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The memory cap. Refusing growth traps the call (`trap_on_grow_failure` semantics) and is
/// remembered, so the host can tell an out-of-memory from any other trap.
pub(crate) struct Limits {
    memory: usize,
    pub(super) refused: bool,
}

/// Tables are small in channel plugins; this bounds a hostile one.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.refused = true;
            return Err(wasmtime::format_err!(
                "plugin memory limit of {} bytes reached (wanted {desired})",
                self.memory
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.refused = true;
            return Err(wasmtime::format_err!(
                "plugin table limit of {MAX_TABLE_ELEMENTS} elements reached"
            ));
        }
        Ok(true)
    }
}

/// A clock stopped at the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// The `types` interface has no functions; each version's binding still wants it implemented.
impl super::bindings::v0_1::switchboard::channel::types::Host for Sandbox {}
impl super::bindings::v0_2::switchboard::channel::types::Host for Sandbox {}
