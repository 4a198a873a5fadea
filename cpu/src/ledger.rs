//! The process ledger: which process groups a worker has running, in an append-only file, so
//! that a worker starting after a crash (its own, or a `kill -9` of the node) kills what the
//! previous instance left running before anything is placed on it again.
//!
//! Each spawned group is one line `+ <pgid> <first> <last>` and each reaped one `- <pgid>`:
//! the leader's start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot) lies
//! between `first` and `last`, the boot clock read just before and just after its spawn (a
//! [`StartWindow`]). That tells a leftover group from an unrelated process that reused its
//! number, so a reused pid is never killed: the leader is reaped only after `last` is read (until
//! then, even as a zombie, it keeps its number), so no other process can have its number and a
//! start time inside the window, short of one started within `last`'s own clock tick, as with an
//! exact start time. Reading the clock costs nothing next to reading `/proc` for every job (a
//! path walk, a formatted read, and `/proc` entries the kernel must then drop when the process
//! is reaped). The boot clock is read here only to match the kernel's own stamp, never to time
//! anything. Lines of the older form `+ <pgid> <starttime>` (an exact start time) are still
//! read. Lines are written without fsync: they must survive the process, not the machine (a
//! machine that went down took the processes with it). Opening the ledger kills every leftover
//! group whose leader's start time lies within its recorded window, then starts the file
//! afresh. The file begins with the machine's boot id (`boot <id>`, from
//! `/proc/sys/kernel/random/boot_id`): a ledger written before a reboot names groups that died
//! with it, and since pids and start times begin again at each boot, its windows could match
//! processes of the new one; it is not swept.
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

/// The clock ticks since boot (`CLOCK_BOOTTIME` in units of `sysconf(_SC_CLK_TCK)`), the unit
/// and the clock of a process's start time in `/proc/<pid>/stat`.
pub fn boot_ticks() -> io::Result<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: clock_gettime writes only into `now`, a valid timespec owned by this frame.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: sysconf only reads a constant of the C library.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // The kernel's conversion is exact only for a tick rate dividing a second's nanoseconds
    // (Linux's USER_HZ is 100); any other is refused, and the caller reads `/proc` instead.
    let hz = u64::try_from(hz)
        .ok()
        .filter(|&hz| hz > 0 && 1_000_000_000 % hz == 0)
        .ok_or_else(|| io::Error::other(format!("_SC_CLK_TCK is {hz}")))?;
    let secs = u64::try_from(now.tv_sec).map_err(io::Error::other)?;
    let nanos = u64::try_from(now.tv_nsec).map_err(io::Error::other)?;
    // As the kernel's nsec_to_clock_t: whole ticks, rounded down.
    Ok(secs * hz + nanos / (1_000_000_000 / hz))
}

/// Where a process's start time lies: the boot clock's ticks ([`boot_ticks`]) read just before
/// and just after it was spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartWindow {
    /// Read before the spawn.
    pub first: u64,
    /// Read after it.
    pub last: u64,
}

impl StartWindow {
    /// Runs `spawn` between two reads of the boot clock: its result, and the window around it
    /// (an error where the clock could not be read; `spawn` runs all the same).
    pub fn around<T>(spawn: impl FnOnce() -> T) -> (T, io::Result<StartWindow>) {
        let first = boot_ticks();
        let spawned = spawn();
        let window = first.and_then(|first| {
            let last = boot_ticks()?;
            Ok(StartWindow { first, last })
        });
        (spawned, window)
    }

    /// Whether a process that started at `start` (ticks since boot) could be the one spawned.
    pub fn contains(&self, start: u64) -> bool {
        (self.first..=self.last).contains(&start)
    }
}

/// An open process ledger.
#[derive(Debug)]
pub struct ProcessLedger {
    path: PathBuf,
    file: File,
    /// The groups recorded and not yet reaped, with their leaders' start windows.
    live: BTreeMap<i32, StartWindow>,
    /// Lines in the file.
    lines: usize,
    /// Lines after which the file is rewritten with the live groups alone.
    compact_lines: usize,
    /// This boot's id, the file's first line.
    boot: Option<String>,
}

/// What opening a ledger found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Leftover groups that were still running and were killed.
    pub killed: Vec<i32>,
    /// Recorded groups that had already ended (or whose number now belongs to another process).
    pub gone: usize,
    /// Lines skipped as garbled or overlong, a torn last line (the node died mid-write) apart:
    /// each is a group the ledger may have lost track of (warned once and counted).
    pub garbled: usize,
    /// The ledger was written before the machine last booted: its groups died with that boot
    /// and were not looked for (they count as gone).
    pub rebooted: bool,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`); `None` where it cannot be read (the
/// ledger then carries none and is swept whatever it says, as one written before boot ids),
/// which is warned about and counted.
fn boot_id() -> Option<String> {
    let path = "/proc/sys/kernel/random/boot_id";
    let failed = |reason: String| {
        tracing::warn!(path, %reason,
            "the boot id cannot be read; the process ledger cannot tell a reboot");
        metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "boot_id").increment(1);
        None
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() && text.len() <= 64 => Some(text.trim().to_owned()),
        Ok(text) => failed(format!("{} bytes that are not an id", text.len())),
        Err(e) => failed(e.to_string()),
    }
}

/// The header line naming the boot a ledger is written in (empty where the id is not known).
fn boot_line(boot: Option<&str>) -> String {
    boot.map_or_else(String::new, |id| format!("boot {id}\n"))
}

/// Lines after which the ledger is rewritten with the groups still running.
pub const COMPACT_LINES: usize = 100_000;

/// The longest line a ledger holds (`+ <pgid> <first> <last>\n` is at most 56 bytes); a longer
/// one is garbage, skipped without being kept in memory.
const MAX_LINE: usize = 64;

impl ProcessLedger {
    /// Opens (or creates) the ledger at `path`, kills every leftover group it records whose
    /// leader's start time lies within its recorded window, and starts the file afresh.
    pub fn open(path: impl AsRef<Path>) -> Result<(ProcessLedger, Sweep)> {
        let path = path.as_ref().to_path_buf();
        let boot = boot_id();
        let read = match File::open(&path) {
            Ok(f) => read_running(&path, f).map_err(|e| CpuError::io("read", &path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LedgerText::default(),
            Err(e) => return Err(CpuError::io("open", &path, e)),
        };
        let LedgerText {
            mut running,
            garbled,
            boot: written_in,
        } = read;
        let mut sweep = Sweep {
            garbled,
            ..Sweep::default()
        };
        if let (Some(then), Some(now)) = (&written_in, &boot) {
            if then != now {
                tracing::info!(path = %path.display(), groups = running.len(),
                    "the process ledger was written before the machine last booted; not swept");
                sweep.rebooted = true;
                sweep.gone = running.len();
                running.clear();
            }
        }
        if garbled > 0 {
            tracing::warn!(path = %path.display(), lines = garbled,
                "process ledger lines garbled and skipped: groups they recorded are not swept");
            metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "ledger_line")
                .increment(garbled as u64);
        }
        for (pgid, window) in running {
            if pgid <= 1 {
                continue;
            }
            match process_start_time(pgid) {
                Ok(Some(now)) if window.contains(now) => match crate::launcher::kill_group(pgid) {
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
        std::fs::write(&path, boot_line(boot.as_deref()))
            .map_err(|e| CpuError::io("create", &path, e))?;
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
                boot,
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

    /// Records a spawned group (its leader's pid is the pgid), reading its start time from
    /// `/proc`: for a process spawned without a [`StartWindow`].
    pub fn record(&mut self, pgid: i32) -> Result<()> {
        let start = process_start_time(pgid)?.unwrap_or(0);
        self.record_window(
            pgid,
            StartWindow {
                first: start,
                last: start,
            },
        )
    }

    /// Records a spawned group whose leader started within `window`.
    pub fn record_window(&mut self, pgid: i32, window: StartWindow) -> Result<()> {
        self.live.insert(pgid, window);
        self.write(&window_line(pgid, window))
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
        let mut text = boot_line(self.boot.as_deref());
        text.reserve(self.live.len() * 32);
        for (pgid, window) in &self.live {
            text.push_str(&window_line(*pgid, *window));
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

/// The line recording group `pgid` started within `window` (an exact start as one number).
fn window_line(pgid: i32, window: StartWindow) -> String {
    match window.first == window.last {
        true => format!("+ {pgid} {}\n", window.first),
        false => format!("+ {pgid} {} {}\n", window.first, window.last),
    }
}

/// What a ledger file says (see [`read_running`]).
#[derive(Debug, Default)]
struct LedgerText {
    /// The groups recorded and not reaped, in the order first recorded.
    running: Vec<(i32, StartWindow)>,
    /// Lines skipped as garbled.
    garbled: usize,
    /// The boot it was written in, where it names one.
    boot: Option<String>,
}

/// The groups a ledger file records as running (recorded and not reaped), in the order first
/// recorded, read a line at a time, the boot it names, and how many lines were skipped as
/// garbled: a line longer than [`MAX_LINE`], or one that does not parse (a torn last line, with
/// no newline, is skipped without being counted: it is what a node killed mid-write leaves).
fn read_running(path: &Path, file: File) -> io::Result<LedgerText> {
    let mut reader = BufReader::new(file);
    let mut running: HashMap<i32, (usize, StartWindow)> = HashMap::new();
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    let mut n = 0usize;
    let mut garbled = 0usize;
    let mut boot = None;
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
            garbled += 1;
            continue;
        }
        n += 1;
        let torn = line.last() != Some(&b'\n');
        let text = String::from_utf8_lossy(&line);
        let mut parts = text.split_whitespace();
        if text.starts_with("boot ") && !torn {
            boot = parts.nth(1).map(str::to_owned);
            continue;
        }
        match (
            parts.next(),
            parts.next().and_then(|p| p.parse::<i32>().ok()),
        ) {
            (Some("+"), Some(pgid)) => {
                let first = parts.next().and_then(|s| s.parse::<u64>().ok());
                let last = match parts.next() {
                    None => first,
                    Some(last) => last.parse::<u64>().ok(),
                };
                let whole = parts.next().is_none();
                match (first, last) {
                    (Some(first), Some(last)) if first <= last && whole && !torn => {
                        running.insert(pgid, (n, StartWindow { first, last }));
                    }
                    _ => {
                        tracing::debug!(path = %path.display(), line = %text.trim_end(),
                            "process ledger line skipped");
                        garbled += usize::from(!torn);
                    }
                }
            }
            (Some("-"), Some(pgid)) if !torn && parts.next().is_none() => {
                running.remove(&pgid);
            }
            // A torn last line (the node died mid-write) or garbage: nothing to act on.
            _ => {
                tracing::debug!(path = %path.display(), line = %text.trim_end(),
                    "process ledger line skipped");
                garbled += usize::from(!torn);
            }
        }
    }
    let mut running: Vec<(usize, i32, StartWindow)> = running
        .into_iter()
        .map(|(pgid, (at, window))| (at, pgid, window))
        .collect();
    running.sort_unstable_by_key(|&(at, pgid, _)| (at, pgid));
    let running = running
        .into_iter()
        .map(|(_, pgid, window)| (pgid, window))
        .collect();
    Ok(LedgerText {
        running,
        garbled,
        boot,
    })
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
