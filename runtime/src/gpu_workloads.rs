//! cadre's GPU workloads, registered through the extension API like any other workload
//! ([`Extensions::gpu_workloads`]): `gpu.saxpy`, `gpu.matmul` and `gpu.copy` run the kernels of
//! `cadre-gpu` (compiled by NVRTC, launched with cudarc) on the job's granted devices, one
//! context each, the work split across them; each part is checked against a CPU reference
//! before the job succeeds, and progress is reported as parts finish.
//!
//! Parameters (all optional): saxpy `{"n": 16777216, "a": 2.0, "seed": 1}`; matmul
//! `{"rows": 2048, "inner": 2048, "cols": 2048, "seed": 1, "repeats": 1}` (rows are split
//! across devices; the product is checked at sampled elements); copy `{"bytes": 1073741824,
//! "repeats": 10, "seed": 1}`. A job must ask for GPUs (`resources.gpus >= 1`).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;
use cadre_actors::protocol::GpuDevice;
use cadre_actors::workload::{CancelSignal, Run, WorkloadError};
use cadre_gpu::ops::{check, check_matmul_sampled, sample_value, saxpy_reference, split};
use cadre_gpu::DeviceKernels;
use cadre_supervisor::SupervisedContext;
use serde_json::{json, Value};

use crate::extensions::Extensions;

/// Which kernel a GPU workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKernel {
    /// `y = a * x + y`.
    Saxpy,
    /// A tiled single-precision matrix product.
    Matmul,
    /// A device-to-device copy.
    Copy,
}

impl GpuKernel {
    /// The workload's registered name.
    pub fn workload_name(self) -> &'static str {
        match self {
            GpuKernel::Saxpy => "gpu.saxpy",
            GpuKernel::Matmul => "gpu.matmul",
            GpuKernel::Copy => "gpu.copy",
        }
    }
}

impl Extensions {
    /// Adds the GPU workloads `gpu.saxpy`, `gpu.matmul` and `gpu.copy` (see the module
    /// comment of `gpu_workloads`).
    pub fn gpu_workloads(self) -> Extensions {
        [GpuKernel::Saxpy, GpuKernel::Matmul, GpuKernel::Copy]
            .into_iter()
            .fold(self, |ext, kernel| {
                ext.workload(kernel.workload_name(), move || GpuWorkload::new(kernel))
            })
    }
}

/// Kernels loaded per device ordinal, kept across runs (compiling takes NVRTC a while).
type Loaded = Arc<Mutex<HashMap<u32, Arc<DeviceKernels>>>>;

/// The workload actor for one kernel.
pub struct GpuWorkload {
    kernel: GpuKernel,
    loaded: Loaded,
}

impl GpuWorkload {
    /// A workload running `kernel`.
    pub fn new(kernel: GpuKernel) -> GpuWorkload {
        GpuWorkload {
            kernel,
            loaded: Arc::default(),
        }
    }
}

impl Actor for GpuWorkload {
    type Context = SupervisedContext<Self>;
}

/// The parsed parameters.
#[derive(Debug, Clone, Copy)]
struct Params {
    n: usize,
    a: f32,
    rows: usize,
    inner: usize,
    cols: usize,
    repeats: u32,
    seed: u64,
}

fn param(params: &Value, name: &str, default: u64, max: u64) -> Result<u64, WorkloadError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(WorkloadError::new(format!(
                "params.{name}: expected an integer from 1 to {max}, got {v}"
            ))),
        },
    }
}

fn parse(kernel: GpuKernel, params: &Value) -> Result<Params, WorkloadError> {
    if !(params.is_null() || params.is_object()) {
        return Err(WorkloadError::new("params: expected an object"));
    }
    let a =
        match params.get("a") {
            None | Some(Value::Null) => 2.0,
            Some(v) => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
                WorkloadError::new(format!("params.a: expected a number, got {v}"))
            })? as f32,
        };
    let seed = match params.get("seed") {
        None | Some(Value::Null) => 1,
        Some(v) => v.as_u64().ok_or_else(|| {
            WorkloadError::new(format!("params.seed: expected an integer, got {v}"))
        })?,
    };
    // Sizes are bounded so one job cannot ask for more than a large GPU holds.
    let n = match kernel {
        GpuKernel::Copy => param(params, "bytes", 1 << 30, 1 << 36)? as usize / 4,
        _ => param(params, "n", 1 << 24, u64::from(u32::MAX))? as usize,
    };
    let default_repeats = if kernel == GpuKernel::Copy { 10 } else { 1 };
    Ok(Params {
        n: n.max(1),
        a,
        rows: param(params, "rows", 2048, 65_536)? as usize,
        inner: param(params, "inner", 2048, 65_536)? as usize,
        cols: param(params, "cols", 2048, 65_536)? as usize,
        repeats: param(params, "repeats", default_repeats, 1000)? as u32,
        seed,
    })
}

/// The kernels on `gpu`, loaded on first use. The cache is not held while NVRTC compiles, so
/// a multi-GPU job's devices load in parallel (two loads of one device can race; the second
/// is dropped).
fn kernels(loaded: &Loaded, gpu: &GpuDevice) -> Result<Arc<DeviceKernels>, WorkloadError> {
    let cached = loaded
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&gpu.ordinal)
        .cloned();
    if let Some(k) = cached {
        return Ok(k);
    }
    let fail = |e: cadre_gpu::GpuError| {
        WorkloadError::new(format!("GPU {} ({}): {e}", gpu.index, gpu.uuid))
    };
    let driver = cadre_gpu::probe().map_err(fail)?;
    let k = Arc::new(DeviceKernels::load(&driver, gpu.ordinal as usize).map_err(fail)?);
    Ok(Arc::clone(
        loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(gpu.ordinal)
            .or_insert(k),
    ))
}

/// What one device did: its share of the work, checked.
struct Part {
    seconds: f64,
    /// Floating-point operations (saxpy, matmul) or bytes moved (copy).
    work: f64,
}

/// Why a part stopped: the GPU failed, or the task was cancelled between two launches.
enum Stop {
    Gpu(cadre_gpu::GpuError),
    Cancelled,
}

impl From<cadre_gpu::GpuError> for Stop {
    fn from(e: cadre_gpu::GpuError) -> Stop {
        Stop::Gpu(e)
    }
}

fn run_part(
    kernel: GpuKernel,
    k: &DeviceKernels,
    p: &Params,
    range: Range<usize>,
    cancel: &CancelSignal,
) -> Result<Part, Stop> {
    let device = k.device();
    match kernel {
        GpuKernel::Saxpy => {
            let x: Vec<f32> = range
                .clone()
                .map(|i| sample_value(p.seed, i as u64))
                .collect();
            let y: Vec<f32> = range
                .map(|i| sample_value(p.seed ^ 0x5A5A, i as u64))
                .collect();
            let out = k.saxpy(p.a, &x, &y)?;
            check(
                "saxpy",
                device,
                &out.value,
                &saxpy_reference(p.a, &x, &y),
                1e-6,
            )?;
            Ok(Part {
                seconds: out.seconds,
                work: 2.0 * x.len() as f64,
            })
        }
        GpuKernel::Matmul => {
            let rows = range.len();
            let a: Vec<f32> = (range.start * p.inner..range.end * p.inner)
                .map(|i| sample_value(p.seed, i as u64))
                .collect();
            let b: Vec<f32> = (0..p.inner * p.cols)
                .map(|i| sample_value(p.seed ^ 0xB0B0, i as u64))
                .collect();
            let mut seconds = 0.0;
            let mut last = Vec::new();
            for _ in 0..p.repeats {
                if cancel.is_cancelled() {
                    return Err(Stop::Cancelled);
                }
                let out = k.matmul(&a, &b, rows, p.inner, p.cols)?;
                seconds += out.seconds;
                last = out.value;
            }
            check_matmul_sampled(device, &a, &b, &last, rows, p.inner, p.cols, 256, 1e-4)?;
            Ok(Part {
                seconds,
                work: 2.0 * (rows * p.inner * p.cols) as f64 * f64::from(p.repeats),
            })
        }
        GpuKernel::Copy => {
            let src: Vec<f32> = range.map(|i| sample_value(p.seed, i as u64)).collect();
            let out = k.copy(&src, p.repeats)?;
            check("copy", device, &out.value, &src, 0.0)?;
            Ok(Part {
                seconds: out.seconds,
                work: 2.0 * (src.len() * 4) as f64 * f64::from(p.repeats),
            })
        }
    }
}

impl Handler<Run> for GpuWorkload {
    type Result = ResponseFuture<Result<Value, WorkloadError>>;

    fn handle(&mut self, run: Run, _: &mut Self::Context) -> Self::Result {
        let (kernel, loaded) = (self.kernel, Arc::clone(&self.loaded));
        Box::pin(async move {
            if run.gpus.is_empty() {
                return Err(WorkloadError::new(format!(
                    "{} runs on GPUs: submit it with resources.gpus of at least 1",
                    kernel.workload_name()
                )));
            }
            let p = parse(kernel, &run.params)?;
            let total = match kernel {
                GpuKernel::Matmul => p.rows,
                _ => p.n,
            };
            let ranges = split(total, run.gpus.len());
            // One blocking task per device (CUDA calls block), all at once.
            let parts: Vec<_> = run
                .gpus
                .iter()
                .cloned()
                .zip(ranges)
                .map(|(gpu, range)| {
                    let loaded = Arc::clone(&loaded);
                    let cancel = run.cancel.clone();
                    tokio::task::spawn_blocking(move || {
                        if cancel.is_cancelled() {
                            return Err(WorkloadError::new("cancelled"));
                        }
                        let k = kernels(&loaded, &gpu)?;
                        run_part(kernel, &k, &p, range, &cancel).map_err(|stop| match stop {
                            Stop::Cancelled => WorkloadError::new("cancelled"),
                            Stop::Gpu(e) => {
                                WorkloadError::new(format!("GPU {} ({}): {e}", gpu.index, gpu.uuid))
                            }
                        })
                    })
                })
                .collect();
            let count = parts.len();
            let (mut seconds, mut work) = (0.0f64, 0.0f64);
            for (i, part) in parts.into_iter().enumerate() {
                let part = part
                    .await
                    .map_err(|e| WorkloadError::new(format!("GPU part did not finish: {e}")))??;
                seconds = seconds.max(part.seconds);
                work += part.work;
                run.progress.report(
                    (i + 1) as f64 / count as f64,
                    Some(format!("{} of {count} device(s) done", i + 1)),
                );
            }
            if run.cancel.is_cancelled() {
                return Err(WorkloadError::new("cancelled"));
            }
            let rate = if seconds > 0.0 { work / seconds } else { 0.0 };
            let mut result = json!({
                "kernel": kernel.workload_name(),
                "devices": run.gpus.iter().map(|g| g.uuid.clone()).collect::<Vec<_>>(),
                "checked": true,
                "device_seconds": seconds,
            });
            match kernel {
                GpuKernel::Copy => result["bytes_per_second"] = json!(rate),
                _ => result["flops_per_second"] = json!(rate),
            }
            Ok(result)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parameters_are_checked_with_the_field_named() {
        let p = parse(GpuKernel::Matmul, &Value::Null).unwrap();
        assert_eq!((p.rows, p.inner, p.cols, p.repeats), (2048, 2048, 2048, 1));
        let p = parse(GpuKernel::Copy, &json!({"bytes": 4096})).unwrap();
        assert_eq!((p.n, p.repeats), (1024, 10));
        for (kernel, params, field) in [
            (GpuKernel::Saxpy, json!({"n": 0}), "params.n"),
            (GpuKernel::Saxpy, json!({"a": "x"}), "params.a"),
            (GpuKernel::Matmul, json!({"rows": 1_000_000}), "params.rows"),
            (GpuKernel::Copy, json!({"repeats": -1}), "params.repeats"),
            (GpuKernel::Copy, json!([1]), "params"),
        ] {
            let e = parse(kernel, &params).unwrap_err();
            assert!(e.0.starts_with(field), "{params}: {}", e.0);
        }
    }
}
