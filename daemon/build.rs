//! Builds the bundled channel plugins (`plugins/*`) for `wasm32-wasip2` into
//! `target/plugins/`, where the shipped `config/switchboard.toml` finds them, so that
//! `cargo run --release -- serve` on a fresh clone builds everything the embedded default
//! runs. The nested cargo has a target directory of its own (no lock contention with this
//! build) and none of this build's flags. Without the `wasm32-wasip2` target the daemon still
//! builds (plugins may come from elsewhere): a warning says how to add it, and `check-config`
//! and `serve` then name each missing plugin file. `SWITCHBOARD_SKIP_PLUGIN_BUILD=1` skips it.

// Build scripts talk to cargo on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

#[path = "../build-support/wasm_plugins.rs"]
mod wasm_plugins;

fn main() {
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_SKIP_PLUGIN_BUILD");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("daemon/ is in the repository root")
        .to_path_buf();
    for watched in ["plugin-sdk", "plugins", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("plugins");
    let output = target_dir.join("wasm32-wasip2").join("plugin");
    let packages = wasm_plugins::packages(&[&root.join("plugins")]);
    // Built again when one is missing (a path that does not exist always reruns this).
    for package in &packages {
        println!(
            "cargo:rerun-if-changed={}",
            output
                .join(format!("{}.wasm", package.replace('-', "_")))
                .display()
        );
    }
    if std::env::var_os("SWITCHBOARD_SKIP_PLUGIN_BUILD").is_some_and(|value| value == "1") {
        return;
    }
    if !wasm_plugins::build(&root, &packages, &target_dir) {
        println!(
            "cargo:warning=the bundled plugins were not built for wasm32-wasip2 (is the target installed? `rustup target add wasm32-wasip2`); the shipped configuration needs them in target/plugins/"
        );
    }
}
