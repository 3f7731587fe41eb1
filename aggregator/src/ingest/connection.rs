//! The async driver of one agent connection: it moves frames between the QUIC streams and the
//! [`Session`], hands the session's store work to the writer, runs its timer, and decides
//! nothing itself.
//!
//! Each stream gets a reader task that sends what it reads to the driver's input queue (reading
//! inside the driver's `select!` would lose a half-read frame whenever another branch won).
//! Store work runs in tasks that answer through the same queue. The queue is bounded, so an
//! agent sending heartbeats faster than they are handled waits at its reader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use outpost_common::time::now_ns;
use outpost_common::tls::Identity;
use outpost_common::wire::{self, Message, WireError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::Shared;
use super::session::{BatchStream, Now, Session, StoreJob, Stream, Transmit};
use super::sessions::{Admission, ConnectionId};
use crate::internal_events::{StoreFailed, StoreWork};
use crate::store::{CommitOutcome, RegistryUpdate, StoreError};

/// What the service tells a session from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Notice {
    /// A newer connection of the same agent is established.
    Replaced,
    /// The agent's certificate is now revoked.
    Revoked,
}

/// How the service reaches a session's driver.
pub(super) type SessionHandle = mpsc::UnboundedSender<Notice>;

/// Inputs waiting for the driver, beyond which readers and store tasks wait.
const INPUT_QUEUE: usize = 64;

/// An input as it waits in the driver's queue: boxed, because the queue allocates its slots 32 at
/// a time as soon as it is made, and an input held in place (a Hello is several hundred bytes) would
/// cost every idle connection tens of KiB; ten thousand agents are ten thousand queues.
type Queued = Box<Input>;

/// What the reader and store tasks report.
#[derive(Debug)]
enum Input {
    Control(Result<Message, WireError>),
    Batch(BatchStream, Result<Message, WireError>),
    Committed(BatchStream, Result<CommitOutcome, StoreError>),
    Recorded(Result<(), StoreError>),
    Renewed(BatchStream, crate::enroll::Outcome),
}

/// The current time for the session: tokio's clock (so tests may pause it) and the wall clock.
fn now() -> Now {
    Now {
        instant: tokio::time::Instant::now().into_std(),
        unix_ns: now_ns(),
    }
}

struct Driver {
    shared: Arc<Shared>,
    conn: quinn::Connection,
    remote: SocketAddr,
    id: ConnectionId,
    serial: Vec<u8>,
    session: Session,
    inputs: mpsc::Sender<Queued>,
    notices: SessionHandle,
    control: Option<quinn::SendStream>,
    batch_streams: HashMap<BatchStream, quinn::SendStream>,
    next_stream: u64,
    /// The registry update with the store, awaited before the disconnect is recorded.
    recording: Option<JoinHandle<()>>,
    /// The session's last word to the registry, recorded once the connection has ended.
    disconnect: Option<RegistryUpdate>,
    /// Registered in [`super::Sessions`] as the agent's connection.
    joined: bool,
}

/// Drives an admitted connection until its session ends, then records the disconnect if this
/// was the agent's current connection.
pub(super) async fn drive(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    identity: Identity,
    remote: SocketAddr,
    id: ConnectionId,
) {
    let (inputs_tx, mut inputs) = mpsc::channel(INPUT_QUEUE);
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let session = Session::new(
        now(),
        identity.agent_id,
        remote,
        shared.config.clone(),
        shared.telemetry.clone(),
    );
    let mut d = Driver {
        shared,
        conn,
        remote,
        id,
        serial: identity.serial,
        session,
        inputs: inputs_tx,
        notices: notices_tx,
        control: None,
        batch_streams: HashMap::new(),
        next_stream: 0,
        recording: None,
        disconnect: None,
        joined: false,
    };
    loop {
        d.carry_out().await;
        if d.session.is_closed() {
            break;
        }
        let deadline = d.session.poll_timeout();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = d.conn.accept_bi() => match accepted {
                Ok((send, recv)) => d.accepted(send, recv),
                Err(e) => d.session.handle_connection_lost(now(), &e.to_string()),
            },
            // The driver holds a sender itself, so the queue never reports closed.
            Some(input) = inputs.recv() => d.input(*input),
            Some(notice) = notices.recv() => match notice {
                Notice::Replaced => d.session.handle_replaced(now()),
                Notice::Revoked => d.session.handle_revoked(now()),
            },
            () = timer => d.session.handle_timeout(now()),
        }
    }
    // Answers still on their way find the queue gone and are dropped with it.
    drop(inputs);
    d.end().await;
}

impl Driver {
    /// Carries out what the session asks: writes, store work, the close; and registers an
    /// established session as its agent's connection.
    async fn carry_out(&mut self) {
        loop {
            while let Some(t) = self.session.poll_transmit() {
                self.transmit(t).await;
            }
            while let Some(job) = self.session.poll_job() {
                self.job(job);
            }
            if let Some(close) = self.session.poll_close() {
                self.conn.close(close.code.into(), close.reason.as_bytes());
            }
            if self.joined || !self.session.is_established() {
                return;
            }
            self.join();
        }
    }

    /// Registers the established session; a replaced older connection is told so.
    fn join(&mut self) {
        self.joined = true;
        let mut sessions = self.shared.sessions();
        let admission = sessions.establish(
            self.session.agent_id(),
            self.id,
            self.serial.clone(),
            self.notices.clone(),
        );
        match admission {
            Admission::First => {}
            // A driver that is gone has nothing left to close.
            Admission::Replaces(older) => drop(older.send(Notice::Replaced)),
            Admission::Superseded => self.session.handle_replaced(now()),
        }
        // Revoked after the handshake but before the reload saw this session.
        if self.shared.is_revoked(&self.serial) {
            self.session.handle_revoked(now());
        }
    }

    fn accepted(&mut self, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let inputs = self.inputs.clone();
        let limit = self.shared.config.max_frame_bytes;
        if self.control.is_none() {
            self.control = Some(send);
            tokio::spawn(async move {
                loop {
                    let frame = wire::read_message(&mut recv, limit).await;
                    let last = frame.is_err();
                    if inputs.send(Box::new(Input::Control(frame))).await.is_err() || last {
                        return;
                    }
                }
            });
        } else {
            let stream = BatchStream(self.next_stream);
            self.next_stream += 1;
            self.batch_streams.insert(stream, send);
            tokio::spawn(async move {
                let frame = wire::read_message(&mut recv, limit).await;
                let _ = inputs.send(Box::new(Input::Batch(stream, frame))).await;
            });
        }
    }

    fn input(&mut self, input: Input) {
        let now = now();
        match input {
            Input::Control(frame) => self.session.handle_control(now, frame),
            Input::Batch(stream, frame) => {
                if matches!(frame, Err(WireError::Io(_))) {
                    // The stream is dead: nothing can be written on it any more.
                    self.batch_streams.remove(&stream);
                }
                self.session.handle_batch(now, stream, frame);
            }
            Input::Committed(stream, outcome) => {
                self.session.handle_committed(now, stream, outcome);
            }
            Input::Recorded(outcome) => self.session.handle_recorded(now, outcome),
            Input::Renewed(stream, outcome) => self.session.handle_renewed(now, stream, outcome),
        }
    }

    async fn transmit(&mut self, t: Transmit) {
        match t.stream {
            // Welcome or a Reject of the Hello: small, once per connection, and needed before a
            // close that may follow.
            Stream::Control => {
                if let Some(send) = self.control.as_mut()
                    && wire::write_message(send, &t.message).await.is_ok()
                    && t.finish
                {
                    let _ = send.finish();
                }
            }
            // A batch stream gets one answer, and is finished after it.
            Stream::Batch(stream) => {
                if let Some(mut send) = self.batch_streams.remove(&stream) {
                    tokio::spawn(async move {
                        if wire::write_message(&mut send, &t.message).await.is_ok() {
                            let _ = send.finish();
                        }
                    });
                }
            }
        }
    }

    fn job(&mut self, job: StoreJob) {
        let writer = self.shared.writer.clone();
        let inputs = self.inputs.clone();
        match job {
            StoreJob::Commit { stream, batch } => {
                tokio::spawn(async move {
                    let outcome = writer.commit(batch).await;
                    let _ = inputs
                        .send(Box::new(Input::Committed(stream, outcome)))
                        .await;
                });
            }
            StoreJob::Record(update) if matches!(*update, RegistryUpdate::Disconnect { .. }) => {
                self.disconnect = Some(*update);
            }
            StoreJob::Record(update) => {
                self.recording = Some(tokio::spawn(async move {
                    let outcome = writer.record(*update).await;
                    let _ = inputs.send(Box::new(Input::Recorded(outcome))).await;
                }));
            }
            StoreJob::Renew { stream, request } => {
                let enroller = self.shared.enroller.clone();
                let agent_id = self.session.agent_id().to_owned();
                // Checked now, as the request is decided: a CRL reloaded since the handshake
                // counts.
                let revoked = self.shared.is_revoked(&self.serial);
                let remote = self.remote.ip();
                tokio::spawn(async move {
                    let outcome = match enroller {
                        None => Err(crate::enroll::Refusal::Disabled),
                        Some(e) => tokio::task::spawn_blocking(move || {
                            e.renew(&agent_id, revoked, &request, remote, now_ns())
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(crate::enroll::Refusal::Unavailable(format!(
                                "the renewal task failed: {e}"
                            )))
                        }),
                    };
                    let _ = inputs.send(Box::new(Input::Renewed(stream, outcome))).await;
                });
            }
        }
    }

    /// After the session: leaves the registry of sessions and, if this was the agent's current
    /// connection, records the disconnect after any update still with the store.
    async fn end(mut self) {
        let agent_id = self.session.agent_id().to_owned();
        let current = self.shared.sessions().end(&agent_id, self.id);
        let Some(update) = self.disconnect.take() else {
            debug!(
                agent_id,
                connection = self.id.0,
                "connection ended before its Hello was recorded"
            );
            return;
        };
        if !current {
            return;
        }
        if let Some(recording) = self.recording.take() {
            let _ = recording.await;
        }
        if let Err(e) = self.shared.writer.record(update).await {
            self.shared.telemetry.emit(StoreFailed {
                agent_id: &agent_id,
                work: StoreWork::Disconnect,
                error: &e.to_string(),
            });
        }
    }
}
