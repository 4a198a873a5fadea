//! The node's GPUs: discovery at start, through `cadre-gpu`'s driver probe and inventory, and
//! the GPU health monitor, a supervised actor that samples every device through NVML on an
//! interval, exports the `cadre_gpu_*{device}` gauges, and tells the scheduler when a device
//! turns healthy again and, on every sample, that an unhealthy one (ECC errors, too hot,
//! unreadable) still is, so nothing new is placed on a bad device, also after the scheduler
//! restarted and forgot.
//!
//! A machine without GPUs is a normal state: discovery says so once, with the reason, and the
//! node offers zero GPUs; GPU jobs then wait with that reason in their status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::protocol::{GpuDevice, GpuHealth};
use cadre_actors::WorkerIdentity;
use cadre_gpu::{DeviceHealth, DeviceInfo, GpuError, HealthLimits, HealthSample, Sampler};
use cadre_supervisor::SupervisedContext;

/// What discovery found.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// The devices, in driver order.
    pub devices: Vec<DeviceInfo>,
    /// Why there are none, when there are none.
    pub absent: Option<String>,
}

impl Discovered {
    /// The devices as the worker owns them: index `i` is the `i`-th device.
    pub fn worker_devices(&self) -> Vec<GpuDevice> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| GpuDevice {
                index: i as u32,
                uuid: d.uuid.clone(),
                ordinal: d.ordinal as u32,
            })
            .collect()
    }
}

/// Finds the machine's GPUs (off the actor thread: `cuInit` and creating contexts take a
/// while on a real driver). Logs the outcome once: each device found, or why there is none.
pub async fn discover() -> Discovered {
    let found =
        tokio::task::spawn_blocking(|| cadre_gpu::probe().and_then(|d| d.inventory())).await;
    let (devices, absent) = match found {
        Ok(Ok(devices)) => {
            for d in &devices {
                tracing::info!(gpu = d.ordinal, uuid = %d.uuid, name = %d.name,
                    compute_capability = ?d.compute_capability, memory_bytes = d.total_memory_bytes,
                    "GPU found");
            }
            (devices, None)
        }
        Ok(Err(e)) if e.is_absent() => {
            tracing::info!(reason = %e,
                "no GPUs on this node: the worker offers 0 GPUs and GPU jobs wait with this reason");
            (Vec::new(), Some(e.to_string()))
        }
        Ok(Err(e)) => {
            // Already counted where it happened (cadre_gpu_errors_total).
            tracing::error!(error = %e,
                "GPU discovery failed: the worker offers 0 GPUs and GPU jobs wait with this reason");
            (Vec::new(), Some(e.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %e, "GPU discovery did not finish: the worker offers 0 GPUs");
            metrics::counter!(cadre_gpu::metrics::GPU_ERRORS, "kind" => "discovery").increment(1);
            (
                Vec::new(),
                Some(format!("GPU discovery did not finish: {e}")),
            )
        }
    };
    metrics::gauge!(cadre_gpu::metrics::GPU_DEVICES).set(devices.len() as f64);
    Discovered { devices, absent }
}

/// Where health samples come from: NVML on a node, a script in tests.
pub trait HealthSource: Send + Sync + 'static {
    /// One sample of the device with `uuid`; an error makes the device unhealthy.
    fn sample(&self, uuid: &str) -> Result<HealthSample, GpuError>;
}

impl HealthSource for Sampler {
    fn sample(&self, uuid: &str) -> Result<HealthSample, GpuError> {
        Sampler::sample(self, uuid)
    }
}

/// What the GPU monitor watches and whom it tells.
pub struct GpuMonitorConfig {
    /// The worker's devices.
    pub devices: Vec<GpuDevice>,
    /// The worker (how the scheduler knows it).
    pub worker: WorkerIdentity,
    /// How often every device is sampled.
    pub every: Duration,
    /// What counts as unhealthy.
    pub limits: HealthLimits,
    /// Where samples come from.
    pub source: Arc<dyn HealthSource>,
    /// The scheduler.
    pub scheduler: Recipient<GpuHealth>,
}

/// The GPU health monitor (see the module comment).
pub struct GpuMonitor {
    config: Arc<GpuMonitorConfig>,
    /// The health the scheduler has accepted for each device index; absent means healthy (as
    /// a device registers).
    told: HashMap<u32, DeviceHealth>,
    /// Whether each device was healthy when last logged (absent: healthy), so a change is
    /// logged once even while the scheduler refuses the report.
    logged: HashMap<u32, bool>,
}

impl GpuMonitor {
    /// A monitor; it samples on start and then every `config.every`.
    pub fn new(config: Arc<GpuMonitorConfig>) -> GpuMonitor {
        GpuMonitor {
            config,
            told: HashMap::new(),
            logged: HashMap::new(),
        }
    }

    fn tick(&mut self, ctx: &mut SupervisedContext<Self>) {
        let config = Arc::clone(&self.config);
        for device in &config.devices {
            let health = match config.source.sample(&device.uuid) {
                Ok(sample) => {
                    sample.export(&device.uuid);
                    sample.judge(&config.limits)
                }
                // Logged and counted by the source.
                Err(e) => DeviceHealth::Unhealthy(format!("its health cannot be read: {e}")),
            };
            let healthy_now = f64::from(u8::from(health == DeviceHealth::Healthy));
            metrics::gauge!(cadre_gpu::metrics::GPU_HEALTHY, "device" => device.uuid.clone())
                .set(healthy_now);
            let told = self
                .told
                .get(&device.index)
                .cloned()
                .unwrap_or(DeviceHealth::Healthy);
            let (healthy, reason) = match &health {
                DeviceHealth::Healthy => (true, "its readings are within limits".to_owned()),
                DeviceHealth::Unhealthy(reason) => (false, reason.clone()),
            };
            if self.logged.get(&device.index).copied().unwrap_or(true) != healthy {
                self.logged.insert(device.index, healthy);
                if healthy {
                    tracing::info!(gpu = device.index, uuid = %device.uuid, "GPU healthy again");
                } else {
                    tracing::warn!(gpu = device.index, uuid = %device.uuid, %reason, "GPU unhealthy");
                }
            }
            // A healthy device is reported only when it recovers; an unhealthy one on every
            // sample, so a scheduler that restarted (and took every GPU as healthy again)
            // learns it at once. The scheduler logs only changes.
            if healthy && told == DeviceHealth::Healthy {
                continue;
            }
            let msg = GpuHealth {
                worker: config.worker.clone(),
                index: device.index,
                healthy,
                reason,
            };
            let (index, uuid) = (device.index, device.uuid.clone());
            let send = config.scheduler.send(msg);
            ctx.spawn(send.into_actor(self).map(
                move |result, act, ctx| match result {
                    // Only what the scheduler took counts as told; the rest is sent again on
                    // the next sample.
                    Ok(Ok(())) => {
                        act.told.insert(index, health);
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(gpu = index, uuid = %uuid, %error, path = ctx.path(),
                            "scheduler did not take the GPU's health; sent again next sample");
                        metrics::counter!(cadre_gpu::metrics::GPU_ERRORS, "kind" => "health_refused")
                            .increment(1);
                    }
                    Err(error) => {
                        tracing::error!(gpu = index, uuid = %uuid, %error, path = ctx.path(),
                            "GPU health not delivered to the scheduler; sent again next sample");
                        metrics::counter!(cadre_gpu::metrics::GPU_ERRORS, "kind" => "health_undelivered")
                            .increment(1);
                    }
                },
            ));
        }
    }
}

impl Actor for GpuMonitor {
    type Context = SupervisedContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.config.every, |act, ctx| act.tick(ctx));
    }
}
