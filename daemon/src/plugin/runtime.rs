//! Plugin step, process-wide: the one wasmtime `Engine` (epoch interruption with a 10 ms
//! ticker, pooling allocator with bounded memories, on-demand fallback), the linker (WASI
//! with nothing granted plus the `host` import), validation and API-version checks before
//! compiling, and the on-disk cache of compiled components.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::LoadError;
use super::bindings::{self, SUPPORTED};
use super::sandbox::Sandbox;

/// How often the epoch advances; a call's time budget is a number of these.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The WIT package a plugin must be built against.
const PACKAGE: &str = "switchboard:channel";

/// The engine, the linker and the compile cache, shared by every plugin.
pub(crate) struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<Sandbox>,
    cache_dir: Option<PathBuf>,
    compatibility: String,
    /// The allocator in use, for logs and `/readyz`.
    pub(crate) pooling: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .field("pooling", &self.pooling)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine. `max_memory` bounds every plugin memory (the pooling allocator
    /// reserves address space per slot, so its default of 4 GiB would reserve far too much).
    pub(crate) fn new(
        max_memory: usize,
        cache_dir: Option<PathBuf>,
    ) -> Result<Arc<Self>, LoadError> {
        let (engine, pooling) = match Engine::new(&config(Some(max_memory))) {
            Ok(engine) => (engine, true),
            Err(error) => {
                tracing::warn!(error = %error, "pooling allocator unavailable; falling back to on-demand allocation");
                let engine = Engine::new(&config(None))
                    .map_err(|error| LoadError::Engine(error.to_string()))?;
                (engine, false)
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|error| LoadError::Engine(error.to_string()))?;
        bindings::add_to_linker(&mut linker)
            .map_err(|error| LoadError::Engine(error.to_string()))?;
        start_ticker(&engine);
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compatibility = format!("{:016x}", hasher.finish());
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|error| LoadError::Cache {
                path: dir.clone(),
                reason: error.to_string(),
            })?;
        }
        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir,
            compatibility,
            pooling,
        }))
    }

    /// Validates, checks the API version, and compiles (or loads from the cache) a plugin.
    /// A cache hit skips full validation: the cache is keyed by the SHA-256 of these very
    /// bytes, which were validated before they were compiled and cached.
    pub(super) fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let source_hash = format!("{:x}", Sha256::digest(bytes));
        let key = format!("{source_hash}-{}", self.compatibility);
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{key}.cwasm")));
        if let Some(cached) = &cached
            && cached.exists()
        {
            let api_version = api_version(path, bytes)?;
            match load_cached(&self.engine, cached) {
                Ok(component) => {
                    return Ok(Compiled {
                        component,
                        api_version,
                        hash: key,
                        source_hash,
                        from_cache: true,
                    });
                }
                Err(error) => {
                    tracing::warn!(path = %cached.display(), error = %error, "discarding an unreadable compiled plugin");
                    let _ = std::fs::remove_file(cached);
                }
            }
        }
        validate(path, bytes)?;
        let api_version = api_version(path, bytes)?;
        let component =
            Component::new(&self.engine, bytes).map_err(|error| LoadError::Compile {
                path: path.to_path_buf(),
                reason: format!("{error:#}"),
            })?;
        if let Some(cached) = &cached
            && let Err(error) = store_cached(&component, cached)
        {
            tracing::warn!(path = %cached.display(), error = %error, "could not cache a compiled plugin");
        }
        Ok(Compiled {
            component,
            api_version,
            hash: key,
            source_hash,
            from_cache: false,
        })
    }
}

/// A compiled component and what was learnt about it.
pub(super) struct Compiled {
    pub(super) component: Component,
    pub(super) api_version: String,
    /// Content hash of the `.wasm` and the engine's compatibility hash.
    pub(super) hash: String,
    /// SHA-256 of the `.wasm` alone (reload detects a changed file with it).
    pub(super) source_hash: String,
    pub(super) from_cache: bool,
}

fn config(max_memory: Option<usize>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // `perf` names plugin functions from the map wasmtime writes (`/tmp/perf-<pid>.map`);
    // off unless asked for, as the map grows with every compiled plugin.
    if std::env::var_os("SWITCHBOARD_WASM_PERFMAP").is_some_and(|value| value == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // Hostile plugins may recurse deeply: a bounded stack traps instead of crashing the host.
    config.max_wasm_stack(1 << 20);
    if let Some(max_memory) = max_memory {
        let mut pooling = PoolingAllocationConfig::default();
        pooling.max_memory_size(max_memory);
        pooling.total_component_instances(256);
        pooling.total_core_instances(1024);
        pooling.total_memories(512);
        pooling.total_tables(1024);
        pooling.total_stacks(256);
        pooling.max_memories_per_component(8);
        pooling.max_core_instances_per_component(32);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// A thread that advances the epoch every tick while the engine lives; it holds only a weak
/// handle, so dropping the engine ends it.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "cannot start the epoch ticker; plugin time limits fall back to the wall-clock backstop");
    }
}

/// Validates the whole file before anything is compiled or instantiated.
fn validate(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let invalid = |reason: String| LoadError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if !wasmparser::Parser::is_component(bytes) {
        return Err(invalid(if wasmparser::Parser::is_core_wasm(bytes) {
            "a core WebAssembly module, not a component: build with `--target wasm32-wasip2`"
                .to_owned()
        } else {
            "not a WebAssembly component".to_owned()
        }));
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(bytes)
        .map_err(|error| invalid(error.to_string()))?;
    Ok(())
}

/// Which `switchboard:channel` version the component exports, from its top-level export
/// names; refused before instantiation when the host does not support it.
fn api_version(path: &Path, bytes: &[u8]) -> Result<String, LoadError> {
    let invalid = |reason: String| LoadError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut depth = 0usize;
    let mut exported = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|error| invalid(error.to_string()))? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|error| invalid(error.to_string()))?;
                    exported.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    let plugin_export = exported
        .iter()
        .find_map(|name| name.strip_prefix(&format!("{PACKAGE}/plugin@")))
        .map(str::to_owned);
    let Some(version) = plugin_export else {
        let other = exported.iter().find_map(|name| {
            name.strip_prefix(PACKAGE)
                .and_then(|rest| rest.split_once('@'))
                .map(|(_, version)| version.to_owned())
        });
        return Err(match other {
            Some(version) => LoadError::ApiVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SUPPORTED.join(", "),
            },
            None => LoadError::NotAPlugin {
                path: path.to_path_buf(),
                exports: exported,
            },
        });
    };
    if !SUPPORTED
        .iter()
        .any(|supported| compatible(&version, supported))
    {
        return Err(LoadError::ApiVersion {
            path: path.to_path_buf(),
            found: version,
            supported: SUPPORTED.join(", "),
        });
    }
    Ok(version)
}

/// Semver compatibility as Cargo reads it: the same major, and for 0.x the same minor.
fn compatible(found: &str, supported: &str) -> bool {
    let parts = |version: &str| -> Option<(u64, u64)> {
        let mut numbers = version.split('.').map(|part| part.parse::<u64>().ok());
        Some((numbers.next()??, numbers.next()??))
    };
    match (parts(found), parts(supported)) {
        (Some((0, found_minor)), Some((0, minor))) => found_minor == minor,
        (Some((found_major, _)), Some((major, _))) => found_major == major,
        _ => false,
    }
}

#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts its input to be wasmtime's own output. The cache
    // directory holds only files this daemon wrote (`store_cached`, atomically renamed into
    // place), named by the SHA-256 of the source `.wasm` and the engine's compatibility hash;
    // nothing else is ever deserialized. This is the only unsafe code in the daemon.
    unsafe { Component::deserialize_file(engine, path) }
}

fn store_cached(component: &Component, path: &Path) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compatible_like_cargo() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }

    #[test]
    fn core_modules_and_junk_are_refused_before_compiling() {
        let core = b"\0asm\x01\0\0\0";
        let error = validate(Path::new("core.wasm"), core).unwrap_err();
        assert!(
            error.to_string().contains("core WebAssembly module"),
            "{error}"
        );
        let error = validate(Path::new("junk.wasm"), b"hello").unwrap_err();
        assert!(
            error.to_string().contains("not a WebAssembly component"),
            "{error}"
        );
    }
}
