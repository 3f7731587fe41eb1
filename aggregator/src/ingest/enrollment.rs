//! The async side of an enrollment connection ([`outpost_common::enroll::ALPN`]): one stream,
//! one request, one answer, then the connection is closed. Such a connection is never admitted
//! as an agent session, whatever certificate it shows.
//!
//! The decision is [`crate::enroll`]'s, made on a blocking thread (it reads and writes the
//! store and the PKI directory); this module only carries the frames, under a frame limit and
//! a deadline. Garbage, another message, or nothing in time closes the connection with an
//! error code and is counted ([`EnrollmentMalformed`]), never more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_common::enroll::EnrollResponse;
use outpost_common::time::now_ns;
use outpost_common::wire::{self, Message, close_code};

use super::Shared;
use crate::enroll::Refusal;
use crate::internal_events::{CertificateAnswered, CertificateRequest, EnrollmentMalformed};

/// Largest enrollment frame: a signing request and a few short fields fit many times over.
pub(super) const MAX_FRAME: u32 = 64 * 1024;

/// How long the agent has to read the answer before the connection is closed anyway.
const LINGER: Duration = Duration::from_secs(5);

/// Serves one enrollment connection until it is answered or given up.
pub(super) async fn serve(shared: Arc<Shared>, conn: quinn::Connection, remote: SocketAddr) {
    let deadline = shared.config.handshake_timeout;
    let outcome = tokio::time::timeout(deadline, exchange(&shared, &conn, remote)).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(failure),
        Err(_) => Some((
            close_code::HANDSHAKE_TIMEOUT,
            format!(
                "no enrollment request within {}",
                humantime::format_duration(deadline)
            ),
        )),
    };
    match failure {
        None => conn.close(close_code::NORMAL.into(), b"enrollment answered"),
        Some((code, reason)) => {
            shared.telemetry.emit(EnrollmentMalformed {
                remote,
                reason: &reason,
            });
            conn.close(code.into(), reason.as_bytes());
        }
    }
}

/// Reads the request, has it decided, writes the answer and waits (a little) for the agent to
/// read it. An `Err` is the close code and reason of a connection that sent no valid request.
async fn exchange(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    remote: SocketAddr,
) -> Result<(), (u32, String)> {
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| (close_code::NORMAL, format!("connection lost: {e}")))?;
    let request = match wire::read_message(&mut recv, MAX_FRAME).await {
        Ok(Message::EnrollRequest(request)) => request,
        Ok(other) => {
            return Err((
                close_code::UNEXPECTED_MESSAGE,
                format!("expected EnrollRequest, got {}", other.name()),
            ));
        }
        Err(e) => return Err((e.close_code(), e.to_string())),
    };
    let outcome = match shared.enroller.clone() {
        None => Err(Refusal::Disabled),
        Some(enroller) => {
            let request = request.clone();
            tokio::task::spawn_blocking(move || enroller.enroll(&request, remote.ip(), now_ns()))
                .await
                .unwrap_or_else(|e| {
                    Err(Refusal::Unavailable(format!(
                        "the enrollment task failed: {e}"
                    )))
                })
        }
    };
    shared.telemetry.emit(CertificateAnswered::new(
        CertificateRequest::Enroll,
        remote,
        &request.agent_id,
        &outcome,
    ));
    let response = match outcome {
        Ok(issued) => EnrollResponse::Issued(issued),
        Err(refusal) => EnrollResponse::Refused {
            reason: refusal.to_string(),
        },
    };
    if wire::write_message(&mut send, &Message::EnrollResponse(response))
        .await
        .is_ok()
        && send.finish().is_ok()
    {
        // `finish` does not wait: give the agent the time to read the answer before closing.
        let _ = tokio::time::timeout(LINGER, send.stopped()).await;
    }
    Ok(())
}
