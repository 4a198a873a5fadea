//! The process launcher for command jobs: spawn from argv (never through a shell) in a process
//! group of its own, capture stdout and stderr to log files through the I/O engine, stop the
//! whole group on cancel or timeout, and reap everything.
//!
//! Guarantees:
//! - The child runs `argv` directly (`execvp`, no shell), with stdin on `/dev/null`, the asked
//!   environment and working directory, the asked rlimits and CPU affinity (set in the child
//!   between fork and exec, with no allocation there), as the leader of a new process group.
//! - Output capture holds one buffer of at most [`CAPTURE_CHUNK`] bytes per stream, whatever
//!   the child's output rate: the next read of the pipe waits for the write of the last chunk.
//!   A failed log write is logged and counted once; the pipe is then still drained (so the child
//!   never blocks on a full pipe) but nothing more is written.
//! - With [`CommandSpec::log_cap`], each stream keeps at most that many bytes on disk: its head
//!   and its latest tail, the layout described in [`crate::joblog`]; the report counts the bytes
//!   dropped in between.
//! - A job lives as long as its main process: once the direct child has exited, whatever is left
//!   of its process group is killed with `SIGKILL`, so no orphan outlives it.
//! - Dropping a [`RunningProcess`] that was not waited for kills its group; tokio reaps the
//!   direct child in the background, and the capture tasks finish writing the logs on their own
//!   (a process that left the group with `setsid` and kept a pipe open keeps its task alive).
//!
//! Costs: two tokio tasks per process (one per stream), one engine write per chunk read, a
//! listing of the log directory per stream at spawn (to clear segments a previous run left),
//! and a 50 ms poll per [`LogFollower`] while it waits for more output.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

mod child;
mod process;

use crate::engine::IoEngine;
use crate::error::{CpuError, Result};
use crate::joblog::{capture, Capture, CaptureDone, LogSink, StreamProgress};
pub use crate::joblog::{
    LogChunks, LogFollower, LogReader, CAPTURE_CHUNK, CAPTURE_FIRST_CHUNK, FOLLOW_POLL, MIN_LOG_CAP,
};
use crate::metrics as m;
pub(crate) use child::kill_group;
use child::{configured_cpus, install_child_setup, ChildSetup, CPU_SET_CAPACITY};
pub use process::RunningProcess;

/// How long [`RunningProcess::wait`] lets capture drain once the whole process group is gone.
/// Only a process that left the group (`setsid`) yet kept the pipe open can make it elapse; the
/// capture is then abandoned and the report says the logs are incomplete.
pub const CAPTURE_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Resource limits applied to the child with `setrlimit` (soft and hard limit alike, so the job
/// cannot raise them again). `None` leaves the launcher's own limit in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// `RLIMIT_AS`: the most virtual memory the process may map, in bytes.
    pub address_space_bytes: Option<u64>,
    /// `RLIMIT_NOFILE`: one more than the highest file descriptor it may open.
    pub open_files: Option<u64>,
    /// `RLIMIT_CPU`: CPU time in seconds; the kernel sends `SIGXCPU` and then `SIGKILL`.
    pub cpu_seconds: Option<u64>,
    /// `PR_SET_PDEATHSIG`: the signal the child gets when the launcher's process dies (a node
    /// killed with `SIGKILL` then leaves no job running behind it). Only the direct child gets
    /// it: a grandchild that left the group survives. Forces fork+exec instead of posix_spawn.
    pub parent_death_signal: Option<i32>,
}

/// What to run and where its output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program and its arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Variables set in the child's environment, after `clear_env`.
    pub env: Vec<(String, String)>,
    /// Start from an empty environment instead of the launcher's.
    pub clear_env: bool,
    /// The working directory; the launcher's own when `None`.
    pub cwd: Option<PathBuf>,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// CPUs the child may run on (`sched_setaffinity`); unrestricted when `None`.
    pub cpu_set: Option<Vec<usize>>,
    /// The file stdout is captured to, created or truncated at spawn (with a cap, the head;
    /// tail segments a previous run left beside it are removed).
    pub stdout_log: PathBuf,
    /// The file stderr is captured to, created or truncated at spawn; not the stdout log.
    pub stderr_log: PathBuf,
    /// The most bytes each stream keeps on disk, at least [`MIN_LOG_CAP`]: its first quarter
    /// and its latest bytes, the rest dropped (see [`crate::joblog`]). `None` keeps everything.
    pub log_cap: Option<u64>,
}

impl CommandSpec {
    /// A spec running `argv` with the launcher's environment, stdout and stderr captured to the
    /// two files.
    pub fn new(
        argv: impl IntoIterator<Item = impl Into<String>>,
        stdout_log: impl Into<PathBuf>,
        stderr_log: impl Into<PathBuf>,
    ) -> CommandSpec {
        CommandSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            stdout_log: stdout_log.into(),
            stderr_log: stderr_log.into(),
            ..CommandSpec::default()
        }
    }

    /// Checks the spec against a machine with `cpu_count` CPUs: a non-empty argv without NUL
    /// bytes, environment keys that are non-empty and hold neither `=` nor NUL, values without
    /// NUL, a non-empty CPU set of existing CPUs, two distinct, non-empty log paths, and a log
    /// cap of at least [`MIN_LOG_CAP`].
    pub fn validate(&self, cpu_count: usize) -> Result<()> {
        let invalid =
            |field: &'static str, reason: String| Err(CpuError::Invalid { field, reason });
        if self.argv.is_empty() {
            return invalid("argv", "it is empty: there is no program to run".into());
        }
        if let Some((i, _)) = self.argv.iter().enumerate().find(|(_, a)| a.contains('\0')) {
            return invalid("argv", format!("element {i} holds a NUL byte"));
        }
        if self.argv[0].is_empty() {
            return invalid("argv", "the program name (element 0) is empty".into());
        }
        if let Some(signal) = self.limits.parent_death_signal {
            if !(1..=64).contains(&signal) {
                return invalid(
                    "limits.parent_death_signal",
                    format!("{signal} is not a signal number (1..=64)"),
                );
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() {
                return invalid("env", "a variable has an empty name".into());
            }
            if key.contains('=') || key.contains('\0') {
                return invalid("env", format!("variable name {key:?} holds '=' or NUL"));
            }
            if value.contains('\0') {
                return invalid("env", format!("the value of {key} holds a NUL byte"));
            }
        }
        if let Some(cpus) = &self.cpu_set {
            if cpus.is_empty() {
                return invalid(
                    "cpu_set",
                    "it is empty: the process could run nowhere".into(),
                );
            }
            let bound = cpu_count.min(CPU_SET_CAPACITY);
            if let Some(cpu) = cpus.iter().find(|&&c| c >= bound) {
                return invalid(
                    "cpu_set",
                    format!(
                        "CPU {cpu} does not exist (this machine has CPUs 0 to {})",
                        bound.saturating_sub(1)
                    ),
                );
            }
        }
        if self.stdout_log.as_os_str().is_empty() {
            return invalid("stdout_log", "the path is empty".into());
        }
        if self.stderr_log.as_os_str().is_empty() {
            return invalid("stderr_log", "the path is empty".into());
        }
        if self.stdout_log == self.stderr_log {
            return invalid(
                "stderr_log",
                format!(
                    "{} is also the stdout log; the streams would overwrite each other",
                    self.stderr_log.display()
                ),
            );
        }
        if let Some(cap) = self.log_cap {
            if cap < MIN_LOG_CAP {
                return invalid(
                    "log_cap",
                    format!("{cap} bytes is below the smallest cap, {MIN_LOG_CAP} bytes"),
                );
            }
        }
        Ok(())
    }
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// It exited with this status code.
    Code(i32),
    /// A signal ended it (`SIGKILL` is 9, `SIGTERM` 15).
    Signal(i32),
}

impl ExitOutcome {
    pub(crate) fn from_status(status: ExitStatus) -> Option<ExitOutcome> {
        match (status.code(), status.signal()) {
            (Some(code), _) => Some(ExitOutcome::Code(code)),
            (None, Some(signal)) => Some(ExitOutcome::Signal(signal)),
            (None, None) => None,
        }
    }

    /// Whether it exited with status 0.
    pub fn success(self) -> bool {
        self == ExitOutcome::Code(0)
    }
}

/// The end of a process and of its output capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// How the direct child ended.
    pub outcome: ExitOutcome,
    /// The launcher stopped it because its time ran out ([`RunningProcess::wait_timeout`]).
    pub timed_out: bool,
    /// The launcher sent its group `SIGTERM` (on cancel or timeout).
    pub terminated: bool,
    /// It outlived the grace after `SIGTERM` and its group got `SIGKILL`.
    pub killed: bool,
    /// Bytes the process wrote to stdout.
    pub stdout_bytes: u64,
    /// Bytes the process wrote to stderr.
    pub stderr_bytes: u64,
    /// Bytes of stdout the log cap dropped (0 when uncapped).
    pub stdout_dropped_bytes: u64,
    /// Bytes of stderr the log cap dropped (0 when uncapped).
    pub stderr_dropped_bytes: u64,
    /// Every byte of both streams reached the log files (false after a log write error, or when
    /// capture was abandoned after [`CAPTURE_DRAIN_GRACE`]). Bytes the cap dropped do not make
    /// the logs incomplete.
    pub logs_complete: bool,
    /// The kernel killed a process of the job for passing its cgroup's memory limit.
    pub oom_killed: bool,
}

/// The boot clock's ticks, for a start window; `None` where it cannot be read (the process
/// ledger then reads the start time from `/proc`): warned about once, then at debug, and
/// counted each time.
fn boot_clock(job_id: &str) -> Option<u64> {
    match crate::ledger::boot_ticks() {
        Ok(ticks) => Some(ticks),
        Err(e) => {
            static WARNED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
            if WARNED.set(()).is_ok() {
                tracing::warn!(job_id, error = %e,
                    "cannot read the boot clock; the process ledger reads start times from /proc");
            } else {
                tracing::debug!(job_id, error = %e, "cannot read the boot clock");
            }
            metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "clock").increment(1);
            None
        }
    }
}

/// Spawns command jobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Launcher {
    engine: IoEngine,
    cpu_count: usize,
}

impl Launcher {
    /// A launcher writing logs through `engine`.
    pub fn new(engine: IoEngine) -> Launcher {
        Launcher {
            engine,
            cpu_count: configured_cpus(),
        }
    }

    /// The number of CPUs `cpu_set` indices are checked against.
    pub fn cpu_count(&self) -> usize {
        self.cpu_count
    }

    /// A reader of the log files this launcher writes.
    pub fn log_reader(&self) -> LogReader {
        LogReader::new(self.engine.clone())
    }

    /// Starts `spec` for job `job_id`: validates it, creates (truncates) both log files (and
    /// removes tail segments a previous run left), spawns the process in its own group and starts
    /// capturing its output. Needs a tokio runtime.
    pub fn spawn(&self, spec: &CommandSpec, job_id: &str) -> Result<RunningProcess> {
        self.spawn_in(spec, job_id, None)
    }

    /// [`Launcher::spawn`] inside `cgroup`: the child starts in it (v1, no limits to set in the
    /// child: the calling thread spawns from inside the group) or joins it between fork and
    /// exec, before it can start anything, so every process of the job is in it. Blocking: a
    /// few dozen filesystem calls, and a move into a group can wait ~10 ms for the kernel. The process then lives and
    /// dies with the group: once the direct child has exited (or is stopped) whatever is left
    /// in the group is killed, nothing escapes by `setsid`, the report says whether the kernel
    /// killed it for memory, and the group is removed at the end.
    /// On every failure the group is emptied and released (off this thread), so a spawn that
    /// fails (a missing program, a log file that cannot be made) leaves no group behind.
    pub fn spawn_in(
        &self,
        spec: &CommandSpec,
        job_id: &str,
        cgroup: Option<crate::cgroup::TaskCgroup>,
    ) -> Result<RunningProcess> {
        let mut cgroup = cgroup;
        let spawned = self.spawn_grouped(spec, job_id, &mut cgroup);
        if spawned.is_err() {
            if let Some(group) = cgroup.take() {
                process::discard_group(group, Arc::from(job_id));
            }
        }
        spawned
    }

    /// [`Launcher::spawn_in`] until the group is handed to the process (taken out of `cgroup`);
    /// on an error the caller releases what is left in `cgroup`.
    fn spawn_grouped(
        &self,
        spec: &CommandSpec,
        job_id: &str,
        cgroup: &mut Option<crate::cgroup::TaskCgroup>,
    ) -> Result<RunningProcess> {
        let fail = |err: CpuError, program: &str, path: Option<&Path>| {
            let kind = err.kind();
            match path {
                Some(path) => tracing::error!(job_id, program, path = %path.display(),
                    kind, error = %err, "spawning a command job failed"),
                None => tracing::error!(job_id, program, kind, error = %err,
                    "spawning a command job failed"),
            }
            metrics::counter!(m::LAUNCHER_ERRORS, "kind" => kind).increment(1);
            err
        };
        let Some((program, args)) = spec.argv.split_first() else {
            let e = CpuError::Invalid {
                field: "argv",
                reason: "it is empty: there is no program to run".into(),
            };
            return Err(fail(e, "", None));
        };
        spec.validate(self.cpu_count)
            .map_err(|e| fail(e, program, None))?;
        let program = program.clone();
        let fail = |err: CpuError, path: Option<&Path>| fail(err, &program, path);
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| fail(CpuError::NoRuntime, None))?;
        let stdout_sink = LogSink::create(&spec.stdout_log, spec.log_cap)
            .map_err(|e| fail(e, Some(&spec.stdout_log)))?;
        let stderr_sink = LogSink::create(&spec.stderr_log, spec.log_cap)
            .map_err(|e| fail(e, Some(&spec.stderr_log)))?;

        let mut cmd = Command::new(&program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if spec.clear_env {
            cmd.env_clear();
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let setup = ChildSetup::new(&spec.limits, spec.cpu_set.as_deref());
        // Where a thread can enter the group alone (v1) and the child needs no pre-exec work,
        // this thread spawns from inside the group, and std keeps using posix_spawn.
        // Otherwise the child joins between fork and exec; but a fork of the node costs about
        // 2.5 ms of CPU per job (its page tables copied, then a write fault and a TLB shootdown
        // for each page the node touches next), a third of /bin/true's throughput.
        let placing = cgroup
            .as_ref()
            .filter(|g| g.can_place_thread() && setup.is_empty());
        if let Some(group) = cgroup.as_ref().filter(|_| placing.is_none()) {
            // Logged and counted by the cgroup module.
            group
                .join_on_exec(&mut cmd)
                .map_err(|e| fail(e, Some(group.path(crate::cgroup::Controller::Cpu))))?;
        }
        install_child_setup(&mut cmd, setup);

        let spawn_err = |source: io::Error| CpuError::Spawn {
            program: program.clone(),
            source,
        };
        // The boot clock around the spawn: where the child's start time lies, for the process
        // ledger (see `crate::ledger`), without reading `/proc` for every job. Read just before
        // the spawn itself, inside the group where it spawns from one (entering it takes a while).
        let mut first = None;
        let mut spawn = || {
            first = boot_clock(job_id);
            cmd.spawn()
        };
        let spawned = match placing {
            // Logged and counted by the cgroup module. The child may have started (its CPU
            // limits are written after it): whatever is in the group goes.
            Some(group) => match group.run_inside(spawn, |child| child.id()) {
                Ok(spawned) => spawned,
                Err(e) => {
                    let path = group.path(crate::cgroup::Controller::Cpu).to_path_buf();
                    return Err(fail(e, Some(&path)));
                }
            },
            None => spawn(),
        };
        let start_window = match first {
            Some(first) => {
                boot_clock(job_id).map(|last| crate::ledger::StartWindow { first, last })
            }
            None => None,
        };
        let mut child = spawned.map_err(|e| fail(spawn_err(e), spec.cwd.as_deref()))?;
        metrics::counter!(m::LAUNCHER_SPAWNS).increment(1);
        // From here on `child` is killed (kill_on_drop) and reaped by tokio if we bail out.
        let pid = match child.id().map(i32::try_from) {
            Some(Ok(pid)) if pid > 1 => Some(pid),
            _ => None,
        };
        let (Some(pid), Some(stdout), Some(stderr)) =
            (pid, child.stdout.take(), child.stderr.take())
        else {
            return Err(fail(
                spawn_err(io::Error::other(
                    "the spawned child has no usable pid or pipes",
                )),
                None,
            ));
        };

        let job_id: Arc<str> = Arc::from(job_id);
        let (done_tx, done_rx) = watch::channel(false);
        let done = Arc::new(CaptureDone {
            remaining: AtomicUsize::new(2),
            tx: done_tx,
        });
        let stdout_progress = Arc::new(StreamProgress::default());
        let stderr_progress = Arc::new(StreamProgress::default());
        let stdout_task = runtime.spawn(capture(Capture {
            pipe: stdout,
            engine: self.engine.clone(),
            sink: stdout_sink,
            job_id: job_id.clone(),
            pid,
            stream: "stdout",
            done: done.clone(),
            progress: stdout_progress.clone(),
        }));
        let stderr_task = runtime.spawn(capture(Capture {
            pipe: stderr,
            engine: self.engine.clone(),
            sink: stderr_sink,
            job_id: job_id.clone(),
            pid,
            stream: "stderr",
            done: done.clone(),
            progress: stderr_progress.clone(),
        }));
        let group = cgroup.as_ref().map(|g| g.name());
        tracing::debug!(job_id = %job_id, pid, program = %program, cgroup = ?group,
            "command job spawned");
        Ok(RunningProcess {
            job_id,
            program,
            child,
            pid,
            stdout_log: spec.stdout_log.clone(),
            stderr_log: spec.stderr_log.clone(),
            stdout_task: Some(stdout_task),
            stderr_task: Some(stderr_task),
            stdout_captured: None,
            stderr_captured: None,
            stdout_progress,
            stderr_progress,
            done,
            done_rx,
            outcome: None,
            terminated: false,
            killed: false,
            timed_out: false,
            report: None,
            cgroup: cgroup.take(),
            oom_killed: false,
            start_window,
        })
    }
}
