//! Tests' PostgreSQL: each test gets a schema of its own in the shared test database
//! (`SWITCHBOARD_TEST_POSTGRES_URL`, by default the local server's `test` database), dropped
//! when the test ends. Without a server the test says SKIPPED loudly, and fails instead with
//! `SWITCHBOARD_REQUIRE_POSTGRES=1` (CI).

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
