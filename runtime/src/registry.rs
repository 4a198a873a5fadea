//! What validation asks of this node: whether a program exists and is executable (a path, or a
//! name on the node's `PATH`), whether a working directory exists, and whether a workload is
//! registered.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cadre_actors::Registry;

/// The node's answer to validation.
#[derive(Debug, Clone, Default)]
pub struct NodeRegistry {
    path: Vec<PathBuf>,
    workloads: BTreeSet<String>,
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl NodeRegistry {
    /// Looks programs up in this process's `PATH`.
    pub fn from_env() -> NodeRegistry {
        let path = match std::env::var_os("PATH") {
            Some(p) => std::env::split_paths(&p).collect(),
            None => {
                tracing::warn!("PATH is not set: only programs given by path are found");
                Vec::new()
            }
        };
        NodeRegistry {
            path,
            workloads: BTreeSet::new(),
        }
    }

    /// Adds workload names.
    pub fn with_workloads(mut self, names: impl IntoIterator<Item = String>) -> NodeRegistry {
        self.workloads.extend(names);
        self
    }
}

impl Registry for NodeRegistry {
    fn program_found(&self, program: &str) -> bool {
        if program.contains('/') {
            return executable(Path::new(program));
        }
        self.path.iter().any(|dir| executable(&dir.join(program)))
    }

    fn workload_registered(&self, name: &str) -> bool {
        self.workloads.contains(name)
    }

    fn dir_exists(&self, path: &str) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.is_dir())
    }
}
