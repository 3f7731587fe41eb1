//! `outpost-aggregator`: receives, stores and reports on what the fleet's agents send.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use outpost_aggregator::{
    agents_cli, alerts_cli, config, fim, pki, quickstart, remote, rules_cli, status, token_cli,
};

/// The allocator: the aggregator allocates and frees small buffers for every batch on many threads,
/// where glibc's malloc took about a fifth of its CPU at a thousand agents and kept freed memory
/// in per-thread arenas (see BENCHMARKS.md, "Fleet simulator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for usage and configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "outpost-aggregator", version = outpost_common::LONG_VERSION, about = "Outpost aggregator")]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/outpost/aggregator.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator (the default).
    Run,
    /// Check the configuration file and the TLS files it names, then exit.
    CheckConfig,
    /// Print every agent's status: online, degraded, offline or never seen.
    Status {
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// File-integrity changes and the trail of each agent's changes.
    #[command(subcommand)]
    Fim(fim::FimCommand),
    /// The fleet, through the HTTP API (from any machine with a token).
    Fleet {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        /// Only agents with this status: online, degraded, offline, never_seen.
        #[arg(long)]
        status: Option<String>,
        /// Only agents with this label, as key=value (set in the agent's [labels]).
        #[arg(long)]
        label: Option<String>,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// One agent in detail, through the HTTP API.
    Agent {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        /// The agent's id.
        agent_id: String,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// One host's series of a metric, through the HTTP API: a column per series, a row per step.
    Metrics {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        /// The agent's id.
        agent_id: String,
        /// The metric, e.g. system.cpu.utilization.
        name: String,
        /// Start of the range: RFC 3339 or a duration ago (1h).
        #[arg(long, value_name = "T", default_value = "1h", value_parser = fim::parse_time)]
        since: fim::TimeArg,
        /// End of the range, written as for --since (now).
        #[arg(long, value_name = "T", value_parser = fim::parse_time)]
        until: Option<fim::TimeArg>,
        /// Attribute matcher, repeatable: key=value, key!=value, key=~regex, key!~regex.
        #[arg(long = "match", value_name = "MATCHER")]
        matchers: Vec<String>,
        /// The least step (10s, 5m); widened to fit --points.
        #[arg(long)]
        step: Option<String>,
        /// The most steps (300 without --step).
        #[arg(long)]
        points: Option<u32>,
        /// avg, min, max, last, sum or count of each step's points (avg).
        #[arg(long)]
        aggregate: Option<String>,
        /// For counters: rate (per second) or increase over each step, resets handled.
        #[arg(long)]
        function: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stored log records, oldest first, through the HTTP API.
    Logs {
        #[command(flatten)]
        remote: remote::RemoteArgs,
        /// Only this agent's records.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        /// Only records of this source (a file path, journal, …).
        #[arg(long)]
        source: Option<String>,
        /// Only records at least this severe: emergency, alert, critical, error, warning,
        /// notice, info, debug.
        #[arg(long)]
        severity: Option<String>,
        /// Only records whose body contains this text.
        #[arg(long)]
        contains: Option<String>,
        /// Only records whose body matches this regular expression.
        #[arg(long)]
        regex: Option<String>,
        /// Only records at or after this time: RFC 3339 or a duration ago (1h).
        #[arg(long, value_name = "T", value_parser = fim::parse_time)]
        since: Option<fim::TimeArg>,
        /// Only records before this time, written as for --since.
        #[arg(long, value_name = "T", value_parser = fim::parse_time)]
        until: Option<fim::TimeArg>,
        /// At most this many records.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Go on from where an earlier listing stopped (it prints the cursor).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Alerts through the HTTP API: those pending and firing, their history, acknowledging one.
    Alerts(alerts_cli::AlertsArgs),
    /// Silences through the HTTP API: add, list, expire.
    #[command(subcommand)]
    Silence(alerts_cli::SilenceCommand),
    /// The alerting rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// API tokens and enrollment tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(token_cli::TokenCommand),
    /// Agents on this host's PKI and store: remove one (revoking its certificates), list
    /// certificates.
    #[command(subcommand)]
    Agents(agents_cli::AgentsCommand),
    /// Manage certificates: the CA, the server certificate, agent certificates, revocations.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Start an aggregator and one agent on loopback with throwaway certificates.
    Quickstart {
        /// Where to keep the quickstart's certificates, data and logs.
        #[arg(long, default_value_os_t = quickstart::default_dir())]
        dir: PathBuf,
    },
}

/// `rules`: the alerting rules.
#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// `list` and `reload`, through the HTTP API.
    #[command(flatten)]
    Api(alerts_cli::RulesCommand),
    /// Replay events or a log file through rules on a simulated clock and list what their
    /// alerts would do; with --config, the notifications too.
    Test(rules_cli::TestArgs),
}

fn load(path: &std::path::Path) -> Result<config::Validated, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("outpost-aggregator: configuration error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    // The matches say whether --config was given, which `rules test` needs to know.
    let matches = Cli::command().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Pki(cmd) => pki::run(cmd),
        Command::Quickstart { dir } => quickstart::run(&dir),
        Command::CheckConfig => {
            let v = match load(&cli.config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            match config::check_tls_files(&v) {
                Ok(()) => {
                    println!("{}: configuration is valid", cli.config.display());
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("outpost-aggregator: configuration error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        Command::Status { json } => {
            let v = match load(&cli.config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            status::render(&v, json).map(|out| print!("{out}"))
        }
        Command::Fleet {
            remote,
            status,
            label,
            json,
        } => {
            let status = match status.as_deref().map(|s| {
                serde_json::from_value::<outpost_aggregator::fleet::HostStatus>(
                    serde_json::Value::String(s.to_owned()),
                )
                .map_err(|_| format!("--status `{s}`: use online, degraded, offline or never_seen"))
            }) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    eprintln!("outpost-aggregator: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            remote::Remote::resolve(&remote).and_then(|r| {
                let now = outpost_common::time::now_ns();
                remote::fleet(
                    &r,
                    status,
                    label.as_deref(),
                    json,
                    &mut std::io::stdout().lock(),
                    now,
                )
            })
        }
        Command::Agent {
            remote,
            agent_id,
            json,
        } => remote::Remote::resolve(&remote)
            .and_then(|r| remote::agent(&r, &agent_id, json, &mut std::io::stdout().lock())),
        Command::Metrics {
            remote,
            agent_id,
            name,
            since,
            until,
            matchers,
            step,
            points,
            aggregate,
            function,
            json,
        } => {
            let now = outpost_common::time::now_ns();
            let request = remote::MetricsRequest {
                agent_id,
                name,
                since_ns: since.resolve(now),
                until_ns: until.map_or(now, |t| t.resolve(now)),
                matchers,
                step,
                points,
                aggregate,
                function,
            };
            remote::Remote::resolve(&remote)
                .and_then(|r| remote::metrics(&r, &request, json, &mut std::io::stdout().lock()))
        }
        Command::Logs {
            remote,
            agent,
            source,
            severity,
            contains,
            regex,
            since,
            until,
            limit,
            cursor,
            json,
        } => {
            let now = outpost_common::time::now_ns();
            let request = remote::LogsRequest {
                agent_id: agent,
                source,
                severity,
                contains,
                regex,
                since_ns: since.map(|t| t.resolve(now)),
                until_ns: until.map(|t| t.resolve(now)),
                cursor,
                limit,
            };
            remote::Remote::resolve(&remote)
                .and_then(|r| remote::logs(&r, &request, json, &mut std::io::stdout().lock()))
        }
        Command::Fim(cmd) if fim::wants_api(&cmd) => {
            let now = outpost_common::time::now_ns();
            fim::run_remote(cmd, &mut std::io::stdout().lock(), now)
        }
        Command::Alerts(args) => alerts_cli::alerts(args, &mut std::io::stdout().lock()),
        Command::Silence(cmd) => alerts_cli::silence(cmd, &mut std::io::stdout().lock()),
        Command::Rules(RulesCommand::Test(args)) => {
            // Only a configuration named on the command line is read: the default is the others'.
            let named = matches.value_source("config") == Some(ValueSource::CommandLine);
            let config = named.then_some(cli.config.as_path());
            return match rules_cli::run(&args, config, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outpost-aggregator: {e}");
                    ExitCode::from(e.exit_status())
                }
            };
        }
        Command::Rules(RulesCommand::Api(cmd)) => {
            alerts_cli::rules(cmd, &mut std::io::stdout().lock())
        }
        Command::Token(cmd) => {
            let v = match load(&cli.config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let now = outpost_common::time::now_ns();
            token_cli::run(&v, cmd, &mut std::io::stdout().lock(), now)
        }
        Command::Agents(cmd) => {
            let v = match load(&cli.config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let now = outpost_common::time::now_ns();
            agents_cli::run(&v, cmd, &mut std::io::stdout().lock(), now)
        }
        Command::Fim(cmd) => {
            let v = match load(&cli.config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let now = outpost_common::time::now_ns();
            match fim::run(&v, cmd, &mut std::io::stdout().lock(), now) {
                // A broken trail: reported on stdout, and the exit status says so.
                Ok(false) => return ExitCode::FAILURE,
                Ok(true) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Command::Run => {
            let v = match load(&cli.config) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let _log = outpost_common::logging::init(&v.config.log, "outpost-aggregator");
            let r = outpost_aggregator::run::run(v);
            if let Err(e) = &r {
                tracing::error!("{e:#}");
            }
            r
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-aggregator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
