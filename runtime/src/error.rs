//! The runtime's error type.

/// How a request to an agent failed (see [`Error::Agent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFailure {
    /// No agent of that name is connected, or its connection ended before it answered.
    NotConnected,
    /// Too many log reads are in flight: this one was not sent.
    Busy,
    /// It did not answer in time.
    TimedOut,
    /// It refused, or answered something else.
    Refused,
}

/// Everything starting or running a node can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong.
    #[error("config: {field}: {reason}")]
    Config {
        /// The field (file key, environment variable or flag).
        field: String,
        /// Why.
        reason: String,
    },
    /// The data directory cannot be used.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// An actor refused or failed.
    #[error(transparent)]
    Actors(#[from] cadre_actors::Error),
    /// The supervision tree failed.
    #[error(transparent)]
    Supervisor(#[from] cadre_supervisor::SupervisorError),
    /// The I/O layer failed.
    #[error(transparent)]
    Cpu(#[from] cadre_cpu::CpuError),
    /// A listener could not be bound or served.
    #[error("{what} on {addr}: {source}")]
    Listen {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A cluster certificate or key could not be made, read or used.
    #[error("TLS: {what}: {reason}")]
    Tls {
        /// The file or the part of TLS.
        what: String,
        /// Why.
        reason: String,
    },
    /// A request to an agent failed (a task's log, for the API; a removal, for the janitor).
    #[error("agent {node}: {reason}")]
    Agent {
        /// The agent's node name.
        node: String,
        /// How it failed.
        failure: AgentFailure,
        /// Why, in words.
        reason: String,
    },
    /// The metrics exporter could not be installed.
    #[error("metrics exporter: {0}")]
    Metrics(String),
}
