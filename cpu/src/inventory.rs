//! CPU inventory: the online logical CPUs, their NUMA nodes and the machine's memory, read from
//! `/sys/devices/system/cpu/online`, `/sys/devices/system/node/node*/cpulist` and
//! `/proc/meminfo`.
//!
//! Reading is blocking file I/O on a handful of small pseudo-files: do it at start-up or on the
//! blocking pool, not on an async worker. Where `/sys/devices/system/node` is missing (some
//! containers), the inventory holds one node 0 with every online CPU, and says so once at warn.
//! The parsers are pure functions, public so they can be tested on their own.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{CpuError, Result};

/// Most CPUs a list may name; more means the input is not a CPU list.
const MAX_CPUS: usize = 1 << 16;

/// One NUMA node and its online CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    /// The node number (`N` of `/sys/devices/system/node/nodeN`).
    pub id: usize,
    /// Its online CPUs, ascending; empty for a memory-only node.
    pub cpus: Vec<usize>,
}

/// The CPUs and memory of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInventory {
    /// The number of online logical CPUs (hardware threads).
    pub logical_cores: usize,
    /// The online CPUs, ascending.
    pub online: Vec<usize>,
    /// The NUMA nodes, by ascending id.
    pub numa_nodes: Vec<NumaNode>,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory_total_bytes: u64,
    /// `MemAvailable` of `/proc/meminfo`, in bytes.
    pub memory_available_bytes: u64,
}

impl CpuInventory {
    /// Reads this machine's inventory from `/sys` and `/proc`.
    pub fn read() -> Result<CpuInventory> {
        CpuInventory::read_from(Path::new("/sys"), Path::new("/proc"))
    }

    /// Reads the inventory from a `sys` and a `proc` tree mounted elsewhere (or built by a test).
    pub fn read_from(sys: &Path, proc_root: &Path) -> Result<CpuInventory> {
        let online_path = sys.join("devices/system/cpu/online");
        let online = parse_at(&online_path, &read_text(&online_path)?, parse_cpu_list)?;
        if online.is_empty() {
            return Err(fail(CpuError::Inventory {
                path: online_path,
                reason: "no CPU is online".into(),
            }));
        }
        let numa_nodes = read_nodes(&sys.join("devices/system/node"), &online)?;
        let meminfo_path = proc_root.join("meminfo");
        let (memory_total_bytes, memory_available_bytes) =
            parse_at(&meminfo_path, &read_text(&meminfo_path)?, parse_meminfo)?;
        Ok(CpuInventory {
            logical_cores: online.len(),
            online,
            numa_nodes,
            memory_total_bytes,
            memory_available_bytes,
        })
    }
}

/// The nodes under `dir` (`node0`, `node1`, ...), their CPUs kept to the online ones; one node 0
/// with all of `online` where `dir` does not exist.
fn read_nodes(dir: &Path, online: &[usize]) -> Result<Vec<NumaNode>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            static WARNED: OnceLock<()> = OnceLock::new();
            if WARNED.set(()).is_ok() {
                tracing::warn!(path = %dir.display(),
                    "no NUMA information (the directory is missing); assuming one node 0 with every online CPU");
                metrics::counter!(crate::metrics::INVENTORY_ERRORS, "kind" => "no_numa")
                    .increment(1);
            }
            return Ok(vec![NumaNode {
                id: 0,
                cpus: online.to_vec(),
            }]);
        }
        Err(e) => return Err(fail(CpuError::io("read dir", dir, e))),
    };
    let mut nodes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(CpuError::io("read dir", dir, e)))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("node"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue; // `online`, `possible`, `has_cpu`, ...: not a node
        };
        let path = entry.path().join("cpulist");
        let id = id.parse::<usize>().map_err(|e| {
            fail(CpuError::Inventory {
                path: entry.path(),
                reason: format!("node number: {e}"),
            })
        })?;
        let cpus = parse_at(&path, &read_text(&path)?, parse_cpu_list)?;
        nodes.push(NumaNode {
            id,
            cpus: cpus
                .into_iter()
                .filter(|c| online.binary_search(c).is_ok())
                .collect(),
        });
    }
    nodes.sort_by_key(|n| n.id);
    if nodes.is_empty() {
        return Err(fail(CpuError::Inventory {
            path: dir.to_path_buf(),
            reason: "it lists no node".into(),
        }));
    }
    Ok(nodes)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| fail(CpuError::io("read", path, e)))
}

/// Runs a parser on the text of `path`, turning its error into [`CpuError::Inventory`] on it.
fn parse_at<T>(path: &Path, text: &str, parse: impl Fn(&str) -> Result<T>) -> Result<T> {
    parse(text).map_err(|e| {
        fail(CpuError::Inventory {
            path: PathBuf::from(path),
            reason: e.to_string(),
        })
    })
}

/// Logs and counts an inventory failure, once per failure.
fn fail(err: CpuError) -> CpuError {
    match &err {
        CpuError::Io { path, .. } | CpuError::Inventory { path, .. } => {
            tracing::error!(path = %path.display(), error = %err, "reading the CPU inventory failed");
        }
        _ => tracing::error!(error = %err, "reading the CPU inventory failed"),
    }
    metrics::counter!(crate::metrics::INVENTORY_ERRORS, "kind" => err.kind()).increment(1);
    err
}

/// Parses a kernel CPU list (`0-3,8,10-11`, as in `/sys/devices/system/cpu/online`) into
/// ascending, distinct CPU numbers. Surrounding whitespace and a trailing newline are fine; an
/// empty list (a memory-only node) is empty. Anything else is [`CpuError::Invalid`] on field
/// `cpu_list`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>> {
    let invalid = |reason: String| CpuError::Invalid {
        field: "cpu_list",
        reason,
    };
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    let number = |s: &str, item: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("{item:?} is not a CPU number or range")));
        }
        s.parse::<usize>()
            .map_err(|e| invalid(format!("{item:?}: {e}")))
    };
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (number(a, item)?, number(b, item)?),
            None => {
                let n = number(item, item)?;
                (n, n)
            }
        };
        if first > last {
            return Err(invalid(format!("range {item:?} runs backwards")));
        }
        if last >= MAX_CPUS {
            return Err(invalid(format!(
                "CPU {last} in {item:?} is beyond {MAX_CPUS}"
            )));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Parses `/proc/meminfo` text into `(MemTotal, MemAvailable)` in bytes. A missing field, or one
/// whose value is not `<number> kB`, is [`CpuError::Invalid`] on that field's name.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64)> {
    let field = |name: &'static str| -> Result<u64> {
        let invalid = |reason: String| CpuError::Invalid {
            field: name,
            reason,
        };
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
            .ok_or_else(|| invalid("missing from meminfo".into()))?;
        let mut words = line.split_whitespace();
        let (Some(value), Some("kB"), None) = (words.next(), words.next(), words.next()) else {
            return Err(invalid(format!("{:?} is not \"<number> kB\"", line.trim())));
        };
        let kb = value
            .parse::<u64>()
            .map_err(|e| invalid(format!("{value:?}: {e}")))?;
        kb.checked_mul(1024)
            .ok_or_else(|| invalid(format!("{kb} kB overflows a byte count")))
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}
