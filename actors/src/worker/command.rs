//! The command-task path: the spec a command job runs with (its documented environment, its
//! scratch directory, its cgroup's limits), the blocking half of the start on tokio's blocking
//! pool ([`prepare_command`]), the process ledger around its run, waiting for its end or its
//! kill, and what became of its output.

use std::path::PathBuf;
use std::sync::Arc;

use cadre_cpu::cgroup::CgroupLimits;
use cadre_cpu::launcher::{CommandSpec, ExitOutcome, ExitReport, RunningProcess};
use tokio::sync::oneshot;

use super::config::LedgerChange;
use super::task::{TaskRun, Waited};
use super::WorkerConfig;
use crate::ids::WorkerId;
use crate::job::{CommandJob, JobId};
use crate::metrics as m;
use crate::protocol::{KillReason, TaskEnd};
use crate::store::LogsNote;

/// The blocking half of starting a command task: its scratch directory, its cgroup (where
/// the node has them) and the spawn. Each failure is logged and counted where it happens and
/// comes back as the task's end.
fn prepare_command(
    config: &WorkerConfig,
    worker: WorkerId,
    job: JobId,
    scratch: &std::path::Path,
    spec: &CommandSpec,
    group: &str,
    limits: &CgroupLimits,
) -> Result<RunningProcess, TaskEnd> {
    if let Err(e) = std::fs::create_dir_all(scratch) {
        tracing::error!(worker = %worker, job = %job, path = %scratch.display(), error = %e,
            "cannot create the task's scratch directory");
        metrics::counter!(m::WORKER_ERRORS, "kind" => "scratch").increment(1);
        let error = format!(
            "its scratch directory {} could not be created: {e}",
            scratch.display()
        );
        return Err(TaskEnd::Error { error });
    }
    let cgroup = match &config.cgroups {
        None => None,
        // Logged and counted by the cgroup module; the job must not run unconfined.
        Some(cgroups) => Some(cgroups.create(group, limits).map_err(|e| TaskEnd::Error {
            error: format!("its cgroup could not be created: {e}"),
        })?),
    };
    // The launcher logs and counts its own failures.
    config
        .launcher
        .spawn_in(spec, &job.to_string(), cgroup)
        .map_err(|error| TaskEnd::StartFailed {
            error: error.to_string(),
        })
}

fn report_end(report: ExitReport) -> TaskEnd {
    if report.timed_out {
        return TaskEnd::TimedOut;
    }
    match report.outcome {
        ExitOutcome::Code(code) => TaskEnd::Exited { code },
        ExitOutcome::Signal(signal) => TaskEnd::Signalled { signal },
    }
}

impl TaskRun {
    pub(super) async fn command(
        self,
        command: CommandJob,
        kill_rx: oneshot::Receiver<KillReason>,
    ) -> (TaskEnd, Option<LogsNote>) {
        let config = Arc::clone(&self.config);
        let (out, err) = config.log_paths(self.job, self.task);
        let mut spec = CommandSpec::new(
            std::iter::once(command.program).chain(command.args),
            out,
            err,
        );
        // Its own scratch directory: its TMPDIR, and where it runs unless it names a workdir.
        let scratch = config.scratch_path(self.job, self.task);
        let scratch_text = scratch.display().to_string();
        // The documented environment, not the node's (unless the job asks to inherit it):
        // the base, then the job's own variables, then cadre's, which the job cannot override.
        spec.clear_env = !command.inherit_env;
        spec.env = config.base_env.clone();
        spec.env.push(("TMPDIR".to_owned(), scratch_text.clone()));
        spec.env.extend(command.env);
        spec.env.extend([
            ("CADRE_JOB_ID".to_owned(), self.job.to_string()),
            ("CADRE_JOB_NAME".to_owned(), self.name.clone()),
            ("CADRE_ATTEMPT".to_owned(), self.attempt.to_string()),
            ("CADRE_TASK".to_owned(), self.task.to_string()),
            ("CADRE_GANG_SIZE".to_owned(), self.gang.to_string()),
            ("CADRE_SCRATCH".to_owned(), scratch_text),
            // Exactly the granted devices, by UUID (ordinals can be renumbered); none for a
            // job that asked for none, so it cannot reach a device another job holds.
            (
                "CUDA_VISIBLE_DEVICES".to_owned(),
                self.gpus
                    .iter()
                    .map(|g| g.uuid.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        spec.cwd = Some(
            command
                .workdir
                .map_or_else(|| scratch.clone(), PathBuf::from),
        );
        spec.log_cap = config.log_cap;
        let limits = CgroupLimits {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            pids: config.max_pids,
        };
        let group = format!("{}.{}.{}", self.job, self.task, self.token.0);
        // The directory, the cgroup, the two log files and the fork are a few dozen blocking
        // filesystem calls: on tokio's blocking pool, so the actors sharing this thread (the
        // scheduler among them) go on meanwhile. A task dropped while they run drops the
        // process they return, which kills it and empties its group.
        let (worker, job) = (self.worker, self.job);
        let prepare =
            move || prepare_command(&config, worker, job, &scratch, &spec, &group, &limits);
        let mut process = match tokio::task::spawn_blocking(prepare).await {
            Ok(Ok(p)) => p,
            Ok(Err(end)) => return (end, None),
            Err(e) => {
                tracing::error!(worker = %self.worker, job = %self.job, error = %e,
                    "preparing a command job did not finish");
                metrics::counter!(m::WORKER_ERRORS, "kind" => "prepare").increment(1);
                let error = format!("preparing it did not finish: {e}");
                return (TaskEnd::Error { error }, None);
            }
        };
        let config = Arc::clone(&self.config);
        // Recorded so that a node killed outright has this group killed when it starts again,
        // instead of leaving it running unaccounted beside the job's next attempt.
        let pgid = process.pgid();
        config.ledger(
            self.job,
            pgid,
            LedgerChange::Spawned(process.start_window()),
        );
        let (end, report) = self.supervise(&mut process, kill_rx).await;
        config.ledger(self.job, pgid, LedgerChange::Reaped);
        let Some(report) = report else {
            return (end, None);
        };
        let end = match end {
            // Killed by the kernel at its memory limit, not by cadre: the job's own failure,
            // named as such (as Slurm's ConstrainRAMSpace reports an OOM).
            TaskEnd::Signalled { .. } | TaskEnd::Exited { .. } if report.oom_killed => {
                TaskEnd::OutOfMemory {
                    limit_bytes: self.memory_bytes,
                }
            }
            end => end,
        };
        (end, self.output_note(&report))
    }

    /// What became of the task's output, when not all of it was kept.
    fn output_note(&self, report: &ExitReport) -> Option<LogsNote> {
        let dropped_bytes = report.stdout_dropped_bytes + report.stderr_dropped_bytes;
        if dropped_bytes == 0 && report.logs_complete {
            return None;
        }
        let write_error = (!report.logs_complete).then(|| {
            let dir = &self.config.log_dir;
            match cadre_cpu::disk::space(dir) {
                Ok(space) => format!(
                    "some output could not be written to {} ({space}); see the node's log",
                    dir.display()
                ),
                Err(_) => format!(
                    "some output could not be written to {}; see the node's log",
                    dir.display()
                ),
            }
        });
        Some(LogsNote {
            dropped_bytes,
            write_error,
        })
    }

    /// Runs a spawned process to its end (or its kill); the report when it was waited for.
    async fn supervise(
        &self,
        process: &mut RunningProcess,
        mut kill_rx: oneshot::Receiver<KillReason>,
    ) -> (TaskEnd, Option<ExitReport>) {
        let config = Arc::clone(&self.config);
        if !self.report_start().await {
            return match process
                .terminate(grace(&config, KillReason::LeaseLost))
                .await
            {
                Ok(report) => (
                    TaskEnd::Killed {
                        reason: KillReason::LeaseLost,
                    },
                    Some(report),
                ),
                Err(error) => (
                    TaskEnd::Error {
                        error: error.to_string(),
                    },
                    None,
                ),
            };
        }
        let waited = {
            let wait = async {
                match self.timeout {
                    Some(t) => process.wait_timeout(t, config.term_grace).await,
                    None => process.wait().await,
                }
            };
            tokio::pin!(wait);
            tokio::select! {
                report = &mut wait => Waited::Done(report),
                reason = &mut kill_rx => Waited::Kill(reason.unwrap_or(KillReason::LeaseLost)),
            }
        };
        match waited {
            Waited::Done(Ok(report)) => (report_end(report), Some(report)),
            Waited::Done(Err(error)) => (
                TaskEnd::Error {
                    error: error.to_string(),
                },
                None,
            ),
            Waited::Kill(reason) => match process.terminate(grace(&config, reason)).await {
                Ok(report) if report.terminated => (TaskEnd::Killed { reason }, Some(report)),
                // It ended on its own just before the kill: report how.
                Ok(report) => (report_end(report), Some(report)),
                Err(error) => (
                    TaskEnd::Error {
                        error: error.to_string(),
                    },
                    None,
                ),
            },
        }
    }
}

/// How long a task stopped for `reason` gets between `SIGTERM` and `SIGKILL`: none when its
/// lease is lost (the worker fenced itself, or the scheduler revoked it), since the job may
/// already be another attempt's, and the scheduler places it again once the lease has run out,
/// which a grace would outlast; `term_grace` when a user cancels or the node stops.
fn grace(config: &WorkerConfig, reason: KillReason) -> std::time::Duration {
    match reason {
        KillReason::LeaseLost => std::time::Duration::ZERO,
        KillReason::Cancelled | KillReason::Shutdown => config.term_grace,
    }
}
