//! Running cadre's kernels on a device: compile for the device's architecture, load, launch,
//! copy back, and check the result against a CPU reference, so GPU code that computes nothing
//! (or the wrong thing) fails loudly instead of pretending to work.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};

use crate::driver::{cuda, Driver};
use crate::error::{report, GpuError, Result};
use crate::kernels::{compile, Kernel, TILE};

/// A device with cadre's kernels compiled for it and loaded.
pub struct DeviceKernels {
    device: usize,
    arch: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    saxpy: CudaFunction,
    matmul: CudaFunction,
    copy: CudaFunction,
}

impl std::fmt::Debug for DeviceKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKernels")
            .field("device", &self.device)
            .field("arch", &self.arch)
            .finish()
    }
}

/// A kernel's output and the device time it took (measured with CUDA events).
#[derive(Debug, Clone, PartialEq)]
pub struct Timed<T> {
    /// What it computed.
    pub value: T,
    /// Seconds between the events recorded before and after the launch.
    pub seconds: f64,
}

/// Rejects a length the kernels' 32-bit indices cannot address.
fn length(field: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| GpuError::Invalid {
        field,
        reason: format!("{n} elements exceed the kernel's 32-bit index"),
    })
}

impl DeviceKernels {
    /// Compiles every kernel for `device`'s architecture with NVRTC and loads them into its
    /// primary context.
    pub fn load(driver: &Driver, device: usize) -> Result<DeviceKernels> {
        let ctx = driver.context(device)?;
        let fail =
            |op: &'static str| move |e: DriverError| report(op, Some(device), cuda(op, device)(e));
        let (major, minor) = ctx.compute_capability().map_err(fail("attribute"))?;
        let arch = format!("sm_{major}{minor}");
        let load = |kernel: Kernel| -> Result<CudaFunction> {
            let ptx = compile(kernel, &arch)?;
            let module = ctx.load_module(ptx).map_err(fail("load_module"))?;
            module
                .load_function(kernel.name())
                .map_err(fail("load_function"))
        };
        let saxpy = load(Kernel::Saxpy)?;
        let matmul = load(Kernel::Matmul)?;
        let copy = load(Kernel::Copy)?;
        let stream = ctx.new_stream().map_err(fail("stream"))?;
        Ok(DeviceKernels {
            device,
            arch,
            ctx,
            stream,
            saxpy,
            matmul,
            copy,
        })
    }

    /// The device's ordinal.
    pub fn device(&self) -> usize {
        self.device
    }

    /// The architecture the kernels were compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The device's context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn fail(&self, op: &'static str) -> impl Fn(DriverError) -> GpuError + '_ {
        move |e| report(op, Some(self.device), cuda(op, self.device)(e))
    }

    /// Runs `launch` between two timing events on the stream and waits for it.
    fn timed(&self, launch: impl FnOnce() -> Result<()>) -> Result<f64> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(flags)
            .map_err(self.fail("event"))?;
        launch()?;
        let end = self
            .stream
            .record_event(flags)
            .map_err(self.fail("event"))?;
        end.synchronize().map_err(self.fail("synchronize"))?;
        let ms = start.elapsed_ms(&end).map_err(self.fail("event"))?;
        Ok(f64::from(ms) / 1000.0)
    }

    /// `a * x + y`, on the device.
    pub fn saxpy(&self, a: f32, x: &[f32], y: &[f32]) -> Result<Timed<Vec<f32>>> {
        if x.len() != y.len() {
            return Err(GpuError::Invalid {
                field: "y",
                reason: format!("{} elements, x has {}", y.len(), x.len()),
            });
        }
        let n = length("x", x.len())?;
        let dx = self.stream.clone_htod(x).map_err(self.fail("copy"))?;
        let mut dy = self.stream.clone_htod(y).map_err(self.fail("copy"))?;
        let seconds = self.timed(|| {
            let mut launch = self.stream.launch_builder(&self.saxpy);
            launch.arg(&a).arg(&dx).arg(&mut dy).arg(&n);
            #[allow(unsafe_code)]
            // Safety: the arguments match the kernel's signature (float, const float*, float*,
            // unsigned int), both buffers hold `n` floats, and the kernel checks `i < n`.
            let launched = unsafe { launch.launch(LaunchConfig::for_num_elems(n)) };
            launched.map(|_| ()).map_err(self.fail("launch"))
        })?;
        let value = self.stream.clone_dtoh(&dy).map_err(self.fail("copy"))?;
        Ok(Timed { value, seconds })
    }

    /// `a * b` for row-major `a` (`rows` x `inner`) and `b` (`inner` x `cols`), on the device.
    pub fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        rows: usize,
        inner: usize,
        cols: usize,
    ) -> Result<Timed<Vec<f32>>> {
        check_shape(a, b, rows, inner, cols)?;
        let (r, k, c) = (
            length("rows", rows)?,
            length("inner", inner)?,
            length("cols", cols)?,
        );
        length("rows * cols", rows.saturating_mul(cols))?;
        let da = self.stream.clone_htod(a).map_err(self.fail("copy"))?;
        let db = self.stream.clone_htod(b).map_err(self.fail("copy"))?;
        let mut dc = self
            .stream
            .alloc_zeros::<f32>(rows * cols)
            .map_err(self.fail("alloc"))?;
        let config = LaunchConfig {
            grid_dim: (c.div_ceil(TILE), r.div_ceil(TILE), 1),
            block_dim: (TILE, TILE, 1),
            shared_mem_bytes: 0,
        };
        let seconds = self.timed(|| {
            let mut launch = self.stream.launch_builder(&self.matmul);
            launch
                .arg(&da)
                .arg(&db)
                .arg(&mut dc)
                .arg(&r)
                .arg(&k)
                .arg(&c);
            #[allow(unsafe_code)]
            // Safety: the arguments match the kernel's signature; `a`, `b` and `c` hold
            // rows*inner, inner*cols and rows*cols floats, and the kernel bounds-checks every
            // index against rows, inner and cols.
            let launched = unsafe { launch.launch(config) };
            launched.map(|_| ()).map_err(self.fail("launch"))
        })?;
        let value = self.stream.clone_dtoh(&dc).map_err(self.fail("copy"))?;
        Ok(Timed { value, seconds })
    }

    /// Copies `src` to a new device buffer with the copy kernel, `repeats` times, and returns
    /// the last copy's contents: `seconds` covers all repeats (bandwidth is
    /// `2 * bytes * repeats / seconds`, a read and a write per byte).
    pub fn copy(&self, src: &[f32], repeats: u32) -> Result<Timed<Vec<f32>>> {
        let n = src.len() as u64;
        if n == 0 || repeats == 0 {
            return Err(GpuError::Invalid {
                field: if n == 0 { "src" } else { "repeats" },
                reason: "must not be zero".to_owned(),
            });
        }
        let dsrc = self.stream.clone_htod(src).map_err(self.fail("copy"))?;
        let mut ddst = self
            .stream
            .alloc_zeros::<f32>(src.len())
            .map_err(self.fail("alloc"))?;
        let blocks = u32::try_from(n.div_ceil(4 * 256))
            .unwrap_or(u32::MAX)
            .clamp(1, 65_535);
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let seconds = self.timed(|| {
            for _ in 0..repeats {
                let mut launch = self.stream.launch_builder(&self.copy);
                launch.arg(&dsrc).arg(&mut ddst).arg(&n);
                #[allow(unsafe_code)]
                // Safety: both buffers hold `n` floats (cudarc's allocations are aligned for
                // float4), the arguments match the kernel's signature, and the kernel stays
                // below `n`.
                let launched = unsafe { launch.launch(config) };
                launched.map_err(self.fail("launch"))?;
            }
            Ok(())
        })?;
        let value = self.stream.clone_dtoh(&ddst).map_err(self.fail("copy"))?;
        Ok(Timed { value, seconds })
    }
}

fn check_shape(a: &[f32], b: &[f32], rows: usize, inner: usize, cols: usize) -> Result<()> {
    if a.len() != rows.saturating_mul(inner) {
        return Err(GpuError::Invalid {
            field: "a",
            reason: format!("{} elements, not rows*inner = {rows}*{inner}", a.len()),
        });
    }
    if b.len() != inner.saturating_mul(cols) {
        return Err(GpuError::Invalid {
            field: "b",
            reason: format!("{} elements, not inner*cols = {inner}*{cols}", b.len()),
        });
    }
    Ok(())
}

/// `a * x + y` on the CPU: the reference [`DeviceKernels::saxpy`] is checked against.
pub fn saxpy_reference(a: f32, x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(x, y)| a * x + y).collect()
}

/// `a * b` on the CPU (row-major): the reference [`DeviceKernels::matmul`] is checked against.
pub fn matmul_reference(
    a: &[f32],
    b: &[f32],
    rows: usize,
    inner: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    check_shape(a, b, rows, inner, cols)?;
    let mut c = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for k in 0..inner {
            let av = a[r * inner + k];
            for (cv, bv) in c[r * cols..(r + 1) * cols]
                .iter_mut()
                .zip(&b[k * cols..(k + 1) * cols])
            {
                *cv += av * bv;
            }
        }
    }
    Ok(c)
}

/// Checks `got` against `expected` element by element, within `tolerance` relative to the
/// expected magnitude (at least 1): [`GpuError::Mismatch`] at the first element that differs.
pub fn check(
    kernel: &'static str,
    device: usize,
    got: &[f32],
    expected: &[f32],
    tolerance: f32,
) -> Result<()> {
    if got.len() != expected.len() {
        return Err(GpuError::Invalid {
            field: "got",
            reason: format!("{} elements, expected {}", got.len(), expected.len()),
        });
    }
    for (index, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let bound = tolerance * e.abs().max(1.0);
        let within = (g - e).abs() <= bound; // false for NaN, so NaN is a mismatch
        if !within {
            return Err(report(
                "check",
                Some(device),
                GpuError::Mismatch {
                    kernel,
                    device,
                    index,
                    got: g,
                    expected: e,
                },
            ));
        }
    }
    Ok(())
}

/// Checks `samples` elements of `c = a * b` (row-major, `rows` x `inner` times `inner` x
/// `cols`), spread evenly over `c`, against dot products computed on the CPU in f64: the check
/// for products too large to recompute whole. Tolerance is `tolerance` relative to the sum of
/// the products' magnitudes (at least 1).
#[allow(
    clippy::too_many_arguments,
    reason = "a matrix product's shape is three numbers"
)]
pub fn check_matmul_sampled(
    device: usize,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    rows: usize,
    inner: usize,
    cols: usize,
    samples: usize,
    tolerance: f64,
) -> Result<()> {
    check_shape(a, b, rows, inner, cols)?;
    let total = rows.saturating_mul(cols);
    if c.len() != total {
        return Err(GpuError::Invalid {
            field: "c",
            reason: format!("{} elements, not rows*cols = {rows}*{cols}", c.len()),
        });
    }
    if total == 0 {
        return Ok(());
    }
    let step = (total / samples.max(1)).max(1);
    for index in (0..total).step_by(step) {
        let (r, col) = (index / cols, index % cols);
        let (mut dot, mut magnitude) = (0.0f64, 0.0f64);
        for k in 0..inner {
            let p = f64::from(a[r * inner + k]) * f64::from(b[k * cols + col]);
            dot += p;
            magnitude += p.abs();
        }
        let got = f64::from(c[index]);
        let within = (got - dot).abs() <= tolerance * magnitude.max(1.0);
        if !within {
            return Err(report(
                "check",
                Some(device),
                GpuError::Mismatch {
                    kernel: "matmul",
                    device,
                    index,
                    got: c[index],
                    expected: dot as f32,
                },
            ));
        }
    }
    Ok(())
}

/// A deterministic value in [-1, 1) for position `i` of the stream `seed` (splitmix64): input
/// data that any part of a split job, and the CPU reference, can produce independently.
pub fn sample_value(seed: u64, i: u64) -> f32 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Splits `n` items into `parts` contiguous ranges whose lengths differ by at most one (the
/// first ones longer): how a multi-GPU job divides its work among its devices.
pub fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    if parts == 0 {
        return Vec::new();
    }
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// Runs saxpy with the work split across `devices` (one context each), each part checked
/// against the CPU reference; returns the whole result and the slowest part's device time.
pub fn saxpy_across(
    devices: &[DeviceKernels],
    a: f32,
    x: &[f32],
    y: &[f32],
) -> Result<Timed<Vec<f32>>> {
    if devices.is_empty() {
        return Err(GpuError::Invalid {
            field: "devices",
            reason: "no device to run on".to_owned(),
        });
    }
    let mut value = Vec::with_capacity(x.len());
    let mut seconds = 0.0f64;
    for (device, range) in devices.iter().zip(split(x.len(), devices.len())) {
        let part = device.saxpy(a, &x[range.clone()], &y[range.clone()])?;
        check(
            "saxpy",
            device.device(),
            &part.value,
            &saxpy_reference(a, &x[range.clone()], &y[range]),
            1e-5,
        )?;
        seconds = seconds.max(part.seconds);
        value.extend(part.value);
    }
    Ok(Timed { value, seconds })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_cpu_references_compute_what_they_say() {
        assert_eq!(
            saxpy_reference(2.0, &[1.0, 2.0], &[10.0, 20.0]),
            vec![12.0, 24.0]
        );
        // [1 2; 3 4] * [5 6; 7 8] = [19 22; 43 50]
        let c = matmul_reference(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2).unwrap();
        assert_eq!(c, vec![19.0, 22.0, 43.0, 50.0]);
        assert!(matches!(
            matmul_reference(&[1.0], &[1.0], 2, 2, 2),
            Err(GpuError::Invalid { field: "a", .. })
        ));
    }

    #[test]
    fn check_finds_the_first_wrong_element_and_nan() {
        assert!(check("k", 0, &[1.0, 2.0], &[1.0, 2.0], 1e-6).is_ok());
        assert!(matches!(
            check("k", 3, &[1.0, 2.5, 9.0], &[1.0, 2.0, 3.0], 1e-6),
            Err(GpuError::Mismatch {
                index: 1,
                device: 3,
                ..
            })
        ));
        assert!(matches!(
            check("k", 0, &[f32::NAN], &[0.0], 1e-6),
            Err(GpuError::Mismatch { index: 0, .. })
        ));
    }

    #[test]
    fn the_sampled_matmul_check_finds_a_wrong_element() {
        let (rows, inner, cols) = (5, 7, 3);
        let a: Vec<f32> = (0..rows * inner)
            .map(|i| sample_value(1, i as u64))
            .collect();
        let b: Vec<f32> = (0..inner * cols)
            .map(|i| sample_value(2, i as u64))
            .collect();
        let mut c = matmul_reference(&a, &b, rows, inner, cols).unwrap();
        check_matmul_sampled(0, &a, &b, &c, rows, inner, cols, rows * cols, 1e-5).unwrap();
        c[4] += 0.5;
        assert!(matches!(
            check_matmul_sampled(2, &a, &b, &c, rows, inner, cols, rows * cols, 1e-5),
            Err(GpuError::Mismatch {
                index: 4,
                device: 2,
                ..
            })
        ));
    }

    #[test]
    fn sample_values_are_deterministic_and_in_range() {
        let v: Vec<f32> = (0..10_000).map(|i| sample_value(7, i)).collect();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert_eq!(v[123], sample_value(7, 123));
        assert_ne!(sample_value(7, 1), sample_value(8, 1));
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn split_covers_everything_once_in_near_equal_parts() {
        assert_eq!(split(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(split(2, 4), vec![0..1, 1..2, 2..2, 2..2]);
        assert!(split(5, 0).is_empty());
    }
}
