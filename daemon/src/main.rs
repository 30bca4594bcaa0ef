//! The `switchboard` command line: parses arguments, loads the configuration (exit 64 on any
//! problem, before anything else happens) and runs the chosen subcommand.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config;
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
    /// Validate the configuration and print every problem (exit 64 if there is any).
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            // Problems go to stderr as plain lines (`file:line:column: message`), the format
            // editors and CI annotate.
            #[allow(clippy::print_stderr)]
            for problem in &error.problems {
                eprintln!("{problem}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            #[allow(clippy::print_stdout)]
            {
                println!(
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
            }
            ExitCode::SUCCESS
        }
    }
}
