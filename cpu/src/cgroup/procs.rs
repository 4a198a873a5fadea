//! Which processes a task group holds: the kernel's count (`pids.current`, one read, the
//! common case of an empty group), the full listing of `cgroup.procs` in the group and the groups
//! a job made inside it, in every hierarchy, and the walk of those groups.
//!
//! Invariants: the count only ever answers "empty" (and, to the placing of a task's first
//! process, "that one alone"); any other answer, or a count that cannot be read, falls back to
//! the listing (the count includes a thread of the node passing through, and tasks that exited
//! and are not yet reaped). The listing leaves out the node's own pid, reads at
//! most [`MAX_PROCS_FILE`] bytes per file, and walks at most [`MAX_DEPTH`] levels and
//! [`MAX_GROUPS`] groups. A directory whose link count says it has no subdirectory (cgroupfs
//! counts them, as ext4 and tmpfs do) is not listed.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::fs::{fail, read_small};
use super::held::read_held;
use super::{Controller, TaskCgroup, MAX_DEPTH, MAX_GROUPS, MAX_PROCS_FILE, MAX_SMALL_FILE};
use crate::error::{CpuError, Result};
use crate::metrics as m;

impl TaskCgroup {
    /// Whether no process is left in the group or in groups the job made inside it, in every
    /// hierarchy.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.pids()?.is_empty())
    }

    /// Every pid in the group and the groups inside it, in every hierarchy. The node's own pid
    /// is left out: v1 lists a process as soon as one of its threads is in the group, and a
    /// thread of the node passes through a group to spawn ([`TaskCgroup::run_inside`]); no
    /// job process can have the node's pid.
    pub(super) fn pids(&self) -> Result<BTreeSet<i32>> {
        let own = i32::try_from(std::process::id()).unwrap_or(0);
        let mut pids = BTreeSet::new();
        for dir in &self.dirs {
            for group in self.tree(dir)? {
                let path = group.join("cgroup.procs");
                let text = match read_small(&path, MAX_PROCS_FILE) {
                    Ok(text) => text,
                    // A group the job made inside may vanish between listing and reading, and
                    // a node killed during `create` leaves a group in some hierarchies only.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(fail("read", &self.who(), &path, e)),
                };
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    match line.parse::<i32>() {
                        Ok(pid) if pid == own => {}
                        Ok(pid) if pid > 0 => {
                            pids.insert(pid);
                        }
                        _ => {
                            let e = io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("{line:?} is not a pid"),
                            );
                            return Err(fail("read", &self.who(), &path, e));
                        }
                    }
                }
            }
        }
        Ok(pids)
    }

    /// `dir` and the groups inside it, parents before children, bounded in depth and number.
    pub(super) fn tree(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut groups = vec![dir.to_path_buf()];
        let mut level = vec![dir.to_path_buf()];
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for parent in &level {
                if no_subdirs(parent) {
                    continue;
                }
                let Ok(entries) = std::fs::read_dir(parent) else {
                    continue; // removed meanwhile, or (the top) never created: nothing inside
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        next.push(entry.path());
                    }
                }
            }
            if next.is_empty() {
                return Ok(groups);
            }
            groups.extend(next.iter().cloned());
            if groups.len() > MAX_GROUPS {
                break;
            }
            level = next;
        }
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_GROUPS} groups or {MAX_DEPTH} levels inside"),
        );
        Err(fail("read", &self.who(), dir, e))
    }

    /// Fails with [`CpuError::CgroupNotEmpty`] unless the group is empty.
    pub(super) fn ensure_empty(&self, op: &'static str) -> Result<()> {
        let pids = self.pids()?.len();
        if pids == 0 {
            return Ok(());
        }
        let path = self.path(Controller::Freezer).to_path_buf();
        tracing::warn!(cgroup = %self.who(), op, path = %path.display(), pids,
            "cgroup still holds processes");
        metrics::counter!(m::CGROUP_ERRORS, "op" => op).increment(1);
        Err(CpuError::CgroupNotEmpty { op, path, pids })
    }

    /// The tasks (threads, and exited processes not yet reaped) the pids controller counts in
    /// the group and the groups inside it; `None` where it cannot be read (logged at debug:
    /// callers then list the processes).
    pub(super) fn counted_tasks(&self) -> Option<u64> {
        let path = self.path(Controller::Pids).join("pids.current");
        let count = match &self.held {
            Some(held) => read_held(&held.count),
            None => read_small(&path, MAX_SMALL_FILE),
        };
        let parsed = count.and_then(|t| {
            t.trim()
                .parse::<u64>()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        });
        match parsed {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(cgroup = %self.who(), path = %path.display(), error = %e,
                    "cannot read the task count; listing the processes instead");
                None
            }
        }
    }

    /// Whether the pids controller counts no task in the group and the groups inside it
    /// (`pids.current` 0): one read instead of the listing. `false` is "not known": the caller
    /// lists the pids.
    pub(super) fn counted_empty(&self) -> bool {
        self.counted_tasks() == Some(0)
    }
}

/// Whether `dir` has no subdirectory by its link count (2: itself and `.`); `false` where the
/// count says otherwise or the filesystem does not count subdirectories (btrfs says 1).
pub(super) fn no_subdirs(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.nlink() == 2)
}
