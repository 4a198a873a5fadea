//! The crate's one error type: every failure of the I/O engine, the journal, the launcher, the
//! cgroups and the inventory, each variant carrying the context (path, segment, offset, field)
//! to act on it.

use std::io;
use std::path::PathBuf;

/// Every error `cadre-cpu` returns.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// `io_uring` was asked for (`uring`) but this kernel or sandbox cannot give it.
    #[error("io_uring is unavailable: {step} failed: {source} (errno {errno})", errno = source.raw_os_error().unwrap_or(0))]
    UringUnavailable {
        /// The step that failed: `io_uring_setup`, `register_probe`, or an opcode check.
        step: &'static str,
        /// The error the kernel gave.
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `write`, `fdatasync`, ...).
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The error the kernel gave.
        source: io::Error,
    },
    /// The I/O engine's thread has stopped, so the request could not be carried out.
    #[error("the I/O engine has stopped; {op} was not carried out")]
    EngineStopped {
        /// The operation that was refused.
        op: &'static str,
    },
    /// The std backend needs a tokio runtime to run its blocking pool, and none is current.
    #[error("no tokio runtime is current; the std I/O backend runs on tokio's blocking pool")]
    NoRuntime,
    /// An `O_DIRECT` transfer whose buffer, length or offset is not aligned.
    #[error("O_DIRECT on {path}: {what} {value} is not a multiple of {align}")]
    Misaligned {
        /// The file opened with `O_DIRECT`.
        path: PathBuf,
        /// `buffer address`, `length` or `offset`.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The alignment required.
        align: u64,
    },
    /// A setting or option given by the caller is invalid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, as the caller names it (`io.backend`, `journal.segment_bytes`, `argv`, ...).
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The journal found corruption before its tail: records there cannot be trusted or skipped.
    #[error("journal corrupt in {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment (or snapshot) file.
        segment: PathBuf,
        /// Byte offset of the bad record's frame.
        offset: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The journal's writer has stopped (after an I/O error, or the journal was closed).
    #[error("the journal at {dir} has stopped: {reason}")]
    JournalStopped {
        /// The journal's directory.
        dir: PathBuf,
        /// Why it stopped.
        reason: String,
    },
    /// A process could not be spawned.
    #[error("spawning {program}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// The error the kernel gave.
        source: io::Error,
    },
    /// Sending a signal to a process group failed.
    #[error("sending {signal} to process group {pgid}: {source}")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// The process group.
        pgid: i32,
        /// The error the kernel gave.
        source: io::Error,
    },
    /// A system file the inventory reads (under `/sys` or `/proc`) could not be understood.
    #[error("reading {path}: {reason}")]
    Inventory {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Cgroups cannot be used here (not root, mounted read-only, nothing mounted, a controller
    /// missing or not delegated): the caller runs jobs in process groups instead.
    #[error("cgroups are unavailable: {reason}")]
    CgroupUnavailable {
        /// Why, naming the file, mount or controller at fault.
        reason: String,
    },
    /// An operation on a cgroup's directory or control file failed.
    #[error("cgroup {op} {path}: {source}")]
    Cgroup {
        /// What was being done (`mkdir`, `write`, `read`, `rmdir`, `kill`, ...).
        op: &'static str,
        /// The directory or control file it was done to.
        path: PathBuf,
        /// The error the kernel gave, or `InvalidData` for a file that could not be understood.
        source: io::Error,
    },
    /// A cgroup still holds processes where it must be empty.
    #[error("cgroup {op} {path}: it still holds {pids} processes")]
    CgroupNotEmpty {
        /// What needed it empty (`kill`, `create`, `remove`).
        op: &'static str,
        /// The group's directory.
        path: PathBuf,
        /// How many processes were still listed in it.
        pids: usize,
    },
}

impl CpuError {
    /// Wraps an [`io::Error`] from `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CpuError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A short, stable label for metrics (`kind` label values).
    pub fn kind(&self) -> &'static str {
        match self {
            CpuError::UringUnavailable { .. } => "uring_unavailable",
            CpuError::Io { .. } => "io",
            CpuError::EngineStopped { .. } => "engine_stopped",
            CpuError::NoRuntime => "no_runtime",
            CpuError::Misaligned { .. } => "misaligned",
            CpuError::Invalid { .. } => "invalid",
            CpuError::Corrupt { .. } => "corrupt",
            CpuError::JournalStopped { .. } => "journal_stopped",
            CpuError::Spawn { .. } => "spawn",
            CpuError::Signal { .. } => "signal",
            CpuError::Inventory { .. } => "inventory",
            CpuError::CgroupUnavailable { .. } => "cgroup_unavailable",
            CpuError::Cgroup { .. } => "cgroup",
            CpuError::CgroupNotEmpty { .. } => "cgroup_not_empty",
        }
    }
}

/// The crate's result type.
pub type Result<T, E = CpuError> = std::result::Result<T, E>;
