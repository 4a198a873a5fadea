//! `cadre-cpu`: the CPU-side systems layer of cadre.
//!
//! - [`engine`]: the I/O engine, io_uring with a std fallback, on owned buffers.
//! - [`journal`]: the durable write-ahead log of the job store: CRC32C-framed records (the
//!   length checked on its own) in segment files, group commit, a stall with retries instead of
//!   a failure when the disk refuses writes, snapshot compaction, and recovery that sets a torn
//!   last write aside but refuses any other damage.
//! - [`launcher`]: command jobs: spawn from argv in a process group, capture output to log
//!   files, kill the group on cancel or timeout, reap everything.
//! - [`disk`]: how full a filesystem is, and which errors mean it takes no more writes.
//! - [`joblog`]: job output on disk: capture into log files and the readers of those files.
//! - [`inventory`]: logical cores, NUMA nodes and memory, read from `/sys` and `/proc`.
//! - [`cgroup`]: one cgroup per command job task (v2, or v1 where only v1 is mounted): CPU,
//!   memory and pids limits, OOM kills counted, and a kill that nothing escapes.
//!
//! `unsafe` lives only where FFI needs it (io_uring submissions, eventfd, setrlimit,
//! sched_setaffinity, killpg), each block with a `// Safety:` comment.

pub mod cgroup;
pub mod disk;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod joblog;
pub mod journal;
pub mod launcher;
pub mod ledger;
pub mod metrics;
pub mod rlimit;

pub use engine::{Backend, BackendSetting, IoBuf, IoEngine, IoFile, OpenMode};
pub use error::{CpuError, Result};
