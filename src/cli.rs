//! The command-line client: each subcommand is one or two calls to the node's HTTP API
//! (`--api URL`, or `CADRE_API`). `-o json` prints the JSON the API returned. Exit codes: 0 ok,
//! 2 invalid input (a bad flag, or the API's 400), 1 any other error.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use cadre_actors::job::{CommandJob, JobKind, JobSpec, Resources};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Readable text.
    #[default]
    Text,
    /// The API's JSON.
    Json,
}

/// A client failure and its exit code.
#[derive(Debug)]
pub struct CliError {
    /// 2 for invalid input, 1 otherwise.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl CliError {
    fn invalid(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    fn other(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

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
    /// Retries after a lost attempt.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
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

/// The client: a base URL and an output format.
pub struct Client {
    base: String,
    output: Output,
    agent: ureq::Agent,
}

struct Reply {
    status: u16,
    body: Value,
}

impl Client {
    /// A client of the API at `base`.
    pub fn new(base: &str, output: Output) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            output,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, CliError> {
        let mut response = response.map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::other(format!("reading the API's answer: {e}")))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                CliError::other(format!(
                    "the API answered {status} with non-JSON ({e}): {text}"
                ))
            })?
        };
        if status >= 400 {
            if self.output == Output::Json {
                println!("{body}");
            }
            let field = body.get("field").and_then(Value::as_str).unwrap_or("-");
            let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let mut message = format!("{error} ({status}): {field}: {reason}");
            if let Some(errors) = body.get("errors").and_then(Value::as_array) {
                for e in errors.iter().skip(1) {
                    message.push_str(&format!(
                        "\n  {}: {}",
                        e.get("field").and_then(Value::as_str).unwrap_or("-"),
                        e.get("reason").and_then(Value::as_str).unwrap_or("")
                    ));
                }
            }
            return Err(CliError {
                code: if status == 400 { 2 } else { 1 },
                message,
            });
        }
        Ok(Reply { status, body })
    }

    fn get(&self, path: &str) -> Result<Reply, CliError> {
        self.finish(self.agent.get(self.url(path)).call())
    }

    fn post(&self, path: &str, body: &Value) -> Result<Reply, CliError> {
        self.finish(self.agent.post(self.url(path)).send_json(body))
    }

    fn print_json(&self, reply: &Reply) -> bool {
        if self.output == Output::Json {
            println!("{}", reply.body);
            true
        } else {
            false
        }
    }

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

    /// `cadre status ID`.
    pub fn status(&self, id: u64) -> Result<(), CliError> {
        let reply = self.get(&format!("/v1/jobs/{id}"))?;
        if !self.print_json(&reply) {
            let b = &reply.body;
            println!("job       {}", b["id"]);
            println!("name      {}", b["name"].as_str().unwrap_or(""));
            println!("state     {}", b["state"].as_str().unwrap_or(""));
            println!("attempt   {}", b["attempt"]);
            if let Some(w) = b.get("waiting") {
                match w.get("reason").and_then(Value::as_str) {
                    Some(reason) => println!("waiting   unplaceable: {reason}"),
                    None => println!("waiting   queued, {} ahead", w["position"]),
                }
            }
            if let Some(o) = b.get("outcome") {
                if let Some(code) = o.get("exit_code").filter(|c| !c.is_null()) {
                    println!("exit code {code}");
                }
                if let Some(signal) = o.get("signal").filter(|c| !c.is_null()) {
                    println!("signal    {signal}");
                }
                if let Some(error) = o.get("error").and_then(Value::as_str) {
                    println!("error     {error}");
                }
            }
            if let Some(loss) = b.get("last_loss").and_then(Value::as_str) {
                println!("last loss {loss}");
            }
        }
        Ok(())
    }

    /// `cadre list`.
    pub fn list(
        &self,
        state: Option<&str>,
        limit: usize,
        after: Option<u64>,
    ) -> Result<(), CliError> {
        let mut path = format!("/v1/jobs?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        let reply = self.get(&path)?;
        if !self.print_json(&reply) {
            println!("{:>8}  {:<10}  {:>7}  NAME", "ID", "STATE", "ATTEMPT");
            for j in reply.body["jobs"].as_array().map_or(&[][..], Vec::as_slice) {
                println!(
                    "{:>8}  {:<10}  {:>7}  {}",
                    j["id"],
                    j["state"].as_str().unwrap_or(""),
                    j["attempt"],
                    j["name"].as_str().unwrap_or("")
                );
            }
            if let Some(next) = reply.body.get("next").filter(|n| !n.is_null()) {
                println!("more: --after {next}");
            }
        }
        Ok(())
    }

    /// `cadre cancel ID`.
    pub fn cancel(&self, id: u64) -> Result<(), CliError> {
        let reply = self.post(&format!("/v1/jobs/{id}/cancel"), &Value::Null)?;
        if !self.print_json(&reply) {
            println!("{id} {}", reply.body["state"].as_str().unwrap_or(""));
        }
        Ok(())
    }

    /// `cadre logs [-f] ID`.
    pub fn logs(&self, id: u64, follow: bool, stderr: bool) -> Result<(), CliError> {
        let stream = if stderr { "stderr" } else { "stdout" };
        let url = self.url(&format!(
            "/v1/jobs/{id}/logs?stream={stream}&follow={follow}"
        ));
        let response = self.agent.get(url).call();
        let mut response = response.map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        if response.status().as_u16() >= 400 {
            return self.finish(Ok(response)).map(|_| ());
        }
        let mut reader = response.body_mut().as_reader();
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 8192];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| CliError::other(format!("reading logs: {e}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| CliError::other(format!("writing logs: {e}")))?;
            out.flush()
                .map_err(|e| CliError::other(format!("writing logs: {e}")))?;
        }
        Ok(())
    }

    /// `cadre watch [ID]`: state changes as they happen, one line each (JSON with `-o json`).
    pub fn watch(&self, job: Option<u64>) -> Result<(), CliError> {
        let path = match job {
            Some(id) => format!("/v1/events?job={id}"),
            None => "/v1/events".to_owned(),
        };
        let mut response = self.agent.get(self.url(&path)).call().map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        let reader = BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| CliError::other(format!("event stream: {e}")))?;
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if self.output == Output::Json {
                println!("{data}");
                continue;
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| CliError::other(format!("event stream: {e}: {data}")))?;
            if let Some(missed) = v.get("missed") {
                println!("(fell behind: {missed} events missed)");
            } else if let Some(fraction) = v["progress"]["fraction"].as_f64() {
                println!(
                    "job {:>8}  task {:<3} {}  {}",
                    v["job"],
                    v["progress"]["task"],
                    progress_bar(fraction, 30),
                    v["progress"]["message"].as_str().unwrap_or("")
                );
            } else {
                println!(
                    "job {:>8}  {:<10}  attempt {}",
                    v["job"],
                    v["state"].as_str().unwrap_or(""),
                    v["attempt"]
                );
            }
        }
        Ok(())
    }

    /// `cadre failures`.
    pub fn failures(&self) -> Result<(), CliError> {
        let reply = self.get("/v1/failures")?;
        if !self.print_json(&reply) {
            let list = reply.body["failures"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            println!(
                "{} failures recorded (total {})",
                list.len(),
                reply.body["total"]
            );
            for f in list {
                println!(
                    "#{} {} kind={} restarts={} {}",
                    f["seq"],
                    f["path"].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap_or(""),
                    f["restart_count"],
                    f["message"].as_str().unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// `cadre nodes`.
    pub fn nodes(&self) -> Result<(), CliError> {
        let reply = self.get("/v1/nodes")?;
        if !self.print_json(&reply) {
            let b = &reply.body;
            println!(
                "queued {}  running {}  jobs {}  draining {}",
                b["queued"], b["running"], b["jobs"], b["draining"]
            );
            for w in b["workers"].as_array().map_or(&[][..], Vec::as_slice) {
                println!(
                    "worker {:>4}  {}  cpu_millis={} memory_bytes={} gpus={} leases={}",
                    w["worker"],
                    w["name"].as_str().unwrap_or(""),
                    w["capacity"]["cpu_millis"],
                    w["capacity"]["memory_bytes"],
                    w["capacity"]["gpus"].as_array().map_or(0, Vec::len),
                    w["leases"]
                );
            }
        }
        Ok(())
    }
}

/// `[#########.....]  62%` for a fraction of 0.0 ..= 1.0, `width` marks wide.
pub fn progress_bar(fraction: f64, width: usize) -> String {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let done = (fraction * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(done),
        ".".repeat(width - done),
        fraction * 100.0
    )
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
    Ok(JobSpec {
        name,
        kind: JobKind::Command(CommandJob {
            program: program.clone(),
            args: rest.to_vec(),
            env,
            workdir: args.workdir.clone(),
        }),
        resources: Resources {
            cpu_millis: (args.cpus * 1000.0).round() as u32,
            memory_bytes: args.memory,
            gpus: args.gpus,
        },
        priority: args.priority,
        max_retries: args.retries,
        timeout_secs: args.timeout,
        // Only workload jobs report progress (use --file for those).
        progress_deadline_secs: None,
        gang: args.gang,
        labels: BTreeMap::new(),
    })
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
