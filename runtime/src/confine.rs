//! What confines a node's command jobs and cleans up after them: the node's cgroup parent
//! (opened once at start, with the fallback to process groups said once), the documented
//! environment every job starts from, the janitor that removes a pruned job's logs and
//! scratch directories, and the start-up sweep of what pruned jobs left behind when a node
//! stopped (or crashed) after their `Pruned` record was durable but before the janitor ran.
//!
//! **Environment.** A command job does not see the node's environment (Nomad passes none of
//! the agent's variables; Slurm passes all of them only with `--export=ALL`): it gets `PATH`,
//! `HOME`, `LANG`, `USER` and `LOGNAME` as the node has them (`PATH` defaults to the usual
//! system directories, `LANG` to `C.UTF-8`), `TMPDIR` and `CADRE_SCRATCH` (its scratch
//! directory), `CADRE_JOB_ID`, `CADRE_JOB_NAME`, `CADRE_ATTEMPT`, `CADRE_TASK`,
//! `CADRE_GANG_SIZE`, `CUDA_VISIBLE_DEVICES` (its GPUs, by UUID; empty without), then what its
//! spec sets. `inherit_env: true` starts from the node's whole environment instead.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cadre_actors::job::JobId;
use cadre_actors::scheduler::{Janitor, PrunedJob};
use cadre_actors::store::JobTable;
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
    format!(
        "cadre-{:08x}",
        fnv1a(path.as_os_str().as_encoded_bytes()) as u32
    )
}

/// FNV-1a of `bytes`: stable across runs and builds (std's hasher is not), for names and seeds
/// derived from a path or an identity.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
/// blocking pool ([`remove_pruned`]); each failure is one warning and one count.
pub fn janitor(log_dir: PathBuf, scratch_dir: PathBuf) -> Janitor {
    Arc::new(move |jobs: Vec<PrunedJob>| {
        let jobs: Vec<(JobId, u32)> = jobs
            .into_iter()
            .filter(|j| j.command)
            .map(|j| (j.job, j.tasks))
            .collect();
        if jobs.is_empty() {
            return;
        }
        let (logs, scratch) = (log_dir.clone(), scratch_dir.clone());
        drop(tokio::task::spawn_blocking(move || {
            remove_pruned(&logs, &scratch, &jobs)
        }));
    })
}

/// Removes the logs and scratch directories of `jobs` (each with its number of tasks) from
/// `log_dir` and `scratch_dir`: the janitor's work, and an agent's when its scheduler prunes
/// jobs that ran there. Blocking. Counts log streams (not files) removed or already gone, and
/// scratch directories removed; each failure is one warning and one count.
pub fn remove_pruned(log_dir: &Path, scratch_dir: &Path, jobs: &[(JobId, u32)]) -> Swept {
    let mut swept = Swept::default();
    // The batch's streams together, up to JANITOR_CHUNK at a time: the log directory is
    // listed once per chunk at most, not once per job, in bounded memory.
    let mut owners = Vec::new();
    let mut paths = Vec::new();
    for &(job, tasks) in jobs {
        for task in 0..tasks {
            for stream in ["out", "err"] {
                owners.push(job);
                paths.push(log_dir.join(format!("{job}.{task}.{stream}")));
                if paths.len() >= JANITOR_CHUNK {
                    remove_logs(&mut owners, &mut paths, &mut swept);
                }
            }
        }
    }
    remove_logs(&mut owners, &mut paths, &mut swept);
    for &(job, tasks) in jobs {
        for task in 0..tasks {
            let dir = scratch_dir.join(format!("{job}.{task}"));
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => swept.scratch_dirs += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    swept.failures += 1;
                    cleanup_failed(job, "scratch", &dir, &e.to_string());
                }
            }
        }
    }
    swept
}

/// The most log streams the janitor removes with one listing of the log directory (a few
/// hundred bytes each while it works).
const JANITOR_CHUNK: usize = 8192;

/// Removes the streams at `paths` (of the jobs `owners`, one per path), counts and reports
/// each outcome, and empties both.
fn remove_logs(owners: &mut Vec<JobId>, paths: &mut Vec<PathBuf>, swept: &mut Swept) {
    let removed = cadre_cpu::joblog::remove_streams(paths);
    for ((job, path), outcome) in owners.drain(..).zip(paths.drain(..)).zip(removed) {
        match outcome {
            Ok(_) => swept.log_files += 1,
            Err(error) => {
                swept.failures += 1;
                cleanup_failed(job, "logs", &path, &error.to_string());
            }
        }
    }
}

fn cleanup_failed(job: JobId, what: &'static str, path: &Path, error: &str) {
    tracing::warn!(job = %job, what, path = %path.display(), error,
        "could not remove what a pruned job left on disk");
    metrics::counter!(cadre_actors::metrics::PRUNE_CLEANUP_ERRORS, "what" => what).increment(1);
}

/// The jobs a store keeps below its next id, as ranges of ids: every other id below it was
/// pruned (ids are consecutive from 1). Taken once at start-up, before the scheduler owns the
/// store, so the sweep needs nothing from the scheduler: a job pruned later is the janitor's,
/// and a job accepted later has an id at or above `next`, which the sweep never touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptIds {
    /// Inclusive ranges, ascending and disjoint.
    ranges: Vec<(u64, u64)>,
    /// The id the next accepted job gets.
    next: u64,
}

impl KeptIds {
    /// The jobs `table` keeps, and its next id.
    pub fn of(table: &JobTable) -> KeptIds {
        KeptIds {
            ranges: table.kept_ranges(),
            next: table.next_id().0,
        }
    }

    /// From the kept ids (any order) and the next id: the tests' way to make one.
    #[cfg(test)]
    fn from_ids(ids: impl IntoIterator<Item = u64>, next: u64) -> KeptIds {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut ascending = true;
        for id in ids.into_iter().filter(|&id| id < next) {
            match ranges.last_mut() {
                Some((_, end)) if id == end.saturating_add(1) => *end = id,
                // Listed twice: kept once.
                Some((start, end)) if (*start..=*end).contains(&id) => {}
                Some((start, _)) if id < *start => {
                    ascending = false;
                    ranges.push((id, id));
                }
                _ => ranges.push((id, id)),
            }
        }
        if !ascending {
            ranges.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
            for (start, end) in ranges {
                match merged.last_mut() {
                    Some((_, last)) if start <= last.saturating_add(1) => *last = (*last).max(end),
                    _ => merged.push((start, end)),
                }
            }
            ranges = merged;
        }
        KeptIds { ranges, next }
    }

    /// The kept ids as inclusive ranges (ascending, disjoint), and the next id: what a
    /// scheduler sends an agent in a `Sweep`.
    pub fn parts(&self) -> (&[(u64, u64)], u64) {
        (&self.ranges, self.next)
    }

    /// Kept ids from the parts of [`KeptIds::parts`] (a `Sweep` read off the wire): refused
    /// unless the ranges are each in order, ascending and disjoint, since a wrong range would
    /// remove a kept job's files.
    pub fn from_ranges(ranges: Vec<(u64, u64)>, next: u64) -> Result<KeptIds, String> {
        let mut last: Option<u64> = None;
        for (i, &(start, end)) in ranges.iter().enumerate() {
            if start > end {
                return Err(format!("kept[{i}]: {start}..={end} is backwards"));
            }
            if last.is_some_and(|l| start <= l) {
                return Err(format!(
                    "kept[{i}]: {start}..={end} overlaps or precedes the range before"
                ));
            }
            last = Some(end);
        }
        Ok(KeptIds { ranges, next })
    }

    /// Whether `job` was accepted once and has since been pruned: below the next id (ids
    /// start at 1) and not kept.
    pub fn was_pruned(&self, job: u64) -> bool {
        if job == 0 || job >= self.next {
            return false;
        }
        let after = self.ranges.partition_point(|&(start, _)| start <= job);
        !(after > 0 && job <= self.ranges[after - 1].1)
    }
}

/// A decimal number as cadre writes one in a file name (no sign, no leading zero).
fn number(part: &[u8]) -> Option<u64> {
    if part.is_empty() || (part.len() > 1 && part[0] == b'0') {
        return None;
    }
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(part).ok()?.parse().ok()
}

/// `<job>.<task>` as the worker names a task's scratch directory: the job.
fn scratch_job(name: &[u8]) -> Option<u64> {
    let mut parts = name.split(|b| *b == b'.');
    let job = number(parts.next()?)?;
    let task = number(parts.next()?)?;
    (parts.next().is_none() && u32::try_from(task).is_ok()).then_some(job)
}

/// A task's log piece as the worker names it: its job, and whether it is a tail segment
/// (`<job>.<task>.<out|err>` is the head, `<head>.<offset, 20 digits>` a segment; see
/// `cadre_cpu::joblog`).
fn log_piece(name: &[u8]) -> Option<(u64, bool)> {
    let (head, segment) = match cadre_cpu::joblog::split_segment(name) {
        Some((head, _)) => (head, true),
        None => (name, false),
    };
    let mut parts = head.split(|b| *b == b'.');
    let job = number(parts.next()?)?;
    let task = number(parts.next()?)?;
    u32::try_from(task).ok()?;
    if !matches!(parts.next()?, b"out" | b"err") || parts.next().is_some() {
        return None;
    }
    Some((job, segment))
}

/// What the start-up sweep removed, and how many removals failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Log files (heads and tail segments) removed.
    pub log_files: u64,
    /// Scratch directories removed.
    pub scratch_dirs: u64,
    /// Removals (or listings) that failed, each said and counted.
    pub failures: u64,
}

/// Starts the sweep of what pruned jobs left in `log_dir` and `scratch_dir` (see
/// [`sweep_pruned`]) on tokio's blocking pool and returns at once; one info line says what it
/// removed. Must run inside a tokio runtime.
pub fn spawn_sweep(log_dir: PathBuf, scratch_dir: PathBuf, kept: KeptIds) {
    // Not awaited: the node serves meanwhile (what it touches is no live job's), and a sweep
    // cut short by a stop is finished by the next start.
    drop(tokio::task::spawn_blocking(move || {
        let swept = sweep_pruned(&log_dir, &scratch_dir, &kept);
        tracing::info!(
            log_files = swept.log_files,
            scratch_dirs = swept.scratch_dirs,
            failures = swept.failures,
            logs = %log_dir.display(),
            scratch = %scratch_dir.display(),
            "swept what pruned jobs left on disk"
        );
    }));
}

/// Removes the log files and scratch directories of pruned jobs (per `kept`): what a node
/// that stopped after a `Pruned` record was durable but before its janitor ran left behind.
/// Only names that parse as a task's log piece or scratch directory are touched, only for ids
/// below the next one that the table does not keep: never a kept job's, a future job's or a
/// file cadre did not name. Blocking; one pass over the scratch directory and two over the log
/// directory (tail segments first, then heads, as `cadre_cpu::joblog` removes a stream, so a
/// sweep cut short never leaves segments without their head), holding nothing per entry. Each
/// failure is one warning and one count of `cadre_prune_cleanup_errors_total`.
pub fn sweep_pruned(log_dir: &Path, scratch_dir: &Path, kept: &KeptIds) -> Swept {
    let mut swept = Swept::default();
    for heads in [false, true] {
        // A listing of segments that failed leaves the heads: removing them first would leave
        // segments that nothing finds from the head.
        let listed = each_entry(log_dir, "logs", &mut swept, |entry, swept| {
            let Some((job, segment)) = log_piece(entry.file_name().as_bytes()) else {
                return;
            };
            if segment == heads || !kept.was_pruned(job) {
                return;
            }
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                return;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => swept.log_files += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => sweep_failed(swept, Some(job), "logs", &path, &e.to_string()),
            }
        });
        if !listed {
            break;
        }
    }
    each_entry(scratch_dir, "scratch", &mut swept, |entry, swept| {
        let Some(job) = scratch_job(entry.file_name().as_bytes()) else {
            return;
        };
        if !kept.was_pruned(job) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            return;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => swept.scratch_dirs += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => sweep_failed(swept, Some(job), "scratch", &path, &e.to_string()),
        }
    });
    swept
}

/// Calls `f` with each entry of `dir` (a directory that does not exist has none); a listing
/// that fails is one failure, and ends the pass: `false` then.
fn each_entry(
    dir: &Path,
    what: &'static str,
    swept: &mut Swept,
    mut f: impl FnMut(&std::fs::DirEntry, &mut Swept),
) -> bool {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => {
            sweep_failed(swept, None, what, dir, &e.to_string());
            return false;
        }
    };
    for entry in entries {
        match entry {
            Ok(entry) => f(&entry, swept),
            Err(e) => {
                sweep_failed(swept, None, what, dir, &e.to_string());
                return false;
            }
        }
    }
    true
}

fn sweep_failed(swept: &mut Swept, job: Option<u64>, what: &'static str, path: &Path, error: &str) {
    swept.failures += 1;
    tracing::warn!(job, what, path = %path.display(), error,
        "start-up sweep: could not remove what a pruned job left on disk");
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
    fn kept_ids_say_which_ids_below_the_next_were_pruned() {
        let kept = KeptIds::from_ids([2, 3, 4, 7, 9, 12], 10);
        assert_eq!(
            kept.ranges,
            vec![(2, 4), (7, 7), (9, 9)],
            "12 is not below 10"
        );
        let pruned: Vec<u64> = (0..13).filter(|&id| kept.was_pruned(id)).collect();
        // 0 was never an id; 10 and above are not yet.
        assert_eq!(pruned, [1, 5, 6, 8]);
        // Any order, repeats included, gives the same answer.
        assert_eq!(KeptIds::from_ids([9, 3, 7, 2, 4, 3, 9], 10), kept);
        let none = KeptIds::from_ids([], 4);
        assert!((1..4).all(|id| none.was_pruned(id)) && !none.was_pruned(4));
        let fresh = KeptIds::from_ids([], 1);
        assert!(!fresh.was_pruned(0) && !fresh.was_pruned(1));
    }

    #[test]
    fn kept_ids_from_the_wire_are_refused_unless_ascending_and_disjoint() {
        let kept = KeptIds::from_ids([2, 3, 4, 7, 9], 10);
        let (ranges, next) = kept.parts();
        assert_eq!(KeptIds::from_ranges(ranges.to_vec(), next).unwrap(), kept);
        for bad in [vec![(4, 2)], vec![(2, 4), (4, 6)], vec![(7, 8), (2, 3)]] {
            let refused = KeptIds::from_ranges(bad.clone(), 10).unwrap_err();
            assert!(refused.starts_with("kept["), "{bad:?}: {refused}");
        }
    }

    #[test]
    fn only_names_cadre_gives_a_task_are_a_jobs_files() {
        assert_eq!(log_piece(b"12.0.out"), Some((12, false)));
        assert_eq!(log_piece(b"12.3.err"), Some((12, false)));
        assert_eq!(
            log_piece(b"12.0.out.00000000000016777216"),
            Some((12, true))
        );
        for stray in [
            &b"12.0.log"[..],
            b"12.0.out.bak",
            b"12.0.out.123",
            b"12.0.out.00000000000016777216.x",
            b"012.0.out",
            b"12.01.out",
            b"+12.0.out",
            b"12.x.out",
            b"12.out",
            b"12.0",
            b"12.99999999999.out",
            b"99999999999999999999999.0.out",
            b"README",
            b"",
        ] {
            assert_eq!(log_piece(stray), None, "{}", String::from_utf8_lossy(stray));
        }
        assert_eq!(scratch_job(b"12.0"), Some(12));
        assert_eq!(scratch_job(b"0.0"), Some(0));
        for stray in [
            &b"12"[..],
            b"12.0.out",
            b"12.0.tmp",
            b"x.0",
            b"12.",
            b".0",
            b"012.0",
        ] {
            assert_eq!(
                scratch_job(stray),
                None,
                "{}",
                String::from_utf8_lossy(stray)
            );
        }
    }

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new(name: &str) -> Tmp {
            let dir =
                std::env::temp_dir().join(format!("cadre-confine-{name}-{}", std::process::id()));
            // A run killed before its drop left this one.
            remove(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tmp(dir)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            remove(&self.0);
        }
    }

    fn remove(dir: &Path) {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("{}: not removed: {e}", dir.display())
            }
            _ => {}
        }
    }

    #[test]
    fn the_sweep_removes_only_pruned_jobs_files() {
        let tmp = Tmp::new("sweep");
        let (logs, scratch) = (tmp.0.join("logs"), tmp.0.join("scratch"));
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(scratch.join("1.0/deep")).unwrap();
        std::fs::write(scratch.join("1.0/deep/f"), b"x").unwrap();
        for dir in ["2.0", "5.0", "1.0.tmp"] {
            std::fs::create_dir_all(scratch.join(dir)).unwrap();
        }
        // A file where a pruned job's scratch directory would be is not one.
        std::fs::write(scratch.join("1.1"), b"x").unwrap();
        let pruned_logs = ["1.0.out", "1.0.err", "1.0.out.00000000000000065536"];
        let left_logs = [
            "2.0.out",
            "2.0.out.00000000000000065536",
            "5.0.err",
            "0.0.out",
            "1.0.out.bak",
            "notes",
        ];
        for name in pruned_logs.iter().chain(&left_logs) {
            std::fs::write(logs.join(name), b"x").unwrap();
        }
        // Job 2 is kept, 1 and 3 were pruned, 5 is not accepted yet (next is 4).
        let kept = KeptIds::from_ids([2], 4);
        let swept = sweep_pruned(&logs, &scratch, &kept);
        assert_eq!(
            swept,
            Swept {
                log_files: 3,
                scratch_dirs: 1,
                failures: 0
            }
        );
        for name in pruned_logs {
            assert!(!logs.join(name).exists(), "{name}");
        }
        for name in left_logs {
            assert!(logs.join(name).exists(), "{name}");
        }
        assert!(!scratch.join("1.0").exists());
        for name in ["2.0", "5.0", "1.0.tmp", "1.1"] {
            assert!(scratch.join(name).exists(), "{name}");
        }
        // Nothing left to do: a second sweep removes nothing.
        assert_eq!(sweep_pruned(&logs, &scratch, &kept), Swept::default());
    }

    #[test]
    fn a_directory_that_cannot_be_listed_is_a_failure_and_the_rest_goes_on() {
        let tmp = Tmp::new("sweep-fail");
        let (logs, scratch) = (tmp.0.join("logs"), tmp.0.join("scratch"));
        // The log "directory" is a file: its listing fails, once (the heads' pass is skipped).
        std::fs::write(&logs, b"x").unwrap();
        std::fs::create_dir_all(scratch.join("1.0")).unwrap();
        let swept = sweep_pruned(&logs, &scratch, &KeptIds::from_ids([], 2));
        assert_eq!(swept.failures, 1, "{swept:?}");
        assert_eq!(swept.scratch_dirs, 1, "{swept:?}");
        // Missing directories are nothing to sweep, not a failure.
        let gone = tmp.0.join("gone");
        assert_eq!(
            sweep_pruned(&gone, &gone, &KeptIds::from_ids([], 2)),
            Swept::default()
        );
    }

    #[test]
    fn parent_names_differ_by_data_dir_and_are_stable() {
        let a = parent_name(Path::new("/nonexistent/a"));
        assert_eq!(a, parent_name(Path::new("/nonexistent/a")));
        assert_ne!(a, parent_name(Path::new("/nonexistent/b")));
        assert!(a.starts_with("cadre-") && a.len() == 14);
    }
}
