//! Waiting for the operator's request to stop.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Handlers for SIGTERM (systemd's stop) and SIGINT (Ctrl-C).
///
/// Install them before the process says it is ready: a signal that arrives earlier would
/// otherwise kill the process with the default action, skipping the graceful drain.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers; must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
