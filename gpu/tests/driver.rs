//! The driver's absent paths, which every machine can check: no libcuda at all is
//! `NoDriver`; a libcuda whose `cuInit` says `CUDA_ERROR_NO_DEVICE` (a tiny fake built here
//! with the C compiler and loaded through `LD_LIBRARY_PATH`) is `NoDevice`; another `cuInit`
//! failure is `DriverInit` with the CUDA error's name, or its number when it is not a code the
//! probe knows; a driver that counts zero devices is `NoDevice`. cudarc keeps the library it loaded for the life of the process, so each fake
//! is probed in a child process: this test binary, run again for `probe_child` alone.
//!
//! Building the fake needs `cc`; without it those tests print SKIP, and `CADRE_REQUIRE_CC=1`
//! (set by CI) turns the skip into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cadre_gpu::GpuError;

/// Set in the child: probe and print the outcome instead of testing.
const CHILD: &str = "CADRE_GPU_PROBE_CHILD";

/// The child's half: one line, `PROBE ok N` or `PROBE <kind> <error>`.
#[test]
fn probe_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    match cadre_gpu::probe() {
        Ok(driver) => println!("PROBE ok {}", driver.device_count()),
        Err(e) => println!("PROBE {} {e}", e.kind()),
    }
}

/// Runs `probe_child` in a fresh process with `lib_dir` first on the loader's path and
/// `FAKE_CUINIT_RESULT` set to `cu_init`; returns its `PROBE` line.
fn probe_in_child(lib_dir: &Path, cu_init: i32) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut path = lib_dir.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = Command::new(exe)
        .args(["probe_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("LD_LIBRARY_PATH", path)
        .env("FAKE_CUINIT_RESULT", cu_init.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line, before the child's output.
    stdout
        .lines()
        .find_map(|l| l.find("PROBE ").map(|at| l[at..].to_owned()))
        .unwrap_or_else(|| panic!("child printed no PROBE line:\n{stdout}"))
}

/// A fake libcuda: `cuInit` returns `$FAKE_CUINIT_RESULT`, and `cuDeviceGetCount` counts zero
/// devices (so a `cuInit` that succeeds leads to the zero-count path).
const FAKE_LIBCUDA: &str = r#"
#include <stdlib.h>
int cuInit(unsigned int flags) {
    const char* r = getenv("FAKE_CUINIT_RESULT");
    (void)flags;
    return r ? atoi(r) : 100;
}
int cuDeviceGetCount(int* count) {
    *count = 0;
    return 0;
}
"#;

/// Builds the fake as `libcuda.so` in a fresh directory; `None` (SKIP) without `cc`.
fn fake_libcuda(test: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cadre-fake-cuda-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fake.c");
    std::fs::write(&src, FAKE_LIBCUDA).unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so"))
        .arg(&src)
        .status();
    match built {
        Ok(status) if status.success() => Some(dir),
        other => {
            assert!(
                std::env::var_os("CADRE_REQUIRE_CC").is_none(),
                "CADRE_REQUIRE_CC is set but cc could not build the fake libcuda: {other:?}"
            );
            println!("SKIP {test}: no working C compiler ({other:?})");
            None
        }
    }
}

#[test]
fn without_a_driver_the_probe_is_a_typed_error() {
    match cadre_gpu::probe() {
        Err(GpuError::NoDriver { searched }) => {
            assert!(searched.contains("libcuda.so"), "searched: {searched}");
        }
        // A machine with a GPU driver: the no-driver path cannot be seen here, and the probe
        // must then succeed or find no device, never fail otherwise.
        Ok(driver) => {
            println!("this machine has a CUDA driver: no-driver path not observable");
            assert!(driver.device_count() > 0);
        }
        Err(GpuError::NoDevice) => println!("this machine has a CUDA driver but no device"),
        Err(other) => panic!("unexpected probe error: {other}"),
    }
}

#[test]
fn a_driver_without_devices_is_no_device() {
    let Some(dir) = fake_libcuda("no_device") else {
        return;
    };
    // CUDA_ERROR_NO_DEVICE from cuInit.
    assert_eq!(
        probe_in_child(&dir, 100),
        "PROBE no_device the CUDA driver reports no device"
    );
    // cuInit succeeds but the count is zero.
    assert_eq!(
        probe_in_child(&dir, 0),
        "PROBE no_device the CUDA driver reports no device"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn another_init_failure_names_the_cuda_error() {
    let Some(dir) = fake_libcuda("init_failure") else {
        return;
    };
    // 34 is CUDA_ERROR_STUB_LIBRARY: what the toolkit's stub libcuda answers on a machine
    // without the real driver.
    let line = probe_in_child(&dir, 34);
    assert_eq!(
        line,
        "PROBE driver_init the CUDA driver failed to initialise: CUDA_ERROR_STUB_LIBRARY"
    );
    // A code cudarc's error enum does not list (35, or a future driver's): read through
    // cudarc's declarations it would be undefined behaviour; the probe reads it as a number.
    for unknown in [35, 12345, -1] {
        assert_eq!(
            probe_in_child(&dir, unknown),
            format!("PROBE driver_init the CUDA driver failed to initialise: CUDA error {unknown}")
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_nvml_the_sampler_is_a_typed_error() {
    match cadre_gpu::Sampler::new() {
        Err(GpuError::Nvml { op, reason }) => {
            assert_eq!(op, "init");
            assert!(!reason.is_empty());
        }
        Ok(_) => println!("this machine has NVML: the missing-NVML path is not observable"),
        Err(other) => panic!("unexpected NVML error: {other}"),
    }
}
