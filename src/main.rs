//! The `cadre` binary: the command line of [`cadre::app`], with cadre's own GPU workloads
//! (`gpu.saxpy`, `gpu.matmul`, `gpu.copy`) as its only extensions.

use std::process::ExitCode;

fn main() -> ExitCode {
    cadre::app::main(cadre::runtime::Extensions::new().gpu_workloads())
}
