//! Builds every channel plugin and hostile test plugin for `wasm32-wasip2` before the
//! end-to-end tests compile, so `cargo test --workspace` needs nothing built by hand. The
//! nested cargo uses a target directory of its own (no lock contention with this build) and
//! sees none of this build's flags. The tests find the components through
//! `SWITCHBOARD_TEST_PLUGINS`.

use std::path::{Path, PathBuf};

#[path = "../build-support/wasm_plugins.rs"]
mod wasm_plugins;

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

    let packages = wasm_plugins::packages(&[&root.join("plugins"), &root.join("tests/plugins")]);
    if !wasm_plugins::build(&root, &packages, &target_dir) {
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
