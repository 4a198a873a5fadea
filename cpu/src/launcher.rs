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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::IoEngine;
use crate::error::{CpuError, Result};
use crate::joblog::{capture, Capture, CaptureDone, Captured, LogSink, StreamProgress};
pub use crate::joblog::{
    LogChunks, LogFollower, LogReader, CAPTURE_CHUNK, CAPTURE_FIRST_CHUNK, FOLLOW_POLL, MIN_LOG_CAP,
};
use crate::metrics as m;

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
    fn from_status(status: ExitStatus) -> Option<ExitOutcome> {
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
        install_child_setup(
            &mut cmd,
            ChildSetup::new(&spec.limits, spec.cpu_set.as_deref()),
        );

        let spawn_err = |source: io::Error| CpuError::Spawn {
            program: program.clone(),
            source,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(spawn_err(e), spec.cwd.as_deref()))?;
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
        tracing::debug!(job_id = %job_id, pid, program = %program, "command job spawned");
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
        })
    }
}

/// A spawned process and the capture of its output. Dropping it before it was waited for kills
/// its whole process group.
#[derive(Debug)]
pub struct RunningProcess {
    job_id: Arc<str>,
    program: String,
    child: Child,
    pid: i32,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    stdout_task: Option<JoinHandle<Captured>>,
    stderr_task: Option<JoinHandle<Captured>>,
    stdout_captured: Option<Captured>,
    stderr_captured: Option<Captured>,
    /// Bytes read from each pipe and dropped by the cap so far, kept by the capture tasks.
    stdout_progress: Arc<StreamProgress>,
    stderr_progress: Arc<StreamProgress>,
    done: Arc<CaptureDone>,
    done_rx: watch::Receiver<bool>,
    /// Set once the direct child has been reaped.
    outcome: Option<ExitOutcome>,
    terminated: bool,
    killed: bool,
    timed_out: bool,
    report: Option<ExitReport>,
}

impl RunningProcess {
    /// The direct child's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its process group id (the same number: the child leads its own group).
    pub fn pgid(&self) -> i32 {
        self.pid
    }

    /// The job it runs for.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The file stdout is captured to.
    pub fn stdout_log(&self) -> &Path {
        &self.stdout_log
    }

    /// The file stderr is captured to.
    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// Becomes `true` once the capture of both streams has finished: every byte the process
    /// wrote is in its log (or was given up on). Give it to [`LogReader::follow`].
    pub fn log_watch(&self) -> watch::Receiver<bool> {
        self.done_rx.clone()
    }

    /// Waits for the process to exit and for both streams to be captured. Cancel-safe: a later
    /// call picks up where a dropped one stopped. After the first success it returns the same
    /// report again.
    pub async fn wait(&mut self) -> Result<ExitReport> {
        if let Some(report) = self.report {
            return Ok(report);
        }
        if self.outcome.is_none() {
            let status = self.child.wait().await;
            self.reaped(status)?;
        }
        self.finish_capture().await
    }

    /// Stops the process: `SIGTERM` to its whole group, up to `grace` for the direct child to
    /// exit, then `SIGKILL` to the group; waits for it and for capture. On a process that has
    /// already exited it is [`wait`](Self::wait).
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitReport> {
        if let Some(report) = self.report {
            return Ok(report);
        }
        if self.outcome.is_none() {
            self.terminated = true;
            self.signal_group(libc::SIGTERM, "SIGTERM")?;
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(status) => self.reaped(status)?,
                Err(_) => {
                    self.killed = true;
                    tracing::warn!(job_id = %self.job_id, pid = self.pid, grace_ms = grace.as_millis() as u64,
                        "process outlived the grace after SIGTERM; sending SIGKILL to its group");
                    self.signal_group(libc::SIGKILL, "SIGKILL")?;
                    let status = self.child.wait().await;
                    self.reaped(status)?;
                }
            }
        }
        self.finish_capture().await
    }

    /// Waits up to `timeout` for the process to exit, then [`terminate`](Self::terminate)s it
    /// with `grace`; the report says `timed_out` when it had to.
    pub async fn wait_timeout(&mut self, timeout: Duration, grace: Duration) -> Result<ExitReport> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(result) => result,
            Err(_) => {
                if self.outcome.is_none() {
                    self.timed_out = true;
                    tracing::info!(job_id = %self.job_id, pid = self.pid,
                        timeout_ms = timeout.as_millis() as u64, "command job timed out; terminating it");
                }
                self.terminate(grace).await
            }
        }
    }

    /// Records the direct child's exit, then kills whatever is left of its group.
    fn reaped(&mut self, status: io::Result<ExitStatus>) -> Result<()> {
        let status =
            status.map_err(|e| self.fail("wait", CpuError::io("wait", &self.program, e)))?;
        let Some(outcome) = ExitOutcome::from_status(status) else {
            let e = io::Error::other(format!(
                "exit status {status} holds neither a code nor a signal"
            ));
            return Err(self.fail("wait", CpuError::io("wait", &self.program, e)));
        };
        self.outcome = Some(outcome);
        match killpg(self.pid, libc::SIGKILL) {
            Ok(true) => tracing::info!(job_id = %self.job_id, pgid = self.pid,
                "killed what was left of the process group after its leader exited"),
            Ok(false) => {}
            Err(source) => {
                // The exit itself is known; leftovers are reported, not made the job's failure.
                let err = CpuError::Signal {
                    signal: "SIGKILL",
                    pgid: self.pid,
                    source,
                };
                tracing::warn!(job_id = %self.job_id, pgid = self.pid, error = %err,
                    "could not kill the rest of the process group after its leader exited");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "signal").increment(1);
            }
        }
        Ok(())
    }

    /// Waits for both capture tasks (at most [`CAPTURE_DRAIN_GRACE`] once the group is gone)
    /// and builds the report.
    async fn finish_capture(&mut self) -> Result<ExitReport> {
        let Some(outcome) = self.outcome else {
            let e = io::Error::other("capture finished before the process was reaped");
            return Err(self.fail("wait", CpuError::io("wait", &self.program, e)));
        };
        let stdout = self.join_capture(true).await?;
        let stderr = self.join_capture(false).await?;
        let report = ExitReport {
            outcome,
            timed_out: self.timed_out,
            terminated: self.terminated,
            killed: self.killed,
            stdout_bytes: stdout.bytes,
            stderr_bytes: stderr.bytes,
            stdout_dropped_bytes: stdout.dropped,
            stderr_dropped_bytes: stderr.dropped,
            logs_complete: stdout.complete && stderr.complete,
        };
        self.report = Some(report);
        tracing::debug!(job_id = %self.job_id, pid = self.pid, ?outcome,
            stdout_bytes = stdout.bytes, stderr_bytes = stderr.bytes,
            stdout_dropped_bytes = stdout.dropped, stderr_dropped_bytes = stderr.dropped,
            "command job finished");
        Ok(report)
    }

    async fn join_capture(&mut self, is_stdout: bool) -> Result<Captured> {
        let (slot, task, path, stream, progress) = if is_stdout {
            (
                &mut self.stdout_captured,
                &mut self.stdout_task,
                &self.stdout_log,
                "stdout",
                &self.stdout_progress,
            )
        } else {
            (
                &mut self.stderr_captured,
                &mut self.stderr_task,
                &self.stderr_log,
                "stderr",
                &self.stderr_progress,
            )
        };
        if let Some(captured) = *slot {
            return Ok(captured);
        }
        let Some(handle) = task.as_mut() else {
            let e = io::Error::other(format!("the {stream} capture task is gone"));
            return Err(fail_capture(
                &self.job_id,
                self.pid,
                path,
                CpuError::io("capture", path, e),
            ));
        };
        let captured = match tokio::time::timeout(CAPTURE_DRAIN_GRACE, &mut *handle).await {
            Ok(Ok(captured)) => captured,
            Ok(Err(join)) => {
                *task = None;
                let e = io::Error::other(format!(
                    "the {stream} capture task ended abnormally: {join}"
                ));
                return Err(fail_capture(
                    &self.job_id,
                    self.pid,
                    path,
                    CpuError::io("capture", path, e),
                ));
            }
            Err(_) => {
                handle.abort();
                tracing::warn!(job_id = %self.job_id, pid = self.pid, stream, path = %path.display(),
                    grace_ms = CAPTURE_DRAIN_GRACE.as_millis() as u64,
                    "a process outside the job's group keeps the output pipe open; abandoning capture");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "capture").increment(1);
                self.done.finish_one();
                Captured {
                    bytes: progress.read.load(Ordering::Acquire),
                    dropped: progress.dropped.load(Ordering::Acquire),
                    complete: false,
                }
            }
        };
        *task = None;
        *slot = Some(captured);
        Ok(captured)
    }

    fn signal_group(&self, signal: i32, name: &'static str) -> Result<()> {
        match killpg(self.pid, signal) {
            Ok(_) => Ok(()),
            Err(source) => Err(self.fail(
                "signal",
                CpuError::Signal {
                    signal: name,
                    pgid: self.pid,
                    source,
                },
            )),
        }
    }

    fn fail(&self, kind: &'static str, err: CpuError) -> CpuError {
        tracing::error!(job_id = %self.job_id, pid = self.pid, kind, error = %err, "command job failed");
        metrics::counter!(m::LAUNCHER_ERRORS, "kind" => kind).increment(1);
        err
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            // kill_on_drop kills the direct child and tokio reaps it; this takes the rest of the
            // group with it.
            match killpg(self.pid, libc::SIGKILL) {
                Ok(_) => tracing::debug!(job_id = %self.job_id, pgid = self.pid,
                    "process dropped before it was waited for; killed its group"),
                Err(e) => {
                    tracing::warn!(job_id = %self.job_id, pgid = self.pid, error = %e,
                        "process dropped before it was waited for; killing its group failed");
                    metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "signal").increment(1);
                }
            }
        }
        // The capture tasks are left to drain: the group is dead, so the pipes close and they
        // end on their own with the logs complete, signalling `log_watch`.
    }
}

fn fail_capture(job_id: &str, pid: i32, path: &Path, err: CpuError) -> CpuError {
    tracing::error!(job_id, pid, path = %path.display(), error = %err, "output capture failed");
    metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "capture").increment(1);
    err
}

/// Sends `signal` to process group `pgid`. `Ok(false)` when the group no longer exists.
/// Sends `SIGKILL` to process group `pgid`: `Ok(false)` when no such group exists. Refuses
/// groups 0 and 1.
pub(crate) fn kill_group(pgid: i32) -> io::Result<bool> {
    killpg(pgid, libc::SIGKILL)
}

#[allow(unsafe_code)]
fn killpg(pgid: i32, signal: i32) -> io::Result<bool> {
    if pgid <= 1 {
        // 0 would signal our own group and 1 is init's: never ours to signal.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // Safety: killpg takes two integers and touches no memory of ours; pgid > 1 was checked, so
    // it cannot address our own group (0).
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The most CPUs a `cpu_set_t` can name.
const CPU_SET_CAPACITY: usize = libc::CPU_SETSIZE as usize;

/// The number of CPUs this machine is configured with (online or not).
#[allow(unsafe_code)]
fn configured_cpus() -> usize {
    // Safety: sysconf reads a configuration value and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    match usize::try_from(n) {
        Ok(n) if n > 0 => n.min(CPU_SET_CAPACITY),
        _ => {
            static WARNED: OnceLock<()> = OnceLock::new();
            if WARNED.set(()).is_ok() {
                tracing::warn!(result = n, error = %io::Error::last_os_error(),
                    "sysconf(_SC_NPROCESSORS_CONF) failed; checking cpu_set against {CPU_SET_CAPACITY} CPUs");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "cpu_count").increment(1);
            }
            CPU_SET_CAPACITY
        }
    }
}

/// What the child does between fork and exec, all of it prepared in the parent so that the
/// child only makes async-signal-safe system calls on plain values.
#[derive(Clone, Copy)]
struct ChildSetup {
    address_space: Option<libc::rlimit>,
    open_files: Option<libc::rlimit>,
    cpu_seconds: Option<libc::rlimit>,
    affinity: Option<libc::cpu_set_t>,
    /// The signal for `PR_SET_PDEATHSIG` and the pid of the process that must stay its parent.
    death_signal: Option<(libc::c_int, libc::pid_t)>,
}

impl ChildSetup {
    /// `cpus` must have passed [`CommandSpec::validate`] (every index below the capacity).
    fn new(limits: &ResourceLimits, cpus: Option<&[usize]>) -> ChildSetup {
        let rlimit = |v: Option<u64>| {
            v.map(|v| libc::rlimit {
                rlim_cur: v as libc::rlim_t,
                rlim_max: v as libc::rlim_t,
            })
        };
        ChildSetup {
            address_space: rlimit(limits.address_space_bytes),
            open_files: rlimit(limits.open_files),
            cpu_seconds: rlimit(limits.cpu_seconds),
            affinity: cpus.map(cpu_set),
            death_signal: limits
                .parent_death_signal
                .map(|signal| (signal, std::process::id() as libc::pid_t)),
        }
    }

    fn is_empty(&self) -> bool {
        self.address_space.is_none()
            && self.open_files.is_none()
            && self.cpu_seconds.is_none()
            && self.affinity.is_none()
            && self.death_signal.is_none()
    }
}

/// A `cpu_set_t` holding `cpus`; indices at or beyond its capacity are left out (validation
/// refuses them before this runs).
#[allow(unsafe_code)]
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // Safety: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < CPU_SET_CAPACITY) {
        // Safety: cpu < CPU_SETSIZE, so the bit lies inside the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Installs `setup` as the child's pre-exec hook (nothing when it asks for nothing, so that
/// std can keep using posix_spawn).
#[allow(unsafe_code)]
fn install_child_setup(cmd: &mut Command, setup: ChildSetup) {
    if setup.is_empty() {
        return;
    }
    let hook = move || -> io::Result<()> {
        let limits = [
            (libc::RLIMIT_AS, setup.address_space),
            (libc::RLIMIT_NOFILE, setup.open_files),
            (libc::RLIMIT_CPU, setup.cpu_seconds),
        ];
        for (resource, limit) in limits {
            if let Some(limit) = limit {
                // Safety: setrlimit reads the rlimit value we pass by reference, which lives on
                // this stack frame for the duration of the call.
                if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some((signal, parent)) = setup.death_signal {
            // Safety: prctl with PR_SET_PDEATHSIG takes the signal number by value; getppid has
            // no arguments. Both are async-signal-safe.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will ever come.
            if unsafe { libc::getppid() } != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        if let Some(set) = &setup.affinity {
            // Safety: the set is a valid cpu_set_t of the size we pass, read by the kernel only
            // during the call; pid 0 is this (child) process.
            if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) }
                != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // Safety: the hook runs in the forked child before exec. It allocates nothing, takes no lock
    // and calls only setrlimit and sched_setaffinity (async-signal-safe system calls) on values
    // copied into the closure before the fork; io::Error::last_os_error does not allocate.
    unsafe {
        cmd.pre_exec(hook);
    }
}
