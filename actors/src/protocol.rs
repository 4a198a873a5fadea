//! The messages the scheduler, workers and health monitor exchange.
//!
//! Every message is plain serde data (workers will live on other machines and these cross the
//! network as MessagePack); only [`WorkerLink`], the way back to an in-process worker, is not:
//! a remote worker will be reached through a transport actor that implements the same
//! recipients. Every message from a worker about a job carries the lease's fencing token, and
//! the scheduler refuses one whose token is not the live lease's.

use std::time::Duration;

use actix::{Message, Recipient};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::{FencingToken, WorkerId, WorkerIdentity};
use crate::job::{JobId, JobSpec, JobState};
use crate::sched::{Grant, WorkerCapacity};
use crate::workload::Progress;

/// Scheduler to worker: run task `task` of attempt `attempt` of `job` under the lease `token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Assign {
    /// The job.
    pub job: JobId,
    /// Its attempt (1 for the first run).
    pub attempt: u32,
    /// The task's index within the job (0 unless the job is a gang).
    pub task: u32,
    /// The lease's fencing token.
    pub token: FencingToken,
    /// What to run.
    pub spec: JobSpec,
    /// What the task holds on the worker.
    pub grant: Grant,
    /// The lease's time to live: the worker must renew within it or kill the task itself.
    pub lease_ttl: Duration,
}

/// Why the scheduler asks a worker to stop a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// A user cancelled the job.
    Cancelled,
    /// The attempt's lease is gone (expired, revoked, or another task of its gang failed).
    LeaseLost,
    /// The node is shutting down and the grace period is over.
    Shutdown,
}

impl KillReason {
    /// The reason as logs and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Cancelled => "cancelled",
            KillReason::LeaseLost => "lease_lost",
            KillReason::Shutdown => "shutdown",
        }
    }
}

/// Scheduler to worker: stop the task holding `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Kill {
    /// The job.
    pub job: JobId,
    /// The lease of the task to stop.
    pub token: FencingToken,
    /// Why.
    pub reason: KillReason,
}

/// How the scheduler reaches a worker. In-process recipients today; a network transport later.
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// Where assignments go.
    pub assign: Recipient<Assign>,
    /// Where kills go.
    pub kill: Recipient<Kill>,
}

/// How a worker reaches the scheduler: one recipient per message, so the scheduler can be
/// in-process or behind a transport, and tests can stand in for it.
#[derive(Debug, Clone)]
pub struct SchedulerLink {
    /// What the link points at, for log lines (`cadre/scheduler`).
    pub target: String,
    /// Registrations.
    pub register: Recipient<Register>,
    /// Lease renewals.
    pub renew: Recipient<Renew>,
    /// Task starts.
    pub started: Recipient<Started>,
    /// Task ends.
    pub finished: Recipient<Finished>,
    /// Progress flushes.
    pub progress: Recipient<ProgressFlush>,
}

/// Worker to scheduler: a worker joins with its capacity; the answer is its id. A registration
/// under the identity of a registered worker replaces that one (it restarted).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<WorkerId, Error>")]
pub struct Register {
    /// Who the worker is: its node and its name there.
    pub identity: WorkerIdentity,
    /// Its node's datacenter.
    pub datacenter: String,
    /// Its node's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What it offers.
    pub capacity: WorkerCapacity,
    /// How to reach it.
    pub link: WorkerLink,
    /// Where it connects from (an agent's address), for `cadre nodes`; `None` for a worker in
    /// the scheduler's own process.
    pub address: Option<String>,
}

/// A GPU a worker owns: the index it registers in its capacity (what grants name) and the
/// device's UUID (what `CUDA_VISIBLE_DEVICES` and NVML take; ordinals can be renumbered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// Its index in the worker's capacity.
    pub index: u32,
    /// Its UUID (`GPU-xxxxxxxx-...`).
    pub uuid: String,
    /// Its CUDA ordinal on the worker's machine, as the driver numbers it without
    /// `CUDA_VISIBLE_DEVICES`.
    pub ordinal: u32,
}

/// A GPU's health changed (from the GPU monitor): an unhealthy one gets no new work.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct GpuHealth {
    /// The worker that owns it.
    pub worker: WorkerIdentity,
    /// Its index in the worker's capacity.
    pub index: u32,
    /// Whether it may be given work.
    pub healthy: bool,
    /// Why, for the log line and the status.
    pub reason: String,
}

/// Worker to scheduler: renew the leases of every task it runs, in one batch.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "Result<RenewReply, Error>")]
pub struct Renew {
    /// The worker.
    pub worker: WorkerId,
    /// Each task's job and lease token.
    pub leases: Vec<(JobId, FencingToken)>,
}

/// The scheduler's answer to [`Renew`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewReply {
    /// Leases renewed for another time to live.
    pub renewed: Vec<FencingToken>,
    /// Leases refused (stale, expired, revoked): the worker kills these tasks at once.
    pub refused: Vec<(JobId, FencingToken)>,
}

/// Worker to scheduler: the task holding `token` started.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Started {
    /// The worker.
    pub worker: WorkerId,
    /// The job.
    pub job: JobId,
    /// The task's lease.
    pub token: FencingToken,
}

/// How a task ended, as its worker saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskEnd {
    /// The process exited with this code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A signal that cadre did not send ended the process (the OOM killer, an operator).
    Signalled {
        /// The signal.
        signal: i32,
    },
    /// The job's timeout ran out and the worker stopped it.
    TimedOut,
    /// The worker stopped it because the scheduler asked or its lease was lost.
    Killed {
        /// Why.
        reason: KillReason,
    },
    /// The task could not start (program vanished, fork failed, log file not writable).
    StartFailed {
        /// The error.
        error: String,
    },
    /// The worker lost track of the process (waiting for it failed).
    Error {
        /// The error.
        error: String,
    },
    /// A workload finished with this result.
    Completed {
        /// The workload's JSON result.
        result: serde_json::Value,
    },
    /// A workload returned an error, or its actor failed while running the task.
    WorkloadFailed {
        /// The error.
        error: String,
    },
    /// The kernel killed it for passing its memory limit (its cgroup counted an OOM kill).
    OutOfMemory {
        /// The limit it passed, in bytes.
        limit_bytes: u64,
    },
}

impl TaskEnd {
    /// Whether the task succeeded.
    pub fn success(&self) -> bool {
        matches!(
            self,
            TaskEnd::Exited { code: 0 } | TaskEnd::Completed { .. }
        )
    }
}

/// Worker to scheduler: the task holding `token` ended.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Finished {
    /// The worker.
    pub worker: WorkerId,
    /// The job.
    pub job: JobId,
    /// The task's lease.
    pub token: FencingToken,
    /// How it ended.
    pub end: TaskEnd,
    /// What became of its output, when not all of it was kept (over its cap, not written).
    #[serde(default)]
    pub output: Option<crate::store::LogsNote>,
}

/// Health monitor (or a cluster connection) to scheduler: the worker is dead; revoke every
/// lease it holds.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WorkerDead {
    /// The worker.
    pub worker: WorkerId,
    /// Why the monitor decided so.
    pub reason: String,
    /// Whether the worker's process is known to be gone (its connection closed): it can
    /// neither fence its tasks nor report them, so its jobs are requeued at once. A worker
    /// that only went silent may be alive and cut off, running its tasks until it fences them
    /// itself, before its leases run out: its jobs are requeued only once those leases have
    /// run out, so the old attempt is dead before the new one starts.
    #[serde(default)]
    pub exited: bool,
}

/// Worker to health monitor: still alive.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Heartbeat {
    /// The worker.
    pub worker: WorkerId,
}

/// A job's change as the API streams it: a state change, or progress of a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job: JobId,
    /// Its state after the change.
    pub state: JobState,
    /// Its attempt.
    pub attempt: u32,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The task's progress, for a progress event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TaskProgress>,
}

/// One task's progress in an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The task's index within its gang.
    pub task: u32,
    /// How far it is.
    #[serde(flatten)]
    pub progress: Progress,
}

/// How hard the receiver of progress flushes is pressed, from its answer to each flush. The
/// worker obeys: `None` flushes at the base interval, `Throttle` at 4x, `Batch` at 20x (latest
/// values only, as always), `Reject` sends nothing but a probe every 100x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// Flush at the base interval.
    None,
    /// Flush less often.
    Throttle,
    /// Flush rarely.
    Batch,
    /// Send no progress; the flush was not applied.
    Reject,
}

impl Backpressure {
    /// The level as logs and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backpressure::None => "none",
            Backpressure::Throttle => "throttle",
            Backpressure::Batch => "batch",
            Backpressure::Reject => "reject",
        }
    }

    /// The level's number for the `cadre_progress_backpressure_level` gauge (0 ..= 3).
    pub fn level(self) -> u8 {
        self as u8
    }

    /// How many base intervals the worker waits between flushes at this level.
    pub fn interval_factor(self) -> u32 {
        match self {
            Backpressure::None => 1,
            Backpressure::Throttle => 4,
            Backpressure::Batch => 20,
            Backpressure::Reject => 100,
        }
    }
}

/// One task's latest progress in a flush.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressUpdate {
    /// The job.
    pub job: JobId,
    /// The task's lease.
    pub token: FencingToken,
    /// The task's index.
    pub task: u32,
    /// Its latest progress.
    pub progress: Progress,
}

/// Worker to scheduler: the latest progress of its tasks since the last flush.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "Result<ProgressAck, Error>")]
pub struct ProgressFlush {
    /// The worker.
    pub worker: WorkerId,
    /// The flush's number; the acknowledgement echoes it.
    pub seq: u64,
    /// The updates.
    pub updates: Vec<ProgressUpdate>,
}

/// The scheduler's answer to a [`ProgressFlush`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressAck {
    /// The flush acknowledged (a mismatch is a malformed acknowledgement).
    pub seq: u64,
    /// The level the worker must obey from now on.
    pub level: Backpressure,
    /// Updates whose token is not the live lease (ignored).
    pub refused: Vec<FencingToken>,
}

/// Scheduler to health monitor: watch a running task for progress.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WatchJob {
    /// The job.
    pub job: JobId,
    /// The worker running it.
    pub worker: WorkerId,
    /// The task's lease.
    pub token: FencingToken,
    /// How long it may go without progress.
    pub deadline: Duration,
}

/// Scheduler to health monitor: the task holding `token` ended; stop watching it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct UnwatchJob {
    /// The task's lease.
    pub token: FencingToken,
}

/// Scheduler to health monitor: the worker's registration is gone (dead, or replaced by a new
/// one); stop tracking its heartbeats and its tasks, so it is not declared dead again later.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct ForgetWorker {
    /// The worker.
    pub worker: WorkerId,
}

/// Health monitor to scheduler: send me the watch of every running task that has a progress
/// deadline again (a restarted monitor has forgotten them all).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct ResendWatches;

/// Scheduler to health monitor: these tasks made progress.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct JobsProgressed {
    /// The tasks' leases.
    pub tokens: Vec<FencingToken>,
}

/// Health monitor to scheduler: the task holding `token` made no progress within its deadline
/// (and a grace after it was suspected): stop it and requeue the job.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct JobStalled {
    /// The job.
    pub job: JobId,
    /// The task's lease.
    pub token: FencingToken,
    /// Why.
    pub reason: String,
}

/// What extension callbacks receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum NodeEvent {
    /// A job changed state (durably).
    JobState {
        /// The change.
        change: JobEvent,
    },
    /// A lease expired unrenewed.
    LeaseExpired {
        /// The job.
        job: JobId,
        /// The worker that held it.
        worker: WorkerId,
        /// The lease.
        token: FencingToken,
    },
    /// A worker was declared dead.
    WorkerDied {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
}

impl cadre_supervisor::CallbackEvent for NodeEvent {
    fn event_id(&self) -> String {
        match self {
            NodeEvent::JobState { change } => {
                format!(
                    "job={} state={} attempt={}",
                    change.job, change.state, change.attempt
                )
            }
            NodeEvent::LeaseExpired { job, worker, token } => {
                format!("lease_expired job={job} worker={worker} lease={token}")
            }
            NodeEvent::WorkerDied { worker, .. } => format!("worker_died worker={worker}"),
        }
    }
}
