//! What a failed delivery means for the next attempt, the delay between attempts, and the one
//! HTTP request every HTTP receiver makes.
//!
//! Retryable: no connection, no answer within the receiver's timeout, HTTP 408, 429 and 5xx, and
//! SMTP's transient (4xx) replies. Permanent: other HTTP 4xx, redirects (configure the final URL),
//! SMTP's permanent (5xx) replies, and anything the configuration decides (a server without the
//! required STARTTLS). A receiver's `Retry-After` (in seconds) is honoured up to
//! [`RETRY_AFTER_CAP`].
//!
//! Error messages never contain a secret: the HTTP client's errors are taken without their URL,
//! and every message is scrubbed of the receiver's secrets before it leaves [`Receivers::deliver`](super::Receivers::deliver).

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Serialize;

/// The first retry waits about this long; each later one twice as long as the one before.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// No retry waits longer than this, however many attempts failed.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The longest `Retry-After` honoured: a receiver asking for more is tried again after this.
pub const RETRY_AFTER_CAP: Duration = BACKOFF_CAP;

/// Most characters of a receiver's answer quoted in an error.
const ANSWER_QUOTE_CHARS: usize = 200;

/// How long to wait before the next attempt after `attempt` attempts failed (1 after the first
/// failure; 0 counts as 1): `BACKOFF_BASE · 2^(attempt-1)`, capped at [`BACKOFF_CAP`], with
/// *equal jitter*: half the delay is fixed and the other half scaled by `jitter` (a uniform
/// random number in `[0, 1)`; values outside are clamped).
///
/// Equal rather than full jitter, so a receiver that is down is never retried at once: the wait
/// is at least half the exponential delay, while many messages failing together still spread
/// out over the other half.
///
/// A pure function of the attempt count rather than `backon`'s builder: the outbox keeps the
/// count of each message in the state store and schedules its next attempt across restarts,
/// where an in-memory backoff iterator would start over; the caller passes the random number,
/// which keeps this testable.
pub fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let exponential = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let half = exponential / 2;
    half + half.mul_f64(jitter)
}

/// When, if ever, to try a failed delivery again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Sending the same message again cannot succeed until the configuration or the receiver's
    /// side changes: drop it (and say so).
    Never,
    /// It may succeed later: wait [`backoff_delay`].
    Backoff,
    /// The receiver asked to wait this long (`Retry-After`, capped at [`RETRY_AFTER_CAP`]).
    After(Duration),
}

/// A delivery that failed: which receiver, whether to try again, and why, in a sentence that
/// holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receiver `{receiver}`: {message}")]
pub struct DeliveryError {
    receiver: String,
    retry: Retry,
    message: String,
}

impl DeliveryError {
    pub(crate) fn new(receiver: &str, failure: Failure, secrets: &[String]) -> DeliveryError {
        DeliveryError {
            receiver: receiver.to_owned(),
            retry: failure.retry,
            message: redact(failure.message, secrets),
        }
    }

    /// The receiver's name.
    pub fn receiver(&self) -> &str {
        &self.receiver
    }

    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// Whether sending again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retry != Retry::Never
    }

    /// How long the receiver asked to wait, when it did; otherwise use [`backoff_delay`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self.retry {
            Retry::After(d) => Some(d),
            Retry::Never | Retry::Backoff => None,
        }
    }

    /// Why, without the receiver's name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A receiver's failure before it is attributed to the receiver and scrubbed of its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) retry: Retry,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            retry: Retry::Never,
            message: message.into(),
        }
    }

    pub(crate) fn retryable(message: impl Into<String>) -> Failure {
        Failure {
            retry: Retry::Backoff,
            message: message.into(),
        }
    }
}

/// Where and how an HTTP receiver sends.
#[derive(Clone)]
pub(crate) struct HttpTarget {
    pub(crate) url: Url,
    /// Whether the URL carries a token: then `Debug` hides it.
    pub(crate) url_is_secret: bool,
    /// Extra headers (marked sensitive, so neither `Debug` nor the HTTP client shows them).
    pub(crate) headers: HeaderMap,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url: &dyn fmt::Debug = if self.url_is_secret {
            &"<secret>"
        } else {
            &self.url.as_str()
        };
        f.debug_struct("HttpTarget")
            .field("url", url)
            .field("headers", &self.headers)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpTarget {
    /// POSTs `body` as JSON; any 2xx answer is success.
    pub(crate) async fn post_json(
        &self,
        client: &reqwest::Client,
        body: &impl Serialize,
    ) -> Result<(), Failure> {
        let response = client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| self.request_failure(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        // The answer is quoted to help whoever reads the log; failing to read it changes nothing.
        let answer = response.text().await.unwrap_or_default();
        Err(status_failure(status, retry_after, &answer))
    }

    fn request_failure(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::retryable(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ));
        }
        let retry = if e.is_builder() {
            Retry::Never
        } else {
            Retry::Backoff
        };
        let what = if e.is_connect() {
            "cannot connect"
        } else {
            "the request failed"
        };
        Failure {
            retry,
            message: format!("{what}: {}", error_chain(&e.without_url())),
        }
    }
}

/// What an unsuccessful HTTP status means for the next attempt.
fn status_failure(status: StatusCode, retry_after: Option<Duration>, answer: &str) -> Failure {
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    let retry = match (retryable, retry_after) {
        (false, _) => Retry::Never,
        (true, Some(after)) => Retry::After(after),
        (true, None) => Retry::Backoff,
    };
    let mut message = format!("answered {status}");
    if status.is_redirection() {
        message.push_str(" (redirects are not followed: configure the URL it redirects to)");
    }
    let answer = quote(answer);
    if !answer.is_empty() {
        message.push_str(": ");
        message.push_str(&answer);
    }
    Failure { retry, message }
}

/// `Retry-After` in seconds, capped at [`RETRY_AFTER_CAP`]. The HTTP-date form is ignored
/// (the backoff applies): the receivers this speaks to send seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_CAP))
}

/// The start of a receiver's answer on one line, for an error message.
fn quote(answer: &str) -> String {
    let one_line = answer.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&one_line, ANSWER_QUOTE_CHARS)
}

/// At most `max` characters of `s`, the last of them `…` when it was cut.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An error and its causes, `outer: inner: …`, skipping causes that repeat their parent.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `message` with every secret replaced by `<secret>`, longest first so that a secret
/// containing another is replaced whole.
fn redact(mut message: String, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "<secret>");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_equal_jitter() {
        let at = |attempt| backoff_delay(attempt, 0.0);
        let top = |attempt| backoff_delay(attempt, 0.999_999);
        assert_eq!(at(0), Duration::from_millis(500));
        assert_eq!(at(1), Duration::from_millis(500));
        assert_eq!(at(2), Duration::from_secs(1));
        assert_eq!(at(3), Duration::from_secs(2));
        assert!(top(1) < Duration::from_secs(1) && top(1) > Duration::from_millis(999));
        assert_eq!(backoff_delay(3, 0.5), Duration::from_secs(3));
        // 2^8 s = 256 s, then the cap.
        assert_eq!(backoff_delay(9, 0.5), Duration::from_secs(192));
        assert_eq!(at(10), BACKOFF_CAP / 2);
        assert_eq!(at(u32::MAX), BACKOFF_CAP / 2);
        assert!(top(u32::MAX) < BACKOFF_CAP);
        assert_eq!(backoff_delay(4, f64::NAN), at(4));
        assert_eq!(backoff_delay(4, -3.0), at(4));
        assert_eq!(backoff_delay(4, 7.0), Duration::from_secs(8));
    }

    #[test]
    fn backoff_never_shrinks_as_attempts_grow() {
        for jitter in [0.0, 0.3, 0.99] {
            let delays: Vec<_> = (1..40).map(|a| backoff_delay(a, jitter)).collect();
            assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        }
    }

    #[test]
    fn statuses_map_to_retries() {
        let f = |code: u16, after: Option<u64>| {
            status_failure(
                StatusCode::from_u16(code).expect("status"),
                after.map(Duration::from_secs),
                "",
            )
            .retry
        };
        assert_eq!(f(500, None), Retry::Backoff);
        assert_eq!(f(503, Some(7)), Retry::After(Duration::from_secs(7)));
        assert_eq!(f(429, Some(2)), Retry::After(Duration::from_secs(2)));
        assert_eq!(f(429, None), Retry::Backoff);
        assert_eq!(f(408, None), Retry::Backoff);
        assert_eq!(f(400, Some(2)), Retry::Never);
        assert_eq!(f(404, None), Retry::Never);
        assert_eq!(f(301, None), Retry::Never);
    }

    #[test]
    fn retry_after_reads_seconds_and_is_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, " 12 ".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(RETRY_AFTER, "86400".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(RETRY_AFTER_CAP));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn answers_are_quoted_on_one_line_and_cut() {
        let failure = status_failure(StatusCode::BAD_REQUEST, None, "bad\n  payload\n");
        assert_eq!(failure.message, "answered 400 Bad Request: bad payload");
        let long = "x".repeat(500);
        let failure = status_failure(StatusCode::BAD_REQUEST, None, &long);
        assert!(failure.message.ends_with('…'));
        assert_eq!(
            failure.message.chars().count(),
            "answered 400 Bad Request: ".len() + ANSWER_QUOTE_CHARS
        );
    }

    #[test]
    fn redaction_replaces_every_secret_longest_first() {
        let secrets = vec![
            "tok".to_owned(),
            "https://hooks.example/tok".to_owned(),
            String::new(),
        ];
        let failure = Failure::retryable("posting to https://hooks.example/tok failed (tok)");
        let e = DeliveryError::new("chat", failure, &secrets);
        assert_eq!(
            e.to_string(),
            "receiver `chat`: posting to <secret> failed (<secret>)"
        );
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), None);
    }
}
