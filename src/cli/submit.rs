//! `cadre submit`: its flags, and the job spec they make (or the spec file given instead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cadre_actors::job::{CommandJob, JobKind, JobSpec, Resources};
use clap::Args;
use serde_json::Value;

use super::{CliError, Client};

/// The flags of `cadre submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job's name (default: the program's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// CPU cores (fractions allowed: 0.5 is 500 millicores).
    #[arg(long, default_value = "1")]
    pub cpus: f64,
    /// Memory in bytes.
    #[arg(long, default_value_t = 0)]
    pub memory: u64,
    /// Whole GPUs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Priority, -1000 ..= 1000.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i16,
    /// Retries after the job fails on its own (non-zero exit, timeout), with backoff.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// The first pause before such a retry, in seconds (doubling per retry, at most 600).
    #[arg(long, default_value_t = cadre_actors::job::DEFAULT_RETRY_BACKOFF_SECS)]
    pub retry_backoff: u64,
    /// Times a lost attempt (node restart, worker death, lease lost) is run again.
    #[arg(long, default_value_t = cadre_actors::job::DEFAULT_MAX_REQUEUES)]
    pub requeues: u32,
    /// Never run the job twice: a lost attempt fails it instead of running it again.
    #[arg(long)]
    pub no_requeue: bool,
    /// Start from the node's whole environment instead of the documented base.
    #[arg(long)]
    pub inherit_env: bool,
    /// Wall-clock limit of one attempt, in seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Tasks that start together (a gang).
    #[arg(long, default_value_t = 1)]
    pub gang: u32,
    /// Environment variable for the job, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (absolute).
    #[arg(long)]
    pub workdir: Option<String>,
    /// A job spec (or `jobs = [...]`) in TOML or JSON instead of a command line.
    #[arg(long, conflicts_with = "command")]
    pub file: Option<PathBuf>,
    /// The program and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl Client {
    /// `cadre submit`.
    pub fn submit(&self, args: SubmitArgs) -> Result<(), CliError> {
        let body = match &args.file {
            Some(path) => read_spec_file(path)?,
            None => serde_json::to_value(spec_from_args(&args)?)
                .map_err(|e| CliError::other(format!("encoding the spec: {e}")))?,
        };
        let reply = self.post("/v1/jobs", &body)?;
        if !self.print_json(&reply) {
            match (
                reply.body.get("id"),
                reply.body.get("ids").and_then(Value::as_array),
            ) {
                (Some(id), _) => println!("{id}"),
                (None, Some(ids)) => {
                    for id in ids {
                        println!("{id}");
                    }
                }
                _ => {
                    return Err(CliError::other(format!(
                        "the API answered {} without an id: {}",
                        reply.status, reply.body
                    )))
                }
            }
        }
        Ok(())
    }
}

fn spec_from_args(args: &SubmitArgs) -> Result<JobSpec, CliError> {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(CliError::invalid(
            "submit: give a program after `--`, or --file",
        ));
    };
    if !(args.cpus.is_finite() && args.cpus >= 0.0 && args.cpus <= 1_000_000.0) {
        return Err(CliError::invalid(format!(
            "--cpus: {} is not a number of cores",
            args.cpus
        )));
    }
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CliError::invalid(format!(
                "--env: {pair:?} is not KEY=VALUE"
            )));
        };
        env.insert(k.to_owned(), v.to_owned());
    }
    let name = args.name.clone().unwrap_or_else(|| {
        Path::new(program)
            .file_name()
            .map_or_else(|| "job".to_owned(), |n| n.to_string_lossy().into_owned())
    });
    let mut spec = JobSpec::new(
        name,
        JobKind::Command(CommandJob {
            program: program.clone(),
            args: rest.to_vec(),
            env,
            workdir: args.workdir.clone(),
            inherit_env: args.inherit_env,
        }),
    );
    spec.resources = Resources {
        cpu_millis: (args.cpus * 1000.0).round() as u32,
        memory_bytes: args.memory,
        gpus: args.gpus,
    };
    spec.priority = args.priority;
    spec.max_retries = args.retries;
    spec.retry_backoff_secs = args.retry_backoff;
    spec.max_requeues = args.requeues;
    spec.requeue = !args.no_requeue;
    spec.timeout_secs = args.timeout;
    // Only workload jobs report progress (use --file for those).
    spec.gang = args.gang;
    Ok(spec)
}

fn read_spec_file(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::invalid(format!("--file: cannot read {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .map_err(|e| CliError::invalid(format!("--file: {}: {e}", path.display())));
    }
    let value: toml::Value = toml::from_str(&text)
        .map_err(|e| CliError::invalid(format!("--file: {}: {e}", path.display())))?;
    serde_json::to_value(value)
        .map_err(|e| CliError::invalid(format!("--file: {}: {e}", path.display())))
}
