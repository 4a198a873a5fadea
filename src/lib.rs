//! cadre: a supervised actor runtime for running jobs on CPU and GPU machines.
//!
//! This facade re-exports the public API of cadre's crates so an extension depends on one
//! crate: the supervisor ([`supervisor`]: OTP supervision trees, panic capture and supervised
//! callbacks on actix), the actors and their data ([`actors`]) and the node ([`runtime`]). The
//! binary's command-line client lives in [`cli`].

pub mod app;
pub mod cli;
pub mod demo;

pub use cadre_actors as actors;
pub use cadre_runtime as runtime;
pub use cadre_supervisor as supervisor;

/// The names an extension usually needs, for a glob import.
pub mod prelude {
    pub use cadre_supervisor::{
        Callback, CallbackError, CallbackEvent, CallbackRunner, CallbackSpec, ChildSpec,
        FailureJournal, FailureKind, Pool, Restart, Shutdown, Strategy, SupervisedContext,
        SupervisorError, SupervisorRef, SupervisorSpec, WorkerSpec,
    };
}
