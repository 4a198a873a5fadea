//! The CUDA driver, loaded at run time: the presence check that comes before any other call,
//! `cuInit`, and the device inventory (name, UUID, compute capability, memory).
//!
//! cudarc panics when a library it needs cannot be loaded, so nothing here calls into cudarc's
//! driver API before [`probe`] has checked that libcuda loads; a machine without a driver gets
//! [`GpuError::NoDriver`] and a driver without devices [`GpuError::NoDevice`]. CUDA errors are
//! reported by their code's name, never through cudarc's `Display` (which calls back into the
//! driver for a message). The probe's own calls (`cuInit`, the device count, the version) read
//! the driver's answer as an integer, through a library handle of their own (see
//! `PROBE_LIBRARY`), so an unexpected code is an error, not undefined behaviour.

use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError};
use serde::{Deserialize, Serialize};

use crate::error::{report, GpuError, Result};

/// A CUDA error, by its code's name (`CUDA_ERROR_OUT_OF_MEMORY`).
pub(crate) fn code(err: &DriverError) -> String {
    format!("{:?}", err.0)
}

/// A failed driver call on `device`, as a [`GpuError::Cuda`] (not yet reported).
pub(crate) fn cuda(op: &'static str, device: usize) -> impl FnOnce(DriverError) -> GpuError {
    move |err| GpuError::Cuda {
        op,
        device,
        code: code(&err),
    }
}

/// The library names cudarc tries for `lib`, for error messages.
pub(crate) fn searched(lib: &str) -> String {
    let mut names = cudarc::get_lib_name_candidates(lib);
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names.join(", ")
}

/// An initialised CUDA driver with at least one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Driver {
    devices: usize,
    version: i32,
}

impl Driver {
    /// How many devices the driver reports (at least one).
    pub fn device_count(&self) -> usize {
        self.devices
    }

    /// The driver's CUDA version, as the driver encodes it (`13000` for 13.0).
    pub fn version(&self) -> i32 {
        self.version
    }

    /// Opens (retains) `device`'s primary context.
    pub fn context(&self, device: usize) -> Result<Arc<CudaContext>> {
        if device >= self.devices {
            return Err(report(
                "context",
                Some(device),
                GpuError::NoSuchDevice {
                    device,
                    count: self.devices,
                },
            ));
        }
        CudaContext::new(device)
            .map_err(|e| report("context", Some(device), cuda("context", device)(e)))
    }

    /// Describes every device: name, UUID, compute capability, total and free memory (the
    /// free figure needs the device's primary context, which this retains and releases).
    pub fn inventory(&self) -> Result<Vec<DeviceInfo>> {
        (0..self.devices).map(|d| self.describe(d)).collect()
    }

    fn describe(&self, device: usize) -> Result<DeviceInfo> {
        let ctx = self.context(device)?;
        let fail =
            |op: &'static str| move |e: DriverError| report(op, Some(device), cuda(op, device)(e));
        let name = ctx.name().map_err(fail("name"))?;
        let uuid = ctx.uuid().map_err(fail("uuid"))?;
        let (major, minor) = ctx.compute_capability().map_err(fail("attribute"))?;
        let (free, total) = ctx.mem_get_info().map_err(fail("mem_get_info"))?;
        Ok(DeviceInfo {
            ordinal: device,
            name,
            uuid: format_uuid(&uuid.bytes),
            compute_capability: (major, minor),
            total_memory_bytes: total as u64,
            free_memory_bytes: free as u64,
        })
    }
}

/// One device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The driver's ordinal for it (which `CUDA_VISIBLE_DEVICES` can renumber; use the UUID).
    pub ordinal: usize,
    /// Its name (`NVIDIA H200`).
    pub name: String,
    /// Its UUID as NVIDIA tools print it (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`); this is
    /// what `CUDA_VISIBLE_DEVICES` and NVML accept.
    pub uuid: String,
    /// Its compute capability (major, minor): (9, 0) for sm_90.
    pub compute_capability: (i32, i32),
    /// Its memory, in bytes.
    pub total_memory_bytes: u64,
    /// Its free memory when it was described, in bytes.
    pub free_memory_bytes: u64,
}

impl DeviceInfo {
    /// The NVRTC architecture for this device (`sm_90`).
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Formats a CUDA UUID the way `nvidia-smi -L` and `CUDA_VISIBLE_DEVICES` spell it.
pub fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let mut out = String::from("GPU-");
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{:02x}", *b as u8));
    }
    out
}

/// Loads the CUDA driver and initialises it, checking first that the library is there (so
/// cudarc never panics on a machine without one). The outcome is logged once and counted
/// when it is an error.
pub fn probe() -> Result<Driver> {
    probe_inner().map_err(|e| report("probe", None, e))
}

fn probe_inner() -> Result<Driver> {
    #[allow(unsafe_code)]
    // Safety: `is_culib_present` only tries to dlopen the candidate names and drops what it
    // opened; it calls no CUDA function.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err(GpuError::NoDriver {
            searched: searched("cuda"),
        });
    }
    let lib = probe_library()?;
    let init: ProbeFn<u32> = probe_symbol(lib, b"cuInit\0", "cuInit")?;
    #[allow(unsafe_code)]
    // Safety: `cuInit(unsigned int flags)` as the driver API declares it; 0 is the only flag.
    match unsafe { init(0) } {
        CUDA_SUCCESS => {}
        CUDA_ERROR_NO_DEVICE => return Err(GpuError::NoDevice),
        other => {
            return Err(GpuError::DriverInit {
                code: code_name(other),
            })
        }
    }
    let count = probe_int(lib, b"cuDeviceGetCount\0", "cuDeviceGetCount")?;
    if count <= 0 {
        return Err(GpuError::NoDevice);
    }
    let version = probe_int(lib, b"cuDriverGetVersion\0", "cuDriverGetVersion")?;
    tracing::info!(
        devices = count,
        driver_cuda_version = version,
        "CUDA driver initialised"
    );
    Ok(Driver {
        devices: count as usize,
        version,
    })
}

/// `CUDA_SUCCESS`.
const CUDA_SUCCESS: i32 = 0;
/// `CUDA_ERROR_NO_DEVICE`.
const CUDA_ERROR_NO_DEVICE: i32 = 100;

/// A driver entry point of the probe: one argument, the `CUresult` read as a plain integer.
type ProbeFn<A> = unsafe extern "C" fn(A) -> i32;

/// The driver library as the probe loads it, kept for the life of the process (unloading it
/// would drop the state `cuInit` set up, which cudarc's later calls share).
///
/// The probe's three calls go through this handle rather than cudarc's: cudarc declares the
/// driver's answer as its `CUresult` enum, so a code the enum does not list (an older or newer
/// driver's, such as 35) would be undefined behaviour right where a broken installation is
/// most likely to show. Here the answer is an integer, named when it is known.
static PROBE_LIBRARY: std::sync::OnceLock<libloading::Library> = std::sync::OnceLock::new();

fn probe_library() -> Result<&'static libloading::Library> {
    if let Some(lib) = PROBE_LIBRARY.get() {
        return Ok(lib);
    }
    let mut failures = Vec::new();
    for name in cudarc::get_lib_name_candidates("cuda") {
        #[allow(unsafe_code)]
        // Safety: loading libcuda runs its initialisers, as loading it through cudarc would;
        // no symbol is used before it is looked up with its declared signature.
        match unsafe { libloading::Library::new(&name) } {
            Ok(lib) => return Ok(PROBE_LIBRARY.get_or_init(|| lib)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    // cudarc found one a moment ago: say what each attempt answered.
    Err(GpuError::DriverInit {
        code: format!(
            "the CUDA driver library did not load: {}",
            failures.join("; ")
        ),
    })
}

fn probe_symbol<T: Copy>(lib: &libloading::Library, symbol: &[u8], name: &str) -> Result<T> {
    #[allow(unsafe_code)]
    // Safety: every caller names a driver API entry point with the signature `T` that the
    // CUDA driver API declares for it.
    let found = unsafe { lib.get::<T>(symbol) };
    match found {
        Ok(f) => Ok(*f),
        Err(e) => Err(GpuError::DriverInit {
            code: format!("{name} is missing from the driver library: {e}"),
        }),
    }
}

/// Calls a driver entry point that writes one integer (`cuDeviceGetCount`,
/// `cuDriverGetVersion`) and returns it.
fn probe_int(lib: &libloading::Library, symbol: &[u8], name: &str) -> Result<i32> {
    let call: ProbeFn<*mut i32> = probe_symbol(lib, symbol, name)?;
    let mut value = 0;
    #[allow(unsafe_code)]
    // Safety: the entry point writes exactly one `int` through the pointer, and `value`
    // outlives the call.
    let got = unsafe { call(&mut value) };
    if got != CUDA_SUCCESS {
        return Err(GpuError::DriverInit {
            code: format!("{name}: {}", code_name(got)),
        });
    }
    Ok(value)
}

/// A `CUresult` from the probe's calls by name where it is one those calls are documented
/// (or commonly seen) to answer, else by number.
pub(crate) fn code_name(code: i32) -> String {
    let name = match code {
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        46 => "CUDA_ERROR_DEVICE_UNAVAILABLE",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        304 => "CUDA_ERROR_OPERATING_SYSTEM",
        802 => "CUDA_ERROR_SYSTEM_NOT_READY",
        803 => "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        804 => "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
        999 => "CUDA_ERROR_UNKNOWN",
        other => return format!("CUDA error {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn uuids_print_like_nvidia_smi() {
        let mut bytes = [0 as std::ffi::c_char; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8 * 17) as std::ffi::c_char;
        }
        assert_eq!(
            format_uuid(&bytes),
            "GPU-00112233-4455-6677-8899-aabbccddeeff"
        );
    }
}
