//! The capacity table: every worker's CPU, memory and GPUs, and every reservation made on them.
//!
//! **Invariant:** a resource is booked at most once. A job's reservation is made all at once
//! (every task of a gang, or nothing), recorded under the job, and given back exactly once: a
//! second release finds nothing. Each worker's free CPU and memory always equal its total minus
//! the reservations on it, and a GPU belongs to at most one job. [`CapacityTable::check`]
//! verifies all of it; the property tests run it after every operation.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::WorkerId;
use crate::job::{JobId, Resources};
use crate::metrics as m;

/// One task's reservation on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The worker the task runs on.
    pub worker: WorkerId,
    /// The task's index within its job (0 for an ordinary job, 0..gang for a gang).
    pub task: u32,
    /// CPU reserved, in millicores.
    pub cpu_millis: u32,
    /// Memory reserved, in bytes.
    pub memory_bytes: u64,
    /// The worker's GPU indices reserved, each a whole device.
    pub gpus: Vec<u32>,
}

/// A worker's capacity as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCapacity {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// The indices of its GPUs.
    pub gpus: Vec<u32>,
}

/// What one worker has free, for `cadre nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerFree {
    /// CPU not reserved, in millicores.
    pub cpu_millis: u64,
    /// Memory not reserved, in bytes.
    pub memory_bytes: u64,
    /// Healthy GPUs not held.
    pub gpus: u32,
    /// The indices of its unhealthy GPUs.
    pub unhealthy_gpus: Vec<u32>,
}

/// Totals over all workers, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacitySummary {
    /// Registered workers.
    pub workers: usize,
    /// Workers taking new work.
    pub accepting: usize,
    /// CPU in millicores, all workers.
    pub cpu_total: u64,
    /// CPU not reserved.
    pub cpu_free: u64,
    /// Memory in bytes, all workers.
    pub memory_total: u64,
    /// Memory not reserved.
    pub memory_free: u64,
    /// GPUs, all workers.
    pub gpus_total: u64,
    /// Healthy GPUs not reserved.
    pub gpus_free: u64,
    /// GPUs marked unhealthy.
    pub gpus_unhealthy: u64,
}

#[derive(Debug, Clone)]
struct Gpu {
    index: u32,
    healthy: bool,
    holder: Option<JobId>,
}

#[derive(Debug, Clone)]
struct Entry {
    id: WorkerId,
    total_cpu: u64,
    total_mem: u64,
    free_cpu: u64,
    free_mem: u64,
    gpus: Vec<Gpu>,
    accepting: bool,
}

impl Entry {
    fn free_gpus(&self) -> u32 {
        self.gpus
            .iter()
            .filter(|g| g.healthy && g.holder.is_none())
            .count() as u32
    }

    fn fits(&self, r: &Resources) -> bool {
        self.accepting
            && self.free_cpu >= u64::from(r.cpu_millis)
            && self.free_mem >= r.memory_bytes
            && (r.gpus == 0 || self.free_gpus() >= r.gpus)
    }

    /// Books `r` for `job`; the caller has checked [`Entry::fits`].
    fn take(&mut self, job: JobId, task: u32, r: &Resources) -> Grant {
        self.free_cpu -= u64::from(r.cpu_millis);
        self.free_mem -= r.memory_bytes;
        let mut gpus = Vec::with_capacity(r.gpus as usize);
        for gpu in self.gpus.iter_mut() {
            if gpus.len() == r.gpus as usize {
                break;
            }
            if gpu.healthy && gpu.holder.is_none() {
                gpu.holder = Some(job);
                gpus.push(gpu.index);
            }
        }
        Grant {
            worker: self.id,
            task,
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus,
        }
    }

    fn give(&mut self, job: JobId, grant: &Grant) {
        self.free_cpu = (self.free_cpu + u64::from(grant.cpu_millis)).min(self.total_cpu);
        self.free_mem = (self.free_mem + grant.memory_bytes).min(self.total_mem);
        for gpu in self.gpus.iter_mut() {
            if gpu.holder == Some(job) && grant.gpus.contains(&gpu.index) {
                gpu.holder = None;
            }
        }
    }

    /// How many tasks of `r` this worker could hold when idle, counting only healthy GPUs.
    fn max_tasks(&self, r: &Resources) -> u64 {
        let healthy = self.gpus.iter().filter(|g| g.healthy).count() as u64;
        // A dimension the job does not use (zero) does not bound it.
        [
            self.total_cpu.checked_div(u64::from(r.cpu_millis)),
            self.total_mem.checked_div(r.memory_bytes),
            healthy.checked_div(u64::from(r.gpus)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX)
    }
}

/// Every worker's capacity and every job's reservation. See the module comment for the
/// invariant.
#[derive(Debug, Default)]
pub struct CapacityTable {
    entries: Vec<Entry>,
    by_id: FxHashMap<WorkerId, usize>,
    cursor: usize,
    reservations: FxHashMap<JobId, Vec<Grant>>,
}

impl CapacityTable {
    /// An empty table.
    pub fn new() -> CapacityTable {
        CapacityTable::default()
    }

    /// Registers a worker, taking new work at once.
    pub fn add_worker(&mut self, worker: WorkerId, capacity: &WorkerCapacity) -> Result<(), Error> {
        if self.by_id.contains_key(&worker) {
            return Err(Error::DuplicateWorker { worker });
        }
        let mut indices = capacity.gpus.clone();
        indices.sort_unstable();
        indices.dedup();
        self.by_id.insert(worker, self.entries.len());
        self.entries.push(Entry {
            id: worker,
            total_cpu: capacity.cpu_millis,
            total_mem: capacity.memory_bytes,
            free_cpu: capacity.cpu_millis,
            free_mem: capacity.memory_bytes,
            gpus: indices
                .into_iter()
                .map(|index| Gpu {
                    index,
                    healthy: true,
                    holder: None,
                })
                .collect(),
            accepting: true,
        });
        Ok(())
    }

    /// Removes a worker (it died or left). Every job with a task on it loses its whole
    /// reservation, on every worker (a gang cannot run with a task missing); those jobs are
    /// returned, in id order, for the caller to mark lost.
    pub fn remove_worker(&mut self, worker: WorkerId) -> Result<Vec<JobId>, Error> {
        let pos = *self
            .by_id
            .get(&worker)
            .ok_or(Error::UnknownWorker { worker })?;
        let mut jobs: Vec<JobId> = self
            .reservations
            .iter()
            .filter(|(_, grants)| grants.iter().any(|g| g.worker == worker))
            .map(|(job, _)| *job)
            .collect();
        jobs.sort_unstable();
        for job in &jobs {
            self.release(*job);
        }
        self.by_id.remove(&worker);
        self.entries.swap_remove(pos);
        if let Some(moved) = self.entries.get(pos) {
            self.by_id.insert(moved.id, pos);
        }
        if self.cursor >= self.entries.len() {
            self.cursor = 0;
        }
        Ok(jobs)
    }

    /// What a worker has free (CPU, memory, healthy GPUs not held) and the indices of its
    /// unhealthy GPUs; `None` for a worker not in the table.
    pub fn free(&self, worker: WorkerId) -> Option<WorkerFree> {
        let entry = self.entries.get(*self.by_id.get(&worker)?)?;
        Some(WorkerFree {
            cpu_millis: entry.free_cpu,
            memory_bytes: entry.free_mem,
            gpus: entry.free_gpus(),
            unhealthy_gpus: entry
                .gpus
                .iter()
                .filter(|g| !g.healthy)
                .map(|g| g.index)
                .collect(),
        })
    }

    /// Starts or stops placing new work on a worker (drain); its reservations stay.
    pub fn set_accepting(&mut self, worker: WorkerId, accepting: bool) -> Result<(), Error> {
        let entry = self.entry_mut(worker)?;
        entry.accepting = accepting;
        Ok(())
    }

    /// Marks one GPU healthy or not. An unhealthy GPU gets no new work; the job holding it, if
    /// any, is returned so the caller can decide about it.
    pub fn set_gpu_health(
        &mut self,
        worker: WorkerId,
        index: u32,
        healthy: bool,
    ) -> Result<Option<JobId>, Error> {
        let entry = self.entry_mut(worker)?;
        let gpu = entry
            .gpus
            .iter_mut()
            .find(|g| g.index == index)
            .ok_or(Error::UnknownDevice { worker, index })?;
        gpu.healthy = healthy;
        Ok(gpu.holder)
    }

    /// Whether one GPU is marked healthy.
    pub fn gpu_healthy(&self, worker: WorkerId, index: u32) -> Result<bool, Error> {
        let pos = *self
            .by_id
            .get(&worker)
            .ok_or(Error::UnknownWorker { worker })?;
        self.entries
            .get(pos)
            .and_then(|e| e.gpus.iter().find(|g| g.index == index))
            .map(|g| g.healthy)
            .ok_or(Error::UnknownDevice { worker, index })
    }

    fn entry_mut(&mut self, worker: WorkerId) -> Result<&mut Entry, Error> {
        let pos = *self
            .by_id
            .get(&worker)
            .ok_or(Error::UnknownWorker { worker })?;
        self.entries
            .get_mut(pos)
            .ok_or(Error::UnknownWorker { worker })
    }

    /// Reserves `gang` tasks of `resources` each for `job`, all or nothing. Tasks are placed
    /// next-fit from where the last placement ended, several on one worker where they fit, so
    /// work packs onto few workers and a scan starts where free capacity was last seen.
    /// `Ok(None)`: it does not fit now, and nothing was booked. A job that already holds a
    /// reservation is refused (booking it twice is the bug this table exists to prevent).
    pub fn reserve(
        &mut self,
        job: JobId,
        resources: &Resources,
        gang: u32,
    ) -> Result<Option<Vec<Grant>>, Error> {
        if self.reservations.contains_key(&job) {
            tracing::error!(job = %job, "second reservation for a job refused");
            metrics::counter!(m::CAPACITY_REFUSALS, "reason" => "already_reserved").increment(1);
            return Err(Error::AlreadyReserved { job });
        }
        let n = self.entries.len();
        if n == 0 {
            return Ok(None);
        }
        let mut grants: Vec<Grant> = Vec::with_capacity(gang.max(1) as usize);
        for task in 0..gang.max(1) {
            let found = (0..n)
                .map(|i| (self.cursor + i) % n)
                .find(|&pos| self.entries[pos].fits(resources));
            match found {
                Some(pos) => {
                    self.cursor = pos;
                    grants.push(self.entries[pos].take(job, task, resources));
                }
                None => {
                    for grant in &grants {
                        if let Some(&pos) = self.by_id.get(&grant.worker) {
                            self.entries[pos].give(job, grant);
                        }
                    }
                    return Ok(None);
                }
            }
        }
        self.reservations.insert(job, grants.clone());
        Ok(Some(grants))
    }

    /// Gives back everything `job` holds. `None` if it holds nothing (never booked, or already
    /// released): releasing twice frees nothing twice.
    pub fn release(&mut self, job: JobId) -> Option<Vec<Grant>> {
        let grants = self.reservations.remove(&job)?;
        for grant in &grants {
            if let Some(&pos) = self.by_id.get(&grant.worker) {
                self.entries[pos].give(job, grant);
            }
        }
        Some(grants)
    }

    /// What `job` holds, if anything.
    pub fn reservation(&self, job: JobId) -> Option<&[Grant]> {
        self.reservations.get(&job).map(Vec::as_slice)
    }

    /// Jobs holding a reservation.
    pub fn reserved_jobs(&self) -> usize {
        self.reservations.len()
    }

    /// Why `gang` tasks of `resources` could never be placed on the workers registered now (all
    /// of them idle, unhealthy GPUs not counted, draining workers not counted), or `None` if
    /// they could.
    pub fn never_fits(&self, resources: &Resources, gang: u32) -> Option<String> {
        let gang = u64::from(gang.max(1));
        let mut room: u64 = 0;
        for entry in self.entries.iter().filter(|e| e.accepting) {
            room = room.saturating_add(entry.max_tasks(resources));
            if room >= gang {
                return None;
            }
        }
        let summary = self.summary();
        Some(format!(
            "no registered worker can ever hold it: it needs {gang} task(s) of {} millicores, {} \
             bytes and {} GPU(s), and the {} accepting worker(s) hold at most {room} (largest: {} \
             millicores, {} bytes, {} healthy GPU(s))",
            resources.cpu_millis,
            resources.memory_bytes,
            resources.gpus,
            summary.accepting,
            self.entries.iter().map(|e| e.total_cpu).max().unwrap_or(0),
            self.entries.iter().map(|e| e.total_mem).max().unwrap_or(0),
            self.entries
                .iter()
                .map(|e| e.gpus.iter().filter(|g| g.healthy).count())
                .max()
                .unwrap_or(0),
        ))
    }

    /// Totals over all workers.
    pub fn summary(&self) -> CapacitySummary {
        let mut s = CapacitySummary {
            workers: self.entries.len(),
            ..CapacitySummary::default()
        };
        for e in &self.entries {
            s.accepting += usize::from(e.accepting);
            s.cpu_total += e.total_cpu;
            s.cpu_free += e.free_cpu;
            s.memory_total += e.total_mem;
            s.memory_free += e.free_mem;
            s.gpus_total += e.gpus.len() as u64;
            s.gpus_free += u64::from(e.free_gpus());
            s.gpus_unhealthy += e.gpus.iter().filter(|g| !g.healthy).count() as u64;
        }
        s
    }

    /// The registered workers, in no particular order.
    pub fn workers(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// Verifies the invariant (see the module comment): free = total - reserved for CPU and
    /// memory on every worker, every reserved GPU held by its job and by no other, no held GPU
    /// without a reservation. Returns the first violation found.
    pub fn check(&self) -> Result<(), String> {
        let mut cpu: HashMap<WorkerId, u64> = HashMap::new();
        let mut mem: HashMap<WorkerId, u64> = HashMap::new();
        let mut gpus: HashMap<(WorkerId, u32), JobId> = HashMap::new();
        for (job, grants) in &self.reservations {
            for g in grants {
                *cpu.entry(g.worker).or_default() += u64::from(g.cpu_millis);
                *mem.entry(g.worker).or_default() += g.memory_bytes;
                for &index in &g.gpus {
                    if let Some(other) = gpus.insert((g.worker, index), *job) {
                        return Err(format!(
                            "GPU {index} of worker {} booked by jobs {other} and {job}",
                            g.worker
                        ));
                    }
                }
            }
        }
        for e in &self.entries {
            let used_cpu = cpu.get(&e.id).copied().unwrap_or(0);
            let used_mem = mem.get(&e.id).copied().unwrap_or(0);
            if e.free_cpu + used_cpu != e.total_cpu {
                return Err(format!(
                    "worker {}: free cpu {} + reserved {} != total {}",
                    e.id, e.free_cpu, used_cpu, e.total_cpu
                ));
            }
            if e.free_mem + used_mem != e.total_mem {
                return Err(format!(
                    "worker {}: free memory {} + reserved {} != total {}",
                    e.id, e.free_mem, used_mem, e.total_mem
                ));
            }
            for g in &e.gpus {
                let booked = gpus.remove(&(e.id, g.index));
                if booked != g.holder {
                    return Err(format!(
                        "worker {} GPU {}: holder {:?}, reservations say {:?}",
                        e.id, g.index, g.holder, booked
                    ));
                }
            }
        }
        if let Some(((worker, index), job)) = gpus.into_iter().next() {
            return Err(format!(
                "job {job} holds GPU {index} of worker {worker}, which is not registered"
            ));
        }
        Ok(())
    }
}
