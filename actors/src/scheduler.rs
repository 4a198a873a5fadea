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
//! Commits normally take a journal slot without waiting ([`Store::try_commit`]). When the
//! journal's queue is full, the record waits in order in `deferred` and the actor blocks its
//! mailbox (`ctx.wait`) until the journal has room, so back-pressure reaches clients without
//! reordering or losing a change.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    Kill, KillReason, NodeEvent, ProgressAck, ProgressFlush, Register, Renew, RenewReply, Started,
    TaskEnd, TaskProgress, UnwatchJob, WatchJob, WorkerDead, WorkerLink,
};
use crate::sched::{
    CapacitySummary, Grant, Placer, PlacerConfig, QueuedJob, Waiting, WorkerCapacity,
};
use crate::store::{Durable, Outcome, Record, Recovery, Store, StoreOptions, Submission};

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
}

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

/// What to do once a record is durable. The common ends are plain data, so the hot path
/// allocates no closure per record.
enum AfterDurable {
    /// Publish a state change.
    Emit {
        job: JobId,
        state: JobState,
        attempt: u32,
    },
    /// Publish the lease and send the job to its workers.
    Assign { job: JobId, attempt: u32 },
    /// Anything else.
    Run(Continuation),
}

/// A continuation that needs a closure.
type Continuation = Box<dyn FnOnce(&mut Scheduler, &mut Ctx)>;

impl AfterDurable {
    fn run(self, act: &mut Scheduler, ctx: &mut Ctx) {
        match self {
            AfterDurable::Emit {
                job,
                state,
                attempt,
            } => act.emit(job, state, attempt),
            AfterDurable::Assign { job, attempt } => {
                act.emit(job, JobState::Leased, attempt);
                act.assign(ctx, job);
            }
            AfterDurable::Run(then) => then(act, ctx),
        }
    }
}

/// Awaits the records in `Scheduler::durables` in order, running each one's continuation.
/// The journal makes records durable in the order they were queued, so awaiting the oldest
/// first loses nothing, and one future (polled only for the oldest record) replaces one
/// spawned future per record, which the actor's context would poll all of on every wake.
struct DrainDurables;

impl actix::fut::ActorFuture<Scheduler> for DrainDurables {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut Scheduler,
        ctx: &mut Ctx,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        loop {
            let Some((front, _)) = act.durables.front_mut() else {
                act.draining_durables = false;
                return Poll::Ready(());
            };
            let result = match std::future::Future::poll(std::pin::Pin::new(front), task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result,
            };
            let Some((_, then)) = act.durables.pop_front() else {
                continue;
            };
            match result {
                Ok(()) => then.run(act, ctx),
                Err(error) => {
                    tracing::error!(%error, path = ctx.path(),
                        "a job record did not become durable; the scheduler restarts to recover");
                    ctx.fail(format!("journal write failed: {error}"));
                    act.durables.clear();
                    act.draining_durables = false;
                    return Poll::Ready(());
                }
            }
        }
    }
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
}

struct WorkerEntry {
    name: String,
    capacity: WorkerCapacity,
    link: WorkerLink,
    registered_ms: u64,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
        for (id, entry) in store.table().iter() {
            if entry.status.state == JobState::Queued {
                queued += 1;
                placer.enqueue(QueuedJob {
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
                });
            }
        }
        tracing::info!(jobs = recovery.jobs, queued, requeued = recovery.requeued.len(),
            failed = recovery.failed.len(), records = recovery.records, snapshot = recovery.snapshot,
            token_floor = %floor, path = ctx.path(), "scheduler ready");
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
        });
        metrics::gauge!(m::JOBS_RUNNING).set(0.0);
        metrics::gauge!(m::WORKERS).set(0.0);
    }

    /// Commits `record` and hands the result to `then`: at once when the journal has room, in
    /// order after the records before it otherwise.
    fn commit<F>(&mut self, ctx: &mut Ctx, record: Record, then: F)
    where
        F: FnOnce(&mut Scheduler, &mut Ctx, Result<Durable, Error>) + 'static,
    {
        let Some(core) = self.core.as_mut() else {
            then(
                self,
                ctx,
                Err(Error::Unavailable {
                    reason: "the scheduler is not ready".to_owned(),
                }),
            );
            return;
        };
        if !core.deferred.is_empty() {
            core.deferred.push_back((record, Box::new(then)));
            return;
        }
        let Some(store) = core.store.as_mut() else {
            core.deferred.push_back((record, Box::new(then)));
            return;
        };
        let mut record = record;
        number(store, &mut record);
        match store.try_commit(record) {
            Ok(result) => {
                let failed = result.is_err();
                then(self, ctx, result);
                if failed {
                    self.check_store(ctx);
                } else {
                    self.maybe_compact(ctx);
                }
            }
            Err(record) => {
                core.deferred.push_back((record, Box::new(then)));
                self.wait_for_journal(ctx);
            }
        }
    }

    /// Blocks the mailbox until the journal takes the first deferred record, then commits the
    /// rest in order (waiting again if it fills up).
    fn wait_for_journal(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let (Some(mut store), Some((record, then))) =
            (core.store.take(), core.deferred.pop_front())
        else {
            return;
        };
        tracing::debug!(
            path = ctx.path(),
            "journal queue full: the scheduler waits for room"
        );
        let mut record = record;
        ctx.wait(
            async move {
                number(&store, &mut record);
                let result = store.commit(record).await;
                (store, result)
            }
            .into_actor(self)
            .map(|(store, result), act, ctx| {
                if let Some(core) = act.core.as_mut() {
                    core.store = Some(store);
                }
                then(act, ctx, result);
                act.drain_deferred(ctx);
            }),
        );
    }

    fn drain_deferred(&mut self, ctx: &mut Ctx) {
        loop {
            let Some(core) = self.core.as_mut() else {
                return;
            };
            let Some(store) = core.store.as_mut() else {
                return;
            };
            let Some((mut record, then)) = core.deferred.pop_front() else {
                break;
            };
            number(store, &mut record);
            match store.try_commit(record) {
                Ok(result) => then(self, ctx, result),
                Err(record) => {
                    core.deferred.push_front((record, then));
                    self.wait_for_journal(ctx);
                    return;
                }
            }
        }
        self.check_store(ctx);
        self.maybe_compact(ctx);
        if self.core.as_ref().is_some_and(|c| c.reschedule) {
            self.schedule(ctx);
        }
    }

    /// Writes a snapshot once enough records have accumulated since the last one, so start-up
    /// reads the snapshot and a bounded tail of records. The mailbox waits meanwhile; commits
    /// made by continuations wait in `deferred`, in order.
    fn maybe_compact(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let due =
            core.deferred.is_empty() && core.store.as_ref().is_some_and(Store::compaction_due);
        if !due {
            return;
        }
        let Some(mut store) = core.store.take() else {
            return;
        };
        let jobs = store.table().len();
        ctx.wait(
            async move {
                let started = Instant::now();
                let result = store.compact().await;
                (store, result, started.elapsed())
            }
            .into_actor(self)
            .map(move |(store, result, took), act, ctx| {
                if let Some(core) = act.core.as_mut() {
                    core.store = Some(store);
                }
                match result {
                    Ok(()) => tracing::info!(jobs, took_ms = took.as_millis() as u64, path = ctx.path(),
                        "job store snapshot written"),
                    // The store counted it and refuses everything now: the restart recovers.
                    Err(error) => tracing::error!(jobs, %error, path = ctx.path(), "job store snapshot failed"),
                }
                act.check_store(ctx);
                act.drain_deferred(ctx);
            }),
        );
    }

    /// A store that has failed accepts nothing more: the actor fails, and its restart reopens
    /// the journal and recovers from what is on disk.
    fn check_store(&mut self, ctx: &mut Ctx) {
        let failed = self
            .core
            .as_ref()
            .and_then(|c| c.store.as_ref())
            .is_some_and(Store::has_failed);
        if failed {
            ctx.fail("the job store failed; restarting to recover from the journal");
        }
    }

    /// Runs `then` once `durable` resolves; a record that did not become durable fails the
    /// actor (see [`Scheduler::check_store`]).
    fn after_durable(
        &mut self,
        ctx: &mut Ctx,
        durable: Durable,
        then: impl FnOnce(&mut Scheduler, &mut Ctx) + 'static,
    ) {
        self.after_durable_do(ctx, durable, AfterDurable::Run(Box::new(then)));
    }

    /// [`Scheduler::after_durable`] for the common ends, which need no closure.
    fn after_durable_do(&mut self, ctx: &mut Ctx, durable: Durable, then: AfterDurable) {
        self.durables.push_back((durable, then));
        if !self.draining_durables {
            self.draining_durables = true;
            ctx.spawn(DrainDurables);
        }
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

    /// Places what fits, one decision at a time, and sends each placement to its workers once
    /// its lease record is durable.
    fn schedule(&mut self, ctx: &mut Ctx) {
        loop {
            let Some(core) = self.core.as_mut() else {
                return;
            };
            if core.store.is_none() || !core.deferred.is_empty() {
                core.reschedule = true;
                return;
            }
            core.reschedule = false;
            if core.draining {
                return;
            }
            let now = Instant::now();
            let Some(placement) = core.placer.decide(now) else {
                break;
            };
            let job = placement.job;
            let Some(attempt) = core
                .store
                .as_ref()
                .and_then(|s| s.table().get(job))
                .map(|e| e.status.attempt)
            else {
                tracing::error!(job = %job, "placed a job the table does not hold; released");
                refuse("place", "unknown_job");
                core.placer.release(job);
                continue;
            };
            let mut tasks = Vec::with_capacity(placement.grants.len());
            let mut refused = None;
            for grant in placement.grants {
                match core
                    .leases
                    .grant(job, attempt, grant.task, grant.worker, now)
                {
                    Ok(lease) => tasks.push((grant, lease.token)),
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            if let Some(error) = refused {
                // The lease table logged and counted it; the job cannot run, so it fails.
                core.leases.release_job(job);
                core.placer.release(job);
                self.end_unstarted(ctx, job, attempt, error.to_string());
                continue;
            }
            let record = Record::Leased {
                job,
                attempt,
                grants: tasks.iter().map(|(g, _)| g.clone()).collect(),
                tokens: tasks.iter().map(|(_, t)| *t).collect(),
            };
            core.active.insert(
                job,
                Active {
                    attempt,
                    left: tasks.len(),
                    tasks,
                    started: false,
                    end: None,
                    cancel: false,
                    lost: None,
                    result: None,
                    watched: false,
                },
            );
            core.running.set(core.active.len() as f64);
            self.commit(ctx, record, move |act, ctx, result| match result {
                Ok(durable) => {
                    act.after_durable_do(ctx, durable, AfterDurable::Assign { job, attempt })
                }
                Err(error) => {
                    tracing::error!(job = %job, %error, "lease record refused; job released");
                    if let Some(core) = act.core.as_mut() {
                        core.active.remove(&job);
                        core.leases.release_job(job);
                        core.placer.release(job);
                    }
                }
            });
        }
        self.arm_expiry(ctx);
    }

    /// A job that was placed but could not get its leases fails with `reason`.
    fn end_unstarted(&mut self, ctx: &mut Ctx, job: JobId, attempt: u32, reason: String) {
        let outcome = Outcome {
            error: Some(reason),
            ..Outcome::default()
        };
        self.commit(
            ctx,
            Record::Leased {
                job,
                attempt,
                grants: Vec::new(),
                tokens: Vec::new(),
            },
            move |act, ctx, result| {
                if let Err(error) = result {
                    tracing::error!(job = %job, %error, "could not record a lease refusal");
                    return;
                }
                act.commit(
                    ctx,
                    Record::Ended {
                        job,
                        attempt,
                        state: JobState::Failed,
                        outcome,
                    },
                    move |act, ctx, result| {
                        act.finished_record(ctx, job, attempt, JobState::Failed, result)
                    },
                );
            },
        );
    }

    /// Sends each task of a durable placement to its worker.
    fn assign(&mut self, ctx: &mut Ctx, job: JobId) {
        let ttl = self.config.lease_ttl;
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(active) = core.active.get(&job) else {
            return; // lost before its lease record was durable
        };
        if active.cancel {
            // Cancelled before its lease record was durable: it never starts.
            self.end_attempt(ctx, job);
            return;
        }
        let Some(spec) = core
            .store
            .as_ref()
            .and_then(|s| s.table().get(job))
            .map(|e| e.spec.clone())
        else {
            // The store is busy with a waited commit; this runs again when it is back.
            let attempt = active.attempt;
            ctx.run_later(Duration::from_millis(1), move |act, ctx| {
                if act
                    .core
                    .as_ref()
                    .and_then(|c| c.active.get(&job))
                    .is_some_and(|a| a.attempt == attempt)
                {
                    act.assign(ctx, job);
                }
            });
            return;
        };
        let mut unreachable = Vec::new();
        // One copy of the spec per task; the last task takes the table's copy itself.
        let specs = std::iter::repeat_n(spec, active.tasks.len());
        for ((grant, token), spec) in active.tasks.iter().zip(specs) {
            let msg = Assign {
                job,
                attempt: active.attempt,
                task: grant.task,
                token: *token,
                spec,
                grant: grant.clone(),
                lease_ttl: ttl,
            };
            match core.workers.get(&grant.worker) {
                Some(w) => {
                    if !deliver(&w.link.assign, msg) {
                        tracing::error!(job = %job, worker = %grant.worker, lease = %token,
                            "assignment not delivered: the worker's mailbox is closed; it is treated as dead");
                        metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "assign").increment(1);
                        unreachable.push(grant.worker);
                    }
                }
                None => unreachable.push(grant.worker),
            }
        }
        for worker in unreachable {
            self.worker_lost(ctx, worker, "its mailbox refused an assignment".to_owned());
        }
    }

    fn kill_tasks(&mut self, job: JobId, reason: KillReason, skip: Option<FencingToken>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(active) = core.active.get(&job) else {
            return;
        };
        for (grant, token) in &active.tasks {
            if Some(*token) == skip {
                continue;
            }
            if let Some(w) = core.workers.get(&grant.worker) {
                let kill = Kill {
                    job,
                    token: *token,
                    reason,
                };
                if !deliver(&w.link.kill, kill) {
                    tracing::error!(job = %job, worker = %grant.worker, lease = %token,
                        "kill not delivered: the worker's mailbox is closed; the lease runs out instead");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "kill").increment(1);
                }
            }
        }
    }

    /// Re-arms the lease expiry timer for the earliest deadline.
    fn arm_expiry(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(next) = core.leases.next_expiry() else {
            if let Some((_, handle)) = core.expiry.take() {
                ctx.cancel_future(handle);
            }
            return;
        };
        if let Some((at, handle)) = core.expiry {
            if at <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            if let Some(core) = act.core.as_mut() {
                core.expiry = None;
            }
            act.expire(ctx);
        });
        core.expiry = Some((next, handle));
    }

    /// Expires leases past their deadline now, before a worker's message is checked against
    /// them (the timer may not have fired yet): a message that comes too late is refused.
    fn reap_overdue(&mut self, ctx: &mut Ctx) {
        let overdue = self
            .core
            .as_ref()
            .and_then(|c| c.leases.next_expiry())
            .is_some_and(|at| at <= Instant::now());
        if overdue {
            self.expire(ctx);
        }
    }

    fn expire(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let expired = core.leases.expire_due(Instant::now());
        let mut jobs: Vec<JobId> = expired.iter().map(|l| l.job).collect();
        jobs.dedup();
        for lease in &expired {
            tracing::warn!(job = %lease.job, worker = %lease.worker, lease = %lease.token,
                attempt = lease.attempt, "lease expired unrenewed: the attempt is lost");
            if let Some(callbacks) = &self.config.callbacks {
                callbacks.emit(NodeEvent::LeaseExpired {
                    job: lease.job,
                    worker: lease.worker,
                    token: lease.token,
                });
            }
        }
        for job in jobs {
            self.lose(ctx, job, "its lease expired unrenewed".to_owned());
        }
        self.arm_expiry(ctx);
    }

    /// The attempt of `job` is lost: its other tasks are told to stop, its leases and
    /// reservation go, and it is queued again or failed (per its retries), durably.
    fn lose(&mut self, ctx: &mut Ctx, job: JobId, reason: String) {
        self.kill_tasks(job, KillReason::LeaseLost, None);
        let Some(active) = self.take_active(job) else {
            return;
        };
        let attempt = active.attempt;
        let cancel = active.cancel;
        if active.watched {
            self.unwatch(active.tasks.iter().map(|(_, t)| *t));
        }
        if cancel {
            // The user asked for the job to end: it ends cancelled, whatever its retries (its
            // task is gone: the worker confirmed it, fenced itself, or died).
            tracing::warn!(job = %job, attempt, %reason,
                "cancelled job's attempt ended without its worker's confirmation");
            self.commit(
                ctx,
                Record::Ended {
                    job,
                    attempt,
                    state: JobState::Cancelled,
                    outcome: Outcome {
                        error: Some(format!(
                            "cancelled; its task was not confirmed stopped: {reason}"
                        )),
                        ..Outcome::default()
                    },
                },
                move |act, ctx, result| {
                    act.finished_record(ctx, job, attempt, JobState::Cancelled, result);
                    act.schedule(ctx);
                },
            );
            return;
        }
        metrics::counter!(m::JOBS_LOST).increment(1);
        tracing::warn!(job = %job, attempt, %reason, "attempt lost");
        self.commit(
            ctx,
            Record::Lost {
                job,
                attempt,
                reason,
            },
            move |act, ctx, result| {
                let durable = match result {
                    Ok(d) => d,
                    Err(error) => {
                        tracing::error!(job = %job, attempt, %error, "could not record a lost attempt");
                        return;
                    }
                };
                let state = act
                    .core
                    .as_ref()
                    .and_then(|c| c.store.as_ref())
                    .and_then(|s| s.table().get(job))
                    .map(|e| (e.status.state, e.status.attempt, e.spec.priority, e.spec.resources, e.spec.gang));
                act.after_durable(ctx, durable, move |act, _| {
                    if let Some((state, attempt, ..)) = state {
                        act.emit(job, state, attempt);
                    }
                });
                match state {
                    Some((JobState::Queued, _, priority, resources, gang)) => {
                        if let Some(core) = act.core.as_mut() {
                            core.placer.enqueue(QueuedJob {
                                job,
                                priority,
                                resources,
                                gang: gang.max(1),
                                enqueued_at: Instant::now(),
                            });
                        }
                        act.schedule(ctx);
                    }
                    Some((JobState::Failed, ..)) => {
                        metrics::counter!(m::JOBS_FINISHED, "state" => "failed").increment(1);
                        act.schedule(ctx);
                    }
                    _ => act.schedule(ctx),
                }
            },
        );
    }

    /// After an `Ended` record: count it, tell subscribers once durable, wake drains.
    fn finished_record(
        &mut self,
        ctx: &mut Ctx,
        job: JobId,
        attempt: u32,
        state: JobState,
        result: Result<Durable, Error>,
    ) {
        match result {
            Ok(durable) => {
                match self.core.as_ref() {
                    Some(core) if state == JobState::Succeeded => core.succeeded.increment(1),
                    _ => {
                        metrics::counter!(m::JOBS_FINISHED, "state" => state.as_str()).increment(1)
                    }
                }
                self.after_durable_do(
                    ctx,
                    durable,
                    AfterDurable::Emit {
                        job,
                        state,
                        attempt,
                    },
                );
            }
            Err(error) => {
                tracing::error!(job = %job, attempt, state = state.as_str(), %error,
                    "could not record the end of a job");
            }
        }
        self.wake_drained();
    }

    fn wake_drained(&mut self) {
        if let Some(core) = self.core.as_mut() {
            if core.draining && core.active.is_empty() {
                for tx in core.drained.drain(..) {
                    if tx.send(()).is_err() {
                        tracing::debug!("drain waiter left before the node drained");
                    }
                }
            }
        }
    }

    /// A worker is gone: every lease it held is revoked at once, leased and running alike.
    fn worker_lost(&mut self, ctx: &mut Ctx, worker: WorkerId, reason: String) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        if core.workers.remove(&worker).is_none() {
            return;
        }
        metrics::counter!(m::WORKER_DEATHS).increment(1);
        metrics::gauge!(m::WORKERS).set(core.workers.len() as f64);
        if let Some(health) = self.config.health.get() {
            if let Err(error) = health.forget.try_send(ForgetWorker { worker }) {
                tracing::warn!(worker = %worker, %error,
                    "health monitor did not take a forget: it may declare this worker dead again");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "forget").increment(1);
            }
        }
        let revoked = core.leases.revoke_worker(worker);
        let mut jobs: Vec<JobId> = revoked.iter().map(|l| l.job).collect();
        match core.placer.remove_worker(worker) {
            Ok(held) => jobs.extend(held),
            Err(error) => {
                tracing::error!(worker = %worker, %error, "worker missing from the capacity table");
            }
        }
        jobs.sort_unstable();
        jobs.dedup();
        tracing::error!(worker = %worker, %reason, leases = revoked.len(), jobs = jobs.len(),
            "worker dead: its leases are revoked and its jobs lost");
        if let Some(callbacks) = &self.config.callbacks {
            callbacks.emit(NodeEvent::WorkerDied {
                worker,
                reason: reason.clone(),
            });
        }
        for job in jobs {
            self.lose(ctx, job, format!("worker {worker} died: {reason}"));
        }
        self.schedule(ctx);
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

/// API: accept validated specs. Answers with their ids once the submission is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<JobId>, Error>")]
pub struct Submit {
    /// The specs, already validated at the edge.
    pub specs: Vec<JobSpec>,
}

impl Handler<Submit> for Scheduler {
    type Result = ResponseFuture<Result<Vec<JobId>, Error>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Ctx) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let refused = match self.core() {
            Err(e) => Some(e),
            Ok(core) if core.draining => Some(Error::Unavailable {
                reason: "the node is shutting down and accepts no new jobs".to_owned(),
            }),
            Ok(_) => None,
        };
        if let Some(error) = refused {
            refuse("submit", "unavailable");
            return Box::pin(async move { Err(error) });
        }
        let count = msg.specs.len() as u64;
        let shapes: Vec<(i16, crate::job::Resources, u32)> = msg
            .specs
            .iter()
            .map(|s| (s.priority, s.resources, s.gang.max(1)))
            .collect();
        let submitted_ms = now_ms();
        // Ids are numbered when the record reaches the store (see `number`), so submissions
        // that wait for journal room keep consecutive ids in journal order.
        let record = Record::Submitted {
            jobs: msg
                .specs
                .into_iter()
                .map(|spec| Submission {
                    job: JobId(0),
                    spec,
                    submitted_ms,
                })
                .collect(),
        };
        self.commit(ctx, record, move |act, ctx, result| {
            let durable = match result {
                Ok(d) => d,
                Err(error) => {
                    refuse("submit", "store");
                    if tx.send(Err(error)).is_err() {
                        tracing::debug!("submitter left before its refusal");
                    }
                    return;
                }
            };
            let next = act
                .core
                .as_ref()
                .and_then(|c| c.store.as_ref())
                .map_or(0, |s| s.table().next_id().0);
            let first = next.saturating_sub(count);
            let ids: Vec<JobId> = (first..next).map(JobId).collect();
            if let Some(core) = act.core.as_mut() {
                let now = Instant::now();
                for (id, (priority, resources, gang)) in ids.iter().zip(shapes) {
                    core.placer.enqueue(QueuedJob {
                        job: *id,
                        priority,
                        resources,
                        gang,
                        enqueued_at: now,
                    });
                }
            }
            act.after_durable(ctx, durable, move |act, _| {
                metrics::counter!(m::JOBS_SUBMITTED).increment(ids.len() as u64);
                for id in &ids {
                    act.emit(*id, JobState::Queued, 1);
                }
                if tx.send(Ok(ids)).is_err() {
                    tracing::debug!("submitter left before its jobs were durable");
                }
            });
            act.schedule(ctx);
        });
        Box::pin(async move {
            rx.await.map_err(|_| Error::Mailbox {
                actor: "scheduler",
                reason: "the scheduler restarted before the submission was durable; it may or may not have been accepted".to_owned(),
            })?
        })
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Its attempt (1 for the first run).
    pub attempt: u32,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// Why it has not started yet, while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// Where its tasks run, while leased or running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// How it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why its last attempt was lost, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<String>,
    /// The spec as submitted.
    pub spec: JobSpec,
}

impl Scheduler {
    fn view(&self, job: JobId) -> Option<JobView> {
        let core = self.core.as_ref()?;
        let entry = core.store.as_ref()?.table().get(job)?;
        Some(JobView {
            id: job,
            name: entry.spec.name.clone(),
            state: entry.status.state,
            attempt: entry.status.attempt,
            submitted_ms: entry.submitted_ms,
            waiting: if entry.status.state == JobState::Queued {
                match (core.placer.waiting(job), &self.config.gpus_absent) {
                    (Some(Waiting::Unplaceable { reason }), Some(absent))
                        if entry.spec.resources.gpus > 0 =>
                    {
                        Some(Waiting::Unplaceable {
                            reason: format!("{reason}; this node has no GPUs: {absent}"),
                        })
                    }
                    (waiting, _) => waiting,
                }
            } else {
                None
            },
            grants: entry.grants.clone(),
            outcome: entry.outcome.clone(),
            last_loss: entry.last_loss.clone(),
            spec: entry.spec.clone(),
        })
    }
}

/// API: one job.
#[derive(Debug, Message)]
#[rtype(result = "Result<JobView, Error>")]
pub struct GetJob(pub JobId);

impl Handler<GetJob> for Scheduler {
    type Result = Result<JobView, Error>;

    fn handle(&mut self, msg: GetJob, _: &mut Ctx) -> Self::Result {
        self.core()?;
        self.view(msg.0).ok_or(Error::UnknownJob { job: msg.0 })
    }
}

/// API: a page of jobs in id order, optionally in one state, after `after`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<JobView>, Error>")]
pub struct ListJobs {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs with a larger id.
    pub after: Option<JobId>,
    /// At most this many.
    pub limit: usize,
}

impl Handler<ListJobs> for Scheduler {
    type Result = Result<Vec<JobView>, Error>;

    fn handle(&mut self, msg: ListJobs, _: &mut Ctx) -> Self::Result {
        let core = self.core()?;
        let Some(store) = core.store.as_ref() else {
            return Err(Error::Unavailable {
                reason: "the journal is busy; retry".to_owned(),
            });
        };
        let ids: Vec<JobId> = store
            .table()
            .page(msg.state, msg.after, msg.limit)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        Ok(ids.into_iter().filter_map(|id| self.view(id)).collect())
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled (durably).
    Cancelled,
    /// The job is running; its tasks are being stopped and it ends as cancelled.
    Cancelling,
}

/// API: cancel a job.
#[derive(Debug, Message)]
#[rtype(result = "Result<CancelOutcome, Error>")]
pub struct CancelJob(pub JobId);

impl Handler<CancelJob> for Scheduler {
    type Result = ResponseFuture<Result<CancelOutcome, Error>>;

    fn handle(&mut self, msg: CancelJob, ctx: &mut Ctx) -> Self::Result {
        let job = msg.0;
        let state = match self.core() {
            Err(e) => return Box::pin(async move { Err(e) }),
            Ok(core) => core
                .store
                .as_ref()
                .and_then(|s| s.table().get(job))
                .map(|e| (e.status.state, e.status.attempt)),
        };
        let result = match state {
            None => Err(Error::UnknownJob { job }),
            Some((state, _)) if state.is_terminal() => Err(Error::Conflict {
                job,
                reason: format!("it has already ended ({state})"),
            }),
            Some((JobState::Queued, attempt)) => {
                let (tx, rx) = oneshot::channel();
                if let Some(core) = self.core.as_mut() {
                    core.placer.cancel(job);
                }
                self.commit(
                    ctx,
                    Record::Ended {
                        job,
                        attempt,
                        state: JobState::Cancelled,
                        outcome: Outcome::default(),
                    },
                    move |act, ctx, result| {
                        let reply = match &result {
                            Ok(_) => Ok(()),
                            Err(e) => Err(e.to_string()),
                        };
                        if let Ok(durable) = result {
                            metrics::counter!(m::JOBS_FINISHED, "state" => "cancelled").increment(1);
                            act.after_durable(ctx, durable, move |act, _| {
                                act.emit(job, JobState::Cancelled, attempt);
                                if tx.send(Ok(CancelOutcome::Cancelled)).is_err() {
                                    tracing::debug!(job = %job, "canceller left before the cancel was durable");
                                }
                            });
                        } else if let Err(reason) = reply {
                            tracing::error!(job = %job, %reason, "could not record a cancel");
                            if tx.send(Err(Error::Rejected { reason })).is_err() {
                                tracing::debug!(job = %job, "canceller left");
                            }
                        }
                    },
                );
                return Box::pin(async move {
                    rx.await.map_err(|_| Error::Mailbox {
                        actor: "scheduler",
                        reason: "the scheduler restarted before the cancel was durable".to_owned(),
                    })?
                });
            }
            Some(_) => {
                if let Some(active) = self.core.as_mut().and_then(|c| c.active.get_mut(&job)) {
                    active.cancel = true;
                }
                tracing::info!(job = %job, "cancelling a running job: its tasks are being stopped");
                self.kill_tasks(job, KillReason::Cancelled, None);
                Ok(CancelOutcome::Cancelling)
            }
        };
        Box::pin(async move { result })
    }
}

impl Handler<Register> for Scheduler {
    type Result = Result<WorkerId, Error>;

    fn handle(&mut self, msg: Register, ctx: &mut Ctx) -> Self::Result {
        // The same worker registering again has restarted (its tasks died with the old
        // instance), or lost its registration's answer: the earlier registration goes first, so
        // its capacity (GPUs above all) is never offered twice.
        let earlier: Vec<WorkerId> = self
            .core()?
            .workers
            .iter()
            .filter(|(_, w)| w.name == msg.name)
            .map(|(id, _)| *id)
            .collect();
        for old in earlier {
            self.worker_lost(
                ctx,
                old,
                format!(
                    "{} registered again, so its earlier registration is gone",
                    msg.name
                ),
            );
        }
        let core = self.core()?;
        let worker = WorkerId(core.next_worker);
        core.next_worker += 1;
        core.placer.add_worker(worker, &msg.capacity)?;
        tracing::info!(worker = %worker, name = %msg.name, cpu_millis = msg.capacity.cpu_millis,
            memory_bytes = msg.capacity.memory_bytes, gpus = msg.capacity.gpus.len(), "worker registered");
        core.workers.insert(
            worker,
            WorkerEntry {
                name: msg.name,
                capacity: msg.capacity,
                link: msg.link,
                registered_ms: now_ms(),
            },
        );
        metrics::gauge!(m::WORKERS).set(core.workers.len() as f64);
        self.schedule(ctx);
        Ok(worker)
    }
}

impl Handler<Renew> for Scheduler {
    type Result = Result<RenewReply, Error>;

    fn handle(&mut self, msg: Renew, ctx: &mut Ctx) -> Self::Result {
        let core = self.core()?;
        if !core.workers.contains_key(&msg.worker) {
            refuse("renew", "unknown_worker");
            return Err(Error::UnknownWorker { worker: msg.worker });
        }
        // Overdue leases go first, so a renewal that comes too late does not revive one.
        self.reap_overdue(ctx);
        let core = self.core()?;
        let mut reply = RenewReply::default();
        for outcome in core.leases.renew(msg.worker, &msg.leases, Instant::now()) {
            match outcome {
                RenewOutcome::Renewed { token, .. } => reply.renewed.push(token),
                RenewOutcome::Refused { job, token, .. } => reply.refused.push((job, token)),
            }
        }
        self.arm_expiry(ctx);
        Ok(reply)
    }
}

impl Handler<Started> for Scheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: Started, ctx: &mut Ctx) -> Self::Result {
        self.reap_overdue(ctx);
        let core = self.core()?;
        core.leases
            .check(msg.job, msg.worker, msg.token, "started")?;
        let deadline = core
            .store
            .as_ref()
            .and_then(|s| s.table().get(msg.job))
            .and_then(|e| e.spec.progress_deadline_secs);
        if let (Some(secs), Some(health)) = (deadline, self.config.health.get()) {
            if let Err(error) = health.watch.try_send(WatchJob {
                job: msg.job,
                worker: msg.worker,
                token: msg.token,
                deadline: Duration::from_secs(secs),
            }) {
                tracing::warn!(job = %msg.job, lease = %msg.token, %error,
                    "health monitor did not take a watch: this task is not checked for progress");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "watch").increment(1);
            }
        }
        let core = self.core()?;
        let Some(active) = core.active.get_mut(&msg.job) else {
            return Err(Error::StaleToken {
                job: msg.job,
                worker: msg.worker,
                presented: msg.token,
                current: None,
            });
        };
        active.watched |= deadline.is_some();
        if active.started {
            return Ok(());
        }
        active.started = true;
        let (job, attempt) = (msg.job, active.attempt);
        self.commit(
            ctx,
            Record::Started { job, attempt },
            move |act, ctx, result| match result {
                Ok(durable) => act.after_durable_do(
                    ctx,
                    durable,
                    AfterDurable::Emit {
                        job,
                        state: JobState::Running,
                        attempt,
                    },
                ),
                Err(error) => {
                    tracing::error!(job = %job, attempt, %error, "could not record a start")
                }
            },
        );
        Ok(())
    }
}

impl Handler<Finished> for Scheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: Finished, ctx: &mut Ctx) -> Self::Result {
        self.reap_overdue(ctx);
        let core = self.core()?;
        core.leases
            .release(msg.job, msg.worker, msg.token, "finished")?;
        if core.active.get(&msg.job).is_some_and(|a| a.watched) {
            self.unwatch([msg.token]);
        }
        let core = self.core()?;
        let Some(active) = core.active.get_mut(&msg.job) else {
            return Ok(());
        };
        active.left = active.left.saturating_sub(1);
        if let TaskEnd::Completed { result } = &msg.end {
            if active.result.is_none() {
                active.result = Some(result.clone());
            }
        }
        let job = msg.job;
        let failed_first = if !msg.end.success() && active.end.is_none() && active.lost.is_none() {
            match task_result(&msg.end, active.cancel) {
                TaskResult::End(state, outcome) => {
                    active.end = Some((state, outcome));
                    true
                }
                TaskResult::Lost(reason) => {
                    active.lost = Some(reason);
                    true
                }
            }
        } else {
            false
        };
        let done = active.left == 0;
        if failed_first && !done {
            // One task of a gang failed: the others stop now.
            self.kill_tasks(job, KillReason::LeaseLost, Some(msg.token));
        }
        if done {
            self.end_attempt(ctx, job);
        }
        Ok(())
    }
}

enum TaskResult {
    End(JobState, Outcome),
    Lost(String),
}

fn task_result(end: &TaskEnd, cancelled: bool) -> TaskResult {
    if cancelled {
        return TaskResult::End(JobState::Cancelled, Outcome::default());
    }
    match end {
        TaskEnd::Exited { code } => TaskResult::End(
            if *code == 0 {
                JobState::Succeeded
            } else {
                JobState::Failed
            },
            Outcome {
                exit_code: Some(*code),
                ..Outcome::default()
            },
        ),
        TaskEnd::Signalled { signal } => TaskResult::Lost(format!(
            "its process was killed by signal {signal} from outside cadre"
        )),
        TaskEnd::TimedOut => TaskResult::End(
            JobState::TimedOut,
            Outcome {
                error: Some("its timeout ran out".to_owned()),
                ..Outcome::default()
            },
        ),
        TaskEnd::Killed { reason } => {
            TaskResult::Lost(format!("its task was stopped ({})", reason.as_str()))
        }
        TaskEnd::Completed { .. } => TaskResult::End(JobState::Succeeded, Outcome::default()),
        TaskEnd::StartFailed { error }
        | TaskEnd::Error { error }
        | TaskEnd::WorkloadFailed { error } => TaskResult::End(
            JobState::Failed,
            Outcome {
                error: Some(error.clone()),
                ..Outcome::default()
            },
        ),
    }
}

impl Scheduler {
    /// Ends the attempt's hold on the node: it leaves the active set and gives back its leases
    /// and its reservation. `None` when the job holds no attempt.
    fn take_active(&mut self, job: JobId) -> Option<Active> {
        let core = self.core.as_mut()?;
        let active = core.active.remove(&job)?;
        core.running.set(core.active.len() as f64);
        core.leases.release_job(job);
        core.placer.release(job);
        Some(active)
    }

    /// Every task of the attempt has ended: record how the job ended (or that the attempt was
    /// lost), release its reservation, and place what now fits.
    fn end_attempt(&mut self, ctx: &mut Ctx, job: JobId) {
        let Some(active) = self.take_active(job) else {
            return;
        };
        if let Some(reason) = active.lost.clone() {
            // Every task has ended already: nothing is left to stop.
            let mut active = active;
            active.tasks.clear();
            if let Some(core) = self.core.as_mut() {
                core.active.insert(job, active);
            }
            self.lose(ctx, job, reason);
            self.wake_drained();
            return;
        }
        let attempt = active.attempt;
        let (state, outcome) = match active.end {
            Some(end) => end,
            None if active.cancel => (JobState::Cancelled, Outcome::default()),
            None => (
                JobState::Succeeded,
                Outcome {
                    exit_code: active.result.is_none().then_some(0),
                    result: active.result.clone(),
                    ..Outcome::default()
                },
            ),
        };
        // A job that never reported its start cannot succeed or time out: it failed to start.
        let state = if !active.started && matches!(state, JobState::Succeeded | JobState::TimedOut)
        {
            JobState::Failed
        } else {
            state
        };
        self.commit(
            ctx,
            Record::Ended {
                job,
                attempt,
                state,
                outcome,
            },
            move |act, ctx, result| {
                act.finished_record(ctx, job, attempt, state, result);
                act.schedule(ctx);
            },
        );
    }
}

impl Handler<WorkerDead> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: WorkerDead, ctx: &mut Ctx) {
        self.worker_lost(ctx, msg.worker, msg.reason);
    }
}

/// A registered worker as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The worker's id.
    pub worker: WorkerId,
    /// Its name (actor path).
    pub name: String,
    /// What it offers.
    pub capacity: WorkerCapacity,
    /// When it registered, in milliseconds since the Unix epoch.
    pub registered_ms: u64,
    /// Leases it holds.
    pub leases: usize,
}

/// The scheduler's view of the node: workers, totals and counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// Registered workers.
    pub workers: Vec<NodeView>,
    /// Capacity over all workers.
    pub capacity: CapacitySummary,
    /// Jobs waiting to be placed.
    pub queued: usize,
    /// Jobs leased or running.
    pub running: usize,
    /// Jobs in the table.
    pub jobs: usize,
    /// Whether the node is draining (shutting down).
    pub draining: bool,
    /// Why this node has no GPUs, when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_absent: Option<String>,
}

/// API: the node's workers and totals.
#[derive(Debug, Message)]
#[rtype(result = "Result<ClusterView, Error>")]
pub struct Nodes;

impl Handler<GpuHealth> for Scheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: GpuHealth, ctx: &mut Ctx) -> Self::Result {
        let core = self.core.as_mut().ok_or_else(|| Error::Unavailable {
            reason: "the scheduler is not ready".to_owned(),
        })?;
        let Some(worker) = core
            .workers
            .iter()
            .find(|(_, w)| w.name == msg.worker_path)
            .map(|(id, _)| *id)
        else {
            tracing::warn!(worker_path = %msg.worker_path, gpu = msg.index,
                "GPU health for a worker that is not registered (yet); ignored");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "unknown_worker").increment(1);
            return Err(Error::Unavailable {
                reason: format!("no registered worker at {}", msg.worker_path),
            });
        };
        let refused = |error: &Error| {
            tracing::error!(worker = %worker, gpu = msg.index, %error, "GPU health not applied");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "refused").increment(1);
        };
        let was = core
            .placer
            .gpu_healthy(worker, msg.index)
            .inspect_err(refused)?;
        if was == msg.healthy {
            // The monitor repeats an unhealthy device's state on every sample, so a scheduler
            // that restarted (and registered every GPU healthy) learns it again at once.
            return Ok(());
        }
        let holder = core
            .placer
            .set_gpu_health(worker, msg.index, msg.healthy)
            .inspect_err(refused)?;
        if msg.healthy {
            tracing::info!(worker = %worker, gpu = msg.index, reason = %msg.reason,
                "GPU healthy again: it takes work");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "healthy").increment(1);
            self.schedule(ctx);
        } else {
            // A job already on it runs on: whether its results stand is its owner's call, and
            // the log line names it.
            tracing::warn!(worker = %worker, gpu = msg.index, reason = %msg.reason,
                job = ?holder, "GPU unhealthy: no new work is placed on it");
            metrics::counter!(m::GPU_HEALTH_CHANGES, "state" => "unhealthy").increment(1);
        }
        Ok(())
    }
}

impl Handler<Nodes> for Scheduler {
    type Result = Result<ClusterView, Error>;

    fn handle(&mut self, _: Nodes, _: &mut Ctx) -> Self::Result {
        let core = self.core()?;
        Ok(ClusterView {
            workers: core
                .workers
                .iter()
                .map(|(id, w)| NodeView {
                    worker: *id,
                    name: w.name.clone(),
                    capacity: w.capacity.clone(),
                    registered_ms: w.registered_ms,
                    leases: core.leases.leases_of_worker(*id).len(),
                })
                .collect(),
            capacity: core.placer.capacity().summary(),
            queued: core.placer.waiting_len(),
            running: core.active.len(),
            jobs: core.store.as_ref().map_or(0, |s| s.table().len()),
            draining: core.draining,
            gpus_absent: self.config.gpus_absent.clone(),
        })
    }
}

/// Shutdown: accept and place nothing new; answers once no job holds a lease (the caller
/// bounds the wait with its grace period).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Drain;

impl Handler<Drain> for Scheduler {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: Drain, _: &mut Ctx) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.core() {
            Err(e) => return Box::pin(async move { Err(e) }),
            Ok(core) => {
                core.draining = true;
                core.drained.push(tx);
                tracing::info!(
                    running = core.active.len(),
                    queued = core.placer.waiting_len(),
                    "draining: no new jobs are accepted or started"
                );
            }
        }
        self.wake_drained();
        Box::pin(async move {
            rx.await.map_err(|_| Error::Mailbox {
                actor: "scheduler",
                reason: "the scheduler restarted while draining".to_owned(),
            })
        })
    }
}

/// Readiness: whether the scheduler has its journal open.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct Ready;

impl Handler<Ready> for Scheduler {
    type Result = bool;

    fn handle(&mut self, _: Ready, _: &mut Ctx) -> bool {
        self.core.as_ref().is_some_and(|c| !c.draining)
    }
}

/// Closes the store (flushing the journal) once the node has drained; the tree stops after.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseStore;

impl Handler<CloseStore> for Scheduler {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: CloseStore, _: &mut Ctx) -> Self::Result {
        let store = self.core.as_mut().and_then(|c| c.store.take());
        Box::pin(async move {
            if let Some(store) = store {
                store.close().await;
            }
        })
    }
}

impl Scheduler {
    /// How loaded the receiving side of progress is, 0.0 ..= 1.0 and beyond: the event stream's
    /// backlog for its slowest subscriber, or full when the journal makes the scheduler wait.
    fn progress_load(&self) -> f64 {
        let journal_busy = self
            .core
            .as_ref()
            .is_some_and(|c| c.store.is_none() || !c.deferred.is_empty());
        if journal_busy {
            return 1.0;
        }
        self.config.events.len() as f64 / EVENT_CAPACITY as f64
    }
}

/// The event stream's capacity (the node creates it with this many slots).
pub const EVENT_CAPACITY: usize = 4096;

impl Handler<ProgressFlush> for Scheduler {
    type Result = Result<ProgressAck, Error>;

    fn handle(&mut self, msg: ProgressFlush, _: &mut Ctx) -> Self::Result {
        let load = self.progress_load();
        let core = self.core()?;
        if !core.workers.contains_key(&msg.worker) {
            refuse("progress", "unknown_worker");
            return Err(Error::UnknownWorker { worker: msg.worker });
        }
        let level = core.pressure.update(load, Instant::now());
        metrics::gauge!(m::PROGRESS_BACKPRESSURE).set(f64::from(level.level()));
        metrics::counter!(m::PROGRESS_FLUSHES).increment(1);
        let mut refused = Vec::new();
        if level == Backpressure::Reject {
            metrics::counter!(m::PROGRESS_REJECTED).increment(msg.updates.len() as u64);
            return Ok(ProgressAck {
                seq: msg.seq,
                level,
                refused,
            });
        }
        let mut progressed = Vec::with_capacity(msg.updates.len());
        let mut events = Vec::with_capacity(msg.updates.len());
        for update in msg.updates {
            match core
                .leases
                .check(update.job, msg.worker, update.token, "progress")
            {
                Ok(lease) => {
                    progressed.push(update.token);
                    events.push(JobEvent {
                        job: update.job,
                        state: JobState::Running,
                        attempt: lease.attempt,
                        at_ms: now_ms(),
                        progress: Some(TaskProgress {
                            task: update.task,
                            progress: update.progress,
                        }),
                    });
                }
                Err(_) => refused.push(update.token),
            }
        }
        for event in events {
            self.publish(event);
        }
        if let Some(health) = self.config.health.get() {
            if !progressed.is_empty() {
                if let Err(error) = health
                    .progressed
                    .try_send(JobsProgressed { tokens: progressed })
                {
                    tracing::warn!(worker = %msg.worker, %error, "health monitor did not take progress");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "progressed").increment(1);
                }
            }
        }
        Ok(ProgressAck {
            seq: msg.seq,
            level,
            refused,
        })
    }
}

impl Handler<JobStalled> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: JobStalled, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let live = core.leases.get(msg.token).is_some_and(|l| l.job == msg.job);
        if !live {
            tracing::debug!(job = %msg.job, lease = %msg.token, "stall report for a lease that is gone");
            return;
        }
        tracing::error!(job = %msg.job, lease = %msg.token, reason = %msg.reason,
            "job stalled: its tasks are stopped and the attempt is lost");
        metrics::counter!(m::JOBS_STALLED).increment(1);
        self.lose(ctx, msg.job, msg.reason);
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
