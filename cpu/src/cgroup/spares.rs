//! Spare task groups (v1): a task's group that is empty and has nothing of its task charged to
//! it any more is kept instead of removed, and the next task takes it instead of creating one.
//! Creating and removing a v1 group in four hierarchies holds the kernel's cgroup lock for a while
//! each time (a memory controller to set up, then to tear down); taking a spare is a pop from a
//! list, so starting a job waits less. v1 groups are named by the node (`slot-<n>`, see
//! `Cgroups::create`) and keep their name through every task they serve: nothing is renamed
//! (renaming a group to each task's name and back cost eight renames per job, about a tenth of a
//! `/bin/true` job's throughput). The [`HELD_SPARES`] spares taken next (the last released) keep
//! their control files open (see `held`); the ones below them close theirs, so idle spares hold
//! a bounded number of descriptors, and a task that takes one of those opens them again.
//!
//! Invariants: a spare holds no process, no nested group, no OOM kill, and at most
//! [`MAX_RESIDUE_BYTES`] of memory charged to it (the kernel objects a task leaves behind, which
//! the kernel frees in time; a task that leaves its files' page cache charged leaves more), and
//! no thread of the node, so a task that takes one starts as in a new group once its limits are
//! written: those that differ from what the spare holds (it remembers what its last task left),
//! and always the CPU quota, before the task's process joins the CPU group (a quota written
//! refills the period's budget, so the task is not charged for its predecessor's use); at most
//! [`MAX_SPARES`] are kept; the parent's removal and every sweep remove the spares first. v2
//! keeps none (it places whole processes, so its spawns fork and the group's cost is a smaller
//! share).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::fs::{fail, read_small, rmdir};
use super::held::{held_no_subdirs, read_held, Held};
use super::procs::no_subdirs;
use super::{CgroupVersion, Cgroups, Controller, TaskCgroup, MAX_SMALL_FILE};
use crate::error::Result;

/// The most spare groups kept: beyond it a released group is removed.
pub const MAX_SPARES: usize = 256;

/// The most spare groups that keep their control files open (twelve descriptors each, on four hierarchies).
pub const HELD_SPARES: usize = 32;

/// The most memory still charged to a released group for it to be kept: what an exited task
/// leaves of kernel objects (about 160 KiB after `/bin/true` here), not its page cache.
pub const MAX_RESIDUE_BYTES: u64 = 1 << 20;

/// One spare group and what its last task left written in it.
#[derive(Debug)]
pub(super) struct Spare {
    /// Its name under the parent (`slot-<n>`).
    pub(super) name: String,
    /// Its directory in every hierarchy, in the order of the parent's.
    pub(super) dirs: Vec<PathBuf>,
    /// The limits its control files hold: memory and pids as written at its last task's
    /// creation; CPU period and weight for `cpu_millis` where they were written (`None`: not
    /// known).
    pub(super) written: Written,
    /// Its control files, kept open.
    pub(super) held: Option<Held>,
}

/// The limits a spare's control files hold (see [`Spare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    /// `memory_bytes` and `pids` as in [`super::CgroupLimits`].
    pub(super) memory_bytes: u64,
    pub(super) pids: Option<u64>,
    /// The `cpu_millis` whose period and weight are written, if they were.
    pub(super) cpu_millis: Option<u32>,
}

/// The spare groups of one parent, shared by its handles, and the numbering of its groups.
#[derive(Debug, Default)]
pub(super) struct Spares {
    /// The spares, the last released on top.
    free: Mutex<Vec<Spare>>,
    /// The number in the next group's name (`slot-<n>`).
    next: AtomicU64,
}

impl Spares {
    /// The name of a new group: `slot-<n>`, never handed out before by this pool.
    pub(super) fn next_name(&self) -> String {
        format!("slot-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes the spare on top (the last released), if any.
    pub(super) fn pop(&self) -> Option<Spare> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Keeps `spare` on top, where the next task takes it, and closes the files of the spare
    /// it pushes below the [`HELD_SPARES`] on top; `false` (and `spare` dropped, its files
    /// closed) when [`MAX_SPARES`] are kept already.
    fn push(&self, spare: Spare) -> bool {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() >= MAX_SPARES {
            drop(free);
            drop(spare);
            return false;
        }
        free.push(spare);
        let closed = free
            .len()
            .checked_sub(HELD_SPARES + 1)
            .and_then(|below| free[below].held.take());
        // Closed after the lock: a task taking a spare meanwhile need not wait for it.
        drop(free);
        drop(closed);
        true
    }

    /// How many spares are kept.
    pub(super) fn len(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Takes every spare out (to remove them): their directories.
    pub(super) fn drain(&self) -> Vec<Vec<PathBuf>> {
        std::mem::take(&mut *self.free.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .map(|spare| spare.dirs)
            .collect()
    }
}

impl Cgroups {
    /// Takes a spare group, if one is kept (counted in `cadre_cgroup_reused_total` by the caller once
    /// the task has it).
    pub(super) fn take_spare(&self) -> Option<Spare> {
        self.spares.pop()
    }

    /// How many spare groups are kept for the next tasks.
    pub fn spare_count(&self) -> usize {
        self.spares.len()
    }

    /// Removes every spare group (at shutdown, before the parent).
    pub(super) async fn remove_spares(&self) -> Result<()> {
        let mut first_error = None;
        for dirs in self.spares.drain() {
            for dir in &dirs {
                if let Err(e) = rmdir(&self.parent, dir).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl TaskCgroup {
    /// Empties the group ([`TaskCgroup::kill_all`]) and then keeps it as a spare for a later
    /// task ([`TaskCgroup::try_keep`]) or removes it.
    pub async fn release(self) -> Result<()> {
        if !self.emptied.load(Ordering::Acquire) {
            self.kill_all().await?;
        }
        match self.try_keep() {
            None => Ok(()),
            Some(group) => group.remove().await,
        }
    }

    /// Keeps a group [`TaskCgroup::kill_all`] found empty as a spare for a later task (v1,
    /// when nothing of this task is charged to it any more: no more memory than
    /// [`MAX_RESIDUE_BYTES`], no OOM kill counted, no group inside it, no thread of the node
    /// stuck in it, and fewer than [`MAX_SPARES`] kept); otherwise gives it back, to be
    /// removed ([`TaskCgroup::remove`]). It never waits (a few reads of control files and
    /// directories), so that a task's end keeps its group where it is, without a hand-off to
    /// another thread.
    pub fn try_keep(self) -> Option<TaskCgroup> {
        if !self.emptied.load(Ordering::Acquire) {
            return Some(self);
        }
        let Some(spares) = self.spares.clone() else {
            return Some(self);
        };
        // Its CPU limits stay: the thread that places the next task's process does not enter
        // the CPU group, and the next task writes its quota (refilling the period's budget)
        // before its process joins.
        if !self.reusable() {
            return Some(self);
        }
        let written = Written {
            memory_bytes: self.limits.memory_bytes,
            pids: self.limits.pids,
            cpu_millis: (!self.cpu_pending.load(Ordering::Acquire))
                .then_some(self.limits.cpu_millis),
        };
        let mut this = self;
        let held = this.held.take();
        let kept = spares.push(Spare {
            name: this.name.clone(),
            dirs: this.dirs.clone(),
            written,
            held,
        });
        if !kept {
            // The pool is full: removed by the caller.
            return Some(TaskCgroup {
                spares: None,
                ..this
            });
        }
        None
    }

    /// Whether the group can serve another task: v1, no OOM kill counted, no more than
    /// [`MAX_RESIDUE_BYTES`] charged, and no group inside it in any hierarchy. A read that
    /// fails says no (and is logged).
    pub(super) fn reusable(&self) -> bool {
        if self.version != CgroupVersion::V1
            || self.stuck.load(Ordering::Acquire)
            || !self.final_oom_kills().is_ok_and(|n| n == 0)
        {
            return false;
        }
        let usage = self.path(Controller::Memory).join("memory.usage_in_bytes");
        let read = match &self.held {
            Some(held) => read_held(&held.usage),
            None => read_small(&usage, MAX_SMALL_FILE),
        };
        let charged = match read {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_or(true, |n| n > MAX_RESIDUE_BYTES),
            Err(e) => {
                fail("read", &self.who(), &usage, e);
                true
            }
        };
        !charged
            && self.dirs.iter().enumerate().all(|(i, dir)| {
                let held = self.held.as_ref().and_then(|h| h.dirs.get(i));
                match held {
                    Some(file) if held_no_subdirs(file) => true,
                    _ => no_groups_inside(&self.who(), dir),
                }
            })
    }
}

/// Whether `dir` holds no directory (no group a job made inside its own). A listing that fails
/// says no (logged and counted).
fn no_groups_inside(group: &str, dir: &Path) -> bool {
    if no_subdirs(dir) {
        return true;
    }
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .all(|e| !e.file_type().is_ok_and(|t| t.is_dir())),
        Err(e) => {
            fail("read", group, dir, e);
            false
        }
    }
}
