//! What confines a node's command jobs and cleans up after them: the node's cgroup parent
//! (opened once at start, with the fallback to process groups said once), the documented
//! environment every job starts from, and the janitor that removes a pruned job's logs and
//! scratch directories.
//!
//! **Environment.** A command job does not see the node's environment (Nomad passes none of
//! the agent's variables; Slurm passes all of them only with `--export=ALL`): it gets `PATH`,
//! `HOME`, `LANG`, `USER` and `LOGNAME` as the node has them (`PATH` defaults to the usual
//! system directories, `LANG` to `C.UTF-8`), `TMPDIR` and `CADRE_SCRATCH` (its scratch
//! directory), `CADRE_JOB_ID`, `CADRE_JOB_NAME`, `CADRE_ATTEMPT`, `CADRE_TASK`,
//! `CADRE_GANG_SIZE`, `CUDA_VISIBLE_DEVICES` (its GPUs, by UUID; empty without), then what its
//! spec sets. `inherit_env: true` starts from the node's whole environment instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cadre_actors::scheduler::{Janitor, PrunedJob};
use cadre_cpu::cgroup::Cgroups;
use cadre_cpu::CpuError;

use crate::config::{CgroupMode, Config};
use crate::error::Error;

/// `PATH` for jobs when the node has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The base environment of every command job (see the module comment), from the node's
/// environment as `env` reads it.
pub fn base_env(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "PATH".to_owned(),
            env("PATH").unwrap_or_else(|| DEFAULT_PATH.to_owned()),
        ),
        (
            "LANG".to_owned(),
            env("LANG").unwrap_or_else(|| "C.UTF-8".to_owned()),
        ),
    ];
    for key in ["HOME", "USER", "LOGNAME"] {
        if let Some(value) = env(key) {
            out.push((key.to_owned(), value));
        }
    }
    out
}

/// The name of the node's cgroup parent: one per data directory, so two nodes on one machine
/// (or two tests) never sweep each other's jobs.
fn parent_name(data_dir: &Path) -> String {
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("cadre-{:08x}", hash as u32)
}

/// Opens the node's cgroup parent as `[cgroups] mode` says, and kills and removes the task
/// groups a killed node left in it. `Ok(None)`: jobs run in process groups (said once, here).
pub async fn open_cgroups(config: &Config, data_dir: &Path) -> Result<Option<Cgroups>, Error> {
    if config.cgroups.mode == CgroupMode::Off {
        tracing::info!("cgroups off ([cgroups] mode): command jobs run in process groups only");
        return Ok(None);
    }
    let name = parent_name(data_dir);
    let opened = match &config.cgroups.root {
        Some(root) => Cgroups::open_at(root, &name),
        None => Cgroups::open(&name),
    };
    match opened {
        Ok(cgroups) => {
            match cgroups.sweep().await {
                Ok(left) if !left.is_empty() => {
                    tracing::warn!(groups = left.len(), first = ?left.first(),
                    "killed the job cgroups a previous node left running")
                }
                Ok(_) => {}
                // Logged and counted by the cgroup module; the node runs on.
                Err(error) => {
                    tracing::debug!(%error, "sweeping the previous node's job cgroups failed")
                }
            }
            tracing::info!(version = %cgroups.version(), parent = %name,
                "command jobs run in cgroups: CPU and memory limits, and a kill nothing escapes");
            Ok(Some(cgroups))
        }
        Err(CpuError::CgroupUnavailable { reason }) if config.cgroups.mode == CgroupMode::Auto => {
            tracing::warn!(%reason,
                "cgroups unavailable: command jobs run in process groups, without CPU or memory limits, and a child that leaves its group outlives the job");
            Ok(None)
        }
        Err(error) => Err(Error::Config {
            field: "cgroups.mode".to_owned(),
            reason: format!("cgroups are required but cannot be used: {error}"),
        }),
    }
}

/// The janitor: removes a pruned command job's logs and scratch directories on tokio's
/// blocking pool; each failure is one warning and one count.
pub fn janitor(log_dir: PathBuf, scratch_dir: PathBuf) -> Janitor {
    Arc::new(move |jobs: Vec<PrunedJob>| {
        let (logs, scratch) = (log_dir.clone(), scratch_dir.clone());
        let commands: Vec<PrunedJob> = jobs.into_iter().filter(|j| j.command).collect();
        if commands.is_empty() {
            return;
        }
        tokio::task::spawn_blocking(move || {
            for job in commands {
                for task in 0..job.tasks {
                    for stream in ["out", "err"] {
                        let path = logs.join(format!("{}.{task}.{stream}", job.job));
                        if let Err(error) = cadre_cpu::joblog::remove_stream(&path) {
                            cleanup_failed(job, "logs", &path, &error.to_string());
                        }
                    }
                    let dir = scratch.join(format!("{}.{task}", job.job));
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => cleanup_failed(job, "scratch", &dir, &e.to_string()),
                    }
                }
            }
        });
    })
}

fn cleanup_failed(job: PrunedJob, what: &'static str, path: &Path, error: &str) {
    tracing::warn!(job = %job.job, what, path = %path.display(), error,
        "could not remove what a pruned job left on disk");
    metrics::counter!(cadre_actors::metrics::PRUNE_CLEANUP_ERRORS, "what" => what).increment(1);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_base_environment_is_small_and_has_defaults() {
        let node = |k: &str| match k {
            "HOME" => Some("/root".to_owned()),
            "SECRET_TOKEN" => Some("x".to_owned()),
            _ => None,
        };
        let env = base_env(&node);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["PATH", "LANG", "HOME"]);
        assert_eq!(env[0].1, DEFAULT_PATH);
        assert_eq!(env[1].1, "C.UTF-8");
    }

    #[test]
    fn parent_names_differ_by_data_dir_and_are_stable() {
        let a = parent_name(Path::new("/nonexistent/a"));
        assert_eq!(a, parent_name(Path::new("/nonexistent/a")));
        assert_ne!(a, parent_name(Path::new("/nonexistent/b")));
        assert!(a.starts_with("cadre-") && a.len() == 14);
    }
}
