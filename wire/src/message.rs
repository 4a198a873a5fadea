//! The messages of the cluster protocol: only data, apart from the actors' in-process
//! messages, the journal's records and the HTTP API's bodies, so each can change on its own.
//!
//! After the handshake an agent sends [`ToScheduler`] frames and the scheduler [`ToWorker`]
//! frames. Requests carry an id that their answer echoes; every message about a job carries its
//! lease's fencing token. A refusal is a [`Refusal`]: a kind a program can act on and a message
//! a person can read, never the crate's internal error type.

use std::collections::BTreeMap;

use cadre_actors::ids::{FencingToken, WorkerId};
use cadre_actors::job::JobId;
use cadre_actors::protocol::{
    Assign, GpuDevice, Kill, ProgressAck, ProgressUpdate, RenewReply, TaskEnd,
};
use cadre_actors::sched::WorkerCapacity;
use cadre_actors::store::LogsNote;
use cadre_actors::Error;
use serde::{Deserialize, Serialize};

use crate::frame::WireMessage;

/// A task an agent runs, as its `Hello` reports it after a reconnect or a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: u32,
    /// The task's index within its job.
    pub task: u32,
    /// The lease the task runs under.
    pub token: FencingToken,
}

/// Agent to scheduler, the first message after the versions are agreed: who the worker is,
/// what it offers, and what it still runs.
///
/// A worker is identified by `(node, worker)`: two agents on different hosts may both call
/// their worker `cpu-0` without evicting each other; the same pair registering again replaces
/// the earlier registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's node id: stable across its restarts (kept in its data directory).
    pub node: String,
    /// The worker's name on that node.
    pub worker: String,
    /// Its datacenter.
    pub datacenter: String,
    /// Its labels, for placement constraints.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: WorkerCapacity,
    /// Its GPUs (index in `capacity`, UUID, ordinal).
    #[serde(default)]
    pub gpus: Vec<GpuDevice>,
    /// The tasks it still runs (after a reconnect, or a restart that re-adopted them).
    #[serde(default)]
    pub running: Vec<RunningTask>,
    /// The agent's cadre version, for the scheduler's log line.
    #[serde(default)]
    pub software: String,
}

impl WireMessage for Hello {
    const WHAT: &'static str = "hello";
    fn kind(&self) -> &'static str {
        "hello"
    }
}

/// Scheduler to agent: the `Hello` is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The worker's id for this registration.
    pub worker: WorkerId,
    /// The scheduler's name, for log lines.
    pub scheduler: String,
    /// A lease's time to live: the agent renews well within it and kills a task whose lease it
    /// could not renew before it runs out.
    pub lease_ttl_ms: u64,
    /// The scheduler's clock (microseconds since it accepted this connection) when it sent
    /// this, so the agent can read the deadlines of assignments.
    pub clock_us: u64,
}

/// The scheduler's answer to a `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelloAnswer {
    /// Accepted.
    Welcome(Welcome),
    /// Refused, and why; the scheduler closes the connection after sending it.
    Refused(Refusal),
}

impl WireMessage for HelloAnswer {
    const WHAT: &'static str = "answer to a hello";
    fn kind(&self) -> &'static str {
        match self {
            HelloAnswer::Welcome(_) => "welcome",
            HelloAnswer::Refused(_) => "refused",
        }
    }
}

/// What kind of refusal, for a program to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// No protocol version in common.
    Version,
    /// The identity in the `Hello` is not acceptable (empty, too long, or taken by a live
    /// connection).
    Identity,
    /// The message's lease token is not the live lease: the task must stop.
    StaleToken,
    /// The worker is not registered (it must say `Hello` again).
    UnknownWorker,
    /// No such job (or pruned).
    UnknownJob,
    /// The receiver cannot take it now (starting, store unwritable, busy): try again.
    Unavailable,
    /// The node is draining.
    Draining,
    /// The request is not valid.
    Invalid,
    /// Something failed on the receiving side.
    Internal,
    /// A kind this side does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

impl RefusalKind {
    /// The kind as logs and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Version => "version",
            RefusalKind::Identity => "identity",
            RefusalKind::StaleToken => "stale_token",
            RefusalKind::UnknownWorker => "unknown_worker",
            RefusalKind::UnknownJob => "unknown_job",
            RefusalKind::Unavailable => "unavailable",
            RefusalKind::Draining => "draining",
            RefusalKind::Invalid => "invalid",
            RefusalKind::Internal => "internal",
            RefusalKind::Other => "other",
        }
    }
}

/// A refusal as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{} ({})", message, kind.as_str())]
pub struct Refusal {
    /// What kind.
    pub kind: RefusalKind,
    /// Why, for a person.
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

impl From<&Error> for Refusal {
    fn from(error: &Error) -> Refusal {
        let kind = match error {
            Error::UnknownWorker { .. } => RefusalKind::UnknownWorker,
            Error::StaleToken { .. } | Error::StaleAttempt { .. } => RefusalKind::StaleToken,
            Error::UnknownJob { .. } | Error::Pruned { .. } => RefusalKind::UnknownJob,
            Error::Unavailable { .. }
            | Error::Mailbox { .. }
            | Error::StoreUnwritable { .. }
            | Error::StoreFailed { .. }
            | Error::Store { .. } => RefusalKind::Unavailable,
            Error::InvalidSpec(_)
            | Error::IllegalTransition(_)
            | Error::Rejected { .. }
            | Error::Conflict { .. }
            | Error::UnknownDevice { .. }
            | Error::UnknownNode { .. }
            | Error::DuplicateWorker { .. }
            | Error::AlreadyReserved { .. } => RefusalKind::Invalid,
            Error::TokensExhausted { .. } | Error::Codec { .. } => RefusalKind::Internal,
        };
        Refusal::new(kind, error.to_string())
    }
}

/// Which output stream of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A request from an agent to the scheduler; answered by [`ToWorker::Answer`] with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerRequest {
    /// Renew the leases of every task the agent runs (doubles as its heartbeat).
    Renew {
        /// Each task's job and lease.
        leases: Vec<(JobId, FencingToken)>,
    },
    /// The task holding `token` started.
    Started {
        /// The job.
        job: JobId,
        /// The task's lease.
        token: FencingToken,
    },
    /// The task holding `token` ended.
    Finished {
        /// The job.
        job: JobId,
        /// The task's lease.
        token: FencingToken,
        /// How it ended.
        end: TaskEnd,
        /// What became of its output, when not all of it was kept.
        #[serde(default)]
        output: Option<LogsNote>,
    },
    /// The latest progress of the agent's tasks.
    Progress {
        /// The flush's number.
        seq: u64,
        /// The updates.
        updates: Vec<ProgressUpdate>,
    },
    /// A GPU's health changed.
    GpuHealth {
        /// Its index in the worker's capacity.
        index: u32,
        /// Whether it may be given work.
        healthy: bool,
        /// Why.
        reason: String,
    },
}

impl SchedulerRequest {
    /// Its type, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SchedulerRequest::Renew { .. } => "renew",
            SchedulerRequest::Started { .. } => "started",
            SchedulerRequest::Finished { .. } => "finished",
            SchedulerRequest::Progress { .. } => "progress",
            SchedulerRequest::GpuHealth { .. } => "gpu_health",
        }
    }
}

/// The scheduler's answer to a [`SchedulerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerAnswer {
    /// To `Renew`.
    Renewed(RenewReply),
    /// To `Started`, `Finished`, `GpuHealth`: taken.
    Done,
    /// To `Progress`.
    Progress(ProgressAck),
}

/// A request from the scheduler to an agent; answered by [`ToScheduler::Answer`] with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRequest {
    /// Read at most `max_bytes` of a task's log (for `cadre logs` of a job on the agent: the
    /// API fetches it in bounded chunks), from logical offset `offset`, or, when `tail` is
    /// set, from `tail` bytes before its end.
    ReadLog {
        /// The job.
        job: JobId,
        /// The task's index.
        task: u32,
        /// Which stream.
        stream: LogStream,
        /// Where to start (ignored when `tail` is set).
        offset: u64,
        /// Start this many bytes before the log's end instead.
        #[serde(default)]
        tail: Option<u64>,
        /// The most bytes to send back (the agent may send fewer, never more).
        max_bytes: u32,
    },
    /// Remove what these pruned jobs left on the agent (their logs and scratch directories):
    /// the scheduler's retention dropped them.
    Forget {
        /// Each job and its number of tasks.
        jobs: Vec<(JobId, u32)>,
    },
    /// Remove what any job the scheduler no longer keeps left on the agent: every job id below
    /// `next` outside `kept` was pruned (sent at each connection, for the jobs pruned while the
    /// agent was away).
    Sweep {
        /// The kept ids, as inclusive ranges, ascending and disjoint.
        kept: Vec<(u64, u64)>,
        /// Every id at or above it is left alone.
        next: u64,
    },
}

impl AgentRequest {
    /// Its type, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentRequest::ReadLog { .. } => "read_log",
            AgentRequest::Forget { .. } => "forget",
            AgentRequest::Sweep { .. } => "sweep",
        }
    }
}

/// An agent's answer to an [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAnswer {
    /// A chunk of a log: its bytes, with a marker line where bytes over the log's cap were
    /// dropped. Empty at the end of what is there (or when the log does not exist yet).
    Log {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// The logical offset the next read starts at (past the bytes and any dropped range).
        next: u64,
        /// The log's logical length when it was read.
        end: u64,
    },
    /// To `Forget` and `Sweep`: what was removed, and how many removals failed (each logged
    /// on the agent).
    Removed {
        /// Log files removed.
        log_files: u64,
        /// Scratch directories removed.
        scratch_dirs: u64,
        /// Removals that failed.
        failures: u64,
    },
}

/// Every frame an agent sends after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToScheduler {
    /// A request, answered with its id.
    Request {
        /// Echoed by the answer.
        id: u64,
        /// What is asked.
        request: SchedulerRequest,
    },
    /// The answer to the scheduler's request `id`.
    Answer {
        /// The request's id.
        id: u64,
        /// The answer, or why not.
        answer: Result<AgentAnswer, Refusal>,
    },
    /// A probe of the round trip; the scheduler answers with `Pong` echoing `id`.
    Ping {
        /// Echoed.
        id: u64,
    },
    /// The answer to the scheduler's `Ping`, with the agent's clock (microseconds since it
    /// connected) for the scheduler's offset estimate.
    Pong {
        /// The ping's id.
        id: u64,
        /// The agent's clock when it answered.
        clock_us: u64,
    },
}

impl WireMessage for ToScheduler {
    const WHAT: &'static str = "message to the scheduler";
    fn kind(&self) -> &'static str {
        match self {
            ToScheduler::Request { request, .. } => request.kind(),
            ToScheduler::Answer { .. } => "answer",
            ToScheduler::Ping { .. } => "ping",
            ToScheduler::Pong { .. } => "pong",
        }
    }
}

/// Every frame the scheduler sends an agent after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// Run a task under a lease. A task whose lease deadline has passed when this arrives is
    /// refused by the agent: a delayed assignment never starts a process.
    Assign {
        /// The assignment (boxed: it is by far the largest message).
        assign: Box<Assign>,
        /// The scheduler's clock when it sent this (microseconds since the connection).
        clock_us: u64,
        /// When the lease runs out unless renewed, on the same clock.
        lease_deadline_us: u64,
    },
    /// Stop a task.
    Kill(Kill),
    /// Stop taking new work; running tasks finish (the operator's `cadre drain`).
    Drain,
    /// A request, answered with its id.
    Request {
        /// Echoed by the answer.
        id: u64,
        /// What is asked.
        request: AgentRequest,
    },
    /// The answer to the agent's request `id`.
    Answer {
        /// The request's id.
        id: u64,
        /// The answer, or why not.
        answer: Result<SchedulerAnswer, Refusal>,
    },
    /// A probe of the round trip; the agent answers with `Pong`.
    Ping {
        /// Echoed.
        id: u64,
        /// The scheduler's clock when it sent this.
        clock_us: u64,
    },
    /// The answer to the agent's `Ping`.
    Pong {
        /// The ping's id.
        id: u64,
        /// The scheduler's clock when it answered.
        clock_us: u64,
    },
}

impl WireMessage for ToWorker {
    const WHAT: &'static str = "message to a worker";
    fn kind(&self) -> &'static str {
        match self {
            ToWorker::Assign { .. } => "assign",
            ToWorker::Kill(_) => "kill",
            ToWorker::Drain => "drain",
            ToWorker::Request { request, .. } => request.kind(),
            ToWorker::Answer { .. } => "answer",
            ToWorker::Ping { .. } => "ping",
            ToWorker::Pong { .. } => "pong",
        }
    }
}

/// The longest node id, worker name or datacenter taken in a `Hello`.
pub const MAX_NAME: usize = 128;
/// The most labels a `Hello` may carry.
pub const MAX_LABELS: usize = 64;
/// The longest label value.
pub const MAX_LABEL_VALUE: usize = 256;

/// Why `value` cannot be a node's, a worker's or a datacenter's name (or a label's key):
/// empty, longer than [`MAX_NAME`], or holding whitespace, a control character or a `/` (which
/// separates a node's name from its worker's in `node/worker`). The one rule for names, on the
/// wire and in a node's configuration.
pub fn name_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if value.len() > MAX_NAME {
        return Some(format!("{} bytes is longer than {MAX_NAME}", value.len()));
    }
    value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
        .map(|c| format!("must not hold whitespace, control characters or '/' (found {c:?})"))
}

fn check_name(field: &str, value: &str, may_be_empty: bool) -> Result<(), Refusal> {
    if value.is_empty() && may_be_empty {
        return Ok(());
    }
    match name_problem(value) {
        Some(reason) => Err(Refusal::new(
            RefusalKind::Identity,
            format!("{field}: {reason}"),
        )),
        None => Ok(()),
    }
}

impl Hello {
    /// Checks what the scheduler must be able to show and index: names non-empty, bounded and
    /// printable, labels bounded, every GPU one of the capacity's. The refusal names the field.
    pub fn validate(&self) -> Result<(), Refusal> {
        check_name("hello.node", &self.node, false)?;
        check_name("hello.worker", &self.worker, false)?;
        check_name("hello.datacenter", &self.datacenter, true)?;
        if self.labels.len() > MAX_LABELS {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "hello.labels: {} labels is more than {MAX_LABELS}",
                    self.labels.len()
                ),
            ));
        }
        for (key, value) in &self.labels {
            check_name(&format!("hello.labels.{key}"), key, false)?;
            if value.len() > MAX_LABEL_VALUE {
                return Err(Refusal::new(
                    RefusalKind::Invalid,
                    format!(
                        "hello.labels.{key}: a value of {} bytes is longer than {MAX_LABEL_VALUE}",
                        value.len()
                    ),
                ));
            }
        }
        for (i, gpu) in self.gpus.iter().enumerate() {
            if !self.capacity.gpus.contains(&gpu.index) {
                return Err(Refusal::new(
                    RefusalKind::Invalid,
                    format!(
                        "hello.gpus[{i}].index: {} is not one of the capacity's GPUs",
                        gpu.index
                    ),
                ));
            }
        }
        Ok(())
    }
}
