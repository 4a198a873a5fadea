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
//! A task runs as a local task of its own on the worker's arbiter (not a future of the actor's
//! context, which would poll every running task on each wake), its end coming back as a
//! message. If the actor fails and restarts, dropping it aborts its tasks and the launcher kills
//! each process group on drop; the scheduler then sees the leases lapse (the new instance
//! registers under a new id) and requeues the jobs.
//!
//! [`self_fence_deadline`]: crate::lease::self_fence_deadline
//! [`ProgressFlush`]: crate::protocol::ProgressFlush
//! [`Backpressure`]: crate::protocol::Backpressure

// The roles by file: this one holds the actor (its state, registration, kills);
// `config.rs` what a worker needs (`WorkerConfig`); `assign.rs` an assignment becoming a
// running task and its end going back to the scheduler; `renew.rs` the heartbeat, lease
// renewals and self-fencing; `progress.rs` progress flushes and their circuit; `task.rs` what
// a task needs to run and the workload path; `command.rs` the command path (environment,
// scratch, cgroup, spawn, waiting, kill).

mod assign;
mod command;
mod config;
mod progress;
mod renew;
mod task;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_supervisor::SupervisedContext;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::ids::{FencingToken, WorkerId};
use crate::job::JobId;
use crate::metrics as m;
use crate::protocol::{Kill, KillReason, Register, SchedulerLink, WorkerLink};
use crate::workload::ProgressReporter;

pub use config::{task_log_paths, WorkerConfig};
use progress::FlushState;
pub use progress::{CIRCUIT_FAILURES, CIRCUIT_OPEN};

type Ctx = SupervisedContext<Worker>;

/// Finds the scheduler: called at start and again whenever the progress circuit opens.
pub type Resolver = Arc<dyn Fn() -> SchedulerLink + Send + Sync>;

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
            flush: FlushState::new(),
        }
    }

    fn register(&mut self, ctx: &mut Ctx) {
        if self.registering {
            return;
        }
        self.registering = true;
        let msg = Register {
            identity: self.config.identity.clone(),
            datacenter: self.config.datacenter.clone(),
            labels: self.config.labels.clone(),
            capacity: self.config.capacity.clone(),
            link: WorkerLink {
                assign: ctx.address().recipient(),
                kill: ctx.address().recipient(),
            },
            address: None,
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
