//! Framing: each frame is a 4-byte big-endian length, then that many bytes of MessagePack.
//!
//! The length is checked against the connection's limit as soon as its 4 bytes are in, before
//! anything is allocated for the payload, so a peer announcing 2^31 bytes costs 4 bytes of
//! memory. [`FrameDecoder`] is sans-IO (bytes in, frames out), so the fuzz test drives it with
//! arbitrary chunkings; [`FrameReader`] and [`FrameWriter`] put it on a tokio stream and count
//! frames and bytes by direction and message type.
//!
//! Messages are encoded with field names (MessagePack maps), unlike the journal's by-position
//! arrays: a journal is only read by the same or newer code, but on the wire an older agent
//! reads what a newer scheduler writes, and rmp-serde refuses an array with more elements than
//! the struct it fills. With names, a field added with a default is ignored by an older reader
//! and filled in by a newer one; anything more is a new protocol version.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::WireError;
use crate::metrics as m;

/// Bytes of a frame's length prefix.
pub const HEADER: usize = 4;

/// The default limit of one frame's payload: 16 MiB (an `Assign` holds a whole job spec, whose
/// API body limit is smaller; a log chunk is at most 1 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;

/// How many bytes a reader asks its stream for at a time.
const READ_CHUNK: usize = 16 << 10;

/// A message that crosses the wire: it has a name for errors and a type for metrics.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// What it is, for errors (`hello`, `message to the scheduler`).
    const WHAT: &'static str;
    /// Its type, for the `type` label of the frame counters.
    fn kind(&self) -> &'static str;
}

/// Encodes `msg` as one frame (length prefix included), refusing one whose payload is over
/// `max` bytes.
pub fn encode<M: WireMessage>(msg: &M, max: u32) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; HEADER];
    rmp_serde::encode::write_named(&mut out, msg).map_err(|e| WireError::Encode {
        what: M::WHAT,
        reason: e.to_string(),
    })?;
    let len = out.len() - HEADER;
    if len > max as usize {
        return Err(WireError::Encode {
            what: M::WHAT,
            reason: format!("{len} bytes is over the frame limit of {max}"),
        });
    }
    out[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload as an `M`.
pub fn decode<M: WireMessage>(payload: &[u8]) -> Result<M, WireError> {
    rmp_serde::from_slice(payload).map_err(|e| WireError::Malformed {
        what: M::WHAT,
        reason: e.to_string(),
    })
}

/// Cuts a byte stream into frames (sans-IO: [`push`](FrameDecoder::push) what arrived, then
/// take [`next_frame`](FrameDecoder::next_frame) until it says `None`).
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames whose payload is over `max` bytes.
    pub fn new(max: u32) -> FrameDecoder {
        FrameDecoder {
            max,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The limit of a frame's payload.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Bytes pushed and not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The payload of the next whole frame, `None` when more bytes are needed. After an error
    /// the stream is out of step: the connection must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let avail = &self.buf[self.start..];
        let Some(header) = avail.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        if len == 0 {
            return Err(WireError::Empty);
        }
        if len > self.max {
            return Err(WireError::Oversized {
                len: u64::from(len),
                max: self.max,
            });
        }
        let len = len as usize;
        let Some(payload) = avail.get(HEADER..HEADER + len) else {
            return Ok(None);
        };
        let frame = payload.to_vec();
        self.start += HEADER + len;
        // Keep the buffer from growing with a stream that never drains it to empty.
        if self.start >= READ_CHUNK && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

/// Reads frames of one type from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    stream: R,
    decoder: FrameDecoder,
    chunk: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames whose payload is at most `max` bytes.
    pub fn new(stream: R, max: u32) -> FrameReader<R> {
        FrameReader {
            stream,
            decoder: FrameDecoder::new(max),
            chunk: vec![0u8; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// The next frame's payload. `Closed` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Vec<u8>, WireError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let n = match self.stream.read(&mut self.chunk).await {
                Ok(n) => n,
                // TLS reports a peer that closed its socket without a close_notify (killed, or
                // dropped without one) as an unexpected end: the same end as a plain close.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => {
                    return Err(WireError::Io {
                        op: "reading a frame",
                        source: e,
                    })
                }
            };
            if n == 0 {
                let read = self.decoder.buffered();
                if read == 0 {
                    return Err(WireError::Closed);
                }
                let expected = match self.decoder.buf[self.decoder.start..].first_chunk::<HEADER>()
                {
                    Some(h) => HEADER + u32::from_be_bytes(*h) as usize,
                    None => HEADER,
                };
                return Err(WireError::Truncated { read, expected });
            }
            if let Some(bytes) = self.chunk.get(..n) {
                self.decoder.push(bytes);
            }
        }
    }

    /// The next message, counted by type (`cadre_wire_frames_total`, `cadre_wire_bytes_total`).
    pub async fn recv<M: WireMessage>(&mut self) -> Result<M, WireError> {
        let frame = self.read_frame().await?;
        let msg: M = decode(&frame)?;
        m::frame("in", msg.kind(), HEADER + frame.len());
        Ok(msg)
    }

    /// Changes the limit of the frames that follow.
    pub fn set_max(&mut self, max: u32) {
        self.decoder.max = max;
    }

    /// Bytes read from the stream and not yet taken as frames (the start of the next one).
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// The stream back.
    pub fn into_inner(self) -> R {
        self.stream
    }
}

/// Writes frames to a stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    stream: W,
    max: u32,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer of frames whose payload is at most `max` bytes.
    pub fn new(stream: W, max: u32) -> FrameWriter<W> {
        FrameWriter { stream, max }
    }

    /// Encodes and writes one message and flushes it; returns the bytes written.
    pub async fn send<M: WireMessage>(&mut self, msg: &M) -> Result<usize, WireError> {
        let frame = encode(msg, self.max)?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(WireError::io("writing a frame"))?;
        self.stream
            .flush()
            .await
            .map_err(WireError::io("flushing a frame"))?;
        m::frame("out", msg.kind(), frame.len());
        Ok(frame.len())
    }

    /// Encodes `msgs` into one buffer and writes it with one flush (a writer that drains a
    /// queue sends what piled up in one system call); returns the bytes written. A message that
    /// cannot be encoded is an error before anything is written.
    pub async fn send_all<M: WireMessage>(&mut self, msgs: &[M]) -> Result<usize, WireError> {
        let mut out = Vec::new();
        let mut kinds = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let frame = encode(msg, self.max)?;
            kinds.push((msg.kind(), frame.len()));
            out.extend_from_slice(&frame);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(WireError::io("writing frames"))?;
        self.stream
            .flush()
            .await
            .map_err(WireError::io("flushing frames"))?;
        for (kind, len) in kinds {
            m::frame("out", kind, len);
        }
        Ok(out.len())
    }

    /// The stream back.
    pub fn into_inner(self) -> W {
        self.stream
    }
}
