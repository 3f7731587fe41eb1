//! The wire protocol between agents and the aggregator.
//!
//! # Framing
//!
//! Every message is one frame: a `u32` big-endian length followed by that many bytes of a
//! bincode-encoded [`Message`]. The length is checked against a limit *before* anything is
//! allocated, so a hostile peer cannot make us reserve memory by announcing a huge frame.
//!
//! # Conversation
//!
//! 1. The agent opens a bidirectional **control stream** and sends [`Message::Hello`]. The
//!    aggregator answers [`Message::Welcome`] (with its limits) or [`Message::Reject`]. Only after
//!    Welcome is the connection established: a refused client certificate may surface only here.
//! 2. The agent then sends [`Message::Heartbeat`] on the control stream periodically.
//! 3. Each [`Message::Batch`] (or [`Message::PackedBatch`], the same with its events compressed)
//!    travels on its own bidirectional stream, which the agent finishes after the frame; the
//!    aggregator answers exactly one [`Message::Ack`] or [`Message::Reject`].
//!
//! # Invariants
//!
//! - [`decode`] never panics, whatever the input; it is fuzzed (`fuzz/`).
//! - Encoding is deterministic; `decode(encode(m)) == m` for every message (property-tested).
//! - This module is the only place that knows the codec, so it can be versioned or replaced here.

use bincode::config::{self, Config};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::enroll::{EnrollRequest, EnrollResponse, RenewRequest, RenewResponse};
use crate::event::{AgentStatus, Event, HostFacts};

/// The protocol version this build speaks. Version 2 added [`MetricPoint::unit`] and the
/// `spool_write_failed` drop counter, version 3 the `disk_full` drop counter, version 4 the log
/// sources in the agent's status ([`AgentStatus::logs`]), version 5 the file-integrity events'
/// full state, moves, type changes and tamper-evident trail ([`FimEvent`]), version 7 compressed
/// batches ([`PackedBatch`]), version 8 enrollment and certificate renewal
/// ([`crate::enroll`]).
///
/// [`MetricPoint::unit`]: crate::event::MetricPoint::unit
/// [`FimEvent`]: crate::event::FimEvent
pub const PROTOCOL_VERSION: u16 = 8;

/// The ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"outpost/1";

/// The default largest frame, in bytes, that either side accepts.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// QUIC application error codes used to close a stream or connection.
pub mod close_code {
    /// Normal shutdown.
    pub const NORMAL: u32 = 0;
    /// A frame could not be decoded.
    pub const MALFORMED_FRAME: u32 = 1;
    /// A frame's length prefix exceeded the limit.
    pub const FRAME_TOO_LARGE: u32 = 2;
    /// A well-formed message arrived where the protocol does not allow it.
    pub const UNEXPECTED_MESSAGE: u32 = 3;
    /// The peer's certificate or identity was refused.
    pub const UNAUTHORIZED: u32 = 4;
    /// The protocol versions are incompatible.
    pub const VERSION_MISMATCH: u32 = 5;
    /// The peer did not complete the handshake in time.
    pub const HANDSHAKE_TIMEOUT: u32 = 6;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 7;
    /// A newer connection from the same agent replaced this one.
    pub const REPLACED: u32 = 8;
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Batch(Batch),
    Ack(Ack),
    Reject(Reject),
    Heartbeat(Heartbeat),
    PackedBatch(PackedBatch),
    /// On an enrollment connection ([`crate::enroll::ALPN`]): the agent's request.
    EnrollRequest(EnrollRequest),
    /// On an enrollment connection: the aggregator's answer.
    EnrollResponse(EnrollResponse),
    /// On its own stream of an established connection: the agent asks for a new certificate.
    RenewRequest(RenewRequest),
    /// The aggregator's answer to [`Message::RenewRequest`].
    RenewResponse(RenewResponse),
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Batch(_) => "Batch",
            Message::Ack(_) => "Ack",
            Message::Reject(_) => "Reject",
            Message::Heartbeat(_) => "Heartbeat",
            Message::PackedBatch(_) => "PackedBatch",
            Message::EnrollRequest(_) => "EnrollRequest",
            Message::EnrollResponse(_) => "EnrollResponse",
            Message::RenewRequest(_) => "RenewRequest",
            Message::RenewResponse(_) => "RenewResponse",
        }
    }
}

/// The agent's first message on the control stream.
///
/// There is deliberately no agent id here: the agent's identity is its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: String,
    /// Random identifier of the agent's spool, chosen when the spool was created. Batch sequence
    /// numbers are unique within one spool, so deduplication is keyed by `(agent, spool_id, seq)`:
    /// an agent whose spool was wiped starts a new sequence without being mistaken for a replay.
    pub spool_id: u64,
    pub host: HostFacts,
    pub status: AgentStatus,
    /// The labels set in the agent's configuration (`[labels]`), sorted by key; see
    /// [`check_labels`].
    pub labels: Vec<(String, String)>,
}

/// Labels an agent may carry at most.
pub const MAX_LABELS: usize = 64;

/// Checks an agent's labels: at most [`MAX_LABELS`], keys unique, 1 to 63 characters of
/// letters, digits, `_`, `.` and `-` starting with a letter, values at most 256 characters
/// without control characters.
pub fn check_labels(labels: &[(String, String)]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels; at most {MAX_LABELS} are allowed",
            labels.len()
        ));
    }
    let mut keys = std::collections::HashSet::new();
    for (key, value) in labels {
        let key_ok = (1..=63).contains(&key.len())
            && key.starts_with(|c: char| c.is_ascii_alphabetic())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return Err(format!(
                "label `{key}`: a key is 1 to 63 letters, digits, `_`, `.` or `-`, starting with a \
                 letter"
            ));
        }
        if value.chars().count() > 256 || value.chars().any(char::is_control) {
            return Err(format!(
                "label `{key}`: a value is at most 256 characters, none of them control characters"
            ));
        }
        if !keys.insert(key.as_str()) {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(())
}

/// The aggregator's answer to [`Hello`], with the limits the agent must respect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    pub server_version: String,
    pub max_frame_bytes: u32,
    pub max_batch_events: u32,
    /// Batch streams the agent may have open at once.
    pub max_in_flight: u32,
    /// How often the aggregator expects a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u32,
}

/// A batch of events from the agent's spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Strictly increasing per spool; persisted by the agent.
    pub seq: u64,
    /// Every batch with a lower `seq` has been acknowledged or dropped: the agent will never send
    /// one again, so the aggregator may forget their deduplication entries.
    pub low_water_seq: u64,
    pub created_ns: i64,
    pub events: Vec<Event>,
}

/// How the events of a [`PackedBatch`] are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Codec {
    /// Not at all: the bytes are the list as [`encode_events`] writes it.
    #[default]
    None,
    /// One Zstandard frame of that list.
    Zstd,
}

impl Codec {
    /// The codec as a small integer, for storage (a database column): 0 none, 1 zstd.
    pub fn code(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }

    /// The codec [`Codec::code`] gave `code`, if any.
    pub fn from_code(code: i64) -> Option<Codec> {
        match code {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A [`Batch`] whose events travel compressed: the list [`encode_events`] writes for them,
/// compressed with `codec`. [`PackedBatch::unpack`] turns it into the [`Batch`] it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBatch {
    pub seq: u64,
    pub low_water_seq: u64,
    pub created_ns: i64,
    pub codec: Codec,
    /// The length of the list once decompressed; checked against the receiver's limit before
    /// anything is decompressed.
    pub raw_bytes: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl PackedBatch {
    /// The batch it stands for, refusing a list longer than `max_raw_bytes` (the receiver's
    /// frame limit: what an uncompressed batch may take) before decompressing anything, and data
    /// that does not decompress to exactly `raw_bytes` bytes of a valid list.
    pub fn unpack(&self, max_raw_bytes: u32) -> Result<Batch, WireError> {
        if self.raw_bytes > max_raw_bytes {
            return Err(WireError::FrameTooLarge {
                len: u64::from(self.raw_bytes),
                limit: max_raw_bytes,
            });
        }
        Ok(Batch {
            seq: self.seq,
            low_water_seq: self.low_water_seq,
            created_ns: self.created_ns,
            events: decode_packed_events(self.codec, &self.data, self.raw_bytes as usize)?,
        })
    }
}

/// Compresses event lists with one codec, reusing its working memory from one list to the next.
pub struct Packer {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("codec", &self.codec())
            .finish()
    }
}

/// The Zstandard level lists are compressed at: its fastest standard level, which on log lines
/// already takes several times fewer bytes and costs far less than writing and sending the bytes
/// it saves.
pub const ZSTD_LEVEL: i32 = 1;

impl Packer {
    /// A packer for `codec`.
    pub fn new(codec: Codec) -> Result<Packer, WireError> {
        let zstd = match codec {
            Codec::None => None,
            Codec::Zstd => Some(
                zstd::bulk::Compressor::new(ZSTD_LEVEL)
                    .map_err(|e| WireError::Malformed(format!("cannot start zstd: {e}")))?,
            ),
        };
        Ok(Packer { zstd })
    }

    /// The codec it compresses with.
    pub fn codec(&self) -> Codec {
        if self.zstd.is_some() {
            Codec::Zstd
        } else {
            Codec::None
        }
    }

    /// `raw` compressed, when the codec makes it smaller; `None` when it would not (or the
    /// codec is [`Codec::None`]): the list is then kept as it is.
    pub fn pack(&mut self, raw: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        let Some(zstd) = self.zstd.as_mut() else {
            return Ok(None);
        };
        let packed = zstd
            .compress(raw)
            .map_err(|e| WireError::Malformed(format!("cannot compress: {e}")))?;
        Ok((packed.len() < raw.len()).then_some(packed))
    }
}

thread_local! {
    /// A decompression context per thread, made once: making one costs more than decompressing
    /// a small batch.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The events of the list `data` holds, compressed with `codec`, which must be exactly
/// `raw_bytes` long once decompressed: what a [`PackedBatch`], a spooled batch or a stored block
/// holds. Never allocates more than `raw_bytes` for the list; never panics.
pub fn decode_packed_events(
    codec: Codec,
    data: &[u8],
    raw_bytes: usize,
) -> Result<Vec<Event>, WireError> {
    let unpacked;
    let list = match codec {
        Codec::None => data,
        Codec::Zstd => {
            unpacked = decompress(data, raw_bytes)?;
            unpacked.as_slice()
        }
    };
    if list.len() != raw_bytes {
        return Err(WireError::Malformed(format!(
            "the events take {} bytes, not the {raw_bytes} announced",
            list.len()
        )));
    }
    decode_events(list)
}

/// `data` decompressed into at most `raw_bytes`.
fn decompress(data: &[u8], raw_bytes: usize) -> Result<Vec<u8>, WireError> {
    DECOMPRESSOR
        .with_borrow_mut(|slot| {
            let decompressor = match slot {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress(data, raw_bytes)
        })
        .map_err(|e| WireError::Malformed(format!("cannot decompress the events: {e}")))
}

/// The aggregator has durably stored (or had already stored) batch `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
    /// True when the batch had been stored before and this is a repeated acknowledgement.
    pub duplicate: bool,
}

/// Why a request was refused, in machine-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// The content is invalid and will never be accepted; the agent drops it and counts the drop.
    Invalid,
    /// The aggregator cannot take it now (overloaded, store failing); retry later.
    Unavailable,
    /// The agent speaks a protocol version the aggregator does not.
    VersionMismatch,
    /// The message was not expected in this state.
    Protocol,
}

impl RejectCode {
    /// Whether resending the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, RejectCode::Unavailable)
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// The batch refused, or 0 for a refused Hello.
    pub seq: u64,
    pub code: RejectCode,
    pub reason: String,
}

/// The agent's periodic sign of life, with its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub sent_ns: i64,
    pub status: AgentStatus,
}

/// A frame or message that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u64, limit: u32 },
    #[error("frame is truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("stream ended before a frame")]
    EndOfStream,
    #[error("i/o error while reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The QUIC application error code to close with for this error.
    pub fn close_code(&self) -> u32 {
        match self {
            WireError::FrameTooLarge { .. } => close_code::FRAME_TOO_LARGE,
            _ => close_code::MALFORMED_FRAME,
        }
    }
}

fn codec() -> impl Config {
    config::standard()
}

/// How much more memory than input bytes valid data can take once decoded: a log record of
/// empty strings is 6 bytes on the wire and an [`Event`] in memory, an attribute pair 2 bytes and
/// two `String`s.
const EXPANSION: usize = 64;

/// The fewest bytes an event takes on the wire (a log record of empty strings).
const MIN_EVENT_BYTES: usize = 6;

const _: () = assert!(std::mem::size_of::<Event>() <= EXPANSION * MIN_EVENT_BYTES);
const _: () = assert!(std::mem::size_of::<(String, String)>() <= EXPANSION * 2);

/// Decodes `T` from `bytes` with an allocation limit proportional to the input.
///
/// bincode reserves a string's claimed length before checking that the bytes are there, so
/// without a limit a 15-byte frame claiming a 2^60-byte string aborts the process. Valid data
/// takes at most [`EXPANSION`] times its encoded size in memory, so a limit of that many times
/// the input's size refuses every absurd claim while accepting every valid message. The limit is
/// a type parameter, hence the tiers.
fn decode_limited<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), WireError> {
    use bincode::serde::decode_from_slice as dec;
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    const E: usize = EXPANSION;
    let std = config::standard();
    let result = match bytes.len() {
        n if n <= 64 * KIB => dec(bytes, std.with_limit::<{ 64 * KIB * E }>()),
        n if n <= MIB => dec(bytes, std.with_limit::<{ MIB * E }>()),
        n if n <= 16 * MIB => dec(bytes, std.with_limit::<{ 16 * MIB * E }>()),
        n if n <= 256 * MIB => dec(bytes, std.with_limit::<{ 256 * MIB * E }>()),
        n => {
            return Err(WireError::FrameTooLarge {
                len: n as u64,
                limit: 256 * MIB as u32,
            });
        }
    };
    result.map_err(|e| WireError::Malformed(e.to_string()))
}

/// Encodes a message as one complete frame (length prefix included).
///
/// # Errors
///
/// Fails only if the message is larger than `u32::MAX` bytes.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; LENGTH_PREFIX_BYTES];
    bincode::serde::encode_into_std_write(msg, &mut out, codec())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    finish_frame(out)
}

/// Writes the length prefix in front of a frame whose body follows the reserved prefix bytes.
fn finish_frame(mut out: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let body_len = out.len() - LENGTH_PREFIX_BYTES;
    let len = u32::try_from(body_len).map_err(|_| WireError::FrameTooLarge {
        len: body_len as u64,
        limit: u32::MAX,
    })?;
    out[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Decodes one message from a frame body (the bytes after the length prefix).
///
/// Never panics. Trailing bytes after the message are an error.
pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    let (msg, used) = decode_limited::<Message>(body)?;
    if used != body.len() {
        return Err(WireError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// Decodes one complete frame (length prefix included) from a byte slice.
pub fn decode_frame(frame: &[u8], limit: u32) -> Result<Message, WireError> {
    let Some((prefix, body)) = frame.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Err(WireError::Truncated {
            expected: LENGTH_PREFIX_BYTES,
            got: frame.len(),
        });
    };
    let len = check_len(u32::from_be_bytes(*prefix), limit)?;
    if body.len() < len {
        return Err(WireError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    if body.len() > len {
        return Err(WireError::TrailingBytes(body.len() - len));
    }
    decode(body)
}

fn check_len(len: u32, limit: u32) -> Result<usize, WireError> {
    if len > limit {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            limit,
        });
    }
    usize::try_from(len).map_err(|_| WireError::FrameTooLarge {
        len: u64::from(len),
        limit,
    })
}

/// Encodes a list of events exactly as they appear inside a [`Batch`] frame.
///
/// The agent's spool stores this form, so shipping a batch never re-encodes its events; see
/// [`encode_batch_frame`].
pub fn encode_events(events: &[Event]) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(events, codec()).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Appends the encoding of one event to `out`, exactly as it appears among the events of a
/// [`Batch`] frame, and returns how many bytes it took.
///
/// A list of events is its length followed by its events, so [`events_payload`] turns events
/// encoded one by one into what [`encode_events`] produces for them together: the spool encodes
/// each event once, to learn its size and to pack it.
pub fn encode_event_into(event: &Event, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let before = out.len();
    bincode::serde::encode_into_std_write(event, out, codec())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok(out.len() - before)
}

/// Bytes the length of a one-event list takes in front of the event: the encoding of a list of
/// `n` events is at most `n` bytes longer than its events encoded one by one.
pub const ONE_EVENT_LIST_PREFIX: usize = 1;

/// The list of `count` events whose encodings by [`encode_event_into`] lie back to back in
/// `events`: byte for byte what [`encode_events`] produces for those events.
pub fn events_payload(count: usize, events: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(events.len() + 9);
    bincode::serde::encode_into_std_write(count as u64, &mut out, codec())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    out.extend_from_slice(events);
    Ok(out)
}

/// The bytes [`crate::event::chain_hash`] hashes for one FIM event: its encoding in this codec.
pub(crate) fn encode_fim_for_chain(event: &crate::event::FimEvent) -> Vec<u8> {
    bincode::serde::encode_to_vec(event, codec()).unwrap_or_default()
}

/// Decodes a list produced by [`encode_events`]. Never panics.
pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, WireError> {
    let (events, used) = decode_limited::<Vec<Event>>(bytes)?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - used));
    }
    Ok(events)
}

/// Builds the frame of `Message::Batch` from events already encoded by [`encode_events`].
///
/// The result is byte-for-byte what [`encode`] produces for the same batch.
pub fn encode_batch_frame(
    seq: u64,
    low_water_seq: u64,
    created_ns: i64,
    encoded_events: &[u8],
) -> Result<Vec<u8>, WireError> {
    // serde encodes a newtype variant as its index followed by the content; Batch is index 2.
    const BATCH_VARIANT: u32 = 2;
    frame_around(
        (BATCH_VARIANT, seq, low_water_seq, created_ns),
        encoded_events,
    )
}

/// The frame of a message whose bincode is `header`'s followed by `payload`'s bytes as they are,
/// copied once.
fn frame_around(header: impl Serialize, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out =
        Vec::with_capacity(LENGTH_PREFIX_BYTES + PACKED_BATCH_HEADER_BYTES + payload.len());
    out.resize(LENGTH_PREFIX_BYTES, 0);
    bincode::serde::encode_into_std_write(header, &mut out, codec())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    out.extend_from_slice(payload);
    finish_frame(out)
}

/// Builds the frame of `Message::PackedBatch`, byte-for-byte what [`encode`] produces for it,
/// from the packed events without copying them more than once.
pub fn encode_packed_batch_frame(
    seq: u64,
    low_water_seq: u64,
    created_ns: i64,
    packing: Codec,
    raw_bytes: u32,
    data: &[u8],
) -> Result<Vec<u8>, WireError> {
    // Variant indexes, as serde encodes them.
    const PACKED_BATCH_VARIANT: u32 = 6;
    let codec_variant: u32 = match packing {
        Codec::None => 0,
        Codec::Zstd => 1,
    };
    // The data goes as serde_bytes encodes bytes: its length, then the bytes.
    frame_around(
        (
            PACKED_BATCH_VARIANT,
            seq,
            low_water_seq,
            created_ns,
            codec_variant,
            raw_bytes,
            data.len() as u64,
        ),
        data,
    )
}

/// The most bytes a PackedBatch frame's body adds around its data: the variant, `seq`,
/// `low_water_seq` and `created_ns` (varints of at most 9 bytes each), the codec, `raw_bytes`
/// (at most 5) and the data's length (at most 9).
pub const PACKED_BATCH_HEADER_BYTES: usize = 1 + 9 + 9 + 9 + 1 + 5 + 9;

/// Reads one frame from a stream, refusing a length above `limit` before allocating.
///
/// Returns [`WireError::EndOfStream`] if the stream ends cleanly before the first byte.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Message, WireError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut got = 0;
    while got < LENGTH_PREFIX_BYTES {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                WireError::EndOfStream
            } else {
                WireError::Truncated {
                    expected: LENGTH_PREFIX_BYTES,
                    got,
                }
            });
        }
        got += n;
    }
    let len = check_len(u32::from_be_bytes(prefix), limit)?;
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = r.read(&mut body[filled..]).await?;
        if n == 0 {
            return Err(WireError::Truncated {
                expected: len,
                got: filled,
            });
        }
        filled += n;
    }
    decode(&body)
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), WireError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::*;

    fn arb_string() -> impl Strategy<Value = String> {
        ".{0,24}"
    }

    fn arb_attrs() -> impl Strategy<Value = Attributes> {
        prop::collection::vec((arb_string(), arb_string()), 0..4)
    }

    fn arb_drops() -> impl Strategy<Value = DropCounters> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(a, b, c, d, e, f)| DropCounters {
                spool_full_evicted: a,
                spool_full_rejected: b,
                rejected_by_aggregator: c,
                oversized: d,
                spool_write_failed: e,
                disk_full: f,
            })
    }

    fn arb_status() -> impl Strategy<Value = AgentStatus> {
        (
            (
                any::<i64>(),
                arb_string(),
                any::<i64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            arb_drops(),
            prop::collection::vec(
                (arb_string(), arb_string(), any::<i64>()).prop_map(|(c, r, s)| CollectorError {
                    collector: c,
                    reason: r,
                    since_ns: s,
                }),
                0..3,
            ),
        )
            .prop_map(|((t, v, st, sb, se), (bb, cap, bs, ba, ea), drops, errs)| {
                AgentStatus {
                    time_ns: t,
                    agent_version: v,
                    started_ns: st,
                    spool_bytes: sb,
                    spool_events: se,
                    backlog_batches: bb,
                    spool_cap_bytes: cap,
                    batches_sent: bs,
                    batches_acked: ba,
                    events_acked: ea,
                    drops,
                    collector_errors: errs,
                    logs: crate::event::LogStatus {
                        files_open: bb % 7,
                        lag_bytes: cap,
                        lost_bytes: bs,
                        lagging: vec![("/var/log/syslog".to_owned(), ea)],
                    },
                    cert_not_after_ns: t,
                    cert_renewal_error: (bb % 2 == 0).then(|| format!("refused {sb}")),
                }
            })
    }

    fn arb_file_state() -> impl Strategy<Value = FileState> {
        let kind = prop::sample::select(vec![
            FileKind::File,
            FileKind::Directory,
            FileKind::Symlink,
            FileKind::Other,
        ]);
        (
            (kind, any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>()),
            (
                any::<i64>(),
                any::<i64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (
                prop::option::of(arb_string()),
                prop::option::of("[0-9a-f]{64}"),
                prop::option::of("sha256:[0-9a-f]{64}"),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (kind, size, mode, uid, gid),
                    (mtime_ns, ctime_ns, inode, device, nlink),
                    (link_target, xattrs, hash, too_large_to_hash),
                )| FileState {
                    kind,
                    size,
                    mode,
                    uid,
                    gid,
                    mtime_ns,
                    ctime_ns,
                    inode,
                    device,
                    nlink,
                    link_target,
                    xattrs,
                    hash,
                    too_large_to_hash,
                },
            )
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let severity = prop::sample::select(Severity::ALL.to_vec());
        let change = prop::sample::select(vec![
            FimChange::Created,
            FimChange::Modified,
            FimChange::MetadataChanged,
            FimChange::Deleted,
            FimChange::Moved,
            FimChange::TypeChanged,
        ]);
        let detection = prop::sample::select(vec![
            FimDetection::Realtime,
            FimDetection::Scheduled,
            FimDetection::Rescan,
        ]);
        prop_oneof![
            (
                arb_string(),
                arb_string(),
                arb_attrs(),
                any::<i64>(),
                any::<f64>(),
                any::<bool>()
            )
                .prop_map(|(name, unit, attributes, time_ns, value, counter)| {
                    Event::Metric(MetricPoint {
                        name,
                        unit,
                        attributes,
                        time_ns,
                        value,
                        kind: if counter {
                            MetricKind::Counter
                        } else {
                            MetricKind::Gauge
                        },
                    })
                }),
            (
                any::<i64>(),
                arb_string(),
                prop::option::of(severity),
                arb_string(),
                arb_attrs()
            )
                .prop_map(|(time_ns, source, severity, body, attributes)| Event::Log(
                    LogRecord {
                        time_ns,
                        source,
                        severity,
                        body,
                        attributes,
                    }
                )),
            (
                (any::<i64>(), arb_string(), change),
                (
                    prop::collection::vec(arb_string(), 0..3),
                    prop::option::of(arb_string()),
                    prop::option::of(arb_file_state()),
                    prop::option::of(arb_file_state()),
                ),
                (detection, any::<u64>(), "[0-9a-f]{64}"),
            )
                .prop_map(
                    |(
                        (time_ns, path, change),
                        (changed, moved_from, before, after),
                        (detected_by, seq, chain),
                    )| Event::Fim(FimEvent {
                        time_ns,
                        path,
                        change,
                        changed,
                        moved_from,
                        before: before.map(Box::new),
                        after: after.map(Box::new),
                        detected_by,
                        seq,
                        chain,
                    })
                ),
            arb_status().prop_map(Event::Status),
        ]
    }

    fn arb_host() -> impl Strategy<Value = HostFacts> {
        (
            arb_string(),
            arb_string(),
            arb_string(),
            arb_string(),
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
        )
            .prop_map(
                |(hostname, os, kernel, arch, cpus, memory_bytes, boot_time_ns)| HostFacts {
                    hostname,
                    os,
                    kernel,
                    arch,
                    cpus,
                    memory_bytes,
                    boot_time_ns,
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let code = prop::sample::select(vec![
            RejectCode::Invalid,
            RejectCode::Unavailable,
            RejectCode::VersionMismatch,
            RejectCode::Protocol,
        ]);
        prop_oneof![
            (
                any::<u16>(),
                arb_string(),
                any::<u64>(),
                arb_host(),
                arb_status(),
                prop::collection::vec((arb_string(), arb_string()), 0..3)
            )
                .prop_map(
                    |(protocol_version, agent_version, spool_id, host, status, labels)| {
                        Message::Hello(Hello {
                            protocol_version,
                            agent_version,
                            spool_id,
                            host,
                            status,
                            labels,
                        })
                    }
                ),
            (
                any::<u16>(),
                arb_string(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(v, s, f, e, w, h)| Message::Welcome(Welcome {
                    protocol_version: v,
                    server_version: s,
                    max_frame_bytes: f,
                    max_batch_events: e,
                    max_in_flight: w,
                    heartbeat_interval_ms: h,
                })),
            (
                any::<u64>(),
                any::<u64>(),
                any::<i64>(),
                prop::collection::vec(arb_event(), 0..8)
            )
                .prop_map(|(seq, low_water_seq, created_ns, events)| Message::Batch(
                    Batch {
                        seq,
                        low_water_seq,
                        created_ns,
                        events,
                    }
                )),
            (any::<u64>(), any::<bool>())
                .prop_map(|(seq, duplicate)| Message::Ack(Ack { seq, duplicate })),
            (any::<u64>(), code, arb_string())
                .prop_map(|(seq, code, reason)| Message::Reject(Reject { seq, code, reason })),
            (any::<i64>(), arb_status())
                .prop_map(|(sent_ns, status)| Message::Heartbeat(Heartbeat { sent_ns, status })),
            (
                (any::<u64>(), any::<u64>(), any::<i64>()),
                prop::sample::select(vec![Codec::None, Codec::Zstd]),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(
                    |((seq, low_water_seq, created_ns), codec, raw_bytes, data)| {
                        Message::PackedBatch(PackedBatch {
                            seq,
                            low_water_seq,
                            created_ns,
                            codec,
                            raw_bytes,
                            data,
                        })
                    }
                ),
        ]
    }

    /// NaN is never equal to itself, so compare encodings rather than values where floats occur.
    fn same(a: &Message, b: &Message) -> bool {
        encode(a).ok() == encode(b).ok()
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            let frame = encode(&msg).expect("encodes");
            let back = decode_frame(&frame, u32::MAX).expect("decodes");
            prop_assert!(same(&msg, &back), "{msg:?} != {back:?}");
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decode_frame(&bytes, 1024);
        }

        #[test]
        fn truncated_frames_are_errors(msg in arb_message(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&msg).expect("encodes");
            let at = cut.index(frame.len());
            prop_assert!(decode_frame(&frame[..at], u32::MAX).is_err());
        }
    }

    proptest! {
        #[test]
        fn raw_batch_frames_match_the_codec(
            seq in any::<u64>(),
            low in any::<u64>(),
            created in any::<i64>(),
            events in prop::collection::vec(arb_event(), 0..8),
        ) {
            let blob = encode_events(&events).expect("encodes");
            let raw = encode_batch_frame(seq, low, created, &blob).expect("encodes");
            let msg = Message::Batch(Batch { seq, low_water_seq: low, created_ns: created, events });
            prop_assert_eq!(raw, encode(&msg).expect("encodes"));
            let back = decode_events(&blob).expect("decodes");
            prop_assert_eq!(encode_events(&back).expect("encodes"), blob);
        }
    }

    proptest! {
        #[test]
        fn packed_batches_frame_like_the_codec_and_unpack_to_their_batch(
            seq in any::<u64>(),
            low in any::<u64>(),
            created in any::<i64>(),
            events in prop::collection::vec(arb_event(), 0..8),
            copies in 1usize..40,
            zstd in any::<bool>(),
        ) {
            // Repeated, so that compression has something to find.
            let events: Vec<Event> = events.iter().cycle().take(events.len() * copies).cloned().collect();
            let raw = encode_events(&events).expect("encodes");
            let mut packer = Packer::new(if zstd { Codec::Zstd } else { Codec::None }).expect("packer");
            let (codec, data) = match packer.pack(&raw).expect("packs") {
                Some(packed) => {
                    prop_assert!(packed.len() < raw.len());
                    (Codec::Zstd, packed)
                }
                None => (Codec::None, raw.clone()),
            };
            prop_assert!(zstd || codec == Codec::None);
            let raw_bytes = u32::try_from(raw.len()).expect("small");
            let frame = encode_packed_batch_frame(seq, low, created, codec, raw_bytes, &data).expect("encodes");
            let packed = PackedBatch { seq, low_water_seq: low, created_ns: created, codec, raw_bytes, data };
            prop_assert_eq!(&frame, &encode(&Message::PackedBatch(packed.clone())).expect("encodes"));
            prop_assert!(frame.len() <= LENGTH_PREFIX_BYTES + PACKED_BATCH_HEADER_BYTES + packed.data.len());
            let Message::PackedBatch(back) = decode_frame(&frame, u32::MAX).expect("decodes") else {
                return Err(TestCaseError::fail("not a PackedBatch"));
            };
            let batch = back.unpack(raw_bytes).expect("unpacks");
            let expected = Message::Batch(Batch { seq, low_water_seq: low, created_ns: created, events });
            prop_assert!(same(&Message::Batch(batch), &expected));
        }
    }

    fn packed(events: &[Event]) -> PackedBatch {
        let raw = encode_events(events).unwrap();
        let data = Packer::new(Codec::Zstd)
            .unwrap()
            .pack(&raw)
            .unwrap()
            .unwrap();
        PackedBatch {
            seq: 1,
            low_water_seq: 1,
            created_ns: 0,
            codec: Codec::Zstd,
            raw_bytes: raw.len() as u32,
            data,
        }
    }

    fn log_lines(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::Log(LogRecord {
                    time_ns: i as i64,
                    source: "/var/log/app.log".into(),
                    severity: None,
                    body: format!("GET /api/v1/items/{i} status=200"),
                    attributes: vec![],
                })
            })
            .collect()
    }

    #[test]
    fn a_packed_batch_over_the_limit_or_lying_about_its_size_is_refused() {
        let ok = packed(&log_lines(100));
        let raw_bytes = ok.raw_bytes;
        assert!(ok.data.len() * 4 < raw_bytes as usize, "compresses");
        // Announcing more than the receiver takes is refused before decompressing.
        let err = ok.clone().unpack(raw_bytes - 1).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
        // Data that decompresses to more than announced never takes more than announced.
        let mut short = ok.clone();
        short.raw_bytes -= 1;
        assert!(short.unpack(raw_bytes).is_err());
        // Or to less.
        let mut long = ok.clone();
        long.raw_bytes += 1;
        assert!(long.unpack(raw_bytes + 1).is_err());
        // Damaged data.
        let mut damaged = ok.clone();
        let mid = damaged.data.len() / 2;
        damaged.data[mid] ^= 0xff;
        damaged.data.truncate(damaged.data.len() - 3);
        assert!(damaged.unpack(raw_bytes).is_err());
        // Uncompressed garbage.
        let garbage = PackedBatch {
            codec: Codec::None,
            raw_bytes: 3,
            data: vec![0xfd, 0xff, 0xff],
            ..ok.clone()
        };
        assert!(garbage.unpack(raw_bytes).is_err());
        assert_eq!(ok.unpack(raw_bytes).unwrap().events, log_lines(100));
    }

    #[test]
    fn codecs_keep_their_codes_and_an_unknown_code_is_none() {
        for codec in [Codec::None, Codec::Zstd] {
            assert_eq!(Codec::from_code(i64::from(codec.code())), Some(codec));
        }
        assert_eq!((Codec::None.code(), Codec::Zstd.code()), (0, 1));
        assert_eq!(Codec::from_code(2), None);
        assert_eq!(Codec::from_code(-1), None);
    }

    #[test]
    fn a_list_that_does_not_shrink_is_kept_as_it_is() {
        let mut packer = Packer::new(Codec::Zstd).unwrap();
        assert_eq!(packer.pack(&[7]).unwrap(), None);
        assert_eq!(
            Packer::new(Codec::None).unwrap().pack(&[0; 4096]).unwrap(),
            None
        );
        assert!(packer.pack(&[0; 4096]).unwrap().is_some());
    }

    proptest! {
        #[test]
        fn events_encoded_one_by_one_join_into_the_list(events in prop::collection::vec(arb_event(), 0..8)) {
            let mut joined = Vec::new();
            for event in &events {
                let n = encode_event_into(event, &mut joined).expect("encodes");
                let alone = encode_events(std::slice::from_ref(event)).expect("encodes");
                prop_assert_eq!(n + ONE_EVENT_LIST_PREFIX, alone.len());
            }
            let payload = events_payload(events.len(), &joined).expect("encodes");
            prop_assert_eq!(payload, encode_events(&events).expect("encodes"));
        }
    }

    /// The list's length grows from one byte to three, then five, at these counts; each list is
    /// still no longer than its events encoded as one-event lists.
    #[test]
    fn joined_lists_match_the_codec_across_length_widths() {
        let event = Event::Log(LogRecord {
            time_ns: 1,
            source: "a".to_owned(),
            severity: None,
            body: "b".to_owned(),
            attributes: Attributes::default(),
        });
        let mut one = Vec::new();
        let size = encode_event_into(&event, &mut one).expect("encodes");
        for count in [250, 251, 65_535, 65_536] {
            let events = vec![event.clone(); count];
            let payload = events_payload(count, &one.repeat(count)).expect("encodes");
            assert_eq!(
                payload,
                encode_events(&events).expect("encodes"),
                "{count} events"
            );
            assert!(
                payload.len() <= count * (size + ONE_EVENT_LIST_PREFIX),
                "{count} events"
            );
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        let mut frame = u32::MAX.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 16]);
        let err = decode_frame(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
        assert_eq!(err.close_code(), close_code::FRAME_TOO_LARGE);
    }

    #[tokio::test]
    async fn stream_reader_refuses_huge_prefix_and_reads_valid_frames() {
        let ack = Message::Ack(Ack {
            seq: 7,
            duplicate: false,
        });
        let mut bytes = encode(&ack).unwrap();
        bytes.extend_from_slice(&(DEFAULT_MAX_FRAME_BYTES + 1).to_be_bytes());
        let mut r = &bytes[..];
        assert_eq!(
            read_message(&mut r, DEFAULT_MAX_FRAME_BYTES).await.unwrap(),
            ack
        );
        let err = read_message(&mut r, DEFAULT_MAX_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_message(&mut empty, 1024).await.unwrap_err(),
            WireError::EndOfStream
        ));
    }

    #[test]
    fn a_huge_string_length_inside_a_small_frame_does_not_allocate() {
        // Hello (0), protocol version 1, then an agent_version claiming 2^60 bytes. Before the
        // allocation limit this aborted the process.
        let body = [0x00, 0x01, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(matches!(decode(&body), Err(WireError::Malformed(_))));
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        assert!(decode_frame(&frame, DEFAULT_MAX_FRAME_BYTES).is_err());
        // The same inside an event list.
        let events = [0x01, 0x01, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode_events(&events).is_err());
    }

    #[test]
    fn a_large_valid_batch_decodes_at_every_limit_tier() {
        for size in [10usize, 70 * 1024, 2 * 1024 * 1024] {
            let body = "x".repeat(size);
            let msg = Message::Batch(Batch {
                seq: 1,
                low_water_seq: 1,
                created_ns: 0,
                events: vec![Event::Log(LogRecord {
                    time_ns: 1,
                    source: "s".into(),
                    severity: None,
                    body,
                    attributes: vec![],
                })],
            });
            let frame = encode(&msg).unwrap();
            assert_eq!(decode_frame(&frame, u32::MAX).unwrap(), msg);
        }
    }

    #[test]
    fn many_small_events_decode_though_they_take_more_memory_than_bytes() {
        // Decoded, a short record takes more memory than its encoding (the event itself, the
        // attribute pairs): the allocation limit must allow for it, at every tier.
        for n in [10usize, 600, 10_000, 100_000] {
            let events: Vec<Event> = (0..n)
                .map(|i| {
                    Event::Log(LogRecord {
                        time_ns: 1,
                        source: String::new(),
                        severity: None,
                        body: String::new(),
                        attributes: vec![(String::new(), String::new()); i % 3],
                    })
                })
                .collect();
            let msg = Message::Batch(Batch {
                seq: 1,
                low_water_seq: 1,
                created_ns: 0,
                events: events.clone(),
            });
            let frame = encode(&msg).unwrap();
            assert_eq!(decode_frame(&frame, u32::MAX).unwrap(), msg, "{n} events");
            assert_eq!(
                decode_events(&encode_events(&events).unwrap()).unwrap(),
                events
            );
        }
    }

    #[test]
    fn a_huge_vec_length_inside_a_small_frame_does_not_allocate() {
        // Batch variant (2), seq 1, low water 0, created 0, then a varint claiming 2^60 events.
        let mut body = vec![2u8, 1, 0, 0, 0xfd];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode(&body).is_err());
    }
}
