//! The `scheduler` suite: scheduling decisions at scale, memory per queued job, and durable
//! submission through the job store.
//!
//! - `decision`: one [`Placer::decide`] at a time against 10,000 registered workers (synthetic
//!   capacity) and 100,000 queued jobs of mixed shapes (a tenth want GPUs, some gangs), with
//!   completions releasing capacity so the cluster stays full and decisions keep meeting jobs
//!   that do not fit. Each decision is timed on its own; p50, p99 and max are reported (target:
//!   p99 <= 1 ms). The same decisions against 10 workers and 1,000 jobs run alongside, as the
//!   small-cluster reference.
//! - `queued_memory`: resident memory of 1,000,000 queued jobs, as the node holds them: the job
//!   table's entries (spec, status) and the scheduler's queue (target <= 1 GiB). It runs first,
//!   on a fresh heap, and also reports live heap bytes per job from the counting allocator.
//! - `store_submit`: jobs accepted durably per second through the job store: batches of 1,000
//!   no-op workload specs, up to 64 batches in flight (one record and one journal frame per
//!   batch, group-committed).
//!
//! - `store_replay`: start-up time of the job store from a journal tail of 1,000,000 records
//!   (the default distance between snapshots; 100,000 with `--quick`): a job's leased, started
//!   and ended records, 3 per job, then `Store::open` timed. This is the start-up bound the
//!   snapshots keep.
//! - `snapshot_pause`: the longest the scheduler stops answering while a snapshot of 1,000,000
//!   jobs is written (see `snapshot.rs`; target <= 10 ms).
//! - `e2e_noop`, `e2e_true`, `node_queued_memory`: a real node over its API (see `e2e.rs`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant as StdInstant;

use cadre_actors::job::{JobKind, JobSpec, Resources, WorkloadJob};
use cadre_actors::sched::Grant;
use cadre_actors::sched::{Placer, PlacerConfig, QueuedJob, WorkerCapacity};
use cadre_actors::store::{Outcome, Record, Store, StoreOptions, Submission};
use cadre_actors::{FencingToken, JobState};
use cadre_actors::{JobId, WorkerId};
use cadre_cpu::{BackendSetting, IoEngine};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::alloc::live_bytes;
use crate::report::{rss_bytes, selected, Reporter};
use crate::BenchError;

struct Plan {
    decisions: usize,
    queued_jobs: u64,
    submit_batches: usize,
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            decisions: 20_000,
            queued_jobs: 200_000,
            submit_batches: 200,
        }
    } else {
        Plan {
            decisions: 200_000,
            queued_jobs: 1_000_000,
            submit_batches: 2_000,
        }
    }
}

/// Runs the suite.
pub fn run(quick: bool) -> Result<(), BenchError> {
    let plan = plan(quick);
    let report = Reporter::new("scheduler");
    // First, on a fresh heap, so freed memory of other cases does not hide RSS growth.
    if selected("queued_memory") {
        queued_memory(&plan, &report)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if selected("decision") {
            let small = decisions(&plan, &report, 10, 1_000, "small_10w_1kq")?;
            let large = decisions(&plan, &report, 10_000, 100_000, "large_10kw_100kq")?;
            report.emit(
                "decision",
                "large_vs_small",
                "p99_ratio",
                large / small,
                "ratio",
            )?;
        }
        if selected("store_submit") {
            store_submit(&plan, &report).await?;
        }
        if selected("store_replay") {
            store_replay(quick, &report).await?;
        }
        Ok::<(), BenchError>(())
    })?;
    drop(rt);
    if selected("snapshot_pause") {
        crate::snapshot::run(quick, &report)?;
    }
    crate::e2e::run(quick, &report)
}

fn job_shape(rng: &mut SmallRng) -> (Resources, u32) {
    let gpus = if rng.random_range(0..10) == 0 {
        rng.random_range(1..=2)
    } else {
        0
    };
    let gang = if rng.random_range(0..50) == 0 {
        rng.random_range(2..=4)
    } else {
        1
    };
    (
        Resources {
            cpu_millis: rng.random_range(1..=16) * 250,
            memory_bytes: rng.random_range(1..=32u64) * (256 << 20),
            gpus,
        },
        gang,
    )
}

fn decisions(
    plan: &Plan,
    report: &Reporter,
    workers: u64,
    queued: u64,
    imp: &str,
) -> Result<f64, BenchError> {
    let mut rng = SmallRng::seed_from_u64(7);
    let epoch = Instant::now();
    let mut placer = Placer::new(PlacerConfig::default(), epoch);
    for w in 0..workers {
        let gpus = if w % 8 == 0 { (0..8).collect() } else { vec![] };
        placer
            .add_worker(
                WorkerId(w),
                &WorkerCapacity {
                    cpu_millis: 16_000,
                    memory_bytes: 64 << 30,
                    gpus,
                },
            )
            .map_err(|e| BenchError::Check(format!("add worker: {e}")))?;
    }
    let mut next_job = 0u64;
    let enqueue = |placer: &mut Placer, rng: &mut SmallRng, next_job: &mut u64| {
        let (resources, gang) = job_shape(rng);
        *next_job += 1;
        placer.enqueue(QueuedJob {
            job: JobId(*next_job),
            priority: rng.random_range(-5..=5) * 100,
            resources,
            gang,
            enqueued_at: Instant::now(),
        })
    };
    for _ in 0..queued {
        enqueue(&mut placer, &mut rng, &mut next_job);
    }
    // Fill the cluster first, untimed, so the timed decisions meet a full, churning cluster.
    let mut running: Vec<JobId> = Vec::new();
    while let Some(p) = placer.decide(Instant::now()) {
        running.push(p.job);
    }
    let mut samples: Vec<u64> = Vec::with_capacity(plan.decisions);
    let mut placed = 0usize;
    for _ in 0..plan.decisions {
        // A completion: a random running job releases its reservation, and a new job arrives,
        // keeping the queue at its length.
        if !running.is_empty() {
            let i = rng.random_range(0..running.len());
            let job = running.swap_remove(i);
            placer.release(job);
        }
        while (placer.waiting_len() as u64) < queued {
            enqueue(&mut placer, &mut rng, &mut next_job);
        }
        let now = Instant::now();
        let started = StdInstant::now();
        let decision = placer.decide(now);
        samples.push(started.elapsed().as_nanos() as u64);
        if let Some(p) = decision {
            placed += 1;
            running.push(p.job);
        }
    }
    placer
        .capacity()
        .check()
        .map_err(|e| BenchError::Check(format!("capacity invariant: {e}")))?;
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    report.emit("decision", imp, "p50_us", pct(0.50), "us")?;
    report.emit("decision", imp, "p99_us", pct(0.99), "us")?;
    report.emit("decision", imp, "max_us", pct(1.0), "us")?;
    report.emit(
        "decision",
        imp,
        "placed_share",
        placed as f64 / samples.len() as f64,
        "ratio",
    )?;
    Ok(pct(0.99))
}

pub(crate) fn noop_spec(i: u64) -> JobSpec {
    let mut spec = JobSpec::new(
        format!("noop-{i}"),
        JobKind::Workload(WorkloadJob {
            name: "noop".into(),
            params: serde_json::Value::Null,
        }),
    );
    // A no-op reserves no CPU, as the end-to-end no-op jobs ask (`cpu_millis: 0`).
    spec.resources.cpu_millis = 0;
    spec
}

fn queued_memory(plan: &Plan, report: &Reporter) -> Result<(), BenchError> {
    let before = rss_bytes()?;
    let heap_before = live_bytes();
    let epoch = Instant::now();
    let mut table = cadre_actors::store::JobTable::default();
    let mut placer = Placer::new(PlacerConfig::default(), epoch);
    let batch = 10_000u64;
    let mut next = 1u64;
    while next <= plan.queued_jobs {
        let jobs: Vec<Submission> = (next..next + batch)
            .map(|i| Submission::new(JobId(i), noop_spec(i), 1_700_000_000_000 + i))
            .collect();
        table
            .apply_owned(Record::Submitted { jobs })
            .map_err(|e| BenchError::Check(format!("submit: {e}")))?;
        for i in next..next + batch {
            placer.enqueue(QueuedJob {
                job: JobId(i),
                priority: 0,
                resources: Resources {
                    cpu_millis: 0,
                    ..Resources::default()
                },
                gang: 1,
                enqueued_at: epoch,
            });
        }
        next += batch;
    }
    let after = rss_bytes()?;
    let heap = live_bytes().saturating_sub(heap_before) as f64;
    let jobs = table.len() as f64;
    if placer.waiting_len() != table.len() {
        return Err(BenchError::Check("queue and table disagree".into()));
    }
    let mib = (after.saturating_sub(before)) as f64 / (1 << 20) as f64;
    let per_million = mib * 1e6 / jobs;
    report.emit("queued_memory", "table_and_queue", "jobs", jobs, "job")?;
    report.emit("queued_memory", "table_and_queue", "rss_mib", mib, "MiB")?;
    report.emit(
        "queued_memory",
        "table_and_queue",
        "heap_bytes_per_job",
        heap / jobs,
        "bytes",
    )?;
    report.emit(
        "queued_memory",
        "table_and_queue",
        "rss_mib_per_million_jobs",
        per_million,
        "MiB",
    )?;
    drop(placer);
    drop(table);
    Ok(())
}

async fn store_submit(plan: &Plan, report: &Reporter) -> Result<(), BenchError> {
    let dir = scratch()?;
    let engine = IoEngine::new(BackendSetting::Auto)?;
    let (mut store, _) = Store::open(&dir, engine, StoreOptions::default())
        .await
        .map_err(|e| BenchError::Check(format!("store open: {e}")))?;
    let batch = 1_000u64;
    let mut in_flight: VecDeque<tokio::task::JoinHandle<Result<(), cadre_actors::Error>>> =
        VecDeque::new();
    let started = StdInstant::now();
    for b in 0..plan.submit_batches as u64 {
        let specs = (0..batch).map(|i| noop_spec(b * batch + i)).collect();
        let (_, durable) = store
            .submit(specs, 0)
            .await
            .map_err(|e| BenchError::Check(format!("submit: {e}")))?;
        in_flight.push_back(tokio::spawn(durable));
        if in_flight.len() >= 64 {
            if let Some(h) = in_flight.pop_front() {
                h.await?
                    .map_err(|e| BenchError::Check(format!("durable: {e}")))?;
            }
        }
    }
    for h in in_flight {
        h.await?
            .map_err(|e| BenchError::Check(format!("durable: {e}")))?;
    }
    let secs = started.elapsed().as_secs_f64();
    store.close().await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("scheduler: leaving {}: {e}", dir.display());
    }
    let jobs = plan.submit_batches as f64 * batch as f64;
    report.emit(
        "store_submit",
        "batch_1000",
        "jobs_per_sec",
        jobs / secs,
        "job/s",
    )?;
    Ok(())
}

fn scratch() -> Result<PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("cadre-bench-sched-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes `records` records (a job's leased, started and ended, 3 per job) after one submission
/// batch per 1,000 jobs, then times `Store::open` replaying all of them (no snapshot).
async fn store_replay(quick: bool, report: &Reporter) -> Result<(), BenchError> {
    let records: u64 = if quick { 100_000 } else { 1_000_000 };
    let jobs = records / 3;
    let dir = scratch()?.join("replay");
    let options = StoreOptions {
        snapshot_every: u64::MAX,
        ..StoreOptions::default()
    };
    let engine = IoEngine::new(BackendSetting::Auto)?;
    let (mut store, _) = Store::open(&dir, engine.clone(), options.clone())
        .await
        .map_err(|e| BenchError::Check(format!("store open: {e}")))?;
    let fail = |e: cadre_actors::Error| BenchError::Check(format!("commit: {e}"));
    let mut pending = VecDeque::new();
    let mut written = 0u64;
    let mut token = 0u64;
    let write_started = StdInstant::now();
    for first in (0..jobs).step_by(1_000) {
        let n = 1_000.min(jobs - first);
        let (ids, durable) = store
            .submit((0..n).map(noop_spec).collect(), 0)
            .await
            .map_err(fail)?;
        pending.push_back(durable);
        written += 1;
        for job in ids {
            token += 1;
            let grants = vec![Grant {
                worker: WorkerId(1),
                task: 0,
                cpu_millis: 0,
                memory_bytes: 0,
                gpus: Vec::new(),
            }];
            for record in [
                Record::Leased {
                    job,
                    attempt: 1,
                    grants,
                    tokens: vec![FencingToken(token)],
                    nodes: Vec::new(),
                },
                Record::Started { job, attempt: 1 },
                Record::Ended {
                    job,
                    attempt: 1,
                    state: JobState::Succeeded,
                    outcome: Outcome {
                        exit_code: Some(0),
                        ..Outcome::default()
                    },
                    ended_ms: 1_700_000_000_000,
                },
            ] {
                pending.push_back(store.commit(record).await.map_err(fail)?);
                written += 1;
            }
            while pending.len() > 4_096 {
                if let Some(d) = pending.pop_front() {
                    d.await.map_err(fail)?;
                }
            }
        }
    }
    for d in pending {
        d.await.map_err(fail)?;
    }
    let write_secs = write_started.elapsed().as_secs_f64();
    store.close().await;
    let started = StdInstant::now();
    let (store, recovery) = Store::open(&dir, engine, options)
        .await
        .map_err(|e| BenchError::Check(format!("reopen: {e}")))?;
    let secs = started.elapsed().as_secs_f64();
    if recovery.records as u64 != written || store.table().len() as u64 != jobs {
        return Err(BenchError::Check(format!(
            "replayed {} records and {} jobs, wrote {written} and {jobs}",
            recovery.records,
            store.table().len()
        )));
    }
    store.close().await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("scheduler: leaving {}: {e}", dir.display());
    }
    report.emit(
        "store_replay",
        "journal_tail",
        "records",
        written as f64,
        "record",
    )?;
    report.emit("store_replay", "journal_tail", "open_secs", secs, "s")?;
    // Writing them: one commit per record, durability awaited up to 4,096 records behind, as
    // the scheduler commits a job's leased, started and ended records.
    report.emit(
        "store_replay",
        "commit_one_by_one",
        "records_per_sec",
        written as f64 / write_secs,
        "record/s",
    )?;
    report.emit(
        "store_replay",
        "journal_tail",
        "records_per_sec",
        written as f64 / secs,
        "record/s",
    )?;
    Ok(())
}
