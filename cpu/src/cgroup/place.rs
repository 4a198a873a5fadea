//! Putting a task's processes into its group. On v1 a thread of the node spawns from inside the
//! group's memory, pids and freezer groups ([`TaskCgroup::run_inside`]), so the child starts in
//! them and the spawn needs no fork of the node; the child is then moved into the CPU group by
//! its pid, with whatever it forked meanwhile. Elsewhere the child joins every hierarchy itself
//! between fork and exec ([`TaskCgroup::join_on_exec`]).
//!
//! Why the CPU group is joined apart: moving the running thread into another CPU group and back
//! makes the scheduler preempt it each time (it re-places the thread's entity), about eight
//! more thread switches per job, which on shared cores cost a third of a `/bin/true` job's
//! throughput; moving the child, which is not running on this thread's core, does not.
//!
//! Invariants: a child placed by [`TaskCgroup::run_inside`] never runs outside the group's memory,
//! pids and freezer groups, so it is always killed with the group and limited in memory and
//! processes; from its `exec` until [`TaskCgroup::run_inside`] returns (microseconds) it is
//! charged to the node's CPU group, and every process of the group is in the CPU group once it
//! returns (what the child forked meanwhile is moved too, in rounds until none is left, up to
//! [`CPU_ROUNDS`]); if that fails, the caller gets the error and must empty the group.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::sync::atomic::Ordering;

use super::fs::{fail, invalid, read_small, write_ctl, write_file};
use super::held::write_held;
use super::{CgroupVersion, Controller, TaskCgroup, MAX_PROCS_FILE};
use crate::error::Result;
use crate::metrics as m;

/// Rounds of moving the processes the child forked before it was in the CPU group.
pub(super) const CPU_ROUNDS: u32 = 16;

impl TaskCgroup {
    /// Runs `spawn` on the calling thread while that thread, not its process, is inside this
    /// group's memory, pids and freezer groups (v1's `tasks` files), then moves the thread back
    /// to the node's own groups, moves the spawned process (`pid` of what `spawn` returned) and
    /// anything it forked meanwhile into the CPU group, once its CPU limits are written. A process
    /// `spawn` starts begins inside the group, as a child always starts in its creator's groups,
    /// and the spawn can use `posix_spawn`: no fork of the node, no copy of its page tables, no
    /// write faults afterwards. `spawn` runs charged to the group (its memory and pids limits
    /// apply): it should spawn and nothing more.
    ///
    /// Fails (and `spawn` does not run) where the thread cannot enter, and on v2, which places
    /// whole processes. `spawn`'s own error comes back as the inner result. A failure to move
    /// back (tried twice) is logged and counted and the spawn's result returned all the same;
    /// the group is then marked so that it is never frozen (the stuck thread may be the one
    /// that would freeze it) nor kept as a spare, and the thread leaves it at its next
    /// placement. A failure to write the CPU limits or to move the process into the CPU group
    /// is returned (with the spawned process dropped): the caller must then empty the group.
    pub fn run_inside<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<T>,
        pid: impl FnOnce(&T) -> Option<u32>,
    ) -> Result<io::Result<T>> {
        if self.version != CgroupVersion::V1 {
            return Err(invalid(
                &self.who(),
                "cgroup v2 places whole processes only: a thread cannot enter a group alone".into(),
            ));
        }
        // Whatever is placed now makes the group no longer known empty.
        self.emptied.store(false, Ordering::Release);
        let cpu = self.index[Controller::Cpu as usize];
        let entered = self
            .dirs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != cpu)
            .try_for_each(|(i, dir)| {
                match self.held.as_ref().and_then(|h| h.tasks.get(i)?.as_ref()) {
                    Some(file) => write_held(file, "0")
                        .map_err(|e| fail("write", &self.who(), &dir.join("tasks"), e)),
                    None => write_ctl(&self.who(), &dir.join("tasks"), "0"),
                }
            });
        let spawned = entered.map(|()| spawn());

        // Back in every hierarchy, also after a partial entry: the node's own group is the
        // parent group's parent.
        let held_home = self.home.as_deref();
        let homes = self
            .dirs
            .iter()
            .filter_map(|d| d.parent()?.parent())
            .enumerate();
        for (i, home) in homes.filter(|(i, _)| *i != cpu) {
            let tasks = home.join("tasks");
            let leave = || match held_home.and_then(|h| h.get(i)) {
                Some(file) => write_held(file, "0"),
                None => write_file(&tasks, "0"),
            };
            if let Err(e) = leave().or_else(|_| leave()) {
                self.stuck.store(true, Ordering::Release);
                tracing::error!(cgroup = %self.who(), path = %home.display(), error = %e,
                    "a thread of the node could not leave a job's cgroup; it is charged to it");
                metrics::counter!(m::CGROUP_ERRORS, "op" => "leave").increment(1);
            }
        }
        let spawned = spawned?;
        if let Ok(child) = &spawned {
            let Some(pid) = pid(child) else {
                let path = self.path(Controller::Cpu).join("cgroup.procs");
                let e = io::Error::other("the spawned process has no pid to place");
                return Err(fail("write", &self.who(), &path, e));
            };
            // The limits first: the process is never in the CPU group under another's.
            self.write_cpu_limits()?;
            self.join_cpu(pid)?;
        }
        Ok(spawned)
    }

    /// Moves process `pid`, and every process of the group's freezer group not yet in its CPU
    /// group (what `pid` forked before it was moved), into the CPU group, in rounds until a round
    /// finds none, up to [`CPU_ROUNDS`]. A process that exited meanwhile is skipped, and so is one
    /// still listed after its move that is exiting (the kernel leaves it where it is).
    fn join_cpu(&self, pid: u32) -> Result<()> {
        let cpu_procs = self.path(Controller::Cpu).join("cgroup.procs");
        let mv = |pid: u32| {
            let value = pid.to_string();
            let moved = match &self.held {
                Some(held) => write_held(&held.cpu_procs, &value),
                None => write_file(&cpu_procs, &value),
            };
            match moved {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                other => other.map_err(|e| fail("write", &self.who(), &cpu_procs, e)),
            }
        };
        mv(pid)?;
        // The child alone, the common case: the pids group counts one task, and it is in the
        // CPU group already.
        if self.counted_tasks() == Some(1) {
            return Ok(());
        }
        let freezer_procs = self.path(Controller::Freezer).join("cgroup.procs");
        // Pids written once already: one still listed outside the CPU group after its move is
        // looked up, as the kernel skips an exiting process without an error.
        let mut moved = BTreeSet::from([pid]);
        for _ in 0..CPU_ROUNDS {
            let all = read_small(&freezer_procs, MAX_PROCS_FILE)
                .map_err(|e| fail("read", &self.who(), &freezer_procs, e))?;
            let all = pid_set(&all);
            let placed = read_small(&cpu_procs, MAX_PROCS_FILE)
                .map_err(|e| fail("read", &self.who(), &cpu_procs, e))?;
            let placed = pid_set(&placed);
            let own = std::process::id();
            let missing: Vec<u32> = all
                .difference(&placed)
                .copied()
                .filter(|&p| p != own)
                .filter(|&p| !(moved.contains(&p) && exiting(p)))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            moved.extend(missing.iter().copied());
            missing.into_iter().try_for_each(mv)?;
        }
        let e = io::Error::other(format!(
            "the job's processes kept forking outside the CPU group for {CPU_ROUNDS} rounds"
        ));
        Err(fail("write", &self.who(), &cpu_procs, e))
    }

    /// Makes the child spawned from `cmd` move itself into this group, in every hierarchy,
    /// between fork and exec: before it runs the job's code or can fork. If it cannot join, the
    /// spawn fails with the kernel's error. Other pre-exec hooks on `cmd` keep running in the
    /// order they were installed. Writes the group's pending CPU limits first (an error then).
    pub fn join_on_exec(&self, cmd: &mut tokio::process::Command) -> Result<()> {
        self.emptied.store(false, Ordering::Release);
        self.write_cpu_limits()?;
        let procs = self.procs.clone();
        let hook = move || join_self(&procs);
        // Safety: the hook runs in the forked child before exec. It only calls open, write and
        // close (async-signal-safe) on NUL-terminated paths prepared in the parent and owned by
        // the closure, takes no lock and allocates nothing (io::Error::last_os_error does not).
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(hook);
        }
        Ok(())
    }
}

/// `PF_EXITING` in the flags of `/proc/<pid>/stat`: the process has begun to exit.
const PF_EXITING: u64 = 0x4;

/// Whether process `pid` is exiting, a zombie or gone, so that no cgroup can take it any more:
/// the kernel leaves an exiting process where it is and still answers a write of its pid with
/// success, while its group's `cgroup.procs` lists it until it is reaped. An unreadable or
/// unparsable `stat` counts as live (it is then moved again, and the rounds bound the retries).
fn exiting(pid: u32) -> bool {
    let stat = match read_small(std::path::Path::new(&format!("/proc/{pid}/stat")), 4096) {
        Ok(stat) => stat,
        Err(e) => return e.kind() == io::ErrorKind::NotFound,
    };
    stat_exiting(&stat).unwrap_or(false)
}

/// Parses a `/proc/<pid>/stat` line: `Some(true)` for a zombie or dead state or `PF_EXITING` in
/// the flags, `None` where the line does not parse. The command name, in parentheses, may hold
/// spaces and parentheses itself: fields are counted after its last `)`.
fn stat_exiting(stat: &str) -> Option<bool> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // After the state: ppid, pgrp, session, tty_nr, tpgid, then flags.
    let flags: u64 = fields.nth(5)?.parse().ok()?;
    Some(matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0)
}

/// The pids listed in a `cgroup.procs` text (lines that are not pids are skipped: the full
/// listing of [`TaskCgroup::kill_all`] is the one that refuses them).
fn pid_set(text: &str) -> BTreeSet<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The child's side of [`TaskCgroup::join_on_exec`]: writes `0` (this process) to each
/// `cgroup.procs`. Runs between fork and exec: system calls only, no allocation.
#[allow(unsafe_code)]
fn join_self(procs: &[CString]) -> io::Result<()> {
    for path in procs {
        // Safety: `path` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: writes one byte from a static buffer to the descriptor opened above.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let error = match written {
            1 => None,
            -1 => Some(io::Error::last_os_error()),
            _ => Some(io::Error::from_raw_os_error(libc::EIO)),
        };
        // Safety: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        if let Some(e) = error {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stat_exiting;

    #[test]
    fn an_exiting_a_zombie_and_a_live_process_are_told_apart() {
        // The stuck `mkdir` of a failed placement: running, with PF_EXITING in its flags.
        let exiting = "9926 (mkdir) R 9925 9925 8982 0 -1 4194316 92 0 0 0 0 0 0 0 20 0 1 0";
        assert_eq!(stat_exiting(exiting), Some(true));
        let zombie = "11017 (python3) Z 11015 11015 8982 0 -1 4227084 2937 6525 10 1 3 1";
        assert_eq!(stat_exiting(zombie), Some(true));
        let live = "11017 (python3) S 11015 11015 8982 0 -1 4194560 2937 6525 10 1 3 1";
        assert_eq!(stat_exiting(live), Some(false));
        // A name with spaces and parentheses: the fields count from its last `)`.
        let odd = "12 (a) Z (b) S 1 12 12 0 -1 4194560 0 0";
        assert_eq!(stat_exiting(odd), Some(false));
        assert_eq!(stat_exiting("12 (truncated) S 1"), None);
        assert_eq!(stat_exiting("no name"), None);
    }
}
