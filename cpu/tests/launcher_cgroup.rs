//! Command jobs in cgroups, through the launcher: nothing a job starts outlives its main
//! process (a `setsid` child, which leaves the process group, is killed with the group), a job
//! that passes its memory limit is reported as killed for memory, and the group is gone
//! afterwards. Without writable cgroups these print SKIP (fail where `CADRE_REQUIRE_CGROUPS=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cadre_cpu::cgroup::{CgroupLimits, Controller};
use cadre_cpu::launcher::{CommandSpec, ExitOutcome, Launcher};
use cadre_cpu::{BackendSetting, IoEngine};
use common::cgroup::real;
use common::Scratch;

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for init to reap it is dead too.
        Ok(stat) => stat.contains(") Z "),
    }
}

async fn escapee_pid(file: &std::path::Path) -> u32 {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job never wrote its child's pid");
}

/// Starts a job whose child leaves the process group (`setsid -f`) and writes its pid.
fn escaping_job(dir: &std::path::Path) -> CommandSpec {
    let pid_file = dir.join("escapee.pid");
    CommandSpec::new(
        [
            "/bin/sh",
            "-c",
            &format!(
                "setsid -f /bin/sh -c 'echo $$ > {}; exec sleep 1000' </dev/null >/dev/null 2>&1; sleep 0.2",
                pid_file.display()
            ),
        ],
        dir.join("out"),
        dir.join("err"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_leaves_the_process_group_dies_with_the_job_in_its_cgroup() {
    let Some(parent) = real("launcher-escape") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-escape");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());

    // Without a cgroup the child outlives the job: the gap the cgroup closes.
    let spec = escaping_job(dir.path());
    let mut process = launcher.spawn(&spec, "no-cgroup").unwrap();
    let pid = escapee_pid(&dir.path().join("escapee.pid")).await;
    process.wait().await.unwrap();
    assert!(!gone(pid), "without a cgroup the setsid child survives");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::fs::remove_file(dir.path().join("escapee.pid")).unwrap();

    let group = parent.create("job-1", &CgroupLimits::default()).unwrap();
    let group_dir = group.path(Controller::Memory).to_path_buf();
    let mut process = launcher.spawn_in(&spec, "cgroup", Some(group)).unwrap();
    let pid = escapee_pid(&dir.path().join("escapee.pid")).await;
    let report = tokio::time::timeout(Duration::from_secs(20), process.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, ExitOutcome::Code(0));
    assert!(!report.oom_killed);
    assert!(gone(pid), "the setsid child died with its job");
    assert!(!group_dir.exists(), "the job's cgroup is removed");
    drop(process);
    parent.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_memory_limit_is_reported_killed_for_memory() {
    let Some(parent) = real("launcher-oom") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-oom");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let group = parent
        .create(
            "job-2",
            &CgroupLimits {
                cpu_millis: 1000,
                memory_bytes: 32 << 20,
                pids: None,
            },
        )
        .unwrap();
    let spec = CommandSpec::new(
        [
            "/bin/sh",
            "-c",
            "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
        dir.path().join("out"),
        dir.path().join("err"),
    );
    let mut process = launcher.spawn_in(&spec, "oom", Some(group)).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), process.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(report.oom_killed, "{report:?}");
    drop(process);
    parent.finish().await;
}
