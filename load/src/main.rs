//! `switchboard-load`: the load tool's command line. Reads the daemon's configuration (its
//! `[amqp]` section names the broker and the topology), drives the running daemon and prints
//! one JSON report.

use std::process::ExitCode;

use clap::Parser;
use switchboard_load::{LoadPlan, run};

/// Drive a running daemon through RabbitMQ and measure it beside the raw broker baseline and a
/// relay (JSON on stdout).
#[derive(Debug, Parser)]
#[command(name = "switchboard-load", version)]
struct Cli {
    /// The daemon's configuration file (its `[amqp]` section is required).
    #[arg(long, default_value = "switchboard.toml")]
    config: std::path::PathBuf,
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Messages per second (default: as fast as confirms allow).
    #[arg(long)]
    rate: Option<u32>,
    /// The daemon's process id (Linux): report its CPU time and the bytes it wrote per event
    /// over the end-to-end phase (e.g. `--daemon-pid "$(pgrep -f 'switchboard serve')"`).
    /// Repeat it for a cluster's nodes: their costs are summed.
    #[arg(long = "daemon-pid")]
    daemon_pids: Vec<u32>,
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match switchboard::config::load(&cli.config) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(64);
        }
    };
    let Some(amqp) = config.amqp else {
        eprintln!("the load tool needs [amqp] url in {}", cli.config.display());
        return ExitCode::from(64);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let plan = LoadPlan {
        messages: cli.messages,
        rate: cli.rate,
        daemon_pids: cli.daemon_pids,
    };
    match runtime.block_on(run(&amqp, &plan)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).unwrap_or_else(|error| error.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
