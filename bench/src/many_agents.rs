//! The `many_agents` case of the `cluster` suite: 5,000 simulated agents (one process of their
//! own, one connection each, plain TCP) renew every second against one scheduler; the
//! scheduler thread's CPU share and the renewal round trip's p50 and p99 (target p99 <= 10 ms)
//! once all have connected.
//!
//! A simulated agent is the wire's client side only: a `Hello`, then an empty `Renew` every
//! second (each agent at its own phase in the second, from a seeded RNG), timing each answer.
//! Plain TCP, not TLS: 5,000 certificates would measure `cadre certs`, and TLS costs the
//! scheduler per byte, not per connection, once the handshakes are done.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use cadre_actors::sched::WorkerCapacity;
use cadre_wire::{HandshakeConfig, Hello, SchedulerRequest, ToScheduler, ToWorker};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::e2e::{agent, check, cleanup, get, scratch, thread_cpu_secs, RunningNode};
use crate::report::Reporter;
use crate::BenchError;

/// The hidden argument that makes `cadre-bench` the simulated agents.
pub const SIM_CHILD: &str = "__sim_agents";

/// One simulated agent: connects after `delay`, renews every second from `phase` on, and
/// records each round trip that ends after `measure_from`, until `until`.
async fn sim_agent(
    i: usize,
    join: Rc<String>,
    delay: Duration,
    phase: Duration,
    measure_from: Instant,
    until: Instant,
    rtts: Rc<RefCell<Vec<u32>>>,
) -> Result<(), String> {
    tokio::time::sleep(delay).await;
    let stream = tokio::net::TcpStream::connect(join.as_str())
        .await
        .map_err(|e| format!("agent {i}: connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("agent {i}: nodelay: {e}"))?;
    let (r, w) = stream.into_split();
    let hello = Hello {
        node: format!("sim-{i}"),
        worker: "cpu-0".to_owned(),
        datacenter: "dc1".to_owned(),
        labels: BTreeMap::new(),
        capacity: WorkerCapacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: Vec::new(),
        },
        gpus: Vec::new(),
        running: Vec::new(),
        software: "cadre-bench".to_owned(),
    };
    let (mut conn, _) = cadre_wire::connect(r, w, &HandshakeConfig::default(), &hello)
        .await
        .map_err(|e| format!("agent {i}: handshake: {e}"))?;
    let mut next = Instant::now() + phase;
    let mut id = 0u64;
    while next < until {
        tokio::time::sleep_until(next).await;
        id += 1;
        let sent = Instant::now();
        let renew = ToScheduler::Request {
            id,
            request: SchedulerRequest::Renew { leases: Vec::new() },
        };
        conn.writer
            .send(&renew)
            .await
            .map_err(|e| format!("agent {i}: send: {e}"))?;
        loop {
            match conn.reader.recv::<ToWorker>().await {
                Ok(ToWorker::Answer { id: got, .. }) if got == id => break,
                Ok(_) => {}
                Err(e) => return Err(format!("agent {i}: read: {e}")),
            }
        }
        if sent >= measure_from {
            rtts.borrow_mut()
                .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        next += Duration::from_secs(1);
    }
    Ok(())
}

/// `cadre-bench __sim_agents JOIN N RAMP_SECS WINDOW_SECS`: prints `rtt_us p50 p99 count`.
pub fn sim_child(args: &[String]) -> Result<(), BenchError> {
    let [join, n, ramp, window] = args else {
        return Err(check(format!(
            "{SIM_CHILD} JOIN N RAMP_SECS WINDOW_SECS, not {args:?}"
        )));
    };
    let parse = |v: &str| v.parse::<u64>().map_err(|e| check(format!("{v:?}: {e}")));
    let (n, ramp, window) = (parse(n)? as usize, parse(ramp)?, parse(window)?);
    cadre_cpu::rlimit::raise_open_files()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let rtts = Rc::new(RefCell::new(Vec::new()));
    let failures = local.block_on(&rt, async {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(ramp + 1);
        let until = measure_from + Duration::from_secs(window);
        let join = Rc::new(join.clone());
        let mut rng = SmallRng::seed_from_u64(0x5eed_a6e7);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let delay = Duration::from_micros(rng.random_range(0..ramp.max(1) * 1_000_000));
                let phase = Duration::from_micros(rng.random_range(0..1_000_000));
                tokio::task::spawn_local(sim_agent(
                    i,
                    Rc::clone(&join),
                    delay,
                    phase,
                    measure_from,
                    until,
                    Rc::clone(&rtts),
                ))
            })
            .collect();
        let mut failures = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(e.to_string()),
            }
        }
        failures
    });
    if let Some(first) = failures.first() {
        return Err(check(format!(
            "{} simulated agents failed; first: {first}",
            failures.len()
        )));
    }
    let mut v = rtts.borrow().clone();
    if v.is_empty() {
        return Err(check("no renewal measured"));
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!("rtt_us {} {} {}", at(0.5), at(0.99), v.len());
    Ok(())
}

/// Runs the case: a scheduler, then the simulated agents in a child process.
pub fn run(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    let (n, ramp, window): (usize, u64, u64) = if quick { (500, 2, 3) } else { (5_000, 10, 20) };
    let root = scratch("many-agents")?;
    let port = crate::e2e::free_port()?;
    let sched = RunningNode::start_with(&root, 1000, |c| {
        c.node_name = Some("sched".to_owned());
        c.cluster.addr = Some(([127, 0, 0, 1], port).into());
        c.cluster.local_worker = false;
        c.cluster.insecure = true;
    })?;
    let child = Command::new(std::env::current_exe()?)
        .args([
            SIM_CHILD.to_owned(),
            format!("127.0.0.1:{port}"),
            n.to_string(),
            ramp.to_string(),
            window.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // Once all are registered, the scheduler thread's CPU over the window.
    let client = agent();
    let deadline = std::time::Instant::now() + Duration::from_secs(ramp + 60);
    loop {
        let nodes = get(&client, &format!("{}/v1/nodes", sched.api))?;
        if nodes["workers"].as_array().map_or(0, Vec::len) >= n {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(check(format!(
                "{n} simulated agents not registered in time"
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let cpu = thread_cpu_secs("cadre-node")?;
    let measured = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(window.saturating_sub(1).max(1)));
    let share = (thread_cpu_secs("cadre-node")? - cpu) / measured.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    sched.stop()?;
    cleanup(&root);
    if !out.status.success() {
        return Err(check(format!(
            "simulated agents exited with {}",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [p50, p99, count] = fields[..] else {
        return Err(check(format!("simulated agents printed {text:?}")));
    };
    eprintln!("cluster: {n} agents, {count} renewals measured");
    report.emit(
        "many_agents",
        &format!("agents_{n}"),
        "scheduler_cpu_share",
        share,
        "ratio",
    )?;
    report.emit(
        "many_agents",
        &format!("agents_{n}"),
        "renew_rtt_p50_ms",
        p50 / 1e3,
        "ms",
    )?;
    report.emit(
        "many_agents",
        &format!("agents_{n}"),
        "renew_rtt_p99_ms",
        p99 / 1e3,
        "ms",
    )?;
    Ok(())
}
