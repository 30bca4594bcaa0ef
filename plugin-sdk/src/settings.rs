//! The plugin's settings: its `[plugins.<id>.config]` table, handed over as TOML text by
//! `configure` and kept for the instance's life.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::types::PluginError;

/// Parses the settings text into `T`; unknown keys are the plugin's to refuse (use
/// `#[serde(deny_unknown_fields)]`).
pub fn parse<T: DeserializeOwned>(settings: &str) -> Result<T, PluginError> {
    toml::from_str(settings).map_err(|error| PluginError::Config(error.message().to_owned()))
}

/// Settings stored by `configure` and read by `decode` and `encode`.
#[derive(Debug)]
pub struct Settings<T>(OnceLock<T>);

impl<T> Settings<T> {
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// Stores the settings (the first `configure` of an instance wins; the host calls it once).
    pub fn set(&self, value: T) {
        let _ = self.0.set(value);
    }

    /// The stored settings, or a `config` error if `configure` was not called.
    pub fn get(&self) -> Result<&T, PluginError> {
        self.0
            .get()
            .ok_or_else(|| PluginError::Config("the plugin was not configured".to_owned()))
    }
}

impl<T> Default for Settings<T> {
    fn default() -> Self {
        Self::new()
    }
}
