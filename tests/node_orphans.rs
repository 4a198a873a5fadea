//! What pruned jobs left on disk when the node stopped before their janitor ran (a crash after
//! the `Pruned` record was durable): the next start removes it, and nothing else: not a kept
//! job's files, not those of an id not accepted yet, not a file cadre did not name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_for, Scratch, Server};

const LONG: Duration = Duration::from_secs(30);

/// The line the start-up sweep says when it is done.
const SWEPT: &str = "swept what pruned jobs left on disk";

fn plant_file(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"left behind\n").unwrap();
}

fn plant_dir(path: &Path) {
    std::fs::create_dir_all(path.join("deep")).unwrap();
    std::fs::write(path.join("deep/file"), b"left behind\n").unwrap();
}

#[test]
fn a_start_removes_what_pruned_jobs_left_and_nothing_else() {
    let dir = Scratch::new("orphans");
    // Keep one ended job: the first is pruned as soon as the second ends.
    let mut node = Server::start(
        dir.path(),
        &[
            ("CADRE_RETENTION_MAX_JOBS", "1"),
            ("CADRE_RETENTION_EVERY_MS", "100"),
        ],
    );
    let pruned = node.submit(&[], &["/bin/true"]);
    node.wait_state(pruned, "succeeded", LONG);
    let kept = node.submit(&[], &["/bin/true"]);
    node.wait_state(kept, "succeeded", LONG);
    wait_for("the first job is pruned", LONG, || {
        let (status, body) = node.get(&format!("/v1/jobs/{pruned}"));
        status == 404 && body["error"] == "pruned by retention"
    });
    node.stop();
    let future = kept + 1;

    // As if the node had stopped before the janitor ran: the pruned job's logs (heads and a
    // tail segment, two tasks) and scratch directories are back.
    let data = node.data_dir.clone();
    let (logs, scratch) = (data.join("logs"), data.join("scratch"));
    let removed_logs = [
        format!("{pruned}.0.out"),
        format!("{pruned}.0.err"),
        format!("{pruned}.0.out.00000000000000065536"),
        format!("{pruned}.1.err"),
        format!("{pruned}.1.out.00000000000000131072"),
    ];
    let removed_dirs = [format!("{pruned}.0"), format!("{pruned}.1")];
    // Left alone: the kept job's files (its own and more), those of ids not accepted yet, and
    // names cadre did not give.
    let left_logs = [
        format!("{kept}.0.out.00000000000000065536"),
        format!("{kept}.1.out"),
        format!("{future}.0.out"),
        format!("{future}.0.err"),
        "1000.0.out".to_owned(),
        "0.0.out".to_owned(),
        format!("{pruned}.0.out.bak"),
        format!("0{pruned}.0.out"),
        format!("{pruned}.0.log"),
        "notes.txt".to_owned(),
    ];
    let left_dirs = [
        format!("{kept}.1"),
        format!("{future}.0"),
        format!("{pruned}.0.tmp"),
        "lost+found".to_owned(),
    ];
    for name in removed_logs.iter().chain(&left_logs) {
        plant_file(&logs.join(name));
    }
    for name in removed_dirs.iter().chain(&left_dirs) {
        plant_dir(&scratch.join(name));
    }
    // In the data directory itself, names like a job's are not a job's files either.
    plant_file(&data.join(format!("{pruned}.0.out")));
    plant_dir(&data.join(format!("{pruned}.0")));
    let kept_own: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{kept}.0.")))
        .collect();
    assert!(
        kept_own.contains(&format!("{kept}.0.out")),
        "the kept job has its logs: {kept_own:?}"
    );

    node.spawn();
    // The sweep runs beside the node: its line says when it is done (the first start said
    // one too, with nothing to remove).
    wait_for("the start-up sweep is done", LONG, || {
        node.log_text().matches(SWEPT).count() >= 2
    });
    let log = node.log_text();
    let line = log.lines().filter(|l| l.contains(SWEPT)).nth(1).unwrap();
    for count in ["log_files=5", "scratch_dirs=2", "failures=0"] {
        assert!(line.contains(count), "{count} in: {line}");
    }
    for name in &removed_logs {
        assert!(!logs.join(name).exists(), "{name} was not removed");
    }
    for name in &removed_dirs {
        assert!(!scratch.join(name).exists(), "{name} was not removed");
    }
    for name in left_logs.iter().chain(&kept_own) {
        assert!(logs.join(name).exists(), "{name} was removed");
    }
    for name in &left_dirs {
        assert!(
            scratch.join(name).join("deep/file").exists(),
            "{name} was removed"
        );
    }
    assert!(data.join(format!("{pruned}.0.out")).exists());
    assert!(data.join(format!("{pruned}.0/deep/file")).exists());
    // The kept job is still whole: shown, with its output.
    assert_eq!(node.state(kept), "succeeded");
    let out = node.cli(&["logs", &kept.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
