//! What tests build and expect: job specs (`workload_spec`, `sched_job`, `gpu_job`), the
//! parameters of a test workload that runs until cancelled (`forever`), and the end of a task
//! whose lease was lost (`LEASE_LOST`).

use cadre_actors::job::{JobKind, JobSpec, Resources, WorkloadJob};
use cadre_actors::protocol::{KillReason, TaskEnd};
use serde_json::json;

pub fn workload_spec(name: &str, params: serde_json::Value) -> JobSpec {
    let mut spec = JobSpec::new(
        name,
        JobKind::Workload(WorkloadJob {
            name: "test".to_owned(),
            params,
        }),
    );
    spec.resources = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 20,
        gpus: 0,
    };
    spec
}

pub fn forever() -> serde_json::Value {
    json!({ "every_ms": 10 })
}

pub const LEASE_LOST: TaskEnd = TaskEnd::Killed {
    reason: KillReason::LeaseLost,
};

/// A job of one task that needs `gpus` whole GPUs, no retries.
pub fn gpu_job(name: &str, gpus: u32) -> JobSpec {
    let mut spec = sched_job(name, 0);
    spec.resources.gpus = gpus;
    spec
}

/// A job whose lost attempts are run again `requeues` times.
pub fn sched_job(name: &str, requeues: u32) -> JobSpec {
    let mut spec = workload_spec(name, json!({}));
    spec.max_requeues = requeues;
    spec
}
