//! The runtime's error type.

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
    /// A request to an agent failed (a task's log, for the API).
    #[error("agent {node}: {reason}")]
    Agent {
        /// The agent's node name.
        node: String,
        /// Whether it was connected when it failed (false: not connected, or it went away).
        connected: bool,
        /// Why.
        reason: String,
    },
    /// Too many requests to agents are in flight: this one was not sent.
    #[error("agent {node}: {limit} requests to agents are in flight already; try again")]
    AgentBusy {
        /// The agent's node name.
        node: String,
        /// The most in flight at once.
        limit: usize,
    },
    /// The metrics exporter could not be installed.
    #[error("metrics exporter: {0}")]
    Metrics(String),
}
