//! The worker actor: registers with the scheduler, runs the tasks it is assigned (command jobs
//! through the launcher, workload jobs on the extension's supervised workload actors), reports
//! their start and end under their lease tokens, renews its leases in one batch per round,
//! flushes progress, and fences itself.
//!
//! Self-fencing: each task has a kill-by instant, the send time of its last acknowledged
//! renewal plus the lease's time to live minus a margin ([`self_fence_deadline`]). A worker that
//! cannot renew before then (scheduler unreachable, overloaded, partitioned) stops the task
//! itself, so by the time the scheduler sees the lease expire and places the job again, the old
//! attempt is gone. A renewal the scheduler refuses stops the task at once.
//!
//! Progress: a task's latest progress is kept (reporting replaces it) and flushed every
//! `progress_every` (50 ms by default) in one [`ProgressFlush`]. Each acknowledgement carries a
//! [`Backpressure`] level that sets the next interval (the scheduler eases it with hysteresis).
//! A flush that fails (not delivered, unanswered in time, refused, or acknowledged with the
//! wrong sequence number: a malformed acknowledgement) is one error event with the jobs and the
//! target; three in a row open a circuit for [`CIRCUIT_OPEN`], during which nothing is flushed,
//! and the worker re-resolves the scheduler (asks its resolver for a fresh link). After that
//! period one trial flush goes out: if it fails too, the circuit opens again at once.
//!
//! A task runs as a future spawned in the actor's context. If the actor fails and restarts, its
//! futures are dropped and the launcher kills each process group on drop; the scheduler then
//! sees the leases lapse (the new instance registers under a new id) and requeues the jobs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use cadre_cpu::cgroup::{CgroupLimits, Cgroups};
use cadre_cpu::launcher::{CommandSpec, ExitOutcome, ExitReport, Launcher, RunningProcess};
use cadre_cpu::ledger::ProcessLedger;
use cadre_supervisor::SupervisedContext;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Error;
use crate::ids::{FencingToken, WorkerId};
use crate::job::{CommandJob, JobId, JobKind, WorkloadJob};
use crate::lease::self_fence_deadline;
use crate::metrics as m;
use crate::protocol::{
    Assign, Backpressure, Finished, GpuDevice, Heartbeat, Kill, KillReason, ProgressFlush,
    ProgressUpdate, Register, Renew, SchedulerLink, Started, TaskEnd, WorkerLink,
};
use crate::sched::WorkerCapacity;
use crate::store::LogsNote;
use crate::workload::{CancelSignal, ProgressReporter, Run};

type Ctx = SupervisedContext<Worker>;

/// How long the progress circuit stays open after repeated flush failures.
pub const CIRCUIT_OPEN: Duration = Duration::from_secs(5);
/// Consecutive flush failures that open the circuit.
pub const CIRCUIT_FAILURES: u32 = 3;

/// Finds the scheduler: called at start and again whenever the progress circuit opens.
pub type Resolver = Arc<dyn Fn() -> SchedulerLink + Send + Sync>;

/// What a worker needs; shared by every instance the supervisor creates.
pub struct WorkerConfig {
    /// What it offers the scheduler. Its `gpus` are the indices of [`WorkerConfig::gpus`].
    pub capacity: WorkerCapacity,
    /// The GPUs it owns, whole devices (empty on a machine without any).
    pub gpus: Vec<GpuDevice>,
    /// Spawns command jobs.
    pub launcher: Launcher,
    /// Where job output goes: `<job>.<task>.out` and `.err`.
    pub log_dir: PathBuf,
    /// Finds the scheduler.
    pub resolve: Resolver,
    /// The health monitor, if heartbeats go to one.
    pub health: Option<Recipient<Heartbeat>>,
    /// The workload kinds extensions registered, by name.
    pub workloads: BTreeMap<String, Recipient<Run>>,
    /// How often leases are renewed and heartbeats sent.
    pub renew_every: Duration,
    /// The base interval of progress flushes.
    pub progress_every: Duration,
    /// How long before its lease would lapse a task is killed when renewals fail.
    pub fence_margin: Duration,
    /// Grace between `SIGTERM` and `SIGKILL` when a task is stopped (and for a workload to
    /// notice its cancel signal).
    pub term_grace: Duration,
    /// The record of running process groups, swept when the node starts (see
    /// [`cadre_cpu::ledger`]); `None` runs without one.
    pub ledger: Option<Mutex<ProcessLedger>>,
    /// The node's cgroup parent: each command task runs in a group of its own below it, with
    /// its CPU and memory as limits. `None` where cgroups are unavailable (the node said why
    /// once): tasks then run in process groups only.
    pub cgroups: Option<Cgroups>,
    /// The most processes (and threads) one command task may have, through its cgroup.
    pub max_pids: Option<u64>,
    /// Where a command task without a `workdir` runs: `<scratch_dir>/<job>.<task>`, created
    /// when it starts, removed when the job is pruned.
    pub scratch_dir: PathBuf,
    /// The environment every command job starts from (`PATH`, `HOME`, `LANG`), unless it asks
    /// to inherit the node's (`inherit_env`).
    pub base_env: Vec<(String, String)>,
    /// The most bytes kept of each output stream of a command task (head and tail; the middle
    /// is dropped with a marker); `None` keeps everything.
    pub log_cap: Option<u64>,
}

impl WorkerConfig {
    fn ledger(&self, job: JobId, pgid: i32, record: bool) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let mut ledger = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let result = if record {
            ledger.record(pgid)
        } else {
            ledger.forget(pgid)
        };
        if let Err(error) = result {
            tracing::error!(job = %job, pgid, %error,
                "process ledger not updated: a node crash may leave this group running");
            metrics::counter!(m::WORKER_ERRORS, "kind" => "ledger").increment(1);
        }
    }

    /// The stdout and stderr log paths of a task.
    pub fn log_paths(&self, job: JobId, task: u32) -> (PathBuf, PathBuf) {
        (
            self.log_dir.join(format!("{job}.{task}.out")),
            self.log_dir.join(format!("{job}.{task}.err")),
        )
    }

    /// The scratch directory of a task (its working directory unless its spec names one).
    pub fn scratch_path(&self, job: JobId, task: u32) -> PathBuf {
        self.scratch_dir.join(format!("{job}.{task}"))
    }
}

/// The worker actor (see the module comment).
pub struct Worker {
    config: Arc<WorkerConfig>,
    link: SchedulerLink,
    id: Option<WorkerId>,
    registering: bool,
    renewing: bool,
    tasks: FxHashMap<FencingToken, Task>,
    flush: FlushState,
}

struct Task {
    job: JobId,
    task: u32,
    ttl: Duration,
    fence_at: Instant,
    kill: Option<oneshot::Sender<KillReason>>,
    progress: Option<(ProgressReporter, u64)>,
    abort: Option<tokio::task::AbortHandle>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            if let Some(handle) = &task.abort {
                handle.abort();
            }
        }
    }
}

/// A task's end, from its local task back to the worker.
#[derive(Message)]
#[rtype(result = "()")]
struct TaskDone {
    job: JobId,
    token: FencingToken,
    end: TaskEnd,
    output: Option<LogsNote>,
}

impl Handler<TaskDone> for Worker {
    type Result = ();

    fn handle(&mut self, msg: TaskDone, ctx: &mut Ctx) {
        let TaskDone {
            job,
            token,
            end,
            output,
        } = msg;
        if self.tasks.remove(&token).is_none() {
            return;
        }
        let Some(worker) = self.id else {
            tracing::debug!(job = %job, lease = %token, "task ended after the worker lost its registration");
            return;
        };
        if let TaskEnd::Error { error } = &end {
            tracing::error!(worker = %worker, job = %job, lease = %token, %error, path = ctx.path(),
                "lost track of a task's process");
            metrics::counter!(m::WORKER_ERRORS, "kind" => "wait").increment(1);
        }
        let msg = Finished {
            worker,
            job,
            token,
            end,
            output,
        };
        // Straight into the scheduler's mailbox when there is room: no task and no reply
        // channel per job (a refusal, such as a stale token, is logged and counted by the
        // scheduler). A full mailbox waits for room, and a closed one is reported below.
        let msg = match self.link.finished.try_send(msg) {
            Ok(()) => return,
            Err(SendError::Full(msg)) => msg,
            Err(SendError::Closed(_)) => {
                tracing::error!(worker = %worker, job = %job, lease = %token, path = ctx.path(),
                    "task end not delivered: the scheduler's mailbox is closed; the lease lapses and the job is retried");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "finished").increment(1);
                return;
            }
        };
        let finished = self.link.finished.clone();
        actix::spawn(async move {
            match finished.send(msg).await {
                Ok(Ok(())) => {}
                // A stale token: the scheduler logged and counted the refusal.
                Ok(Err(error)) => {
                    tracing::debug!(worker = %worker, job = %job, lease = %token, %error, "end refused")
                }
                Err(error) => {
                    tracing::error!(worker = %worker, job = %job, lease = %token, %error,
                        "task end not delivered; the lease lapses and the job is retried");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "finished").increment(1);
                }
            }
        });
    }
}

struct FlushState {
    seq: u64,
    level: Backpressure,
    next_at: Instant,
    in_flight: bool,
    failures: u32,
    open_until: Option<Instant>,
    /// The circuit's open period ended: the next flush is a trial, and its failure opens the
    /// circuit again at once.
    half_open: bool,
}

impl Worker {
    /// A worker that resolves the scheduler and registers when it starts.
    pub fn new(config: Arc<WorkerConfig>) -> Worker {
        let link = (config.resolve)();
        Worker {
            config,
            link,
            id: None,
            registering: false,
            renewing: false,
            tasks: FxHashMap::default(),
            flush: FlushState {
                seq: 0,
                level: Backpressure::None,
                next_at: Instant::now(),
                in_flight: false,
                failures: 0,
                open_until: None,
                half_open: false,
            },
        }
    }

    fn register(&mut self, ctx: &mut Ctx) {
        if self.registering {
            return;
        }
        self.registering = true;
        let msg = Register {
            name: ctx.path().to_owned(),
            capacity: self.config.capacity.clone(),
            link: WorkerLink {
                assign: ctx.address().recipient(),
                kill: ctx.address().recipient(),
            },
        };
        let register = self.link.register.clone();
        let target = self.link.target.clone();
        ctx.spawn(
            async move { register.send(msg).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.registering = false;
                    match result {
                        Ok(Ok(id)) => {
                            tracing::info!(worker = %id, path = ctx.path(), %target, "worker registered with the scheduler");
                            act.id = Some(id);
                        }
                        Ok(Err(error)) => {
                            tracing::error!(path = ctx.path(), %target, %error, "scheduler refused the worker's registration; retrying");
                            metrics::counter!(m::WORKER_ERRORS, "kind" => "register").increment(1);
                        }
                        Err(error) => {
                            tracing::error!(path = ctx.path(), %target, %error, "scheduler unreachable for registration; retrying");
                            metrics::counter!(m::WORKER_ERRORS, "kind" => "register").increment(1);
                        }
                    }
                }),
        );
    }

    fn kill(&mut self, token: FencingToken, reason: KillReason) {
        if let Some(task) = self.tasks.get_mut(&token) {
            if let Some(tx) = task.kill.take() {
                if tx.send(reason).is_err() {
                    tracing::debug!(job = %task.job, lease = %token, "task ended before its kill arrived");
                }
            }
        }
    }

    fn tick(&mut self, ctx: &mut Ctx) {
        let Some(worker) = self.id else {
            self.register(ctx);
            return;
        };
        if let Some(health) = &self.config.health {
            if let Err(error) = health.try_send(Heartbeat { worker }) {
                tracing::warn!(worker = %worker, %error, "heartbeat not delivered");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "heartbeat").increment(1);
            }
        }
        // Self-fencing first: a task past its kill-by instant stops now.
        let now = Instant::now();
        let overdue: Vec<(FencingToken, JobId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.fence_at <= now && t.kill.is_some())
            .map(|(token, t)| (*token, t.job))
            .collect();
        for (token, job) in overdue {
            tracing::error!(worker = %worker, job = %job, lease = %token,
                "lease not renewed in time: the worker kills the task itself");
            metrics::counter!(m::SELF_FENCES).increment(1);
            self.kill(token, KillReason::LeaseLost);
        }
        // Also with nothing to renew: an empty renewal is how an idle worker learns that the
        // scheduler no longer knows it (it restarted) and registers again.
        if self.renewing {
            return;
        }
        self.renewing = true;
        let leases: Vec<(JobId, FencingToken)> = self
            .tasks
            .iter()
            .map(|(token, t)| (t.job, *token))
            .collect();
        let renew = self.link.renew.clone();
        let sent_at = Instant::now();
        let margin = self.config.fence_margin;
        ctx.spawn(
            async move { tokio::time::timeout(margin, renew.send(Renew { worker, leases })).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.renewing = false;
                    match result {
                        Ok(Ok(Ok(reply))) => {
                            for token in reply.renewed {
                                if let Some(task) = act.tasks.get_mut(&token) {
                                    task.fence_at = self_fence_deadline(sent_at, task.ttl, margin);
                                }
                            }
                            for (job, token) in reply.refused {
                                tracing::warn!(worker = %worker, job = %job, lease = %token,
                                    "lease renewal refused: the task stops");
                                act.kill(token, KillReason::LeaseLost);
                            }
                        }
                        Ok(Ok(Err(Error::UnknownWorker { .. }))) => act.forgotten(ctx, worker),
                        Ok(Ok(Err(error))) => {
                            tracing::error!(worker = %worker, %error, "lease renewal refused as a whole");
                            metrics::counter!(m::RENEW_FAILURES).increment(1);
                        }
                        Ok(Err(error)) => {
                            tracing::error!(worker = %worker, %error, "lease renewal not delivered");
                            metrics::counter!(m::RENEW_FAILURES).increment(1);
                        }
                        Err(_) => {
                            tracing::error!(worker = %worker, timeout_ms = margin.as_millis() as u64,
                                "lease renewal unanswered in time");
                            metrics::counter!(m::RENEW_FAILURES).increment(1);
                        }
                    }
                }),
        );
    }

    /// The scheduler restarted (or declared this worker dead) and lost every lease with it:
    /// the tasks stop and the worker joins again under a new id.
    fn forgotten(&mut self, ctx: &mut Ctx, worker: WorkerId) {
        if self.id != Some(worker) {
            return;
        }
        tracing::warn!(worker = %worker, path = ctx.path(),
            "scheduler no longer knows this worker: its tasks stop and it registers again");
        let tokens: Vec<FencingToken> = self.tasks.keys().copied().collect();
        for token in tokens {
            self.kill(token, KillReason::LeaseLost);
        }
        self.id = None;
        self.register(ctx);
    }

    fn flush_progress(&mut self, ctx: &mut Ctx) {
        let Some(worker) = self.id else {
            return;
        };
        let now = Instant::now();
        if self.flush.in_flight || now < self.flush.next_at {
            return;
        }
        if let Some(until) = self.flush.open_until {
            if now < until {
                return;
            }
            self.flush.open_until = None;
            self.flush.half_open = true;
            tracing::info!(worker = %worker, target = %self.link.target, "progress circuit half-open: trying a flush");
        }
        let mut updates = Vec::new();
        let mut seqs = Vec::new();
        for (token, task) in &self.tasks {
            if let Some((reporter, seen)) = &task.progress {
                if let Some((seq, progress)) = reporter.newer_than(*seen) {
                    updates.push(ProgressUpdate {
                        job: task.job,
                        token: *token,
                        task: task.task,
                        progress,
                    });
                    seqs.push((*token, seq));
                }
            }
        }
        // Under `Reject` an empty flush is the probe that learns when the pressure is gone.
        if updates.is_empty() && self.flush.level != Backpressure::Reject {
            return;
        }
        self.flush.seq += 1;
        self.flush.in_flight = true;
        let seq = self.flush.seq;
        let jobs: Vec<JobId> = updates.iter().map(|u| u.job).collect();
        let target = self.link.target.clone();
        let progress = self.link.progress.clone();
        let timeout = self.config.progress_every.max(Duration::from_millis(50)) * 20;
        ctx.spawn(
            async move {
                tokio::time::timeout(timeout, progress.send(ProgressFlush { worker, seq, updates })).await
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.flush.in_flight = false;
                let failure = match result {
                    Ok(Ok(Ok(ack))) if ack.seq == seq => {
                        act.flush.failures = 0;
                        act.flush.half_open = false;
                        if ack.level != act.flush.level {
                            tracing::info!(worker = %worker, from = act.flush.level.as_str(),
                                to = ack.level.as_str(), "progress back-pressure level changed");
                            act.flush.level = ack.level;
                        }
                        if ack.level != Backpressure::Reject {
                            for (token, s) in seqs {
                                if let Some((_, seen)) = act.tasks.get_mut(&token).and_then(|t| t.progress.as_mut()) {
                                    *seen = s;
                                }
                            }
                        }
                        act.flush.next_at = Instant::now() + act.config.progress_every * ack.level.interval_factor();
                        return;
                    }
                    Ok(Ok(Ok(ack))) => ("malformed_ack", format!("acknowledgement for flush {} answered flush {seq}", ack.seq)),
                    Ok(Ok(Err(Error::UnknownWorker { .. }))) => {
                        act.forgotten(ctx, worker);
                        return;
                    }
                    Ok(Ok(Err(error))) => ("refused", error.to_string()),
                    Ok(Err(error)) => ("undelivered", error.to_string()),
                    Err(_) => ("timeout", format!("no answer within {} ms", timeout.as_millis())),
                };
                let (reason, error) = failure;
                act.flush.failures += 1;
                tracing::error!(worker = %worker, jobs = ?jobs, %target, seq, reason, %error,
                    failures = act.flush.failures, "progress flush failed");
                metrics::counter!(m::PROGRESS_FLUSH_FAILURES, "reason" => reason).increment(1);
                if act.flush.failures >= CIRCUIT_FAILURES || act.flush.half_open {
                    act.flush.half_open = false;
                    act.flush.failures = 0;
                    act.flush.open_until = Some(Instant::now() + CIRCUIT_OPEN);
                    act.link = (act.config.resolve)();
                    tracing::error!(worker = %worker, %target, open_ms = CIRCUIT_OPEN.as_millis() as u64,
                        "progress circuit open after repeated failures; scheduler re-resolved");
                    metrics::counter!(m::PROGRESS_CIRCUIT_OPENS).increment(1);
                }
            }),
        );
    }
}

impl Actor for Worker {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        self.register(ctx);
        ctx.run_interval(self.config.renew_every, |act, ctx| act.tick(ctx));
        ctx.run_interval(self.config.progress_every, |act, ctx| {
            act.flush_progress(ctx)
        });
    }
}

impl Handler<Kill> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Kill, _: &mut Ctx) {
        if self.tasks.contains_key(&msg.token) {
            tracing::info!(job = %msg.job, lease = %msg.token, reason = msg.reason.as_str(), "stopping a task");
            self.kill(msg.token, msg.reason);
        } else {
            tracing::debug!(job = %msg.job, lease = %msg.token, "kill for a task this worker does not run");
        }
    }
}

/// How a task's wait ended.
enum Waited<T> {
    Done(T),
    Kill(KillReason),
}

/// The blocking half of starting a command task: its scratch directory, its cgroup (where
/// the node has them) and the spawn. Each failure is logged and counted where it happens and
/// comes back as the task's end.
fn prepare_command(
    config: &WorkerConfig,
    worker: WorkerId,
    job: JobId,
    scratch: &std::path::Path,
    spec: &CommandSpec,
    group: &str,
    limits: &CgroupLimits,
) -> Result<RunningProcess, TaskEnd> {
    if let Err(e) = std::fs::create_dir_all(scratch) {
        tracing::error!(worker = %worker, job = %job, path = %scratch.display(), error = %e,
            "cannot create the task's scratch directory");
        metrics::counter!(m::WORKER_ERRORS, "kind" => "scratch").increment(1);
        let error = format!(
            "its scratch directory {} could not be created: {e}",
            scratch.display()
        );
        return Err(TaskEnd::Error { error });
    }
    let cgroup = match &config.cgroups {
        None => None,
        // Logged and counted by the cgroup module; the job must not run unconfined.
        Some(cgroups) => Some(cgroups.create(group, limits).map_err(|e| TaskEnd::Error {
            error: format!("its cgroup could not be created: {e}"),
        })?),
    };
    // The launcher logs and counts its own failures.
    config
        .launcher
        .spawn_in(spec, &job.to_string(), cgroup)
        .map_err(|error| TaskEnd::StartFailed {
            error: error.to_string(),
        })
}

fn report_end(report: ExitReport) -> TaskEnd {
    if report.timed_out {
        return TaskEnd::TimedOut;
    }
    match report.outcome {
        ExitOutcome::Code(code) => TaskEnd::Exited { code },
        ExitOutcome::Signal(signal) => TaskEnd::Signalled { signal },
    }
}

/// What a task needs to run, taken from its assignment.
struct TaskRun {
    config: Arc<WorkerConfig>,
    started: Recipient<Started>,
    worker: WorkerId,
    job: JobId,
    token: FencingToken,
    task: u32,
    attempt: u32,
    gang: u32,
    timeout: Option<Duration>,
    /// The GPUs its grant names, resolved to devices.
    gpus: Vec<GpuDevice>,
    /// The job's name (`CADRE_JOB_NAME`).
    name: String,
    /// What its grant holds: the limits of its cgroup.
    cpu_millis: u32,
    memory_bytes: u64,
}

impl TaskRun {
    /// Tells the scheduler the task started; `false` when it refused (the lease is not live).
    async fn report_start(&self) -> bool {
        let (worker, job, token) = (self.worker, self.job, self.token);
        match self.started.send(Started { worker, job, token }).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(worker = %worker, job = %job, lease = %token, %error,
                    "scheduler refused the start: the task stops");
                false
            }
            Err(error) => {
                tracing::error!(worker = %worker, job = %job, lease = %token, %error,
                    "start not delivered to the scheduler; renewals decide the task's fate");
                metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "started").increment(1);
                true
            }
        }
    }

    async fn command(
        self,
        command: CommandJob,
        kill_rx: oneshot::Receiver<KillReason>,
    ) -> (TaskEnd, Option<LogsNote>) {
        let config = Arc::clone(&self.config);
        let (out, err) = config.log_paths(self.job, self.task);
        let mut spec = CommandSpec::new(
            std::iter::once(command.program).chain(command.args),
            out,
            err,
        );
        // Its own scratch directory: its TMPDIR, and where it runs unless it names a workdir.
        let scratch = config.scratch_path(self.job, self.task);
        let scratch_text = scratch.display().to_string();
        // The documented environment, not the node's (unless the job asks to inherit it):
        // the base, then the job's own variables, then cadre's, which the job cannot override.
        spec.clear_env = !command.inherit_env;
        spec.env = config.base_env.clone();
        spec.env.push(("TMPDIR".to_owned(), scratch_text.clone()));
        spec.env.extend(command.env);
        spec.env.extend([
            ("CADRE_JOB_ID".to_owned(), self.job.to_string()),
            ("CADRE_JOB_NAME".to_owned(), self.name.clone()),
            ("CADRE_ATTEMPT".to_owned(), self.attempt.to_string()),
            ("CADRE_TASK".to_owned(), self.task.to_string()),
            ("CADRE_GANG_SIZE".to_owned(), self.gang.to_string()),
            ("CADRE_SCRATCH".to_owned(), scratch_text),
            // Exactly the granted devices, by UUID (ordinals can be renumbered); none for a
            // job that asked for none, so it cannot reach a device another job holds.
            (
                "CUDA_VISIBLE_DEVICES".to_owned(),
                self.gpus
                    .iter()
                    .map(|g| g.uuid.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        spec.cwd = Some(
            command
                .workdir
                .map_or_else(|| scratch.clone(), PathBuf::from),
        );
        spec.log_cap = config.log_cap;
        let limits = CgroupLimits {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            pids: config.max_pids,
        };
        let group = format!("{}.{}.{}", self.job, self.task, self.token.0);
        // The directory, the cgroup, the two log files and the fork are a few dozen blocking
        // filesystem calls: on tokio's blocking pool, so the actors sharing this thread (the
        // scheduler among them) go on meanwhile. A task dropped while they run drops the
        // process they return, which kills it and empties its group.
        let (worker, job) = (self.worker, self.job);
        let prepare =
            move || prepare_command(&config, worker, job, &scratch, &spec, &group, &limits);
        let mut process = match tokio::task::spawn_blocking(prepare).await {
            Ok(Ok(p)) => p,
            Ok(Err(end)) => return (end, None),
            Err(e) => {
                tracing::error!(worker = %self.worker, job = %self.job, error = %e,
                    "preparing a command job did not finish");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "prepare").increment(1);
                let error = format!("preparing it did not finish: {e}");
                return (TaskEnd::Error { error }, None);
            }
        };
        let config = Arc::clone(&self.config);
        // Recorded so that a node killed outright has this group killed when it starts again,
        // instead of leaving it running unaccounted beside the job's next attempt.
        let pgid = process.pgid();
        config.ledger(self.job, pgid, true);
        let (end, report) = self.supervise(&mut process, kill_rx).await;
        config.ledger(self.job, pgid, false);
        let Some(report) = report else {
            return (end, None);
        };
        let end = match end {
            // Killed by the kernel at its memory limit, not by cadre: the job's own failure,
            // named as such (as Slurm's ConstrainRAMSpace reports an OOM).
            TaskEnd::Signalled { .. } | TaskEnd::Exited { .. } if report.oom_killed => {
                TaskEnd::OutOfMemory {
                    limit_bytes: self.memory_bytes,
                }
            }
            end => end,
        };
        (end, self.output_note(&report))
    }

    /// What became of the task's output, when not all of it was kept.
    fn output_note(&self, report: &ExitReport) -> Option<LogsNote> {
        let dropped_bytes = report.stdout_dropped_bytes + report.stderr_dropped_bytes;
        if dropped_bytes == 0 && report.logs_complete {
            return None;
        }
        let write_error = (!report.logs_complete).then(|| {
            let dir = &self.config.log_dir;
            match cadre_cpu::disk::space(dir) {
                Ok(space) => format!(
                    "some output could not be written to {} ({space}); see the node's log",
                    dir.display()
                ),
                Err(_) => format!(
                    "some output could not be written to {}; see the node's log",
                    dir.display()
                ),
            }
        });
        Some(LogsNote {
            dropped_bytes,
            write_error,
        })
    }

    /// Runs a spawned process to its end (or its kill); the report when it was waited for.
    async fn supervise(
        &self,
        process: &mut RunningProcess,
        mut kill_rx: oneshot::Receiver<KillReason>,
    ) -> (TaskEnd, Option<ExitReport>) {
        let config = Arc::clone(&self.config);
        if !self.report_start().await {
            return match process.terminate(config.term_grace).await {
                Ok(report) => (
                    TaskEnd::Killed {
                        reason: KillReason::LeaseLost,
                    },
                    Some(report),
                ),
                Err(error) => (
                    TaskEnd::Error {
                        error: error.to_string(),
                    },
                    None,
                ),
            };
        }
        let waited = {
            let wait = async {
                match self.timeout {
                    Some(t) => process.wait_timeout(t, config.term_grace).await,
                    None => process.wait().await,
                }
            };
            tokio::pin!(wait);
            tokio::select! {
                report = &mut wait => Waited::Done(report),
                reason = &mut kill_rx => Waited::Kill(reason.unwrap_or(KillReason::LeaseLost)),
            }
        };
        match waited {
            Waited::Done(Ok(report)) => (report_end(report), Some(report)),
            Waited::Done(Err(error)) => (
                TaskEnd::Error {
                    error: error.to_string(),
                },
                None,
            ),
            Waited::Kill(reason) => match process.terminate(config.term_grace).await {
                Ok(report) if report.terminated => (TaskEnd::Killed { reason }, Some(report)),
                // It ended on its own just before the kill: report how.
                Ok(report) => (report_end(report), Some(report)),
                Err(error) => (
                    TaskEnd::Error {
                        error: error.to_string(),
                    },
                    None,
                ),
            },
        }
    }

    async fn workload(
        self,
        workload: WorkloadJob,
        actor: Recipient<Run>,
        progress: ProgressReporter,
        mut kill_rx: oneshot::Receiver<KillReason>,
    ) -> TaskEnd {
        if !self.report_start().await {
            return TaskEnd::Killed {
                reason: KillReason::LeaseLost,
            };
        }
        let (cancel_tx, cancel) = CancelSignal::new();
        let run = actor.send(Run {
            job: self.job,
            attempt: self.attempt,
            task: self.task,
            gang: self.gang,
            params: workload.params,
            progress,
            cancel,
            gpus: self.gpus.clone(),
        });
        tokio::pin!(run);
        let deadline = async {
            match self.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let waited = tokio::select! {
            result = &mut run => Waited::Done(Some(result)),
            reason = &mut kill_rx => Waited::Kill(reason.unwrap_or(KillReason::LeaseLost)),
            () = deadline => Waited::Done(None),
        };
        let end_of = |result: Result<
            Result<serde_json::Value, crate::workload::WorkloadError>,
            MailboxError,
        >| {
            match result {
            Ok(Ok(result)) => TaskEnd::Completed { result },
            Ok(Err(error)) => TaskEnd::WorkloadFailed { error: error.0 },
            Err(error) => TaskEnd::WorkloadFailed {
                error: format!(
                    "workload {:?} failed while running the task (it panicked or stopped; see the failure journal): {error}",
                    workload.name
                ),
            },
        }
        };
        match waited {
            Waited::Done(Some(result)) => end_of(result),
            Waited::Done(None) | Waited::Kill(_) => {
                // Ask the workload to stop and give it the grace to do so.
                if cancel_tx.send(true).is_err() {
                    tracing::debug!(job = %self.job, "workload dropped its cancel signal");
                }
                let grace = tokio::time::timeout(self.config.term_grace, &mut run).await;
                if grace.is_err() {
                    tracing::warn!(job = %self.job, lease = %self.token, workload = %workload.name,
                        "workload did not stop within the grace after its cancel signal; its result is ignored");
                }
                match waited {
                    Waited::Kill(reason) => TaskEnd::Killed { reason },
                    Waited::Done(_) => TaskEnd::TimedOut,
                }
            }
        }
    }
}

impl Handler<Assign> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Assign, ctx: &mut Ctx) {
        let Some(worker) = self.id else {
            tracing::warn!(job = %msg.job, lease = %msg.token, "assignment before registration: ignored, its lease lapses");
            return;
        };
        let (kill_tx, kill_rx) = oneshot::channel();
        let ttl = msg.lease_ttl;
        let (job, token, task) = (msg.job, msg.token, msg.task);
        // The grant names GPUs by index; a task gets exactly those devices.
        let gpus: Result<Vec<GpuDevice>, u32> = msg
            .grant
            .gpus
            .iter()
            .map(|&i| {
                self.config
                    .gpus
                    .iter()
                    .find(|g| g.index == i)
                    .cloned()
                    .ok_or(i)
            })
            .collect();
        let (gpus, unknown_gpu) = match gpus {
            Ok(gpus) => (gpus, None),
            Err(index) => {
                tracing::error!(worker = %worker, job = %job, lease = %token, gpu = index, path = ctx.path(),
                    "assignment names a GPU this worker does not own; the task fails to start");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "unknown_gpu").increment(1);
                (Vec::new(), Some(index))
            }
        };
        let run = TaskRun {
            config: Arc::clone(&self.config),
            started: self.link.started.clone(),
            worker,
            job,
            token,
            task,
            attempt: msg.attempt,
            gang: msg.spec.gang.max(1),
            timeout: msg.spec.timeout_secs.map(Duration::from_secs),
            gpus,
            name: msg.spec.name,
            cpu_millis: msg.grant.cpu_millis,
            memory_bytes: msg.grant.memory_bytes,
        };
        let mut progress = None;
        type TaskFuture =
            std::pin::Pin<Box<dyn std::future::Future<Output = (TaskEnd, Option<LogsNote>)>>>;
        let fut: TaskFuture = match (unknown_gpu, msg.spec.kind) {
            (Some(index), _) => {
                let error = format!("the grant names GPU {index} which this worker does not own");
                Box::pin(async move { (TaskEnd::StartFailed { error }, None) })
            }
            (None, JobKind::Command(command)) => Box::pin(run.command(command, kill_rx)),
            (None, JobKind::Workload(workload)) => {
                match self.config.workloads.get(&workload.name) {
                    Some(actor) => {
                        let reporter = ProgressReporter::new();
                        progress = Some((reporter.clone(), 0));
                        let run = run.workload(workload, actor.clone(), reporter, kill_rx);
                        Box::pin(async move { (run.await, None) })
                    }
                    None => {
                        let error = format!(
                            "workload {:?} is not registered on this worker",
                            workload.name
                        );
                        Box::pin(async move { (TaskEnd::StartFailed { error }, None) })
                    }
                }
            }
        };
        self.tasks.insert(
            token,
            Task {
                job,
                task,
                ttl,
                fence_at: self_fence_deadline(Instant::now(), ttl, self.config.fence_margin),
                kill: Some(kill_tx),
                progress,
                abort: None,
            },
        );
        // Each task runs as its own local task, not as a future of this actor's context (the
        // context would poll every running task on every wake); its end comes back as a
        // message. Dropping the worker (a restart) aborts them, which kills their processes.
        let addr = ctx.address();
        let handle = actix::spawn(async move {
            let (end, output) = fut.await;
            addr.do_send(TaskDone {
                job,
                token,
                end,
                output,
            });
        });
        if let Some(task) = self.tasks.get_mut(&token) {
            task.abort = Some(handle.abort_handle());
        }
    }
}
