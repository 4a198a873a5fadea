//! The crate's error type: one enum for everything the actors can refuse or fail at, each
//! variant carrying the ids a log line needs.

use crate::ids::{FencingToken, WorkerId};
use crate::job::{IllegalTransition, InvalidSpec, JobId};

/// Everything `cadre-actors` can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job spec violates one or more fields.
    #[error(transparent)]
    InvalidSpec(#[from] InvalidSpec),
    /// A state transition the table forbids.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// No job with this id is known.
    #[error("job {job} is not known")]
    UnknownJob {
        /// The job asked for.
        job: JobId,
    },
    /// No worker with this id is registered.
    #[error("worker {worker} is not registered")]
    UnknownWorker {
        /// The worker asked for.
        worker: WorkerId,
    },
    /// No worker of this node is registered.
    #[error("no worker of node {node} is registered")]
    UnknownNode {
        /// The node asked for.
        node: String,
    },
    /// A worker registered twice under one id.
    #[error("worker {worker} is already registered")]
    DuplicateWorker {
        /// The worker.
        worker: WorkerId,
    },
    /// A worker has no GPU with this index.
    #[error("worker {worker} has no GPU {index}")]
    UnknownDevice {
        /// The worker.
        worker: WorkerId,
        /// The GPU index asked for.
        index: u32,
    },
    /// A job asked for a second reservation while it still holds one: refused, since granting it
    /// would book the job's resources twice.
    #[error("job {job} already holds a reservation")]
    AlreadyReserved {
        /// The job.
        job: JobId,
    },
    /// A message about a job carried a token that is not the job's current lease: it comes from
    /// an older attempt (a zombie) or a lease that has ended, and is refused.
    #[error(
        "job {job}: stale fencing token {presented} from worker {worker} (current: {current:?})"
    )]
    StaleToken {
        /// The job.
        job: JobId,
        /// The worker that sent it.
        worker: WorkerId,
        /// The token it presented.
        presented: FencingToken,
        /// The job's current token, if it holds a lease at all.
        current: Option<FencingToken>,
    },
    /// A record names an attempt that is not the job's current one.
    #[error("job {job}: attempt {attempt} is not the current attempt {current}")]
    StaleAttempt {
        /// The job.
        job: JobId,
        /// The attempt named.
        attempt: u32,
        /// The job's current attempt.
        current: u32,
    },
    /// A record the store refuses: it does not fit the job table (a bug in the caller, or a
    /// journal that does not belong to this table).
    #[error("job store: {reason}")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The job store has failed (a journal write or sync failed) and refuses every change until
    /// the node restarts and recovers from disk.
    #[error("job store has failed and accepts nothing until restart: {reason}")]
    StoreFailed {
        /// The first failure.
        reason: String,
    },
    /// The fencing token counter is at its maximum: no new lease can get a fresh token.
    #[error("job {job}: no fencing token left (the counter is at u64::MAX)")]
    TokensExhausted {
        /// The job the lease was for.
        job: JobId,
    },
    /// The job store could not write or read its journal.
    #[error("job store: {op}: {source}")]
    Store {
        /// What the store was doing.
        op: &'static str,
        /// The journal's error.
        #[source]
        source: cadre_cpu::CpuError,
    },
    /// A journal record or snapshot could not be encoded or decoded.
    #[error("job store: {what}: {reason}")]
    Codec {
        /// What was being encoded or decoded (`record 17`, `snapshot`).
        what: String,
        /// The codec's message.
        reason: String,
    },
    /// The node cannot take this request now (starting, draining, journal queue full); retry.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The request does not fit the job's state (cancelling a job that has ended).
    #[error("job {job}: {reason}")]
    Conflict {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// A message to another actor could not be delivered or was not answered.
    #[error("{actor}: {reason}")]
    Mailbox {
        /// The actor addressed.
        actor: &'static str,
        /// What went wrong (mailbox closed, full, timed out).
        reason: String,
    },
    /// The job store's disk refuses writes (full, or failing): nothing new can be recorded
    /// until it takes writes again, which the node notices by itself.
    #[error("the job store is read-only: {reason}")]
    StoreUnwritable {
        /// Why, naming the disk and its free space.
        reason: String,
    },
    /// The job ended long enough ago that the retention policy removed it.
    #[error("job {job} was pruned by retention")]
    Pruned {
        /// The job.
        job: JobId,
    },
}
