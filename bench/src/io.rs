//! The `io` suite: the cpu crate's I/O engine, journal and launcher, measured side by side.
//!
//! Cases (medians over interleaved rounds, see `bench/README.md`):
//! - `durable_appends`: 64 concurrent appenders of 128-byte records to a journal on the
//!   io_uring backend vs the std backend; appends/s, appends per group commit, and the ratio.
//! - `fdatasync`: the disk's plain rate of 128-byte write + fdatasync, one at a time: the
//!   physical limit per batch. `appends_per_sync` divides the appends/s by it.
//! - `log_capture`: a child writing 1 GiB (64 MiB quick) of zeros to stdout, captured to a log
//!   file by the launcher: MiB/s, and the process's peak RSS while it ran.
//! - `spawn_reap`: `/bin/true` spawned and reaped through the launcher vs
//!   `std::process::Command` directly: spawns/s and the ratio; and the launcher again with
//!   its logs in a directory that already holds 100,000 other jobs' log files (20,000 quick),
//!   as a node's does after months: `launcher_crowded_vs_launcher` (target >= 0.9: starting a
//!   job must not cost more as the logs pile up).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cadre_cpu::journal::{Journal, JournalOptions};
use cadre_cpu::launcher::{CommandSpec, Launcher};
use cadre_cpu::{BackendSetting, IoEngine};

use crate::report::{baseline_first, median, rss_bytes, Reporter};
use crate::BenchError;

struct Plan {
    append_rounds: usize,
    append_secs: f64,
    sync_secs: f64,
    capture_bytes: u64,
    capture_rounds: usize,
    spawn_rounds: usize,
    spawns_per_round: usize,
    crowd: usize,
}

const APPENDERS: usize = 64;
const RECORD: usize = 128;

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            append_rounds: 2,
            append_secs: 0.5,
            sync_secs: 0.5,
            capture_bytes: 64 << 20,
            capture_rounds: 1,
            spawn_rounds: 2,
            spawns_per_round: 100,
            crowd: 20_000,
        }
    } else {
        Plan {
            append_rounds: 6,
            append_secs: 2.0,
            sync_secs: 2.0,
            capture_bytes: 1 << 30,
            capture_rounds: 3,
            spawn_rounds: 6,
            spawns_per_round: 500,
            crowd: 100_000,
        }
    }
}

/// Entry point of `cadre-bench io`.
pub fn run(quick: bool) -> Result<(), BenchError> {
    let plan = plan(quick);
    let report = Reporter::new("io");
    // The journal is shared by many appenders: a multi-thread runtime, as a server runs it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(durable(&plan, &report))?;
    drop(rt);
    // The launcher runs inside an actix arbiter in cadre, which is a current-thread runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = match IoEngine::new(BackendSetting::Uring) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("io: SKIP io_uring for capture and spawn ({e}); they run on std");
                IoEngine::new(BackendSetting::Std)?
            }
        };
        capture(&plan, &report, &engine).await?;
        spawn_reap(&plan, &report, &engine).await
    })
}

/// A scratch directory under the target dir's neighbour (`$TMPDIR`), removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch, BenchError> {
        let dir = std::env::temp_dir().join(format!("cadre-bench-{name}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("io: leaving {}: {e}", self.0.display());
        }
    }
}

/// The `durable_appends` and `fdatasync` cases.
async fn durable(plan: &Plan, report: &Reporter) -> Result<(), BenchError> {
    let std_engine = IoEngine::new(BackendSetting::Std)?;
    let uring = match IoEngine::new(BackendSetting::Uring) {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("io: SKIP the io_uring side: {e}; uring results are null");
            None
        }
    };

    // durable_appends, uring vs std, interleaved; each round on a fresh journal.
    let (mut u_rates, mut s_rates, mut u_batch, mut s_batch, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let scratch = Scratch::new("appends")?;
    for round in 0..=plan.append_rounds {
        let order = if baseline_first(round) {
            [false, true]
        } else {
            [true, false]
        };
        let mut pair = [0.0f64; 2];
        for is_uring in order {
            let engine = match (&uring, is_uring) {
                (Some(u), true) => u,
                (None, true) => continue,
                (_, false) => &std_engine,
            };
            let dir = scratch.0.join(format!("r{round}-{}", engine.backend()));
            let (rate, per_commit) = appends(engine, &dir, plan.append_secs).await?;
            std::fs::remove_dir_all(&dir)?;
            if round == 0 {
                continue; // warm-up
            }
            eprintln!(
                "io: durable_appends round {round} {}: {rate:.0}/s, {per_commit:.1} per commit",
                engine.backend()
            );
            if is_uring {
                u_rates.push(rate);
                u_batch.push(per_commit);
                pair[0] = rate;
            } else {
                s_rates.push(rate);
                s_batch.push(per_commit);
                pair[1] = rate;
            }
        }
        if round > 0 && uring.is_some() {
            ratios.push(pair[0] / pair[1]);
        }
    }
    report.emit(
        "durable_appends",
        "uring",
        "appends_per_sec",
        median(&u_rates),
        "append/s",
    )?;
    report.emit(
        "durable_appends",
        "std",
        "appends_per_sec",
        median(&s_rates),
        "append/s",
    )?;
    report.emit(
        "durable_appends",
        "uring",
        "appends_per_commit",
        median(&u_batch),
        "append",
    )?;
    report.emit(
        "durable_appends",
        "std",
        "appends_per_commit",
        median(&s_batch),
        "append",
    )?;
    report.emit(
        "durable_appends",
        "uring_vs_std",
        "appends_ratio",
        median(&ratios),
        "ratio",
    )?;

    // fdatasync: the physical limit.
    let syncs = fdatasync_rate(&scratch.0.join("sync.dat"), plan.sync_secs)?;
    report.emit("fdatasync", "plain", "syncs_per_sec", syncs, "sync/s")?;
    report.emit(
        "durable_appends",
        "uring",
        "appends_per_sync",
        median(&u_rates) / syncs,
        "ratio",
    )?;
    report.emit(
        "durable_appends",
        "std",
        "appends_per_sync",
        median(&s_rates) / syncs,
        "ratio",
    )?;
    Ok(())
}

/// One round of durable appends; returns (appends/s, appends per commit).
async fn appends(engine: &IoEngine, dir: &Path, secs: f64) -> Result<(f64, f64), BenchError> {
    let (journal, _) = Journal::open(dir, engine.clone(), JournalOptions::default()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(APPENDERS);
    for a in 0..APPENDERS {
        let j = journal.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut rec = vec![b'x'; RECORD];
                rec[..8].copy_from_slice(&(a as u64).to_le_bytes());
                j.append(rec).await?;
                n += 1;
            }
            Ok::<u64, cadre_cpu::CpuError>(n)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = journal.stats();
    journal.close().await;
    if stats.appends != total {
        return Err(BenchError::Check(format!(
            "journal made {} appends durable, appenders counted {total}",
            stats.appends
        )));
    }
    Ok((
        total as f64 / elapsed,
        stats.appends as f64 / stats.commits.max(1) as f64,
    ))
}

/// 128-byte write + fdatasync, one at a time, for `secs`: syncs per second.
fn fdatasync_rate(path: &Path, secs: f64) -> Result<f64, BenchError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let rec = [b'y'; RECORD];
    let start = Instant::now();
    let mut n = 0u64;
    let mut off = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&rec, off)?;
        f.sync_data()?;
        off += RECORD as u64;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Peak resident set size of this process, sampled every 5 ms while `running` is set.
fn rss_sampler(running: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64, BenchError>> {
    std::thread::spawn(move || {
        let mut peak = 0u64;
        while running.load(Ordering::Relaxed) {
            peak = peak.max(rss_bytes()?);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(peak.max(rss_bytes()?))
    })
}

fn spec(argv: &[&str], dir: &Path, name: &str) -> CommandSpec {
    CommandSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdout_log: dir.join(format!("{name}.out")),
        stderr_log: dir.join(format!("{name}.err")),
        ..CommandSpec::default()
    }
}

/// A child writes `capture_bytes` of zeros to stdout; the launcher captures it to a log file.
async fn capture(plan: &Plan, report: &Reporter, engine: &IoEngine) -> Result<(), BenchError> {
    let scratch = Scratch::new("capture")?;
    let launcher = Launcher::new(engine.clone());
    let count = plan.capture_bytes.to_string();
    let (mut rates, mut peaks) = (Vec::new(), Vec::new());
    let base = rss_bytes()?;
    for round in 0..plan.capture_rounds {
        let running = Arc::new(AtomicBool::new(true));
        let sampler = rss_sampler(Arc::clone(&running));
        let start = Instant::now();
        let mut child = launcher.spawn(
            &spec(&["head", "-c", &count, "/dev/zero"], &scratch.0, "big"),
            "bench-capture",
        )?;
        let exit = child.wait().await?;
        let secs = start.elapsed().as_secs_f64();
        running.store(false, Ordering::Relaxed);
        let peak = sampler
            .join()
            .map_err(|_| BenchError::Check("the RSS sampler panicked".into()))??;
        let on_disk = std::fs::metadata(scratch.0.join("big.out"))?.len();
        if exit.stdout_bytes != plan.capture_bytes || on_disk != plan.capture_bytes {
            return Err(BenchError::Check(format!(
                "captured {} bytes ({} on disk) of {}",
                exit.stdout_bytes, on_disk, plan.capture_bytes
            )));
        }
        let mib_s = plan.capture_bytes as f64 / (1 << 20) as f64 / secs;
        eprintln!(
            "io: log_capture round {round}: {mib_s:.0} MiB/s, peak RSS {:.1} MiB",
            peak as f64 / (1 << 20) as f64
        );
        rates.push(mib_s);
        peaks.push(peak as f64 / (1 << 20) as f64);
        std::fs::remove_file(scratch.0.join("big.out"))?;
    }
    report.emit(
        "log_capture",
        "launcher",
        "mib_per_sec",
        median(&rates),
        "MiB/s",
    )?;
    report.emit(
        "log_capture",
        "launcher",
        "peak_rss_mib",
        peaks.iter().copied().fold(0.0, f64::max),
        "MiB",
    )?;
    report.emit(
        "log_capture",
        "launcher",
        "rss_before_mib",
        base as f64 / (1 << 20) as f64,
        "MiB",
    )?;
    Ok(())
}

/// How a spawn-and-reap round starts `/bin/true`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spawner {
    /// The launcher: process group, null stdin, two pipes captured to two log files.
    Launcher,
    /// The launcher, its logs among many other jobs' log files.
    LauncherCrowded,
    /// `std::process::Command::status()`: inherited stdio, blocking wait.
    Std,
    /// `std::process::Command` doing the same job the simplest way: process group, null stdin,
    /// stdout and stderr opened on the two log files, blocking wait.
    StdLogs,
}

impl Spawner {
    fn name(self) -> &'static str {
        match self {
            Spawner::Launcher => "launcher",
            Spawner::LauncherCrowded => "launcher_crowded",
            Spawner::Std => "std_command",
            Spawner::StdLogs => "std_command_logs",
        }
    }
}

/// One `/bin/true`, started and reaped by `how`.
async fn spawn_once(
    how: Spawner,
    launcher: &Launcher,
    dir: &Path,
    i: usize,
) -> Result<(), BenchError> {
    use std::os::unix::process::CommandExt;
    let name = format!("t{}", i % 8);
    let ok = match how {
        Spawner::Launcher | Spawner::LauncherCrowded => {
            let mut p = launcher.spawn(&spec(&["/bin/true"], dir, &name), "bench-spawn")?;
            p.wait().await?.outcome.success()
        }
        // Plain std, blocking this thread as a program without a runtime would.
        Spawner::Std => std::process::Command::new("/bin/true").status()?.success(),
        Spawner::StdLogs => {
            let out = std::fs::File::create(dir.join(format!("{name}.out")))?;
            let err = std::fs::File::create(dir.join(format!("{name}.err")))?;
            std::process::Command::new("/bin/true")
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .status()?
                .success()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(BenchError::Check(format!(
            "/bin/true via {} failed",
            how.name()
        )))
    }
}

/// `/bin/true` through the launcher vs `std::process::Command`, interleaved (the order rotates
/// each round).
async fn spawn_reap(plan: &Plan, report: &Reporter, engine: &IoEngine) -> Result<(), BenchError> {
    let scratch = Scratch::new("spawn")?;
    let crowded = Scratch::new("spawn-crowded")?;
    for i in 0..plan.crowd {
        for stream in ["out", "err"] {
            std::fs::File::create(crowded.0.join(format!("{}.0.{stream}", 1_000_000 + i)))?;
        }
    }
    let launcher = Launcher::new(engine.clone());
    let all = [
        Spawner::Std,
        Spawner::Launcher,
        Spawner::StdLogs,
        Spawner::LauncherCrowded,
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let (mut vs_std, mut vs_logs, mut crowded_vs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=plan.spawn_rounds {
        let mut this = [0.0f64; 4];
        for k in 0..all.len() {
            let idx = (k + round) % all.len();
            let how = all[idx];
            let dir = if how == Spawner::LauncherCrowded {
                &crowded.0
            } else {
                &scratch.0
            };
            let start = Instant::now();
            for i in 0..plan.spawns_per_round {
                spawn_once(how, &launcher, dir, i).await?;
            }
            this[idx] = plan.spawns_per_round as f64 / start.elapsed().as_secs_f64();
            if round > 0 {
                eprintln!(
                    "io: spawn_reap round {round} {}: {:.0}/s",
                    how.name(),
                    this[idx]
                );
                rates[idx].push(this[idx]);
            }
        }
        if round > 0 {
            vs_std.push(this[1] / this[0]);
            vs_logs.push(this[1] / this[2]);
            crowded_vs.push(this[3] / this[1]);
        }
    }
    for (idx, how) in all.iter().enumerate() {
        report.emit(
            "spawn_reap",
            how.name(),
            "spawns_per_sec",
            median(&rates[idx]),
            "spawn/s",
        )?;
    }
    report.emit(
        "spawn_reap",
        "launcher_vs_std",
        "spawns_ratio",
        median(&vs_std),
        "ratio",
    )?;
    report.emit(
        "spawn_reap",
        "launcher_vs_std_logs",
        "spawns_ratio",
        median(&vs_logs),
        "ratio",
    )?;
    report.emit(
        "spawn_reap",
        "launcher_crowded_vs_launcher",
        "spawns_ratio",
        median(&crowded_vs),
        "ratio",
    )?;
    Ok(())
}
