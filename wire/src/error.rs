//! The crate's error type: everything reading, writing or shaking hands on a cluster
//! connection can fail at. A [`WireError`] closes the connection it happened on, never the
//! process; what a peer is told is a [`crate::Refusal`], which is data, not this type.

use std::io;

use crate::handshake::VersionRange;

/// Which end of a connection this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The scheduler, which accepts connections.
    Scheduler,
    /// The agent, which connects.
    Agent,
}

impl Side {
    /// The side as log lines and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Scheduler => "scheduler",
            Side::Agent => "agent",
        }
    }
}

/// Everything `cadre-wire` can fail at.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed underneath (reset, refused, broken pipe).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("the peer closed the connection {read} bytes into a frame of {expected}")]
    Truncated {
        /// Bytes of the frame read.
        read: usize,
        /// Bytes the frame announced (header included).
        expected: usize,
    },
    /// A frame announced more bytes than the limit: refused before anything was allocated.
    #[error("a frame of {len} bytes is over the limit of {max}")]
    Oversized {
        /// The length it announced.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A frame of length zero (no message is empty).
    #[error("an empty frame")]
    Empty,
    /// A frame's payload is not a message of the expected type.
    #[error("a malformed {what}: {reason}")]
    Malformed {
        /// What was expected.
        what: &'static str,
        /// Why it did not decode.
        reason: String,
    },
    /// A message could not be encoded (it does not fit a frame, or a value has no encoding).
    #[error("cannot encode a {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The first bytes on the connection are not cadre's preamble: not a cadre peer.
    #[error("not a cadre peer: its first bytes are {found:02x?}")]
    NotCadre {
        /// The bytes found where the magic should be.
        found: [u8; 4],
    },
    /// The two sides speak no protocol version in common.
    #[error("{agent_side} speaks {agent}, {scheduler_side} {scheduler}", agent_side = Side::Agent.as_str(), scheduler_side = Side::Scheduler.as_str())]
    VersionMismatch {
        /// The versions the agent speaks.
        agent: VersionRange,
        /// The versions the scheduler speaks.
        scheduler: VersionRange,
    },
    /// The peer did not finish its part of the handshake in time.
    #[error("the handshake stalled: no {waiting_for} within {timeout_ms} ms")]
    HandshakeTimeout {
        /// What was awaited.
        waiting_for: &'static str,
        /// The limit.
        timeout_ms: u64,
    },
    /// The scheduler refused the agent's `Hello` (or the agent the scheduler's answer).
    #[error("refused: {0}")]
    Refused(crate::Refusal),
}

impl WireError {
    /// A short name for the error, for the `kind` label of counters.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::Io { .. } => "io",
            WireError::Closed => "closed",
            WireError::Truncated { .. } => "truncated",
            WireError::Oversized { .. } => "oversized",
            WireError::Empty => "empty",
            WireError::Malformed { .. } => "malformed",
            WireError::Encode { .. } => "encode",
            WireError::NotCadre { .. } => "not_cadre",
            WireError::VersionMismatch { .. } => "version",
            WireError::HandshakeTimeout { .. } => "timeout",
            WireError::Refused(_) => "refused",
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> WireError {
        move |source| WireError::Io { op, source }
    }
}
