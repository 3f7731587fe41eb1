//! What the receivers' tests share: a message to send, an HTTP server that records what it is
//! sent, and the real servers' processes (SMTP, Alertmanager) run on loopback.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Message, MessageAlert, ReceiverConfig, Receivers, Status};

/// Generous: these wait on real processes on a shared two-core machine.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

const S: i64 = 1_000_000_000;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Two CPUs of web1 busy: group `alertname`, common `host`, severities critical and high.
pub(crate) fn firing_message() -> Message {
    let alert = |cpu: u8, severity: &str, started_s: i64, value: f64| MessageAlert {
        fingerprint: format!("a{}", cpu + 1),
        status: Status::Firing,
        labels: map(&[
            ("alertname", "cpu_busy"),
            ("host", "web1"),
            ("cpu", &cpu.to_string()),
            ("severity", severity),
        ]),
        annotations: map(&[
            ("summary", &format!("CPU {cpu} busy on web1")),
            (
                "description",
                &format!("CPU {cpu} of web1 has been above 90% for 5 minutes"),
            ),
            ("runbook_url", "https://runbooks.example/cpu"),
        ]),
        starts_at_ns: started_s * S,
        ends_at_ns: None,
        value: Some(value),
        generator_url: format!("https://outpost.example/alerts/a{}", cpu + 1),
    };
    Message {
        receiver: "ops".to_owned(),
        group_key: r#"{}:{alertname="cpu_busy"}"#.to_owned(),
        group_labels: map(&[("alertname", "cpu_busy")]),
        alerts: vec![
            alert(0, "critical", 1_700_000_000, 97.5),
            alert(1, "high", 1_700_000_030, 93.0),
        ],
        external_url: "https://outpost.example".to_owned(),
        escalation: 0,
        created_ns: 1_700_000_060 * S,
    }
}

/// `msg` with all its alerts resolved at 2023-11-14T22:23:20Z.
pub(crate) fn resolved(msg: &Message) -> Message {
    let mut msg = msg.clone();
    for alert in &mut msg.alerts {
        alert.status = Status::Resolved;
        alert.ends_at_ns = Some(1_700_000_600 * S);
    }
    msg.created_ns = 1_700_000_600 * S;
    msg
}

/// Receivers from `[[receivers]]` entries, with `env` as the environment.
pub(crate) fn receivers_with_env(
    toml_text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Receivers, super::ReceiversError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        receivers: Vec<ReceiverConfig>,
    }
    let file: File = toml::from_str(toml_text).expect("receiver TOML parses");
    Receivers::from_config_with_env(&file.receivers, env)
}

/// Receivers from `[[receivers]]` entries that must be valid.
pub(crate) fn receivers(toml_text: &str) -> Receivers {
    receivers_with_env(toml_text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

/// How the test server answers a request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Status(u16),
    /// A status with a `Retry-After` header.
    RetryAfter(u16, &'static str),
    /// Never answers.
    Hang,
}

/// One request the test server received.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: serde_json::Value,
}

/// An HTTP server on 127.0.0.1 that records every request and answers the n-th (from 0) as
/// its `reply` says.
pub(crate) struct HttpServer {
    /// `http://127.0.0.1:PORT`
    pub(crate) base: String,
    received: mpsc::UnboundedReceiver<Received>,
}

type ReplyFn = dyn Fn(usize) -> Reply + Send + Sync;

impl HttpServer {
    pub(crate) async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let (tx, received) = mpsc::unbounded_channel();
        let state = (
            Arc::new(reply) as Arc<ReplyFn>,
            Arc::new(AtomicUsize::new(0)),
            tx,
        );
        let app = axum::Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test server");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        HttpServer {
            base: format!("http://{addr}"),
            received,
        }
    }

    /// The next request received, waiting up to [`DEADLINE`].
    pub(crate) async fn next(&mut self) -> Received {
        tokio::time::timeout(DEADLINE, self.received.recv())
            .await
            .expect("the test server received a request in time")
            .expect("the test server runs")
    }
}

type RecordState = (
    Arc<ReplyFn>,
    Arc<AtomicUsize>,
    mpsc::UnboundedSender<Received>,
);

async fn record(
    State((reply, count, tx)): State<RecordState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = count.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let _ = tx.send(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let status = |code: u16| StatusCode::from_u16(code).expect("status");
    match reply(n) {
        Reply::Status(code) => (status(code), "answer").into_response(),
        Reply::RetryAfter(code, after) => {
            (status(code), [("retry-after", after)], "slow down").into_response()
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// A free TCP port on 127.0.0.1 for a server process to listen on.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The program `name` on `PATH` (or in /usr/bin), if installed.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Polls `check` every 50 ms until it gives a value, failing after [`DEADLINE`] with `what`.
pub(crate) async fn wait_for<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server process the test started; killed when dropped. Its output goes to a log file that
/// failures quote.
pub(crate) struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub(crate) fn spawn(command: &mut Command, log: &Path) -> Process {
        let out = std::fs::File::create(log).expect("create the process log");
        let err = out.try_clone().expect("clone the log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Process {
            child,
            log: log.to_owned(),
        }
    }

    /// Panics with the process's output if it has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the server process exited ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Waits until the process accepts TCP connections on `port`.
    pub(crate) async fn wait_listening(&mut self, port: u16) {
        wait_for(&format!("a server on port {port}"), || {
            self.assert_running();
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            }
        })
        .await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
