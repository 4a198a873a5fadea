//! The `cluster` suite: a scheduler with no worker of its own (the runtime's `Node`, in this
//! process, on its own thread) and agents in processes of their own (this binary again, as
//! `__cluster_agent`, running the runtime's `Agent` with the `noop` workload), over mutual TLS
//! on loopback.
//!
//! - `cluster_noop`: no-op workload jobs, batch-submitted (1,000 per request) by 4 client
//!   threads, through the scheduler and 4 agents, against the all-in-one node in alternating
//!   rounds of the same run; median rates and the median of the rounds' ratios (targets: at
//!   least 100,000 jobs/s and a ratio of 0.7). Also the bytes on the wire per job, both ways,
//!   as the scheduler counted them, and how busy the scheduler's thread was.
//! - `agent_kill`: an agent running 100 jobs is killed with SIGKILL; the time until every one
//!   of them is requeued (a second attempt), over 20 kills (targets p50 <= 2 s, p99 <= 3 s).
//!   The killed agent is started again on its data directory before the next round, which
//!   kills the processes the SIGKILL left.
//! - `many_agents` (`many_agents.rs`): 5,000 simulated agents renewing every second: the
//!   scheduler thread's CPU share and the renewal round trip (target p99 <= 10 ms).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cadre_runtime::{Agent, Config, Extensions};
use serde_json::{json, Value};

use crate::e2e::{agent, check, cleanup, drive, free_port, get, scratch, Noop, RunningNode};
use crate::report::{selected, Reporter};
use crate::BenchError;

/// The hidden argument that makes `cadre-bench` a cluster agent.
pub const AGENT_CHILD: &str = "__cluster_agent";

/// The cluster's certificates: a CA, the scheduler's (for 127.0.0.1) and one per agent.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path, agents: &[String]) -> Result<Certs, BenchError> {
        use cadre_runtime::cluster::certs;
        let fail = |e: cadre_runtime::Error| check(format!("certificates: {e}"));
        certs::create_ca(dir).map_err(fail)?;
        certs::create_node(dir, "sched", &["127.0.0.1".to_owned()]).map_err(fail)?;
        for name in agents {
            certs::create_node(dir, name, &[]).map_err(fail)?;
        }
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    fn files(&self, node: &str) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.dir.join("ca.crt"),
            self.dir.join(format!("{node}.crt")),
            self.dir.join(format!("{node}.key")),
        )
    }
}

/// `cadre-bench __cluster_agent JOIN NAME DATA_DIR CA CERT KEY`: an agent with the `noop`
/// workload, until SIGTERM (or SIGKILL).
pub fn agent_child(args: &[String]) -> Result<(), BenchError> {
    let [join, name, data_dir, ca, cert, key] = args else {
        return Err(check(format!(
            "{AGENT_CHILD} JOIN NAME DATA_DIR CA CERT KEY, not {args:?}"
        )));
    };
    let mut config = Config {
        node_name: Some(name.clone()),
        data_dir: PathBuf::from(data_dir),
        metrics_addr: ([127, 0, 0, 1], free_port()?).into(),
        ..Config::default()
    };
    config.cluster.join = vec![join.clone()];
    config.cluster.tls_ca = Some(PathBuf::from(ca));
    config.cluster.tls_cert = Some(PathBuf::from(cert));
    config.cluster.tls_key = Some(PathBuf::from(key));
    config
        .check()
        .map_err(|e| check(format!("agent config: {e}")))?;
    let system = actix::System::new();
    system.block_on(async move {
        let extensions = Extensions::new().workload("noop", || Noop);
        let agent = Agent::start(config, None, extensions)
            .await
            .map_err(|e| check(format!("agent start: {e}")))?;
        agent
            .run()
            .await
            .map_err(|e| check(format!("agent run: {e}")))
    })
}

/// An agent process.
struct AgentProcess {
    child: Child,
    name: String,
    args: Vec<String>,
}

impl AgentProcess {
    fn start(
        certs: &Certs,
        join: &str,
        name: &str,
        root: &Path,
    ) -> Result<AgentProcess, BenchError> {
        let (ca, cert, key) = certs.files(name);
        let args: Vec<String> = vec![
            AGENT_CHILD.to_owned(),
            join.to_owned(),
            name.to_owned(),
            root.join(name).display().to_string(),
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ];
        let child = spawn(&args)?;
        Ok(AgentProcess {
            child,
            name: name.to_owned(),
            args,
        })
    }

    fn kill9(&mut self) -> Result<(), BenchError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn restart(&mut self) -> Result<(), BenchError> {
        self.child = spawn(&self.args)?;
        Ok(())
    }

    fn stop(mut self) -> Result<(), BenchError> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            return Err(check(format!("kill -TERM {} failed", self.name)));
        }
        self.child.wait()?;
        Ok(())
    }
}

fn spawn(args: &[String]) -> Result<Child, BenchError> {
    Ok(Command::new(std::env::current_exe()?)
        .args(args)
        .env("CADRE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// A scheduler with no local worker, accepting agents over TLS on a free port.
fn scheduler(dir: &Path, certs: &Certs) -> Result<(RunningNode, String), BenchError> {
    let port = free_port()?;
    let (ca, cert, key) = certs.files("sched");
    let node = RunningNode::start_with(dir, 1000, |c| {
        c.node_name = Some("sched".to_owned());
        c.cluster.addr = Some(([127, 0, 0, 1], port).into());
        c.cluster.local_worker = false;
        c.cluster.tls_ca = Some(ca);
        c.cluster.tls_cert = Some(cert);
        c.cluster.tls_key = Some(key);
    })?;
    Ok((node, format!("127.0.0.1:{port}")))
}

/// Waits until the scheduler at `api` has `n` workers.
fn wait_workers(api: &str, n: usize) -> Result<(), BenchError> {
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = get(&agent, &format!("{api}/v1/nodes"))?;
        if nodes["workers"].as_array().map_or(0, Vec::len) == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(check(format!(
                "{n} workers not registered in 60 s: {nodes}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wire_bytes(metrics_url: &str) -> Result<f64, BenchError> {
    let mut r = agent()
        .get(metrics_url)
        .call()
        .map_err(|e| check(format!("GET {metrics_url}: {e}")))?;
    let text = r
        .body_mut()
        .read_to_string()
        .map_err(|e| check(format!("GET {metrics_url}: {e}")))?;
    Ok(crate::soak::counter(&text, "cadre_wire_bytes_total", &[]))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs the cases that `--case` selects (all by default).
pub fn run(quick: bool) -> Result<(), BenchError> {
    let report = Reporter::new("cluster");
    cadre_cpu::rlimit::raise_open_files().map_err(BenchError::Io)?;
    if selected("cluster_noop") {
        noop(quick, &report)?;
    }
    if selected("agent_kill") {
        kill(quick, &report)?;
    }
    if selected("many_agents") {
        crate::many_agents::run(quick, &report)?;
    }
    Ok(())
}

const NOOP: fn() -> Value = || {
    json!({"name": "noop", "kind": {"workload": {"name": "noop", "params": null}},
        "resources": {"cpu_millis": 0}})
};

fn noop(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    let root = scratch("cluster-noop")?;
    let names: Vec<String> = (1..=4).map(|i| format!("agent-{i}")).collect();
    let certs = Certs::make(&root.join("certs"), &names)?;
    let (sched, join) = scheduler(&root.join("sched"), &certs)?;
    let agents = names
        .iter()
        .map(|n| AgentProcess::start(&certs, &join, n, &root))
        .collect::<Result<Vec<_>, _>>()?;
    wait_workers(&sched.api, 4)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let single = RunningNode::start(&root.join("single"), cores * 1000)?;
    let spec = NOOP();
    let batches = if quick { 10 } else { 100 };
    let rounds = if quick { 2 } else { 5 };
    // Uncounted warm-up of both.
    drive(&single.api, &spec, 2, 1_000, 2)?;
    drive(&sched.api, &spec, 2, 1_000, 2)?;
    let (mut cluster_rates, mut single_rates, mut ratios, mut per_job, mut busy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let jobs = (batches * 1_000) as f64;
        let before = wire_bytes(&sched.metrics)?;
        let cpu = crate::e2e::thread_cpu_secs("cadre-node")?;
        let took = drive(&sched.api, &spec, batches, 1_000, 4)?;
        let c = jobs / took;
        busy.push((crate::e2e::thread_cpu_secs("cadre-node")? - cpu) / took);
        per_job.push((wire_bytes(&sched.metrics)? - before) / jobs);
        let s = jobs / drive(&single.api, &spec, batches, 1_000, 4)?;
        eprintln!("cluster: round {round}: cluster {c:.0} job/s, all-in-one {s:.0} job/s");
        cluster_rates.push(c);
        single_rates.push(s);
        ratios.push(c / s);
    }
    single.stop()?;
    for a in agents {
        a.stop()?;
    }
    sched.stop()?;
    cleanup(&root);
    report.emit(
        "cluster_noop",
        "scheduler_4_agents",
        "jobs_per_sec",
        median(&mut cluster_rates),
        "job/s",
    )?;
    report.emit(
        "cluster_noop",
        "all_in_one",
        "jobs_per_sec",
        median(&mut single_rates),
        "job/s",
    )?;
    report.emit(
        "cluster_noop",
        "cluster_vs_all_in_one",
        "ratio",
        median(&mut ratios),
        "ratio",
    )?;
    // How busy the scheduler's thread (the scheduler, its connections, TLS) was in the
    // cluster's rounds: near 1 means it is the bound.
    report.emit(
        "cluster_noop",
        "scheduler_thread",
        "busy_share",
        median(&mut busy),
        "ratio",
    )?;
    report.emit(
        "cluster_noop",
        "wire",
        "bytes_per_job",
        median(&mut per_job),
        "bytes",
    )?;
    Ok(())
}

/// The attempt of each job of `ids` (consecutive), from one listing.
fn attempts(api: &str, first: u64, n: usize) -> Result<Vec<(u64, u64, String)>, BenchError> {
    let list = get(
        &agent(),
        &format!("{api}/v1/jobs?after={}&limit={n}", first.saturating_sub(1)),
    )?;
    let jobs = list["jobs"]
        .as_array()
        .ok_or_else(|| check(format!("no jobs in {list}")))?;
    Ok(jobs
        .iter()
        .map(|j| {
            (
                j["id"].as_u64().unwrap_or(0),
                j["attempt"].as_u64().unwrap_or(0),
                j["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

fn kill(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    let root = scratch("cluster-kill")?;
    let names = vec!["victim".to_owned(), "spare".to_owned()];
    let certs = Certs::make(&root.join("certs"), &names)?;
    let (sched, join) = scheduler(&root.join("sched"), &certs)?;
    let mut victim = AgentProcess::start(&certs, &join, "victim", &root)?;
    wait_workers(&sched.api, 1)?;
    let kills = if quick { 3 } else { 20 };
    let per_kill = 100usize;
    // Jobs that run until killed, reserving nothing, so the spare can take all of them.
    let spec = json!({"name": "hold", "kind": {"command": {"program": "/bin/sleep", "args": ["3600"]}},
        "resources": {"cpu_millis": 0}, "max_requeues": 1});
    let mut secs = Vec::new();
    let client = agent();
    for round in 0..kills {
        let body = json!({ "jobs": vec![spec.clone(); per_kill] });
        let mut r = client
            .post(format!("{}/v1/jobs", sched.api))
            .header("content-type", "application/json")
            .send_json(&body)
            .map_err(|e| check(format!("submit: {e}")))?;
        let v: Value = r.body_mut().read_json().map_err(|e| check(e.to_string()))?;
        let first = v["ids"][0]
            .as_u64()
            .ok_or_else(|| check(format!("submit answered {v}")))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while attempts(&sched.api, first, per_kill)?
            .iter()
            .any(|(_, _, s)| s != "running")
        {
            if Instant::now() > deadline {
                return Err(check(format!(
                    "round {round}: jobs not all running in 120 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let spare = AgentProcess::start(&certs, &join, "spare", &root)?;
        wait_workers(&sched.api, 2)?;
        let killed = Instant::now();
        victim.kill9()?;
        loop {
            let now = attempts(&sched.api, first, per_kill)?;
            if now.len() == per_kill && now.iter().all(|(_, a, _)| *a >= 2) {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                return Err(check(format!("round {round}: not all requeued in 60 s")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = killed.elapsed().as_secs_f64();
        eprintln!(
            "cluster: kill {round}: {per_kill} jobs requeued in {:.0} ms",
            took * 1e3
        );
        secs.push(took);
        // The spare leaves (its tasks stop), and the victim comes back on its data directory,
        // which kills what the SIGKILL left; the jobs end as lost for good (max_requeues 1).
        spare.stop()?;
        victim.restart()?;
        wait_workers(&sched.api, 1)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while attempts(&sched.api, first, per_kill)?
            .iter()
            .any(|(_, _, s)| !matches!(s.as_str(), "failed" | "succeeded" | "cancelled"))
        {
            if Instant::now() > deadline {
                return Err(check(format!("round {round}: jobs not ended in 120 s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    victim.stop()?;
    sched.stop()?;
    cleanup(&root);
    let mut ms: Vec<f64> = secs.iter().map(|s| s * 1e3).collect();
    report.emit(
        "agent_kill",
        "requeue_100_jobs",
        "p50_ms",
        percentile(&mut ms, 0.5),
        "ms",
    )?;
    report.emit(
        "agent_kill",
        "requeue_100_jobs",
        "p99_ms",
        percentile(&mut ms, 0.99),
        "ms",
    )?;
    Ok(())
}
