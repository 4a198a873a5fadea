//! The node's configuration: embedded defaults that need no file, then a TOML file
//! (`--config`), then `CADRE_*` environment variables, then command-line flags, each layer
//! overriding the one before. Every value is checked once, with the field named in the error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Everything `cadre serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the journal and job logs live.
    pub data_dir: PathBuf,
    /// The HTTP API's address.
    pub api_addr: SocketAddr,
    /// The Prometheus endpoint's address.
    pub metrics_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// A lease's time to live, in milliseconds.
    pub lease_ttl_ms: u64,
    /// How often workers renew leases and send heartbeats, in milliseconds.
    pub renew_every_ms: u64,
    /// The base interval of a worker's progress flushes, in milliseconds.
    pub progress_every_ms: u64,
    /// How long before a lease would lapse a worker kills a task it could not renew, in ms.
    pub fence_margin_ms: u64,
    /// Grace between `SIGTERM` and `SIGKILL` for a stopped task, in milliseconds.
    pub kill_grace_ms: u64,
    /// How long a shutdown waits for running jobs, in seconds.
    pub shutdown_grace_secs: u64,
    /// Phi above which the health monitor declares a worker dead.
    pub phi_threshold: f64,
    /// The largest request body the API takes, in bytes.
    pub max_body_bytes: usize,
    /// Jobs a batch submission may hold.
    pub max_batch_jobs: usize,
    /// CPU the worker offers, in millicores (default: every online core).
    pub worker_cpu_millis: Option<u64>,
    /// Memory the worker offers, in bytes (default: the machine's total).
    pub worker_memory_bytes: Option<u64>,
    /// Journal records between snapshots (start-up replays at most this many).
    pub snapshot_every: u64,
    /// HTTP worker threads of the API (default 2).
    pub api_threads: usize,
    /// How often each GPU's health is sampled through NVML, in milliseconds.
    pub gpu_health_every_ms: u64,
    /// The die temperature above which a GPU is unhealthy, in degrees Celsius.
    pub gpu_max_temperature_celsius: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./cadre-data"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            log_format: LogFormat::Text,
            lease_ttl_ms: 10_000,
            renew_every_ms: 1_000,
            progress_every_ms: 50,
            fence_margin_ms: 2_000,
            kill_grace_ms: 5_000,
            shutdown_grace_secs: 30,
            phi_threshold: 8.0,
            max_body_bytes: 16 << 20,
            max_batch_jobs: 10_000,
            worker_cpu_millis: None,
            worker_memory_bytes: None,
            snapshot_every: 1_000_000,
            api_threads: 2,
            gpu_health_every_ms: 5_000,
            gpu_max_temperature_celsius: 90,
        }
    }
}

/// What the command line sets (absent flags leave the value alone).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--api-addr`.
    pub api_addr: Option<SocketAddr>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn parse_env<T: std::str::FromStr>(
    env: &dyn Fn(&str) -> Option<String>,
    key: &str,
) -> Result<Option<T>, Error>
where
    T::Err: std::fmt::Display,
{
    match env(key) {
        None => Ok(None),
        Some(v) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| invalid(key, format!("{v:?}: {e}"))),
    }
}

impl Config {
    /// Defaults, then the file, then `env`, then `flags`; checked.
    pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let file = flags
            .config
            .clone()
            .or_else(|| env("CADRE_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => Config::from_file(&path)?,
            None => Config::default(),
        };
        if let Some(v) = env("CADRE_DATA_DIR") {
            config.data_dir = PathBuf::from(v);
        }
        if let Some(v) = parse_env(env, "CADRE_API_ADDR")? {
            config.api_addr = v;
        }
        if let Some(v) = parse_env(env, "CADRE_METRICS_ADDR")? {
            config.metrics_addr = v;
        }
        if let Some(v) = env("CADRE_LOG_FORMAT") {
            config.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "CADRE_LOG_FORMAT",
                        format!("{other:?}: expected text or json"),
                    ))
                }
            };
        }
        if let Some(v) = parse_env(env, "CADRE_LEASE_TTL_MS")? {
            config.lease_ttl_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_RENEW_EVERY_MS")? {
            config.renew_every_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_FENCE_MARGIN_MS")? {
            config.fence_margin_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_KILL_GRACE_MS")? {
            config.kill_grace_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_SNAPSHOT_EVERY")? {
            config.snapshot_every = v;
        }
        if let Some(v) = parse_env(env, "CADRE_SHUTDOWN_GRACE_SECS")? {
            config.shutdown_grace_secs = v;
        }
        if let Some(v) = parse_env(env, "CADRE_WORKER_CPU_MILLIS")? {
            config.worker_cpu_millis = Some(v);
        }
        if let Some(v) = parse_env(env, "CADRE_WORKER_MEMORY_BYTES")? {
            config.worker_memory_bytes = Some(v);
        }
        if let Some(v) = parse_env(env, "CADRE_GPU_HEALTH_EVERY_MS")? {
            config.gpu_health_every_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_GPU_MAX_TEMPERATURE_CELSIUS")? {
            config.gpu_max_temperature_celsius = v;
        }
        if let Some(v) = &flags.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = flags.api_addr {
            config.api_addr = v;
        }
        if let Some(v) = flags.metrics_addr {
            config.metrics_addr = v;
        }
        if let Some(v) = flags.log_format {
            config.log_format = v;
        }
        config.check()?;
        Ok(config)
    }

    /// Reads a TOML file; unknown keys are refused (a typo must not be ignored).
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("--config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| invalid("--config", format!("{}: {e}", path.display())))
    }

    /// Checks the values against each other.
    pub fn check(&self) -> Result<(), Error> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.lease_ttl_ms < 100 {
            return Err(invalid("lease_ttl_ms", "must be at least 100"));
        }
        if self.renew_every_ms == 0 || self.renew_every_ms * 2 > self.lease_ttl_ms {
            return Err(invalid(
                "renew_every_ms",
                "must be above 0 and at most half of lease_ttl_ms",
            ));
        }
        if self.fence_margin_ms >= self.lease_ttl_ms
            || self.fence_margin_ms < self.renew_every_ms / 2
        {
            return Err(invalid(
                "fence_margin_ms",
                "must be below lease_ttl_ms and at least half of renew_every_ms",
            ));
        }
        if self.progress_every_ms == 0 {
            return Err(invalid("progress_every_ms", "must be at least 1"));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(invalid("phi_threshold", "must be a positive number"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if self.max_batch_jobs == 0 {
            return Err(invalid("max_batch_jobs", "must be at least 1"));
        }
        if self.snapshot_every == 0 {
            return Err(invalid("snapshot_every", "must be at least 1"));
        }
        if self.gpu_health_every_ms < 100 {
            return Err(invalid(
                "gpu_health_every_ms",
                "must be at least 100 (NVML's own sample period is longer)",
            ));
        }
        if !(30..=120).contains(&self.gpu_max_temperature_celsius) {
            return Err(invalid(
                "gpu_max_temperature_celsius",
                "must be between 30 and 120",
            ));
        }
        if self.api_threads == 0 {
            return Err(invalid("api_threads", "must be at least 1"));
        }
        Ok(())
    }

    /// The lease time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}
