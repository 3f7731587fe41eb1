//! The e-mail receiver: a plain-text message over SMTP, with lettre (rustls with ring and the
//! webpki roots; no native TLS).
//!
//! The subject is the title, `[FIRING:2] cpu_busy (host=web1)`; the body lists the firing and
//! then the resolved alerts with their times, labels and annotations.
//!
//! Security, by the server's kind: `starttls = "required"` (the default) upgrades the connection
//! with STARTTLS and refuses to go on without it; `"opportunistic"` upgrades when offered;
//! `"none"` speaks plain SMTP (a local relay), and therefore refuses a `username`: the password
//! would travel in plain text. `tls = true` speaks TLS from the start (port 465).
//!
//! A server that does not offer STARTTLS when it is required is a **permanent** failure: it is
//! how that server is configured, and retrying would only repeat it until the configuration of
//! one side changes; the error says which settings would work. SMTP's own replies decide
//! otherwise: 4xx (transient) retries, 5xx (permanent) does not; no connection, a timeout or a
//! TLS failure retries.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, Error as SmtpError};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use super::config::Check;
use super::delivery::{Failure, error_chain};
use super::message::{Message, Status};
use super::secret::Secret;
use super::text;

/// SMTP submission with STARTTLS.
pub const SUBMISSION_PORT: u16 = 587;
/// SMTP submission over implicit TLS.
pub const SUBMISSIONS_PORT: u16 = 465;

/// `email = { … }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server, `host:port`; the port defaults to 587, or 465 with `tls = true`.
    pub smtp: String,
    /// The sender's address (`outpost@example.com` or `Outpost <outpost@example.com>`).
    pub from: String,
    /// The recipients' addresses; at least one.
    pub to: Vec<String>,
    /// STARTTLS: `required` (default), `opportunistic` or `none`.
    pub starttls: Option<StartTls>,
    /// Speak TLS from the connection's start (port 465) instead of STARTTLS.
    #[serde(default)]
    pub tls: bool,
    /// Log in with this user name (and the password).
    pub username: Option<String>,
    /// The password, a secret: give one of `password`, `password_file`, `password_env`.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// How long the server may take for each step of the conversation (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Whether to upgrade a plain connection with STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// Upgrade, or fail.
    Required,
    /// Upgrade if the server offers it; otherwise send in plain text.
    Opportunistic,
    /// Send in plain text.
    None,
}

/// A checked e-mail receiver. The SMTP transport (a connection pool, whose upkeep runs on the
/// async runtime) is made at the first delivery, so that loading the configuration needs no
/// runtime.
pub(crate) struct Email {
    /// `host:port`, for messages.
    server: String,
    starttls_required: bool,
    transport_builder: AsyncSmtpTransportBuilder,
    transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The transport's own Debug is left out: it is lettre's to change.
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("starttls_required", &self.starttls_required)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl Email {
    pub(crate) fn new(config: &EmailConfig, check: &mut Check<'_>) -> Option<Email> {
        let server = split_host_port(&config.smtp)
            .map_err(|e| check.problem("smtp", e))
            .ok();
        let from = mailbox(check, "from", &config.from);
        if config.to.is_empty() {
            check.problem("to", "needs at least one address");
        }
        let to: Vec<Option<Mailbox>> = config
            .to
            .iter()
            .map(|address| mailbox(check, "to", address))
            .collect();
        if config.tls && config.starttls.is_some() {
            check.problem(
                "starttls",
                "give either `tls = true` (TLS from the start) or `starttls`, not both",
            );
        }
        if config.starttls == Some(StartTls::None) && config.username.is_some() {
            check.problem(
                "username",
                "would send the password in plain text with `starttls = \"none\"`: use \
                 `starttls = \"required\"` or `tls = true`",
            );
        }
        let password = check.optional_secret(
            "password",
            config.password.as_ref(),
            config.password_file.as_ref(),
            config.password_env.as_ref(),
        );
        // `None` when the password could not be read or does not pair with a user name.
        let credentials = match (&config.username, password) {
            (_, None) => None,
            (Some(user), Some(Some(password))) => Some(Some(Credentials::new(
                user.clone(),
                password.expose().to_owned(),
            ))),
            (None, Some(None)) => Some(None),
            (Some(_), Some(None)) => {
                check.problem("password", "is needed with `username`");
                None
            }
            (None, Some(Some(_))) => {
                check.problem("username", "is needed with a password");
                None
            }
        };
        let timeout = check.timeout(config.timeout);

        let (host, port) = server?;
        let tls_parameters = match TlsParameters::new_rustls(host.clone()) {
            Ok(p) => p,
            Err(e) => {
                check.problem(
                    "smtp",
                    format!("cannot set up TLS for {host}: {}", error_chain(&e)),
                );
                return None;
            }
        };
        let starttls = config.starttls.unwrap_or(StartTls::Required);
        let (security, default_port) = match (config.tls, starttls) {
            (true, _) => (Tls::Wrapper(tls_parameters), SUBMISSIONS_PORT),
            (false, StartTls::Required) => (Tls::Required(tls_parameters), SUBMISSION_PORT),
            (false, StartTls::Opportunistic) => {
                (Tls::Opportunistic(tls_parameters), SUBMISSION_PORT)
            }
            (false, StartTls::None) => (Tls::None, SUBMISSION_PORT),
        };
        let port = port.unwrap_or(default_port);
        // lettre's generic builder; "dangerous" in its name because it takes the security
        // chosen here rather than its default.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .tls(security)
            .timeout(Some(timeout?));
        if let Some(credentials) = credentials? {
            builder = builder.credentials(credentials);
        }
        let to: Option<Vec<Mailbox>> = to.into_iter().collect();
        Some(Email {
            server: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            starttls_required: !config.tls && starttls == StartTls::Required,
            transport_builder: builder,
            transport: OnceLock::new(),
            from: from?,
            to: to.filter(|to| !to.is_empty())?,
        })
    }

    pub(crate) async fn send(&self, msg: &Message) -> Result<(), Failure> {
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject(msg))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let email = builder
            .body(body(msg))
            .map_err(|e| Failure::permanent(format!("cannot make the e-mail: {e}")))?;
        let transport = self
            .transport
            .get_or_init(|| self.transport_builder.clone().build());
        transport
            .send(email)
            .await
            .map(drop)
            .map_err(|e| self.failure(&e))
    }

    fn failure(&self, e: &SmtpError) -> Failure {
        let cause = error_chain(e);
        if e.is_client() && self.starttls_required && cause.contains("STARTTLS") {
            return Failure::permanent(format!(
                "the SMTP server {} does not offer STARTTLS, which `starttls = \"required\"` \
                 needs: enable it there, or set `tls = true` for a server that speaks TLS from \
                 the start (port 465), or accept plain text with `starttls = \"opportunistic\"` \
                 or `\"none\"`",
                self.server
            ));
        }
        let message = format!("SMTP server {}: {cause}", self.server);
        if e.is_permanent() || e.is_client() {
            Failure::permanent(message)
        } else {
            Failure::retryable(message)
        }
    }
}

/// The subject: the title, `[FIRING:2] cpu_busy (host=web1)`.
pub fn subject(msg: &Message) -> String {
    text::title(msg)
}

/// The plain-text body: a summary line, then the firing and the resolved alerts.
pub fn body(msg: &Message) -> String {
    let (firing, resolved) = msg.counts();
    let mut body = format!(
        "{}\n\n{firing} firing, {resolved} resolved",
        text::title(msg)
    );
    if !msg.group_labels.is_empty() {
        body.push_str(&format!(" in group {}", text::pairs(&msg.group_labels)));
    }
    body.push_str(".\n");
    if msg.escalation > 0 {
        body.push_str(&format!(
            "Escalation {}: nobody acknowledged these alerts in time.\n",
            msg.escalation
        ));
    }
    if !msg.external_url.is_empty() {
        body.push_str(&format!("Outpost: {}\n", msg.external_url));
    }
    for (status, heading) in [(Status::Firing, "Firing"), (Status::Resolved, "Resolved")] {
        let alerts = text::alerts_text(msg, status);
        if !alerts.is_empty() {
            body.push_str(&format!(
                "\n{heading}\n{}\n\n{alerts}\n",
                "=".repeat(heading.len())
            ));
        }
    }
    body
}

/// `host:port`, `host` or `[v6]:port`, as `(host, port)`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let hint = "give the SMTP server as host:port, for example smtp.example.com:587";
    if s.contains("://") {
        return Err(format!("`{s}` is a URL; {hint}"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}` has no closing `]`; {hint}"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("`{s}`: {hint}"))?,
                ),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "`{s}`: write an IPv6 address in brackets, [::1]:25"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c)) {
        return Err(format!("`{s}` has no valid host; {hint}"));
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("`{s}` has an invalid port; {hint}")),
            Ok(p) => Ok(p),
        })
        .transpose()?;
    Ok((host.to_owned(), port))
}

fn mailbox(check: &mut Check<'_>, field: &str, address: &str) -> Option<Mailbox> {
    address
        .parse()
        .map_err(|e| check.problem(field, format!("`{address}` is not an e-mail address ({e})")))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::notify::delivery::Retry;
    use crate::notify::testutil::{
        Process, firing_message, free_port, receivers, resolved, wait_for,
    };

    const PYTHON: &str = "/usr/bin/python3";

    #[test]
    fn subject_and_body_list_the_alerts() {
        let mut msg = firing_message();
        msg.alerts[1].status = Status::Resolved;
        msg.alerts[1].ends_at_ns = Some(1_700_000_600 * 1_000_000_000);
        assert_eq!(subject(&msg), "[FIRING:1] cpu_busy (host=web1)");
        let expected = format!(
            "[FIRING:1] cpu_busy (host=web1)\n\n1 firing, 1 resolved in group alertname=cpu_busy.\n\
             Outpost: https://outpost.example\n\nFiring\n======\n\n{}\n\nResolved\n========\n\n{}\n",
            text::alert_text(&msg.alerts[0]),
            text::alert_text(&msg.alerts[1]),
        );
        assert_eq!(body(&msg), expected);
        let mut msg = resolved(&firing_message());
        msg.escalation = 1;
        msg.external_url.clear();
        let body = body(&msg);
        assert!(body.contains("0 firing, 2 resolved"), "{body}");
        assert!(
            body.contains("\nEscalation 1: nobody acknowledged"),
            "{body}"
        );
        assert!(!body.contains("Firing\n"), "{body}");
    }

    #[test]
    fn smtp_servers_are_host_and_port() {
        let ok = |s: &str| split_host_port(s).expect(s);
        assert_eq!(ok("smtp.example:587"), ("smtp.example".into(), Some(587)));
        assert_eq!(ok("smtp.example"), ("smtp.example".into(), None));
        assert_eq!(ok("[::1]:25"), ("::1".into(), Some(25)));
        assert_eq!(ok("[::1]"), ("::1".into(), None));
        for bad in [
            "smtp://x:25",
            ":25",
            "x:0",
            "x:http",
            "::1:25",
            "[::1",
            "a b:25",
            "[::1]25",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    /// An SMTP server (aiosmtpd) on loopback that stores what it receives in a Maildir; it
    /// offers no STARTTLS.
    struct SmtpServer {
        port: u16,
        maildir: std::path::PathBuf,
        _process: Process,
        _dir: tempfile::TempDir,
    }

    impl SmtpServer {
        async fn start() -> SmtpServer {
            let importable = Command::new(PYTHON)
                .args(["-c", "import aiosmtpd"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                importable,
                "{PYTHON} cannot import aiosmtpd: run scripts/test, which installs the Debian \
                 package python3-aiosmtpd"
            );
            let dir = tempfile::tempdir().expect("tempdir");
            let maildir = dir.path().join("mail");
            let port = free_port();
            let mut process = Process::spawn(
                Command::new(PYTHON)
                    .args(["-m", "aiosmtpd", "-n", "-l"])
                    .arg(format!("127.0.0.1:{port}"))
                    .args(["-c", "aiosmtpd.handlers.Mailbox"])
                    .arg(&maildir),
                &dir.path().join("smtpd.log"),
            );
            process.wait_listening(port).await;
            SmtpServer {
                port,
                maildir,
                _process: process,
                _dir: dir,
            }
        }

        /// The first message delivered, as the server stored it (headers, then body).
        async fn first_message(&self) -> String {
            let new = self.maildir.join("new");
            wait_for("a delivered message", || async { read_first(&new) }).await
        }
    }

    fn read_first(dir: &Path) -> Option<String> {
        let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
        std::fs::read_to_string(entry.path()).ok()
    }

    #[tokio::test]
    async fn plain_smtp_delivers_subject_and_body() {
        let server = SmtpServer::start().await;
        let receivers = receivers(&format!(
            r#"
            [[receivers]]
            name = "mail"
            email = {{ smtp = "127.0.0.1:{}", from = "Outpost <outpost@example.com>", to = ["ops@example.com", "dev@example.com"], starttls = "none" }}
            "#,
            server.port
        ));
        let mut msg = firing_message();
        msg.receiver = "mail".into();
        receivers.deliver(&msg).await.expect("delivered");
        let stored = server.first_message().await.replace("\r\n", "\n");
        let (headers, body) = stored.split_once("\n\n").expect("headers, then body");
        for header in [
            "Subject: [FIRING:2] cpu_busy (host=web1)",
            "From: Outpost <outpost@example.com>",
            "To: ops@example.com, dev@example.com",
            "Content-Type: text/plain; charset=utf-8",
            "X-MailFrom: outpost@example.com",
            "X-RcptTo: ops@example.com, dev@example.com",
        ] {
            assert!(
                headers.lines().any(|l| l == header),
                "no {header:?} in\n{headers}"
            );
        }
        assert_eq!(body.trim_end(), super::body(&msg).trim_end());
    }

    #[tokio::test]
    async fn required_starttls_against_a_server_without_it_fails_permanently() {
        let server = SmtpServer::start().await;
        let receivers = receivers(&format!(
            r#"
            [[receivers]]
            name = "mail"
            email = {{ smtp = "127.0.0.1:{}", from = "outpost@example.com", to = ["ops@example.com"], username = "u", password = "pa55word" }}
            "#,
            server.port
        ));
        let mut msg = firing_message();
        msg.receiver = "mail".into();
        let e = receivers.deliver(&msg).await.expect_err("refused");
        assert_eq!(e.retry(), Retry::Never);
        let expected = format!(
            "receiver `mail`: the SMTP server 127.0.0.1:{} does not offer STARTTLS",
            server.port
        );
        assert!(e.to_string().starts_with(&expected), "{e}");
        assert!(!format!("{e:?} {receivers:?}").contains("pa55word"));
        assert!(read_first(&server.maildir.join("new")).is_none());
    }
}
