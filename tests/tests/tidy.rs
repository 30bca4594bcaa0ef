//! Repository tidiness, checked under `cargo test` (after rust-analyzer's `tidy.rs`): every
//! Rust module opens with a `//!` doc saying its place in the flow, each foreign crate is
//! imported by the one module that owns it, and the engine stays free of I/O and clocks.

use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

/// Every `.rs` file of the repository outside build output.
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if name == "target" || name.starts_with('.') || name == "data" {
                    continue;
                }
                walk(&path, out);
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_root(), &mut files);
    files.sort();
    assert!(files.len() > 10, "tidy found too few files: {files:?}");
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let mut missing = Vec::new();
    for file in rust_files() {
        let text = fs::read_to_string(&file).expect("readable source");
        let first = text.lines().find(|line| !line.trim().is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            missing.push(relative(&file));
        }
    }
    assert!(
        missing.is_empty(),
        "these files must open with a `//!` line saying their place in the flow:\n{}",
        missing.join("\n")
    );
}

/// Foreign crates and the one place allowed to import each (a path prefix).
const OWNERS: &[(&str, &str)] = &[
    ("wasmtime", "daemon/src/plugin/"),
    ("wasmtime_wasi", "daemon/src/plugin/"),
    ("wasmparser", "daemon/src/plugin/"),
    ("lapin", "daemon/src/transport/amqp/"),
    ("axum", "daemon/src/admin/"),
    ("jsonwebtoken", "daemon/src/admin/"),
    ("utoipa", "daemon/src/admin/"),
    ("utoipa_axum", "daemon/src/admin/"),
    ("redb", "daemon/src/store/"),
    ("lz4_flex", "daemon/src/store/"),
    ("tokio_postgres", "daemon/src/store/postgres/"),
    ("vader_sentiment", "daemon/src/sentiment.rs"),
    ("toml", "daemon/src/config/"),
    ("reqwest", "daemon/src/delivery/http.rs"),
    ("rustls", "daemon/src/delivery/http.rs"),
    ("tokio_tungstenite", "daemon/src/ari.rs"),
    ("tracing_subscriber", "daemon/src/telemetry.rs"),
];

/// Every owned crate is a dependency of the daemon: an entry for a crate it no longer uses
/// would check nothing.
#[test]
fn every_owned_crate_is_a_dependency() {
    let manifest = fs::read_to_string(repo_root().join("daemon/Cargo.toml")).expect("manifest");
    let missing: Vec<&str> = OWNERS
        .iter()
        .map(|(krate, _)| *krate)
        .filter(|krate| {
            let dashed = krate.replace('_', "-");
            !manifest.lines().any(|line| {
                [*krate, dashed.as_str()].iter().any(|name| {
                    line.starts_with(&format!("{name} ")) || line.starts_with(&format!("{name}."))
                })
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not dependencies of the daemon: {missing:?}"
    );
}

/// Ownership is the daemon's rule; tests and benches exercise crates from the outside, and
/// the plugin SDK and plugins are separate programs.
fn exempt(path: &str) -> bool {
    !path.starts_with("daemon/src/")
}

fn mentions_crate(text: &str, krate: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        if line.starts_with("//") {
            return false;
        }
        line.contains(&format!("{krate}::"))
            && line.match_indices(&format!("{krate}::")).any(|(at, _)| {
                at == 0 || {
                    let before = line.as_bytes()[at - 1];
                    !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
                }
            })
    })
}

#[test]
fn foreign_crates_stay_in_their_owning_module() {
    let mut strays = Vec::new();
    for file in rust_files() {
        let path = relative(&file);
        if exempt(&path) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        for (krate, owner) in OWNERS {
            if mentions_crate(&text, krate) && !path.starts_with(owner) {
                strays.push(format!(
                    "{path} uses `{krate}`, which only {owner} may import"
                ));
            }
        }
    }
    assert!(strays.is_empty(), "{}", strays.join("\n"));
}

#[test]
fn the_engine_does_no_io_and_reads_no_clock() {
    let forbidden = [
        "tokio",
        "std::fs",
        "std::net",
        "std::thread",
        "SystemTime",
        "Instant::now",
        "std::env",
        "rand::",
    ];
    let mut found = Vec::new();
    for file in rust_files() {
        let path = relative(&file);
        // The engine's own tests may read the environment (proptest case counts).
        if !path.starts_with("engine/src/") || path.starts_with("engine/src/tests") {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        for word in forbidden {
            if text
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .any(|line| line.contains(word))
            {
                found.push(format!("{path} mentions `{word}`"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the engine is sans-IO:\n{}",
        found.join("\n")
    );
}

/// "No I/O" is enforced by the engine crate's dependency tree, not only by its source: nothing
/// that does I/O may be compiled into it, directly or transitively.
#[test]
fn the_engine_crate_depends_on_nothing_that_does_io() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(repo_root())
        .args([
            "tree",
            "-p",
            "switchboard-engine",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"switchboard-engine"), "{tree}");
    let io = [
        "tokio", "mio", "wasmtime", "lapin", "axum", "hyper", "redb", "socket2", "libc",
    ];
    let found: Vec<&&str> = crates.iter().filter(|name| io.contains(name)).collect();
    assert!(
        found.is_empty(),
        "the engine crate pulls in {found:?}:\n{tree}"
    );
}

#[test]
fn the_ownership_check_catches_a_stray_import() {
    assert!(mentions_crate("use wasmtime::Engine;", "wasmtime"));
    assert!(mentions_crate(
        "    let e = wasmtime::Engine::default();",
        "wasmtime"
    ));
    assert!(!mentions_crate("use my_wasmtime::Engine;", "wasmtime"));
    assert!(!mentions_crate(
        "// wasmtime::Engine in a comment",
        "wasmtime"
    ));
}

/// The daemon's one unsafe block (loading compiled plugins it cached itself) lives in
/// `plugin/runtime.rs` with its safety argument; nowhere else.
#[test]
fn unsafe_code_only_where_it_is_argued() {
    let mut found = Vec::new();
    for file in rust_files() {
        let path = relative(&file);
        if !path.starts_with("daemon/src/") || path == "daemon/src/plugin/runtime.rs" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        if text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .any(|line| {
                line.contains("unsafe {")
                    || line.contains("unsafe fn")
                    || line.contains("allow(unsafe_code)")
            })
        {
            found.push(path);
        }
    }
    assert!(
        found.is_empty(),
        "unsafe code outside plugin/runtime.rs: {found:?}"
    );
}
