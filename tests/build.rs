//! Builds every channel plugin and hostile test plugin for `wasm32-wasip2` before the
//! end-to-end tests compile, so `cargo test --workspace` needs nothing built by hand. The
//! nested cargo uses a target directory of its own (no lock contention with this build) and
//! sees none of this build's flags. The tests find the components through
//! `SWITCHBOARD_TEST_PLUGINS`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is in the repository root")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-plugins");

    let packages = plugin_packages(&root);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for package in &packages {
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
    let status = command
        .status()
        .expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    let components = target_dir.join("wasm32-wasip2").join("plugin");
    println!(
        "cargo:rustc-env=SWITCHBOARD_TEST_PLUGINS={}",
        components.display()
    );
    // `.cargo/config.toml` holds the wasm build flags.
    for watched in [
        "plugin-sdk",
        "plugins",
        "tests/plugins",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
}

/// The packages under `plugins/` and `tests/plugins/` (each directory with a Cargo.toml).
fn plugin_packages(root: &Path) -> Vec<String> {
    let mut packages = Vec::new();
    for parent in ["plugins", "tests/plugins"] {
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let manifest = entry.path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
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
