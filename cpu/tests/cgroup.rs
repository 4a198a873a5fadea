//! The cgroup suite. On the real machine (root, cgroups mounted): a child joins its group before
//! exec, the limit files hold the asked values, `kill_all` reaches processes that left the process
//! group and a fork loop, an OOM kill is a `SIGKILL` counted in `oom_kills`, an occupied group is
//! not reused, and `sweep` clears what a previous node left. Without writable cgroups those tests
//! print `SKIP` (or fail where `CADRE_REQUIRE_CGROUPS=1`). On fake roots (no privileges): v2 and
//! v1 detection, the values written, and the typed "unavailable" errors with their reasons.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cadre_cpu::cgroup::{
    CgroupLimits, CgroupVersion, Cgroups, Controller, TaskCgroup, HELD_SPARES,
};
use cadre_cpu::metrics as m;
use cadre_cpu::CpuError;
use common::cgroup::{real, real_v1};
use common::fake::{clean_memory, fake_hybrid, fake_v2, put, PROC_MOUNTS};
use common::{dead, Scratch};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::process::Command;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Real cgroups.

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn procs(task: &TaskCgroup, controller: Controller) -> Vec<u32> {
    read(task.path(controller).join("cgroup.procs"))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Spawns `argv` joined to `task`.
fn spawn(task: &TaskCgroup, argv: &[&str]) -> tokio::process::Child {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    task.join_on_exec(&mut cmd).unwrap();
    cmd.spawn().unwrap()
}

#[tokio::test]
async fn a_child_joins_its_group_before_exec_and_the_limits_are_written() {
    let Some(cg) = real("join") else { return };
    let limits = CgroupLimits {
        cpu_millis: 1500,
        memory_bytes: 64 * MIB,
        pids: Some(64),
    };
    let task = cg.create("t1", &limits).unwrap();
    assert_eq!(task.label(), "t1");
    // v1 groups are named by the node and reused; v2 groups after their task.
    let name = match cg.version() {
        CgroupVersion::V1 => "slot-0",
        CgroupVersion::V2 => "t1",
    };
    assert_eq!(task.name(), name);
    if cg.version() == CgroupVersion::V1 {
        // v1 writes the CPU limits once a process is about to join: a fresh group is open.
        let cpu = task.path(Controller::Cpu);
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1");
        assert_eq!(read(cpu.join("cpu.shares")), "1024");
        task.write_cpu_limits().unwrap();
    }
    match cg.version() {
        CgroupVersion::V1 => {
            let cpu = task.path(Controller::Cpu);
            assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "150000");
            assert_eq!(read(cpu.join("cpu.shares")), "1536");
            let mem = task.path(Controller::Memory);
            assert_eq!(
                read(mem.join("memory.limit_in_bytes")),
                (64 * MIB).to_string()
            );
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                assert_eq!(read(memsw), (64 * MIB).to_string());
            }
            assert!(read(mem.join("memory.oom_control")).contains("oom_kill_disable 0"));
        }
        CgroupVersion::V2 => {
            let dir = task.path(Controller::Cpu);
            assert_eq!(read(dir.join("cpu.max")), "150000 100000");
            assert_eq!(read(dir.join("cpu.weight")), "150");
            assert_eq!(read(dir.join("memory.max")), (64 * MIB).to_string());
        }
    }
    assert_eq!(read(task.path(Controller::Pids).join("pids.max")), "64");
    assert!(task.is_empty().unwrap());
    assert_eq!(task.oom_kills().unwrap(), 0);

    let mut child = spawn(&task, &["sleep", "30"]);
    let pid = child.id().unwrap();
    for controller in Controller::ALL {
        assert_eq!(procs(&task, controller), vec![pid], "{controller:?}");
    }
    let own = read(format!("/proc/{pid}/cgroup"));
    assert!(
        own.lines()
            .filter(|l| l.ends_with(&format!("/{name}")))
            .count()
            >= 1,
        "{own}"
    );
    assert!(!task.is_empty().unwrap());

    assert_eq!(task.kill_all().await.unwrap(), 1);
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    assert!(task.is_empty().unwrap());
    let dir = task.path(Controller::Memory).to_path_buf();
    task.remove().await.unwrap();
    assert!(!dir.exists());
    cg.finish().await;
}

#[tokio::test]
async fn zero_limits_are_no_quota_the_lowest_weight_and_no_memory_limit() {
    let Some(cg) = real("zero") else { return };
    let task = cg.create("idle", &CgroupLimits::default()).unwrap();
    let small = cg
        .create(
            "small",
            &CgroupLimits {
                cpu_millis: 5,
                ..CgroupLimits::default()
            },
        )
        .unwrap();
    task.write_cpu_limits().unwrap();
    small.write_cpu_limits().unwrap();
    match cg.version() {
        CgroupVersion::V1 => {
            assert_eq!(
                read(task.path(Controller::Cpu).join("cpu.cfs_quota_us")),
                "-1"
            );
            assert_eq!(read(task.path(Controller::Cpu).join("cpu.shares")), "2");
            let limit: u64 = read(task.path(Controller::Memory).join("memory.limit_in_bytes"))
                .parse()
                .unwrap();
            assert!(limit > 1 << 60, "{limit}");
            // 5 millicores is below the kernel's smallest quota, 1 ms per period.
            assert_eq!(
                read(small.path(Controller::Cpu).join("cpu.cfs_quota_us")),
                "1000"
            );
            assert_eq!(read(small.path(Controller::Cpu).join("cpu.shares")), "5");
        }
        CgroupVersion::V2 => {
            assert_eq!(
                read(task.path(Controller::Cpu).join("cpu.max")),
                "max 100000"
            );
            assert_eq!(read(task.path(Controller::Cpu).join("cpu.weight")), "1");
            assert_eq!(
                read(task.path(Controller::Memory).join("memory.max")),
                "max"
            );
            assert_eq!(
                read(small.path(Controller::Cpu).join("cpu.max")),
                "1000 100000"
            );
        }
    }
    assert_eq!(read(task.path(Controller::Pids).join("pids.max")), "max");
    task.remove().await.unwrap();
    small.remove().await.unwrap();
    cg.finish().await;
}

#[tokio::test]
async fn kill_all_reaches_a_process_that_left_the_process_group() {
    let Some(cg) = real("escape") else { return };
    let task = cg.create("esc", &CgroupLimits::default()).unwrap();
    let mut sh = spawn(&task, &["sh", "-c", "setsid -f sleep 1000; exit 0"]);
    assert!(sh.wait().await.unwrap().success());
    // The shell has exited; the sleep it started in a new session is still in the group.
    let mut left = Vec::new();
    for _ in 0..200 {
        left = procs(&task, Controller::Freezer);
        if !left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!dead(left[0]));

    assert_eq!(task.kill_all().await.unwrap(), 1);
    assert!(task.is_empty().unwrap());
    assert!(dead(left[0]), "pid {} survived", left[0]);
    assert_eq!(
        task.kill_all().await.unwrap(),
        0,
        "killing an empty group kills nothing"
    );
    let dirs: Vec<PathBuf> = Controller::ALL
        .iter()
        .map(|c| task.path(*c).to_path_buf())
        .collect();
    task.remove().await.unwrap();
    for dir in dirs {
        assert!(!dir.exists(), "{}", dir.display());
    }
    cg.finish().await;
}

#[tokio::test]
async fn kill_all_stops_a_fork_loop() {
    let Some(cg) = real("forkloop") else { return };
    let limits = CgroupLimits {
        pids: Some(40),
        ..CgroupLimits::default()
    };
    let task = cg.create("loop", &limits).unwrap();
    let mut sh = spawn(
        &task,
        &[
            "sh",
            "-c",
            "while :; do (setsid sleep 1000 &) 2>/dev/null; done",
        ],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = procs(&task, Controller::Pids).len();
    assert!(before > 2, "the loop forked only {before}");
    let killed = task.kill_all().await.unwrap();
    assert!(killed >= before.min(2), "killed {killed} of {before}");
    assert!(task.is_empty().unwrap());
    assert_eq!(sh.wait().await.unwrap().signal(), Some(9));
    task.remove().await.unwrap();
    cg.finish().await;
}

#[tokio::test]
async fn going_over_the_memory_limit_is_an_oom_kill() {
    let Some(cg) = real("oom") else { return };
    let limits = CgroupLimits {
        cpu_millis: 1000,
        memory_bytes: 32 * MIB,
        pids: Some(32),
    };
    let task = cg.create("oom", &limits).unwrap();
    assert_eq!(task.oom_kills().unwrap(), 0);
    let mut child = spawn(
        &task,
        &[
            "sh",
            "-c",
            r#"x=$(head -c 300000000 /dev/zero | tr '\0' a); echo ${#x}"#,
        ],
    );
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the allocation ran for a minute")
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(task.oom_kills().unwrap() >= 1);
    task.kill_all().await.unwrap();
    task.remove().await.unwrap();
    cg.finish().await;
}

/// A group that holds processes is never handed to another task: on v2 a task of the same name
/// is refused; on v1 (where the node names its groups) the next task gets another group, also
/// from a node started again whose numbering meets the occupied group a killed node left. Once
/// empty, that group serves again with the new task's limits.
#[tokio::test]
async fn an_occupied_group_is_never_handed_to_another_task() {
    let Some(cg) = real("reuse") else { return };
    let task = cg.create("t", &CgroupLimits::default()).unwrap();
    let mut child = spawn(&task, &["sleep", "30"]);
    match cg.version() {
        CgroupVersion::V2 => match cg.create("t", &CgroupLimits::default()) {
            Err(CpuError::CgroupNotEmpty { op, pids, .. }) => {
                assert_eq!((op, pids), ("create", 1));
            }
            other => panic!("expected CgroupNotEmpty, got {other:?}"),
        },
        CgroupVersion::V1 => {
            let other = cg.create("t", &CgroupLimits::default()).unwrap();
            assert_ne!(other.name(), task.name());
            other.remove().await.unwrap();
            let restarted = Cgroups::open(cg.parent()).unwrap();
            let fresh = restarted.create("u", &CgroupLimits::default()).unwrap();
            assert_ne!(fresh.name(), task.name(), "an occupied group was taken");
            fresh.remove().await.unwrap();
        }
    }
    match task.is_empty() {
        Ok(false) => {}
        other => panic!("the occupied group must stay as it was: {other:?}"),
    }
    task.kill_all().await.unwrap();
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    let limits = CgroupLimits {
        pids: Some(7),
        ..CgroupLimits::default()
    };
    let again = match cg.version() {
        CgroupVersion::V2 => cg.create("t", &limits).unwrap(),
        CgroupVersion::V1 => Cgroups::open(cg.parent())
            .unwrap()
            .create("v", &limits)
            .unwrap(),
    };
    assert_eq!(
        again.name(),
        task.name(),
        "the empty group was not used again"
    );
    assert_eq!(read(again.path(Controller::Pids).join("pids.max")), "7");
    again.remove().await.unwrap();
    cg.finish().await;
}

/// How many files this process holds open under `dir` (not counting `dir` itself).
fn open_under(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|p| p.starts_with(dir) && p != dir))
        .count()
}

/// The spares taken next keep their control files open and those pushed below them close theirs,
/// so idle spares hold a bounded number; a task that takes one of those opens them again. Before,
/// a spare that closed its files never opened them again, and under churn more and more groups
/// went by path at every task's start and end.
#[tokio::test]
async fn every_group_taken_from_the_spares_holds_its_control_files() {
    let Some(cg) = real_v1("held") else { return };
    let n = HELD_SPARES + 2;
    let limits = CgroupLimits::default();
    let groups: Vec<TaskCgroup> = (0..n)
        .map(|i| cg.create(&format!("h{i}"), &limits).unwrap())
        .collect();
    for group in groups {
        group.kill_all().await.unwrap();
        assert!(group.try_keep().is_none(), "an empty group was not kept");
    }
    assert_eq!(cg.spare_count(), n);
    let memory = cg.path(Controller::Memory);
    let idle = open_under(memory);
    assert!(idle > 0, "no spare holds its files");
    // Four per held spare: its memory directory, `tasks`, OOM count and usage.
    assert!(
        idle <= 4 * HELD_SPARES,
        "{idle} files open under {} for {n} spares",
        memory.display()
    );
    let mut taken = Vec::new();
    for i in 0..n {
        let task = cg.create(&format!("t{i}"), &limits).unwrap();
        assert_eq!(cg.spare_count(), n - i - 1, "no spare was taken");
        assert!(
            open_under(task.path(Controller::Memory)) > 0,
            "task {i}, in a spare, goes by path"
        );
        taken.push(task);
    }
    for task in taken {
        task.remove().await.unwrap();
    }
    cg.finish().await;
}

#[tokio::test]
async fn a_spawn_fails_when_its_group_is_gone() {
    let Some(cg) = real("gone") else { return };
    let task = cg.create("g", &CgroupLimits::default()).unwrap();
    for controller in Controller::ALL {
        let _ = fs::remove_dir(task.path(controller));
    }
    let mut cmd = Command::new("true");
    // v1 writes the pending CPU limits first, and finds the group gone; v2 fails in the child.
    match task.join_on_exec(&mut cmd) {
        Err(e) => assert_eq!(e.kind(), "cgroup", "{e}"),
        Ok(()) => {
            let err = cmd
                .spawn()
                .expect_err("the child must not run outside its group");
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        }
    }
    assert!(task.is_empty().unwrap());
    task.remove().await.unwrap();
    cg.finish().await;
}

#[tokio::test]
async fn sweep_removes_the_groups_a_previous_node_left() {
    let Some(cg) = real("sweep") else { return };
    let a = cg.create("a", &CgroupLimits::default()).unwrap();
    let b = cg
        .create(
            "b",
            &CgroupLimits {
                memory_bytes: 64 * MIB,
                ..CgroupLimits::default()
            },
        )
        .unwrap();
    let mut child = spawn(&a, &["sleep", "1000"]);
    let mut names = vec![a.name().to_string(), b.name().to_string()];
    names.sort();
    let dirs: Vec<PathBuf> = [&a, &b]
        .iter()
        .flat_map(|t| Controller::ALL.iter().map(|c| t.path(*c).to_path_buf()))
        .collect();
    // The previous node is killed: its handles are gone, its groups and their processes stay.
    drop((a, b));
    let next = Cgroups::open(cg.parent()).unwrap();
    assert_eq!(next.sweep().await.unwrap(), names);
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    for dir in dirs {
        assert!(!dir.exists(), "{}", dir.display());
    }
    assert_eq!(next.sweep().await.unwrap(), Vec::<String>::new());
    cg.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Fake roots: plain files laid out like a machine's /proc and /sys.

fn unavailable(result: Result<Cgroups, CpuError>) -> String {
    match result {
        Err(CpuError::CgroupUnavailable { reason }) => reason,
        other => panic!("expected CgroupUnavailable, got {other:?}"),
    }
}

#[test]
fn a_v2_root_is_detected_and_its_limits_written() {
    let s = fake_v2(false, &["t1", "idle"]);
    let own = s.path().join("sys/fs/cgroup/node.slice/cadre.service");
    let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V2);
    assert_eq!(cg.version().as_str(), "v2");
    for controller in Controller::ALL {
        assert_eq!(cg.path(controller), own.join("cadre"));
    }
    assert_eq!(
        read(own.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(
        read(own.join("cadre/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );

    let limits = CgroupLimits {
        cpu_millis: 2500,
        memory_bytes: 512 * MIB,
        pids: Some(100),
    };
    let task = cg.create("t1", &limits).unwrap();
    let dir = own.join("cadre/t1");
    assert_eq!(task.path(Controller::Memory), dir);
    assert_eq!(read(dir.join("cpu.max")), "250000 100000");
    assert_eq!(read(dir.join("cpu.weight")), "250");
    assert_eq!(read(dir.join("memory.max")), (512 * MIB).to_string());
    assert_eq!(read(dir.join("memory.swap.max")), "0");
    assert_eq!(read(dir.join("pids.max")), "100");
    assert_eq!(task.oom_kills().unwrap(), 2);
    assert!(task.is_empty().unwrap());
    // v2 places whole processes: the launcher's thread placement is not offered, and refused.
    assert!(!task.can_place_thread());
    let mut ran = false;
    let err = task
        .run_inside(
            || {
                ran = true;
                Ok(())
            },
            |_| None,
        )
        .unwrap_err();
    assert!(!ran);
    assert_eq!(err.kind(), "invalid", "{err}");
    assert!(!dir.join("tasks").exists());

    let idle = cg.create("idle", &CgroupLimits::default()).unwrap();
    let dir = own.join("cadre/idle");
    assert_eq!(idle.version(), CgroupVersion::V2);
    assert_eq!(read(dir.join("cpu.max")), "max 100000");
    assert_eq!(read(dir.join("cpu.weight")), "1");
    assert_eq!(read(dir.join("memory.max")), "max");
    assert_eq!(read(dir.join("memory.swap.max")), "max");
    assert_eq!(read(dir.join("pids.max")), "max");

    // A group the fake root does not lay out has no control files: the write fails with the
    // file named, and the directory made for it is removed again.
    match cg.create("bare", &limits) {
        Err(CpuError::Cgroup {
            op: "write", path, ..
        }) => {
            assert!(path.ends_with("bare/cpu.max"), "{}", path.display())
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    assert!(!own.join("cadre/bare").exists());
}

#[test]
fn a_v2_tree_that_lacks_a_controller_falls_back_to_v1_and_says_why_neither_works() {
    let s = fake_v2(false, &[]);
    put(
        s.path(),
        "sys/fs/cgroup/node.slice/cadre.service/cgroup.controllers",
        "cpu io\n",
    );
    let reason = unavailable(Cgroups::open_at(s.path(), "cadre"));
    assert!(reason.contains("offers [cpu io]"), "{reason}");
    assert!(reason.contains("memory, pids"), "{reason}");
    assert!(
        reason.contains("no cgroup v1 hierarchy is mounted"),
        "{reason}"
    );
}

#[test]
fn a_read_only_v2_mount_is_unavailable() {
    let s = fake_v2(true, &[]);
    let reason = unavailable(Cgroups::open_at(s.path(), "cadre"));
    assert!(reason.contains("read-only"), "{reason}");
}

/// A hybrid machine like this one: v1 controllers (cpu co-mounted with cpuacct, memory at a
/// mount point with a space in it), a cgroup2 holding only hugetlb, and the node's memory
/// cgroup below the root.
#[test]
fn a_hybrid_root_with_only_hugetlb_in_v2_uses_v1() {
    let s = fake_hybrid(true);
    let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V1);
    let sys = s.path().join("sys/fs/cgroup");
    assert_eq!(cg.path(Controller::Cpu), sys.join("cpu,cpuacct/cadre"));
    assert_eq!(
        cg.path(Controller::Memory),
        sys.join("my memory/process_api/abc/cadre")
    );
    assert_eq!(cg.path(Controller::Pids), sys.join("pids/cadre"));
    assert_eq!(cg.path(Controller::Freezer), sys.join("freezer/cadre"));

    let limits = CgroupLimits {
        cpu_millis: 250,
        memory_bytes: 100 * MIB,
        pids: None,
    };
    let task = cg.create("t1", &limits).unwrap();
    // Each controller in a hierarchy of its own: a thread can place the job.
    assert!(task.can_place_thread());
    let cpu = task.path(Controller::Cpu);
    // Written when a process is about to join, once.
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "");
    task.write_cpu_limits().unwrap();
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "25000");
    assert_eq!(read(cpu.join("cpu.shares")), "256");
    let mem = task.path(Controller::Memory);
    assert_eq!(
        read(mem.join("memory.limit_in_bytes")),
        (100 * MIB).to_string()
    );
    assert_eq!(
        read(mem.join("memory.memsw.limit_in_bytes")),
        (100 * MIB).to_string()
    );
    assert_eq!(read(mem.join("memory.oom_control")), "0");
    assert_eq!(read(task.path(Controller::Pids).join("pids.max")), "max");
    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    assert_eq!(task.oom_kills().unwrap(), 3);
    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\n",
    )
    .unwrap();
    assert!(matches!(
        task.oom_kills(),
        Err(CpuError::Cgroup { op: "read", .. })
    ));
    fs::write(
        task.path(Controller::Pids).join("cgroup.procs"),
        "12\nnot-a-pid\n",
    )
    .unwrap();
    assert!(matches!(
        task.is_empty(),
        Err(CpuError::Cgroup { op: "read", .. })
    ));
}

#[test]
fn a_missing_v1_controller_is_unavailable_naming_it_and_why_not_v2() {
    let s = fake_hybrid(false);
    let reason = unavailable(Cgroups::open_at(s.path(), "cadre"));
    assert!(reason.contains("not mounted: freezer"), "{reason}");
    assert!(reason.contains("offers [hugetlb]"), "{reason}");
}

#[test]
fn nothing_mounted_or_no_proc_is_unavailable() {
    let s = Scratch::new("cgroup-none");
    let reason = unavailable(Cgroups::open_at(s.path(), "cadre"));
    assert!(reason.contains("proc/self/mountinfo"), "{reason}");

    put(s.path(), "proc/self/mountinfo", PROC_MOUNTS);
    put(s.path(), "proc/self/cgroup", "0::/\n");
    let reason = unavailable(Cgroups::open_at(s.path(), "cadre"));
    assert!(
        reason.contains("no cgroup filesystem is mounted"),
        "{reason}"
    );

    // A node in a cgroup namespace that does not hold its group sees `/..`.
    let v2 = fake_v2(false, &[]);
    put(v2.path(), "proc/self/cgroup", "0::/../other\n");
    let reason = unavailable(Cgroups::open_at(v2.path(), "cadre"));
    assert!(reason.contains("outside this cgroup namespace"), "{reason}");

    // The node's group named by /proc/self/cgroup is not there.
    let v2 = fake_v2(false, &[]);
    put(v2.path(), "proc/self/cgroup", "0::/elsewhere\n");
    let reason = unavailable(Cgroups::open_at(v2.path(), "cadre"));
    assert!(reason.contains("elsewhere/cgroup.controllers"), "{reason}");
}

#[test]
fn an_absurdly_large_proc_file_is_refused() {
    let s = fake_v2(false, &[]);
    let big = "x".repeat(5 << 20);
    put(s.path(), "proc/self/mountinfo", &big);
    let reason = unavailable(Cgroups::open_at(s.path(), "cadre"));
    assert!(reason.contains("longer than"), "{reason}");
}

#[test]
fn names_are_checked_and_failures_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let s = fake_v2(false, &[]);
        let cg = Cgroups::open_at(s.path(), "cadre").unwrap();
        let long = "x".repeat(65);
        for bad in ["", ".", "..", "a/b", "../x", "a\nb", long.as_str()] {
            match cg.create(bad, &CgroupLimits::default()) {
                Err(CpuError::Invalid { field, reason }) => {
                    assert_eq!(field, "cgroup name");
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?}: expected Invalid, got {other:?}"),
            }
        }
        assert!(matches!(
            Cgroups::open_at(s.path(), ".."),
            Err(CpuError::Invalid { .. })
        ));
        let none = Scratch::new("cgroup-metrics");
        assert!(matches!(
            Cgroups::open_at(none.path(), "cadre"),
            Err(CpuError::CgroupUnavailable { .. })
        ));
    });
    let count = |op: &str| -> u64 {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, _, _, _)| {
                k.key().name() == m::CGROUP_ERRORS
                    && k.key().labels().any(|l| l.key() == "op" && l.value() == op)
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => c,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(count("name"), 8);
    assert_eq!(count("open"), 1);
}

/// Where the CPU controller shares a v1 hierarchy with the freezer, the thread placement (which
/// joins the CPU hierarchy by pid after the spawn) is not offered: the child must be in the
/// freezer group from its start, so it joins every hierarchy itself.
#[test]
fn a_cpu_hierarchy_shared_with_the_freezer_is_not_placed_by_a_thread() {
    let s = Scratch::new("cgroup-v1-comounted");
    let root = s.path();
    put(
        root,
        "proc/self/mountinfo",
        &format!(
            "{PROC_MOUNTS}31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / /sys/fs/cgroup/cpu,freezer rw,relatime - cgroup cgroup rw,cpu,freezer\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        ),
    );
    put(
        root,
        "proc/self/cgroup",
        "8:pids:/\n4:memory:/\n1:cpu,freezer:/\n",
    );
    for mount in ["cpu,freezer", "memory", "pids"] {
        put(
            root,
            &format!("sys/fs/cgroup/{mount}/cadre/slot-0/cgroup.procs"),
            "",
        );
    }
    for file in ["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"] {
        put(
            root,
            &format!("sys/fs/cgroup/cpu,freezer/cadre/slot-0/{file}"),
            "",
        );
    }
    put(
        root,
        "sys/fs/cgroup/memory/cadre/slot-0/memory.limit_in_bytes",
        "",
    );
    clean_memory(&root.join("sys/fs/cgroup/memory/cadre/slot-0"));
    put(root, "sys/fs/cgroup/pids/cadre/slot-0/pids.max", "");
    let cg = Cgroups::open_at(root, "cadre").unwrap();
    assert_eq!(cg.version(), CgroupVersion::V1);
    assert_eq!(cg.path(Controller::Cpu), cg.path(Controller::Freezer));
    let task = cg.create("t1", &CgroupLimits::default()).unwrap();
    assert!(!task.can_place_thread());
}
