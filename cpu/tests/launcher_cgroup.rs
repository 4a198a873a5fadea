//! Command jobs in cgroups, through the launcher: nothing a job starts outlives its main
//! process (a `setsid` child, which leaves the process group, is killed with the group), a job
//! that passes its memory limit is reported as killed for memory, and the group is gone
//! afterwards. Without writable cgroups these print SKIP (fail where `CADRE_REQUIRE_CGROUPS=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cadre_cpu::cgroup::{CgroupLimits, Cgroups, Controller};
use cadre_cpu::launcher::{CommandSpec, ExitOutcome, Launcher};
use cadre_cpu::{BackendSetting, IoEngine};
use common::cgroup::{real, real_v1};
use common::{dead, Scratch};

/// Whether the group in `dirs` is released within 5 s (a job's group is released after its
/// report, not before): `parent` counts no live group (each removed, or kept as a spare on v1)
/// and nothing is left in it.
async fn released(parent: &Cgroups, dirs: &[PathBuf]) -> bool {
    let empty = |d: &PathBuf| {
        std::fs::read_to_string(d.join("cgroup.procs")).map_or(!d.exists(), |p| p.is_empty())
    };
    within_5s(|| parent.live_count() == 0 && dirs.iter().all(empty)).await
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
    assert!(!dead(pid), "without a cgroup the setsid child survives");
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
    assert!(dead(pid), "the setsid child died with its job");
    assert!(
        released(&parent, &[group_dir]).await,
        "the job's cgroup is released"
    );
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

/// The lines of `/proc/<task>/cgroup` of every thread of this process that name `group`.
fn own_threads_in(group: &str) -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("cgroup")) else {
            continue; // the thread exited meanwhile
        };
        found.extend(
            text.lines()
                .filter(|l| l.ends_with(&format!("/{group}")))
                .map(str::to_owned),
        );
    }
    found
}

/// A job that prints its own cgroups at once starts inside its group in every hierarchy,
/// both where the launcher's thread spawns it from inside (v1, no pre-exec work) and where the child
/// joins between fork and exec (here: it has a limit to set); its CPU limit is in place when the
/// spawn returns, no thread of the launcher's process is left in the group, and the group is
/// released at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_inside_its_group_and_no_thread_of_the_node_stays_there() {
    let Some(parent) = real("launcher-placed") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-placed");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    for (name, open_files) in [("placed-thread", None), ("placed-exec", Some(256))] {
        let limits = CgroupLimits {
            cpu_millis: 250,
            ..CgroupLimits::default()
        };
        let group = parent.create(name, &limits).unwrap();
        let group_name = group.name().to_string();
        let cpu_dir = group.path(Controller::Cpu).to_path_buf();
        let dirs: Vec<_> = Controller::ALL
            .iter()
            .map(|c| group.path(*c).to_path_buf())
            .collect();
        let mut spec = CommandSpec::new(
            ["/bin/cat", "/proc/self/cgroup"],
            dir.path().join(format!("{name}.out")),
            dir.path().join(format!("{name}.err")),
        );
        spec.limits.open_files = open_files;
        let mut process = launcher.spawn_in(&spec, name, Some(group)).unwrap();
        assert!(own_threads_in(name).is_empty(), "{name}: a thread stayed");
        // The CPU limit is in place once the spawn returns, on either path.
        let quota = match std::fs::read_to_string(cpu_dir.join("cpu.cfs_quota_us")) {
            Ok(v1) => v1,
            Err(_) => std::fs::read_to_string(cpu_dir.join("cpu.max")).unwrap(),
        };
        assert!(quota.trim().starts_with("25000"), "{name}: {quota}");
        let report = process.wait().await.unwrap();
        assert_eq!(report.outcome, ExitOutcome::Code(0), "{name}");
        let out = std::fs::read_to_string(&spec.stdout_log).unwrap();
        let inside = out
            .lines()
            .filter(|l| l.ends_with(&format!("/{group_name}")))
            .count();
        // v1: one line per hierarchy (co-mounted controllers share one); v2: the one line.
        let hierarchies = {
            let mut d = dirs.clone();
            d.sort();
            d.dedup();
            d.len()
        };
        // A thread placing the process (v1) leaves the CPU group to the process itself, moved
        // in by its pid once started: its first instructions may still see the node's.
        let placed_by_pid = open_files.is_none() && hierarchies > 1;
        let least = hierarchies - usize::from(placed_by_pid);
        assert!(inside >= least && inside <= hierarchies, "{name}: {out}");
        assert!(released(&parent, &dirs).await, "{name}: {dirs:?} is left");
        drop(process);
    }
    parent.finish().await;
}

/// Every process of a job is in its CPU group once the spawn has returned: the process the
/// launcher's thread placed (v1: it starts in the group's other hierarchies) is moved in by its
/// pid, and what it forks afterwards inherits the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_a_job_is_in_its_cpu_group_once_the_spawn_returns() {
    let Some(parent) = real_v1("launcher-cpu-placed") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-cpu-placed");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let limits = CgroupLimits {
        cpu_millis: 100,
        ..CgroupLimits::default()
    };
    let group = parent.create("forks", &limits).unwrap();
    let cpu = group.path(Controller::Cpu).join("cgroup.procs");
    let freezer = group.path(Controller::Freezer).join("cgroup.procs");
    let spec = CommandSpec::new(
        ["/bin/sh", "-c", "sleep 5 & sleep 5 & sleep 5 & wait"],
        dir.path().join("forks.out"),
        dir.path().join("forks.err"),
    );
    let mut process = launcher.spawn_in(&spec, "forks", Some(group)).unwrap();
    let pids = |path: &std::path::Path| -> std::collections::BTreeSet<u32> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    assert!(
        within_5s(|| pids(&freezer).len() == 4).await,
        "the shell and its three children: {:?}",
        pids(&freezer)
    );
    assert_eq!(
        pids(&cpu),
        pids(&freezer),
        "a process of the job is outside its CPU group"
    );
    process.terminate(Duration::from_millis(100)).await.unwrap();
    drop(process);
    parent.finish().await;
}

/// A job whose group vanished before the spawn never runs, on either path: the spawn fails
/// with the kernel's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_group_is_gone_never_runs() {
    let Some(parent) = real("launcher-gone") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-gone");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    for (name, open_files) in [("gone-thread", None), ("gone-exec", Some(256))] {
        let group = parent.create(name, &CgroupLimits::default()).unwrap();
        for controller in Controller::ALL {
            let _ = std::fs::remove_dir(group.path(controller));
        }
        let marker = dir.path().join(format!("{name}.ran"));
        let mut spec = CommandSpec::new(
            ["/bin/touch", marker.to_str().unwrap()],
            dir.path().join(format!("{name}.out")),
            dir.path().join(format!("{name}.err")),
        );
        spec.limits.open_files = open_files;
        let Err(err) = launcher.spawn_in(&spec, name, Some(group)) else {
            panic!("{name}: the job must not run outside its group");
        };
        assert!(
            matches!(err.kind(), "cgroup" | "spawn"),
            "{name}: {err} ({})",
            err.kind()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!marker.exists(), "{name}: the job ran");
        assert!(own_threads_in(name).is_empty(), "{name}: a thread stayed");
    }
    parent.finish().await;
}

/// Polls `what` for up to 5 s.
async fn within_5s(mut what: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// v1: the emptied group of a finished job is kept as a spare by the time its report is out
/// (on the spot, not later on another thread), and the next job takes it, under the same name,
/// with its own limits written; a group the job left memory charged to is removed instead (the
/// next job would inherit the charge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_group_is_reused_for_the_next_job_and_a_charged_one_is_not() {
    let Some(parent) = real_v1("launcher-spares") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-spares");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let spec = |name: &str, argv: &[&str]| {
        CommandSpec::new(
            argv.iter().copied(),
            dir.path().join(format!("{name}.out")),
            dir.path().join(format!("{name}.err")),
        )
    };
    let first = parent
        .create(
            "r1",
            &CgroupLimits {
                cpu_millis: 200,
                memory_bytes: 64 << 20,
                pids: Some(8),
            },
        )
        .unwrap();
    let r1: Vec<_> = Controller::ALL
        .iter()
        .map(|c| first.path(*c).to_path_buf())
        .collect();
    let mut p = launcher
        .spawn_in(&spec("r1", &["/bin/true"]), "r1", Some(first))
        .unwrap();
    assert_eq!(p.wait().await.unwrap().outcome, ExitOutcome::Code(0));
    assert_eq!(parent.spare_count(), 1, "not kept as a spare by the report");
    assert_eq!(parent.live_count(), 0);
    drop(p);
    for d in &r1 {
        assert!(d.exists(), "{} is gone", d.display());
    }

    let second = parent
        .create(
            "r2",
            &CgroupLimits {
                cpu_millis: 300,
                memory_bytes: 0,
                pids: Some(16),
            },
        )
        .unwrap();
    assert_eq!(parent.spare_count(), 0, "the spare was taken");
    for (c, d) in Controller::ALL.iter().zip(&r1) {
        assert_eq!(second.path(*c), d, "r2 got another group than r1's");
    }
    let r2_name = second.name().to_string();
    // r1's quota (20 ms per 100 ms) stays until r2's is written, before r2's process joins.
    let quota = second.path(Controller::Cpu).join("cpu.cfs_quota_us");
    assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "20000");
    let pids = second.path(Controller::Pids).join("pids.max");
    let memory = second
        .path(Controller::Memory)
        .join("memory.limit_in_bytes");
    let cpu = second.path(Controller::Cpu).join("cpu.cfs_quota_us");
    assert_eq!(std::fs::read_to_string(&pids).unwrap().trim(), "16");
    let unlimited: u64 = std::fs::read_to_string(&memory)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        unlimited > 1 << 60,
        "the old memory limit stayed: {unlimited}"
    );
    let charge = dir.path().join("charged");
    let argv = [
        "/bin/sh",
        "-c",
        &format!(
            "cat /proc/self/cgroup; head -c 4000000 /dev/zero > {}",
            charge.display()
        ),
    ];
    let spec2 = spec("r2", &argv);
    let mut p = launcher.spawn_in(&spec2, "r2", Some(second)).unwrap();
    assert_eq!(std::fs::read_to_string(&cpu).unwrap().trim(), "30000");
    assert_eq!(p.wait().await.unwrap().outcome, ExitOutcome::Code(0));
    drop(p);
    let out = std::fs::read_to_string(&spec2.stdout_log).unwrap();
    assert!(
        out.lines().any(|l| l.ends_with(&format!("/{r2_name}"))),
        "{out}"
    );
    // The file's page cache is charged to r2's memory group: removed, not kept.
    assert!(
        within_5s(|| !pids.parent().unwrap().exists()).await,
        "r2 is left"
    );
    assert_eq!(parent.spare_count(), 0, "a charged group was kept");
    parent.finish().await;
}

/// A spare taken by a task with the same limits as its last one skips the writes of what it
/// holds already (the quota is written again, refilling the period's budget): the next job runs
/// under its quota, weight, memory and pids limits all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_with_the_same_limits_runs_the_next_job_under_all_of_them() {
    let Some(parent) = real_v1("launcher-same-limits") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-same-limits");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let limits = CgroupLimits {
        cpu_millis: 200,
        memory_bytes: 64 << 20,
        pids: Some(8),
    };
    for (round, name) in ["s1", "s2", "s3"].into_iter().enumerate() {
        let group = parent.create(name, &limits).unwrap();
        let file = |c: Controller, f: &str| group.path(c).join(f);
        let quota = file(Controller::Cpu, "cpu.cfs_quota_us");
        let shares = file(Controller::Cpu, "cpu.shares");
        let memory = file(Controller::Memory, "memory.limit_in_bytes");
        let pids = file(Controller::Pids, "pids.max");
        if round > 0 {
            assert_eq!(
                parent.spare_count(),
                0,
                "round {round}: the spare was not taken"
            );
            // The spare holds what its last task left, the same limits.
            assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "20000");
            assert_eq!(std::fs::read_to_string(&shares).unwrap().trim(), "204");
        }
        let spec = CommandSpec::new(
            ["/bin/true"],
            dir.path().join(format!("{name}.out")),
            dir.path().join(format!("{name}.err")),
        );
        let mut p = launcher.spawn_in(&spec, name, Some(group)).unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(read(&quota), "20000", "round {round}");
        assert_eq!(read(&shares), "204", "round {round}");
        assert_eq!(read(&memory), (64u64 << 20).to_string(), "round {round}");
        assert_eq!(read(&pids), "8", "round {round}");
        assert_eq!(p.wait().await.unwrap().outcome, ExitOutcome::Code(0));
        drop(p);
        assert!(
            within_5s(|| parent.spare_count() == 1).await,
            "round {round}: no spare kept"
        );
    }
    parent.finish().await;
}

/// A spawn that fails once its group exists (a missing program, a log file that cannot be
/// made) leaves no group behind: the group is released (kept as a spare on v1, else removed),
/// and the parent counts no live group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_spawn_releases_its_group() {
    let Some(parent) = real("launcher-failed") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-failed");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let missing = dir.path().join("no-such-dir");
    let cases = [
        (
            "no-program",
            CommandSpec::new(
                ["/nonexistent/program"],
                dir.path().join("a.out"),
                dir.path().join("a.err"),
            ),
        ),
        (
            "no-log-dir",
            CommandSpec::new(["/bin/true"], missing.join("b.out"), missing.join("b.err")),
        ),
    ];
    for (name, spec) in cases {
        let group = parent.create(name, &CgroupLimits::default()).unwrap();
        let dirs: Vec<_> = Controller::ALL
            .iter()
            .map(|c| group.path(*c).to_path_buf())
            .collect();
        assert!(
            launcher.spawn_in(&spec, name, Some(group)).is_err(),
            "{name}: spawned"
        );
        assert!(
            released(&parent, &dirs).await,
            "{name}: its group is left: {dirs:?}, {} live",
            parent.live_count()
        );
    }
    parent.finish().await;
}

/// The CPU limit is enforced, not only written: a job spinning under a twentieth of a core is
/// throttled by the kernel (its group's `cpu.stat` counts throttled periods, v1 and v2 alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_cpu_limit_is_throttled() {
    let Some(parent) = real("launcher-throttle") else {
        return;
    };
    let dir = Scratch::new("launcher-cgroup-throttle");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let limits = CgroupLimits {
        cpu_millis: 50,
        ..CgroupLimits::default()
    };
    let group = parent.create("spin", &limits).unwrap();
    let stat = group.path(Controller::Cpu).join("cpu.stat");
    let spec = CommandSpec::new(
        [
            "/usr/bin/timeout",
            "2",
            "/bin/sh",
            "-c",
            "while :; do :; done",
        ],
        dir.path().join("spin.out"),
        dir.path().join("spin.err"),
    );
    let mut process = launcher.spawn_in(&spec, "spin", Some(group)).unwrap();
    let throttled = || {
        std::fs::read_to_string(&stat)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        within_5s(|| throttled() > 0).await,
        "never throttled: {}",
        std::fs::read_to_string(&stat).unwrap_or_default()
    );
    process.terminate(Duration::from_millis(100)).await.unwrap();
    drop(process);
    parent.finish().await;
}

/// The launcher reads the boot clock around each spawn, inside the group too, and the window it
/// gives holds the child's start time as `/proc` has it: what the process ledger records
/// instead of reading `/proc` for every job. (It checks that the window holds the start, not
/// how tight it is: read outside the group's placement, it would only be wider.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_window_holds_the_child_s_start_time_with_and_without_a_group() {
    let dir = Scratch::new("launcher-start-window");
    let launcher = Launcher::new(IoEngine::new(BackendSetting::Auto).unwrap());
    let spec = CommandSpec::new(
        ["sleep", "5"],
        dir.path().join("out"),
        dir.path().join("err"),
    );
    let check = |process: &cadre_cpu::launcher::RunningProcess| {
        let window = process.start_window().unwrap();
        let start = cadre_cpu::ledger::process_start_time(process.pid())
            .unwrap()
            .unwrap();
        assert!(window.contains(start), "{start} outside {window:?}");
    };
    let mut process = launcher.spawn(&spec, "window").unwrap();
    check(&process);
    process.terminate(Duration::from_secs(1)).await.unwrap();
    let Some(parent) = real("launcher-window") else {
        return;
    };
    let group = parent.create("job-w", &CgroupLimits::default()).unwrap();
    let mut process = launcher
        .spawn_in(&spec, "window-group", Some(group))
        .unwrap();
    check(&process);
    process.terminate(Duration::from_secs(1)).await.unwrap();
    assert!(released(&parent, &[]).await);
}
