//! The receivers' configuration: one `[[alerting.receivers]]` entry each, a `name` and exactly one
//! table saying how to send.
//!
//! ```toml
//! [[alerting.receivers]]
//! name = "ops"
//! webhook = { url = "https://hooks.example/alerts", headers = { X-Team = "ops" }, timeout = "10s" }
//!
//! [[alerting.receivers]]
//! name = "pager"
//! pagerduty = { routing_key_file = "/etc/outpost/secrets/pd-key" }
//! ```
//!
//! Parsing only reads the shape; [`Receivers::from_config`](super::Receivers::from_config) then
//! checks every entry at once (names, URLs, addresses, secrets, which it reads) and reports all
//! problems together, each naming the receiver and the field.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::alertmanager::AlertmanagerConfig;
use super::email::EmailConfig;
use super::pagerduty::PagerDutyConfig;
use super::secret::{Secret, SecretSource};
use super::slack::SlackConfig;
use super::webhook::WebhookConfig;

/// How long a receiver may take to answer one notification unless its `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One receiver: a name that routes refer to, and exactly one way of sending.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// The name routes give as their `receiver`; unique among receivers.
    pub name: String,
    /// POST Alertmanager's webhook JSON (version 4) to a URL.
    pub webhook: Option<WebhookConfig>,
    /// Post a message to a Slack incoming webhook.
    pub slack: Option<SlackConfig>,
    /// Trigger and resolve PagerDuty alerts through the Events API v2.
    pub pagerduty: Option<PagerDutyConfig>,
    /// Send an e-mail over SMTP.
    pub email: Option<EmailConfig>,
    /// Forward the alerts to an Alertmanager (`POST /api/v2/alerts`).
    pub alertmanager: Option<AlertmanagerConfig>,
}

impl ReceiverConfig {
    /// The tables given, by their names.
    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        [
            ("webhook", self.webhook.is_some()),
            ("slack", self.slack.is_some()),
            ("pagerduty", self.pagerduty.is_some()),
            ("email", self.email.is_some()),
            ("alertmanager", self.alertmanager.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// One thing wrong with a receiver's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The receiver's name; `None` for a problem of the receivers as a whole.
    pub receiver: Option<String>,
    /// The field, as written in the file (`webhook.url_file`); `None` for the entry as a whole.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.receiver, &self.field) {
            (Some(r), Some(field)) => write!(f, "receiver `{r}`: {field}: {}", self.message),
            (Some(r), None) => write!(f, "receiver `{r}`: {}", self.message),
            (None, _) => f.write_str(&self.message),
        }
    }
}

/// Everything wrong with the receivers' configuration, one problem a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ReceiversError(pub Vec<ConfigProblem>);

impl fmt::Display for ReceiversError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The checks of one receiver's table: each records its problems under the receiver's name and
/// the table's, and returns `None` when the value is unusable, so one pass finds them all.
pub(crate) struct Check<'a> {
    receiver: &'a str,
    /// The table's name (`webhook`), which prefixes the fields in problems.
    table: &'static str,
    env: &'a dyn Fn(&str) -> Option<String>,
    pub(crate) problems: Vec<ConfigProblem>,
    /// Every secret read, and the forms it takes when sent, to keep them out of error messages.
    pub(crate) secrets: Vec<String>,
}

impl<'a> Check<'a> {
    pub(crate) fn new(
        receiver: &'a str,
        table: &'static str,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Check<'a> {
        Check {
            receiver,
            table,
            env,
            problems: Vec::new(),
            secrets: Vec::new(),
        }
    }

    pub(crate) fn problem(&mut self, field: &str, message: impl fmt::Display) {
        self.problems.push(ConfigProblem {
            receiver: Some(self.receiver.to_owned()),
            field: Some(format!("{}.{field}", self.table)),
            message: message.to_string(),
        });
    }

    /// The secret `field` given as `field`, `field_file` or `field_env`; exactly one is needed.
    pub(crate) fn secret(
        &mut self,
        field: &str,
        inline: Option<&Secret>,
        file: Option<&std::path::PathBuf>,
        env: Option<&String>,
    ) -> Option<Secret> {
        match SecretSource::from_fields(inline, file, env) {
            Ok(source) => self.read_secret(field, &source),
            Err(0) => {
                self.problem(
                    field,
                    format!("missing: give `{field}`, `{field}_file` or `{field}_env`"),
                );
                None
            }
            Err(_) => {
                self.problem(
                    field,
                    format!("give only one of `{field}`, `{field}_file` and `{field}_env`"),
                );
                None
            }
        }
    }

    /// Like [`Check::secret`] for a secret that may be left out: `Some(None)` when it is.
    pub(crate) fn optional_secret(
        &mut self,
        field: &str,
        inline: Option<&Secret>,
        file: Option<&std::path::PathBuf>,
        env: Option<&String>,
    ) -> Option<Option<Secret>> {
        if inline.is_none() && file.is_none() && env.is_none() {
            return Some(None);
        }
        self.secret(field, inline, file, env).map(Some)
    }

    /// Reads a secret, naming the field the source was given in when it fails.
    pub(crate) fn read_secret(&mut self, field: &str, source: &SecretSource) -> Option<Secret> {
        match source.read(self.env) {
            Ok(secret) => {
                self.secrets.push(secret.expose().to_owned());
                Some(secret)
            }
            Err(e) => {
                let written = match source {
                    SecretSource::Inline(_) => field.to_owned(),
                    SecretSource::File(_) => format!("{field}_file"),
                    SecretSource::Env(_) => format!("{field}_env"),
                };
                self.problem(&written, e);
                None
            }
        }
    }

    /// An `http` or `https` URL with a host, checked with fluent-uri. A `secret` URL (one that
    /// carries a token) is never repeated in a problem; a public one may not carry user
    /// information, which would show wherever the URL does.
    pub(crate) fn http_url(
        &mut self,
        field: &str,
        value: &str,
        secret: bool,
    ) -> Option<reqwest::Url> {
        // Problems start with the URL, or for a secret one with the verb.
        let shown = if secret {
            String::new()
        } else {
            format!("`{value}` ")
        };
        let uri = match fluent_uri::Uri::parse(value) {
            Ok(uri) => uri,
            Err(e) => {
                self.problem(field, format!("{shown}is not a valid URL ({e})"));
                return None;
            }
        };
        let scheme = uri.scheme().as_str();
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            self.problem(
                field,
                format!("{shown}has scheme `{scheme}`; receivers are reached over http or https"),
            );
            return None;
        }
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            self.problem(field, format!("{shown}has no host"));
            return None;
        };
        if !secret && authority.has_userinfo() {
            self.problem(
                field,
                format!("{shown}must not carry a user name or password, which would show in logs"),
            );
            return None;
        }
        if uri.fragment().is_some() {
            self.problem(field, format!("{shown}must not have a fragment (`#…`)"));
            return None;
        }
        match reqwest::Url::parse(value) {
            Ok(url) => {
                if secret {
                    // The parsed form is what the HTTP client would repeat in its errors.
                    self.secrets.push(url.as_str().to_owned());
                }
                Some(url)
            }
            Err(e) => {
                self.problem(field, format!("{shown}is not a valid URL ({e})"));
                None
            }
        }
    }

    /// The `timeout` given, or [`DEFAULT_TIMEOUT`]; zero is refused.
    pub(crate) fn timeout(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        match timeout {
            Some(t) if t.is_zero() => {
                self.problem("timeout", "must be more than zero");
                None
            }
            Some(t) => Some(t),
            None => Some(DEFAULT_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::notify::Receivers;
    use crate::notify::testutil::{firing_message, receivers, receivers_with_env};

    /// The problems `toml_text` has, one a line.
    fn problems(toml_text: &str) -> String {
        receivers_with_env(toml_text, &|name| {
            (name == "SET").then(|| "from-env".to_owned())
        })
        .expect_err("the configuration is refused")
        .to_string()
    }

    #[test]
    fn the_documented_shape_parses_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("{value}\n")).expect("write a secret");
            path.display().to_string()
        };
        let text = format!(
            r##"
            [[receivers]]
            name = "ops"
            webhook = {{ url = "https://hooks.example/alerts", headers = {{ X-Team = "ops", Authorization = {{ env = "SET" }} }}, timeout = "10s", max_alerts = 0 }}
            [[receivers]]
            name = "chat"
            slack = {{ url_file = "{slack}", channel = "#alerts" }}
            [[receivers]]
            name = "pager"
            pagerduty = {{ routing_key_file = "{pd}", url = "https://events.pagerduty.com/v2/enqueue" }}
            [[receivers]]
            name = "mail"
            email = {{ smtp = "smtp.example:587", from = "outpost@example", to = ["ops@example"], starttls = "required", username = "u", password_file = "{pw}" }}
            [[receivers]]
            name = "am"
            alertmanager = {{ url = "http://127.0.0.1:9093" }}
            "##,
            slack = secret(
                "slack-url",
                "https://hooks.slack.example/services/T/B/sl4cksecret"
            ),
            pd = secret("pd-key", "pdk3ysecret"),
            pw = secret("mail-password", "ma1lsecret"),
        );
        let r = receivers_with_env(&text, &|name| {
            (name == "SET").then(|| "Bearer env-t0ken".to_owned())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            ["am", "chat", "mail", "ops", "pager"]
        );
        assert!(r.contains("pager") && !r.contains("nobody"));
        let shown = format!("{r:?}");
        for secret in [
            "sl4cksecret",
            "pdk3ysecret",
            "ma1lsecret",
            "env-t0ken",
            "hooks.example",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("http://127.0.0.1:9093/api/v2/alerts"),
            "{shown}"
        );
    }

    #[test]
    fn config_debug_hides_inline_secrets() {
        #[derive(serde::Deserialize, Debug)]
        struct File {
            #[allow(dead_code)] // read through Debug only
            receivers: Vec<super::ReceiverConfig>,
        }
        let file: File = toml::from_str(
            r#"
            [[receivers]]
            name = "ops"
            webhook = { url = "https://hooks.example/t0ken", headers = { Authorization = "Bearer s3cret" } }
            [[receivers]]
            name = "mail"
            email = { smtp = "smtp.example", from = "a@example", to = ["b@example"], username = "u", password = "pa55" }
            "#,
        )
        .expect("parse");
        let shown = format!("{file:?}");
        for secret in ["t0ken", "s3cret", "pa55"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn unreadable_secret_files_name_the_receiver_and_field() {
        let text = r#"
            [[receivers]]
            name = "pager"
            pagerduty = { routing_key_file = "/nonexistent/pd-key" }
        "#;
        assert_eq!(
            problems(text),
            "receiver `pager`: pagerduty.routing_key_file: cannot read /nonexistent/pd-key: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn secrets_come_from_exactly_one_source() {
        let text = r##"
            [[receivers]]
            name = "a"
            slack = { url_env = "UNSET" }
            [[receivers]]
            name = "b"
            slack = { url = "https://x.example", url_env = "SET" }
            [[receivers]]
            name = "c"
            slack = { channel = "#x" }
            [[receivers]]
            name = "d"
            webhook = { url_env = "SET" }
        "##;
        assert_eq!(
            problems(text),
            "receiver `a`: slack.url_env: the environment variable UNSET is not set (or not valid UTF-8)\n\
             receiver `b`: slack.url: give only one of `url`, `url_file` and `url_env`\n\
             receiver `c`: slack.url: missing: give `url`, `url_file` or `url_env`\n\
             receiver `d`: webhook.url: is not a valid URL (unexpected character at index 8)"
        );
    }

    #[test]
    fn bad_urls_are_refused_and_secret_ones_not_repeated() {
        let text = r#"
            [[receivers]]
            name = "a"
            webhook = { url = "ftp://files.example/t0ken" }
            [[receivers]]
            name = "b"
            alertmanager = { url = "http://user:pw@am.example" }
            [[receivers]]
            name = "c"
            alertmanager = { url = "am.example:9093" }
            [[receivers]]
            name = "d"
            pagerduty = { routing_key = "k", url = "https:///v2/enqueue" }
            [[receivers]]
            name = "e"
            alertmanager = { url = "http://am.example/?x=1", valid_for = "0s" }
        "#;
        assert_eq!(
            problems(text),
            "receiver `a`: webhook.url: has scheme `ftp`; receivers are reached over http or https\n\
             receiver `b`: alertmanager.url: `http://user:pw@am.example` must not carry a user name or password, which would show in logs\n\
             receiver `c`: alertmanager.url: `am.example:9093` has scheme `am.example`; receivers are reached over http or https\n\
             receiver `d`: pagerduty.url: `https:///v2/enqueue` has no host\n\
             receiver `e`: alertmanager.url: `http://am.example/?x=1` must not have a query\n\
             receiver `e`: alertmanager.valid_for: must be more than zero"
        );
    }

    #[test]
    fn names_are_unique_and_each_receiver_sends_one_way() {
        let text = r#"
            [[receivers]]
            name = "ops"
            alertmanager = { url = "http://am.example" }
            [[receivers]]
            name = "ops"
            alertmanager = { url = "http://am.example" }
            [[receivers]]
            name = "none"
            [[receivers]]
            name = "two"
            alertmanager = { url = "http://am.example" }
            slack = { url = "https://hooks.example" }
            [[receivers]]
            name = ""
            alertmanager = { url = "http://am.example" }
        "#;
        assert_eq!(
            problems(text),
            "receiver `ops`: name: another receiver has the same name\n\
             receiver `none`: says nowhere to send: give one of `webhook`, `slack`, `pagerduty`, `email` or `alertmanager`\n\
             receiver `two`: gives slack and alertmanager: a receiver sends one way only\n\
             a receiver has an empty `name`"
        );
    }

    #[test]
    fn email_addresses_and_security_are_checked() {
        let text = r#"
            [[receivers]]
            name = "mail"
            email = { smtp = "smtp://smtp.example", from = "not an address", to = ["ops@example", "@"], tls = true, starttls = "none", username = "u", timeout = "0s" }
            [[receivers]]
            name = "mail2"
            email = { smtp = "smtp.example:587", from = "a@example", to = [], password_env = "SET" }
        "#;
        let problems = problems(text);
        let lines: Vec<&str> = problems.lines().collect();
        assert_eq!(lines.len(), 9, "{problems}");
        for expected in [
            "receiver `mail`: email.smtp: `smtp://smtp.example` is a URL; give the SMTP server as host:port",
            "receiver `mail`: email.from: `not an address` is not an e-mail address",
            "receiver `mail`: email.to: `@` is not an e-mail address",
            "receiver `mail`: email.starttls: give either `tls = true` (TLS from the start) or `starttls`, not both",
            "receiver `mail`: email.username: would send the password in plain text with `starttls = \"none\"`",
            "receiver `mail`: email.password: is needed with `username`",
            "receiver `mail`: email.timeout: must be more than zero",
            "receiver `mail2`: email.to: needs at least one address",
            "receiver `mail2`: email.username: is needed with a password",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(expected)),
                "no {expected:?} in\n{problems}"
            );
        }
    }

    #[test]
    fn header_problems_name_the_header() {
        let text = r#"
            [[receivers]]
            name = "ops"
            webhook = { url = "https://hooks.example", headers = { "Bad Name" = "x", X-Key = { file = "/nonexistent/k" }, X-Ok = "a\u0001b" } }
        "#;
        assert_eq!(
            problems(text),
            "receiver `ops`: webhook.headers.Bad Name: is not a valid HTTP header name\n\
             receiver `ops`: webhook.headers.X-Key_file: cannot read /nonexistent/k: No such file or directory (os error 2)\n\
             receiver `ops`: webhook.headers.X-Ok: is not a valid HTTP header value (control characters?)"
        );
    }

    #[tokio::test]
    async fn a_message_for_an_unknown_receiver_fails_permanently() {
        let r = receivers("receivers = []");
        let e = r
            .deliver(&firing_message())
            .await
            .expect_err("no such receiver");
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "receiver `ops`: no receiver of this name is configured"
        );
    }

    #[test]
    fn delivery_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let r = Receivers::from_config(&[]).expect("no receivers is fine");
        let msg = firing_message();
        assert_send(&r.deliver(&msg));
    }
}
