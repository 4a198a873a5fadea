//! The CPU inventory's parsers on good and bad input, `read_from` on built `/sys` and `/proc`
//! trees (with and without NUMA nodes), and `read` on this machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use cadre_cpu::inventory::{parse_cpu_list, parse_meminfo, CpuInventory, NumaNode};
use cadre_cpu::CpuError;

const MEMINFO: &str = "MemTotal:       16303132 kB\nMemFree:         1234567 kB\nMemAvailable:    8000000 kB\nBuffers:          100000 kB\n";

fn invalid_field<T: std::fmt::Debug>(r: Result<T, CpuError>) -> &'static str {
    match r {
        Err(CpuError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn cpu_lists_parse() {
    assert_eq!(
        parse_cpu_list("0-3,8,10-11").unwrap(),
        vec![0, 1, 2, 3, 8, 10, 11]
    );
    assert_eq!(parse_cpu_list("5").unwrap(), vec![5]);
    assert_eq!(parse_cpu_list("0-1\n").unwrap(), vec![0, 1]);
    assert_eq!(parse_cpu_list("  2 , 0-1 \n").unwrap(), vec![0, 1, 2]);
    assert_eq!(
        parse_cpu_list("3,1-2,2").unwrap(),
        vec![1, 2, 3],
        "sorted and distinct"
    );
    assert_eq!(
        parse_cpu_list("\n").unwrap(),
        Vec::<usize>::new(),
        "a memory-only node"
    );
}

#[test]
fn bad_cpu_lists_are_errors_naming_the_field() {
    for bad in [
        "a",
        "1-",
        "-1",
        "3-1",
        "1,,2",
        "1-2-3",
        "0x1",
        "+1",
        "1 2",
        "0-99999999999",
    ] {
        assert_eq!(invalid_field(parse_cpu_list(bad)), "cpu_list", "{bad:?}");
    }
}

#[test]
fn meminfo_parses() {
    assert_eq!(
        parse_meminfo(MEMINFO).unwrap(),
        (16303132 * 1024, 8000000 * 1024)
    );
}

#[test]
fn meminfo_with_a_missing_or_bad_field_is_an_error() {
    let no_available = "MemTotal:       16303132 kB\nMemFree:         1234567 kB\n";
    assert_eq!(invalid_field(parse_meminfo(no_available)), "MemAvailable");
    let no_total = "MemAvailable:    8000000 kB\n";
    assert_eq!(invalid_field(parse_meminfo(no_total)), "MemTotal");
    assert_eq!(invalid_field(parse_meminfo("")), "MemTotal");
    let bad_unit = "MemTotal: 16303132 MB\nMemAvailable: 1 kB\n";
    assert_eq!(invalid_field(parse_meminfo(bad_unit)), "MemTotal");
    let bad_number = "MemTotal: 1 kB\nMemAvailable: lots kB\n";
    assert_eq!(invalid_field(parse_meminfo(bad_number)), "MemAvailable");
    // A prefix of another name is not the field.
    let prefixed = "MemTotalX: 1 kB\nMemAvailable: 1 kB\n";
    assert_eq!(invalid_field(parse_meminfo(prefixed)), "MemTotal");
}

/// Fake `sys` and `proc` roots, removed when dropped.
struct Tree(PathBuf);

impl Tree {
    fn new(online: &str, nodes: Option<&[(usize, &str)]>, meminfo: &str) -> Tree {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("cadre-inventory-{}-{n}", std::process::id()));
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap();
        }
        let cpu = root.join("sys/devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("online"), online).unwrap();
        if let Some(nodes) = nodes {
            let node_dir = root.join("sys/devices/system/node");
            std::fs::create_dir_all(&node_dir).unwrap();
            std::fs::write(node_dir.join("online"), "0-1\n").unwrap();
            for (id, cpulist) in nodes {
                let dir = node_dir.join(format!("node{id}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("cpulist"), cpulist).unwrap();
            }
        }
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/meminfo"), meminfo).unwrap();
        Tree(root)
    }
    fn read(&self) -> Result<CpuInventory, CpuError> {
        CpuInventory::read_from(&self.0.join("sys"), &self.0.join("proc"))
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("leaving {}: {e}", self.0.display());
        }
    }
}

#[test]
fn read_from_a_tree_with_numa_nodes() {
    // node10 sorts after node2 by number, not by name; CPU 7 is offline and left out.
    let tree = Tree::new(
        "0-5\n",
        Some(&[(10, "\n"), (0, "0-2\n"), (2, "3-5,7\n")]),
        MEMINFO,
    );
    let inv = tree.read().unwrap();
    assert_eq!(inv.logical_cores, 6);
    assert_eq!(inv.online, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        inv.numa_nodes,
        vec![
            NumaNode {
                id: 0,
                cpus: vec![0, 1, 2]
            },
            NumaNode {
                id: 2,
                cpus: vec![3, 4, 5]
            },
            NumaNode {
                id: 10,
                cpus: vec![]
            },
        ]
    );
    assert_eq!(inv.memory_total_bytes, 16303132 * 1024);
    assert_eq!(inv.memory_available_bytes, 8000000 * 1024);
}

#[test]
fn read_from_a_tree_without_numa_gives_one_node() {
    let tree = Tree::new("0-3", None, MEMINFO);
    let inv = tree.read().unwrap();
    assert_eq!(
        inv.numa_nodes,
        vec![NumaNode {
            id: 0,
            cpus: vec![0, 1, 2, 3]
        }]
    );
}

#[test]
fn read_from_a_bad_tree_names_the_file() {
    let expect_inventory_error = |tree: &Tree, rel: &str| match tree.read() {
        Err(CpuError::Inventory { path, .. }) => assert_eq!(path, tree.path(rel)),
        other => panic!("expected an inventory error on {rel}, got {other:?}"),
    };
    expect_inventory_error(
        &Tree::new("0-x", None, MEMINFO),
        "sys/devices/system/cpu/online",
    );
    expect_inventory_error(
        &Tree::new("\n", None, MEMINFO),
        "sys/devices/system/cpu/online",
    );
    expect_inventory_error(
        &Tree::new("0-1", Some(&[(0, "zero")]), MEMINFO),
        "sys/devices/system/node/node0/cpulist",
    );
    expect_inventory_error(&Tree::new("0-1", None, "MemTotal: 1 kB\n"), "proc/meminfo");

    let tree = Tree::new("0-1", None, MEMINFO);
    std::fs::remove_file(tree.path("proc/meminfo")).unwrap();
    match tree.read() {
        Err(CpuError::Io { path, .. }) => assert_eq!(path, tree.path("proc/meminfo")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn read_on_this_machine() {
    let inv = CpuInventory::read().unwrap();
    let parallelism = std::thread::available_parallelism().unwrap().get();
    assert!(
        inv.logical_cores == parallelism || inv.logical_cores == inv.online.len(),
        "{} logical cores, available parallelism {parallelism}, online {:?}",
        inv.logical_cores,
        inv.online
    );
    assert_eq!(inv.logical_cores, inv.online.len());
    assert!(inv.logical_cores >= 1);
    assert!(!inv.numa_nodes.is_empty());
    for node in &inv.numa_nodes {
        for cpu in &node.cpus {
            assert!(
                inv.online.contains(cpu),
                "node {} names offline CPU {cpu}",
                node.id
            );
        }
    }
    let in_nodes: usize = inv.numa_nodes.iter().map(|n| n.cpus.len()).sum();
    assert_eq!(
        in_nodes,
        inv.online.len(),
        "every online CPU is in exactly one node"
    );
    assert!(inv.memory_total_bytes > 0);
    assert!(inv.memory_available_bytes <= inv.memory_total_bytes);
}
