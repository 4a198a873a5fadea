//! Device health through NVML (libnvidia-ml, loaded at run time): utilization, memory in use,
//! temperature, power and ECC error counts, sampled per device and exported as gauges.
//!
//! Where NVML is missing the sampler cannot be built ([`GpuError::Nvml`]); where one reading
//! is not supported by a device (power on some boards, ECC where it is off) that field is
//! `None`, never zero.

use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use crate::error::{report, GpuError, Result};
use crate::metrics as m;

/// One sample of a device's health; a field is `None` where NVML cannot read it here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Share of the last sample period a kernel was running, 0 to 1.
    pub utilization: Option<f64>,
    /// Memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Die temperature, in degrees Celsius.
    pub temperature_celsius: Option<u32>,
    /// Power draw, in watts.
    pub power_watts: Option<f64>,
    /// Uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected: Option<u64>,
}

/// Thresholds past which a device is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthLimits {
    /// Hottest acceptable die temperature, in degrees Celsius.
    pub max_temperature_celsius: u32,
    /// Most uncorrected ECC errors tolerated (0: any one makes the device unhealthy).
    pub max_ecc_uncorrected: u64,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            max_temperature_celsius: 90,
            max_ecc_uncorrected: 0,
        }
    }
}

/// A device's health as judged from a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum DeviceHealth {
    /// Fit for work.
    Healthy,
    /// Not to be placed on, with why.
    Unhealthy(String),
}

impl HealthSample {
    /// Judges the sample against `limits`.
    pub fn judge(&self, limits: &HealthLimits) -> DeviceHealth {
        if let Some(n) = self
            .ecc_uncorrected
            .filter(|&n| n > limits.max_ecc_uncorrected)
        {
            return DeviceHealth::Unhealthy(format!("{n} uncorrected ECC errors"));
        }
        if let Some(t) = self
            .temperature_celsius
            .filter(|&t| t > limits.max_temperature_celsius)
        {
            return DeviceHealth::Unhealthy(format!(
                "temperature {t} C above {} C",
                limits.max_temperature_celsius
            ));
        }
        DeviceHealth::Healthy
    }

    /// Sets the device's gauges (`{device}` is its UUID); absent readings leave theirs alone.
    pub fn export(&self, device: &str) {
        let label = device.to_owned();
        if let Some(u) = self.utilization {
            metrics::gauge!(m::GPU_UTILIZATION, "device" => label.clone()).set(u);
        }
        if let Some(b) = self.memory_used_bytes {
            metrics::gauge!(m::GPU_MEMORY_USED, "device" => label.clone()).set(b as f64);
        }
        if let Some(t) = self.temperature_celsius {
            metrics::gauge!(m::GPU_TEMPERATURE, "device" => label.clone()).set(f64::from(t));
        }
        if let Some(w) = self.power_watts {
            metrics::gauge!(m::GPU_POWER, "device" => label.clone()).set(w);
        }
        if let Some(n) = self.ecc_uncorrected {
            metrics::gauge!(m::GPU_ECC_UNCORRECTED, "device" => label).set(n as f64);
        }
    }
}

/// NVML, initialised: samples devices by UUID.
pub struct Sampler {
    nvml: Nvml,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sampler")
    }
}

fn nvml_error(op: &'static str, err: &NvmlError) -> GpuError {
    GpuError::Nvml {
        op,
        reason: err.to_string(),
    }
}

/// A reading NVML cannot take on this device is absent; any other failure is an error.
fn optional<T>(
    reading: std::result::Result<T, NvmlError>,
) -> std::result::Result<Option<T>, NvmlError> {
    match reading {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported | NvmlError::FunctionNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Sampler {
    /// Loads and initialises NVML; [`GpuError::Nvml`] where it is missing or refuses.
    pub fn new() -> Result<Sampler> {
        match Nvml::init() {
            Ok(nvml) => Ok(Sampler { nvml }),
            Err(e) => Err(report("nvml_init", None, nvml_error("init", &e))),
        }
    }

    /// One sample of the device with `uuid` (as [`crate::DeviceInfo::uuid`] spells it).
    /// A device NVML cannot find or read is an error: the caller marks it unhealthy.
    pub fn sample(&self, uuid: &str) -> Result<HealthSample> {
        self.sample_inner(uuid)
            .map_err(|e| report("nvml_sample", None, nvml_error("sample", &e)))
    }

    fn sample_inner(&self, uuid: &str) -> std::result::Result<HealthSample, NvmlError> {
        let device = self.nvml.device_by_uuid(uuid)?;
        let utilization = optional(device.utilization_rates())?.map(|u| f64::from(u.gpu) / 100.0);
        let memory_used_bytes = optional(device.memory_info())?.map(|m| m.used);
        let temperature_celsius = optional(device.temperature(TemperatureSensor::Gpu))?;
        let power_watts = optional(device.power_usage())?.map(|mw| f64::from(mw) / 1000.0);
        let ecc_uncorrected =
            optional(device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile))?;
        Ok(HealthSample {
            utilization,
            memory_used_bytes,
            temperature_celsius,
            power_watts,
            ecc_uncorrected,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ecc_errors_and_heat_make_a_device_unhealthy_and_absent_readings_do_not() {
        let limits = HealthLimits::default();
        assert_eq!(
            HealthSample::default().judge(&limits),
            DeviceHealth::Healthy
        );
        let hot = HealthSample {
            temperature_celsius: Some(95),
            ..HealthSample::default()
        };
        assert!(matches!(hot.judge(&limits), DeviceHealth::Unhealthy(r) if r.contains("95")));
        let ecc = HealthSample {
            ecc_uncorrected: Some(2),
            temperature_celsius: Some(40),
            ..HealthSample::default()
        };
        assert!(matches!(ecc.judge(&limits), DeviceHealth::Unhealthy(r) if r.contains("ECC")));
    }
}
