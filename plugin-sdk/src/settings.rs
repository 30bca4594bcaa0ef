//! The plugin's settings: its `[plugins.<id>.config]` table, handed over as TOML text by
//! `configure` and kept for the instance's life.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;

use crate::types::PluginError;

/// Parses the settings text into `T`; unknown keys are the plugin's to refuse (use
/// `#[serde(deny_unknown_fields)]`). An error names the key it is about when it can: the
/// operator reads it in the daemon's start-up failure, far from the plugin's source.
pub fn parse<T: DeserializeOwned>(settings: &str) -> Result<T, PluginError> {
    toml::from_str(settings).map_err(|error| {
        let key = error.span().and_then(|span| key_at(settings, span.start));
        PluginError::Config(match key {
            Some(key) if !error.message().contains(&format!("`{key}`")) => {
                format!("`{key}`: {}", error.message())
            }
            _ => error.message().to_owned(),
        })
    })
}

/// The key of the `key = value` line that holds byte `offset` (as the daemon writes settings:
/// one key per line, sub-tables under `[headers]`).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |at| at + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        name: String,
        retries: u32,
    }

    #[test]
    fn a_wrong_value_names_its_key() {
        let error = parse::<Example>("name = \"x\"\nretries = \"three\"\n").unwrap_err();
        let PluginError::Config(text) = error else {
            panic!("a config error")
        };
        assert!(text.starts_with("`retries`: "), "{text}");
        let missing = parse::<Example>("name = \"x\"\n").unwrap_err();
        let PluginError::Config(text) = missing else {
            panic!("a config error")
        };
        assert!(text.contains("retries"), "{text}");
    }
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
