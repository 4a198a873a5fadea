//! Writing a task group's limits: the CPU quota and weight, the memory limit (and swap), and the
//! pids limit, in v1's or v2's files.
//!
//! Invariants: every value is written, including "no limit", so a group holds the limits of its
//! task and nothing of a previous one (v1's CPU limits once a process joins, the others at
//! creation); a spare (v1) skips only the writes of values it holds already, as its last task
//! left them (see `spares`); v1's memory-plus-swap limit is lifted before the memory limit is set,
//! since the kernel keeps it at or above the memory limit.

use std::path::Path;

use super::fs::{fail, write_ctl, write_file};
use super::held::write_held;
use super::{CgroupLimits, Controller, TaskCgroup, CPU_MIN_QUOTA_US, CPU_PERIOD_US};
use crate::error::Result;

/// v1's largest `cpu.shares`.
const V1_MAX_SHARES: u64 = 1 << 18;
/// v2's largest `cpu.weight`.
const V2_MAX_WEIGHT: u64 = 10_000;

impl TaskCgroup {
    /// Writes the v1 CPU limits: quota, period and shares, just before the task's process
    /// joins the CPU group (see [`TaskCgroup::write_cpu_limits`]).
    pub(super) fn apply_v1_cpu(&self, limits: &CgroupLimits) -> Result<()> {
        let cpu = self.path(Controller::Cpu);
        let quota = match limits.cpu_millis {
            0 => "-1".to_string(),
            millis => quota_us(millis).to_string(),
        };
        let shares = match limits.cpu_millis {
            0 => 2,
            millis => (1024 * u64::from(millis) / 1000).clamp(2, V1_MAX_SHARES),
        };
        // A spare holds its last task's period, quota and weight. The quota is written all
        // the same: that refills the period's budget, which the last task may have spent.
        let held = self.cpu_written == Some(limits.cpu_millis);
        if !held {
            write_ctl(
                &self.who(),
                &cpu.join("cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
        }
        self.write_quota(&quota)?;
        if held {
            return Ok(());
        }
        write_ctl(&self.who(), &cpu.join("cpu.shares"), &shares.to_string())
    }

    /// Writes the v1 memory and pids limits.
    pub(super) fn apply_v1_memory_pids(&self, limits: &CgroupLimits) -> Result<()> {
        let memory = self.path(Controller::Memory);
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        let limit = match limits.memory_bytes {
            0 => "-1".to_string(),
            bytes => bytes.to_string(),
        };
        // memsw must stay >= the memory limit: lift it first, then lower both.
        let swap_accounted = memsw.exists() && self.optional(&memsw, "-1");
        write_ctl(&self.who(), &memory.join("memory.limit_in_bytes"), &limit)?;
        if swap_accounted && limits.memory_bytes > 0 {
            self.optional(&memsw, &limit);
        }
        // An OOM must kill (and be counted), not pause the group: oom_kill_disable is inherited.
        write_ctl(&self.who(), &memory.join("memory.oom_control"), "0")?;

        self.write_pids(limits)
    }

    /// Writes the v2 limits.
    pub(super) fn apply_v2(&self, limits: &CgroupLimits) -> Result<()> {
        let dir = self.path(Controller::Cpu);
        let (max, weight) = match limits.cpu_millis {
            0 => ("max".to_string(), 1),
            millis => (
                quota_us(millis).to_string(),
                (u64::from(millis) / 10).clamp(1, V2_MAX_WEIGHT),
            ),
        };
        write_ctl(
            &self.who(),
            &dir.join("cpu.max"),
            &format!("{max} {CPU_PERIOD_US}"),
        )?;
        write_ctl(&self.who(), &dir.join("cpu.weight"), &weight.to_string())?;
        let memory = self.path(Controller::Memory);
        let (limit, swap) = match limits.memory_bytes {
            0 => ("max".to_string(), "max"),
            bytes => (bytes.to_string(), "0"),
        };
        write_ctl(&self.who(), &memory.join("memory.max"), &limit)?;
        let swap_file = memory.join("memory.swap.max");
        if swap_file.exists() {
            self.optional(&swap_file, swap);
        }
        self.write_pids(limits)
    }

    /// Writes `cpu.cfs_quota_us` (v1), through the held file where there is one.
    pub(super) fn write_quota(&self, value: &str) -> Result<()> {
        let path = self.path(Controller::Cpu).join("cpu.cfs_quota_us");
        match &self.held {
            Some(held) => {
                write_held(&held.quota, value).map_err(|e| fail("write", &self.who(), &path, e))
            }
            None => write_ctl(&self.who(), &path, value),
        }
    }

    /// Writes `pids.max`.
    fn write_pids(&self, limits: &CgroupLimits) -> Result<()> {
        let value = limits
            .pids
            .map_or_else(|| "max".to_string(), |n| n.to_string());
        write_ctl(
            &self.who(),
            &self.path(Controller::Pids).join("pids.max"),
            &value,
        )
    }

    /// Writes a file the kernel may refuse (swap accounting off): whether it was accepted.
    fn optional(&self, path: &Path, value: &str) -> bool {
        match write_file(path, value) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(cgroup = %self.who(), path = %path.display(), error = %e,
                    "optional cgroup limit not accepted");
                false
            }
        }
    }
}

/// The CPU quota per [`CPU_PERIOD_US`] for `millis` thousandths of a core.
fn quota_us(millis: u32) -> u64 {
    (u64::from(millis) * CPU_PERIOD_US / 1000).max(CPU_MIN_QUOTA_US)
}
