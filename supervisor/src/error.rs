//! The error type of the supervisor crate: one enum, every variant names what failed and why.

use std::time::Duration;

/// Everything that can go wrong when building, starting or driving a supervision tree.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SupervisorError {
    /// A spec field holds a value that cannot work; nothing was started.
    #[error("invalid spec: field `{field}`: {reason}")]
    InvalidSpec {
        /// The field, e.g. `children[2].id`.
        field: String,
        /// Why the value is refused.
        reason: String,
    },
    /// A child with this id already exists under the supervisor.
    #[error("supervisor {supervisor}: a child with id {id:?} already exists")]
    DuplicateChild {
        /// Path of the supervisor.
        supervisor: String,
        /// The duplicated id.
        id: String,
    },
    /// No child with this id exists under the supervisor.
    #[error("supervisor {supervisor}: no child with id {id:?}")]
    NoSuchChild {
        /// Path of the supervisor.
        supervisor: String,
        /// The id asked for.
        id: String,
    },
    /// The operation needs the child to be terminated first (OTP's `{error, running}`).
    #[error("supervisor {supervisor}: child {id:?} is running; terminate it first")]
    ChildRunning {
        /// Path of the supervisor.
        supervisor: String,
        /// The running child.
        id: String,
    },
    /// The operation needs a child that is not already running.
    #[error("supervisor {supervisor}: child {id:?} is already running")]
    AlreadyRunning {
        /// Path of the supervisor.
        supervisor: String,
        /// The running child.
        id: String,
    },
    /// A child could not be started (its factory or `started` hook panicked, or a nested
    /// supervisor could not start its own children). The failure was already logged where it
    /// happened.
    #[error("child {path} failed to start: {reason}")]
    StartFailed {
        /// Path of the child in the tree.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The supervisor saw more restarts than its intensity allows within its period, stopped
    /// all its children and gave up (escalating to its parent, if it has one).
    #[error("supervisor {supervisor} reached its restart limit: more than {intensity} restarts in {period:?}")]
    RestartLimit {
        /// Path of the supervisor.
        supervisor: String,
        /// The configured intensity.
        intensity: u32,
        /// The configured period.
        period: Duration,
    },
    /// The supervisor has stopped (or was never started) and takes no more requests.
    #[error("supervisor {supervisor} is not running")]
    NotRunning {
        /// Path (or name) of the supervisor.
        supervisor: String,
    },
    /// The operation is only for the root of a tree (stop a nested supervisor through its parent,
    /// with `terminate_child`).
    #[error("supervisor {supervisor} is not a root; stop it through its parent")]
    NotRoot {
        /// Path of the supervisor.
        supervisor: String,
    },
    /// The supervisor was started outside an actix arbiter (run it inside `actix::System`).
    #[error(
        "no actix arbiter on this thread: start supervisors inside an actix System or Arbiter"
    )]
    NoArbiter,
}
