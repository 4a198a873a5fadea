//! The versioned handshake, then the `Hello` that registers a worker.
//!
//! 1. Both sides send an 8-byte preamble, `CDRW` then the lowest and the highest protocol
//!    version they speak (big-endian `u16`s), before any MessagePack: whatever later versions
//!    change, two versions of cadre can always tell each other which versions they speak, and
//!    a peer that is not cadre (a port scanner, an HTTP client, garbage) is refused once its
//!    first 8 bytes are in.
//! 2. Each side picks the highest version both speak. When there is none, both refuse, each
//!    saying both ranges (`agent speaks 2, scheduler 1`): the scheduler sends its preamble
//!    before it refuses, so the agent can say it too.
//! 3. The agent sends its [`Hello`] (with a smaller frame limit than later messages); the
//!    scheduler answers [`HelloAnswer`].
//!
//! Everything has one deadline (`HandshakeConfig::timeout`): a peer that stalls is dropped with
//! [`WireError::HandshakeTimeout`]. A refusal is counted here
//! (`cadre_wire_handshake_refusals_total{reason,side}`); the caller, which knows the peer's
//! address, logs it.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::error::{Side, WireError};
use crate::frame::{FrameReader, FrameWriter, DEFAULT_MAX_FRAME};
use crate::message::{Hello, HelloAnswer, Welcome};
use crate::metrics as m;

/// The first bytes every cadre cluster connection starts with, from both sides.
pub const MAGIC: [u8; 4] = *b"CDRW";

/// Bytes of the preamble: the magic, then two big-endian `u16`s.
pub const PREAMBLE: usize = 8;

/// The protocol versions this build speaks.
pub const PROTOCOL: VersionRange = VersionRange { min: 1, max: 1 };

/// A range of protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// The lowest version spoken.
    pub min: u16,
    /// The highest version spoken.
    pub max: u16,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

impl VersionRange {
    /// The preamble announcing this range.
    pub fn preamble(self) -> [u8; PREAMBLE] {
        let mut out = [0u8; PREAMBLE];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.min.to_be_bytes());
        out[6..].copy_from_slice(&self.max.to_be_bytes());
        out
    }

    /// The range a peer's preamble announces; `NotCadre` when it does not start with the magic.
    pub fn from_preamble(bytes: [u8; PREAMBLE]) -> Result<VersionRange, WireError> {
        let [a, b, c, d, min_hi, min_lo, max_hi, max_lo] = bytes;
        if [a, b, c, d] != MAGIC {
            return Err(WireError::NotCadre {
                found: [a, b, c, d],
            });
        }
        let range = VersionRange {
            min: u16::from_be_bytes([min_hi, min_lo]),
            max: u16::from_be_bytes([max_hi, max_lo]),
        };
        if range.min > range.max || range.min == 0 {
            return Err(WireError::Malformed {
                what: "preamble",
                reason: format!("version range {}..{} is empty", range.min, range.max),
            });
        }
        Ok(range)
    }

    /// The highest version both ranges hold, if any.
    pub fn negotiate(self, theirs: VersionRange) -> Option<u16> {
        let high = self.max.min(theirs.max);
        (high >= self.min.max(theirs.min)).then_some(high)
    }
}

/// How a handshake runs.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeConfig {
    /// The versions this side speaks.
    pub versions: VersionRange,
    /// The whole handshake's deadline, from its start.
    pub timeout: Duration,
    /// The largest `Hello` taken (it lists the agent's running tasks).
    pub max_hello: u32,
    /// The largest frame after the handshake.
    pub max_frame: u32,
}

impl Default for HandshakeConfig {
    fn default() -> HandshakeConfig {
        HandshakeConfig {
            versions: PROTOCOL,
            timeout: Duration::from_secs(10),
            max_hello: 1 << 20,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// A connection past its handshake: framed both ways, at the version agreed.
#[derive(Debug)]
pub struct Connection<R, W> {
    /// Frames in.
    pub reader: FrameReader<R>,
    /// Frames out.
    pub writer: FrameWriter<W>,
    /// The protocol version agreed.
    pub version: u16,
}

/// Runs `step` before `deadline`, naming what was awaited when it does not finish.
async fn by<T>(
    deadline: Instant,
    config: &HandshakeConfig,
    waiting_for: &'static str,
    step: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(result) => result,
        Err(_) => Err(WireError::HandshakeTimeout {
            waiting_for,
            timeout_ms: config.timeout.as_millis() as u64,
        }),
    }
}

async fn read_preamble<R: AsyncRead + Unpin>(reader: &mut R) -> Result<VersionRange, WireError> {
    let mut bytes = [0u8; PREAMBLE];
    reader.read_exact(&mut bytes).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io {
                op: "reading the preamble",
                source: e,
            }
        }
    })?;
    VersionRange::from_preamble(bytes)
}

async fn write_preamble<W: AsyncWrite + Unpin>(
    writer: &mut W,
    versions: VersionRange,
) -> Result<(), WireError> {
    writer
        .write_all(&versions.preamble())
        .await
        .map_err(WireError::io("writing the preamble"))?;
    writer
        .flush()
        .await
        .map_err(WireError::io("writing the preamble"))
}

fn counted<T>(side: Side, result: Result<T, WireError>) -> Result<T, WireError> {
    if let Err(error) = &result {
        metrics::counter!(m::HANDSHAKE_REFUSALS, "reason" => error.kind(), "side" => side.as_str())
            .increment(1);
    }
    result
}

/// The agent's side: offers its versions, sends `hello`, and returns the connection and the
/// scheduler's `Welcome`, or why not ([`WireError::Refused`] carries the scheduler's reason).
pub async fn connect<R, W>(
    mut reader: R,
    mut writer: W,
    config: &HandshakeConfig,
    hello: &Hello,
) -> Result<(Connection<R, W>, Welcome), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = Instant::now() + config.timeout;
    let result = async {
        by(
            deadline,
            config,
            "preamble",
            write_preamble(&mut writer, config.versions),
        )
        .await?;
        let theirs = by(deadline, config, "preamble", read_preamble(&mut reader)).await?;
        let version = config
            .versions
            .negotiate(theirs)
            .ok_or(WireError::VersionMismatch {
                agent: config.versions,
                scheduler: theirs,
            })?;
        let mut writer = FrameWriter::new(writer, config.max_hello);
        by(deadline, config, "hello", writer.send(hello)).await?;
        let mut reader = FrameReader::new(reader, config.max_frame);
        let answer: HelloAnswer = by(deadline, config, "welcome", reader.recv()).await?;
        let welcome = match answer {
            HelloAnswer::Welcome(welcome) => welcome,
            HelloAnswer::Refused(refusal) => return Err(WireError::Refused(refusal)),
        };
        let writer = FrameWriter::new(writer.into_inner(), config.max_frame);
        Ok((
            Connection {
                reader,
                writer,
                version,
            },
            welcome,
        ))
    }
    .await;
    counted(Side::Agent, result)
}

/// The scheduler's side: checks the agent's preamble and versions, and returns the connection
/// and the agent's `Hello`, which the caller checks and answers with a [`HelloAnswer`].
pub async fn accept<R, W>(
    mut reader: R,
    mut writer: W,
    config: &HandshakeConfig,
) -> Result<(Connection<R, W>, Hello), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = Instant::now() + config.timeout;
    let result = async {
        let theirs = by(deadline, config, "preamble", read_preamble(&mut reader)).await?;
        by(
            deadline,
            config,
            "preamble",
            write_preamble(&mut writer, config.versions),
        )
        .await?;
        let version = config
            .versions
            .negotiate(theirs)
            .ok_or(WireError::VersionMismatch {
                agent: theirs,
                scheduler: config.versions,
            })?;
        let mut reader = FrameReader::new(reader, config.max_hello);
        let hello: Hello = by(deadline, config, "hello", reader.recv()).await?;
        reader.set_max(config.max_frame);
        Ok((
            Connection {
                reader,
                writer: FrameWriter::new(writer, config.max_frame),
                version,
            },
            hello,
        ))
    }
    .await;
    counted(Side::Scheduler, result)
}
