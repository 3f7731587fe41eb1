//! Telling a service manager (systemd, `Type=notify`) how the service is doing.
//!
//! Each call is a no-op when the process was not started with `NOTIFY_SOCKET`, so the binaries
//! behave the same by hand, under another supervisor, and under systemd with `Type=simple`.

use sd_notify::NotifyState;

/// The service is up: the aggregator listens, the agent's spool is open and its collectors and
/// shipper run. A failure to notify is logged, not fatal: systemd then times the start out.
pub fn ready() {
    notify(&[NotifyState::Ready], "ready");
}

/// The service is shutting down; `status` says why, for `systemctl status`.
pub fn stopping(status: &str) {
    notify(
        &[NotifyState::Stopping, NotifyState::Status(status)],
        "stopping",
    );
}

fn notify(state: &[NotifyState<'_>], what: &str) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot tell the service manager the service is {what}");
    }
}
