//! The command-line client: each subcommand is one or two calls to the node's HTTP API
//! (`--api URL`, or `CADRE_API`). `-o json` prints the JSON the API returned. Exit codes: 0 ok,
//! 2 invalid input (a bad flag, or the API's 400), 1 any other error.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use cadre_actors::job::{CommandJob, JobKind, JobSpec, JobState, Resources};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::Value;
use terminal_size::{terminal_size_of, Height, Width};

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
            println!("resources {}", resources_text(&b["spec"]["resources"]));
            let (requeues, failures) = (
                b["requeues"].as_u64().unwrap_or(0),
                b["failures"].as_u64().unwrap_or(0),
            );
            if requeues > 0 || failures > 0 {
                println!("retried   {requeues} lost, {failures} failed");
            }
            if let Some(w) = b.get("waiting") {
                match (
                    w.get("kind").and_then(Value::as_str),
                    w.get("reason").and_then(Value::as_str),
                ) {
                    (Some("retry"), _) => println!(
                        "waiting   retry after failure {}, not before {} ms since the epoch",
                        w["failures"], w["not_before_ms"]
                    ),
                    (_, Some(reason)) => println!("waiting   unplaceable: {reason}"),
                    _ => println!("waiting   queued, {} ahead", w["position"]),
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
                if let Some(note) = logs_note(o) {
                    println!("output    {note}");
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
            println!("{}", list_header());
            for j in reply.body["jobs"].as_array().map_or(&[][..], Vec::as_slice) {
                println!("{}", list_row(j));
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
        // Say so when the output was not kept whole (over its cap, or a disk that refused it).
        if let Ok(reply) = self.get(&format!("/v1/jobs/{id}")) {
            if let Some(note) = logs_note(&reply.body["outcome"]) {
                eprintln!("cadre: {note}");
            }
        }
        Ok(())
    }

    /// `cadre watch [ID]`: state changes and progress as they happen.
    ///
    /// On a terminal (and without `-o json`) it keeps a live view: a row per job on a worker
    /// with its progress bar, redrawn in place, and a line of its own for each job that ends
    /// (or is lost, or queued again for a retry). Anywhere else (a pipe, a file) it prints one
    /// line per event, or the API's JSON per event with `-o json`. Without an id it starts
    /// from the jobs on workers and follows every job until interrupted; with an id it starts
    /// from that job's state and returns once the job has ended (at once if it already has),
    /// so it can wait for a job in a script.
    pub fn watch(&self, job: Option<u64>) -> Result<(), CliError> {
        let path = match job {
            Some(id) => format!("/v1/events?job={id}"),
            None => "/v1/events".to_owned(),
        };
        // Subscribed before the current state is read, so a change in between is not missed.
        let mut response = self.agent.get(self.url(&path)).call().map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        if response.status().as_u16() >= 400 {
            return self.finish(Ok(response)).map(|_| ());
        }
        let live = self.output == Output::Text && std::io::stdout().is_terminal();
        let mut out = std::io::stdout().lock();
        let mut screen = Screen::new(live);
        for event in self.watch_start(job)? {
            screen.event(&mut out, &event, self.output)?;
            if job.is_some_and(|id| ends(&event, id)) {
                return screen.flush(&mut out);
            }
        }
        screen.flush(&mut out)?;
        let mut reader = BufReader::new(response.body_mut().as_reader());
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| CliError::other(format!("event stream: {e}")))?;
            if n == 0 {
                break;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                let event: Value = serde_json::from_str(data)
                    .map_err(|e| CliError::other(format!("event stream: {e}: {data}")))?;
                screen.event(&mut out, &event, self.output)?;
                if job.is_some_and(|id| ends(&event, id)) {
                    return screen.flush(&mut out);
                }
                // The stream fell behind and dropped events: the watched job's end may be
                // among them, so its state is read again.
                if let (Some(id), Some(_)) = (job, event.get("missed")) {
                    for event in self.watch_start(Some(id))? {
                        screen.event(&mut out, &event, self.output)?;
                        if ends(&event, id) {
                            return screen.flush(&mut out);
                        }
                    }
                }
            }
            // Redraw once caught up with the stream (checked after every line, the blank one
            // that ends an event included), or every 100 ms while it floods.
            if reader.buffer().is_empty() || screen.due() {
                screen.flush(&mut out)?;
            }
        }
        screen.flush(&mut out)?;
        match job {
            Some(id) => Err(CliError::other(format!(
                "the node at {} closed the event stream before job {id} ended",
                self.base
            ))),
            None => Ok(()),
        }
    }

    /// Where `cadre watch` starts: the job's current state, or the jobs on workers (leased and
    /// running), as events without a time (`at_ms`).
    fn watch_start(&self, job: Option<u64>) -> Result<Vec<Value>, CliError> {
        let as_event = |j: &Value| serde_json::json!({"job": j["id"], "state": j["state"], "attempt": j["attempt"]});
        if let Some(id) = job {
            let reply = self.get(&format!("/v1/jobs/{id}"))?;
            return Ok(vec![as_event(&reply.body)]);
        }
        let mut events = Vec::new();
        for state in ["running", "leased"] {
            let reply = self.get(&format!("/v1/jobs?state={state}&limit={WATCH_ROWS}"))?;
            let Some(jobs) = reply.body["jobs"].as_array() else {
                return Err(CliError::other(format!(
                    "the API listed {state} jobs without a jobs array: {}",
                    reply.body
                )));
            };
            events.extend(jobs.iter().map(as_event));
        }
        Ok(events)
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

/// What a job reserves, for `cadre status`.
pub fn resources_text(r: &Value) -> String {
    let cpu = r["cpu_millis"].as_u64().unwrap_or(0);
    let cpu = if cpu == 0 {
        "no CPU reserved (cpu_millis 0: the lowest CPU weight)".to_owned()
    } else {
        format!("{} CPU ({cpu} millicores)", cpu as f64 / 1000.0)
    };
    let memory = match r["memory_bytes"].as_u64().unwrap_or(0) {
        0 => "no memory limit".to_owned(),
        bytes => format!("{bytes} bytes of memory"),
    };
    format!(
        "{cpu}, {memory}, {} GPU(s)",
        r["gpus"].as_u64().unwrap_or(0)
    )
}

/// What became of a job's output when not all of it was kept, from its outcome.
pub fn logs_note(outcome: &Value) -> Option<String> {
    let logs = outcome.get("logs").filter(|l| !l.is_null())?;
    let mut parts = Vec::new();
    if let Some(dropped) = logs["dropped_bytes"].as_u64().filter(|&d| d > 0) {
        parts.push(format!(
            "{dropped} bytes of output dropped past the per-stream cap (its head and tail are kept)"
        ));
    }
    if let Some(error) = logs["write_error"].as_str() {
        parts.push(format!("output incomplete: {error}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The header of `cadre list`.
pub fn list_header() -> String {
    format!("{:>8}  {:<10}  {:>7}  NAME", "ID", "STATE", "ATTEMPT")
}

/// One row of `cadre list`, aligned with [`list_header`] (numbers as numbers: a JSON value's
/// own formatting ignores widths).
pub fn list_row(j: &Value) -> String {
    format!(
        "{:>8}  {:<10}  {:>7}  {}",
        j["id"].as_u64().unwrap_or(0),
        j["state"].as_str().unwrap_or(""),
        j["attempt"].as_u64().unwrap_or(0),
        j["name"].as_str().unwrap_or("")
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

/// The most jobs `cadre watch` draws rows for; the rest are counted on one line.
const WATCH_ROWS: usize = 20;

/// Whether `event` says job `id` ended.
fn ends(event: &Value, id: u64) -> bool {
    event["job"].as_u64() == Some(id)
        && event.get("progress").is_none()
        && matches!(JobState::deserialize(&event["state"]), Ok(state) if state.is_terminal())
}

/// One event as `cadre watch` prints it off a terminal.
pub fn event_line(event: &Value) -> String {
    if let Some(missed) = event.get("missed") {
        return format!("(fell behind: {missed} events missed)");
    }
    // As plain strings (a JSON value's Display ignores widths); a field that is not the text
    // this expects is shown as the JSON that came.
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), printable);
    let job = event["job"].to_string();
    match event["progress"]["fraction"].as_f64() {
        Some(fraction) => {
            let message = &event["progress"]["message"];
            format!(
                "job {job:>8}  task {:<3} {}  {}",
                event["progress"]["task"].to_string(),
                progress_bar(fraction, 30),
                if message.is_null() {
                    String::new()
                } else {
                    text(message)
                }
            )
        }
        None => format!(
            "job {job:>8}  {:<10}  attempt {}",
            text(&event["state"]),
            event["attempt"]
        ),
    }
}

/// The live view of `cadre watch` on a terminal: a row per job on a worker (leased, running or
/// lost) with its progress; a job that ends leaves the view as a line of its own.
#[derive(Debug, Default)]
pub struct WatchView {
    jobs: BTreeMap<u64, WatchRow>,
}

#[derive(Debug)]
struct WatchRow {
    state: JobState,
    attempt: u64,
    /// Each task's latest progress: fraction and note.
    tasks: BTreeMap<u64, (f64, String)>,
}

impl WatchView {
    /// An empty view.
    pub fn new() -> WatchView {
        WatchView::default()
    }

    /// Applies one event of the API's stream. Returns the line to keep above the view: a job
    /// that ended, was lost or was queued again for a retry, or events the stream skipped.
    /// An event without a job id is an error: the stream is not what this client expects.
    pub fn apply(&mut self, event: &Value) -> Result<Option<String>, String> {
        if event.get("missed").is_some() {
            return Ok(Some(event_line(event)));
        }
        let field = |value: &Value, name: &str| {
            value
                .get(name)
                .cloned()
                .ok_or_else(|| format!("an event without {name}: {event}"))
        };
        let job = field(event, "job")?
            .as_u64()
            .ok_or_else(|| format!("an event whose job is not an id: {event}"))?;
        let state = JobState::deserialize(&field(event, "state")?)
            .map_err(|e| format!("an event whose state is not a job state ({e}): {event}"))?;
        let attempt = field(event, "attempt")?
            .as_u64()
            .ok_or_else(|| format!("an event whose attempt is not a number: {event}"))?;
        if let Some(progress) = event.get("progress") {
            let task = field(progress, "task")?
                .as_u64()
                .ok_or_else(|| format!("progress whose task is not an index: {event}"))?;
            let fraction = field(progress, "fraction")?
                .as_f64()
                .ok_or_else(|| format!("progress whose fraction is not a number: {event}"))?;
            // The note is optional; whatever it holds is shown as text, never as terminal
            // control sequences.
            let note = progress
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(String::new, printable);
            let row = self.row(job, state, attempt);
            row.tasks.insert(task, (fraction, note));
            return Ok(None);
        }
        if state.is_terminal() {
            self.jobs.remove(&job);
            return Ok(Some(event_line(event)));
        }
        match state {
            JobState::Queued => {
                self.jobs.remove(&job);
                // A first queueing is noise when thousands are submitted; a retry is news.
                Ok((attempt > 1).then(|| event_line(event)))
            }
            JobState::Lost => {
                self.row(job, state, attempt);
                Ok(Some(event_line(event)))
            }
            _ => {
                self.row(job, state, attempt);
                Ok(None)
            }
        }
    }

    fn row(&mut self, job: u64, state: JobState, attempt: u64) -> &mut WatchRow {
        let row = self.jobs.entry(job).or_insert_with(|| WatchRow {
            state,
            attempt,
            tasks: BTreeMap::new(),
        });
        if row.attempt != attempt {
            // A new attempt starts from nothing.
            row.tasks.clear();
            row.attempt = attempt;
        }
        row.state = state;
        row
    }

    /// The rows to draw, each at most `width` characters: up to `max_rows` jobs in id order,
    /// then one line counting the rest. A job's bar is its tasks' mean progress.
    pub fn rows(&self, max_rows: usize, width: usize) -> Vec<String> {
        let mut rows: Vec<String> = self
            .jobs
            .iter()
            .take(max_rows)
            .map(|(job, row)| {
                let mut text = format!("job {job:>8}  {:<10}", row.state.as_str());
                if !row.tasks.is_empty() {
                    let n = row.tasks.len();
                    let mean = row.tasks.values().map(|(f, _)| f).sum::<f64>() / n as f64;
                    text.push_str(&format!("  {}", progress_bar(mean, 20)));
                    if n > 1 {
                        text.push_str(&format!("  {n} tasks"));
                    } else if let Some((_, note)) = row.tasks.values().next() {
                        if !note.is_empty() {
                            text.push_str(&format!("  {note}"));
                        }
                    }
                }
                truncate(&text, width)
            })
            .collect();
        if self.jobs.len() > max_rows {
            rows.push(truncate(
                &match self.jobs.len() - max_rows {
                    1 => "... and 1 more job on workers".to_owned(),
                    n => format!("... and {n} more jobs on workers"),
                },
                width,
            ));
        }
        rows
    }
}

/// `text` with every control character (escape sequences, newlines, tabs) as a space, so what a
/// workload reports cannot move the cursor or restyle the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to at most `width` characters.
fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// The bytes that redraw the live view: up over the `previous` rows drawn last time, the
/// `kept` lines (which scroll away above the view), the new `rows`, and clear what is left of
/// the old view below them.
pub fn redraw(previous: usize, kept: &[String], rows: &[String]) -> String {
    let mut s = String::new();
    if previous > 0 {
        s.push_str(&format!("\x1b[{previous}A\r"));
    }
    for line in kept.iter().chain(rows) {
        s.push_str("\x1b[2K");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("\x1b[J");
    s
}

/// Where `cadre watch` writes: lines as events come, or the live view on a terminal.
struct Screen {
    live: bool,
    view: WatchView,
    kept: Vec<String>,
    drawn: usize,
    dirty: bool,
    last_draw: tokio::time::Instant,
}

impl Screen {
    fn new(live: bool) -> Screen {
        Screen {
            live,
            view: WatchView::new(),
            kept: Vec::new(),
            drawn: 0,
            dirty: false,
            last_draw: tokio::time::Instant::now(),
        }
    }

    /// How wide a row may be and how many job rows fit, read from the terminal at each frame
    /// (it may be resized). A row must not wrap and the view must fit the screen, or redrawing
    /// in place goes wrong. Where the size cannot be read: `COLUMNS` if the shell exports it,
    /// else 80 columns, and 20 rows.
    fn size() -> (usize, usize) {
        if let Some((Width(columns), Height(lines))) = terminal_size_of(std::io::stdout()) {
            // One column spare; two lines spare (the count line and the cursor's own).
            let width = usize::from(columns).max(20) - 1;
            let rows = usize::from(lines).saturating_sub(2).clamp(1, WATCH_ROWS);
            return (width, rows);
        }
        let width = match std::env::var("COLUMNS").map(|c| c.trim().parse::<usize>()) {
            Ok(Ok(columns)) if columns >= 20 => columns - 1,
            // Not exported, or not a usable number.
            _ => 79,
        };
        (width, WATCH_ROWS)
    }

    fn event(
        &mut self,
        out: &mut impl Write,
        event: &Value,
        output: Output,
    ) -> Result<(), CliError> {
        if !self.live {
            let line = match output {
                Output::Json => event.to_string(),
                Output::Text => event_line(event),
            };
            return writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| CliError::other(format!("writing to stdout: {e}")));
        }
        let kept = self
            .view
            .apply(event)
            .map_err(|e| CliError::other(format!("event stream: {e}")))?;
        self.kept.extend(kept);
        self.dirty = true;
        Ok(())
    }

    fn due(&self) -> bool {
        self.dirty && self.last_draw.elapsed() >= std::time::Duration::from_millis(100)
    }

    fn flush(&mut self, out: &mut impl Write) -> Result<(), CliError> {
        if !self.live || !self.dirty {
            return Ok(());
        }
        let (width, max_rows) = Screen::size();
        let rows = self.view.rows(max_rows, width);
        let frame = redraw(self.drawn, &self.kept, &rows);
        out.write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| CliError::other(format!("writing to stdout: {e}")))?;
        self.kept.clear();
        self.drawn = rows.len();
        self.dirty = false;
        self.last_draw = tokio::time::Instant::now();
        Ok(())
    }
}
