//! Fake machines for the cgroup tests: plain files laid out like a machine's `/proc` and
//! `/sys`, which need no privileges (a fake root cannot create control files on mkdir, so the
//! task groups a test uses are laid out beforehand).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use super::Scratch;

/// Writes `text` to `root/rel`, creating directories.
pub fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// The `/proc` and root lines of every fake `mountinfo`.
pub const PROC_MOUNTS: &str = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
    1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";

/// A v2 machine whose node runs in `/node.slice/cadre.service`, with the parent `cadre` and task
/// group `names` laid out (a fake root cannot create control files on mkdir).
pub fn fake_v2(ro: bool, names: &[&str]) -> Scratch {
    let s = Scratch::new("cgroup-v2");
    let root = s.path();
    let rw = if ro { "ro" } else { "rw" };
    put(
        root,
        "proc/self/mountinfo",
        &format!(
            "{PROC_MOUNTS}30 1 0:26 / /sys/fs/cgroup {rw},nosuid,nodev,noexec,relatime shared:4 \
             - cgroup2 cgroup2 {rw},nsdelegate\n"
        ),
    );
    put(root, "proc/self/cgroup", "0::/node.slice/cadre.service\n");
    let own = "sys/fs/cgroup/node.slice/cadre.service";
    put(
        root,
        &format!("{own}/cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    put(root, &format!("{own}/cgroup.subtree_control"), "");
    put(root, &format!("{own}/cadre/cgroup.subtree_control"), "");
    for name in names {
        for file in [
            "cpu.max",
            "cpu.weight",
            "memory.max",
            "memory.swap.max",
            "pids.max",
            "cgroup.procs",
        ] {
            put(root, &format!("{own}/cadre/{name}/{file}"), "");
        }
        put(
            root,
            &format!("{own}/cadre/{name}/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
        );
    }
    s
}

/// A v1 machine with cpu,cpuacct, memory (under a path with a space), pids and, where
/// `with_freezer`, freezer each mounted alone, and the task group `slot-0` (the first v1 group a
/// parent makes) laid out as a clean group.
pub fn fake_hybrid(with_freezer: bool) -> Scratch {
    let s = Scratch::new("cgroup-v1");
    let root = s.path();
    let mut mountinfo = format!(
        "{PROC_MOUNTS}31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
         32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
         35 31 0:32 / /sys/fs/cgroup/my\\040memory rw,relatime - cgroup cgroup rw,memory\n\
         39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
         40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    );
    let mut cgroup =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n".to_string();
    if with_freezer {
        mountinfo.push_str(
            "37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n",
        );
        cgroup.push_str("6:freezer:/\n");
    }
    cgroup.push_str("0::/\n");
    put(root, "proc/self/mountinfo", &mountinfo);
    put(root, "proc/self/cgroup", &cgroup);
    put(
        root,
        "sys/fs/cgroup/unified/cgroup.controllers",
        "hugetlb\n",
    );
    put(root, "sys/fs/cgroup/unified/cgroup.subtree_control", "");
    let task = [
        (
            "cpu,cpuacct",
            "",
            &["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"][..],
        ),
        (
            "my memory",
            "process_api/abc/",
            &[
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "memory.oom_control",
            ][..],
        ),
        ("pids", "", &["pids.max"][..]),
        ("freezer", "", &["freezer.state"][..]),
    ];
    for (mount, own, files) in task {
        put(
            root,
            &format!("sys/fs/cgroup/{mount}/{own}cadre/slot-0/cgroup.procs"),
            "",
        );
        for file in files {
            put(
                root,
                &format!("sys/fs/cgroup/{mount}/{own}cadre/slot-0/{file}"),
                "",
            );
        }
    }
    // What the kernel shows of a clean group, which a node may take for a task.
    clean_memory(&root.join("sys/fs/cgroup/my memory/process_api/abc/cadre/slot-0"));
    s
}

/// The memory files of a clean v1 group in `dir`: no OOM kill counted, nothing charged.
pub fn clean_memory(dir: &Path) {
    put(
        dir,
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    );
    put(dir, "memory.usage_in_bytes", "0");
}

/// [`fake_hybrid`] with the freezer, laid out so that a thread can place a task in `slot-0` and the
/// group can be released: each hierarchy's `tasks` files (the node's group and `slot-0`), the pids
/// count at 0 and no memory charged.
pub fn placeable_v1() -> Scratch {
    let s = fake_hybrid(true);
    let sys = s.path().join("sys/fs/cgroup");
    for dir in [
        "cpu,cpuacct",
        "my memory/process_api/abc",
        "pids",
        "freezer",
    ] {
        put(&sys, &format!("{dir}/tasks"), "");
        put(&sys, &format!("{dir}/cadre/slot-0/tasks"), "");
    }
    put(&sys, "pids/cadre/slot-0/pids.current", "0");
    put(
        &sys,
        "my memory/process_api/abc/cadre/slot-0/memory.usage_in_bytes",
        "0",
    );
    s
}
