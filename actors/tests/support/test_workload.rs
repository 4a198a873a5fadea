//! The test workload (`TestWorkload`, offered as `test`): it reports progress on a timer and
//! returns after a number of steps or runs until cancelled, recording what it saw
//! (`WorkloadSeen`).

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use cadre_actors::protocol::GpuDevice;
use cadre_actors::workload::{Run, WorkloadError};
use cadre_actors::JobId;
use cadre_supervisor::SupervisedContext;
use serde_json::json;
use tokio::time::sleep;

use super::harness::{lock, ms};

/// What the test workload saw.
#[derive(Default)]
pub struct WorkloadSeen {
    pub runs: Vec<JobId>,
    pub cancelled: Vec<JobId>,
    /// The GPUs each run was given (`Run::gpus`), in run order.
    pub gpus: Vec<(JobId, Vec<GpuDevice>)>,
}

/// A workload that reports progress every `params.every_ms` (10 by default) and returns
/// `{"steps": n}` after `params.steps` reports, or runs until its cancel signal is raised.
#[derive(Clone, Default)]
pub struct TestWorkload {
    pub seen: Arc<Mutex<WorkloadSeen>>,
}

impl Actor for TestWorkload {
    type Context = SupervisedContext<Self>;
}

impl Handler<Run> for TestWorkload {
    type Result = ResponseFuture<Result<serde_json::Value, WorkloadError>>;
    fn handle(&mut self, run: Run, _: &mut Self::Context) -> Self::Result {
        let seen = Arc::clone(&self.seen);
        {
            let mut s = lock(&seen);
            s.runs.push(run.job);
            s.gpus.push((run.job, run.gpus.clone()));
        }
        let every = ms(run.params["every_ms"].as_u64().unwrap_or(10));
        let steps = run.params["steps"].as_u64();
        Box::pin(async move {
            let Run {
                job,
                progress,
                mut cancel,
                ..
            } = run;
            let mut done = 0u64;
            loop {
                if steps.is_some_and(|n| done >= n) {
                    return Ok(json!({ "steps": done }));
                }
                tokio::select! {
                    () = cancel.cancelled() => {
                        lock(&seen).cancelled.push(job);
                        return Err(WorkloadError::new("cancelled"));
                    }
                    () = sleep(every) => {
                        done += 1;
                        progress.report(done as f64 / 1e6, Some(format!("step {done}")));
                    }
                }
            }
        })
    }
}
