//! The `gpu` suite: GPU jobs through cadre against the same kernels launched with bare cudarc
//! (through `cadre-gpu`'s `DeviceKernels`) in the same run. On a machine without a usable GPU
//! (no driver, no device, no NVRTC) it prints why it did not run and reports nothing.
//!
//! - `job_overhead`: small saxpy jobs (`gpu.saxpy`, one GPU each, the node's data directory on
//!   tmpfs so the disk does not dominate) against the same work done bare (inputs made, copied
//!   in, kernel, copied out, checked against the CPU): wall time per job, and the difference
//!   (target: at most 20 us added per job). Rounds alternate; medians.
//! - `matmul`: TFLOP/s of the tiled matmul as a `gpu.matmul` job against bare (device time from
//!   CUDA events in both; target ratio at least 0.95).
//! - `copy`: device-to-device copy bandwidth (bytes read plus written per second) against the
//!   card's published memory bandwidth, where the card is known.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cadre_gpu::ops::{check, check_matmul_sampled, sample_value, saxpy_reference};
use cadre_gpu::DeviceKernels;
use serde_json::{json, Value};

use crate::e2e::{agent, check as failed, cleanup, drive, get, scratch_in, RunningNode};
use crate::report::{median, selected, Reporter};
use crate::BenchError;

/// Published memory bandwidth, in bytes per second, of the cards we know by name.
fn published_bandwidth(name: &str) -> Option<f64> {
    [
        ("H200", 4.8e12),
        ("H100 SXM", 3.35e12),
        ("H100 PCIe", 2.0e12),
        ("H100", 3.35e12),
        ("A100-SXM4-80GB", 2.039e12),
        ("A100", 1.555e12),
        ("L40S", 0.864e12),
    ]
    .into_iter()
    .find(|(model, _)| name.contains(model))
    .map(|(_, bw)| bw)
}

fn gpu_error(e: cadre_gpu::GpuError) -> BenchError {
    failed(format!("GPU: {e}"))
}

/// Runs the suite, or says why it cannot run here.
pub fn run(quick: bool) -> Result<(), BenchError> {
    let report = Reporter::new("gpu");
    let driver = match cadre_gpu::probe() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gpu: not run: {e}");
            return Ok(());
        }
    };
    let devices = driver.inventory().map_err(gpu_error)?;
    let Some(first) = devices.first().cloned() else {
        eprintln!("gpu: not run: the driver lists no device");
        return Ok(());
    };
    let kernels = match DeviceKernels::load(&driver, 0) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("gpu: not run: {e}");
            return Ok(());
        }
    };
    eprintln!(
        "gpu: device 0: {} ({}), {} GiB",
        first.name,
        first.arch(),
        first.total_memory_bytes >> 30
    );
    let shm = PathBuf::from("/dev/shm");
    let root = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    let dir = scratch_in(&root, "gpu")?;
    let node = RunningNode::start(&dir, 1000)?;
    let result = cases(quick, &report, &kernels, &first, &node);
    node.stop()?;
    cleanup(&dir);
    result
}

fn cases(
    quick: bool,
    report: &Reporter,
    kernels: &DeviceKernels,
    device: &cadre_gpu::DeviceInfo,
    node: &RunningNode,
) -> Result<(), BenchError> {
    if selected("job_overhead") {
        job_overhead(quick, report, kernels, node)?;
    }
    if selected("matmul") {
        matmul(quick, report, kernels, node)?;
    }
    if selected("copy") {
        copy(quick, report, kernels, device, node)?;
    }
    Ok(())
}

/// Elements per saxpy job in the overhead case: small, so the fixed cost shows.
const SMALL_N: usize = 4096;

/// The bare version of one `gpu.saxpy` job: what the workload does for one device.
fn bare_saxpy(kernels: &DeviceKernels, seed: u64) -> Result<(), BenchError> {
    let x: Vec<f32> = (0..SMALL_N as u64).map(|i| sample_value(seed, i)).collect();
    let y: Vec<f32> = (0..SMALL_N as u64)
        .map(|i| sample_value(seed ^ 0x5A5A, i))
        .collect();
    let out = kernels.saxpy(2.0, &x, &y).map_err(gpu_error)?;
    check("saxpy", 0, &out.value, &saxpy_reference(2.0, &x, &y), 1e-6).map_err(gpu_error)
}

fn job_overhead(
    quick: bool,
    report: &Reporter,
    kernels: &DeviceKernels,
    node: &RunningNode,
) -> Result<(), BenchError> {
    let (jobs, rounds) = if quick { (200, 1) } else { (2_000, 3) };
    let spec = json!({"name": "saxpy", "resources": {"gpus": 1},
        "kind": {"workload": {"name": "gpu.saxpy", "params": {"n": SMALL_N}}}});
    // Warm up both: kernels compiled and loaded, the node's path exercised.
    bare_saxpy(kernels, 1)?;
    drive(&node.api, &spec, 1, 10, 1)?;
    let (mut bare, mut cadre) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        for seed in 0..jobs as u64 {
            bare_saxpy(kernels, seed)?;
        }
        bare.push(started.elapsed().as_secs_f64() * 1e6 / jobs as f64);
        let secs = drive(&node.api, &spec, jobs / 100, 100, 2)?;
        cadre.push(secs * 1e6 / jobs as f64);
    }
    let (bare, cadre) = (median(&bare), median(&cadre));
    report.emit("job_overhead", "bare_cudarc", "us_per_job", bare, "us")?;
    report.emit("job_overhead", "cadre_api", "us_per_job", cadre, "us")?;
    report.emit(
        "job_overhead",
        "cadre_minus_bare",
        "added_us_per_job",
        cadre - bare,
        "us",
    )?;
    Ok(())
}

/// Submits one job and waits for it to succeed; returns its result.
fn one_job(node: &RunningNode, spec: &Value) -> Result<Value, BenchError> {
    let agent = agent();
    let mut r = agent
        .post(format!("{}/v1/jobs", node.api))
        .header("content-type", "application/json")
        .send(
            serde_json::to_vec(spec)
                .map_err(|e| failed(e.to_string()))?
                .as_slice(),
        )
        .map_err(|e| failed(e.to_string()))?;
    let body: Value = r
        .body_mut()
        .read_json()
        .map_err(|e| failed(e.to_string()))?;
    let id = body["id"]
        .as_u64()
        .ok_or_else(|| failed(format!("submit answered {body}")))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let job = get(&agent, &format!("{}/v1/jobs/{id}", node.api))?;
        match job["state"].as_str() {
            Some("succeeded") => return Ok(job["outcome"]["result"].clone()),
            Some("queued" | "leased" | "running") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return Err(failed(format!("GPU job did not succeed: {job}"))),
        }
    }
}

fn matmul(
    quick: bool,
    report: &Reporter,
    kernels: &DeviceKernels,
    node: &RunningNode,
) -> Result<(), BenchError> {
    let (size, repeats, rounds) = if quick { (1024, 3, 1) } else { (4096, 5, 3) };
    let a: Vec<f32> = (0..(size * size) as u64)
        .map(|i| sample_value(1, i))
        .collect();
    let b: Vec<f32> = (0..(size * size) as u64)
        .map(|i| sample_value(1 ^ 0xB0B0, i))
        .collect();
    let spec = json!({"name": "matmul", "resources": {"gpus": 1}, "kind": {"workload": {
        "name": "gpu.matmul", "params": {"rows": size, "inner": size, "cols": size, "repeats": repeats}}}});
    let flops = 2.0 * (size as f64).powi(3) * f64::from(repeats);
    let (mut bare, mut cadre) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut seconds = 0.0;
        let mut last = Vec::new();
        for _ in 0..repeats {
            let out = kernels
                .matmul(&a, &b, size, size, size)
                .map_err(gpu_error)?;
            seconds += out.seconds;
            last = out.value;
        }
        check_matmul_sampled(0, &a, &b, &last, size, size, size, 256, 1e-4).map_err(gpu_error)?;
        bare.push(flops / seconds / 1e12);
        let result = one_job(node, &spec)?;
        let rate = result["flops_per_second"]
            .as_f64()
            .ok_or_else(|| failed(format!("gpu.matmul result without a rate: {result}")))?;
        cadre.push(rate / 1e12);
    }
    let (bare, cadre) = (median(&bare), median(&cadre));
    report.emit("matmul", "bare_cudarc", "tflops", bare, "TFLOP/s")?;
    report.emit("matmul", "cadre_api", "tflops", cadre, "TFLOP/s")?;
    report.emit(
        "matmul",
        "cadre_vs_bare",
        "tflops_ratio",
        cadre / bare,
        "ratio",
    )?;
    Ok(())
}

fn copy(
    quick: bool,
    report: &Reporter,
    kernels: &DeviceKernels,
    device: &cadre_gpu::DeviceInfo,
    node: &RunningNode,
) -> Result<(), BenchError> {
    let (bytes, repeats, rounds) = if quick {
        (64usize << 20, 5u32, 1)
    } else {
        (1usize << 30, 20u32, 3)
    };
    let src: Vec<f32> = (0..(bytes / 4) as u64)
        .map(|i| sample_value(1, i))
        .collect();
    let spec = json!({"name": "copy", "resources": {"gpus": 1}, "kind": {"workload": {
        "name": "gpu.copy", "params": {"bytes": bytes, "repeats": repeats}}}});
    let (mut bare, mut cadre) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let out = kernels.copy(&src, repeats).map_err(gpu_error)?;
        check("copy", 0, &out.value, &src, 0.0).map_err(gpu_error)?;
        bare.push(2.0 * bytes as f64 * f64::from(repeats) / out.seconds);
        let result = one_job(node, &spec)?;
        cadre.push(
            result["bytes_per_second"]
                .as_f64()
                .ok_or_else(|| failed(format!("gpu.copy result without a rate: {result}")))?,
        );
    }
    let (bare, cadre) = (median(&bare), median(&cadre));
    report.emit("copy", "bare_cudarc", "gb_per_sec", bare / 1e9, "GB/s")?;
    report.emit("copy", "cadre_api", "gb_per_sec", cadre / 1e9, "GB/s")?;
    match published_bandwidth(&device.name) {
        Some(published) => {
            report.emit("copy", "published", "gb_per_sec", published / 1e9, "GB/s")?;
            report.emit(
                "copy",
                "bare_vs_published",
                "bandwidth_ratio",
                bare / published,
                "ratio",
            )?;
        }
        None => eprintln!("gpu: no published bandwidth known for {:?}", device.name),
    }
    Ok(())
}
