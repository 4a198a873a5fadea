//! The pieces of [`TaskCgroup::kill_all`]: freezing and thawing (v1 `freezer.state`, v2
//! `cgroup.freeze`) and sending `SIGKILL` to the pids read while frozen.
//!
//! Invariant: a group frozen here is always thawed again before `kill_all` returns or moves on,
//! since a frozen process only dies of `SIGKILL` once thawed; pid 0, -1, 1 and the node's own
//! pid are never signalled.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use super::fs::{fail, keyed_value, read_small, write_file};
use super::{CgroupVersion, Controller, TaskCgroup, MAX_SMALL_FILE, POLL};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Freeze, kill and thaw rounds before [`TaskCgroup::kill_all`] gives up.
pub(super) const KILL_ROUNDS: u32 = 20;
/// Polls for the freezer to report `FROZEN` (v2: `frozen 1`) before killing anyway.
const FREEZE_POLLS: u32 = 100;

impl TaskCgroup {
    /// The freezer's state file and the values for frozen and thawed.
    fn freezer(&self) -> (PathBuf, &'static str, &'static str) {
        let dir = self.path(Controller::Freezer);
        match self.version {
            CgroupVersion::V1 => (dir.join("freezer.state"), "FROZEN", "THAWED"),
            CgroupVersion::V2 => (dir.join("cgroup.freeze"), "1", "0"),
        }
    }

    /// Freezes the group and waits until it is frozen; returns whether the freeze was asked
    /// for (then the caller must thaw). A failure, or a group that does not finish freezing (a
    /// task in uninterruptible sleep), is logged and counted, and the kill goes ahead anyway,
    /// in more rounds if need be.
    pub(super) async fn freeze(&self) -> bool {
        let (file, frozen, _) = self.freezer();
        if let Err(e) = write_file(&file, frozen) {
            fail("freeze", &self.who(), &file, e);
            return false;
        }
        for _ in 0..FREEZE_POLLS {
            match self.is_frozen() {
                Ok(true) => return true,
                Ok(false) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    fail("freeze", &self.who(), &file, e);
                    return true;
                }
            }
        }
        let e = io::Error::new(io::ErrorKind::TimedOut, "the group did not finish freezing");
        fail("freeze", &self.who(), &file, e);
        true
    }

    /// Whether the freezer reports the whole group frozen.
    fn is_frozen(&self) -> io::Result<bool> {
        let dir = self.path(Controller::Freezer);
        Ok(match self.version {
            CgroupVersion::V1 => {
                read_small(&dir.join("freezer.state"), MAX_SMALL_FILE)?.trim() == "FROZEN"
            }
            CgroupVersion::V2 => {
                keyed_value(
                    &read_small(&dir.join("cgroup.events"), MAX_SMALL_FILE)?,
                    "frozen",
                ) == Some(1)
            }
        })
    }

    /// Thaws the group (a frozen process only dies of `SIGKILL` once thawed).
    pub(super) fn thaw(&self) -> Result<()> {
        let (file, _, thawed) = self.freezer();
        write_file(&file, thawed).map_err(|e| fail("thaw", &self.who(), &file, e))
    }

    /// Sends `SIGKILL` to each of `pids`, adding those signalled to `killed`. A process that is
    /// already gone is skipped; the node's own pid is never signalled.
    pub(super) fn signal(&self, pids: &BTreeSet<i32>, killed: &mut BTreeSet<i32>) -> Result<()> {
        let own = i32::try_from(std::process::id()).unwrap_or(0);
        for &pid in pids {
            if pid == own {
                continue;
            }
            match kill(pid) {
                Ok(true) => {
                    killed.insert(pid);
                }
                Ok(false) => {}
                Err(e) => {
                    let path = self.path(Controller::Freezer).join("cgroup.procs");
                    tracing::warn!(cgroup = %self.who(), pid, error = %e,
                        "killing a cgroup's process failed");
                    metrics::counter!(m::CGROUP_ERRORS, "op" => "kill").increment(1);
                    return Err(CpuError::Cgroup {
                        op: "kill",
                        path,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Sends `SIGKILL` to `pid`: `Ok(false)` when it no longer exists. Refuses pids below 2.
#[allow(unsafe_code)]
fn kill(pid: i32) -> io::Result<bool> {
    if pid <= 1 {
        // 0 and -1 would address our group or every process; 1 is init.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        ));
    }
    // Safety: kill takes two integers and touches no memory of ours; pid > 1 was checked, so it
    // names one process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}
