//! cadre's cluster wire: what a scheduler and its agents say to each other, how it is framed,
//! and the versioned handshake that starts every connection.
//!
//! - [`message`]: the protocol, only data: [`Hello`] and its answer, [`ToScheduler`] and
//!   [`ToWorker`], and [`Refusal`], the serializable refusal (apart from the actors' `Error`).
//! - [`frame`]: a 4-byte length then MessagePack, the length checked against a limit before
//!   anything is allocated; a sans-IO decoder and tokio readers and writers on top of it.
//! - [`handshake`]: preambles with version ranges, then `Hello`/`Welcome`, under one deadline.
//!
//! Every error here is a [`WireError`]: it closes its connection, never the process.

pub mod error;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod metrics;

pub use error::{Side, WireError};
pub use frame::{FrameDecoder, FrameReader, FrameWriter, WireMessage, DEFAULT_MAX_FRAME};
pub use handshake::{accept, connect, Connection, HandshakeConfig, VersionRange, PROTOCOL};
pub use message::{
    AgentAnswer, AgentRequest, Hello, HelloAnswer, LogStream, Refusal, RefusalKind, RunningTask,
    SchedulerAnswer, SchedulerRequest, ToScheduler, ToWorker, Welcome,
};
