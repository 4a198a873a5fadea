//! Tests that need a real NVIDIA GPU (and NVRTC): `#[ignore]`d, run with
//! `cargo test -p cadre-gpu --test device -- --ignored --test-threads=1` on a GPU machine
//! (see gpu/README.md). Every kernel's result is checked against the CPU reference.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cadre_gpu::ops::{check, matmul_reference, saxpy_across, saxpy_reference};
use cadre_gpu::{probe, DeviceKernels, Sampler};

fn inputs(n: usize, seed: u32) -> Vec<f32> {
    // A small deterministic generator: values in [-1, 1).
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn inventory_describes_every_device() {
    let driver = probe().unwrap();
    let devices = driver.inventory().unwrap();
    assert_eq!(devices.len(), driver.device_count());
    for d in &devices {
        println!("{d:?}");
        assert!(
            d.uuid.starts_with("GPU-") && d.uuid.len() == 40,
            "{}",
            d.uuid
        );
        assert!(d.compute_capability.0 >= 5);
        assert!(d.total_memory_bytes > 0 && d.free_memory_bytes <= d.total_memory_bytes);
        assert!(!d.name.is_empty());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn nvml_samples_every_device() {
    let driver = probe().unwrap();
    let sampler = Sampler::new().unwrap();
    for d in driver.inventory().unwrap() {
        let sample = sampler.sample(&d.uuid).unwrap();
        println!("{}: {sample:?}", d.uuid);
        assert!(sample.utilization.is_some_and(|u| (0.0..=1.0).contains(&u)));
        assert!(sample
            .memory_used_bytes
            .is_some_and(|b| b <= d.total_memory_bytes));
        assert!(sample.temperature_celsius.is_some());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn saxpy_matches_the_cpu() {
    let driver = probe().unwrap();
    let kernels = DeviceKernels::load(&driver, 0).unwrap();
    let n = 1 << 20;
    let (x, y) = (inputs(n, 1), inputs(n, 2));
    let out = kernels.saxpy(2.5, &x, &y).unwrap();
    check("saxpy", 0, &out.value, &saxpy_reference(2.5, &x, &y), 1e-6).unwrap();
    println!("saxpy n={n}: {:.1} us", out.seconds * 1e6);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn matmul_matches_the_cpu_on_ragged_shapes() {
    let driver = probe().unwrap();
    let kernels = DeviceKernels::load(&driver, 0).unwrap();
    // Not multiples of the tile, so the edge handling is exercised.
    let (rows, inner, cols) = (257, 131, 199);
    let (a, b) = (inputs(rows * inner, 3), inputs(inner * cols, 4));
    let out = kernels.matmul(&a, &b, rows, inner, cols).unwrap();
    let expected = matmul_reference(&a, &b, rows, inner, cols).unwrap();
    check("matmul", 0, &out.value, &expected, 1e-4).unwrap();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn copy_copies_every_element() {
    let driver = probe().unwrap();
    let kernels = DeviceKernels::load(&driver, 0).unwrap();
    // Not a multiple of four, so the scalar tail runs too.
    let src = inputs((1 << 22) + 3, 5);
    let out = kernels.copy(&src, 3).unwrap();
    check("copy", 0, &out.value, &src, 0.0).unwrap();
    let gbps = 2.0 * (src.len() * 4) as f64 * 3.0 / out.seconds / 1e9;
    println!("copy: {gbps:.0} GB/s");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn saxpy_splits_across_every_device() {
    let driver = probe().unwrap();
    let devices: Vec<DeviceKernels> = (0..driver.device_count())
        .map(|d| DeviceKernels::load(&driver, d).unwrap())
        .collect();
    let n = 1_000_003;
    let (x, y) = (inputs(n, 6), inputs(n, 7));
    let out = saxpy_across(&devices, -0.5, &x, &y).unwrap();
    check("saxpy", 0, &out.value, &saxpy_reference(-0.5, &x, &y), 1e-6).unwrap();
}
