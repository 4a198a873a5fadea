//! `cadre-actors`: the actors of a cadre node and the typed, serde-serializable data they
//! exchange.
//!
//! Today it holds the job model ([`job`]): the spec a user submits, its validation (every
//! violated field with its reason) and the state machine every job follows. The scheduler,
//! lease manager, workers, health monitor, progress and store actors join it with the
//! single-node runtime.

pub mod backpressure;
pub mod clock;
pub mod error;
pub mod health;
pub mod ids;
pub mod job;
pub mod lease;
pub mod metrics;
pub mod protocol;
pub mod sched;
pub mod scheduler;
pub mod store;
pub mod worker;
pub mod workload;

pub use error::Error;
pub use ids::{FencingToken, WorkerId, WorkerIdentity};
pub use job::{
    CommandJob, FieldError, IllegalTransition, InvalidSpec, JobId, JobKind, JobSpec, JobState,
    JobStatus, Limits, Registry, Resources, WorkloadJob,
};
