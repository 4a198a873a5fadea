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
//! Bounded: every [`COMPACT_LINES`] lines the file is rewritten with the groups still running
//! (a new file renamed over the old, so a node killed meanwhile leaves one or the other whole),
//! also while jobs run without pause; it stays under about `COMPACT_LINES` lines plus one per
//! running group. Reading a ledger at start keeps only the groups still recorded as running,
//! line by line, each line bounded: a ledger of any size (or garbage) is read in bounded memory.
//!
//! This is what Slurm's `slurmstepd` does with its cgroup: the record of what runs lives outside
//! the process that may die. (`CommandSpec::limits.parent_death_signal` is the other way, but it
//! forces fork+exec, which copies the page tables of a large node on every spawn, and it only
//! reaches the direct child.)

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
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
    /// The groups recorded and not yet reaped, with their leaders' start times.
    live: BTreeMap<i32, u64>,
    /// Lines in the file.
    lines: usize,
    /// Lines after which the file is rewritten with the live groups alone.
    compact_lines: usize,
}

/// What opening a ledger found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Leftover groups that were still running and were killed.
    pub killed: Vec<i32>,
    /// Recorded groups that had already ended (or whose number now belongs to another process).
    pub gone: usize,
}

/// Lines after which the ledger is rewritten with the groups still running.
pub const COMPACT_LINES: usize = 100_000;

/// The longest line a ledger holds (`+ <pgid> <starttime>\n` is at most 33 bytes); a longer one
/// is garbage, skipped without being kept in memory.
const MAX_LINE: usize = 64;

impl ProcessLedger {
    /// Opens (or creates) the ledger at `path`, kills every leftover group it records whose
    /// leader still has the recorded start time, and starts the file afresh.
    pub fn open(path: impl AsRef<Path>) -> Result<(ProcessLedger, Sweep)> {
        let path = path.as_ref().to_path_buf();
        let running = match File::open(&path) {
            Ok(f) => read_running(&path, f).map_err(|e| CpuError::io("read", &path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(CpuError::io("open", &path, e)),
        };
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
                live: BTreeMap::new(),
                lines: 0,
                compact_lines: COMPACT_LINES,
            },
            sweep,
        ))
    }

    /// Rewrites the file every `lines` lines instead of every [`COMPACT_LINES`] (tests).
    pub fn set_compact_lines(&mut self, lines: usize) {
        self.compact_lines = lines.max(1);
    }

    /// The groups recorded as running.
    pub fn running(&self) -> usize {
        self.live.len()
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
        self.live.insert(pgid, start);
        self.write(&format!("+ {pgid} {start}\n"))
    }

    /// Records that a group was reaped; every [`COMPACT_LINES`] lines, rewrites the file with
    /// the groups still running. A rewrite that fails is returned (the file is appended to
    /// as before, and the next rewrite comes as many lines later).
    pub fn forget(&mut self, pgid: i32) -> Result<()> {
        self.live.remove(&pgid);
        self.write(&format!("- {pgid}\n"))?;
        if self.lines >= self.compact_lines {
            self.lines = 0;
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the live groups to a new file and renames it over the ledger.
    fn compact(&mut self) -> Result<()> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".new");
        let fresh = PathBuf::from(name);
        let mut text = String::with_capacity(self.live.len() * 24);
        for (pgid, start) in &self.live {
            text.push_str(&format!("+ {pgid} {start}\n"));
        }
        std::fs::write(&fresh, text.as_bytes()).map_err(|e| CpuError::io("write", &fresh, e))?;
        std::fs::rename(&fresh, &self.path).map_err(|e| CpuError::io("rename", &fresh, e))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| CpuError::io("open", &self.path, e))?;
        self.lines = self.live.len();
        Ok(())
    }
}

/// The groups a ledger file records as running (recorded and not reaped), in the order first
/// recorded, read a line at a time; a line longer than [`MAX_LINE`], torn or garbled is skipped.
fn read_running(path: &Path, file: File) -> io::Result<Vec<(i32, u64)>> {
    let mut reader = BufReader::new(file);
    let mut running: HashMap<i32, (usize, u64)> = HashMap::new();
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    let mut n = 0usize;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            // Garbage: the rest of this line goes unread into memory.
            skip_line(&mut reader)?;
            tracing::debug!(path = %path.display(), "process ledger line too long; skipped");
            continue;
        }
        n += 1;
        let text = String::from_utf8_lossy(&line);
        let mut parts = text.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|p| p.parse::<i32>().ok()),
        ) {
            (Some("+"), Some(pgid)) => {
                if let Some(start) = parts.next().and_then(|s| s.parse::<u64>().ok()) {
                    running.insert(pgid, (n, start));
                }
            }
            (Some("-"), Some(pgid)) => {
                running.remove(&pgid);
            }
            // A torn last line (the node died mid-write) or garbage: nothing to act on.
            _ => tracing::debug!(path = %path.display(), line = %text.trim_end(),
                "process ledger line skipped"),
        }
    }
    let mut running: Vec<(usize, i32, u64)> = running
        .into_iter()
        .map(|(pgid, (at, start))| (at, pgid, start))
        .collect();
    running.sort_unstable();
    Ok(running
        .into_iter()
        .map(|(_, pgid, start)| (pgid, start))
        .collect())
}

/// Reads past the end of the current line without keeping it.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
}
