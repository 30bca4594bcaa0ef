//! The `switchboard` binary from the outside: exit codes and output of `check-config` (every
//! problem with file, line and column, exit 64). The shipped default passing `check-config`
//! needs the built plugins: `tests/tests/serve_embedded.rs` checks it.

use std::process::Command;

fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    command.env_remove("RUST_LOG");
    // Overrides from the environment running the tests must not leak in.
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn check_config_lists_every_problem_and_exits_64() {
    let output = switchboard()
        .args([
            "check-config",
            "--config",
            "daemon/tests/config-ui/bad-values.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("daemon/tests/config-ui/bad-values.toml:"))
        .collect();
    assert_eq!(problems.len(), 13, "{stderr}");
    assert!(
        stderr.contains("bad-values.toml:22:8: queue `chat` names unknown team `sales`"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_are_checked_too() {
    let output = switchboard()
        .arg("check-config")
        .env("SWITCHBOARD_SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable SWITCHBOARD_SERVER__LISTEN"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let output = switchboard()
        .args(["check-config", "--config", "does/not/exist.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the configuration file"));
}
