//! `snapshot_pause` (scheduler suite): the longest the scheduler stops answering while a snapshot
//! of 1,000,000 jobs is written (target <= 10 ms; 100,000 jobs with `--quick`).
//!
//! A real `Scheduler` actor under its supervisor, on its own actix thread, owning a journal that
//! holds the jobs (queued; no worker, so none is placed). A prober on another thread sends the
//! scheduler a cheap request (`Ready`) every millisecond and times each answer: first for as long
//! as the snapshot will take with no snapshot running (the baseline: the machine's own noise),
//! then while `TakeSnapshot` writes one. Reported: the longest and the 99th percentile answer of
//! both, the snapshot's own longest step on the actor thread, how long it took, and the ratio of
//! the two longest answers.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use cadre_actors::sched::PlacerConfig;
use cadre_actors::scheduler::{
    Ready, Retention, Scheduler, SchedulerConfig, TakeSnapshot, EVENT_CAPACITY,
};
use cadre_actors::store::{Store, StoreOptions};
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{SupervisorSpec, WorkerSpec};

use crate::report::{percentile, Reporter};
use crate::BenchError;

fn check(reason: impl Into<String>) -> BenchError {
    BenchError::Check(reason.into())
}

/// Answers of `Ready` timed every millisecond until `stop` is set.
async fn probe(scheduler: Addr<Scheduler>, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<f64> {
    let mut rtts = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let sent = Instant::now();
        if scheduler.send(Ready).await.is_err() {
            break;
        }
        rtts.push(sent.elapsed().as_secs_f64() * 1e3);

        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rtts
}

/// Writes `jobs` queued jobs into the journal of `config` and opens it for the scheduler.
async fn fill(
    config: &SchedulerConfig,
    jobs: u64,
) -> Result<(Store, cadre_actors::store::Recovery), BenchError> {
    let (engine, options) = (config.engine.clone(), config.store.clone());
    let dir = &config.journal_dir;
    let (mut store, _) = Store::open(dir, engine.clone(), options.clone())
        .await
        .map_err(|e| check(format!("store open: {e}")))?;
    let mut pending = Vec::new();
    for first in (0..jobs).step_by(1_000) {
        let n = 1_000.min(jobs - first);
        let specs = (0..n).map(crate::scheduler::noop_spec).collect();
        let (_, durable) = store
            .submit(specs, 1_700_000_000_000)
            .await
            .map_err(|e| check(format!("submit: {e}")))?;
        pending.push(durable);
    }
    for d in pending {
        d.await.map_err(|e| check(format!("durable: {e}")))?;
    }
    store.close().await;
    Store::open(dir, engine, options)
        .await
        .map_err(|e| check(format!("reopen: {e}")))
}

/// Runs the case.
pub fn run(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    let jobs: u64 = if quick { 100_000 } else { 1_000_000 };
    let dir = crate::e2e::scratch("snapshot")?;
    let engine = IoEngine::new(BackendSetting::Auto)?;
    let options = StoreOptions {
        snapshot_every: u64::MAX,
        ..StoreOptions::default()
    };
    let config = Arc::new(SchedulerConfig {
        journal_dir: dir.clone(),
        engine,
        store: options,
        placer: PlacerConfig::default(),
        lease_ttl: Duration::from_secs(10),
        events: tokio::sync::broadcast::channel(EVENT_CAPACITY).0,
        handoff: Mutex::new(None),
        callbacks: None,
        health: OnceLock::new(),
        gpus_absent: None,
        retention: Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_jobs: usize::MAX,
            ..Retention::default()
        },
        janitor: None,
        // No worker comes: nothing is placed, the queue stays as it is.
        registration_grace: Duration::from_secs(3600),
    });
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = std::thread::Builder::new()
        .name("snapshot-scheduler".to_owned())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(async move {
                // The jobs, written as a node would have accepted them (batches of 1,000), on
                // this thread's runtime, where the journal's writer then lives.
                match fill(&config, jobs).await {
                    Ok(opened) => match config.handoff.lock() {
                        Ok(mut slot) => *slot = Some(opened),
                        Err(_) => return,
                    },
                    Err(e) => {
                        eprintln!("scheduler: snapshot_pause: {e}");
                        return;
                    }
                }
                let sc = Arc::clone(&config);
                let spec = WorkerSpec::new("scheduler", move || Scheduler::new(Arc::clone(&sc)))
                    .mailbox_capacity(65_536);
                let addr = spec.addr();
                let root = match SupervisorSpec::one_for_one()
                    .child(spec)
                    .start("bench")
                    .await
                {
                    Ok(root) => root,
                    Err(e) => {
                        eprintln!("scheduler: snapshot_pause tree did not start: {e}");
                        return;
                    }
                };
                if addr_tx.send(addr).is_err() {
                    eprintln!("scheduler: snapshot_pause bench left early");
                }
                if stop_rx.await.is_err() {
                    eprintln!("scheduler: snapshot_pause stop signal dropped");
                }
                if let Err(e) = root.stop().await {
                    eprintln!("scheduler: snapshot_pause tree stop: {e}");
                }
            });
        })?;
    let scheduler = addr_rx
        .recv()
        .map_err(|_| check("the scheduler's thread ended before it started"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        // Ready answers once the journal is open and the queue rebuilt (no worker: `Err`);
        // then a warm-up, so neither measurement pays for a cold start.
        for _ in 0..200 {
            if scheduler.send(Ready).await?.is_ok() {
                return Err(check("the scheduler has a worker"));
            }
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = tokio::spawn(probe(scheduler.clone(), Arc::clone(&stop)));
        let started = Instant::now();
        let done = scheduler
            .send(TakeSnapshot)
            .await?
            .map_err(|e| check(format!("snapshot: {e}")))?;
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let during = prober.await?;
        // The baseline: as long again, with no snapshot.
        stop.store(false, std::sync::atomic::Ordering::Relaxed);
        let prober = tokio::spawn(probe(scheduler.clone(), Arc::clone(&stop)));
        tokio::time::sleep(took.max(Duration::from_millis(500))).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let baseline = prober.await?;
        Ok::<_, BenchError>((done, took, during, baseline))
    });
    if stop_tx.send(()).is_err() {
        eprintln!("scheduler: snapshot_pause scheduler already gone");
    }
    if node.join().is_err() {
        eprintln!("scheduler: snapshot_pause scheduler thread panicked");
    }
    drop(rt);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("scheduler: leaving {}: {e}", dir.display());
    }
    let (done, took, mut during, mut baseline) = result?;
    if done.jobs as u64 != jobs || during.is_empty() || baseline.is_empty() {
        return Err(check(format!(
            "snapshot of {} jobs for {jobs}, {} and {} probes",
            done.jobs,
            during.len(),
            baseline.len()
        )));
    }
    during.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    let max = |v: &[f64]| v.last().copied().unwrap_or(0.0);
    let imp = if quick { "chunked_100k" } else { "chunked_1m" };
    report.emit("snapshot_pause", imp, "jobs", done.jobs as f64, "job")?;
    report.emit(
        "snapshot_pause",
        imp,
        "took_ms",
        took.as_secs_f64() * 1e3,
        "ms",
    )?;
    report.emit(
        "snapshot_pause",
        imp,
        "longest_step_ms",
        done.longest_step.as_secs_f64() * 1e3,
        "ms",
    )?;
    report.emit("snapshot_pause", imp, "max_pause_ms", max(&during), "ms")?;
    report.emit(
        "snapshot_pause",
        imp,
        "p99_pause_ms",
        percentile(&during, 0.99),
        "ms",
    )?;
    report.emit(
        "snapshot_pause",
        "no_snapshot",
        "max_pause_ms",
        max(&baseline),
        "ms",
    )?;
    report.emit(
        "snapshot_pause",
        "no_snapshot",
        "p99_pause_ms",
        percentile(&baseline, 0.99),
        "ms",
    )?;
    report.emit(
        "snapshot_pause",
        "during_vs_without",
        "max_ratio",
        max(&during) / max(&baseline).max(1e-3),
        "ratio",
    )?;
    Ok(())
}
