//! Shared by the build scripts of `daemon/` and `tests/` (included with `#[path]`): lists
//! plugin packages and builds them for `wasm32-wasip2` with a nested cargo, in a target
//! directory of its own (no lock contention with the outer build) and without the outer
//! build's flags.

use std::path::Path;
use std::process::Command;

/// The packages under each of `dirs` (each directory with a Cargo.toml), sorted.
pub(crate) fn packages(dirs: &[&Path]) -> Vec<String> {
    let mut packages = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("Cargo.toml")) else {
                continue;
            };
            let name = text
                .lines()
                .find_map(|line| line.strip_prefix("name = \""))
                .and_then(|rest| rest.strip_suffix('"'));
            if let Some(name) = name {
                packages.push(name.to_owned());
            }
        }
    }
    packages.sort();
    packages
}

/// Builds `packages` with the `plugin` profile into `target_dir`; whether it succeeded.
pub(crate) fn build(root: &Path, packages: &[String], target_dir: &Path) -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(variable);
    }
    command.status().is_ok_and(|status| status.success())
}
