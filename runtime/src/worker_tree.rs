//! The worker's part of a node, shared by `cadre serve` (its local worker) and `cadre agent`:
//! capacity from the inventory, the GPU monitor, the extensions' workload actors, the process
//! ledger (swept of what a killed node left running) and the worker's settings, as children
//! ready for the tree.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::protocol::{GpuHealth, Heartbeat};
use cadre_actors::sched::WorkerCapacity;
use cadre_actors::worker::{Resolver, Worker, WorkerConfig};
use cadre_actors::workload::Run;
use cadre_actors::WorkerIdentity;
use cadre_cpu::cgroup::Cgroups;
use cadre_cpu::inventory::CpuInventory;
use cadre_cpu::launcher::Launcher;
use cadre_cpu::ledger::ProcessLedger;
use cadre_cpu::IoEngine;
use cadre_supervisor::{ChildSpec, SupervisorSpec, WorkerSpec};

use crate::config::Config;
use crate::error::Error;
use crate::gpu::{Discovered, GpuMonitor, GpuMonitorConfig};

/// The one worker's name on its node (its child name in the tree): with the node's name, how
/// the scheduler and the GPU monitor know it.
pub const WORKER_NAME: &str = "cpu-0";

/// What the worker's part of a node is built from.
pub(crate) struct Inputs<'a> {
    pub config: &'a Config,
    pub identity: WorkerIdentity,
    pub engine: IoEngine,
    pub log_dir: PathBuf,
    pub scratch_dir: PathBuf,
    pub data_dir: PathBuf,
    pub gpus: &'a Discovered,
    pub cgroups: Option<Cgroups>,
    pub workloads: Vec<(String, ChildSpec, Recipient<Run>)>,
    pub resolve: Resolver,
    pub heartbeats: Option<Recipient<Heartbeat>>,
    pub gpu_health: Recipient<GpuHealth>,
}

/// The worker's part of a node, as children of its root.
pub(crate) struct Parts {
    /// `workloads`: one child per extension workload kind.
    pub workloads: ChildSpec,
    /// `workers`: the worker.
    pub workers: ChildSpec,
    /// `gpu-health`, where there are GPUs and NVML loads.
    pub gpu_monitor: Option<ChildSpec>,
}

/// Builds the worker's part of a node.
pub(crate) fn build(inputs: Inputs<'_>) -> Result<Parts, Error> {
    let config = inputs.config;
    let inventory = CpuInventory::read()?;
    let capacity = WorkerCapacity {
        cpu_millis: config
            .worker_cpu_millis
            .unwrap_or(inventory.online.len().max(1) as u64 * 1000),
        memory_bytes: config
            .worker_memory_bytes
            .unwrap_or(inventory.memory_total_bytes),
        gpus: (0..inputs.gpus.devices.len() as u32).collect(),
    };
    tracing::info!(
        cpu_millis = capacity.cpu_millis,
        memory_bytes = capacity.memory_bytes,
        gpus = capacity.gpus.len(),
        "worker capacity"
    );
    let gpu_devices = inputs.gpus.worker_devices();
    let gpu_monitor = if gpu_devices.is_empty() {
        None
    } else {
        match cadre_gpu::Sampler::new() {
            Ok(sampler) => {
                let monitor_config = Arc::new(GpuMonitorConfig {
                    devices: gpu_devices.clone(),
                    worker: inputs.identity.clone(),
                    every: Duration::from_millis(config.gpu_health_every_ms),
                    limits: cadre_gpu::HealthLimits {
                        max_temperature_celsius: config.gpu_max_temperature_celsius,
                        ..cadre_gpu::HealthLimits::default()
                    },
                    source: Arc::new(sampler),
                    scheduler: inputs.gpu_health,
                });
                Some(
                    WorkerSpec::new("gpu-health", move || {
                        GpuMonitor::new(Arc::clone(&monitor_config))
                    })
                    .into(),
                )
            }
            Err(error) => {
                tracing::warn!(%error,
                    "NVML unavailable: GPU health is not sampled and every GPU counts as healthy");
                None
            }
        }
    };
    let mut workloads = BTreeMap::new();
    // Each workload has its own restart limit; the group never escalates to the node.
    let mut workloads_sup =
        SupervisorSpec::one_for_one().intensity(u32::MAX, Duration::from_secs(1));
    for (name, spec, recipient) in inputs.workloads {
        workloads.insert(name, recipient);
        workloads_sup = workloads_sup.child(spec);
    }
    let ledger_path = inputs.data_dir.join(format!("{WORKER_NAME}.processes"));
    let ledger = match ProcessLedger::open(&ledger_path) {
        Ok((ledger, sweep)) => {
            if !sweep.killed.is_empty() {
                tracing::warn!(killed = sweep.killed.len(), groups = ?sweep.killed,
                    "killed job processes left running by the previous node");
            }
            Some(Mutex::new(ledger))
        }
        Err(error) => {
            tracing::error!(path = %ledger_path.display(), %error,
                "process ledger unavailable: processes of a crashed node are not swept");
            None
        }
    };
    let worker_config = Arc::new(WorkerConfig {
        identity: inputs.identity,
        datacenter: config.cluster.datacenter.clone(),
        labels: config.cluster.labels.clone(),
        capacity,
        launcher: Launcher::new(inputs.engine),
        log_dir: inputs.log_dir,
        resolve: inputs.resolve,
        health: inputs.heartbeats,
        workloads,
        gpus: gpu_devices,
        renew_every: Duration::from_millis(config.renew_every_ms),
        progress_every: Duration::from_millis(config.progress_every_ms),
        fence_margin: Duration::from_millis(config.fence_margin_ms),
        term_grace: Duration::from_millis(config.kill_grace_ms),
        ledger,
        cgroups: inputs.cgroups,
        max_pids: config.cgroups.max_pids,
        scratch_dir: inputs.scratch_dir,
        base_env: crate::confine::base_env(&|k| std::env::var(k).ok()),
        log_cap: Some(config.logs.max_bytes_per_stream),
    });
    let wc = Arc::clone(&worker_config);
    let worker_spec =
        WorkerSpec::new(WORKER_NAME, move || Worker::new(Arc::clone(&wc))).mailbox_capacity(65_536);
    let workers = SupervisorSpec::one_for_one()
        .intensity(10, Duration::from_secs(60))
        .child(worker_spec)
        .into_child("workers");
    Ok(Parts {
        workloads: workloads_sup.into_child("workloads"),
        workers,
        gpu_monitor,
    })
}
