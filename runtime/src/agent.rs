//! A cadre agent (`cadre agent --join HOST:PORT`): a worker node on its own host, with its
//! launcher, workloads, GPUs, process ledger and logs, and no scheduler or journal. Its worker
//! reaches the scheduler through the cluster client.
//!
//! ```text
//! cadre-agent                one_for_one, 10 restarts in 60 s, then the agent stops
//! ├── scheduler-link         the cluster client: connection, handshake, requests, backoff
//! ├── workloads              one child per extension workload kind
//! ├── workers                one_for_one
//! │   └── cpu-0              the worker, as on a node
//! └── gpu-health             only where there are GPUs and NVML loads
//! ```
//!
//! Stopping an agent stops its tasks (each reported as it ends while the connection lasts);
//! the connection is then reset, not closed in order (see `cluster::client`), so any task
//! not reported waits out its lease before the scheduler runs it again. A SIGKILLed agent's
//! socket is closed by the kernel (FIN): its jobs are requeued at once. (Re-adopting running
//! tasks across an agent's restart is not built yet.)

use std::sync::Arc;
use std::time::Duration;

use cadre_actors::WorkerIdentity;
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{SupervisorRef, SupervisorSpec, WorkerSpec};

use crate::cluster::client::{ClientConfig, SchedulerClient};
use crate::config::Config;
use crate::error::Error;
use crate::extensions::Extensions;
use crate::node::{data_dir_error, release_cgroups, Signals, WORKER_NAME};

/// A running agent.
pub struct Agent {
    root: SupervisorRef,
    metrics: actix_web::dev::ServerHandle,
    server: actix_rt::task::JoinHandle<std::io::Result<()>>,
    cgroups: Option<cadre_cpu::cgroup::Cgroups>,
}

impl Agent {
    /// Opens the data directory, starts the tree and the metrics endpoint. Must run inside an
    /// actix `System`.
    pub async fn start(
        config: Config,
        prometheus: Option<crate::metrics::Exporter>,
        extensions: Extensions,
    ) -> Result<Agent, Error> {
        if config.cluster.join.is_empty() {
            return Err(Error::Config {
                field: "cluster.join".to_owned(),
                reason: "an agent needs the address of a scheduler (--join HOST:PORT)".to_owned(),
            });
        }
        cadre_supervisor::install_panic_hook();
        crate::metrics::describe();
        crate::cluster::describe();
        let tls = match config.cluster.tls_files() {
            Some(files) => Some(crate::cluster::tls::connector(&files)?),
            None => {
                tracing::warn!(join = ?config.cluster.join,
                    "the cluster connection is plain TCP (--insecure-cluster): the scheduler is not authenticated and nothing is encrypted");
                None
            }
        };
        let (node_name, host_problem) = config.node_name();
        if let Some(problem) = host_problem {
            tracing::warn!(node = %node_name, problem = %problem,
                "this agent is named localhost: set --name (CADRE_NODE_NAME) to name it");
        }
        let identity = WorkerIdentity::new(node_name, WORKER_NAME);
        let data_dir = config.data_dir.clone();
        let log_dir = data_dir.join("logs");
        let scratch_dir = data_dir.join("scratch");
        for dir in [&data_dir, &log_dir, &scratch_dir] {
            std::fs::create_dir_all(dir).map_err(|e| data_dir_error(dir, e))?;
        }
        let engine = IoEngine::new(BackendSetting::Auto)?;
        let gpus = crate::gpu::discover().await;
        let cgroups = crate::confine::open_cgroups(&config, &data_dir).await?;
        let Extensions {
            workloads,
            callbacks,
        } = extensions;
        if !callbacks.is_empty() {
            tracing::warn!(
                callbacks = callbacks.len(),
                "extension callbacks run on the scheduler's node, not on an agent: not started here"
            );
        }
        let client_config = Arc::new(ClientConfig {
            join: config.cluster.join.clone(),
            handshake: config.cluster.handshake(),
            identity: identity.clone(),
            datacenter: config.cluster.datacenter.clone(),
            labels: config.cluster.labels.clone(),
            gpus: gpus.worker_devices(),
            connect_timeout: Duration::from_millis(config.cluster.connect_timeout_ms),
            request_timeout: Duration::from_millis(config.cluster.request_timeout_ms),
            seed: seed(&identity),
            tls,
            files: crate::cluster::files::AgentFiles {
                reader: cadre_cpu::launcher::LogReader::new(engine.clone()),
                dir: log_dir.clone(),
                scratch_dir: scratch_dir.clone(),
                max_bytes: config.cluster.max_frame_bytes.saturating_sub(4096),
            },
        });
        let client_spec = WorkerSpec::new("scheduler-link", move || {
            SchedulerClient::new(Arc::clone(&client_config))
        })
        .mailbox_capacity(65_536);
        let client = client_spec.addr();
        let target = config.cluster.join.join(",");
        let link_addr = client.clone();
        let parts = crate::worker_tree::build(crate::worker_tree::Inputs {
            config: &config,
            identity: identity.clone(),
            engine,
            log_dir,
            scratch_dir,
            data_dir: data_dir.clone(),
            gpus: &gpus,
            cgroups: cgroups.clone(),
            workloads,
            resolve: Arc::new(move || SchedulerClient::link(&link_addr, target.clone())),
            heartbeats: None,
            gpu_health: client.clone().recipient(),
        })?;
        let mut root = SupervisorSpec::one_for_one()
            .intensity(10, Duration::from_secs(60))
            .child(client_spec)
            .child(parts.workloads)
            .child(parts.workers);
        if let Some(monitor) = parts.gpu_monitor {
            root = root.child(monitor);
        }
        let root = root.start("cadre-agent").await?;
        let (metrics_server, metrics) = crate::metrics::server(prometheus, config.metrics_addr)?;
        let server = actix_rt::spawn(metrics_server);
        tracing::info!(%identity, join = ?config.cluster.join, metrics = %config.metrics_addr,
            data_dir = %data_dir.display(), "cadre agent running");
        Ok(Agent {
            root,
            metrics,
            server,
            cgroups,
        })
    }

    /// Runs until SIGTERM, SIGINT or SIGHUP (or until the tree stops on its own), then stops
    /// the tree (its tasks with it) and the metrics endpoint.
    pub async fn run(self) -> Result<(), Error> {
        let mut signals = Signals::new()?;
        tokio::select! {
            name = signals.next() => tracing::info!(signal = name, "agent shutting down"),
            result = self.root.wait() => {
                tracing::error!(?result, "the agent's supervision tree stopped on its own");
            }
        }
        let result = self.root.stop().await;
        if let Some(cgroups) = self.cgroups {
            release_cgroups(cgroups).await;
        }
        self.metrics.stop(true).await;
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "metrics server ended with an error"),
            Err(error) => tracing::error!(%error, "metrics server task failed"),
        }
        tracing::info!("cadre agent stopped");
        result.map_err(Error::from)
    }
}

/// The backoff jitter's seed: from the worker's identity, so agents differ from each other and
/// a run can be replayed.
fn seed(identity: &WorkerIdentity) -> u64 {
    crate::confine::fnv1a(identity.to_string().as_bytes())
}
