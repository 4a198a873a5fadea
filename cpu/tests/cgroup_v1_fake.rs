//! The v1 task group's bookkeeping on a fake machine (plain files, no privileges), where the
//! kernel's rare answers can be staged: a process exiting as it is placed, a CPU limit the
//! kernel refuses, an OOM kill counted after the count was first read, a placement into a group
//! already found empty. Each would otherwise need a race with the kernel to be seen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use cadre_cpu::cgroup::{CgroupLimits, Cgroups, Controller, TaskCgroup};
use cadre_cpu::CpuError;
use common::dead;
use common::fake::{placeable_v1, put};

/// The limits of the tests' tasks: a quarter core, which v1 writes as quota, period and shares.
const QUARTER: CgroupLimits = CgroupLimits {
    cpu_millis: 250,
    memory_bytes: 0,
    pids: None,
};

/// The text of `dir/file`, trimmed.
fn read(dir: &Path, file: &str) -> String {
    let path = dir.join(file);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Sets the OOM kill count the kernel would show in the group's `memory.oom_control`.
fn oom_count(task: &TaskCgroup, kills: u64) {
    put(
        task.path(Controller::Memory),
        "memory.oom_control",
        &format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"),
    );
}

/// Creates the group `t1`, with no OOM kill counted.
fn task(cg: &Cgroups, limits: &CgroupLimits) -> TaskCgroup {
    let task = cg.create("t1", limits).unwrap();
    oom_count(&task, 0);
    task
}

/// A spare keeps what its last task wrote; if the kernel refused a CPU write, the group keeps its
/// CPU limits pending and a spare made of it claims none: the next task with the same limits
/// writes the period and the weight again instead of trusting files that never got them.
#[tokio::test]
async fn a_failed_cpu_write_leaves_the_limits_pending() {
    let s = placeable_v1();
    let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
    let first = task(&cg, &QUARTER);
    let cpu = first.path(Controller::Cpu).to_path_buf();
    // The kernel refuses the weight (EINVAL on cgroupfs; a directory here).
    fs::remove_file(cpu.join("cpu.shares")).unwrap();
    fs::create_dir(cpu.join("cpu.shares")).unwrap();
    assert!(matches!(
        first.write_cpu_limits(),
        Err(CpuError::Cgroup { op: "write", .. })
    ));
    fs::remove_dir(cpu.join("cpu.shares")).unwrap();
    put(&cpu, "cpu.shares", "");
    first.kill_all().await.unwrap();
    assert!(first.try_keep().is_none(), "the empty group was not kept");
    assert_eq!(cg.spare_count(), 1);

    let second = cg.create("t1", &QUARTER).unwrap();
    assert_eq!(cg.spare_count(), 0, "the spare was not taken");
    fs::write(cpu.join("cpu.cfs_period_us"), "").unwrap();
    second.write_cpu_limits().unwrap();
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "25000");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read(&cpu, "cpu.shares"),
        "256",
        "the spare claimed a weight never written"
    );
}

/// The OOM count read while the task still ran (at its report, say) is not final: a kill can
/// still come before the group is empty. The count the release trusts is one read once the group
/// is empty, so a group whose late OOM kill was counted is not kept as a spare.
#[tokio::test]
async fn an_oom_kill_counted_after_an_early_read_keeps_the_group_from_reuse() {
    let s = placeable_v1();
    let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
    let task = task(&cg, &QUARTER);
    assert_eq!(task.oom_kills().unwrap(), 0);
    oom_count(&task, 1);
    task.kill_all().await.unwrap();
    let back = task.try_keep();
    assert!(back.is_some(), "a group with an OOM kill counted was kept");
    assert_eq!(cg.spare_count(), 0);
}

/// A group found empty is released without another look; a placement after that (a thread
/// spawning from inside it, or a child set to join it on exec) makes it not known empty again,
/// so the release empties it first instead of keeping processes in a spare.
#[tokio::test]
async fn a_placement_after_the_group_was_found_empty_makes_it_unknown_again() {
    for by_thread in [true, false] {
        let s = placeable_v1();
        let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
        let task = task(&cg, &QUARTER);
        task.kill_all().await.unwrap();
        if by_thread {
            let placed = task.run_inside(|| Ok(()), |_| Some(1));
            assert!(matches!(placed, Ok(Ok(()))), "{placed:?}");
        } else {
            let mut cmd = tokio::process::Command::new("true");
            task.join_on_exec(&mut cmd).unwrap();
        }
        let back = task.try_keep();
        assert!(
            back.is_some(),
            "a group placed into after it was found empty was kept (by thread: {by_thread})"
        );
        assert_eq!(cg.spare_count(), 0);
    }
}

/// The kernel leaves a process that has begun to exit where it is, answers the write of its pid
/// with success, and lists it in its groups until it is reaped: the placement by pid counts such
/// a process (here a zombie, and a pid already gone) as placed once it has been moved, instead of
/// moving it again for every round and failing the job (a shell's `mkdir` child, exiting as it
/// was moved, failed about one job in 300 under load). A live process that never lands in the
/// CPU group still fails the placement. The fake CPU `cgroup.procs` is `/dev/null`: writes vanish,
/// as the kernel's skip does, and it lists nothing.
#[test]
fn a_process_exiting_as_it_is_placed_counts_as_placed() {
    let s = placeable_v1();
    let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
    let task = cg.create("t1", &CgroupLimits::default()).unwrap();
    assert!(task.can_place_thread());
    let cpu_procs = task.path(Controller::Cpu).join("cgroup.procs");
    fs::remove_file(&cpu_procs).unwrap();
    std::os::unix::fs::symlink("/dev/null", &cpu_procs).unwrap();
    // More than one task counted: the rounds compare the freezer's list with the CPU group's.
    put(task.path(Controller::Pids), "pids.current", "3");

    let mut zombie = std::process::Command::new("true").spawn().unwrap();
    assert!(
        (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            dead(zombie.id())
        }),
        "`true` never exited"
    );
    let mut reaped = std::process::Command::new("true").spawn().unwrap();
    let gone = reaped.id();
    reaped.wait().unwrap();
    let freezer = task.path(Controller::Freezer).join("cgroup.procs");
    fs::write(&freezer, format!("{}\n{gone}\n", zombie.id())).unwrap();
    let placed = task.run_inside(|| Ok(()), |_| Some(zombie.id()));
    assert!(matches!(placed, Ok(Ok(()))), "{placed:?}");

    let mut live = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    fs::write(&freezer, format!("{}\n{}\n", zombie.id(), live.id())).unwrap();
    match task.run_inside(|| Ok(()), |_| Some(live.id())) {
        Err(CpuError::Cgroup {
            op: "write",
            path,
            source,
        }) => {
            assert_eq!(path, cpu_procs);
            assert!(source.to_string().contains("16 rounds"), "{source}");
        }
        other => panic!("a live process outside the CPU group was taken as placed: {other:?}"),
    }
    live.kill().unwrap();
    live.wait().unwrap();
    zombie.wait().unwrap();
}

/// Copies the directory tree `from` to `to` (files and directories).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A group a killed node left under a slot's name (no sweep removed it) is taken only if it
/// could serve as a spare: one with an OOM kill counted is passed over, so the next task is not
/// reported "out of memory" for a kill that was not its own; the next name is used instead.
#[test]
fn a_leftover_group_with_an_oom_kill_is_passed_over() {
    let s = placeable_v1();
    let sys = s.path().join("sys/fs/cgroup");
    for dir in [
        "cpu,cpuacct",
        "my memory/process_api/abc",
        "pids",
        "freezer",
    ] {
        copy_tree(
            &sys.join(format!("{dir}/cadre/slot-0")),
            &sys.join(format!("{dir}/cadre/slot-1")),
        );
    }
    put(
        &sys.join("my memory/process_api/abc/cadre/slot-0"),
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
    let task = cg.create("t1", &QUARTER).unwrap();
    assert_eq!(
        task.name(),
        "slot-1",
        "the group with an OOM kill was taken"
    );
    // Passed over, left as it was for the next sweep.
    assert_eq!(
        read(
            &sys.join("my memory/process_api/abc/cadre/slot-0"),
            "memory.oom_control"
        ),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1"
    );
}
