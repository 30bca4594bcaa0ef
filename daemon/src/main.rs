//! The `switchboard` command line: parses arguments, loads the configuration (exit 64 on any
//! problem, before anything else happens) and runs the chosen subcommand.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::cli::{self, CliError, DecodeRequest, EncodeRequest};
use switchboard::config::{self, Config};
use switchboard::telemetry::{self, LogFormat};

/// sysexits' EX_USAGE: the configuration (or the command line) is wrong.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Channel-neutral supervision engine for contact-center conversations"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = config::DEFAULT_FILE)]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Serve,
    /// Validate the configuration and print every problem (exit 64 if there is any).
    CheckConfig,
    /// Mint a development token (HS256, with the configured secret, issuer and audience).
    Token {
        /// The subject: a supervisor, agent or gateway id.
        #[arg(long)]
        sub: String,
        /// `supervisor`, `admin`, `agent` or `ingest` (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A team (Keycloak group) the subject belongs to (repeatable).
        #[arg(long = "team")]
        teams: Vec<String>,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Channel plugins: list, inspect, decode, encode, new.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Cluster mode's tools.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Move a single daemon's embedded store into the new cluster the configuration names
    /// (before its nodes start; the single daemon stopped).
    Import {
        /// The embedded store's directory (the single daemon's `store.path`).
        #[arg(long)]
        from: PathBuf,
        /// Leave the outbox behind: for a daemon whose outbox an outside worker read
        /// (`[delivery] enabled = false`), whose entries the cluster would send again.
        #[arg(long)]
        skip_outbox: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// The configured plugins and what each says about itself.
    List,
    /// A plugin file's API version, channel kind and capabilities.
    Inspect {
        /// The plugin's `.wasm` component.
        file: PathBuf,
    },
    /// Run a plugin's decode on a payload and print the canonical events (or its error).
    Decode {
        /// A plugin id from the configuration, or a `.wasm` file.
        plugin: String,
        /// The provider payload, byte for byte.
        #[arg(long)]
        body: PathBuf,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The URL the provider called (signature schemes sign it).
        #[arg(long)]
        url: Option<String>,
        /// The payload's content type.
        #[arg(long)]
        content_type: Option<String>,
        /// The plugin's settings as TOML (instead of its `[plugins.<id>.config]`).
        #[arg(long)]
        plugin_config: Option<PathBuf>,
    },
    /// Run a directory of sample payloads and notifications through a plugin and compare
    /// each output with its expectation (`--accept` writes the outputs as expectations).
    Test {
        /// The directory of cases (see the README's "Plugins").
        dir: PathBuf,
        /// A plugin id from the configuration, or a `.wasm` file.
        #[arg(long)]
        plugin: String,
        /// Write every output as its case's expectation.
        #[arg(long)]
        accept: bool,
    },
    /// Write a new plugin crate, ready to build for wasm32-wasip2 and to test natively.
    New {
        /// The plugin's id (lowercase letters, digits, `-`), also the crate's name.
        name: String,
        /// Where to create its directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin SDK's directory (default: the one this binary was built from, when it
        /// is there; else a git dependency on the project's repository).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run a plugin's encode on a notification and print the provider requests (or its
    /// error), without a daemon: one of --notification, --message, --joined, --closed,
    /// --end-session.
    Encode {
        /// A plugin id from the configuration, or a `.wasm` file.
        plugin: String,
        /// The conversation's thread key, as the plugin's events name it (e.g.
        /// `106540352242922/16505551234`).
        #[arg(long)]
        thread: String,
        /// The customer's provider id (phone number, contact id).
        #[arg(long)]
        customer: String,
        /// When the customer last wrote, in milliseconds since the Unix epoch (default: now,
        /// inside any service window).
        #[arg(long)]
        customer_last_message_at: Option<i64>,
        /// A notification body as JSON (`{"type": "message", "author": {"kind":
        /// "supervisor", "id": "sup-1"}, "text": "Hello", "visibility": "public"}`).
        #[arg(long)]
        notification: Option<PathBuf>,
        /// Shortcut: a supervisor's public message with this text.
        #[arg(long)]
        message: Option<String>,
        /// Shortcut: a supervisor joined (`internal`, `public` or `barge`).
        #[arg(long)]
        joined: Option<String>,
        /// Shortcut: a supervisor closed the conversation, with this reason.
        #[arg(long)]
        closed: Option<String>,
        /// Shortcut: end the provider session.
        #[arg(long)]
        end_session: bool,
        /// The plugin's settings as TOML (instead of its `[plugins.<id>.config]`).
        #[arg(long)]
        plugin_config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let default_config = cli.config == std::path::Path::new(config::DEFAULT_FILE);
    let result = match cli.command {
        Command::Serve => load_checked(&cli.config).and_then(|config| {
            serve(config).map_err(|error| Failure::Failed(format!("{error:#}")))
        }),
        Command::Token {
            sub,
            roles,
            teams,
            ttl,
        } => load(&cli.config).and_then(|config| token(&config, sub, roles, teams, ttl.into())),
        Command::CheckConfig => load_checked(&cli.config).map(|config| {
            let summary = format!(
                "{}: ok ({} teams, {} queues, {} agents, {} plugins, {})",
                config.file.display(),
                config.teams.len(),
                config.queues.len(),
                config.agents.len(),
                config.plugins.len(),
                if config.amqp.is_some() {
                    "AMQP transport"
                } else {
                    "embedded transport"
                }
            );
            Output::Text(summary)
        }),
        Command::Cluster {
            command: ClusterCommand::Import { from, skip_outbox },
        } => load(&cli.config).and_then(|config| {
            switchboard::cluster::import::import(&config, &from, skip_outbox)
                .map(|imported| Output::Json(serde_json::json!(imported)))
                .map_err(|error| Failure::Failed(format!("{error:#}")))
        }),
        Command::Plugins { command } => match command {
            PluginsCommand::List => load(&cli.config)
                .and_then(|config| cli::list(&config).map(Output::Json).map_err(Failure::from)),
            PluginsCommand::Inspect { file } => {
                cli::inspect(&file).map(Output::Json).map_err(Failure::from)
            }
            PluginsCommand::Test {
                dir,
                plugin,
                accept,
            } => optional_config(&cli.config, default_config).and_then(|config| {
                cli::test_plugin(config.as_ref(), &plugin, &dir, accept)
                    .map(|report| Output::Json(report.to_json()))
                    .map_err(Failure::from)
            }),
            PluginsCommand::New { name, dir, sdk } => {
                let built_with =
                    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk"));
                let sdk = sdk.or_else(|| {
                    built_with
                        .join("Cargo.toml")
                        .exists()
                        .then(|| std::fs::canonicalize(built_with).ok())
                        .flatten()
                });
                cli::new_plugin(&name, &dir, sdk.as_deref())
                    .map(Output::Json)
                    .map_err(Failure::from)
            }
            PluginsCommand::Encode {
                plugin,
                thread,
                customer,
                customer_last_message_at,
                notification,
                message,
                joined,
                closed,
                end_session,
                plugin_config,
            } => {
                let config = optional_config(&cli.config, default_config);
                config.and_then(|config| {
                    let body = cli::notification_body(
                        notification.as_deref(),
                        message,
                        joined,
                        closed,
                        end_session,
                    )?;
                    cli::encode(
                        config.as_ref(),
                        EncodeRequest {
                            plugin,
                            thread,
                            customer,
                            customer_last_message_at,
                            notification: body,
                            plugin_config,
                        },
                    )
                    .map(Output::Json)
                    .map_err(Failure::from)
                })
            }
            PluginsCommand::Decode {
                plugin,
                body,
                headers,
                url,
                content_type,
                plugin_config,
            } => {
                let config = optional_config(&cli.config, default_config);
                config.and_then(|config| {
                    cli::decode(
                        config.as_ref(),
                        DecodeRequest {
                            plugin,
                            body,
                            headers,
                            url,
                            content_type,
                            plugin_config,
                        },
                    )
                    .map(Output::Json)
                    .map_err(Failure::from)
                })
            }
        },
    };
    finish(result)
}

/// The configuration, or none when the default file is absent: a plugin given as a file
/// needs none (`plugins decode` and `encode`).
fn optional_config(
    file: &std::path::Path,
    default_config: bool,
) -> Result<Option<Config>, Failure> {
    if default_config && !file.exists() {
        Ok(None)
    } else {
        load(file).map(Some)
    }
}

fn token(
    config: &Config,
    subject: String,
    roles: Vec<String>,
    teams: Vec<String>,
    lifetime: std::time::Duration,
) -> Result<Output, Failure> {
    const ROLES: [&str; 4] = ["supervisor", "admin", "agent", "ingest"];
    if let Some(unknown) = roles.iter().find(|role| !ROLES.contains(&role.as_str())) {
        return Err(Failure::Usage(format!(
            "unknown role {unknown:?} (known: {})",
            ROLES.join(", ")
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let request = switchboard::admin::TokenRequest {
        subject,
        roles,
        teams,
        lifetime,
    };
    switchboard::admin::mint(&config.auth, &request, now)
        .map(Output::Text)
        .map_err(Failure::Usage)
}

/// Runs the daemon; SIGTERM/SIGINT stop it gracefully within `server.shutdown_grace`.
fn serve(config: Config) -> anyhow::Result<Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let grace = config.server.shutdown_grace;
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            signals.cancel();
        });
        let daemon = tokio::spawn(switchboard::app::run(config, shutdown.clone()));
        tokio::select! {
            finished = daemon => finished??,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace = ?grace, "in-flight work did not finish within the grace period");
            }
        }
        Ok(Output::Text(String::new()))
    })
}

async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

enum Output {
    Text(String),
    Json(serde_json::Value),
}

enum Failure {
    Config(config::ConfigError),
    Usage(String),
    Failed(String),
}

impl From<CliError> for Failure {
    fn from(error: CliError) -> Self {
        match error {
            CliError::Usage(message) => Self::Usage(message),
            CliError::Failed(message) => Self::Failed(message),
        }
    }
}

fn load(file: &std::path::Path) -> Result<Config, Failure> {
    let config = config::load(file).map_err(Failure::Config)?;
    telemetry::log_content(config.server.log_content);
    Ok(config)
}

/// [`load`], and every file the configuration names must exist.
fn load_checked(file: &std::path::Path) -> Result<Config, Failure> {
    let config = load(file)?;
    config.check_files().map_err(Failure::Config)?;
    Ok(config)
}

/// Prints the outcome: results on stdout, problems on stderr as plain lines (the
/// `file:line:column: message` format editors and CI annotate).
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn finish(result: Result<Output, Failure>) -> ExitCode {
    match result {
        Ok(Output::Text(text)) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok(Output::Json(value)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            // A decode or encode that ended in the plugin's error, or plugin cases that do
            // not match, are a failure for scripts.
            if value.get("error").is_some()
                || value.get("passed") == Some(&serde_json::Value::Bool(false))
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(Failure::Config(error)) => {
            for problem in &error.problems {
                eprintln!("{problem}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("switchboard: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("switchboard: {message}");
            ExitCode::FAILURE
        }
    }
}
