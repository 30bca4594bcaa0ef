//! Switchboard: the channel-neutral supervision engine for contact-center conversations.
//! The library holds every step of the flow; `main.rs` is the `switchboard` command line.
//! See `ARCHITECTURE.md` for the map.

// Unsafe code is denied; the single exception (loading compiled plugins this daemon cached
// itself) is `plugin::runtime::load_cached`, with its safety argument.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod ari;
pub mod attendance;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
/// The supervision engine lives in its own crate (`engine/`), re-exported under its old path.
pub use switchboard_engine as engine;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod plugin;
pub mod sentiment;
pub mod service;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod transport;
