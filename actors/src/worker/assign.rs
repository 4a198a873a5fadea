//! An assignment becoming a running task: its GPUs resolved, its future chosen by kind (command
//! or workload), run as a local task of its own; and its end ([`TaskDone`]) going back to the
//! scheduler as `Finished` under the task's lease token.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::task::TaskRun;
use super::{Ctx, Task, Worker};
use crate::ids::FencingToken;
use crate::job::{JobId, JobKind};
use crate::lease::self_fence_deadline;
use crate::metrics as m;
use crate::protocol::{Assign, Finished, GpuDevice, TaskEnd};
use crate::store::LogsNote;
use crate::workload::ProgressReporter;

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

impl Handler<Assign> for Worker {
    type Result = ();

    fn handle(&mut self, msg: Assign, ctx: &mut Ctx) {
        let worker = match self.id {
            Some(worker) => worker,
            // The scheduler placed work on this registration before its answer reached the
            // worker (a remote scheduler's first assignment can overtake it): the grant names
            // the registration, which the answer then confirms.
            None if self.registering => {
                self.id = Some(msg.grant.worker);
                msg.grant.worker
            }
            None => {
                tracing::warn!(job = %msg.job, lease = %msg.token,
                    "assignment while not registered: ignored, its lease lapses");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "unregistered_assign").increment(1);
                return;
            }
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
