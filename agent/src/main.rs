//! `outpost-agent`: collects host events and ships them to the aggregator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_agent::config;

/// Exit status for usage and configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "outpost-agent", version = outpost_common::LONG_VERSION, about = "Outpost host agent")]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "/etc/outpost/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the configuration file and the TLS files it names, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let validated = match config::load(&cli.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("outpost-agent: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match config::check_tls_files(&validated) {
            Ok(()) => {
                println!("{}: configuration is valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("outpost-agent: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run => {
            let _log = outpost_common::logging::init(&validated.config.log, "outpost-agent");
            match outpost_agent::run::run(validated) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("outpost-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
