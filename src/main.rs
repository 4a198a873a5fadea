//! The `cadre` binary: the command line of [`cadre::app`], with cadre's own GPU workloads
//! (`gpu.saxpy`, `gpu.matmul`, `gpu.copy`) as its only extensions.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: a node allocates and frees small objects (messages,
/// journal records, reply channels) for every job on one actor thread, and glibc's malloc spent
/// about a fifth of that thread's time on them (`cadre-bench scheduler --case e2e_noop`: 8.3 to
/// 6.3 us of node CPU per job, at the same resident memory with 1,000,000 jobs queued).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cadre::app::main(cadre::runtime::Extensions::new().gpu_workloads())
}
