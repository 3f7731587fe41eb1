//! A throwaway PostgreSQL server for the tests of the PostgreSQL state store.
//!
//! [`PostgresServer::start`] runs the Debian package's `initdb` into a temporary directory and
//! starts `postgres` on it as a plain child process, on a loopback port the OS chose, with
//! durability off (`fsync=off`: nothing here has to survive the machine) and text sorted by
//! ICU's `en-US` collation rather than byte order. TCP connections authenticate with a password
//! ([`PASSWORD`], scram-sha-256), so the store's password handling is exercised for real.
//! PostgreSQL refuses to run as root: when the tests do, the server runs as the `postgres` user
//! (`setpriv`), which owns the directory.
//!
//! Each test makes its own databases ([`PostgresServer::fresh_database`]), so tests sharing a
//! server never see each other's data. [`PostgresServer::stop`] and [`PostgresServer::restart`]
//! make an outage on the same port and data. The server is killed when dropped (its directory
//! is kept if the test failed), and every failure to set it up panics with the tail of its log.
//!
//! ```no_run
//! use outpost_tests::postgres_server::PostgresServer;
//!
//! let server = PostgresServer::start();
//! let url = server.fresh_database();
//! let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
//! client.batch_execute("SELECT 1").unwrap();
//! ```

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{User, chown, geteuid};

use crate::DEADLINE;
use crate::process::{Process, run_to_end, write_file};

/// The superuser's password, for connections over TCP.
pub const PASSWORD: &str = "outpost-test-password";

/// The superuser.
const USER: &str = "postgres";

/// Where the Debian packages install each major version's programs.
const PACKAGE_DIR: &str = "/usr/lib/postgresql";

/// Pause between two attempts to connect while the server starts. Polling, not synchronisation.
const POLL: Duration = Duration::from_millis(50);

/// Starts tried, each on a new port, when another program took the port meanwhile.
const START_ATTEMPTS: u32 = 5;

/// Log lines shown when something fails.
const TAIL_LINES: usize = 30;

/// A PostgreSQL server on a loopback port, killed when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    /// Dropped before `dir`, which holds its data.
    process: Process,
    port: u16,
    /// Numbers the databases [`PostgresServer::fresh_database`] makes.
    databases: AtomicU32,
    /// The data and the log: removed when the server goes, or kept if a test failed.
    dir: Option<tempfile::TempDir>,
}

impl PostgresServer {
    /// Makes a new cluster in a temporary directory and starts a server on it; panics saying
    /// what to install when PostgreSQL is missing.
    pub fn start() -> PostgresServer {
        let bin = server_binaries();
        let dir = tempfile::Builder::new()
            .prefix("outpost-postgres-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let as_postgres = geteuid().is_root();
        if as_postgres {
            give_to_postgres(dir.path());
        }
        let data = dir.path().join("data");
        init_cluster(&bin, dir.path(), &data, as_postgres);

        let log = dir.path().join("postgres.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let data_dir = data.display().to_string();
            let socket_dir = dir.path().display().to_string();
            let port_arg = port.to_string();
            let args = [
                "-D",
                &data_dir,
                "-k",
                &socket_dir,
                "-p",
                &port_arg,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ];
            let (program, args) = command(&bin.join("postgres"), &args, as_postgres);
            let mut process = Process::start("postgres", &program, &args, log.clone());
            match wait_ready(&process, port) {
                Ok(()) => {
                    return PostgresServer {
                        process,
                        port,
                        databases: AtomicU32::new(0),
                        dir: Some(dir),
                    };
                }
                Err(log_tail)
                    if attempt < START_ATTEMPTS && log_tail.contains("Address already in use") =>
                {
                    eprintln!("[postgres] port {port} was taken meanwhile; trying another");
                    process.kill9();
                }
                Err(log_tail) => {
                    panic!("PostgreSQL did not start on port {port}; its log ends:\n{log_tail}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The maintenance database's URL (`postgres`), with the password.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id while it runs; each connection is served by a child of it.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Creates a database no one used, and answers its URL (with the password).
    pub fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("outpost_{n}");
        let mut admin = self.connect(&self.url());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create database {name}: {e}; the server's log ends:\n{}",
                    self.log_tail()
                )
            });
        self.database_url(&name)
    }

    /// A client of the database at `url`; panics with the server's log when it cannot connect.
    pub fn connect(&self, url: &str) -> postgres::Client {
        postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {url}: {e}; the server's log ends:\n{}",
                self.log_tail()
            )
        })
    }

    /// Stops the server at once, as an outage would (a fast shutdown: open connections are
    /// cut, nothing waits for clients).
    pub fn stop(&mut self) {
        let status = self.process.stop_with(Signal::SIGINT);
        assert!(
            status.success(),
            "PostgreSQL exited with {status} when stopped; its log ends:\n{}",
            self.log_tail()
        );
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn restart(&mut self) {
        self.process.restart();
        if let Err(log_tail) = wait_ready(&self.process, self.port) {
            panic!(
                "PostgreSQL did not start again on port {}; its log ends:\n{log_tail}",
                self.port
            );
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        self.process.shared().tail(TAIL_LINES)
    }

    fn database_url(&self, name: &str) -> String {
        database_url(self.port, name)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A fast shutdown if it runs, so that it removes its shared memory; `Process` kills what
        // is left when it goes.
        if let Some(pid) = self.process.pid().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT);
            let start = Instant::now();
            while self.process.is_running() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(POLL);
            }
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "[postgres] the server's files are kept in {}",
                dir.keep().display()
            );
        }
    }
}

fn database_url(port: u16, name: &str) -> String {
    format!("postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{name}")
}

/// Waits until the server on `port` accepts a connection; the log's tail if it exits, or does
/// not within [`DEADLINE`].
fn wait_ready(process: &Process, port: u16) -> Result<(), String> {
    let start = Instant::now();
    let url = database_url(port, "postgres");
    let tail = || process.shared().tail(TAIL_LINES);
    loop {
        let last = match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if !process.is_running() {
            return Err(format!("{}\n(it {})", tail(), process.shared().state()));
        }
        if start.elapsed() >= DEADLINE {
            return Err(format!(
                "{}\n(no connection within {DEADLINE:?}; the last attempt: {last})",
                tail()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// `program args`, or run as the `postgres` user through `setpriv` when `as_postgres`.
fn command(program: &Path, args: &[&str], as_postgres: bool) -> (PathBuf, Vec<OsString>) {
    let args = args.iter().map(OsString::from);
    if as_postgres {
        let run_as = [
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ];
        let args = run_as
            .into_iter()
            .map(OsString::from)
            .chain([program.as_os_str().to_owned()])
            .chain(args)
            .collect();
        (PathBuf::from("setpriv"), args)
    } else {
        (program.to_owned(), args.collect())
    }
}

/// The newest version's programs under [`PACKAGE_DIR`].
fn server_binaries() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(PACKAGE_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under {PACKAGE_DIR}/*/bin: install postgresql (Debian: \
             `apt-get install postgresql`) to run the PostgreSQL store tests"
        )
    })
}

/// Makes `dir` the `postgres` user's, for a server run as root.
fn give_to_postgres(dir: &Path) {
    let user = User::from_name(USER)
        .unwrap_or_else(|e| panic!("cannot look up the `{USER}` user: {e}"))
        .unwrap_or_else(|| {
            panic!(
                "running as root, the server must run as the `{USER}` user, and there is none: \
                 install postgresql, which creates it"
            )
        });
    chown(dir, Some(user.uid), Some(user.gid))
        .unwrap_or_else(|e| panic!("cannot give {} to `{USER}`: {e}", dir.display()));
}

/// `initdb` into `data`, with the superuser's password; TCP connections need it.
fn init_cluster(bin: &Path, dir: &Path, data: &Path, as_postgres: bool) {
    let password_file = dir.join("password");
    write_file(&password_file, PASSWORD);
    let data_dir = data.display().to_string();
    let password_file = password_file.display().to_string();
    let args = [
        "-D",
        &data_dir,
        "-U",
        USER,
        "--pwfile",
        &password_file,
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        // Text sorts by a language's rules, as on many production servers: a query that
        // relies on the database's collation for byte order is caught.
        "--locale-provider=icu",
        "--icu-locale=en-US",
        "--locale=C.UTF-8",
        "--no-sync",
    ];
    let (program, args) = command(&bin.join("initdb"), &args, as_postgres);
    let out = run_to_end(&program, &args);
    assert!(
        out.status.success(),
        "initdb failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on now, chosen by the OS. Another program may take it before the
/// server does; [`PostgresServer::start`] then tries another.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}
