//! Job output on a node: a stream past its cap keeps its head and its tail with a marker
//! between, the disk never holds more than the cap, and `cadre logs` and `cadre status` say
//! what was dropped; `cadre logs -f` on a job that has not started waits for it to start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Scratch, Server, BIN};

const LONG: Duration = Duration::from_secs(30);

fn bytes_on_disk(dir: &std::path::Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn output_past_its_cap_keeps_its_head_and_tail_and_says_what_was_dropped() {
    let dir = Scratch::new("logs-cap");
    let cap = 256 * 1024u64;
    let node = Server::start(
        dir.path(),
        &[("CADRE_LOGS_MAX_BYTES_PER_STREAM", &cap.to_string())],
    );
    // About 2 MB of numbered lines: 1..=300000.
    let id = node.submit(&[], &["/usr/bin/seq", "1", "300000"]);
    node.wait_state(id, "succeeded", LONG);
    let on_disk = bytes_on_disk(&node.data_dir.join("logs"), &format!("{id}.0.out"));
    assert!(
        on_disk <= cap,
        "{on_disk} bytes on disk for a {cap}-byte cap"
    );

    // All of what was kept, head first (the default read is the last MiB of the stream).
    let text = node.get_text(&format!("/v1/jobs/{id}/logs?tail=100000000"));
    assert!(
        text.starts_with("1\n2\n3\n"),
        "the head is kept: {:?}",
        &text[..text.len().min(200)]
    );
    assert!(text.ends_with("299999\n300000\n"), "the tail is kept");
    assert!(
        text.contains("bytes of output dropped here"),
        "a marker where the middle was dropped"
    );
    assert!(text.len() as u64 <= cap + 512, "{} bytes read", text.len());
    let out = node.cli(&["logs", &id.to_string()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("300000\n"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("dropped past the per-stream cap"), "{said}");
    let status = node.cli(&["status", &id.to_string()]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("output") && status.contains("dropped"),
        "{status}"
    );
    let job = node.job(id);
    let dropped = job["outcome"]["logs"]["dropped_bytes"].as_u64().unwrap();
    let printed: u64 = (1..=300_000u64)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum();
    assert!(dropped > 0 && dropped + cap >= printed, "{job}");
}

#[test]
fn logs_follow_waits_for_a_queued_job_to_start() {
    let dir = Scratch::new("logs-follow-queued");
    let node = Server::start(dir.path(), &[("CADRE_WORKER_CPU_MILLIS", "1000")]);
    let blocker = node.submit(&["--cpus", "1"], &["/bin/sleep", "60"]);
    node.wait_state(blocker, "running", LONG);
    let queued = node.submit(
        &["--cpus", "1"],
        &["/bin/sh", "-c", "echo hello-from-a-queued-job"],
    );
    assert_eq!(node.state(queued), "queued");
    let mut follow = Command::new(BIN)
        .args(["--api", &node.api, "logs", "-f", &queued.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "cadre logs -f returned at once, before the job started"
    );
    let out = node.cli(&["cancel", &blocker.to_string()]);
    assert!(out.status.success());
    node.wait_state(queued, "succeeded", LONG);
    let deadline = std::time::Instant::now() + LONG;
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs -f did not end with the job"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let mut text = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "hello-from-a-queued-job\n");
}
