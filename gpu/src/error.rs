//! The crate's one error type: every way the GPU layer can fail, each variant naming what was
//! being done (the device, the kernel, the CUDA error code) so it can be acted on.

/// Every error `cadre-gpu` returns.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No CUDA driver library could be loaded: this machine has no NVIDIA driver (or it is not
    /// on the loader's path).
    #[error("no CUDA driver: none of {searched} could be loaded")]
    NoDriver {
        /// The library names that were tried.
        searched: String,
    },
    /// The driver loaded but reports no device (`CUDA_ERROR_NO_DEVICE`, or a count of zero).
    #[error("the CUDA driver reports no device")]
    NoDevice,
    /// The driver loaded but `cuInit` failed for another reason.
    #[error("the CUDA driver failed to initialise: {code}")]
    DriverInit {
        /// The CUDA error, by name (for example `CUDA_ERROR_INSUFFICIENT_DRIVER`).
        code: String,
    },
    /// NVRTC (the run-time compiler) could not be loaded, so no kernel can be compiled.
    #[error("NVRTC is unavailable: none of {searched} could be loaded")]
    NvrtcUnavailable {
        /// The library names that were tried.
        searched: String,
    },
    /// NVRTC refused a kernel source.
    #[error("kernel {kernel} does not compile for {arch}: {code}: {log}")]
    Compile {
        /// The kernel's name.
        kernel: &'static str,
        /// The target architecture (`sm_90`, ...).
        arch: String,
        /// NVRTC's error, by name.
        code: String,
        /// NVRTC's compile log.
        log: String,
    },
    /// A CUDA driver call failed on a device.
    #[error("CUDA {op} failed on device {device}: {code}")]
    Cuda {
        /// What was being done (`context`, `alloc`, `launch`, `copy`, ...).
        op: &'static str,
        /// The device's ordinal.
        device: usize,
        /// The CUDA error, by name.
        code: String,
    },
    /// A device ordinal beyond what the driver reports.
    #[error("device {device} does not exist: the driver reports {count} device(s)")]
    NoSuchDevice {
        /// The ordinal asked for.
        device: usize,
        /// How many devices there are.
        count: usize,
    },
    /// A kernel's result differs from the CPU reference: the GPU computed something wrong.
    #[error("{kernel} on device {device} differs from the CPU reference at element {index}: got {got}, expected {expected}")]
    Mismatch {
        /// The kernel.
        kernel: &'static str,
        /// The device's ordinal.
        device: usize,
        /// The first element that differs.
        index: usize,
        /// The GPU's value.
        got: f32,
        /// The CPU's value.
        expected: f32,
    },
    /// An argument out of range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// NVML could not be used (library missing, driver not loaded, no permission).
    #[error("NVML {op} failed: {reason}")]
    Nvml {
        /// What was being done (`init`, `device`, ...).
        op: &'static str,
        /// NVML's error.
        reason: String,
    },
}

impl GpuError {
    /// A short label for metrics and logs (`no_driver`, `no_device`, `cuda`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            GpuError::NoDriver { .. } => "no_driver",
            GpuError::NoDevice => "no_device",
            GpuError::DriverInit { .. } => "driver_init",
            GpuError::NvrtcUnavailable { .. } => "no_nvrtc",
            GpuError::Compile { .. } => "compile",
            GpuError::Cuda { .. } => "cuda",
            GpuError::NoSuchDevice { .. } => "no_such_device",
            GpuError::Mismatch { .. } => "mismatch",
            GpuError::Invalid { .. } => "invalid",
            GpuError::Nvml { .. } => "nvml",
        }
    }

    /// Whether this only says the machine has no usable GPU (no driver, no device), which is
    /// a normal state for a CPU machine rather than a fault.
    pub fn is_absent(&self) -> bool {
        matches!(self, GpuError::NoDriver { .. } | GpuError::NoDevice)
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// Reports a failure once where it is detected: one event and one count of
/// `cadre_gpu_errors_total{kind}`; returns the error. An absent GPU (no driver, no device) is
/// a normal state, logged at debug: the caller says it once, with its consequence (the node
/// does at start).
pub(crate) fn report(op: &'static str, device: Option<usize>, err: GpuError) -> GpuError {
    metrics::counter!(crate::metrics::GPU_ERRORS, "kind" => err.kind()).increment(1);
    match (err.is_absent(), device) {
        (true, _) => tracing::debug!(op, error = %err, "no usable GPU"),
        (false, Some(device)) => tracing::error!(op, device, error = %err, "GPU operation failed"),
        (false, None) => tracing::error!(op, error = %err, "GPU operation failed"),
    }
    err
}
