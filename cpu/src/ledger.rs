//! The process ledger: which process groups a worker has running, in an append-only file, so
//! that a worker starting after a crash (its own, or a `kill -9` of the node) kills what the
//! previous instance left running before anything is placed on it again.
//!
//! Each spawned group is one line `+ <pgid> <starttime>` and each reaped one `- <pgid>`; the
//! start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot) tells a leftover
//! group from an unrelated process that reused its number, so a reused pid is never killed.
//! Lines are written without fsync: they must survive the process, not the machine (a machine
//! that went down took the processes with it). Opening the ledger kills every leftover group
//! whose leader still has its recorded start time, then starts the file afresh.
//!
//! This is what Slurm's `slurmstepd` does with its cgroup: the record of what runs lives outside
//! the process that may die. (`CommandSpec::limits.parent_death_signal` is the other way, but it
//! forces fork+exec, which copies the page tables of a large node on every spawn, and it only
//! reaches the direct child.)

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{CpuError, Result};
use crate::metrics as m;

/// The start time of process `pid` in clock ticks since boot, from `/proc/<pid>/stat`; `None`
/// when no such process exists.
pub fn process_start_time(pid: i32) -> Result<Option<u64>> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CpuError::io("read", &path, e)),
    };
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| CpuError::Invalid {
            field: "proc stat",
            reason: format!("{}: no ')' after the command name", path.display()),
        })?;
    // After ')' come fields 3.. : state is field 3, starttime field 22 (index 19 here).
    let start = after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse::<u64>().ok())
        .ok_or_else(|| CpuError::Invalid {
            field: "proc stat",
            reason: format!("{}: no start time in field 22", path.display()),
        })?;
    Ok(Some(start))
}

/// An open process ledger.
#[derive(Debug)]
pub struct ProcessLedger {
    path: PathBuf,
    file: File,
    live: usize,
    lines: usize,
}

/// What opening a ledger found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Leftover groups that were still running and were killed.
    pub killed: Vec<i32>,
    /// Recorded groups that had already ended (or whose number now belongs to another process).
    pub gone: usize,
}

/// Lines before a ledger with nothing running is started afresh.
const COMPACT_LINES: usize = 100_000;

impl ProcessLedger {
    /// Opens (or creates) the ledger at `path`, kills every leftover group it records whose
    /// leader still has the recorded start time, and starts the file afresh.
    pub fn open(path: impl AsRef<Path>) -> Result<(ProcessLedger, Sweep)> {
        let path = path.as_ref().to_path_buf();
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_string(&mut text)
                    .map_err(|e| CpuError::io("read", &path, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CpuError::io("open", &path, e)),
        }
        let mut running: Vec<(i32, u64)> = Vec::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next().and_then(|p| p.parse::<i32>().ok()),
            ) {
                (Some("+"), Some(pgid)) => {
                    if let Some(start) = parts.next().and_then(|s| s.parse::<u64>().ok()) {
                        running.push((pgid, start));
                    }
                }
                (Some("-"), Some(pgid)) => running.retain(|(p, _)| *p != pgid),
                // A torn last line (the node died mid-write) or garbage: nothing to act on.
                _ => tracing::debug!(path = %path.display(), line, "process ledger line skipped"),
            }
        }
        let mut sweep = Sweep::default();
        for (pgid, start) in running {
            if pgid <= 1 {
                continue;
            }
            match process_start_time(pgid) {
                Ok(Some(now)) if now == start => match crate::launcher::kill_group(pgid) {
                    Ok(true) => {
                        tracing::warn!(pgid, path = %path.display(),
                            "killed a process group left running by a previous worker instance");
                        sweep.killed.push(pgid);
                    }
                    Ok(false) => sweep.gone += 1,
                    Err(e) => {
                        tracing::error!(pgid, error = %e, "could not kill a leftover process group");
                        metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "ledger").increment(1);
                    }
                },
                Ok(_) => sweep.gone += 1,
                Err(e) => {
                    tracing::error!(pgid, error = %e, "could not check a leftover process group");
                    metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "ledger").increment(1);
                }
            }
        }
        File::create(&path).map_err(|e| CpuError::io("create", &path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| CpuError::io("open", &path, e))?;
        Ok((
            ProcessLedger {
                path,
                file,
                live: 0,
                lines: 0,
            },
            sweep,
        ))
    }

    fn write(&mut self, line: &str) -> Result<()> {
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| CpuError::io("write", &self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Records a spawned group (its leader's pid is the pgid).
    pub fn record(&mut self, pgid: i32) -> Result<()> {
        let start = process_start_time(pgid)?.unwrap_or(0);
        self.live += 1;
        self.write(&format!("+ {pgid} {start}\n"))
    }

    /// Records that a group was reaped.
    pub fn forget(&mut self, pgid: i32) -> Result<()> {
        self.live = self.live.saturating_sub(1);
        self.write(&format!("- {pgid}\n"))?;
        if self.live == 0 && self.lines >= COMPACT_LINES {
            self.file
                .set_len(0)
                .map_err(|e| CpuError::io("truncate", &self.path, e))?;
            self.lines = 0;
        }
        Ok(())
    }
}
