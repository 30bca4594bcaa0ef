//! Configuration tests: snapshot pairs in `daemon/tests/config-ui/` (`NAME.toml`, optional
//! `NAME.env` with overrides, expected `NAME.out`), plus the shipped default config.
//! `UPDATE_EXPECT=1 cargo test -p switchboard config` rewrites the `.out` files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::*;

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config-ui")
}

/// What a case prints: the problems, or a summary of the parsed configuration.
fn render(name: &str, text: &str, env: &[(String, String)]) -> String {
    match parse(Path::new(&format!("{name}.toml")), text, env) {
        Err(error) => format!("error (exit 64)\n{error}\n"),
        Ok(config) => summary(&config),
    }
}

fn summary(config: &Config) -> String {
    let mut out = String::from("ok\n");
    let _ = writeln!(out, "server.listen = {}", config.server.listen);
    let _ = writeln!(
        out,
        "server.shutdown_grace = {:?}",
        config.server.shutdown_grace
    );
    let _ = writeln!(out, "store.path = {}", config.store.path.display());
    match &config.amqp {
        None => out.push_str("amqp = embedded transport\n"),
        Some(amqp) => {
            let _ = writeln!(
                out,
                "amqp.url = {} (prefetch {}, delivery limit {}, queues {} / {})",
                amqp.url,
                amqp.prefetch,
                amqp.delivery_limit,
                amqp.inbound_queue,
                amqp.dead_letter_queue
            );
        }
    }
    if let Some(cluster) = &config.cluster {
        let _ = writeln!(
            out,
            "cluster = node {} of {} partitions, lease {:?}, postgres {} schema {}",
            cluster.node_id,
            cluster.partitions,
            cluster.lease,
            cluster.postgres_url,
            cluster.postgres_schema
        );
    }
    let _ = writeln!(
        out,
        "auth = {} / {} / hs256 {:?}",
        config.auth.issuer, config.auth.audience, config.auth.hs256_secret
    );
    let teams: Vec<String> = config
        .teams
        .iter()
        .map(|team| team.id.to_string())
        .collect();
    let _ = writeln!(out, "teams = {}", teams.join(", "));
    for queue in &config.queues {
        let _ = writeln!(
            out,
            "queue {} (team {}) allows {:?}",
            queue.id, queue.team, queue.allowed_presences
        );
    }
    for agent in &config.agents {
        let _ = writeln!(
            out,
            "agent {} {:?} capacity {} queues {:?}{}",
            agent.id,
            agent.presence,
            agent.capacity,
            agent
                .queues
                .iter()
                .map(|queue| queue.as_str())
                .collect::<Vec<_>>(),
            if agent.bot { " (bot)" } else { "" }
        );
    }
    for plugin in &config.plugins {
        let _ = writeln!(
            out,
            "plugin {} -> queue {}, {} bytes, {:?}, settings {}",
            plugin.id,
            plugin.default_queue,
            plugin.memory_limit,
            plugin.time_limit,
            plugin.settings
        );
    }
    for kind in crate::engine::ChannelKind::ALL {
        let policy = config.policies.get(kind);
        let _ = writeln!(
            out,
            "policy {kind}: monitors {}, transfer {}, units {}, wrap-up {:?}, inactivity {:?}",
            policy.monitor_limit,
            policy.transfer,
            policy.capacity_units,
            policy.wrap_up_capacity,
            policy.inactivity_timeout
        );
    }
    out
}

#[test]
fn config_ui_cases_match_their_expected_output() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(ui_dir())
        .expect("tests/config-ui exists")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "config-ui cases: {cases:?}");
    let mut mismatches = Vec::new();
    for case in cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&case).unwrap();
        let env: Vec<(String, String)> = std::fs::read_to_string(case.with_extension("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        let actual = render(&name, &text, &env);
        let expected_path = case.with_extension("out");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            mismatches.push(format!(
                "--- {name}: expected\n{expected}--- {name}: actual\n{actual}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_shipped_default_config_is_valid_and_has_two_scoped_teams() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/switchboard.toml");
    let config = load_with_env(&file, &[]).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        config.amqp.is_none(),
        "the default runs on the embedded transport"
    );
    assert_eq!(config.store.path, PathBuf::from("./data"));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.plugins.len(), 5);
    assert!(config.teams.len() >= 2);
    for team in &config.teams {
        let queues: Vec<_> = config
            .queues
            .iter()
            .filter(|queue| queue.team == team.id)
            .collect();
        assert!(!queues.is_empty(), "team {} has no queue", team.id);
        let agents = config
            .agents
            .iter()
            .filter(|agent| {
                agent
                    .queues
                    .iter()
                    .any(|queue| queues.iter().any(|q| &q.id == queue))
            })
            .count();
        assert!(agents > 0, "team {} has no agents", team.id);
    }
    let setup = config.engine_setup(Vec::new());
    assert!(setup.check().is_empty(), "{:?}", setup.check());
}

#[test]
fn problems_point_at_line_and_column() {
    let text = "[server]\nlisten = \"x\"\n  bogus = 1\n";
    let error = parse(Path::new("s.toml"), text, &[]).unwrap_err();
    let rendered = error.to_string();
    assert!(rendered.contains("s.toml:2:10: "), "{rendered}");
    assert!(
        rendered.contains("s.toml:3:3: unknown key `server.bogus`"),
        "{rendered}"
    );
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret} {secret:?}"), "*** Secret(***)");
    let env = vec![(
        "SWITCHBOARD_AMQP__URL".to_owned(),
        "amqp://u:hunter2@h/".to_owned(),
    )];
    let text = std::fs::read_to_string(ui_dir().join("env.toml")).unwrap();
    let config = parse(Path::new("env.toml"), &text, &env).unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
    assert_eq!(config.amqp.unwrap().url.expose(), "amqp://u:hunter2@h/");
}

#[test]
fn sizes_and_ids() {
    assert_eq!(super::validate::bytes("64MiB"), Some(64 << 20));
    assert_eq!(super::validate::bytes("512KiB"), Some(512 << 10));
    assert_eq!(super::validate::bytes("1000"), Some(1000));
    assert_eq!(super::validate::bytes("64MB"), None);
    assert!(super::validate::valid_id("support-chat"));
    assert!(!super::validate::valid_id("a b"));
}

/// A configuration in a directory of its own, with files beside it.
fn config_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("switchboard-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

#[test]
fn any_string_can_come_from_a_file_or_the_environment() {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/switchboard.toml"),
    )
    .unwrap();
    let text = shipped
        .replace(
            "hs256_secret = \"dev-only-switchboard-hs256-secret-change-me\"",
            "hs256_secret = { file = \"secrets/hs256\" }",
        )
        .replace(
            "[plugins.sms-twilio.config]",
            "secrets = { auth_token = { file = \"secrets/twilio\" }, path = { env = \"PATH\" } }\n[plugins.sms-twilio.config]\nauth_token = { file = \"secrets/twilio\" }",
        );
    let dir = config_dir("secrets", &[]);
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(
        dir.join("secrets/hs256"),
        "a-32-byte-or-longer-hs256-secret-from-a-file\n",
    )
    .unwrap();
    // Kubernetes and systemd write the value as it is; an editor adds a newline (trimmed).
    std::fs::write(dir.join("secrets/twilio"), "twilio-token-from-file").unwrap();
    let file = dir.join("switchboard.toml");
    let config = parse(&file, &text, &[]).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        config.auth.hs256_secret.as_ref().unwrap().expose(),
        "a-32-byte-or-longer-hs256-secret-from-a-file"
    );
    let twilio = config
        .plugins
        .iter()
        .find(|plugin| plugin.id == "sms-twilio")
        .unwrap();
    assert_eq!(
        twilio.secrets["auth_token"].expose(),
        "twilio-token-from-file"
    );
    assert_eq!(
        twilio.secrets["path"].expose(),
        std::env::var("PATH").unwrap()
    );
    assert!(
        twilio
            .settings
            .expose()
            .contains("auth_token = \"twilio-token-from-file\"")
    );
    assert!(!format!("{config:?}").contains("twilio-token-from-file"));
}

#[test]
fn a_secret_that_cannot_be_read_is_a_problem_and_no_problem_quotes_a_secret() {
    let dir = config_dir("secret-problems", &[("listen", "canary-not-an-address\n")]);
    let text = "[server]\nlisten = { file = \"listen\" }\n\n[auth]\nissuer = { env = \"SWITCHBOARD_TEST_SURELY_UNSET\" }\naudience = { file = \"missing\" }\n";
    let error = parse(&dir.join("s.toml"), text, &[]).unwrap_err();
    let rendered = error.to_string();
    assert!(
        rendered.contains("s.toml:2:10: `server.listen` must be an address"),
        "{rendered}"
    );
    assert!(!rendered.contains("canary"), "{rendered}");
    assert!(
        rendered.contains(
            "s.toml:5:10: `auth.issuer`: environment variable SWITCHBOARD_TEST_SURELY_UNSET is not set"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains("s.toml:6:12: `auth.audience`: cannot read secret file"),
        "{rendered}"
    );
}
