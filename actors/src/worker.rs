//! The CPU worker actor: registers with the scheduler, runs the tasks it is assigned through
//! the launcher, reports their start and end under their lease tokens, renews its leases in one
//! batch per round, and fences itself.
//!
//! Self-fencing: each task has a kill-by instant, the send time of its last acknowledged
//! renewal plus the lease's time to live minus a margin ([`self_fence_deadline`]). A worker that
//! cannot renew before then (scheduler unreachable, overloaded, partitioned) stops the task
//! itself, so by the time the scheduler sees the lease expire and places the job again, the old
//! attempt is gone. A renewal the scheduler refuses stops the task at once.
//!
//! A task runs as a future spawned in the actor's context. If the actor fails and restarts, its
//! futures are dropped and the launcher kills each process group on drop; the scheduler then
//! sees the leases lapse (the new instance registers under a new id) and requeues the jobs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_cpu::launcher::{CommandSpec, ExitOutcome, ExitReport, Launcher};
use cadre_supervisor::SupervisedContext;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Error;
use crate::ids::{FencingToken, WorkerId};
use crate::job::{JobId, JobKind};
use crate::lease::self_fence_deadline;
use crate::metrics as m;
use crate::protocol::{
    Assign, Finished, Heartbeat, Kill, KillReason, Register, Renew, Started, TaskEnd, WorkerLink,
};
use crate::sched::WorkerCapacity;
use crate::scheduler::Scheduler;

type Ctx = SupervisedContext<Worker>;

/// What a worker needs; shared by every instance the supervisor creates.
#[derive(Debug)]
pub struct WorkerConfig {
    /// The worker's name in logs and `cadre nodes`.
    pub name: String,
    /// What it offers the scheduler.
    pub capacity: WorkerCapacity,
    /// Spawns command jobs.
    pub launcher: Launcher,
    /// Where job output goes: `<job>.<task>.out` and `.err`.
    pub log_dir: PathBuf,
    /// The scheduler.
    pub scheduler: Addr<Scheduler>,
    /// The health monitor, if heartbeats go to one.
    pub health: Option<Recipient<Heartbeat>>,
    /// How often leases are renewed and heartbeats sent.
    pub renew_every: Duration,
    /// How long before its lease would lapse a task is killed when renewals fail.
    pub fence_margin: Duration,
    /// Grace between `SIGTERM` and `SIGKILL` when a task is stopped.
    pub term_grace: Duration,
}

impl WorkerConfig {
    /// The stdout and stderr log paths of a task.
    pub fn log_paths(&self, job: JobId, task: u32) -> (PathBuf, PathBuf) {
        (
            self.log_dir.join(format!("{job}.{task}.out")),
            self.log_dir.join(format!("{job}.{task}.err")),
        )
    }
}

/// The worker actor (see the module comment).
pub struct Worker {
    config: Arc<WorkerConfig>,
    id: Option<WorkerId>,
    registering: bool,
    renewing: bool,
    tasks: HashMap<FencingToken, Task>,
}

struct Task {
    job: JobId,
    ttl: Duration,
    fence_at: Instant,
    kill: Option<oneshot::Sender<KillReason>>,
}

impl Worker {
    /// A worker that registers when it starts.
    pub fn new(config: Arc<WorkerConfig>) -> Worker {
        Worker {
            config,
            id: None,
            registering: false,
            renewing: false,
            tasks: HashMap::new(),
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
        let scheduler = self.config.scheduler.clone();
        ctx.spawn(
            async move { scheduler.send(msg).await }
                .into_actor(self)
                .map(|result, act, ctx| {
                    act.registering = false;
                    match result {
                        Ok(Ok(id)) => {
                            tracing::info!(worker = %id, path = ctx.path(), "worker registered with the scheduler");
                            act.id = Some(id);
                        }
                        Ok(Err(error)) => {
                            tracing::error!(path = ctx.path(), %error, "scheduler refused the worker's registration; retrying");
                            metrics::counter!(m::WORKER_ERRORS, "kind" => "register").increment(1);
                        }
                        Err(error) => {
                            tracing::error!(path = ctx.path(), %error, "scheduler unreachable for registration; retrying");
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
        if self.renewing || self.tasks.is_empty() {
            return;
        }
        self.renewing = true;
        let leases: Vec<(JobId, FencingToken)> = self
            .tasks
            .iter()
            .map(|(token, t)| (t.job, *token))
            .collect();
        let scheduler = self.config.scheduler.clone();
        let sent_at = Instant::now();
        let margin = self.config.fence_margin;
        ctx.spawn(
            async move {
                tokio::time::timeout(margin, scheduler.send(Renew { worker, leases })).await
            }
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
                    Ok(Ok(Err(Error::UnknownWorker { .. }))) => {
                        // The scheduler restarted and lost every lease with its memory; the
                        // tasks stop and the worker joins again.
                        tracing::warn!(worker = %worker, path = ctx.path(),
                            "scheduler no longer knows this worker: its tasks stop and it registers again");
                        let tokens: Vec<FencingToken> = act.tasks.keys().copied().collect();
                        for token in tokens {
                            act.kill(token, KillReason::LeaseLost);
                        }
                        act.id = None;
                        act.register(ctx);
                    }
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
}

impl Actor for Worker {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        self.register(ctx);
        ctx.run_interval(self.config.renew_every, |act, ctx| act.tick(ctx));
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
enum Waited {
    Exit(Result<ExitReport, cadre_cpu::CpuError>),
    Kill(KillReason),
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

impl Handler<Assign> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Assign, ctx: &mut Ctx) {
        let Some(worker) = self.id else {
            tracing::warn!(job = %msg.job, lease = %msg.token, "assignment before registration: ignored, its lease lapses");
            return;
        };
        let (kill_tx, mut kill_rx) = oneshot::channel();
        let ttl = msg.lease_ttl;
        self.tasks.insert(
            msg.token,
            Task {
                job: msg.job,
                ttl,
                fence_at: self_fence_deadline(Instant::now(), ttl, self.config.fence_margin),
                kill: Some(kill_tx),
            },
        );
        let config = Arc::clone(&self.config);
        let (job, token, task, attempt) = (msg.job, msg.token, msg.task, msg.attempt);
        let timeout = msg.spec.timeout_secs.map(Duration::from_secs);
        let gang = msg.spec.gang.max(1);
        let command = match msg.spec.kind {
            JobKind::Command(c) => Ok(c),
            JobKind::Workload(w) => Err(format!(
                "workload {:?} is not registered on this worker",
                w.name
            )),
        };
        let fut = async move {
            let command = match command {
                Ok(c) => c,
                Err(error) => return TaskEnd::StartFailed { error },
            };
            let (out, err) = config.log_paths(job, task);
            let mut spec = CommandSpec::new(
                std::iter::once(command.program).chain(command.args),
                out,
                err,
            );
            spec.env = command.env.into_iter().collect();
            spec.env.extend([
                ("CADRE_JOB_ID".to_owned(), job.to_string()),
                ("CADRE_ATTEMPT".to_owned(), attempt.to_string()),
                ("CADRE_TASK".to_owned(), task.to_string()),
                ("CADRE_GANG_SIZE".to_owned(), gang.to_string()),
            ]);
            spec.cwd = command.workdir.map(PathBuf::from);
            // A node killed outright takes its jobs with it instead of leaving them running
            // unaccounted while the restarted node runs their next attempt.
            spec.limits.parent_death_signal = Some(libc::SIGKILL);
            let mut process = match config.launcher.spawn(&spec, &job.to_string()) {
                Ok(p) => p,
                Err(error) => {
                    // The launcher logged and counted it.
                    return TaskEnd::StartFailed {
                        error: error.to_string(),
                    };
                }
            };
            match config.scheduler.send(Started { worker, job, token }).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(worker = %worker, job = %job, lease = %token, %error,
                        "scheduler refused the start: the task stops");
                    return match process.terminate(config.term_grace).await {
                        Ok(_) => TaskEnd::Killed {
                            reason: KillReason::LeaseLost,
                        },
                        Err(error) => TaskEnd::Error {
                            error: error.to_string(),
                        },
                    };
                }
                Err(error) => {
                    tracing::error!(worker = %worker, job = %job, lease = %token, %error,
                        "start not delivered to the scheduler; renewals decide the task's fate");
                    metrics::counter!(m::WORKER_SEND_FAILURES, "msg" => "started").increment(1);
                }
            }
            let waited = {
                let wait = async {
                    match timeout {
                        Some(t) => process.wait_timeout(t, config.term_grace).await,
                        None => process.wait().await,
                    }
                };
                tokio::pin!(wait);
                tokio::select! {
                    report = &mut wait => Waited::Exit(report),
                    reason = &mut kill_rx => Waited::Kill(reason.unwrap_or(KillReason::LeaseLost)),
                }
            };
            match waited {
                Waited::Exit(Ok(report)) => report_end(report),
                Waited::Exit(Err(error)) => TaskEnd::Error {
                    error: error.to_string(),
                },
                Waited::Kill(reason) => match process.terminate(config.term_grace).await {
                    Ok(report) if report.terminated => TaskEnd::Killed { reason },
                    // It ended on its own just before the kill: report how.
                    Ok(report) => report_end(report),
                    Err(error) => TaskEnd::Error {
                        error: error.to_string(),
                    },
                },
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |end, act, ctx| {
            act.tasks.remove(&token);
            if let TaskEnd::Error { error } = &end {
                tracing::error!(worker = %worker, job = %job, lease = %token, %error, path = ctx.path(),
                    "lost track of a task's process");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "wait").increment(1);
            }
            let scheduler = act.config.scheduler.clone();
            ctx.spawn(
                async move { scheduler.send(Finished { worker, job, token, end }).await }
                    .into_actor(act)
                    .map(move |result, _, _| match result {
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
                    }),
            );
        }));
    }
}
