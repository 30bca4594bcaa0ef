//! Switchboard: the channel-neutral supervision engine for contact-center conversations.
//! The library holds every step of the flow; `main.rs` is the `switchboard` command line.
//! See `ARCHITECTURE.md` for the map.

#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
pub mod sentiment;
pub mod telemetry;
