//! Retention of ended jobs: the policy (age, count, and how full the data's disk may get), and
//! the pass that applies it on a timer. Pruned jobs leave the table by one journaled record per
//! batch (replay and snapshots stay bounded); once it is durable the janitor removes their files.
//!
//! Disk pressure: where the node's data directory's filesystem is fuller than
//! [`Retention::max_disk_used_percent`], the oldest ended jobs are pruned early, whatever the
//! count kept, about a hundredth of those kept (at least ten) per pass, until it is not
//! (Nomad's client does the same above `gc_disk_usage_threshold`); a job that ended less than
//! [`Retention::pressure_min_age`] ago stays, so that its outcome and logs can still be read.
//! A disk that cannot be read ends pressure (one warning, each failure counted): the age and
//! the count alone decide then, never a stale reading. Job output is capped per
//! stream, but 100,000 kept jobs at 128 MiB each would fill any disk, and a full disk makes the
//! job store read-only: history goes first, so that the node keeps accepting work. The disk is
//! read through a [`DiskProbe`] (`statvfs` on a node, a stand-in in tests); entering and leaving
//! pressure is one line each, and `cadre_retention_disk_pressure` says which holds.

use super::*;

/// How full the disk holding the node's data is: `statvfs` of the data directory on a node, a
/// stand-in in tests.
#[derive(Clone)]
pub struct DiskProbe(
    pub Arc<dyn Fn() -> std::io::Result<cadre_cpu::disk::DiskSpace> + Send + Sync>,
);

impl std::fmt::Debug for DiskProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskProbe")
    }
}

impl DiskProbe {
    /// The filesystem of `dir`, through `statvfs`.
    pub fn statvfs(dir: PathBuf) -> DiskProbe {
        DiskProbe(Arc::new(move || cadre_cpu::disk::space(&dir)))
    }
}

/// The retention policy of ended jobs, as Slurm's `MinJobAge` and `MaxJobCount` and Nomad's
/// `job_gc_threshold`: an ended job is removed (table, journal, logs) once it ended `max_age`
/// ago, or once more than `max_jobs` ended jobs are kept (the oldest go first), or earlier
/// while the data's disk is fuller than `max_disk_used_percent` (see the module comment).
#[derive(Debug, Clone)]
pub struct Retention {
    /// How long an ended job is kept (default 24 h: a day to look at what happened).
    pub max_age: Duration,
    /// How many ended jobs are kept at most (default 100,000: about 60 MB of memory and
    /// 15 MB of snapshot).
    pub max_jobs: usize,
    /// How often the policy is applied (default 1 s).
    pub every: Duration,
    /// The most jobs one `Pruned` record removes (default 10,000; more go in the next).
    pub batch: usize,
    /// Above this share of the disk used (percent), ended jobs are pruned early (default 90;
    /// 100 never). Read through `disk`.
    pub max_disk_used_percent: u8,
    /// How full the disk is; `None`: the disk is not watched.
    pub disk: Option<DiskProbe>,
    /// How long ago a job must have ended to be pruned early for disk space (default 60 s).
    pub pressure_min_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_jobs: 100_000,
            every: Duration::from_secs(1),
            batch: 10_000,
            max_disk_used_percent: 90,
            disk: None,
            pressure_min_age: Duration::from_secs(60),
        }
    }
}

/// What a look at the disk found.
enum DiskReading {
    /// The disk is not watched (no probe, or a limit of 100%).
    Unwatched,
    /// Whether it is fuller than the limit, and how full.
    Read(bool, cadre_cpu::disk::DiskSpace),
    /// The probe failed.
    Failed(std::io::Error),
}

impl Retention {
    /// Looks at the disk once.
    fn read_disk(&self) -> DiskReading {
        let Some(probe) = self.disk.as_ref() else {
            return DiskReading::Unwatched;
        };
        if self.max_disk_used_percent >= 100 {
            return DiskReading::Unwatched;
        }
        match (probe.0)() {
            Ok(space) if space.total_bytes > 0 => DiskReading::Read(
                space.used_percent() > f64::from(self.max_disk_used_percent),
                space,
            ),
            Ok(_) => DiskReading::Failed(std::io::Error::other("the filesystem reports no size")),
            Err(error) => DiskReading::Failed(error),
        }
    }
}

impl Scheduler {
    /// Applies the retention policy: the oldest ended jobs beyond it are removed by one
    /// journaled record per batch; once durable, the janitor removes their files.
    pub(super) fn prune(&mut self, ctx: &mut Ctx) {
        let retention = self.config.retention.clone();
        let pressure = self.disk_pressure(&retention);
        // Enough batches to keep up with a node ending jobs at its full rate, bounded so one
        // pass does not hold the actor long.
        for _ in 0..64 {
            let Some(core) = self.core.as_ref() else {
                return;
            };
            if core.unwritable.is_some() || !core.deferred.is_empty() || core.closing {
                return;
            }
            let Some(store) = core.store.as_ref() else {
                return;
            };
            let table = store.table();
            let mut jobs = table.prunable(
                now_ms(),
                retention.max_age.as_millis() as u64,
                retention.max_jobs,
                retention.batch.max(1),
            );
            let mut full = jobs.len() >= retention.batch.max(1);
            let mut reason = "policy";
            if jobs.is_empty() && pressure {
                // Early, a share of what is kept per pass: the files go once the record is
                // durable, and the next pass looks at the disk again.
                let share = (table.ended_len() / 100)
                    .max(10)
                    .min(retention.batch.max(1));
                let min_age = retention.pressure_min_age.as_millis() as u64;
                jobs = table.prunable(now_ms(), min_age, usize::MAX, share);
                full = false;
                reason = "disk";
            }
            if jobs.is_empty() {
                return;
            }
            let pruned: Vec<PrunedJob> = jobs
                .iter()
                .filter_map(|&job| {
                    table.get(job).map(|e| PrunedJob {
                        job,
                        tasks: e.spec.gang.max(1),
                        command: matches!(e.spec.kind, crate::job::JobKind::Command(_)),
                        nodes: e.nodes.clone(),
                    })
                })
                .collect();
            let count = jobs.len() as u64;
            if let Some(core) = self.core.as_mut() {
                core.kept_ids = None;
            }
            self.commit(ctx, Record::Pruned { jobs }, move |act, ctx, result| {
                let durable = match result {
                    Ok(d) => d,
                    Err(error) => {
                        tracing::error!(jobs = count, %error, "could not record pruned jobs");
                        return;
                    }
                };
                metrics::counter!(m::JOBS_PRUNED, "reason" => reason).increment(count);
                if let Some(kept) = act
                    .core
                    .as_ref()
                    .and_then(|c| c.store.as_ref())
                    .map(|s| s.table().ended_len())
                {
                    metrics::gauge!(m::JOBS_KEPT_ENDED).set(kept as f64);
                }
                act.after_durable(ctx, durable, move |act, _| {
                    tracing::debug!(jobs = count, reason,
                        first = %pruned.first().map_or(JobId(0), |p| p.job),
                        "ended jobs pruned by retention");
                    if let Some(janitor) = &act.config.janitor {
                        janitor(pruned);
                    }
                });
            });
            if !full {
                return;
            }
        }
    }

    /// Reads the disk once for this pass and says when pressure begins or ends (one line each),
    /// and when the disk cannot be read (one warning, each failure counted); whether pressure
    /// holds.
    fn disk_pressure(&mut self, retention: &Retention) -> bool {
        let Some(core) = self.core.as_mut() else {
            return false;
        };
        let limit = retention.max_disk_used_percent;
        let (over, space) = match retention.read_disk() {
            DiskReading::Unwatched => return false,
            DiskReading::Failed(error) => {
                metrics::counter!(m::RETENTION_DISK_ERRORS).increment(1);
                if !core.disk_unreadable {
                    core.disk_unreadable = true;
                    tracing::warn!(%error,
                        "cannot read how full the data's disk is: retention goes by age and count alone until it can");
                }
                if core.disk_pressure {
                    core.disk_pressure = false;
                    metrics::gauge!(m::RETENTION_DISK_PRESSURE).set(0.0);
                }
                return false;
            }
            DiskReading::Read(over, space) => (over, space),
        };
        if core.disk_unreadable {
            core.disk_unreadable = false;
            tracing::info!(disk = %space, "the data's disk can be read again");
        }
        if over != core.disk_pressure {
            core.disk_pressure = over;
            metrics::gauge!(m::RETENTION_DISK_PRESSURE).set(if over { 1.0 } else { 0.0 });
            if over {
                tracing::warn!(disk = %space, max_used_percent = limit,
                    "the data's disk is fuller than retention allows: pruning ended jobs early");
            } else {
                tracing::info!(disk = %space, max_used_percent = limit,
                    "the data's disk is below the retention limit again");
            }
        }
        over
    }
}

/// The jobs the table keeps below its next id, as inclusive ranges of ids (ascending,
/// disjoint), and that next id: every other id below it was pruned. An agent sweeps what such
/// jobs left on it when it connects (`Sweep`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<KeptJobs>, Error>")]
pub struct KeptJobIds;

/// The answer to [`KeptJobIds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptJobs {
    /// The kept ids, as inclusive ranges, ascending and disjoint.
    pub ranges: Vec<(u64, u64)>,
    /// Every id at or above it is not the table's yet.
    pub next: u64,
}

impl Handler<KeptJobIds> for Scheduler {
    type Result = Result<Arc<KeptJobs>, Error>;

    /// Computed once per pruning (one pass over the table) and shared by every agent that
    /// connects meanwhile: a fleet reconnecting at once costs one pass, not one per agent. A
    /// job accepted since has an id at or above the answer's `next`, which no sweep touches.
    fn handle(&mut self, _: KeptJobIds, _: &mut Ctx) -> Self::Result {
        let core = self.core.as_mut().ok_or_else(|| Error::Unavailable {
            reason: "the scheduler is still opening its journal".to_owned(),
        })?;
        if let Some(kept) = &core.kept_ids {
            return Ok(Arc::clone(kept));
        }
        let table = core
            .store
            .as_ref()
            .ok_or_else(|| Error::Unavailable {
                reason: "the job store is closed".to_owned(),
            })?
            .table();
        let kept = Arc::new(KeptJobs {
            ranges: table.kept_ranges(),
            next: table.next_id().0,
        });
        core.kept_ids = Some(Arc::clone(&kept));
        Ok(kept)
    }
}
