//! The kernels cadre ships, as CUDA C sources compiled at run time by NVRTC: saxpy, a tiled
//! matrix multiply and a device-to-device copy. NVRTC is loaded at run time too; where it is
//! missing, compiling is [`GpuError::NvrtcUnavailable`], checked before any call into cudarc's
//! NVRTC API (which would panic).

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::error::{report, GpuError, Result};

/// Threads per side of a matmul tile (the block is `TILE` x `TILE`).
pub const TILE: u32 = 16;

/// `y[i] = a * x[i] + y[i]` for `i < n`.
pub const SAXPY: &str = r#"
extern "C" __global__ void saxpy(float a, const float* x, float* y, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = a * x[i] + y[i];
    }
}
"#;

/// `c = a * b` for row-major `a` (`rows` x `inner`), `b` (`inner` x `cols`) and `c`
/// (`rows` x `cols`), through shared-memory tiles of 16 x 16 (launch with 16 x 16 blocks).
pub const MATMUL: &str = r#"
#define TILE 16
extern "C" __global__ void matmul(const float* a, const float* b, float* c,
                                  unsigned int rows, unsigned int inner, unsigned int cols) {
    __shared__ float as[TILE][TILE];
    __shared__ float bs[TILE][TILE];
    unsigned int row = blockIdx.y * TILE + threadIdx.y;
    unsigned int col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (unsigned int t = 0; t < (inner + TILE - 1) / TILE; ++t) {
        unsigned int ac = t * TILE + threadIdx.x;
        unsigned int br = t * TILE + threadIdx.y;
        as[threadIdx.y][threadIdx.x] = (row < rows && ac < inner) ? a[row * inner + ac] : 0.0f;
        bs[threadIdx.y][threadIdx.x] = (br < inner && col < cols) ? b[br * cols + col] : 0.0f;
        __syncthreads();
        for (unsigned int i = 0; i < TILE; ++i) {
            acc += as[threadIdx.y][i] * bs[i][threadIdx.x];
        }
        __syncthreads();
    }
    if (row < rows && col < cols) {
        c[row * cols + col] = acc;
    }
}
"#;

/// `dst[i] = src[i]` for `n` floats, four at a time where it can, in a grid-stride loop.
pub const COPY: &str = r#"
extern "C" __global__ void copy(const float* src, float* dst, unsigned long long n) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long first = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long quads = n / 4;
    const float4* s4 = reinterpret_cast<const float4*>(src);
    float4* d4 = reinterpret_cast<float4*>(dst);
    for (unsigned long long i = first; i < quads; i += stride) {
        d4[i] = s4[i];
    }
    for (unsigned long long i = quads * 4 + first; i < n; i += stride) {
        dst[i] = src[i];
    }
}
"#;

/// One of cadre's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`SAXPY`].
    Saxpy,
    /// [`MATMUL`].
    Matmul,
    /// [`COPY`].
    Copy,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 3] = [Kernel::Saxpy, Kernel::Matmul, Kernel::Copy];

    /// Its entry point's name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Saxpy => "saxpy",
            Kernel::Matmul => "matmul",
            Kernel::Copy => "copy",
        }
    }

    /// Its CUDA C source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::Saxpy => SAXPY,
            Kernel::Matmul => MATMUL,
            Kernel::Copy => COPY,
        }
    }
}

/// Checks that NVRTC loads; [`GpuError::NvrtcUnavailable`] (logged and counted) where not.
pub fn nvrtc_available() -> Result<()> {
    #[allow(unsafe_code)]
    // Safety: `is_culib_present` only tries to dlopen the candidate names and drops what it
    // opened; it calls no NVRTC function.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if present {
        Ok(())
    } else {
        Err(report(
            "nvrtc",
            None,
            GpuError::NvrtcUnavailable {
                searched: crate::driver::searched("nvrtc"),
            },
        ))
    }
}

/// Checks an architecture name (`sm_90`, `compute_90`): NVRTC would take anything as an
/// option, so a typo is caught here with a clear error.
fn check_arch(arch: &str) -> Result<()> {
    let digits = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))
        .unwrap_or("");
    let digits = digits.strip_suffix('a').unwrap_or(digits);
    if digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(GpuError::Invalid {
            field: "arch",
            reason: format!("{arch:?} is not an architecture such as sm_90"),
        })
    }
}

/// Compiles `kernel` to PTX for `arch` (`sm_90`; see [`crate::DeviceInfo::arch`]).
pub fn compile(kernel: Kernel, arch: &str) -> Result<Ptx> {
    compile_source(kernel.name(), kernel.source(), arch)
}

/// Compiles CUDA C `source` (named `name` in errors) to PTX for `arch`. A source NVRTC
/// refuses is [`GpuError::Compile`] with NVRTC's log.
pub fn compile_source(name: &'static str, source: &str, arch: &str) -> Result<Ptx> {
    check_arch(arch).map_err(|e| report("compile", None, e))?;
    nvrtc_available()?;
    let options = CompileOptions {
        name: Some(format!("{name}.cu")),
        options: vec![format!("--gpu-architecture={arch}")],
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(source, options).map_err(|e| {
        let (code, log) = match &e {
            CompileError::CompileError { nvrtc, log, .. } => {
                (format!("{:?}", nvrtc.0), log.to_string_lossy().into_owned())
            }
            CompileError::CreationError(nvrtc)
            | CompileError::GetLogError(nvrtc)
            | CompileError::GetPtxError(nvrtc)
            | CompileError::DestroyError(nvrtc) => (format!("{:?}", nvrtc.0), String::new()),
        };
        report(
            "compile",
            None,
            GpuError::Compile {
                kernel: name,
                arch: arch.to_owned(),
                code,
                log,
            },
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn architectures_are_checked_before_nvrtc() {
        for ok in ["sm_90", "sm_90a", "compute_80", "sm_120"] {
            assert!(check_arch(ok).is_ok(), "{ok}");
        }
        for bad in ["sm90", "sm_", "sm_x0", "", "--gpu-architecture=sm_90"] {
            assert!(
                matches!(
                    check_arch(bad),
                    Err(GpuError::Invalid { field: "arch", .. })
                ),
                "{bad}"
            );
        }
    }
}
