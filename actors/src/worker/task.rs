//! What a task needs to run ([`TaskRun`], taken from its assignment), the start report both
//! kinds of task send, and the workload path: a `Run` to the extension's workload actor, with
//! its timeout and its kill turned into a cancel signal and a grace.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::WorkerConfig;
use crate::ids::{FencingToken, WorkerId};
use crate::job::{JobId, WorkloadJob};
use crate::metrics as m;
use crate::protocol::{GpuDevice, KillReason, Started, TaskEnd};
use crate::workload::{CancelSignal, ProgressReporter, Run};

/// How a task's wait ended.
pub(super) enum Waited<T> {
    Done(T),
    Kill(KillReason),
}

/// What a task needs to run, taken from its assignment.
pub(super) struct TaskRun {
    pub(super) config: Arc<WorkerConfig>,
    pub(super) started: Recipient<Started>,
    pub(super) worker: WorkerId,
    pub(super) job: JobId,
    pub(super) token: FencingToken,
    pub(super) task: u32,
    pub(super) attempt: u32,
    pub(super) gang: u32,
    pub(super) timeout: Option<Duration>,
    /// The GPUs its grant names, resolved to devices.
    pub(super) gpus: Vec<GpuDevice>,
    /// The job's name (`CADRE_JOB_NAME`).
    pub(super) name: String,
    /// What its grant holds: the limits of its cgroup.
    pub(super) cpu_millis: u32,
    pub(super) memory_bytes: u64,
}

impl TaskRun {
    /// Tells the scheduler the task started; `false` when it refused (the lease is not live).
    pub(super) async fn report_start(&self) -> bool {
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

    pub(super) async fn workload(
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
