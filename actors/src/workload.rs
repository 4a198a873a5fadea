//! The extension interface for workloads: an extension adds a workload kind as a supervised
//! actix actor that handles [`Run`], reports progress through the [`ProgressReporter`] it is
//! handed, watches its [`CancelSignal`], and answers with a JSON result or a [`WorkloadError`].
//!
//! ```no_run
//! use actix::prelude::*;
//! use cadre_actors::workload::{Run, WorkloadError};
//! use cadre_supervisor::SupervisedContext;
//!
//! /// Counts to `params.n`, reporting progress as it goes.
//! #[derive(Default)]
//! struct Count;
//! impl Actor for Count {
//!     type Context = SupervisedContext<Self>;
//! }
//! impl Handler<Run> for Count {
//!     type Result = ResponseFuture<Result<serde_json::Value, WorkloadError>>;
//!     fn handle(&mut self, run: Run, _: &mut Self::Context) -> Self::Result {
//!         Box::pin(async move {
//!             let n = run.params["n"].as_u64().ok_or_else(|| WorkloadError::new("params.n: expected a number"))?;
//!             for i in 0..n {
//!                 if run.cancel.is_cancelled() {
//!                     return Err(WorkloadError::new("cancelled"));
//!                 }
//!                 run.progress.report((i + 1) as f64 / n as f64, None);
//!                 tokio::task::yield_now().await;
//!             }
//!             Ok(serde_json::json!({ "counted": n }))
//!         })
//!     }
//! }
//! ```
//!
//! A panic in the handler (or in its future) fails the actor: the supervisor logs and counts it
//! and restarts the actor, the job ends as failed with that reason, and the node serves on.
//! A handler should not block its thread; blocking work belongs on `tokio::task::spawn_blocking`.

use std::sync::{Arc, Mutex, PoisonError};

use actix::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::job::JobId;
use crate::protocol::GpuDevice;

/// A task's progress: how far (0.0 ..= 1.0) and, optionally, what it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Done so far, 0.0 ..= 1.0.
    pub fraction: f64,
    /// A short note (`"block 17 of 64"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Default)]
struct Slot {
    latest: Option<Progress>,
    seq: u64,
}

/// Where a task reports progress. Reporting only replaces the latest value (it never blocks or
/// queues); the worker flushes the latest values on its own schedule.
#[derive(Debug, Clone, Default)]
pub struct ProgressReporter {
    slot: Arc<Mutex<Slot>>,
}

impl ProgressReporter {
    /// A reporter nobody reads yet.
    pub fn new() -> ProgressReporter {
        ProgressReporter::default()
    }

    /// Records progress; `fraction` is clamped to 0.0 ..= 1.0 (a NaN counts as 0).
    pub fn report(&self, fraction: f64, message: Option<String>) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.latest = Some(Progress { fraction, message });
        slot.seq += 1;
    }

    /// The latest report if it is newer than `seen` (a sequence number from an earlier call),
    /// with its sequence number.
    pub fn newer_than(&self, seen: u64) -> Option<(u64, Progress)> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match &slot.latest {
            Some(p) if slot.seq > seen => Some((slot.seq, p.clone())),
            _ => None,
        }
    }
}

/// Tells a running workload that it should stop (cancelled, timed out, lease lost).
#[derive(Debug, Clone)]
pub struct CancelSignal(watch::Receiver<bool>);

impl CancelSignal {
    /// A signal and the sender that raises it.
    pub fn new() -> (watch::Sender<bool>, CancelSignal) {
        let (tx, rx) = watch::channel(false);
        (tx, CancelSignal(rx))
    }

    /// Whether the task should stop now.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the task should stop (or its worker is gone).
    pub async fn cancelled(&mut self) {
        if self.0.wait_for(|c| *c).await.is_err() {
            tracing::debug!("cancel signal's worker side is gone; treating as cancelled");
        }
    }
}

/// What a workload returns when it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct WorkloadError(pub String);

impl WorkloadError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> WorkloadError {
        WorkloadError(message.into())
    }
}

/// Worker to workload actor: run one task. In-process only (it carries handles); the job's
/// identity and parameters are plain data.
#[derive(Debug, Message)]
#[rtype(result = "Result<serde_json::Value, WorkloadError>")]
pub struct Run {
    /// The job.
    pub job: JobId,
    /// Its attempt (1 for the first).
    pub attempt: u32,
    /// The task's index within its gang.
    pub task: u32,
    /// The gang's size (1 for an ordinary job).
    pub gang: u32,
    /// The job's parameters, as submitted.
    pub params: serde_json::Value,
    /// Where to report progress.
    pub progress: ProgressReporter,
    /// Raised when the task must stop.
    pub cancel: CancelSignal,
    /// The whole GPUs granted to the task (empty for a job that asked for none): the task
    /// uses these and no others.
    pub gpus: Vec<GpuDevice>,
}
