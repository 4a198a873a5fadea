//! The `soak` suite: a real node (in this process, as the scheduler suite's end-to-end cases run
//! one) under a steady mixed load for 30 minutes (`--minutes N`; `--quick`: one minute sampled
//! every 5 s), with retention lowered so that pruning runs all along.
//!
//! The load: clients keep a window of jobs in flight (submitted, not yet ended) and submit a
//! batch whenever it has room: 70% no-op workloads, 24% `/bin/true`, 5% jobs printing 1 MB, 1%
//! jobs that fail. Retention keeps ended jobs one minute (10 s with `--quick`) and at most 20,000
//! of them, snapshots come every 200,000 records.
//!
//! Reported each period (a minute): resident memory of the process, its live heap (allocated and
//! not freed, through the counting allocator: a leak shows there apart from what the allocator
//! keeps), its open file descriptors,
//! the files and bytes under the node's data directory, jobs ended per second, and the longest
//! the scheduler took to answer a probe sent every 5 ms. At the end: the slope of memory, file
//! descriptors and disk over the last two thirds of the run (the first third is the first
//! retention window, when they grow to their steady level), as bytes (or descriptors, files)
//! per minute next to their mean, and the throughput of the last 5 periods against the first 5.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cadre_actors::scheduler::Ready;
use serde_json::{json, Value};

use crate::e2e::{agent, cleanup, scratch, RunningNode};
use crate::report::{rss_bytes, Reporter};
use crate::BenchError;

fn check(reason: impl Into<String>) -> BenchError {
    BenchError::Check(reason.into())
}

/// How long the suite runs and how often it samples.
struct Plan {
    periods: usize,
    period: Duration,
}

fn plan(quick: bool, minutes: Option<u64>) -> Plan {
    match (quick, minutes) {
        (true, _) => Plan {
            periods: 12,
            period: Duration::from_secs(5),
        },
        (false, m) => Plan {
            periods: m.unwrap_or(30).max(3) as usize,
            period: Duration::from_secs(60),
        },
    }
}

/// One batch of the mixed load.
fn batch(n: usize, seq: u64) -> Value {
    let jobs: Vec<Value> = (0..n)
        .map(|i| {
            let k = (seq as usize * n + i) % 100;
            let name = format!("soak-{seq}-{i}");
            if k < 70 {
                json!({"name": name, "kind": {"workload": {"name": "noop", "params": null}},
                    "resources": {"cpu_millis": 0}})
            } else if k < 94 {
                json!({"name": name, "kind": {"command": {"program": "/bin/true"}},
                    "resources": {"cpu_millis": 100}})
            } else if k < 99 {
                json!({"name": name, "kind": {"command": {"program": "/bin/sh",
                    "args": ["-c", "head -c 1000000 /dev/zero | tr '\\0' x"]}},
                    "resources": {"cpu_millis": 100}})
            } else {
                json!({"name": name, "kind": {"command": {"program": "/bin/false"}},
                    "resources": {"cpu_millis": 100}})
            }
        })
        .collect();
    json!({ "jobs": jobs })
}

/// The sum of a counter over its label sets in Prometheus text.
pub(crate) fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ended(agent: &ureq::Agent, metrics: &str) -> Result<u64, BenchError> {
    let mut r = agent
        .get(metrics)
        .call()
        .map_err(|e| check(format!("metrics: {e}")))?;
    let text = r
        .body_mut()
        .read_to_string()
        .map_err(|e| check(format!("metrics: {e}")))?;
    Ok(counter(&text, "cadre_jobs_finished_total", &[]) as u64)
}

/// Files and bytes under `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            // Removed between its listing and now (a pruned job's scratch directory).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                eprintln!("soak: listing {}: {e}", d.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                // Removed between the listing and its stat (a pruned job's log).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("soak: {}: {e}", entry.path().display()),
            }
        }
    }
    (files, bytes)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of `ys` per step, and their mean.
fn slope(ys: &[f64]) -> (f64, f64) {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return (0.0, ys.first().copied().unwrap_or(0.0));
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    (num / den, mean_y)
}

/// One period's samples.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: f64,
    /// Heap bytes allocated and not freed (the counting allocator): RSS without what the
    /// allocator keeps of freed memory, so a leak shows apart from the allocator's own growth.
    heap: f64,
    fds: f64,
    files: f64,
    disk: f64,
    jobs_per_sec: f64,
    max_pause_ms: f64,
}

/// Runs the suite for `minutes` (30 by default).
pub fn run(quick: bool, minutes: Option<u64>) -> Result<(), BenchError> {
    let plan = plan(quick, minutes);
    let report = Reporter::new("soak");
    let dir = scratch("soak")?;
    let data = dir.join("node");
    let node = RunningNode::start_with(&data, 2000, |c| {
        c.retention.max_age_secs = if quick { 10 } else { 60 };
        c.retention.max_jobs = 20_000;
        c.snapshot_every = 200_000;
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let window = 2_000u64;
    let per_batch = 100;
    // The ended count, read from the node's metrics ten times a second.
    let watcher = {
        let (stop, finished, metrics) = (
            Arc::clone(&stop),
            Arc::clone(&finished),
            node.metrics.clone(),
        );
        std::thread::spawn(move || {
            let agent = agent();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = ended(&agent, &metrics) {
                    finished.store(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut clients = Vec::new();
    for c in 0..2u64 {
        let (stop, submitted, finished, failures, api) = (
            Arc::clone(&stop),
            Arc::clone(&submitted),
            Arc::clone(&finished),
            Arc::clone(&failures),
            node.api.clone(),
        );
        clients.push(std::thread::spawn(move || {
            let agent = agent();
            let mut seq = c;
            while !stop.load(Ordering::Relaxed) {
                let in_flight = submitted
                    .load(Ordering::Relaxed)
                    .saturating_sub(finished.load(Ordering::Relaxed));
                if in_flight + per_batch as u64 > window {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let body = batch(per_batch, seq);
                seq += 2;
                match agent.post(format!("{api}/v1/jobs")).send_json(&body) {
                    Ok(r) if r.status().as_u16() == 201 => {
                        submitted.fetch_add(per_batch as u64, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }));
    }
    // The scheduler's answer to a probe every 5 ms; the longest per period.
    let longest = Arc::new(AtomicU64::new(0));
    // Set when the probe could not go on: the pauses after it would read as zero.
    let probe_failed = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, longest, failed, scheduler) = (
            Arc::clone(&stop),
            Arc::clone(&longest),
            Arc::clone(&probe_failed),
            node.scheduler.clone(),
        );
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("soak: prober runtime: {e}");
                    failed.store(true, Ordering::Relaxed);
                    return;
                }
            };
            rt.block_on(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    if let Err(e) = scheduler.send(Ready).await {
                        eprintln!("soak: the scheduler did not answer a probe: {e}");
                        failed.store(true, Ordering::Relaxed);
                        break;
                    }
                    longest.fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        })
    };
    let mut samples = Vec::with_capacity(plan.periods);
    let mut last_ended = finished.load(Ordering::Relaxed);
    let mut last_read = Instant::now();
    for period in 1..=plan.periods {
        longest.store(0, Ordering::Relaxed);
        std::thread::sleep(plan.period);
        // The rate over the time between two reads of the count (the walk of the data
        // directory below falls inside the next period's).
        let now_ended = finished.load(Ordering::Relaxed);
        let read = Instant::now();
        let elapsed = read.duration_since(last_read).as_secs_f64();
        last_read = read;
        let (files, bytes) = disk(&data);
        let sample = Sample {
            rss: rss_bytes()? as f64,
            heap: crate::alloc::live_bytes() as f64,
            fds: open_fds() as f64,
            files: files as f64,
            disk: bytes as f64,
            jobs_per_sec: now_ended.saturating_sub(last_ended) as f64 / elapsed,
            max_pause_ms: longest.load(Ordering::Relaxed) as f64 / 1e3,
        };
        last_ended = now_ended;
        let at = format!("p{period:02}");
        report.emit(
            "period",
            &at,
            "rss_mib",
            sample.rss / (1 << 20) as f64,
            "MiB",
        )?;
        report.emit(
            "period",
            &at,
            "heap_mib",
            sample.heap / (1 << 20) as f64,
            "MiB",
        )?;
        report.emit("period", &at, "open_fds", sample.fds, "fd")?;
        report.emit("period", &at, "data_files", sample.files, "file")?;
        report.emit(
            "period",
            &at,
            "data_mib",
            sample.disk / (1 << 20) as f64,
            "MiB",
        )?;
        report.emit("period", &at, "jobs_per_sec", sample.jobs_per_sec, "job/s")?;
        report.emit("period", &at, "max_pause_ms", sample.max_pause_ms, "ms")?;
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        if c.join().is_err() {
            eprintln!("soak: a client panicked");
        }
    }
    if watcher.join().is_err() || prober.join().is_err() {
        eprintln!("soak: a watcher panicked");
    }
    node.stop()?;
    cleanup(&dir);
    let refused = failures.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!("soak: {refused} submissions were refused or failed");
    }
    if samples.iter().all(|s| s.jobs_per_sec == 0.0) {
        return Err(check("no job ended during the soak"));
    }
    if probe_failed.load(Ordering::Relaxed) {
        return Err(check(
            "the scheduler probe stopped: the pauses it did not see would read as zero",
        ));
    }
    // The steady part: after the first third (the first retention window and more).
    let steady = &samples[samples.len() / 3..];
    let per_period = 60.0 / plan.period.as_secs_f64();
    for (metric, unit, pick) in [
        ("rss", "bytes", (|s: &Sample| s.rss) as fn(&Sample) -> f64),
        ("heap", "bytes", |s: &Sample| s.heap),
        ("open_fds", "fd", |s: &Sample| s.fds),
        ("data_files", "file", |s: &Sample| s.files),
        ("data", "bytes", |s: &Sample| s.disk),
    ] {
        let ys: Vec<f64> = steady.iter().map(pick).collect();
        let (slope, mean) = slope(&ys);
        report.emit(
            "steady",
            metric,
            "slope_per_min",
            slope * per_period,
            &format!("{unit}/min"),
        )?;
        report.emit("steady", metric, "mean", mean, unit)?;
        report.emit(
            "steady",
            metric,
            "slope_share_of_mean_per_min",
            if mean > 0.0 {
                slope * per_period / mean
            } else {
                0.0
            },
            "ratio",
        )?;
    }
    let k = 5.min(samples.len() / 2).max(1);
    let mean = |s: &[Sample]| s.iter().map(|x| x.jobs_per_sec).sum::<f64>() / s.len() as f64;
    let first = mean(&samples[..k]);
    let last = mean(&samples[samples.len() - k..]);
    if first == 0.0 {
        return Err(check(
            "no job ended in the first periods: no throughput to compare",
        ));
    }
    report.emit("throughput", "first", "jobs_per_sec", first, "job/s")?;
    report.emit("throughput", "last", "jobs_per_sec", last, "job/s")?;
    report.emit(
        "throughput",
        "last_vs_first",
        "ratio",
        last / first,
        "ratio",
    )?;
    let pause = samples.iter().map(|s| s.max_pause_ms).fold(0.0, f64::max);
    report.emit("pause", "scheduler", "max_ms", pause, "ms")?;
    Ok(())
}
