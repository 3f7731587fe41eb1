//! Waiting for the operator's request to stop.

/// Resolves on SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers only Ctrl-C can stop the process; keep that working.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
