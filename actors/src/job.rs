//! Jobs as data: the spec a user submits, its validation at the edge (every violated field with
//! its reason, so nothing invalid is ever stored), and the state machine every job follows.
//!
//! All of it is serde-serializable: these values cross the API as JSON and, once workers live
//! on other machines, the network as MessagePack.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::metrics as m;

/// A job's identity, unique within a cluster's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A program run through the launcher (never a shell).
    Command(CommandJob),
    /// A workload registered by an extension, run as a supervised in-process actor.
    Workload(WorkloadJob),
}

/// A command job: the program, its arguments, environment and working directory.
///
/// Its environment is not the node's: a job gets a small documented base (`PATH`, `HOME`,
/// `LANG`, `TMPDIR` and the `CADRE_*` variables, see the worker), then `env`; with
/// `inherit_env` it starts from the node's whole environment instead (Slurm's
/// `--export=ALL`), with the base and `env` set over it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandJob {
    /// The program: a path, or a name looked up in the worker's `PATH`.
    pub program: String,
    /// Its arguments (not including the program).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory: an absolute path to an existing directory. When absent, a
    /// scratch directory of its own under the node's data directory
    /// (`<data>/scratch/<job>.<task>`), removed with the job's logs when the job is pruned.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Start from the node's whole environment instead of the documented base.
    #[serde(default)]
    pub inherit_env: bool,
}

/// A workload job: the registered workload's name and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadJob {
    /// The name the extension registered the workload under.
    pub name: String,
    /// Parameters handed to the workload, as the extension defines them.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// What a job needs from a machine while it runs. Reserved when it is leased, released on every
/// way it ends, and enforced on command jobs through their cgroup where the node has cgroups.
///
/// A job that says nothing gets one CPU ([`DEFAULT_CPU_MILLIS`]), as `cadre submit` always
/// gave: without a default every job would reserve nothing and all would start at once. A job
/// that only waits (a sleep, a poll) may ask for `cpu_millis: 0` explicitly; it then reserves
/// no CPU and runs at the lowest CPU weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores (1000 = one core); one core when absent.
    #[serde(default = "default_cpu_millis")]
    pub cpu_millis: u32,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Whole GPUs.
    #[serde(default)]
    pub gpus: u32,
}

/// The CPU a job reserves when its spec does not say: one core.
pub const DEFAULT_CPU_MILLIS: u32 = 1000;

fn default_cpu_millis() -> u32 {
    DEFAULT_CPU_MILLIS
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_millis: DEFAULT_CPU_MILLIS,
            memory_bytes: 0,
            gpus: 0,
        }
    }
}

/// Lost attempts retried by default: as Ray retries a task after a system failure.
pub const DEFAULT_MAX_REQUEUES: u32 = 3;
/// The first pause before a retry after a job's own failure, by default; it doubles with every
/// further retry, up to [`MAX_RETRY_BACKOFF_SECS`].
pub const DEFAULT_RETRY_BACKOFF_SECS: u64 = 10;
/// The longest pause before a retry after a job's own failure (Kubernetes caps its pod backoff
/// at 6 minutes; Nomad's restart delay is 15 s).
pub const MAX_RETRY_BACKOFF_SECS: u64 = 600;

/// A job as submitted.
///
/// **Retries.** Two budgets, kept apart so that the node's troubles never spend the budget
/// meant for the job's own:
/// - a *lost* attempt (its node restarted, its worker died, its lease ran out, it stalled) is
///   run again by default, up to `max_requeues` times, unless `requeue` is false (a job that
///   must never run twice); as Slurm requeues batch jobs on node failure and Ray retries tasks
///   after system failures.
/// - a *failed* attempt (non-zero exit, its timeout, a workload error, it could not start) is
///   run again only if `max_retries` says so (default 0), after a backoff of
///   `retry_backoff_secs` doubling per retry up to 10 minutes, as Nomad's restart policy and
///   Kubernetes' `backoffLimit` do. A cancelled job is never retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A human-readable name (not unique).
    pub name: String,
    /// What it runs.
    pub kind: JobKind,
    /// What it needs.
    #[serde(default)]
    pub resources: Resources,
    /// -1000 (last) ..= 1000 (first); 0 by default.
    #[serde(default)]
    pub priority: i16,
    /// How many times the job is run again after failing on its own (non-zero exit, timeout,
    /// workload error, start failure); 0 by default.
    #[serde(default)]
    pub max_retries: u32,
    /// Wall-clock limit of one attempt in seconds; none when absent.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Longest a running task may go without reporting progress before it is suspected, then
    /// stopped and the attempt lost (requeued per `requeue`); none when absent.
    #[serde(default)]
    pub progress_deadline_secs: Option<u64>,
    /// Tasks that start together or not at all (1 for an ordinary job).
    #[serde(default = "one")]
    pub gang: u32,
    /// Free-form labels for selection and display.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether a lost attempt is run again (true by default; false for a job that must never
    /// run twice).
    #[serde(default = "yes")]
    pub requeue: bool,
    /// How many lost attempts are run again before the job fails.
    #[serde(default = "default_max_requeues")]
    pub max_requeues: u32,
    /// The first pause before a retry after a failure, in seconds; doubling per retry.
    #[serde(default = "default_retry_backoff_secs")]
    pub retry_backoff_secs: u64,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn default_max_requeues() -> u32 {
    DEFAULT_MAX_REQUEUES
}

fn default_retry_backoff_secs() -> u64 {
    DEFAULT_RETRY_BACKOFF_SECS
}

impl JobSpec {
    /// A spec running `kind`, named `name`, with every other field at its default.
    pub fn new(name: impl Into<String>, kind: JobKind) -> JobSpec {
        JobSpec {
            name: name.into(),
            kind,
            resources: Resources::default(),
            priority: 0,
            max_retries: 0,
            timeout_secs: None,
            progress_deadline_secs: None,
            gang: 1,
            labels: BTreeMap::new(),
            requeue: true,
            max_requeues: DEFAULT_MAX_REQUEUES,
            retry_backoff_secs: DEFAULT_RETRY_BACKOFF_SECS,
        }
    }

    /// The pause before the retry that follows failure number `failures` (1 for the first):
    /// `retry_backoff_secs` doubled per earlier failure, at most [`MAX_RETRY_BACKOFF_SECS`].
    pub fn retry_backoff(&self, failures: u32) -> std::time::Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let secs = self
            .retry_backoff_secs
            .saturating_mul(1u64 << doublings)
            .min(MAX_RETRY_BACKOFF_SECS);
        std::time::Duration::from_secs(secs)
    }

    /// Migrates a spec journaled before lost attempts and failures had budgets of their own:
    /// its `max_retries` was the number of lost attempts run again, and nothing else retried.
    pub fn migrate_from_v0(&mut self) {
        self.requeue = true;
        self.max_requeues = self.max_retries;
        self.max_retries = 0;
    }
}

/// One violated field: its path in the spec (`command.args[3]`, `labels.team`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field's path in the spec.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Every field a spec violates, refused together so a user fixes all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: {}", summary(.0))]
pub struct InvalidSpec(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The limits validation enforces. The defaults are generous for real jobs and small enough
/// that one spec cannot exhaust the journal, the scheduler or the API.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest name, in characters.
    pub name_chars: usize,
    /// Most arguments.
    pub args: usize,
    /// Longest argument (and program), in bytes.
    pub arg_bytes: usize,
    /// Most environment variables.
    pub env_vars: usize,
    /// Longest environment value, in bytes.
    pub env_value_bytes: usize,
    /// Most CPU a job may ask, in millicores.
    pub cpu_millis: u32,
    /// Most memory a job may ask, in bytes.
    pub memory_bytes: u64,
    /// Most GPUs a job may ask.
    pub gpus: u32,
    /// Most retries.
    pub max_retries: u32,
    /// Longest timeout, in seconds.
    pub timeout_secs: u64,
    /// Largest gang.
    pub gang: u32,
    /// Most labels.
    pub labels: usize,
    /// Longest workload parameters, as JSON bytes.
    pub params_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            name_chars: 128,
            args: 4096,
            arg_bytes: 128 * 1024,
            env_vars: 1024,
            env_value_bytes: 32 * 1024,
            cpu_millis: 1_024_000,
            memory_bytes: 1 << 50,
            gpus: 64,
            max_retries: 100,
            timeout_secs: 30 * 24 * 3600,
            gang: 1024,
            labels: 64,
            params_bytes: 1 << 20,
        }
    }
}

/// What validation asks of the node it runs on: whether a program can be found and whether a
/// workload is registered. Injected, so validation is pure and testable.
pub trait Registry {
    /// Whether `program` (a path, or a name to look up in `PATH`) exists and is executable.
    fn program_found(&self, program: &str) -> bool;
    /// Whether an extension registered a workload named `name`.
    fn workload_registered(&self, name: &str) -> bool;
    /// Whether `path` (absolute) is a directory the node can enter.
    fn dir_exists(&self, path: &str) -> bool;
}

/// Priorities a job may have.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i16> = -1000..=1000;

struct Check<'a> {
    errors: Vec<FieldError>,
    limits: &'a Limits,
}

impl Check<'_> {
    fn fail(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn text(&mut self, field: &str, value: &str, max_bytes: usize) {
        if value.contains('\0') {
            self.fail(field, "holds a NUL byte");
        }
        if value.len() > max_bytes {
            self.fail(
                field,
                format!("is {} bytes; at most {max_bytes}", value.len()),
            );
        }
    }
}

fn name_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn env_key_ok(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn label_key_ok(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
        })
}

impl JobSpec {
    /// Checks every field against `limits` and `registry`; `Err` lists every violation.
    pub fn validate(&self, limits: &Limits, registry: &dyn Registry) -> Result<(), InvalidSpec> {
        let mut c = Check {
            errors: Vec::new(),
            limits,
        };
        let n = self.name.chars().count();
        if n == 0 || n > c.limits.name_chars {
            let max = c.limits.name_chars;
            c.fail("name", format!("must be 1 to {max} characters, is {n}"));
        }
        if !self.name.chars().all(name_ok) {
            c.fail(
                "name",
                "may hold only ASCII letters, digits, '.', '_' and '-'",
            );
        }
        match &self.kind {
            JobKind::Command(cmd) => self.check_command(&mut c, cmd, registry),
            JobKind::Workload(w) => {
                if w.name.is_empty() {
                    c.fail("kind.workload.name", "is empty");
                } else if !registry.workload_registered(&w.name) {
                    c.fail(
                        "kind.workload.name",
                        format!("no workload {:?} is registered", w.name),
                    );
                }
                let bytes = w.params.to_string().len();
                if bytes > c.limits.params_bytes {
                    let max = c.limits.params_bytes;
                    c.fail(
                        "kind.workload.params",
                        format!("is {bytes} bytes of JSON; at most {max}"),
                    );
                }
            }
        }
        let r = &self.resources;
        if r.cpu_millis > c.limits.cpu_millis {
            let max = c.limits.cpu_millis;
            c.fail(
                "resources.cpu_millis",
                format!("{} exceeds {max}", r.cpu_millis),
            );
        }
        if r.memory_bytes > c.limits.memory_bytes {
            let max = c.limits.memory_bytes;
            c.fail(
                "resources.memory_bytes",
                format!("{} exceeds {max}", r.memory_bytes),
            );
        }
        if r.gpus > c.limits.gpus {
            let max = c.limits.gpus;
            c.fail("resources.gpus", format!("{} exceeds {max}", r.gpus));
        }
        if !PRIORITY_RANGE.contains(&self.priority) {
            c.fail(
                "priority",
                format!("{} is outside -1000..=1000", self.priority),
            );
        }
        if self.max_retries > c.limits.max_retries {
            let max = c.limits.max_retries;
            c.fail("max_retries", format!("{} exceeds {max}", self.max_retries));
        }
        if self.max_requeues > c.limits.max_retries {
            let max = c.limits.max_retries;
            c.fail(
                "max_requeues",
                format!("{} exceeds {max}", self.max_requeues),
            );
        }
        if self.retry_backoff_secs > MAX_RETRY_BACKOFF_SECS {
            c.fail(
                "retry_backoff_secs",
                format!(
                    "{} exceeds {MAX_RETRY_BACKOFF_SECS}",
                    self.retry_backoff_secs
                ),
            );
        }
        if let Some(t) = self.progress_deadline_secs {
            if matches!(self.kind, JobKind::Command(_)) {
                // Only workloads report progress: a deadline would stop every command job.
                c.fail(
                    "progress_deadline_secs",
                    "only workload jobs report progress; a command job cannot have a progress deadline",
                );
            }
            if t == 0 || t > c.limits.timeout_secs {
                let max = c.limits.timeout_secs;
                c.fail(
                    "progress_deadline_secs",
                    format!("{t} is outside 1..={max}"),
                );
            }
        }
        if let Some(t) = self.timeout_secs {
            if t == 0 || t > c.limits.timeout_secs {
                let max = c.limits.timeout_secs;
                c.fail("timeout_secs", format!("{t} is outside 1..={max}"));
            }
        }
        if self.gang == 0 || self.gang > c.limits.gang {
            let max = c.limits.gang;
            c.fail("gang", format!("{} is outside 1..={max}", self.gang));
        }
        if self.labels.len() > c.limits.labels {
            let max = c.limits.labels;
            c.fail(
                "labels",
                format!("{} labels; at most {max}", self.labels.len()),
            );
        }
        for (k, v) in &self.labels {
            if !label_key_ok(k) {
                c.fail(
                    format!("labels.{k}"),
                    "key must be 1 to 63 of a-z, 0-9, '.', '_', '-', '/'",
                );
            }
            c.text(&format!("labels.{k}"), v, 256);
        }
        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(c.errors))
        }
    }

    fn check_command(&self, c: &mut Check<'_>, cmd: &CommandJob, registry: &dyn Registry) {
        let max_arg = c.limits.arg_bytes;
        if cmd.program.is_empty() {
            c.fail("kind.command.program", "is empty");
        } else {
            c.text("kind.command.program", &cmd.program, max_arg);
            if !cmd.program.contains('\0') && !registry.program_found(&cmd.program) {
                c.fail(
                    "kind.command.program",
                    format!(
                        "{:?} is not an executable file here or in PATH",
                        cmd.program
                    ),
                );
            }
        }
        if cmd.args.len() > c.limits.args {
            let max = c.limits.args;
            c.fail(
                "kind.command.args",
                format!("{} arguments; at most {max}", cmd.args.len()),
            );
        }
        for (i, a) in cmd.args.iter().enumerate() {
            c.text(&format!("kind.command.args[{i}]"), a, max_arg);
        }
        if cmd.env.len() > c.limits.env_vars {
            let max = c.limits.env_vars;
            c.fail(
                "kind.command.env",
                format!("{} variables; at most {max}", cmd.env.len()),
            );
        }
        let max_value = c.limits.env_value_bytes;
        for (k, v) in &cmd.env {
            if !env_key_ok(k) {
                c.fail(
                    format!("kind.command.env.{k}"),
                    "name must be a letter or '_' then letters, digits or '_'",
                );
            }
            c.text(&format!("kind.command.env.{k}"), v, max_value);
        }
        if let Some(dir) = &cmd.workdir {
            if !dir.starts_with('/') {
                c.fail(
                    "kind.command.workdir",
                    format!("{dir:?} is not an absolute path"),
                );
            } else if !dir.contains('\0') && !registry.dir_exists(dir) {
                c.fail(
                    "kind.command.workdir",
                    format!("{dir:?} is not a directory on this node"),
                );
            }
            c.text("kind.command.workdir", dir, 4096);
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted and durable, waiting for resources.
    Queued,
    /// Resources reserved on a worker under a lease; not started yet.
    Leased,
    /// Started on its worker.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with failure (exit code, error, or out of retries).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Killed at its timeout.
    TimedOut,
    /// Its lease was lost (worker died, lease expired); queued again or failed next.
    Lost,
}

impl JobState {
    /// The state's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Lost => "lost",
        }
    }

    /// Whether the job has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::TimedOut
        )
    }

    /// Whether the transition table allows going from `self` to `to`.
    pub fn can_go_to(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Leased)
                | (Queued, Cancelled)
                | (Leased, Running)
                | (Leased, Lost)
                | (Leased, Cancelled)
                | (Leased, Failed)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, TimedOut)
                | (Running, Lost)
                | (Lost, Queued)
                | (Lost, Failed)
                // A failed attempt with retries left is queued again (after its backoff).
                | (Leased, Queued)
                | (Running, Queued)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the table forbids. It is refused, logged and counted, never applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job}: illegal transition {from} -> {to}")]
pub struct IllegalTransition {
    /// The job.
    pub job: JobId,
    /// Its state.
    pub from: JobState,
    /// The state asked for.
    pub to: JobState,
}

/// A job's state with its attempt count, changed only through [`JobStatus::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job: JobId,
    /// Its state.
    pub state: JobState,
    /// The attempt running or next to run (1 for the first).
    pub attempt: u32,
}

impl JobStatus {
    /// A newly accepted job.
    pub fn queued(job: JobId) -> JobStatus {
        JobStatus {
            job,
            state: JobState::Queued,
            attempt: 1,
        }
    }

    /// Moves to `to` if the table allows it; otherwise one error event, one increment of
    /// `cadre_job_illegal_transitions_total{from,to}`, and the status is unchanged.
    pub fn transition(&mut self, to: JobState) -> Result<(), IllegalTransition> {
        if !self.state.can_go_to(to) {
            let err = IllegalTransition {
                job: self.job,
                from: self.state,
                to,
            };
            tracing::error!(job = %self.job, from = self.state.as_str(), to = to.as_str(),
                attempt = self.attempt, "illegal job state transition refused");
            metrics::counter!(m::ILLEGAL_TRANSITIONS, "from" => self.state.as_str(), "to" => to.as_str())
                .increment(1);
            return Err(err);
        }
        // Back to the queue is a new attempt, whether the last one was lost or failed.
        if to == JobState::Queued {
            self.attempt += 1;
        }
        self.state = to;
        Ok(())
    }

    /// What a lost attempt becomes: queued again when the job may be requeued and fewer than
    /// `max_requeues` attempts were lost before this one (`lost_before`), failed otherwise.
    pub fn after_loss(
        &mut self,
        requeue: bool,
        max_requeues: u32,
        lost_before: u32,
    ) -> Result<JobState, IllegalTransition> {
        let next = if requeue && lost_before < max_requeues {
            JobState::Queued
        } else {
            JobState::Failed
        };
        self.transition(next)?;
        Ok(next)
    }
}
