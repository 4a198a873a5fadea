//! The devices a real worker gives a task: a command's `CUDA_VISIBLE_DEVICES` (exactly the
//! granted GPUs), a workload's `Run::gpus`, and a task granted a GPU the worker does not own.
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_actors::job::{CommandJob, JobKind, JobSpec};
use cadre_actors::protocol::{GpuDevice, TaskEnd};
use cadre_actors::{FencingToken, JobId};
use serde_json::json;

use support::{lock, run, until, workload_spec, WorkerRig};

const GPU_A: &str = "GPU-00000000-0000-0000-0000-00000000000a";
const GPU_B: &str = "GPU-00000000-0000-0000-0000-00000000000b";

fn two_gpus() -> Vec<GpuDevice> {
    vec![
        GpuDevice {
            index: 0,
            uuid: GPU_A.to_owned(),
            ordinal: 0,
        },
        GpuDevice {
            index: 1,
            uuid: GPU_B.to_owned(),
            ordinal: 1,
        },
    ]
}

/// A command job printing its `CUDA_VISIBLE_DEVICES`, with its own env setting it to `all`.
fn print_visible_devices() -> JobSpec {
    let mut spec = workload_spec("print-devices", json!({}));
    spec.kind = JobKind::Command(CommandJob {
        program: "/bin/sh".to_owned(),
        args: vec![
            "-c".to_owned(),
            "printf %s \"$CUDA_VISIBLE_DEVICES\"".to_owned(),
        ],
        env: BTreeMap::from([("CUDA_VISIBLE_DEVICES".to_owned(), "all".to_owned())]),
        workdir: None,
        inherit_env: false,
    });
    spec
}

/// Runs `print_visible_devices` as job `job` with a grant of `gpus`; returns its stdout.
async fn visible_devices(rig: &WorkerRig, job: u64, gpus: Vec<u32>) -> String {
    let token = FencingToken(job * 10);
    rig.assign_gpus(job, token.0, print_visible_devices(), gpus)
        .await;
    // A real process: virtual time runs on while it does, so the limit is generous.
    until("the command ends", Duration::from_secs(600), || {
        rig.fake.finished().iter().any(|(t, _)| *t == token)
    })
    .await;
    let end = rig
        .fake
        .finished()
        .into_iter()
        .find(|(t, _)| *t == token)
        .unwrap()
        .1;
    assert_eq!(end, TaskEnd::Exited { code: 0 }, "job {job}");
    let (out, _) = rig.config.log_paths(JobId(job), 0);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn worker_sets_cuda_visible_devices_to_exactly_the_granted_gpus() {
    run(|_| async {
        let rig = WorkerRig::start_with(false, two_gpus()).await;
        assert_eq!(visible_devices(&rig, 1, vec![1]).await, GPU_B);
        assert_eq!(visible_devices(&rig, 2, Vec::new()).await, "");
        let both = visible_devices(&rig, 3, vec![0, 1]).await;
        assert_eq!(both, format!("{GPU_A},{GPU_B}"));
        rig.stop().await;
    });
}

#[test]
fn worker_fails_to_start_a_task_granted_a_gpu_it_does_not_own() {
    run(|_| async {
        let rig = WorkerRig::start_with(false, two_gpus()).await;
        rig.assign_gpus(1, 10, print_visible_devices(), vec![7])
            .await;
        rig.assign_gpus(2, 20, workload_spec("w", json!({ "steps": 1 })), vec![0, 7])
            .await;
        until("both tasks end", Duration::from_secs(5), || {
            rig.fake.finished().len() == 2
        })
        .await;
        for (token, end) in rig.fake.finished() {
            assert!(
                matches!(&end, TaskEnd::StartFailed { error } if error.contains("GPU 7")),
                "{token}: {end:?}"
            );
        }
        assert!(rig.fake.got().started.is_empty(), "a task was started");
        assert!(lock(&rig.workload).runs.is_empty(), "the workload ran");
        let (out, _) = rig.config.log_paths(JobId(1), 0);
        assert!(!out.exists(), "the command ran");
        rig.stop().await;
    });
}

#[test]
fn worker_gives_a_workload_exactly_its_granted_gpus() {
    run(|_| async {
        let rig = WorkerRig::start_with(false, two_gpus()).await;
        rig.assign_gpus(1, 10, workload_spec("w", json!({ "steps": 1 })), vec![0])
            .await;
        rig.assign_gpus(2, 20, workload_spec("w", json!({ "steps": 1 })), Vec::new())
            .await;
        until("both tasks end", Duration::from_secs(5), || {
            rig.fake.finished().len() == 2
        })
        .await;
        let mut seen = lock(&rig.workload).gpus.clone();
        seen.sort_by_key(|(job, _)| *job);
        assert_eq!(
            seen,
            vec![
                (JobId(1), vec![two_gpus()[0].clone()]),
                (JobId(2), Vec::new())
            ]
        );
        rig.stop().await;
    });
}
