//! The end-to-end cases of the `scheduler` suite: a real node (the runtime's `Node`, with a
//! `noop` workload registered) in this process on free ports, driven over its HTTP API.
//!
//! - `e2e_noop`: no-op workload jobs, batch-submitted (1,000 per request) by 4 client threads,
//!   each accepted durably, placed, leased, run on the worker and ended durably; the rate is jobs
//!   ended per second from the first request until the node reports nothing queued or running
//!   (target >= 100,000 jobs/s).
//! - `node_queued_memory`: the resident memory of a whole node (its actors, the API, buffers)
//!   holding 1,000,000 queued jobs submitted over the API behind one running blocker, measured
//!   in a fresh process of its own (target <= 1 GiB).
//! - `e2e_true`: `/bin/true` command jobs (0.1 CPU each, so about ten per core run at once)
//!   through the same path, against the launcher spawning and reaping `/bin/true` directly with
//!   the same concurrency, log files and filesystem, in alternating rounds of the same run after
//!   an uncounted warm-up round of each; median rates and the median of the rounds' ratios
//!   (targets >= 1,000 jobs/s and a ratio >= 0.8). `e2e_true_tmpfs` repeats it with
//!   the data on `/dev/shm`, where creating log files is nearly free, to show the node's own
//!   overhead apart from the disk's. Where cgroups work, a third side (`launcher_cgroups`)
//!   runs the launcher with each process in a cgroup of its own, as the node's jobs are:
//!   `cadre_vs_cgroups` is then the node's overhead apart from the kernel's cost of a cgroup
//!   per job, which `cadre_vs_bare` includes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use cadre_actors::workload::{Run, WorkloadError};
use cadre_cpu::cgroup::{CgroupLimits, Cgroups};
use cadre_cpu::launcher::{CommandSpec, Launcher};
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_runtime::{Config, Extensions, Node};
use cadre_supervisor::SupervisedContext;
use serde_json::{json, Value};

use crate::report::{selected, Reporter};
use crate::BenchError;

/// A workload that does nothing.
pub(crate) struct Noop;

impl Actor for Noop {
    type Context = SupervisedContext<Self>;
}

impl Handler<Run> for Noop {
    type Result = Result<Value, WorkloadError>;

    fn handle(&mut self, _: Run, _: &mut Self::Context) -> Self::Result {
        Ok(Value::Null)
    }
}

pub(crate) fn check(what: impl Into<String>) -> BenchError {
    BenchError::Check(what.into())
}

pub(crate) fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A node running on its own thread; stopped (drained, journal flushed) on `stop`.
pub(crate) struct RunningNode {
    pub(crate) api: String,
    /// The node's Prometheus endpoint.
    pub(crate) metrics: String,
    /// The node's scheduler, for probes that talk to it directly.
    pub(crate) scheduler: actix::Addr<cadre_actors::scheduler::Scheduler>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

/// The process-wide Prometheus recorder, installed by the first node the bench starts: a node
/// measured here pays for its metrics as `cadre serve` does.
static EXPORTER: std::sync::OnceLock<Option<cadre_runtime::metrics::Exporter>> =
    std::sync::OnceLock::new();

fn exporter() -> Option<cadre_runtime::metrics::Exporter> {
    EXPORTER
        .get_or_init(|| match cadre_runtime::metrics::install() {
            Ok(exporter) => Some(exporter),
            Err(e) => {
                eprintln!("scheduler: metrics recorder not installed, nodes run without one: {e}");
                None
            }
        })
        .clone()
}

impl RunningNode {
    pub(crate) fn start(dir: &Path, cpu_millis: u64) -> Result<RunningNode, BenchError> {
        RunningNode::start_with(dir, cpu_millis, |_| {})
    }

    /// [`RunningNode::start`] with the node's configuration changed by `tweak` first.
    pub(crate) fn start_with(
        dir: &Path,
        cpu_millis: u64,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<RunningNode, BenchError> {
        let exporter = exporter();
        let api_port = free_port()?;
        let metrics_port = free_port()?;
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            api_addr: ([127, 0, 0, 1], api_port).into(),
            metrics_addr: ([127, 0, 0, 1], metrics_port).into(),
            worker_cpu_millis: Some(cpu_millis),
            shutdown_grace_secs: 5,
            api_threads: 2,
            ..Config::default()
        };
        tweak(&mut config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("cadre-node".to_owned())
            .spawn(move || {
                let system = actix::System::new();
                system.block_on(async move {
                    let extensions = Extensions::new().workload("noop", || Noop).gpu_workloads();
                    let node = match Node::start(config, exporter, extensions).await {
                        Ok(node) => node,
                        Err(e) => {
                            let message = e.to_string();
                            if ready_tx.send(Err(message.clone())).is_err() {
                                eprintln!("scheduler: node failed to start: {message}");
                            }
                            return Err(message);
                        }
                    };
                    if ready_tx.send(Ok(node.scheduler())).is_err() {
                        eprintln!("scheduler: bench left before the node started");
                    }
                    if stop_rx.await.is_err() {
                        eprintln!("scheduler: bench dropped the node's stop signal");
                    }
                    node.shutdown().await.map_err(|e| e.to_string())
                })
            })?;
        let scheduler = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(scheduler)) => scheduler,
            Ok(Err(e)) => return Err(check(format!("node start: {e}"))),
            Err(e) => return Err(check(format!("node start: {e}"))),
        };
        Ok(RunningNode {
            api: format!("http://127.0.0.1:{api_port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            scheduler,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub(crate) fn stop(mut self) -> Result<(), BenchError> {
        if let Some(stop) = self.stop.take() {
            if stop.send(()).is_err() {
                return Err(check("node thread ended early"));
            }
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(check(format!("node stop: {e}"))),
            Some(Err(_)) => Err(check("node thread panicked")),
        }
    }
}

/// A client with a timeout on each phase of a request and none on the name lookup: with a
/// global or per-call timeout ureq looks up each new connection's address on a thread started
/// for it, and those thread starts were a cost of the node's side of the `/bin/true` cases.
pub(crate) fn agent() -> ureq::Agent {
    let phase = Some(Duration::from_secs(120));
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_send_request(phase)
        .timeout_send_body(phase)
        .timeout_recv_response(phase)
        .timeout_recv_body(phase)
        .build()
        .into()
}

pub(crate) fn get(agent: &ureq::Agent, url: &str) -> Result<Value, BenchError> {
    let mut r = agent
        .get(url)
        .call()
        .map_err(|e| check(format!("GET {url}: {e}")))?;
    r.body_mut()
        .read_json()
        .map_err(|e| check(format!("GET {url}: {e}")))
}

/// Submits `batches` batches of `per_batch` copies of `spec` from `clients` threads, then waits
/// until nothing is queued or running; returns the seconds from the first request to then.
pub(crate) fn drive(
    api: &str,
    spec: &Value,
    batches: usize,
    per_batch: usize,
    clients: usize,
) -> Result<f64, BenchError> {
    let body = json!({ "jobs": vec![spec.clone(); per_batch] });
    let body = serde_json::to_vec(&body).map_err(|e| check(e.to_string()))?;
    let started = Instant::now();
    let threads: Vec<std::thread::JoinHandle<Result<u64, String>>> = (0..clients)
        .map(|c| {
            let api = api.to_owned();
            let body = body.clone();
            let mine = batches / clients + usize::from(c < batches % clients);
            std::thread::spawn(move || {
                let agent = agent();
                let mut accepted = 0u64;
                for _ in 0..mine {
                    let mut r = agent
                        .post(format!("{api}/v1/jobs"))
                        .header("content-type", "application/json")
                        .send(&body[..])
                        .map_err(|e| e.to_string())?;
                    let status = r.status().as_u16();
                    let v: Value = r.body_mut().read_json().map_err(|e| e.to_string())?;
                    if status != 201 {
                        return Err(format!("submit answered {status}: {v}"));
                    }
                    accepted += v["ids"].as_array().map_or(0, Vec::len) as u64;
                }
                Ok(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for t in threads {
        accepted += t
            .join()
            .map_err(|_| check("client thread panicked"))?
            .map_err(check)?;
    }
    if accepted != (batches * per_batch) as u64 {
        return Err(check(format!(
            "{accepted} jobs accepted of {}",
            batches * per_batch
        )));
    }
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(600);
    // The jobs pending at the last poll, and when.
    let mut last: Option<(f64, Instant)> = None;
    loop {
        let nodes = get(&agent, &format!("{api}/v1/nodes"))?;
        let count = |key: &str| {
            nodes[key]
                .as_u64()
                .ok_or_else(|| check(format!("/v1/nodes has no {key} count: {nodes}")))
        };
        let pending = (count("queued")? + count("running")?) as f64;
        if pending == 0.0 {
            break;
        }
        let now = Instant::now();
        if now > deadline {
            return Err(check(format!("jobs still pending after 600 s: {nodes}")));
        }
        // Polled more often as the end nears: a quarter of the time the pending jobs take at
        // the rate since the last poll, between 1 and 10 ms (2 ms while that rate is not
        // known, and at most 2 ms once 100 jobs or fewer are left, so that a rate misjudged
        // near the end cannot make the round look longer by more than that). Each poll is a
        // request the node answers on the cores its jobs use: every 2 ms, polls took about 2%
        // of the CPU of the node's side of the `/bin/true` cases, which the launcher's side
        // never pays.
        let rate = last.and_then(|(before, at)| {
            let secs = now.duration_since(at).as_secs_f64();
            (before > pending && secs > 0.0).then(|| (before - pending) / secs)
        });
        let most = if pending <= 100.0 { 0.002 } else { 0.01 };
        let wait = rate.map_or(0.002, |rate| pending / rate / 4.0);
        last = Some((pending, now));
        std::thread::sleep(Duration::from_secs_f64(wait.clamp(0.001, most)));
    }
    let secs = started.elapsed().as_secs_f64();
    let failed = get(&agent, &format!("{api}/v1/jobs?state=failed&limit=1"))?;
    if failed["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
        return Err(check(format!("a job failed: {failed}")));
    }
    Ok(secs)
}

/// The launcher alone: `n` `/bin/true` processes, up to `concurrency` at a time (a new one as
/// soon as one ends, as the node keeps its slots full), spawned and reaped with their output
/// captured, as the worker does; each in a task group of `cgroups` with the jobs' CPU limit
/// where given (created, or taken from the spares, and released as the worker does).
fn bare_spawns(
    dir: &Path,
    n: usize,
    concurrency: usize,
    cgroups: Option<&Cgroups>,
) -> Result<f64, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto)?);
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for i in 0..n {
            if running.len() == concurrency {
                if let Some(done) = running.join_next().await {
                    done??;
                }
            }
            let spec = CommandSpec::new(
                ["/bin/true"],
                dir.join(format!("{i}.out")),
                dir.join(format!("{i}.err")),
            );
            let group = match cgroups {
                Some(cg) => Some(cg.create(&format!("bare-{i}"), &TRUE_LIMITS)?),
                None => None,
            };
            let mut process = launcher.spawn_in(&spec, &i.to_string(), group)?;
            running.spawn(async move { process.wait().await.map(|_| ()) });
        }
        while let Some(done) = running.join_next().await {
            done??;
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        // The releases run on this runtime's blocking pool: done before it goes.
        if let Some(cg) = cgroups {
            if !cg.wait_released(Duration::from_secs(10)).await {
                return Err(check("the launcher's cgroups were not released in 10 s"));
            }
        }
        Ok::<f64, BenchError>(rate)
    })
}

/// CPU seconds used so far by this process's threads named `name` (from `/proc/self/task`).
pub(crate) fn thread_cpu_secs(name: &str) -> Result<f64, BenchError> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        let comm = std::fs::read_to_string(dir.join("comm"))?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15: indexes 11 and 12 after the command name.
        for i in [11, 12] {
            total += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| check(format!("{}: no CPU times", dir.display())))?;
        }
    }
    Ok(total as f64 / ticks)
}

/// The limits of the `/bin/true` jobs: a tenth of a core, no memory or pids limit.
const TRUE_LIMITS: CgroupLimits = CgroupLimits {
    cpu_millis: 100,
    memory_bytes: 0,
    pids: None,
};

/// The bare launcher's own cgroups (v1 keeps spares, as the node's do), or `None` with a line
/// saying why where this machine has none: the node then runs its jobs without them too.
fn bare_cgroups() -> Option<Cgroups> {
    let parent = format!("cadre-bench-bare-{}", std::process::id());
    match Cgroups::open(&parent) {
        Ok(cg) => Some(cg),
        Err(e) => {
            eprintln!("scheduler: launcher_cgroups not run: {e}");
            None
        }
    }
}

/// `/bin/true` jobs through the node against the bare launcher under `root`: same concurrency,
/// same filesystem, rounds alternating so both meet the same disk and page-cache state. Where
/// cgroups work, the launcher also runs each process in a task group, as the node does: the
/// node's overhead apart from the kernel's cost of a cgroup per job.
fn true_jobs(
    quick: bool,
    report: &Reporter,
    case: &str,
    root: PathBuf,
    cores: u64,
) -> Result<(), BenchError> {
    let dir = scratch_in(&root, case)?;
    let concurrency = (cores * 10) as usize;
    let (n, rounds, warm) = if quick {
        (300, 1, 100)
    } else {
        (2_000, 5, 500)
    };
    let node = RunningNode::start(&dir.join("node"), cores * 1000)?;
    let spec = json!({"name": "true", "kind": {"command": {"program": "/bin/true"}}, "resources": {"cpu_millis": 100}});
    let cgroups = bare_cgroups();
    let mut bare = Vec::new();
    let mut grouped = Vec::new();
    let mut cadre = Vec::new();
    // A round of `warm` jobs on every side first, not counted: each side's groups exist (as on
    // a node that has run before), every side meets the same descriptors of the process, and
    // the first timed round is not the only one that pays for making them. Then the rounds,
    // then the launcher's cgroups removed whether they worked or not (their parent is named by
    // this process: no later run would sweep it).
    let rounds_run = (|| {
        for round in 0..=rounds {
            let jobs = if round == 0 { warm } else { n };
            let bare_dir = dir.join(format!("bare-{round}"));
            std::fs::create_dir_all(&bare_dir)?;
            let b = bare_spawns(&bare_dir, jobs, concurrency, None)?;
            let g = match &cgroups {
                Some(cg) => {
                    let grouped_dir = dir.join(format!("grouped-{round}"));
                    std::fs::create_dir_all(&grouped_dir)?;
                    Some(bare_spawns(&grouped_dir, jobs, concurrency, Some(cg))?)
                }
                None => None,
            };
            let c = jobs as f64 / drive(&node.api, &spec, jobs / 100, 100, 2)?;
            if round > 0 {
                bare.push(b);
                grouped.extend(g);
                cadre.push(c);
            }
        }
        Ok::<(), BenchError>(())
    })();
    let removed = cgroups.map_or(Ok(()), remove_bare_cgroups);
    rounds_run?;
    removed?;
    node.stop()?;
    cleanup(&dir);
    // Ratios per round (the sides of one round ran within seconds of each other), their median:
    // a machine that slows down or speeds up between rounds moves both sides of a ratio alike.
    let ratio = |of: &[f64], to: &[f64]| {
        let per_round: Vec<f64> = of.iter().zip(to).map(|(a, b)| a / b).collect();
        crate::report::median(&per_round)
    };
    report.emit(
        case,
        "launcher_bare",
        "jobs_per_sec",
        crate::report::median(&bare),
        "job/s",
    )?;
    if !grouped.is_empty() {
        let rate = crate::report::median(&grouped);
        report.emit(case, "launcher_cgroups", "jobs_per_sec", rate, "job/s")?;
        let vs = ratio(&cadre, &grouped);
        report.emit(case, "cadre_vs_cgroups", "rate_ratio", vs, "ratio")?;
    }
    report.emit(
        case,
        "cadre_api",
        "jobs_per_sec",
        crate::report::median(&cadre),
        "job/s",
    )?;
    report.emit(
        case,
        "cadre_vs_bare",
        "rate_ratio",
        ratio(&cadre, &bare),
        "ratio",
    )?;
    Ok(())
}

/// Sweeps and removes the launcher's parent group (its spares with it).
fn remove_bare_cgroups(cg: Cgroups) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        cg.sweep().await?;
        cg.remove().await?;
        Ok(())
    })
}

pub(crate) fn scratch(name: &str) -> Result<PathBuf, BenchError> {
    scratch_in(&std::env::temp_dir(), name)
}

pub(crate) fn scratch_in(root: &Path, name: &str) -> Result<PathBuf, BenchError> {
    let dir = root.join(format!("cadre-bench-e2e-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn cleanup(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("scheduler: leaving {}: {e}", dir.display());
    }
}

/// Runs the end-to-end cases that `--case` selects (all by default).
pub fn run(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    if selected("node_queued_memory") {
        node_queued_memory(quick, report)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    if selected("e2e_noop") {
        noop_jobs(quick, report, cores)?;
    }
    // /bin/true through the node against the bare launcher: on the temporary directory's
    // filesystem, and on tmpfs (where creating the log files costs next to nothing, so the
    // node's own overhead shows).
    if selected("e2e_true") {
        true_jobs(quick, report, "e2e_true", std::env::temp_dir(), cores)?;
    }
    if selected("e2e_true_tmpfs") {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            true_jobs(quick, report, "e2e_true_tmpfs", shm, cores)?;
        } else {
            eprintln!("scheduler: e2e_true_tmpfs not run: /dev/shm is not a directory here");
        }
    }
    Ok(())
}

/// No-op workload jobs, batch-submitted over the API by four clients.
fn noop_jobs(quick: bool, report: &Reporter, cores: u64) -> Result<(), BenchError> {
    let dir = scratch("noop")?;
    let node = RunningNode::start(&dir, cores * 1000)?;
    // A no-op only waits on nothing: it reserves no CPU (`cpu_millis: 0`), as before jobs
    // got one CPU by default.
    let noop = json!({"name": "noop", "kind": {"workload": {"name": "noop", "params": null}},
        "resources": {"cpu_millis": 0}});
    let warm = drive(&node.api, &noop, 2, 1_000, 2)?;
    eprintln!("scheduler: e2e warm-up: 2,000 no-op jobs in {warm:.2} s");
    let batches = if quick { 20 } else { 200 };
    let cpu_before = thread_cpu_secs("cadre-node")?;
    let secs = drive(&node.api, &noop, batches, 1_000, 4)?;
    let node_cpu = thread_cpu_secs("cadre-node")? - cpu_before;
    node.stop()?;
    cleanup(&dir);
    report.emit(
        "e2e_noop",
        "api_batch_1000",
        "jobs_per_sec",
        (batches * 1_000) as f64 / secs,
        "job/s",
    )?;
    // How busy the node's actor thread (scheduler, worker, monitors) was: near 1 means the
    // actors are the bound, well below 1 means the API or the clients are.
    report.emit(
        "e2e_noop",
        "actor_thread",
        "busy_share",
        node_cpu / secs,
        "ratio",
    )?;
    report.emit(
        "e2e_noop",
        "actor_thread",
        "cpu_us_per_job",
        node_cpu * 1e6 / (batches * 1_000) as f64,
        "us",
    )?;
    Ok(())
}

/// The hidden argument that makes `cadre-bench` the node-memory child.
pub const NODE_RSS_CHILD: &str = "__node_rss_child";

/// In a fresh process: a node whose one core is held by a blocker, `n` jobs queued behind it
/// over the API, then this process's resident memory printed as `rss_bytes N`.
pub fn node_rss_child(n: usize) -> Result<(), BenchError> {
    let dir = scratch("rss")?;
    let node = RunningNode::start(&dir, 1000)?;
    let agent = agent();
    let blocker = json!({"name": "blocker", "kind": {"command": {"program": "/bin/sleep", "args": ["600"]}},
        "resources": {"cpu_millis": 1000}});
    let mut r = agent
        .post(format!("{}/v1/jobs", node.api))
        .send_json(&blocker)
        .map_err(|e| check(e.to_string()))?;
    if r.status().as_u16() != 201 {
        return Err(check(format!(
            "blocker refused: {}",
            r.body_mut()
                .read_to_string()
                .map_err(|e| check(e.to_string()))?
        )));
    }
    let spec = json!({"name": "waiting", "kind": {"workload": {"name": "noop", "params": null}},
        "resources": {"cpu_millis": 1000}});
    let per_batch = 10_000;
    let batches = n.div_ceil(per_batch);
    let body = serde_json::to_vec(&json!({ "jobs": vec![spec; per_batch] }))
        .map_err(|e| check(e.to_string()))?;
    for _ in 0..batches {
        let mut r = agent
            .post(format!("{}/v1/jobs", node.api))
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| check(e.to_string()))?;
        if r.status().as_u16() != 201 {
            return Err(check(format!(
                "submit refused: {}",
                r.body_mut()
                    .read_to_string()
                    .map_err(|e| check(e.to_string()))?
            )));
        }
    }
    let nodes = get(&agent, &format!("{}/v1/nodes", node.api))?;
    if nodes["queued"].as_u64() != Some((batches * per_batch) as u64) {
        return Err(check(format!(
            "expected {} queued: {nodes}",
            batches * per_batch
        )));
    }
    let rss = crate::report::rss_bytes()?;
    println!("rss_bytes {rss} queued {}", batches * per_batch);
    node.stop()?;
    cleanup(&dir);
    Ok(())
}

/// Runs [`node_rss_child`] in a fresh process and reports its memory.
pub fn node_queued_memory(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    let n: usize = if quick { 100_000 } else { 1_000_000 };
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg(NODE_RSS_CHILD)
        .arg(n.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(check(format!(
            "node memory child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let rss: f64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| check(format!("node memory child printed {text:?}")))?;
    report.emit("node_queued_memory", "cadre_node", "jobs", n as f64, "job")?;
    report.emit(
        "node_queued_memory",
        "cadre_node",
        "rss_mib",
        rss / (1 << 20) as f64,
        "MiB",
    )?;
    report.emit(
        "node_queued_memory",
        "cadre_node",
        "rss_mib_per_million_jobs",
        rss / (1 << 20) as f64 * 1e6 / n as f64,
        "MiB",
    )?;
    Ok(())
}
