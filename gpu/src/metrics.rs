//! Metric names of `cadre-gpu`, in one place so dashboards and tests agree.

/// Counter of GPU failures: `{kind}` (`no_driver`, `no_device`, `cuda`, `compile`, ...).
pub const GPU_ERRORS: &str = "cadre_gpu_errors_total";
/// Gauge of devices the inventory found.
pub const GPU_DEVICES: &str = "cadre_gpu_devices";
/// Gauge, 1 while a device is healthy (takes work) and 0 while not: `{device}`.
pub const GPU_HEALTHY: &str = "cadre_gpu_healthy";
/// Gauge of a device's utilization over NVML's last sample period, 0 to 1: `{device}`.
pub const GPU_UTILIZATION: &str = "cadre_gpu_utilization_ratio";
/// Gauge of a device's memory in use, in bytes: `{device}`.
pub const GPU_MEMORY_USED: &str = "cadre_gpu_memory_used_bytes";
/// Gauge of a device's temperature, in degrees Celsius: `{device}`.
pub const GPU_TEMPERATURE: &str = "cadre_gpu_temperature_celsius";
/// Gauge of a device's power draw, in watts: `{device}`.
pub const GPU_POWER: &str = "cadre_gpu_power_watts";
/// Gauge of a device's uncorrected ECC errors since the driver loaded: `{device}`.
pub const GPU_ECC_UNCORRECTED: &str = "cadre_gpu_ecc_uncorrected_errors";

/// Describes every metric of this crate (help text and unit) to the installed recorder, so
/// an exporter prints `# HELP` for each. Call once at start-up.
pub fn describe() {
    metrics::describe_counter!(
        GPU_ERRORS,
        "Counter of GPU failures: `{kind}` (`no_driver`, `no_device`, `cuda`, `compile`, ...)."
    );
    metrics::describe_gauge!(GPU_DEVICES, "Gauge of devices the inventory found.");
    metrics::describe_gauge!(
        GPU_HEALTHY,
        "Gauge, 1 while a device is healthy (takes work) and 0 while not: `{device}`."
    );
    metrics::describe_gauge!(
        GPU_UTILIZATION,
        "Gauge of a device's utilization over NVML's last sample period, 0 to 1: `{device}`."
    );
    metrics::describe_gauge!(
        GPU_MEMORY_USED,
        "Gauge of a device's memory in use, in bytes: `{device}`."
    );
    metrics::describe_gauge!(
        GPU_TEMPERATURE,
        "Gauge of a device's temperature, in degrees Celsius: `{device}`."
    );
    metrics::describe_gauge!(
        GPU_POWER,
        "Gauge of a device's power draw, in watts: `{device}`."
    );
    metrics::describe_gauge!(
        GPU_ECC_UNCORRECTED,
        "Gauge of a device's uncorrected ECC errors since the driver loaded: `{device}`."
    );
}
