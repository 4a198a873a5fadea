//! The scheduler actor: owns the job store, the placer and the lease table, and is the one
//! place a job's state changes.
//!
//! Rules it keeps:
//! - **Journal first.** Every change is committed to the [`Store`] (applied to the table and
//!   queued to the journal in one synchronous step) and nobody hears of it (an API reply, an
//!   assignment to a worker, an event) before the record is durable.
//! - **Leases and tokens.** A placement grants one lease per task with a fresh fencing token; a
//!   worker's `Started`, `Finished` and `Renew` are checked against the live lease, so a zombie
//!   attempt is refused, logged and counted. Lease expiry and worker death make the attempt
//!   lost: queued again with attempt + 1 while retries remain, failed after.
//! - **Resources** are reserved at placement and released on every end path: finished,
//!   cancelled, timed out, lost. A cancelled or lost attempt keeps its reservation until its
//!   worker confirms the task is gone or the lease runs out (the worker kills a task whose
//!   lease it could not renew before that), so a GPU is never handed out twice.
//! - **Restart from disk.** The actor has no state the journal does not hold: a restarted
//!   instance reopens the store, and recovery turns every attempt that was leased or running
//!   into a lost one (workers fence theirs, since their renewals are now refused). Workers
//!   register again when their renewal names an unknown worker.
//!
//! - **Retries.** A lost attempt is queued again while its job may be requeued; a failed one
//!   (non-zero exit, timeout) only while its `max_retries` last, after a backoff, held in a
//!   timer queue of its own (`delayed`) until it may be placed.
//! - **Retention.** Ended jobs beyond the policy (age, count) are pruned by a journaled record,
//!   a batch at a time on a timer; once it is durable the janitor removes their files.
//!
//! Commits normally take a journal slot without waiting ([`Store::try_commit`]). When the
//! journal's queue is full, the record waits in order in `deferred` and the actor blocks its
//! mailbox (`ctx.wait`) until the journal has room, so back-pressure reaches clients without
//! reordering or losing a change. When the journal's disk refuses writes (full, failing), the
//! store is read-only: submissions are refused with the reason, other records wait in order in
//! `deferred` without blocking the mailbox (reads, renewals and progress go on, and running
//! jobs keep their leases), and everything continues by itself once the journal is writable.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use cadre_cpu::IoEngine;
use cadre_supervisor::{CallbackRunner, SupervisedContext};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::backpressure::Hysteresis;
use crate::error::Error;
use crate::ids::{FencingToken, WorkerId};
use crate::job::{JobId, JobSpec, JobState};
use crate::lease::{LeaseTable, RenewOutcome};
use crate::metrics as m;
use crate::protocol::{
    Assign, Backpressure, Finished, ForgetWorker, GpuHealth, JobEvent, JobStalled, JobsProgressed,
    Kill, KillReason, NodeEvent, ProgressAck, ProgressFlush, Register, Renew, RenewReply,
    ResendWatches, Started, TaskEnd, TaskProgress, UnwatchJob, WatchJob, WorkerDead, WorkerLink,
};
use crate::sched::{
    CapacitySummary, Grant, Placer, PlacerConfig, QueuedJob, Waiting, WorkerCapacity,
};
use crate::store::{Durable, Outcome, Record, Recovery, Store, StoreOptions, Submission};

mod api;
mod commit;
mod jobs;
mod lost;
mod retention;
mod snapshot;
mod workers;

pub use api::{
    CancelJob, CancelOutcome, CloseStore, ClusterView, DepartedView, Drain, DrainNode, GetJob,
    JobView, ListJobs, NodeView, Nodes, Ready, Submit,
};
use commit::AfterDurable;
use jobs::{task_result, TaskResult};
pub use retention::{DiskProbe, KeptJobIds, KeptJobs, Retention};
pub use snapshot::{SnapshotDone, TakeSnapshot, STEP_ENTRIES};
pub use workers::EVENT_CAPACITY;

type Ctx = SupervisedContext<Scheduler>;
type Then = Box<dyn FnOnce(&mut Scheduler, &mut Ctx, Result<Durable, Error>)>;

/// How long a restarted scheduler keeps trying to reopen a journal whose previous owner is
/// still closing it.
const REOPEN_TRIES: u32 = 50;
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// What the scheduler needs; shared by every instance the supervisor creates.
pub struct SchedulerConfig {
    /// The journal's directory.
    pub journal_dir: PathBuf,
    /// The I/O engine the journal writes through.
    pub engine: IoEngine,
    /// Journal and snapshot options.
    pub store: StoreOptions,
    /// Placement options.
    pub placer: PlacerConfig,
    /// A lease's time to live.
    pub lease_ttl: Duration,
    /// Where job events go (the API's event stream subscribes here).
    pub events: broadcast::Sender<JobEvent>,
    /// A store opened before the tree started (so a node whose data directory is unusable
    /// fails at once, with the reason); the first instance takes it, a restarted one reopens.
    pub handoff: Mutex<Option<(Store, Recovery)>>,
    /// Extension callbacks: job state changes, lease expiries, worker deaths.
    pub callbacks: Option<CallbackRunner<NodeEvent>>,
    /// The health monitor, set once the tree is declared (the two refer to each other).
    pub health: OnceLock<HealthLink>,
    /// Why this node has no GPUs (no driver, no device), when it has none: shown with every
    /// GPU job that cannot be placed, and in the node's status.
    pub gpus_absent: Option<String>,
    /// How long ended jobs are kept.
    pub retention: Retention,
    /// Removes what pruned jobs left on disk (logs, scratch directories), after their
    /// `Pruned` record is durable; runs on the actor thread, so it must hand slow work off.
    pub janitor: Option<Janitor>,
    /// How long after start the first placement waits for a worker to register (placing with
    /// no worker would park every queued job, then bring each back). A registration ends it
    /// at once.
    pub registration_grace: Duration,
}

/// What the janitor is told about each pruned job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedJob {
    /// The job.
    pub job: JobId,
    /// Its number of tasks (each has its own logs).
    pub tasks: u32,
    /// Whether it was a command job (which leaves logs and a scratch directory behind).
    pub command: bool,
    /// The node each task of its last attempt ran on (where those are), by task; empty when
    /// not recorded (the scheduler's own node).
    pub nodes: Vec<String>,
}

/// Cleans up after pruned jobs (see [`SchedulerConfig::janitor`]).
pub type Janitor = Arc<dyn Fn(Vec<PrunedJob>) + Send + Sync>;

/// How the scheduler reaches the health monitor for job-level suspicion.
#[derive(Debug, Clone)]
pub struct HealthLink {
    /// Start watching a task.
    pub watch: Recipient<WatchJob>,
    /// Stop watching a task.
    pub unwatch: Recipient<UnwatchJob>,
    /// Tasks that made progress.
    pub progressed: Recipient<JobsProgressed>,
    /// A worker's registration is gone.
    pub forget: Recipient<ForgetWorker>,
    /// A worker registered: its registration is its first heartbeat, so the monitor expects
    /// the next ones even if none ever comes (a worker cut off right after registering).
    pub registered: Recipient<crate::protocol::Heartbeat>,
}

/// The scheduler actor (see the module comment).
pub struct Scheduler {
    config: Arc<SchedulerConfig>,
    core: Option<Core>,
    /// Records waiting to be durable, in journal order, each with what to do once it is.
    durables: VecDeque<(Durable, AfterDurable)>,
    /// Whether the one future that drains `durables` is spawned.
    draining_durables: bool,
}

struct Core {
    store: Option<Store>,
    deferred: VecDeque<(Record, Then)>,
    reschedule: bool,
    placer: Placer,
    leases: LeaseTable,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    next_worker: u64,
    active: FxHashMap<JobId, Active>,
    expiry: Option<(Instant, SpawnHandle)>,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
    pressure: Hysteresis,
    /// `cadre_jobs_running`, looked up once: it changes with every placement and end.
    running: metrics::Gauge,
    /// `cadre_jobs_finished_total{state}` for the common end, looked up once.
    succeeded: metrics::Counter,
    /// Whether the journal takes writes (see the module comment); when not, why.
    unwritable: Option<String>,
    /// Queued jobs waiting out a retry backoff, by when they may be placed.
    delayed: BTreeMap<(Instant, JobId), QueuedJob>,
    /// Where each delayed job waits, by job.
    delayed_at: FxHashMap<JobId, Instant>,
    /// The timer of the earliest delayed job.
    delay_timer: Option<(Instant, SpawnHandle)>,
    /// Until when the first placement waits for a worker to register.
    grace_until: Option<Instant>,
    /// Set by `CloseStore`: records that fail to become durable after it are the close's doing.
    closing: bool,
    /// The snapshot being written, if one is.
    snapshot: Option<snapshot::SnapshotRun>,
    /// Whether the data's disk was last found fuller than retention allows.
    disk_pressure: bool,
    /// Whether the last look at the data's disk failed (said once until it works again).
    disk_unreadable: bool,
    /// Nodes an operator drained (`cadre drain`): their workers take no new work, also when
    /// they register again (a reconnecting agent), until undrained. Journaled
    /// (`Record::Drained`): a restarted scheduler keeps them.
    drained_nodes: std::collections::BTreeSet<String>,
    /// The latest workers that died, newest last, at most [`DEPARTED_KEPT`]: `cadre nodes`
    /// shows them as dead until they register again.
    departed: std::collections::VecDeque<api::DepartedView>,
    /// The kept job ids as agents' sweeps take them, until the next pruning changes them.
    kept_ids: Option<Arc<retention::KeptJobs>>,
}

/// How many dead workers `cadre nodes` shows.
const DEPARTED_KEPT: usize = 64;

struct WorkerEntry {
    identity: crate::ids::WorkerIdentity,
    datacenter: String,
    labels: std::collections::BTreeMap<String, String>,
    /// When it last renewed (or registered), for `cadre nodes`.
    renewed_at: Instant,
    capacity: WorkerCapacity,
    link: WorkerLink,
    registered_ms: u64,
    address: Option<String>,
}

/// An attempt that holds leases: leased or running.
struct Active {
    attempt: u32,
    tasks: Vec<(Grant, FencingToken)>,
    left: usize,
    started: bool,
    end: Option<(JobState, Outcome)>,
    cancel: bool,
    lost: Option<String>,
    result: Option<serde_json::Value>,
    /// The health monitor watches its tasks' progress (the job has a progress deadline).
    watched: bool,
    /// What became of its tasks' output, when not all of it was kept.
    logs: Option<crate::store::LogsNote>,
}

/// The instant, on this process's clock, a job accepted at `submitted_ms` (wall clock) has
/// waited since: a restart keeps the age a queued job earned toward aging, so a low-priority job
/// that was about to overtake newer ones does not go back to the end of the line (as Slurm's
/// age factor counts from submission). A submission time ahead of the wall clock counts as now.
fn queued_since(now: Instant, wall_ms: u64, submitted_ms: u64) -> Instant {
    let waited = Duration::from_millis(wall_ms.saturating_sub(submitted_ms));
    match now.checked_sub(waited) {
        Some(at) => at,
        // Only past the clock's range (centuries back on Linux): the job counts as queued now,
        // behind older ones of its priority, which keep their places by id.
        None => now,
    }
}

use crate::clock::now_ms;

/// Delivers what the scheduler decided for a worker, past a full mailbox (a full mailbox is a
/// busy worker, not a dead one, and the decision is already durable); `false` only when the
/// mailbox is closed.
fn deliver<M>(to: &Recipient<M>, msg: M) -> bool
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    match to.try_send(msg) {
        Ok(()) => true,
        Err(SendError::Full(msg)) => {
            to.do_send(msg);
            true
        }
        Err(SendError::Closed(_)) => false,
    }
}

/// Gives a submission's jobs their ids: consecutive from the table's next id. Done where the
/// record enters the store, so ids follow journal order whatever waited before.
fn number(store: &Store, record: &mut Record) {
    if let Record::Submitted { jobs } = record {
        let first = store.table().next_id().0;
        for (i, s) in jobs.iter_mut().enumerate() {
            s.job = JobId(first + i as u64);
        }
    }
}

fn refuse(op: &'static str, reason: &'static str) {
    metrics::counter!(m::SCHEDULER_REFUSALS, "op" => op, "reason" => reason).increment(1);
}

impl Scheduler {
    /// A scheduler that opens (or takes over) its store when it starts.
    pub fn new(config: Arc<SchedulerConfig>) -> Scheduler {
        Scheduler {
            config,
            core: None,
            durables: VecDeque::new(),
            draining_durables: false,
        }
    }

    fn core(&mut self) -> Result<&mut Core, Error> {
        self.core.as_mut().ok_or_else(|| Error::Unavailable {
            reason: "the scheduler is still opening its journal".to_owned(),
        })
    }

    fn install(&mut self, ctx: &mut Ctx, store: Store, recovery: Recovery) {
        let now = Instant::now();
        let wall_ms = now_ms();
        let mut placer = Placer::new(self.config.placer, now);
        let floor = store.table().token_high_water();
        let mut queued = 0usize;
        let mut delayed = Vec::new();
        for (id, entry) in store.table().iter() {
            if entry.status.state == JobState::Queued {
                queued += 1;
                let q = QueuedJob {
                    job: *id,
                    priority: entry.spec.priority,
                    resources: entry.spec.resources,
                    gang: entry.spec.gang.max(1),
                    // A first attempt keeps the age it earned since submission; a retry
                    // (including one the restart itself caused) queues afresh, as it does
                    // while the node runs, so an earlier attempt's run time is no age.
                    enqueued_at: if entry.status.attempt > 1 {
                        now
                    } else {
                        queued_since(now, wall_ms, entry.submitted_ms)
                    },
                };
                if entry.retry_at_ms > wall_ms {
                    // Still in its backoff after a failure: it waits out what is left.
                    let left = Duration::from_millis(entry.retry_at_ms - wall_ms);
                    delayed.push((q, now + left));
                } else {
                    placer.enqueue(q);
                }
            }
        }
        tracing::info!(jobs = recovery.jobs, queued, requeued = recovery.requeued.len(),
            failed = recovery.failed.len(), records = recovery.records, snapshot = recovery.snapshot,
            token_floor = %floor, path = ctx.path(), "scheduler ready");
        let health = store.health();
        let unwritable = store.unwritable_reason();
        metrics::gauge!(m::STORE_WRITABLE).set(if unwritable.is_none() { 1.0 } else { 0.0 });
        metrics::gauge!(m::JOBS_KEPT_ENDED).set(store.table().ended_len() as f64);
        let drained_nodes = store.table().drained().clone();
        if !drained_nodes.is_empty() {
            tracing::info!(nodes = ?drained_nodes, "drained nodes recovered: they take no new work");
        }
        self.core = Some(Core {
            store: Some(store),
            deferred: VecDeque::new(),
            reschedule: false,
            placer,
            leases: LeaseTable::new(self.config.lease_ttl, floor),
            workers: BTreeMap::new(),
            next_worker: 1,
            active: FxHashMap::default(),
            expiry: None,
            draining: false,
            drained: Vec::new(),
            pressure: Hysteresis::new(),
            running: metrics::gauge!(m::JOBS_RUNNING),
            succeeded: metrics::counter!(m::JOBS_FINISHED, "state" => JobState::Succeeded.as_str()),
            unwritable,
            delayed: BTreeMap::new(),
            delayed_at: FxHashMap::default(),
            delay_timer: None,
            grace_until: Some(now + self.config.registration_grace),
            closing: false,
            snapshot: None,
            disk_pressure: false,
            disk_unreadable: false,
            drained_nodes,
            departed: std::collections::VecDeque::new(),
            kept_ids: None,
        });
        metrics::gauge!(m::JOBS_RUNNING).set(0.0);
        metrics::gauge!(m::WORKERS).set(0.0);
        // The records that made interrupted jobs lost: nothing is said of those jobs before
        // they are durable.
        for durable in recovery.pending {
            self.after_durable_do(ctx, durable, AfterDurable::Nothing);
        }
        for (q, at) in delayed {
            self.delay(ctx, q, at);
        }
        self.watch_journal(ctx, health);
        metrics::gauge!(m::RETENTION_DISK_PRESSURE).set(0.0);
        let every = self.config.retention.every;
        ctx.run_interval(every, |act, ctx| act.prune(ctx));
        let grace = self.config.registration_grace;
        ctx.run_later(grace, |act, ctx| {
            if let Some(core) = act.core.as_mut() {
                core.grace_until = None;
            }
            act.schedule(ctx);
        });
    }

    fn emit(&self, job: JobId, state: JobState, attempt: u32) {
        // Nobody to tell (no callbacks, no stream subscriber): no event to build, no clock read.
        if self.config.callbacks.is_none() && self.config.events.receiver_count() == 0 {
            return;
        }
        let event = JobEvent {
            job,
            state,
            attempt,
            at_ms: now_ms(),
            progress: None,
        };
        if let Some(callbacks) = &self.config.callbacks {
            callbacks.emit(NodeEvent::JobState {
                change: event.clone(),
            });
        }
        self.publish(event);
    }

    fn publish(&self, event: JobEvent) {
        // No subscriber is the normal case when nobody watches the stream.
        if self.config.events.receiver_count() > 0 && self.config.events.send(event).is_err() {
            tracing::debug!("job event had no subscriber left");
        }
    }

    fn unwatch(&self, tokens: impl IntoIterator<Item = FencingToken>) {
        let Some(health) = self.config.health.get() else {
            return;
        };
        for token in tokens {
            if let Err(error) = health.unwatch.try_send(UnwatchJob { token }) {
                tracing::warn!(lease = %token, %error, "health monitor did not take an unwatch");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "unwatch").increment(1);
            }
        }
    }
}

impl Actor for Scheduler {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        let handed = match self.config.handoff.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((store, recovery)) = handed {
            self.install(ctx, store, recovery);
            self.schedule(ctx);
            return;
        }
        let config = Arc::clone(&self.config);
        let path = ctx.path().to_owned();
        ctx.wait(
            async move {
                let mut tries = 0;
                loop {
                    tries += 1;
                    match Store::open(
                        &config.journal_dir,
                        config.engine.clone(),
                        config.store.clone(),
                    )
                    .await
                    {
                        Ok(opened) => return Ok(opened),
                        Err(error) if tries < REOPEN_TRIES => {
                            tracing::debug!(%error, tries, path, "reopening the journal: retrying");
                            tokio::time::sleep(REOPEN_PAUSE).await;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((store, recovery)) => {
                    act.install(ctx, store, recovery);
                    act.schedule(ctx);
                }
                Err(error) => ctx.fail(format!("cannot reopen the job journal: {error}")),
            }),
        );
    }
}

impl Scheduler {
    /// A worker's link to the scheduler at `addr` (in-process).
    pub fn link(
        addr: &Addr<Scheduler>,
        target: impl Into<String>,
    ) -> crate::protocol::SchedulerLink {
        crate::protocol::SchedulerLink {
            target: target.into(),
            register: addr.clone().recipient(),
            renew: addr.clone().recipient(),
            started: addr.clone().recipient(),
            finished: addr.clone().recipient(),
            progress: addr.clone().recipient(),
        }
    }
}
