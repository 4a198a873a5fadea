//! The GPU workloads' paths that need no GPU: a job granted no GPU is refused with the reason,
//! bad parameters name their field, and a job granted a device on a machine without a CUDA
//! driver fails with the driver's typed error instead of panicking (cudarc would panic if it
//! were called without the library). The kernels themselves are checked on a GPU by
//! gpu/tests/device.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cadre_actors::job::JobId;
use cadre_actors::protocol::GpuDevice;
use cadre_actors::workload::{CancelSignal, ProgressReporter, Run, WorkloadError};
use cadre_runtime::gpu_workloads::{GpuKernel, GpuWorkload};
use cadre_supervisor::{SupervisorSpec, WorkerSpec};
use serde_json::{json, Value};

fn run(params: Value, gpus: Vec<GpuDevice>) -> Run {
    let (_, cancel) = CancelSignal::new();
    run_with(params, gpus, cancel)
}

fn run_with(params: Value, gpus: Vec<GpuDevice>, cancel: CancelSignal) -> Run {
    Run {
        job: JobId(1),
        attempt: 1,
        task: 0,
        gang: 1,
        params,
        progress: ProgressReporter::new(),
        cancel,
        gpus,
    }
}

fn device() -> GpuDevice {
    GpuDevice {
        index: 0,
        uuid: "GPU-00000000-0000-0000-0000-000000000000".to_owned(),
        ordinal: 0,
    }
}

fn outcome(kernel: GpuKernel, msg: Run) -> Result<Value, WorkloadError> {
    actix::System::new().block_on(async move {
        let spec = WorkerSpec::new("gpu", move || GpuWorkload::new(kernel));
        let addr = spec.addr();
        let root = SupervisorSpec::one_for_one()
            .child(spec)
            .start("test")
            .await
            .unwrap();
        let out = addr.send(msg).await.unwrap();
        root.stop().await.unwrap();
        out
    })
}

#[test]
fn a_job_without_gpus_is_refused_with_the_reason() {
    let e = outcome(GpuKernel::Saxpy, run(Value::Null, Vec::new())).unwrap_err();
    assert!(e.0.contains("resources.gpus"), "{}", e.0);
}

#[test]
fn bad_parameters_name_their_field() {
    let e = outcome(GpuKernel::Matmul, run(json!({"rows": 0}), vec![device()])).unwrap_err();
    assert!(e.0.starts_with("params.rows"), "{}", e.0);
}

#[test]
fn without_a_driver_a_granted_job_fails_with_the_typed_error() {
    if cadre_gpu::probe().is_ok() {
        println!(
            "this machine has a CUDA driver and a device: the no-driver path is not observable"
        );
        return;
    }
    for kernel in [GpuKernel::Saxpy, GpuKernel::Matmul, GpuKernel::Copy] {
        let e = outcome(
            kernel,
            run(
                json!({"n": 1024, "rows": 16, "inner": 16, "cols": 16, "bytes": 4096}),
                vec![device()],
            ),
        )
        .unwrap_err();
        assert!(
            e.0.contains("GPU 0 (GPU-00000000")
                && (e.0.contains("no CUDA driver") || e.0.contains("no device")),
            "{kernel:?}: {}",
            e.0
        );
    }
}

#[test]
fn a_task_cancelled_before_its_parts_start_touches_no_device() {
    let (raise, cancel) = CancelSignal::new();
    raise.send(true).unwrap();
    let e = outcome(
        GpuKernel::Matmul,
        run_with(
            json!({"rows": 16, "inner": 16, "cols": 16}),
            vec![device()],
            cancel,
        ),
    )
    .unwrap_err();
    assert_eq!(e.0, "cancelled");
}
