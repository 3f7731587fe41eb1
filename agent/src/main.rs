//! `outpost-agent`: collects host events and ships them to the aggregator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_agent::{config, enroll, identity};

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
    /// Enroll with a token from `outpost-aggregator`: make a key here, get its certificate,
    /// and set up the configuration to ship to that aggregator.
    #[command(after_help = ENROLL_HELP)]
    Enroll(EnrollArgs),
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// The enrollment token (`outpost-enroll-…`). Other users of the host can see command
    /// lines: prefer --token-file.
    #[arg(
        long,
        conflicts_with = "token_file",
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding the enrollment token, for example /etc/outpost/enroll.token.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The agent id to ask for (1-128 of A-Z a-z 0-9 . _ -); defaults to the host name.
    #[arg(long, value_name = "NAME")]
    id: Option<String>,
    /// Replace the key and certificate of an agent that is enrolled already.
    #[arg(long)]
    force: bool,
}

const ENROLL_HELP: &str = "\
The key is made on this host and never leaves it. The key, the certificate and the CA are
written where [aggregator] key, cert and ca name them (by default /etc/outpost/tls/agent.key,
mode 0640 and group outpost when that group exists, else 0600; agent.pem and ca.pem, 0644).
The configuration file then names the aggregator that answered ([aggregator] endpoint and
server_name; a file that lists [aggregator] endpoints keeps them), those paths, and the token's
labels in [labels]; its comments are kept.

Exit status:
  0   enrolled
  2   bad arguments (unknown option, --token with --token-file)
  64  bad token, agent id or configuration; or enrolled already (use --force)
  69  no endpoint of the token could be reached
  73  the key, certificates or configuration could not be written
  76  the aggregator's CA is not the token's (the token is for another aggregator, or something
      is in the way), or its answer is not usable
  77  the aggregator refused the enrollment (the reason is printed)";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log of a first start's enrollment, kept for the run that follows.
    let mut log = None;
    match &cli.command {
        Some(Command::Enroll(args)) => return enroll_command(&cli.config, args),
        Some(Command::Run) | None => match first_start(&cli.config) {
            Ok(guard) => log = guard,
            Err(code) => return code,
        },
        Some(Command::CheckConfig) => {
            if let Ok(raw) = config::load_unenrolled(&cli.config)
                && recover_identity(&raw).is_ok()
                && let Some(source) = enroll::first_start_token(&raw, token_env())
            {
                println!(
                    "{}: not enrolled yet; the agent enrolls at start with {}",
                    cli.config.display(),
                    describe(&source)
                );
                return ExitCode::SUCCESS;
            }
        }
    }
    let validated = match config::load(&cli.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("outpost-agent: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Enroll(_) => unreachable!("handled before the configuration is loaded"),
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
            let _log = log.unwrap_or_else(|| {
                outpost_common::logging::init(&validated.config.log, "outpost-agent")
            });
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

/// `outpost-agent enroll`.
fn enroll_command(config_path: &std::path::Path, args: &EnrollArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let result = (|| {
        let token = enroll::read_token(args.token.as_deref(), args.token_file.as_deref())?;
        let id = enroll::agent_id(args.id.as_deref(), enroll::host_name().as_deref())?;
        let plan = enroll::Plan::new(token, id, config_path, args.force)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| enroll::EnrollError::Usage(format!("cannot start the runtime: {e}")))?;
        let endpoint = runtime.block_on(enroll::enroll(&plan))?;
        Ok::<_, enroll::EnrollError>((plan, endpoint))
    })();
    match result {
        Ok((plan, endpoint)) => {
            println!(
                "enrolled as `{}` at {endpoint}; {} now ships there",
                plan.agent_id,
                config_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outpost-agent: enroll: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `run` on a host that is not enrolled yet but has a token: enroll first (retrying until it
/// works or the agent is stopped), so that the configuration then names the aggregator.
fn first_start(
    config_path: &std::path::Path,
) -> Result<Option<outpost_common::logging::LogGuard>, ExitCode> {
    let Ok(raw) = config::load_unenrolled(config_path) else {
        // Reported by the full load that follows.
        return Ok(None);
    };
    if let Err(e) = recover_identity(&raw) {
        eprintln!("outpost-agent: {e}");
        return Err(ExitCode::FAILURE);
    }
    let Some(source) = enroll::first_start_token(&raw, token_env()) else {
        return Ok(None);
    };
    let log = outpost_common::logging::init(&raw.log, "outpost-agent");
    tracing::info!(token = %describe(&source), "not enrolled yet");
    match enroll::first_start(config_path, source) {
        Ok(()) => Ok(Some(log)),
        Err(e) => {
            tracing::error!("{e:#}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Finishes or undoes a replacement of the key and certificate that a crash interrupted.
fn recover_identity(raw: &config::AgentConfig) -> Result<(), identity::IdentityError> {
    let pair = identity::PairPaths {
        key: raw.aggregator.key.clone(),
        cert: raw.aggregator.cert.clone(),
    };
    identity::recover_pair(&pair).map(drop)
}

fn token_env() -> Option<String> {
    std::env::var(enroll::TOKEN_ENV).ok()
}

fn describe(source: &enroll::TokenSource) -> String {
    match source {
        enroll::TokenSource::Env(_) => format!("the token in ${}", enroll::TOKEN_ENV),
        enroll::TokenSource::File(path) => format!("the token in {}", path.display()),
    }
}
