//! The node's configuration: embedded defaults that need no file, then a TOML file
//! (`--config`), then `CADRE_*` environment variables, then command-line flags, each layer
//! overriding the one before. Every value is checked once, with the field named in the error.

use std::collections::BTreeMap;
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
    /// This node's name: how the scheduler tells its workers from another node's (a worker is
    /// `node/name`, e.g. `gpu-17/cpu-0`). Default: the machine's host name.
    pub node_name: Option<String>,
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
    /// How long a request body may take to arrive, in seconds: a client that stalls halfway
    /// is answered 408 and its buffer freed.
    pub body_timeout_secs: u64,
    /// The most request-body bytes the API holds at once over all requests; a request that
    /// would pass it is answered 503 (retry later) instead of being buffered.
    pub max_body_bytes_in_flight: usize,
    /// How long the first placement waits for the local worker to register, in milliseconds.
    pub registration_grace_ms: u64,
    /// How long ended jobs are kept (the `[retention]` table).
    pub retention: RetentionConfig,
    /// Job output (the `[logs]` table).
    pub logs: LogsConfig,
    /// Confinement of command jobs (the `[cgroups]` table).
    pub cgroups: CgroupsConfig,
    /// `[cluster]`: agents on other hosts.
    pub cluster: ClusterConfig,
}

/// `[retention]`: ended jobs are removed (table, journal, logs) once they ended `max_age_secs`
/// ago, or once more than `max_jobs` ended jobs are kept, the oldest first. The defaults keep a
/// day (Slurm's `MinJobAge` is 5 minutes, which loses what happened overnight) and at most
/// 100,000 ended jobs (Slurm's `MaxJobCount` default is 10,000): about 60 MB of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Seconds an ended job is kept (default 86,400: 24 h).
    pub max_age_secs: u64,
    /// Ended jobs kept at most (default 100,000).
    pub max_jobs: usize,
    /// How often the policy is applied, in milliseconds (default 1,000).
    pub every_ms: u64,
    /// Above this share of the data directory's filesystem used (percent), ended jobs are
    /// pruned early, oldest first, whatever their age and count (default 90; 100: never), as
    /// Nomad's `gc_disk_usage_threshold` (80 there).
    pub max_disk_used_percent: u8,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_secs: 24 * 3600,
            max_jobs: 100_000,
            every_ms: 1000,
            max_disk_used_percent: 90,
        }
    }
}

/// `[logs]`: each output stream of a command task keeps at most `max_bytes_per_stream` bytes
/// on disk: its first quarter and its last three quarters, with a marker line where the middle
/// was dropped (default 64 MiB; a job printing 200 MB keeps its head and its tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Bytes kept per stream (at least 64 KiB).
    pub max_bytes_per_stream: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_bytes_per_stream: 64 << 20,
        }
    }
}

/// Whether command jobs run in cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// Where the node can use cgroups (root, or a delegated group); process groups otherwise,
    /// said once at start.
    #[default]
    Auto,
    /// Never: process groups only.
    Off,
    /// Always: a node that cannot use cgroups does not start.
    Required,
}

/// `[cgroups]`: each command task in a cgroup of its own (v2, or v1 where only v1 is mounted),
/// with its CPU and memory as limits and a kill nothing escapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupsConfig {
    /// `auto` (default), `off` or `required`.
    pub mode: CgroupMode,
    /// The most processes and threads one task may have (none by default: training jobs start
    /// many threads).
    pub max_pids: Option<u64>,
    /// Where `/proc/self/mountinfo`, `/proc/self/cgroup` and `/sys/fs/cgroup` are read from
    /// (default `/`): for a node in a container that mounts the host's elsewhere, and for tests.
    pub root: Option<PathBuf>,
}

/// `[cluster]`: a scheduler that accepts agents (`cadre serve --cluster-addr`), or an agent
/// that joins one (`cadre agent --join`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `serve`: where agents connect; none (the default) opens no cluster port.
    pub addr: Option<SocketAddr>,
    /// `serve`: whether the node runs a worker of its own (default true; `--no-local-worker`
    /// makes it a scheduler only).
    pub local_worker: bool,
    /// `agent`: the schedulers' addresses (`host:port`), tried in turn.
    pub join: Vec<String>,
    /// Plain TCP between schedulers and agents, with no authentication or encryption: only on
    /// a network you trust, said as a warning at every start. Without it, TLS needs the three
    /// files below.
    pub insecure: bool,
    /// The cluster CA's certificate (`cadre certs ca`).
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate, signed by the CA (`cadre certs node NAME`).
    pub tls_cert: Option<PathBuf>,
    /// This node's private key.
    pub tls_key: Option<PathBuf>,
    /// This node's datacenter.
    pub datacenter: String,
    /// This node's labels (`agent`), for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// How long a connection's handshake may take, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// How long an agent's TCP connect may take, per address, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long an agent's request waits for its answer, in milliseconds.
    pub request_timeout_ms: u64,
    /// The largest frame taken, in bytes.
    pub max_frame_bytes: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            addr: None,
            local_worker: true,
            join: Vec::new(),
            insecure: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            datacenter: "dc1".to_owned(),
            labels: BTreeMap::new(),
            handshake_timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 5_000,
            max_frame_bytes: cadre_wire::DEFAULT_MAX_FRAME,
        }
    }
}

impl ClusterConfig {
    /// Whether this node runs a cluster port or joins one.
    pub fn enabled(&self) -> bool {
        self.addr.is_some() || !self.join.is_empty()
    }

    /// The TLS files, when the cluster is not insecure (all three are then set: `check`).
    pub fn tls_files(&self) -> Option<crate::cluster::tls::TlsFiles> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) if !self.insecure => {
                Some(crate::cluster::tls::TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            _ => None,
        }
    }

    /// The handshake's settings.
    pub fn handshake(&self) -> cadre_wire::HandshakeConfig {
        cadre_wire::HandshakeConfig {
            timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_frame: self.max_frame_bytes,
            ..cadre_wire::HandshakeConfig::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: None,
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
            body_timeout_secs: 30,
            max_body_bytes_in_flight: 64 << 20,
            registration_grace_ms: 5_000,
            retention: RetentionConfig::default(),
            logs: LogsConfig::default(),
            cgroups: CgroupsConfig::default(),
            cluster: ClusterConfig::default(),
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
    /// `--name`.
    pub node_name: Option<String>,
    /// `--cluster-addr` (serve).
    pub cluster_addr: Option<SocketAddr>,
    /// `--no-local-worker` (serve).
    pub no_local_worker: bool,
    /// `--join` (agent), comma-separated addresses.
    pub join: Option<Vec<String>>,
    /// `--insecure-cluster`.
    pub insecure_cluster: bool,
    /// `--datacenter`.
    pub datacenter: Option<String>,
    /// `--labels`, `key=value` pairs.
    pub labels: Option<BTreeMap<String, String>>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Splits a comma-separated list, dropping empty items.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why `name` cannot name a node (or a datacenter, or a label's key): the wire's one rule for
/// names, so a node never starts with a name its scheduler would refuse.
fn check_node_name(name: &str) -> Result<(), String> {
    cadre_wire::message::name_problem(name).map_or(Ok(()), Err)
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
        if let Some(v) = env("CADRE_NODE_NAME") {
            config.node_name = Some(v);
        }
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
        if let Some(v) = parse_env(env, "CADRE_BODY_TIMEOUT_SECS")? {
            config.body_timeout_secs = v;
        }
        if let Some(v) = parse_env(env, "CADRE_MAX_BODY_BYTES_IN_FLIGHT")? {
            config.max_body_bytes_in_flight = v;
        }
        if let Some(v) = parse_env(env, "CADRE_REGISTRATION_GRACE_MS")? {
            config.registration_grace_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_RETENTION_MAX_AGE_SECS")? {
            config.retention.max_age_secs = v;
        }
        if let Some(v) = parse_env(env, "CADRE_RETENTION_MAX_JOBS")? {
            config.retention.max_jobs = v;
        }
        if let Some(v) = parse_env(env, "CADRE_RETENTION_EVERY_MS")? {
            config.retention.every_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_RETENTION_MAX_DISK_USED_PERCENT")? {
            config.retention.max_disk_used_percent = v;
        }
        if let Some(v) = parse_env(env, "CADRE_LOGS_MAX_BYTES_PER_STREAM")? {
            config.logs.max_bytes_per_stream = v;
        }
        if let Some(v) = env("CADRE_CGROUPS") {
            config.cgroups.mode = match v.as_str() {
                "auto" => CgroupMode::Auto,
                "off" => CgroupMode::Off,
                "required" => CgroupMode::Required,
                other => {
                    return Err(invalid(
                        "CADRE_CGROUPS",
                        format!("{other:?}: expected auto, off or required"),
                    ))
                }
            };
        }
        if let Some(v) = parse_env(env, "CADRE_CGROUPS_MAX_PIDS")? {
            config.cgroups.max_pids = Some(v);
        }
        if let Some(v) = parse_env(env, "CADRE_CLUSTER_ADDR")? {
            config.cluster.addr = Some(v);
        }
        if let Some(v) = env("CADRE_CLUSTER_JOIN") {
            config.cluster.join = split_list(&v);
        }
        if let Some(v) = parse_env(env, "CADRE_CLUSTER_INSECURE")? {
            config.cluster.insecure = v;
        }
        if let Some(v) = env("CADRE_CLUSTER_TLS_CA") {
            config.cluster.tls_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = env("CADRE_CLUSTER_TLS_CERT") {
            config.cluster.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = env("CADRE_CLUSTER_TLS_KEY") {
            config.cluster.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = parse_env(env, "CADRE_CLUSTER_REQUEST_TIMEOUT_MS")? {
            config.cluster.request_timeout_ms = v;
        }
        if let Some(v) = parse_env(env, "CADRE_CLUSTER_MAX_FRAME_BYTES")? {
            config.cluster.max_frame_bytes = v;
        }
        if let Some(v) = env("CADRE_DATACENTER") {
            config.cluster.datacenter = v;
        }
        if let Some(v) = env("CADRE_CGROUPS_ROOT") {
            config.cgroups.root = Some(PathBuf::from(v));
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
        if let Some(v) = &flags.node_name {
            config.node_name = Some(v.clone());
        }
        if let Some(v) = flags.cluster_addr {
            config.cluster.addr = Some(v);
        }
        if flags.no_local_worker {
            config.cluster.local_worker = false;
        }
        if let Some(v) = &flags.join {
            config.cluster.join = v.clone();
        }
        if flags.insecure_cluster {
            config.cluster.insecure = true;
        }
        if let Some(v) = &flags.datacenter {
            config.cluster.datacenter = v.clone();
        }
        if let Some(v) = &flags.labels {
            config.cluster.labels = v.clone();
        }
        if let Some(v) = &flags.tls_ca {
            config.cluster.tls_ca = Some(v.clone());
        }
        if let Some(v) = &flags.tls_cert {
            config.cluster.tls_cert = Some(v.clone());
        }
        if let Some(v) = &flags.tls_key {
            config.cluster.tls_key = Some(v.clone());
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
        if let Some(name) = &self.node_name {
            check_node_name(name).map_err(|reason| invalid("node_name", reason))?;
        }
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
        // A worker checks its tasks' fences once per renewal round: with a margin shorter than a
        // round, a cut-off worker could kill a task after its lease ran out, when the scheduler
        // may already have placed the job again.
        if self.fence_margin_ms >= self.lease_ttl_ms || self.fence_margin_ms < self.renew_every_ms {
            return Err(invalid(
                "fence_margin_ms",
                "must be below lease_ttl_ms and at least renew_every_ms",
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
        if self.body_timeout_secs == 0 {
            return Err(invalid("body_timeout_secs", "must be at least 1"));
        }
        if self.max_body_bytes_in_flight < self.max_body_bytes {
            return Err(invalid(
                "max_body_bytes_in_flight",
                "must be at least max_body_bytes (one largest body must fit)",
            ));
        }
        if self.retention.max_age_secs == 0 {
            return Err(invalid("retention.max_age_secs", "must be at least 1"));
        }
        if self.retention.every_ms == 0 {
            return Err(invalid("retention.every_ms", "must be at least 1"));
        }
        if !(1..=100).contains(&self.retention.max_disk_used_percent) {
            return Err(invalid(
                "retention.max_disk_used_percent",
                "must be between 1 and 100 (100: never prune for disk space)",
            ));
        }
        if self.logs.max_bytes_per_stream < cadre_cpu::joblog::MIN_LOG_CAP {
            return Err(invalid(
                "logs.max_bytes_per_stream",
                format!("must be at least {}", cadre_cpu::joblog::MIN_LOG_CAP),
            ));
        }
        if self.cgroups.max_pids == Some(0) {
            return Err(invalid("cgroups.max_pids", "must be at least 1"));
        }
        self.check_cluster()?;
        Ok(())
    }

    fn check_cluster(&self) -> Result<(), Error> {
        let c = &self.cluster;
        let files = [
            (
                "cluster.tls_ca",
                &c.tls_ca,
                "the cluster CA's certificate (cadre certs ca)",
            ),
            (
                "cluster.tls_cert",
                &c.tls_cert,
                "this node's certificate (cadre certs node NAME)",
            ),
            (
                "cluster.tls_key",
                &c.tls_key,
                "this node's key (cadre certs node NAME)",
            ),
        ];
        if c.enabled() && c.insecure {
            if let Some((field, ..)) = files.iter().find(|(_, v, _)| v.is_some()) {
                return Err(invalid(
                    field,
                    "set together with --insecure-cluster: choose TLS or plain TCP",
                ));
            }
        } else if c.enabled() {
            if let Some((field, _, what)) = files.iter().find(|(_, v, _)| v.is_none()) {
                return Err(invalid(
                    field,
                    format!(
                        "the cluster needs {what} for mutual TLS, or --insecure-cluster for \
                         plain TCP on a network you trust"
                    ),
                ));
            }
        }
        if c.addr.is_none() && !c.local_worker {
            return Err(invalid(
                "cluster.local_worker",
                "a node with no local worker needs a cluster port (--cluster-addr) for agents",
            ));
        }
        for (i, addr) in c.join.iter().enumerate() {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid(
                    &format!("cluster.join[{i}]"),
                    format!("{addr:?} is not host:port"),
                ));
            }
        }
        check_node_name(&c.datacenter).map_err(|reason| invalid("cluster.datacenter", reason))?;
        if c.labels.len() > cadre_wire::message::MAX_LABELS {
            return Err(invalid(
                "cluster.labels",
                format!("at most {} labels", cadre_wire::message::MAX_LABELS),
            ));
        }
        for (k, v) in &c.labels {
            check_node_name(k).map_err(|reason| invalid(&format!("cluster.labels.{k}"), reason))?;
            if v.len() > cadre_wire::message::MAX_LABEL_VALUE {
                return Err(invalid(
                    &format!("cluster.labels.{k}"),
                    format!("longer than {} bytes", cadre_wire::message::MAX_LABEL_VALUE),
                ));
            }
        }
        if c.handshake_timeout_ms == 0 || c.connect_timeout_ms == 0 || c.request_timeout_ms == 0 {
            return Err(invalid(
                "cluster",
                "handshake_timeout_ms, connect_timeout_ms and request_timeout_ms must be at least 1",
            ));
        }
        if c.max_frame_bytes < 64 << 10 {
            return Err(invalid("cluster.max_frame_bytes", "must be at least 65536"));
        }
        Ok(())
    }

    /// The retention policy as the scheduler takes it.
    pub fn retention(&self) -> cadre_actors::scheduler::Retention {
        cadre_actors::scheduler::Retention {
            max_age: Duration::from_secs(self.retention.max_age_secs),
            max_jobs: self.retention.max_jobs,
            every: Duration::from_millis(self.retention.every_ms),
            max_disk_used_percent: self.retention.max_disk_used_percent,
            disk: Some(cadre_actors::scheduler::DiskProbe::statvfs(
                self.data_dir.clone(),
            )),
            ..cadre_actors::scheduler::Retention::default()
        }
    }

    /// This node's name: `node_name`, else the machine's host name (from
    /// `/proc/sys/kernel/hostname`), else `localhost` when that cannot be read or is not a
    /// usable name (the error says why, for the caller's log line).
    pub fn node_name(&self) -> (String, Option<String>) {
        if let Some(name) = &self.node_name {
            return (name.clone(), None);
        }
        match std::fs::read_to_string("/proc/sys/kernel/hostname") {
            Ok(text) => {
                let host = text.trim();
                match check_node_name(host) {
                    Ok(()) => (host.to_owned(), None),
                    Err(reason) => (
                        "localhost".to_owned(),
                        Some(format!("the host name {host:?} {reason}")),
                    ),
                }
            }
            Err(e) => (
                "localhost".to_owned(),
                Some(format!("cannot read the host name: {e}")),
            ),
        }
    }

    /// The lease time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}
