//! A real ClickHouse server for tests: the packaged `clickhouse-server` run as a plain process
//! on loopback, with its configuration, data and logs in a temporary directory and ports the OS
//! chose.
//!
//! ```no_run
//! use outpost_tests::clickhouse_server::ClickHouseServer;
//!
//! let mut server = ClickHouseServer::start();
//! let database = server.fresh_database();
//! // … open a store on server.url() and database …
//! server.stop();
//! server.restart();
//! ```
//!
//! The server is killed when its wrapper is dropped. Failures panic with the end of the
//! server's log; the directory is kept when a test fails (or with `OUTPOST_E2E_KEEP` set).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::env::DEADLINE;
use crate::process::{Process, write_file};

/// Where the Debian package installs the server and its configuration.
const SERVER: &str = "/usr/sbin/clickhouse-server";
const PACKAGED_CONFIG: &str = "/etc/clickhouse-server/config.xml";
const PACKAGED_USERS: &str = "/etc/clickhouse-server/users.xml";

/// Attempts at starting on fresh ports when another process took one between choosing and
/// binding.
const PORT_ATTEMPTS: u32 = 5;

/// Lines of the server's log shown when something fails.
const TAIL_LINES: usize = 30;

/// A running `clickhouse-server`, killed on drop.
#[derive(Debug)]
pub struct ClickHouseServer {
    /// Taken on drop: removed, or kept when the test failed.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    process: Process,
    http_port: u16,
    running: bool,
    databases: AtomicU32,
}

/// The ports a server listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    tcp: u16,
    interserver: u16,
}

impl ClickHouseServer {
    /// Starts a server in a new temporary directory and waits until it answers `/ping`.
    pub fn start() -> ClickHouseServer {
        let dir = tempfile::Builder::new()
            .prefix("outpost-clickhouse-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let path = dir.path().to_owned();
        Self::start_at(Some(dir), path)
    }

    /// Starts a server whose configuration, data and logs live in `dir` (created if missing),
    /// and waits until it answers `/ping`. The directory stays when the server goes, so a later
    /// server started in it finds the same databases (on other ports); on drop the server is
    /// asked to stop rather than killed.
    pub fn start_in(dir: &Path) -> ClickHouseServer {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("{}: cannot create: {e}", dir.display()));
        Self::start_at(None, dir.to_owned())
    }

    /// Starts a server in `path`; `dir` is the temporary directory it is, if it is one.
    fn start_at(dir: Option<tempfile::TempDir>, path: PathBuf) -> ClickHouseServer {
        assert!(
            Path::new(SERVER).is_file(),
            "{SERVER} is missing: install clickhouse-server (the Debian package) to run the \
             ClickHouse tests"
        );
        for attempt in 1..=PORT_ATTEMPTS {
            let ports = free_ports();
            write_config(&path, ports);
            let args: Vec<OsString> =
                vec![format!("--config-file={}", path.join("config.xml").display()).into()];
            let mut process = Process::start(
                "clickhouse-server",
                Path::new(SERVER),
                &args,
                path.join("stdout.log"),
            );
            match wait_ready(&process, ports.http) {
                Ok(()) => {
                    return ClickHouseServer {
                        dir,
                        path,
                        process,
                        http_port: ports.http,
                        running: true,
                        databases: AtomicU32::new(0),
                    };
                }
                Err(why)
                    if attempt < PORT_ATTEMPTS && log_tail(&path, 200).contains(PORT_TAKEN) =>
                {
                    eprintln!("clickhouse-server: {why}; starting again on other ports");
                    process.kill9();
                    for log in ["log/clickhouse-server.log", "stdout.log"] {
                        let _ = std::fs::remove_file(path.join(log));
                    }
                }
                Err(why) => {
                    process.kill9();
                    let kept = dir.map_or_else(|| path.clone(), tempfile::TempDir::keep);
                    fail(&kept, &why);
                }
            }
        }
        unreachable!("the last attempt returns or fails")
    }

    /// Where its configuration, data (`data/`) and logs (`log/`) are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The HTTP interface: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's process id while it runs (to measure its CPU).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// A database name no earlier call on this server answered (the database itself is created
    /// by whoever uses it).
    pub fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        format!("outpost_test_{n}")
    }

    /// Stops the server, as an outage would: SIGTERM, then SIGKILL if it has not exited within
    /// 10 s (18.16 finishes the connections it has before exiting, and a client that commits
    /// without pause keeps them busy). Its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        assert!(self.running, "clickhouse-server: stop() while stopped");
        if let Some(pid) = self.process.pid().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.process.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Reaps it, killing it first if it still runs.
        self.process.kill9();
        self.running = false;
    }

    /// Starts the stopped server again on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(!self.running, "clickhouse-server: restart() while running");
        self.process.restart();
        self.running = true;
        if let Err(why) = wait_ready(&self.process, self.http_port) {
            self.fail(&why);
        }
    }

    /// The last `lines` lines of the server's own log (and what it wrote to stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.path, lines)
    }

    fn fail(&self, why: &str) -> ! {
        fail(&self.path, why)
    }
}

/// What the server logs when a port is taken.
const PORT_TAKEN: &str = "Address already in use";

/// The last `lines` lines of the log of the server in `dir`, and of its stdout and stderr.
fn log_tail(dir: &Path, lines: usize) -> String {
    let tail = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    };
    format!(
        "--- log/clickhouse-server.log:\n{}\n--- stdout and stderr:\n{}",
        tail("log/clickhouse-server.log"),
        tail("stdout.log")
    )
}

fn fail(dir: &Path, why: &str) -> ! {
    panic!(
        "clickhouse-server in {}: {why}\n{}",
        dir.display(),
        log_tail(dir, TAIL_LINES)
    )
}

/// Polls `/ping` on `http_port` until the server answers, exits, or [`DEADLINE`] passes.
fn wait_ready(process: &Process, http_port: u16) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
    let ping = format!("http://127.0.0.1:{http_port}/ping");
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < DEADLINE {
        if !process.is_running() {
            return Err(format!("the server exited while starting ({last})"));
        }
        match client.get(&ping).send() {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer) => last = format!("/ping answered {}", answer.status()),
            Err(e) => last = format!("/ping: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("not ready within {DEADLINE:?} ({last})"))
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        if self.dir.is_none() {
            // A directory that outlives the server: let it finish its writes.
            if self.running {
                self.process.terminate_status();
            }
            return;
        }
        self.process.kill9();
        let keep = std::thread::panicking() || std::env::var_os("OUTPOST_E2E_KEEP").is_some();
        if let (true, Some(dir)) = (keep, self.dir.take()) {
            eprintln!(
                "clickhouse-server: its files are kept in {}",
                dir.keep().display()
            );
        }
    }
}

/// Three ports free a moment ago (a server that finds one taken is started again).
fn free_ports() -> Ports {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
        })
        .collect();
    let port = |i: usize| {
        listeners[i]
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read a bound port: {e}"))
            .port()
    };
    Ports {
        http: port(0),
        tcp: port(1),
        interserver: port(2),
    }
}

/// Writes `dir/config.xml` and `dir/users.xml`: the packaged ones, with the ports, loopback only,
/// and every path inside `dir`.
fn write_config(dir: &Path, ports: Ports) {
    let read = |path: &str| {
        std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("{path}: cannot read ({e}): install clickhouse-server (the Debian package)")
        })
    };
    let data = |name: &str| format!("{}/", dir.join(name).display());
    let mut config = strip_comments(&read(PACKAGED_CONFIG));
    for (tag, value) in [
        ("http_port", ports.http.to_string()),
        ("tcp_port", ports.tcp.to_string()),
        ("interserver_http_port", ports.interserver.to_string()),
        ("path", data("data")),
        ("tmp_path", data("tmp")),
        ("user_files_path", data("user_files")),
        ("format_schema_path", data("format_schemas")),
        (
            "log",
            dir.join("log/clickhouse-server.log").display().to_string(),
        ),
        (
            "errorlog",
            dir.join("log/clickhouse-server.err.log")
                .display()
                .to_string(),
        ),
        ("level", "information".to_owned()),
    ] {
        config = set_element(&config, tag, &value);
    }
    config = remove_elements(&config, "listen_host");
    config = remove_elements(&config, "https_port");
    config = remove_elements(&config, "tcp_port_secure");
    config = append_to_root(&config, "<listen_host>127.0.0.1</listen_host>");
    write_file(&dir.join("config.xml"), &config);
    write_file(&dir.join("users.xml"), &read(PACKAGED_USERS));
}

/// The XML without its comments.
fn strip_comments(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Sets the text of the first `<tag>` element, or adds one to the root.
fn set_element(xml: &str, tag: &str, value: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    if let Some(start) = xml.find(&open)
        && let Some(len) = xml[start..].find(&close)
    {
        let mut out = xml[..start + open.len()].to_owned();
        out.push_str(value);
        out.push_str(&xml[start + len..]);
        return out;
    }
    append_to_root(xml, &format!("{open}{value}{close}"))
}

/// Removes every `<tag>…</tag>` element.
fn remove_elements(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = xml.to_owned();
    while let Some(start) = out.find(&open) {
        let Some(len) = out[start..].find(&close) else {
            break;
        };
        out.replace_range(start..start + len + close.len(), "");
    }
    out
}

/// Adds `element` as the root's last child (the root is `<yandex>` in old releases,
/// `<clickhouse>` in new ones).
fn append_to_root(xml: &str, element: &str) -> String {
    let at = xml
        .rfind("</")
        .unwrap_or_else(|| panic!("the packaged config.xml has no root element"));
    format!("{}    {element}\n{}", &xml[..at], &xml[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_configuration_is_rewritten_into_the_directory() {
        let xml = "<yandex>\n<!-- <http_port>1</http_port> -->\n<http_port>8123</http_port>\n\
                   <listen_host>::1</listen_host><path>/var/lib/clickhouse/</path>\n</yandex>\n";
        let mut out = strip_comments(xml);
        out = set_element(&out, "http_port", "1234");
        out = set_element(&out, "tmp_path", "/t/tmp/");
        out = remove_elements(&out, "listen_host");
        out = append_to_root(&out, "<listen_host>127.0.0.1</listen_host>");
        assert!(out.contains("<http_port>1234</http_port>"), "{out}");
        assert!(!out.contains("8123") && !out.contains("::1"), "{out}");
        assert!(out.contains("<tmp_path>/t/tmp/</tmp_path>"), "{out}");
        assert!(out.trim_end().ends_with("</yandex>"), "{out}");
        assert_eq!(out.matches("<listen_host>").count(), 1, "{out}");
    }
}
