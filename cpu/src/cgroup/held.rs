//! The control files a v1 task group uses at every task's start and end, kept open for as long
//! as the group exists (also while it waits as a spare): the `tasks` file of each hierarchy, the
//! CPU quota, the task count, the OOM count, the memory charged, and the directories themselves
//! (`O_PATH`, for their link counts). Each open of a cgroupfs file
//! walks its path through kernfs and costs several times the read or write itself; a job on
//! cgroups used to open about fifteen of them, which the shared cores paid for as a third of a
//! `/bin/true` job's throughput.
//!
//! Invariants: files are held only on a real cgroupfs (its `statfs` magic), where a write at
//! offset 0 replaces a control value whole; elsewhere (the fake machines of the tests), and where
//! a group's files could not all be opened (no descriptor left, logged and counted), every call
//! goes by path as before. A read is bounded by the caller's maximum. The node's own group's
//! `tasks` files, which every placement returns to, are held by the parent and shared.
//! Descriptors are `O_CLOEXEC` (std's default): no job inherits them. v1's `cgroup.procs` is
//! never read through a held file: the kernel keeps the list of a file's first read for a while
//! and would show it again.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use super::{Controller, MAX_SMALL_FILE};
use crate::metrics as m;

/// cgroupfs' `statfs` magic (v1 and v2 alike: `CGROUP_SUPER_MAGIC`, `CGROUP2_SUPER_MAGIC`).
const CGROUP_MAGICS: [i64; 2] = [0x0027_e0eb, 0x6367_7270];

/// The open control files of one v1 task group.
#[derive(Debug)]
pub(super) struct Held {
    /// `tasks` of each hierarchy, in the order of the group's directories; none for the CPU
    /// hierarchy, which the placing thread does not enter.
    pub(super) tasks: Vec<Option<File>>,
    /// `cpu.cfs_quota_us`.
    pub(super) quota: File,
    /// `cgroup.procs` of the CPU group (written: a process moved in).
    pub(super) cpu_procs: File,
    /// `pids.current`.
    pub(super) count: File,
    /// `memory.oom_control`.
    pub(super) oom: File,
    /// `memory.usage_in_bytes`.
    pub(super) usage: File,
    /// The group's directory in each hierarchy (`O_PATH`), in the order of its directories:
    /// their link counts say whether a group was made inside it, without a path walk.
    pub(super) dirs: Vec<File>,
}

impl Held {
    /// Opens the files of the group whose directories are `dirs`; `path` gives a controller's
    /// directory among them. A failure is logged and counted by the caller's `group` name.
    pub(super) fn open(
        group: &str,
        dirs: &[PathBuf],
        path: impl Fn(Controller) -> PathBuf,
    ) -> Option<Held> {
        let open = |p: PathBuf, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(&p)
                .map_err(|e| (p, e))
        };
        let opened = (|| {
            let cpu = path(Controller::Cpu);
            let tasks = dirs
                .iter()
                .map(|d| match *d == cpu {
                    true => Ok(None),
                    false => open(d.join("tasks"), true).map(Some),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<Held, (PathBuf, io::Error)>(Held {
                tasks,
                quota: open(path(Controller::Cpu).join("cpu.cfs_quota_us"), true)?,
                cpu_procs: open(path(Controller::Cpu).join("cgroup.procs"), true)?,
                count: open(path(Controller::Pids).join("pids.current"), false)?,
                oom: open(path(Controller::Memory).join("memory.oom_control"), false)?,
                usage: open(
                    path(Controller::Memory).join("memory.usage_in_bytes"),
                    false,
                )?,
                dirs: dirs
                    .iter()
                    .map(|d| {
                        std::fs::OpenOptions::new()
                            .read(true)
                            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                            .open(d)
                            .map_err(|e| (d.clone(), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            })
        })();
        match opened {
            Ok(held) => Some(held),
            Err((path, e)) => {
                tracing::warn!(cgroup = %group, path = %path.display(), error = %e,
                    "cannot keep a cgroup's control file open; the group is used by path");
                metrics::counter!(m::CGROUP_ERRORS, "op" => "hold").increment(1);
                None
            }
        }
    }
}

/// Opens `tasks` in each of `dirs` (the node's own groups), where `dir` lies on cgroupfs;
/// `None` elsewhere, or where one cannot be opened (logged and counted).
pub(super) fn open_home(group: &str, dirs: &[PathBuf]) -> Option<Vec<File>> {
    let mut files = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let path = dir.join("tasks");
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) if on_cgroupfs(&file) => files.push(file),
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(cgroup = %group, path = %path.display(), error = %e,
                    "cannot keep the node's cgroup open; groups are used by path");
                metrics::counter!(m::CGROUP_ERRORS, "op" => "hold").increment(1);
                return None;
            }
        }
    }
    Some(files)
}

/// Whether `file` lies on cgroupfs.
#[allow(unsafe_code)]
fn on_cgroupfs(file: &File) -> bool {
    // Safety: statfs is plain data, zeroed is a valid value; fstatfs writes only into it, from
    // a descriptor `file` keeps open for the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let magic = stat.f_type as i64;
    CGROUP_MAGICS.contains(&magic)
}

/// Whether the held directory `dir` has no subdirectory, by its link count (see
/// `procs::no_subdirs`); `false` where it cannot be read.
pub(super) fn held_no_subdirs(dir: &File) -> bool {
    dir.metadata().is_ok_and(|m| m.nlink() == 2)
}

/// Writes `value` whole to the held control file `file` (cgroupfs takes one value per write).
pub(super) fn write_held(file: &File, value: &str) -> io::Result<()> {
    let written = file.write_at(value.as_bytes(), 0)?;
    if written != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("{written} of {} bytes taken", value.len()),
        ));
    }
    Ok(())
}

/// Reads the held control file `file` from its start, refusing more than [`MAX_SMALL_FILE`]
/// bytes.
///
/// A read that returns less than the buffer holds is taken as the whole file: cgroupfs serves a
/// control file's text in one read where it fits (these are a line or three), so the read that
/// would return 0 is skipped, half the calls of every start and end.
pub(super) fn read_held(file: &File) -> io::Result<String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read_at(&mut chunk, bytes.len() as u64)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if n < chunk.len() {
            break;
        }
        if bytes.len() as u64 > MAX_SMALL_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("longer than {MAX_SMALL_FILE} bytes"),
            ));
        }
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
