//! Tests' PostgreSQL: each test gets a schema of its own in the shared test database
//! (`SWITCHBOARD_TEST_POSTGRES_URL`, by default the local server's `test` database), dropped
//! when the test ends; a test that stops and starts its server gets one of its own
//! ([`PrivateServer`]), so the shared one is never left broken. Without a server the test says
//! SKIPPED loudly, and fails instead with `SWITCHBOARD_REQUIRE_POSTGRES=1` (CI).

use super::Database;

/// The local server's `test` database, trust authentication.
const DEFAULT_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";

pub(crate) fn url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema of the test's own, dropped with it.
#[derive(Debug)]
pub(crate) struct TestSchema {
    pub(crate) database: Database,
    pub(crate) name: String,
}

impl TestSchema {
    /// A fresh schema for `test`, migrated; `None` after a loud skip when no server answers.
    #[allow(clippy::print_stderr)]
    pub(crate) fn new(test: &str) -> Option<Self> {
        let name = format!(
            "sbtest_{}_{}_{}",
            test.chars()
                .map(|c| if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                })
                .take(30)
                .collect::<String>(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
        );
        match Database::open(&url(), &name) {
            Ok(database) => Some(Self { database, name }),
            Err(error) if std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("SWITCHBOARD_REQUIRE_POSTGRES=1 but PostgreSQL does not answer: {error}")
            }
            Err(error) => {
                eprintln!(
                    "SKIPPED: no PostgreSQL at the test URL ({error}); set SWITCHBOARD_REQUIRE_POSTGRES=1 to fail instead"
                );
                None
            }
        }
    }

    /// Runs `sql` in the test's schema (what a test does behind the daemon's back: a lease
    /// run out, a schema from a newer version).
    pub(crate) fn execute(&self, sql: &str) {
        self.database
            .connection()
            .run(async |client| {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(crate::store::write_error)
            })
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let drop_schema = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let _ = self.database.connection().run(async |client| {
            client
                .batch_execute(&drop_schema)
                .await
                .map_err(crate::store::write_error)
        });
    }
}

/// A PostgreSQL server of the test's own (`initdb` in a temporary directory, on a free port),
/// which a test may stop and start again without touching the shared one. Stopped and removed
/// when dropped. `None` after a loud skip when the server's programs are not installed (a
/// failure instead with `SWITCHBOARD_REQUIRE_POSTGRES=1`).
#[derive(Debug)]
pub(crate) struct PrivateServer {
    dir: std::path::PathBuf,
    port: u16,
}

/// Where Debian installs PostgreSQL 15's server programs.
const SERVER_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PrivateServer {
    #[allow(clippy::print_stderr)]
    pub(crate) fn start(test: &str) -> Option<Self> {
        let initdb = std::path::Path::new(SERVER_BIN).join("initdb");
        if !initdb.exists() {
            if std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "SWITCHBOARD_REQUIRE_POSTGRES=1 but {} is missing",
                    initdb.display()
                );
            }
            eprintln!("SKIPPED: no PostgreSQL server programs at {SERVER_BIN}");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "switchboard-pg-{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap();
        let server = Self { dir, port };
        // PostgreSQL refuses to run as root: as root, its programs run as `postgres`.
        server.own_dir();
        server.run(&[
            "initdb",
            "-D",
            &server.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        server.resume();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn own_dir(&self) {
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres", &self.dir.display().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", self.dir.display());
        }
    }

    fn run(&self, arguments: &[&str]) {
        let program = std::path::Path::new(SERVER_BIN).join(arguments[0]);
        let mut command = if is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            std::process::Command::new(&program)
        };
        let output = command.args(&arguments[1..]).output().unwrap();
        assert!(
            output.status.success(),
            "{arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server (again), waiting until it answers.
    pub(crate) fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    /// Stops the server at once (`-m fast`: connections are cut, as in a restart).
    pub(crate) fn stop(&self) {
        self.run(&["pg_ctl", "-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let program = std::path::Path::new(SERVER_BIN).join("pg_ctl");
        let data = self.data();
        let arguments = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if is_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(arguments)
                .output()
        } else {
            std::process::Command::new(&program)
                .args(arguments)
                .output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this process runs as root (the programs then run as `postgres`).
fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|user| user == "root")
        || std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(1))
                == Some("0")
        })
}
