//! The aggregator under test.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::{Env, binary};
use crate::process::{Process, write_file};
use crate::{Store, toml_string};

/// What the test wants different from the test defaults.
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    /// The name of its process and files in the test's directory (`<name>/` for its data,
    /// `<name>.toml`, `<name>-logs/`, `<name>.log`): distinct for each aggregator of a test.
    /// All of a test's aggregators share its PKI, so they present the same server certificate.
    pub name: String,
    /// `fleet.offline_after`.
    pub offline_after: Duration,
    /// `tls.reload_interval`.
    pub reload_interval: Duration,
    /// `fleet.heartbeat_interval`, which the aggregator tells its agents.
    pub heartbeat_interval: Duration,
    /// A program and its arguments to run the aggregator under (e.g. strace); empty for none.
    pub wrapper: Vec<OsString>,
    /// Extra TOML appended to the file (whole sections).
    pub extra: String,
    /// Its `data_dir`, when not `<name>/` in the test's directory: a store prepared
    /// beforehand (a benchmark's). Left in place when the test's directory goes.
    pub data_dir: Option<PathBuf>,
}

impl AggregatorOptions {
    /// The test defaults for an aggregator named `name` (see [`AggregatorOptions::name`]).
    pub fn named(name: &str) -> Self {
        AggregatorOptions {
            name: name.to_owned(),
            ..AggregatorOptions::default()
        }
    }
}

impl Default for AggregatorOptions {
    fn default() -> Self {
        AggregatorOptions {
            name: "aggregator".to_owned(),
            offline_after: Duration::from_secs(5),
            reload_interval: Duration::from_millis(200),
            heartbeat_interval: Duration::from_secs(1),
            wrapper: Vec::new(),
            extra: String::new(),
            data_dir: None,
        }
    }
}

/// A running (or stopped) `outpost-aggregator run`, always on the same UDP port; dereferences
/// to its [`Process`] (`kill9`, `terminate`, `log`).
#[derive(Debug)]
pub struct Aggregator {
    /// Declared first so it is dropped (killed) before the directory can go with `env`.
    process: Process,
    config: PathBuf,
    data_dir: PathBuf,
    addr: SocketAddr,
    env: Env,
}

impl Aggregator {
    /// Writes a configuration listening on a free loopback port, starts the aggregator and waits
    /// for its `listen.addr`; the configuration is then pinned to that port for restarts.
    pub(crate) fn start(env: &Env, options: AggregatorOptions) -> Aggregator {
        let name = &options.name;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| env.path().join(name));
        let config = env.path().join(format!("{name}.toml"));
        let write_config = |listen: &str| {
            let text = format!(
                "data_dir = {data}\nlisten = \"{listen}\"\n\n\
                 [tls]\ndir = {pki}\nreload_interval = \"{reload}ms\"\n\n\
                 [fleet]\nheartbeat_interval = \"{heartbeat}ms\"\noffline_after = \"{offline}ms\"\n\n\
                 [log]\ndir = {logs}\n\n{api}{extra}\n",
                api = if options.extra.contains("[api]") {
                    ""
                } else {
                    "[api]\nlisten = \"127.0.0.1:0\"\n\n"
                },
                data = toml_string(&data_dir),
                pki = toml_string(&env.pki_dir()),
                reload = options.reload_interval.as_millis(),
                heartbeat = options.heartbeat_interval.as_millis(),
                offline = options.offline_after.as_millis(),
                logs = toml_string(&env.path().join(format!("{name}-logs"))),
                extra = options.extra,
            );
            write_file(&config, &text);
        };
        write_config("127.0.0.1:0");
        // A data directory used before holds the addresses of the last run.
        for stale in ["listen.addr", "api.addr"] {
            let _ = std::fs::remove_file(data_dir.join(stale));
        }
        let mut args: Vec<OsString> = vec!["--config".into(), config.clone().into(), "run".into()];
        let mut program = binary("outpost-aggregator");
        if let Some((wrapper, wrapper_args)) = options.wrapper.split_first() {
            args = wrapper_args
                .iter()
                .cloned()
                .chain([program.into_os_string()])
                .chain(args)
                .collect();
            program = PathBuf::from(wrapper);
        }
        let process = env.spawn(name, &program, &args);
        let addr = wait_listening(env, &process, &data_dir);
        write_config(&addr.to_string());
        Aggregator {
            process,
            config,
            data_dir,
            addr,
            env: env.clone(),
        }
    }

    /// The bound UDP address; the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The base URL of its HTTP API (`http://127.0.0.1:PORT`), once it listens.
    pub fn api_url(&self) -> String {
        let file = self.data_dir.join("api.addr");
        let addr = self.env.wait_for("the API to listen", || {
            std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|text| {
                    text.trim()
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("{text:?}: {e}"))
                })
        });
        format!("http://{addr}")
    }

    /// Runs `outpost-aggregator --config <its config> <args>`, which must succeed; stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let config = self.config.display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        self.env.aggregator_cli_ok(&all)
    }

    /// Read-only access to the aggregator's store.
    pub fn store(&self) -> Store {
        Store::new(self.data_dir.join("aggregator.db"))
    }

    /// Starts it again on the same port and waits until it listens (unlike
    /// [`Process::restart`], which it shadows).
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("listen.addr"));
        let _ = std::fs::remove_file(self.data_dir.join("api.addr"));
        self.process.restart();
        let addr = wait_listening(&self.env, &self.process, &self.data_dir);
        assert_eq!(
            addr, self.addr,
            "the restarted aggregator listens elsewhere"
        );
    }

    /// `outpost-aggregator status --json`, parsed.
    pub fn status_json(&self) -> Vec<serde_json::Value> {
        let config = self.config.display().to_string();
        let out = self
            .env
            .aggregator_cli(&["--config", &config, "status", "--json"]);
        assert!(
            out.status.success(),
            "status --json failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json printed invalid JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The `status --json` entry of one agent, if listed.
    pub fn agent_status(&self, agent_id: &str) -> Option<serde_json::Value> {
        self.status_json()
            .into_iter()
            .find(|e| e["agent_id"].as_str() == Some(agent_id))
    }
}

impl Deref for Aggregator {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Aggregator {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

fn wait_listening(env: &Env, process: &Process, data_dir: &Path) -> SocketAddr {
    let file = data_dir.join("listen.addr");
    env.wait_for("the aggregator to listen", || {
        if !process.is_running() {
            panic!("the aggregator exited during start-up:\n{}", process.log());
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{}: `{}`: {e}", file.display(), text.trim()))
    })
}
