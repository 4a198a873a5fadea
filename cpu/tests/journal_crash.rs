//! Crash consistency of the journal: a child process appends from several concurrent appenders
//! and is SIGKILLed at a random moment, at least 200 times; after each recovery every
//! acknowledged record is present, in order, and nothing unacknowledged appears out of order.
//! Iterations alternate the io_uring and std backends over one directory, and every tenth one
//! compacts, so recovery also crosses backends, snapshots and many torn tails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cadre_cpu::journal::{Journal, JournalOptions};
use cadre_cpu::{BackendSetting, IoEngine};
use common::Scratch;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DIR_ENV: &str = "CADRE_CRASH_CHILD_DIR";
const RUN_ENV: &str = "CADRE_CRASH_CHILD_RUN";
const BACKEND_ENV: &str = "CADRE_CRASH_CHILD_BACKEND";
const APPENDERS: u32 = 8;

fn options() -> JournalOptions {
    // Small segments, so crashes also land in rolls.
    JournalOptions {
        segment_bytes: 16 << 10,
        ..JournalOptions::default()
    }
}

fn record(run: u32, appender: u32, seq: u32) -> Vec<u8> {
    // ~128 bytes, the size the benchmark uses.
    let mut r = format!("{run}:{appender}:{seq}:").into_bytes();
    r.resize(128, b'.');
    r
}

fn parse(rec: &[u8]) -> (u32, u32, u32) {
    let s = std::str::from_utf8(rec).unwrap();
    let mut it = s.split(':');
    let mut next = || it.next().unwrap().parse::<u32>().unwrap();
    (next(), next(), next())
}

/// Writes a line straight to stdout (libtest's capture only sees `print!`), flushed at once.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The child: appends until killed, printing "ack run appender seq" once each is durable.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let run: u32 = std::env::var(RUN_ENV).unwrap().parse().unwrap();
    let backend: BackendSetting = std::env::var(BACKEND_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let engine = IoEngine::new(backend).unwrap();
        let (journal, _) = Journal::open(&dir, engine, options()).await.unwrap();
        say("ready");
        let mut tasks = Vec::new();
        for a in 0..APPENDERS {
            let j = journal.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0.. {
                    j.append(record(run, a, seq)).await.unwrap();
                    say(&format!("ack {run} {a} {seq}"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let iterations: u32 = std::env::var("CADRE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = Scratch::new("journal-crash");
    let mut rng = SmallRng::seed_from_u64(0xc4a5);
    let uring_ok = IoEngine::new(BackendSetting::Uring).is_ok();
    if !uring_ok {
        if std::env::var("CADRE_REQUIRE_URING").as_deref() == Ok("1") {
            panic!("io_uring required (CADRE_REQUIRE_URING=1) but unavailable");
        }
        println!("SKIP io_uring iterations: io_uring unavailable, all iterations use std");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Highest acknowledged seq per (run, appender).
    let mut acked: HashMap<(u32, u32), u32> = HashMap::new();
    let (mut torn, mut total_acks, mut early) = (0u32, 0usize, 0u32);
    for run in 0..iterations {
        let backend = if run % 2 == 0 && uring_ok {
            "uring"
        } else {
            "std"
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env(RUN_ENV, run.to_string())
            .env(BACKEND_ENV, backend)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let line = match line {
                    Ok(line) => line,
                    // Killed mid-line: what came before is all there is.
                    Err(e) => {
                        eprintln!("child stdout ended with {e}");
                        break;
                    }
                };
                if line.ends_with("ready") {
                    ready = true;
                    ready_tx.send(()).unwrap();
                }
                if let Some(rest) = line.strip_prefix("ack ") {
                    let v: Vec<u32> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                    acks.push((v[0], v[1], v[2]));
                }
            }
            (ready, acks)
        });
        // Most kills land while appending; one in eight lands during start-up and recovery.
        if rng.random_range(0..8) == 0 {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..15)));
        } else {
            ready_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("child never became ready");
            std::thread::sleep(Duration::from_millis(rng.random_range(1..40)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (ready, acks) = reader.join().unwrap();
        for (r, a, s) in acks {
            assert_eq!(r, run);
            let e = acked.entry((r, a)).or_insert(s);
            assert!(s >= *e || s == 0, "acks per appender come in order");
            *e = s.max(*e);
            total_acks += 1;
        }

        // Recover in this process and check every property.
        rt.block_on(async {
            // Recover with the other backend than the child wrote with: the format is one.
            let other = if backend == "uring" {
                BackendSetting::Std
            } else {
                BackendSetting::Auto
            };
            let engine = IoEngine::new(other).unwrap();
            let (journal, rec) = Journal::open(dir.path(), engine, options())
                .await
                .unwrap_or_else(|e| panic!("run {run}: recovery failed: {e}"));
            if rec.torn_tail.is_some() {
                torn += 1;
            }
            let mut all: Vec<Vec<u8>> = match &rec.snapshot {
                Some(s) => s
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| l.to_vec())
                    .collect(),
                None => Vec::new(),
            };
            all.extend(rec.records.iter().cloned());
            let mut next: HashMap<(u32, u32), u32> = HashMap::new();
            let mut last_run = 0;
            for r in &all {
                let (rr, a, s) = parse(r);
                assert!(
                    rr >= last_run,
                    "run {run}: records of run {rr} after run {last_run}"
                );
                last_run = rr;
                let want = next.entry((rr, a)).or_insert(0);
                assert_eq!(
                    s, *want,
                    "run {run}: appender {rr}/{a} out of order or with a gap"
                );
                *want += 1;
            }
            for (&(r, a), &hi) in &acked {
                let have = next.get(&(r, a)).copied().unwrap_or(0);
                assert!(
                    have > hi,
                    "run {run}: acknowledged {r}/{a}/{hi} lost (have {have})"
                );
                // At most the one append in flight when killed appears unacknowledged.
                assert!(
                    have <= hi + 2,
                    "run {run}: {r}/{a} has {have} records, acked up to {hi}"
                );
            }
            if run % 10 == 9 {
                let mut snap = Vec::new();
                for r in &all {
                    snap.extend_from_slice(r);
                    snap.push(b'\n');
                }
                journal.compact(snap).await.unwrap();
            }
            journal.close().await;
        });
        if !ready {
            early += 1;
        }
    }
    println!(
        "{iterations} SIGKILLs ({early} before the journal opened): {total_acks} acknowledged appends, all recovered in order; {torn} torn tails truncated"
    );
    assert!(total_acks > 0);
}
