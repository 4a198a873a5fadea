//! A spawned command job: waiting for it, stopping it (its process group, or its cgroup when it
//! has one), and the end of its output capture.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::child::killpg;
use super::{ExitOutcome, ExitReport, CAPTURE_DRAIN_GRACE};
use crate::error::{CpuError, Result};
use crate::joblog::{CaptureDone, Captured, StreamProgress};
use crate::metrics as m;

/// A spawned process and the capture of its output. Dropping it before it was waited for kills
/// its whole process group.
#[derive(Debug)]
pub struct RunningProcess {
    pub(super) job_id: Arc<str>,
    pub(super) program: String,
    pub(super) child: Child,
    pub(super) pid: i32,
    pub(super) stdout_log: PathBuf,
    pub(super) stderr_log: PathBuf,
    pub(super) stdout_task: Option<JoinHandle<Captured>>,
    pub(super) stderr_task: Option<JoinHandle<Captured>>,
    pub(super) stdout_captured: Option<Captured>,
    pub(super) stderr_captured: Option<Captured>,
    /// Bytes read from each pipe and dropped by the cap so far, kept by the capture tasks.
    pub(super) stdout_progress: Arc<StreamProgress>,
    pub(super) stderr_progress: Arc<StreamProgress>,
    pub(super) done: Arc<CaptureDone>,
    pub(super) done_rx: watch::Receiver<bool>,
    /// Set once the direct child has been reaped.
    pub(super) outcome: Option<ExitOutcome>,
    pub(super) terminated: bool,
    pub(super) killed: bool,
    pub(super) timed_out: bool,
    pub(super) report: Option<ExitReport>,
    /// The job's cgroup, until it has been emptied and removed.
    pub(super) cgroup: Option<crate::cgroup::TaskCgroup>,
    /// Its cgroup counted an OOM kill.
    pub(super) oom_killed: bool,
    /// The boot clock's ticks read before and after the spawn (`None` where the clock could not
    /// be read): where the child's start time lies.
    pub(super) start_window: Option<crate::ledger::StartWindow>,
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

    /// Where the direct child's start time lies (for [`crate::ledger::ProcessLedger`]), from
    /// the boot clock read around its spawn; `None` where that clock could not be read.
    pub fn start_window(&self) -> Option<crate::ledger::StartWindow> {
        self.start_window
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
    /// wrote is in its log (or was given up on). Give it to [`crate::joblog::LogReader::follow`].
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
    /// exit, then `SIGKILL` to the group (at once, with no `SIGTERM`, for a zero `grace`); waits
    /// for it and for capture. On a process that has already exited it is
    /// [`wait`](Self::wait).
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitReport> {
        if let Some(report) = self.report {
            return Ok(report);
        }
        if self.outcome.is_none() && grace.is_zero() {
            // No grace: killed at once (its lease is gone, and may be another attempt's now).
            self.terminated = true;
            self.killed = true;
            self.signal_group(libc::SIGKILL, "SIGKILL")?;
            self.kill_cgroup().await;
            let status = self.child.wait().await;
            self.reaped(status)?;
        } else if self.outcome.is_none() {
            self.terminated = true;
            self.signal_group(libc::SIGTERM, "SIGTERM")?;
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(status) => self.reaped(status)?,
                Err(_) => {
                    self.killed = true;
                    tracing::warn!(job_id = %self.job_id, pid = self.pid, grace_ms = grace.as_millis() as u64,
                        "process outlived the grace after SIGTERM; sending SIGKILL to its group");
                    self.signal_group(libc::SIGKILL, "SIGKILL")?;
                    self.kill_cgroup().await;
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

    /// Kills whatever is left in the job's cgroup (processes that left its process group).
    async fn kill_cgroup(&mut self) {
        let Some(group) = &self.cgroup else {
            return;
        };
        match group.kill_all().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(job_id = %self.job_id, cgroup = group.name(), processes = n,
                "killed what was left in the job's cgroup"),
            // Logged and counted by the cgroup module, where it failed.
            Err(error) => {
                tracing::debug!(job_id = %self.job_id, %error, "the job's cgroup could not be emptied")
            }
        }
    }

    /// Empties the job's cgroup, reads its OOM count, and releases it. The group is nearly
    /// always empty already (its main process is reaped): then emptying is a read of its task
    /// count, and keeping it as a spare a few more reads, done here. Anything longer (killing
    /// what is left, a few `rmdir`s, which can wait on the kernel for milliseconds) runs on
    /// tokio's blocking pool and is not waited for: the report does not depend on it, and a
    /// group it cannot remove is logged, counted, and swept at start.
    async fn finish_cgroup(&mut self) {
        let Some(group) = self.cgroup.take() else {
            return;
        };
        let job_id = Arc::clone(&self.job_id);
        match group.kill_all().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(job_id = %job_id, cgroup = group.name(), processes = n,
                "killed what was left in the job's cgroup"),
            // Logged and counted by the cgroup module, where it failed.
            Err(error) => {
                tracing::debug!(job_id = %job_id, %error, "the job's cgroup could not be emptied")
            }
        }
        match group.oom_kills() {
            Ok(n) => self.oom_killed = n > 0,
            Err(error) => {
                tracing::warn!(job_id = %job_id, cgroup = group.name(), %error,
                    "cannot tell whether the job was killed for memory");
            }
        }
        discard_group(group, job_id);
    }

    /// Waits for both capture tasks (at most [`CAPTURE_DRAIN_GRACE`] once the group is gone)
    /// and builds the report.
    async fn finish_capture(&mut self) -> Result<ExitReport> {
        let Some(outcome) = self.outcome else {
            let e = io::Error::other("capture finished before the process was reaped");
            return Err(self.fail("wait", CpuError::io("wait", &self.program, e)));
        };
        // Nothing of the job outlives its main process: what is left in its cgroup goes before
        // the capture drains (a leftover holding a pipe would otherwise hold the capture).
        self.finish_cgroup().await;
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
            oom_killed: self.oom_killed,
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

/// Releases `group`: kept as a spare at once where it was found empty and can serve again (a
/// few reads that never wait, where a hand-off to the blocking pool costs two thread switches
/// per job); otherwise emptied (if anything is left) and kept or removed
/// ([`crate::cgroup::TaskCgroup::release`]) on tokio's blocking pool (its retries on the
/// runtime's timer), without waiting: failures are logged and counted by the cgroup module;
/// the next start sweeps what is left. Outside a runtime the group is left for that sweep, said
/// once here.
pub(super) fn discard_group(group: crate::cgroup::TaskCgroup, job_id: Arc<str>) {
    let Some(group) = group.try_keep() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(job_id = %job_id, cgroup = group.name(),
            "no runtime to remove the job's cgroup: it is left for the next sweep");
        metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "cgroup").increment(1);
        return;
    };
    let handle = runtime.clone();
    drop(runtime.spawn_blocking(move || {
        // Logged and counted by the cgroup module where it failed.
        if let Err(error) = handle.block_on(group.release()) {
            tracing::debug!(job_id = %job_id, %error, "a job's cgroup was not released");
        }
    }));
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
        // What left the process group is still in the job's cgroup: it goes too, off this
        // thread (emptying a group takes a freeze and a few polls).
        if let Some(group) = self.cgroup.take() {
            let job_id = Arc::clone(&self.job_id);
            discard_group(group, job_id);
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
