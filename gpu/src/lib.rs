//! `cadre-gpu`: cadre's GPU layer. Real CUDA through cudarc, loaded at run time so the crate
//! builds and runs on machines without a GPU, and honest there: every entry point checks that
//! the library it needs loads before calling into it, and returns a typed error
//! ([`GpuError::NoDriver`], [`GpuError::NoDevice`], [`GpuError::NvrtcUnavailable`]) instead of
//! panicking or pretending.
//!
//! - [`driver`]: the presence check, `cuInit`, and the device inventory.
//! - [`nvml`]: device health through NVML (utilization, memory, temperature, power, ECC),
//!   with absent readings absent rather than zero.
//! - [`kernels`]: saxpy, a tiled matmul and a copy as CUDA C, compiled by NVRTC.
//! - [`ops`]: running them on a device and checking every result against a CPU reference.

pub mod driver;
pub mod error;
pub mod kernels;
pub mod metrics;
pub mod nvml;
pub mod ops;

pub use driver::{probe, DeviceInfo, Driver};
pub use error::{GpuError, Result};
pub use kernels::Kernel;
pub use nvml::{DeviceHealth, HealthLimits, HealthSample, Sampler};
pub use ops::DeviceKernels;
