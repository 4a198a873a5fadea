//! A cadre node: the supervision tree, declared here and only here, plus the HTTP API and the
//! metrics endpoint, and the ordered shutdown.
//!
//! ```text
//! cadre                      one_for_one, 10 restarts in 60 s, then the node stops
//! ├── callbacks              callback runner: one child per extension callback
//! ├── scheduler              job store + placer + leases (restarts reopen the journal)
//! ├── health                 phi-accrual detector over heartbeats; job progress deadlines
//! ├── workloads              one child per extension workload kind (each disabled alone
//! │                          after its restart limit; never escalates)
//! └── workers                one_for_one
//!     └── cpu-0              worker: launcher, workloads, renewals, progress, self-fencing
//! ```

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::health::{HealthConfig, HealthMonitor};
use cadre_actors::protocol::NodeEvent;
use cadre_actors::sched::PlacerConfig;
use cadre_actors::scheduler::{
    CloseStore, Drain, HealthLink, Scheduler, SchedulerConfig, EVENT_CAPACITY,
};
use cadre_actors::store::{Store, StoreOptions};
use cadre_actors::WorkerIdentity;
use cadre_cpu::launcher::Launcher;
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_supervisor::{CallbackRunner, SupervisorRef, SupervisorSpec, WorkerSpec};
use tokio::sync::broadcast;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::error::Error;
use crate::extensions::Extensions;
use crate::registry::NodeRegistry;

/// A running node.
pub struct Node {
    root: SupervisorRef,
    scheduler: Addr<Scheduler>,
    api: actix_web::dev::ServerHandle,
    metrics: actix_web::dev::ServerHandle,
    servers: Vec<actix_rt::task::JoinHandle<std::io::Result<()>>>,
    /// The cluster listener, when agents are accepted.
    cluster: Option<actix_rt::task::JoinHandle<()>>,
    grace: Duration,
    /// The node's cgroup parent, removed once the tree has stopped.
    cgroups: Option<cadre_cpu::cgroup::Cgroups>,
}

pub(crate) fn data_dir_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

pub use crate::worker_tree::WORKER_NAME;

/// How long a stopping node waits for the cgroups of its last jobs to be released (each takes a
/// freeze and a few polls at most) before it sweeps what is left.
const CGROUP_RELEASE_WAIT: Duration = Duration::from_secs(5);

impl Node {
    /// Opens the data directory, starts the tree (with `extensions` registered) and both HTTP
    /// servers. Must run inside an actix `System`.
    pub async fn start(
        config: Config,
        prometheus: Option<crate::metrics::Exporter>,
        extensions: Extensions,
    ) -> Result<Node, Error> {
        let workload_names = extensions.workload_names()?;
        cadre_supervisor::install_panic_hook();
        crate::metrics::describe();
        let (node_name, host_problem) = config.node_name();
        if let Some(problem) = host_problem {
            tracing::warn!(node = %node_name, problem = %problem,
                "this node is named localhost: set node_name (CADRE_NODE_NAME) to name it");
        }
        let identity = WorkerIdentity::new(node_name, WORKER_NAME);
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| data_dir_error(&data_dir, e))?;
        let log_dir = data_dir.join("logs");
        std::fs::create_dir_all(&log_dir).map_err(|e| data_dir_error(&log_dir, e))?;
        let engine = IoEngine::new(BackendSetting::Auto)?;
        let store_options = StoreOptions {
            snapshot_every: config.snapshot_every,
            ..StoreOptions::default()
        };
        let journal_dir = data_dir.join("journal");
        // Opened here so an unusable or locked directory stops the node at once, with why.
        let opened = Store::open(&journal_dir, engine.clone(), store_options.clone()).await?;
        tracing::info!(dir = %journal_dir.display(), jobs = opened.1.jobs,
            requeued = opened.1.requeued.len(), failed = opened.1.failed.len(), "journal recovered");
        let gpus = crate::gpu::discover().await;
        let scratch_dir = data_dir.join("scratch");
        std::fs::create_dir_all(&scratch_dir).map_err(|e| data_dir_error(&scratch_dir, e))?;
        // A node stopped after a `Pruned` record was durable but before the janitor removed the
        // job's files: nothing else would ever remove them. The ids kept now decide, so the
        // sweep runs alongside the node without asking the scheduler anything.
        crate::confine::spawn_sweep(
            log_dir.clone(),
            scratch_dir.clone(),
            crate::confine::KeptIds::of(opened.0.table()),
        );
        let cgroups = crate::confine::open_cgroups(&config, &data_dir).await?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        // The agents connected to the cluster port (none without one): the API reads their
        // logs, the janitor has them remove pruned jobs' files.
        let agents = crate::cluster::link::Agents::new(config.cluster.max_frame_bytes);
        let (callbacks, callbacks_spec) = CallbackRunner::<NodeEvent>::new();
        let scheduler_config = Arc::new(SchedulerConfig {
            journal_dir,
            engine: engine.clone(),
            store: store_options,
            placer: PlacerConfig::default(),
            lease_ttl: config.lease_ttl(),
            events: events.clone(),
            handoff: Mutex::new(Some(opened)),
            // No callback registered: the scheduler skips building their events.
            callbacks: (!extensions.callbacks.is_empty()).then(|| callbacks.clone()),
            health: OnceLock::new(),
            gpus_absent: gpus.absent.clone(),
            retention: config.retention(),
            janitor: Some(crate::cluster::prune::janitor(
                crate::confine::janitor(log_dir.clone(), scratch_dir.clone()),
                agents.clone(),
                config.cluster.local_worker.then(|| identity.node.clone()),
            )),
            registration_grace: Duration::from_millis(config.registration_grace_ms),
        });
        let sc = Arc::clone(&scheduler_config);
        let scheduler_spec = WorkerSpec::new("scheduler", move || Scheduler::new(Arc::clone(&sc)))
            .mailbox_capacity(65_536);
        let scheduler = scheduler_spec.addr();

        let renew_every = Duration::from_millis(config.renew_every_ms);
        let health_config = HealthConfig {
            dead: scheduler.clone().recipient(),
            stalled: scheduler.clone().recipient(),
            expected_interval: renew_every,
            check_every: renew_every / 2,
            threshold: config.phi_threshold,
            window: 100,
            min_std: renew_every / 4,
            acceptable_pause: renew_every,
            resend: Some(scheduler.clone().recipient()),
        };
        let health_spec =
            WorkerSpec::new("health", move || HealthMonitor::new(health_config.clone()))
                .mailbox_capacity(65_536);
        let health = health_spec.addr();
        let link = HealthLink {
            watch: health.clone().recipient(),
            unwatch: health.clone().recipient(),
            progressed: health.clone().recipient(),
            forget: health.clone().recipient(),
            registered: health.clone().recipient(),
        };
        if scheduler_config.health.set(link).is_err() {
            return Err(Error::Config {
                field: "tree".to_owned(),
                reason: "the scheduler's health link was set twice".to_owned(),
            });
        }

        let Extensions {
            workloads: workload_specs,
            callbacks: callback_specs,
        } = extensions;
        let parts = if config.cluster.local_worker {
            let link_addr = scheduler.clone();
            Some(crate::worker_tree::build(crate::worker_tree::Inputs {
                config: &config,
                identity: identity.clone(),
                engine: engine.clone(),
                log_dir: log_dir.clone(),
                scratch_dir,
                data_dir: data_dir.clone(),
                gpus: &gpus,
                cgroups: cgroups.clone(),
                workloads: workload_specs,
                resolve: Arc::new(move || Scheduler::link(&link_addr, "cadre/scheduler")),
                heartbeats: Some(health.clone().recipient()),
                gpu_health: scheduler.clone().recipient(),
            })?)
        } else {
            tracing::info!("no local worker: this node schedules for its agents only");
            None
        };
        let mut root = SupervisorSpec::one_for_one()
            .intensity(10, Duration::from_secs(60))
            .child(callbacks_spec.into_child("callbacks"))
            .child(scheduler_spec)
            .child(health_spec);
        if let Some(parts) = parts {
            root = root.child(parts.workloads).child(parts.workers);
            if let Some(monitor) = parts.gpu_monitor {
                root = root.child(monitor);
            }
        }
        let root = root.start("cadre").await?;
        for spec in callback_specs {
            callbacks.register(spec).await?;
        }
        let journal = root.journal().ok_or_else(|| Error::Config {
            field: "tree".to_owned(),
            reason: "the root supervisor has no failure journal".to_owned(),
        })?;

        let state = ApiState {
            scheduler: scheduler.clone(),
            registry: Arc::new(NodeRegistry::from_env().with_workloads(workload_names)),
            limits: cadre_actors::Limits::default(),
            failures: journal,
            events,
            log_dir: log_dir.clone(),
            max_batch_jobs: config.max_batch_jobs,
            log_reader: Launcher::new(engine).log_reader(),
            max_body_bytes: config.max_body_bytes,
            body_timeout: Duration::from_secs(config.body_timeout_secs),
            bodies_in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.max_body_bytes_in_flight,
            )),
            max_body_bytes_in_flight: config.max_body_bytes_in_flight,
            agents: agents.clone(),
            agent_timeout: Duration::from_millis(config.cluster.request_timeout_ms),
            node_name: identity.node.clone(),
            local_worker: config.cluster.local_worker,
        };
        let (api_server, api_handle) = api::server(
            state,
            config.api_addr,
            config.max_body_bytes,
            config.api_threads,
        )?;
        let cluster = match config.cluster.addr {
            Some(addr) => {
                crate::cluster::describe();
                let tls = match config.cluster.tls_files() {
                    Some(files) => Some(crate::cluster::tls::acceptor(&files)?),
                    None => {
                        tracing::warn!(%addr,
                            "the cluster port is plain TCP (--insecure-cluster): agents are not authenticated and nothing is encrypted");
                        None
                    }
                };
                let (bound, task) = crate::cluster::server::listen(
                    crate::cluster::server::ServerConfig {
                        addr,
                        handshake: config.cluster.handshake(),
                        scheduler: scheduler.clone(),
                        heartbeats: health.clone().recipient(),
                        name: identity.node.clone(),
                        lease_ttl: config.lease_ttl(),
                        tls,
                        local_worker: config.cluster.local_worker,
                    },
                    agents,
                )
                .await?;
                tracing::info!(cluster = %bound, "accepting agents");
                Some(task)
            }
            None => None,
        };
        let (metrics_server, metrics_handle) =
            crate::metrics::server(prometheus, config.metrics_addr)?;
        let servers = vec![actix_rt::spawn(api_server), actix_rt::spawn(metrics_server)];
        tracing::info!(api = %config.api_addr, metrics = %config.metrics_addr,
            data_dir = %data_dir.display(), "cadre node serving");
        Ok(Node {
            root,
            scheduler,
            api: api_handle,
            metrics: metrics_handle,
            servers,
            cluster,
            grace: Duration::from_secs(config.shutdown_grace_secs),
            cgroups,
        })
    }

    /// The node's scheduler (for probes and benchmarks that talk to it directly).
    pub fn scheduler(&self) -> Addr<Scheduler> {
        self.scheduler.clone()
    }

    /// Serves until SIGTERM, SIGINT or SIGHUP (or until the tree stops on its own), then shuts
    /// down. Signals:
    /// - `SIGTERM`, `SIGINT` (Ctrl-C), `SIGHUP` (the terminal went away): drain (accept nothing
    ///   new, let running jobs finish within the grace), flush the journal, stop in order. A
    ///   node is not reconfigured by `SIGHUP`: it has nothing to reload, and a node started
    ///   from a terminal that closes should stop cleanly rather than die without a log line.
    /// - a second `SIGTERM` or `SIGINT` during the drain: stop waiting for running jobs (they
    ///   are stopped and requeued at the next start), then flush and stop as above.
    /// - `SIGKILL`: nothing runs; the next start recovers from the journal and requeues what
    ///   was running.
    /// - `SIGPIPE` is ignored (Rust's default), so a client that hangs up is only an error on
    ///   that connection.
    pub async fn run(self) -> Result<(), Error> {
        let mut signals = Signals::new()?;
        let ended = tokio::select! {
            name = signals.next() => { tracing::info!(signal = name, "shutting down"); None }
            result = self.root.wait() => Some(result),
        };
        if let Some(result) = ended {
            tracing::error!(
                ?result,
                "the supervision tree stopped on its own; the node stops"
            );
            self.api.stop(true).await;
            self.metrics.stop(true).await;
            return result.map_err(Error::from);
        }
        self.shutdown_with(Some(signals)).await
    }

    /// Stop accepting, let running jobs finish within the grace period, flush the journal,
    /// stop the tree in reverse order, stop the servers.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.shutdown_with(None).await
    }

    async fn shutdown_with(self, signals: Option<Signals>) -> Result<(), Error> {
        let drain = tokio::time::timeout(self.grace, self.scheduler.send(Drain));
        let second = async {
            match signals {
                Some(mut s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            drained = drain => match drained {
                Ok(Ok(Ok(()))) => tracing::info!("drained: no job is running"),
                Ok(Ok(Err(error))) => tracing::error!(%error, "drain refused"),
                Ok(Err(error)) => tracing::error!(%error, "scheduler unreachable while draining"),
                Err(_) => tracing::warn!(grace_secs = self.grace.as_secs(),
                    "grace period over with jobs still running: they are stopped now, and run again at the next start"),
            },
            name = second => tracing::warn!(signal = name,
                "second signal: not waiting for running jobs; they are stopped now, and run again at the next start"),
        }
        if let Err(error) = self.scheduler.send(CloseStore).await {
            tracing::error!(%error, "scheduler unreachable to flush the journal");
        }
        self.api.stop(true).await;
        if let Some(cluster) = &self.cluster {
            // No new agents; the connections of those connected end with the tree.
            cluster.abort();
        }
        let result = self.root.stop().await;
        // Every job has stopped with the tree: the node's cgroup parent goes too (a node killed
        // outright leaves it for the next start on this data directory to sweep).
        if let Some(cgroups) = self.cgroups {
            release_cgroups(cgroups).await;
        }
        self.metrics.stop(true).await;
        for server in self.servers {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "HTTP server ended with an error"),
                Err(error) => tracing::error!(%error, "HTTP server task failed"),
            }
        }
        tracing::info!("cadre node stopped");
        result.map_err(Error::from)
    }
}

/// Removes the node's cgroup parent once every job has stopped: waits (a bounded time) for the
/// last groups' releases, sweeps what is left, then removes the parent.
pub(crate) async fn release_cgroups(cgroups: cadre_cpu::cgroup::Cgroups) {
    // The groups of the last jobs are released off their threads: wait for that, so that the
    // sweep neither races them nor takes their groups for leftovers.
    if !cgroups.wait_released(CGROUP_RELEASE_WAIT).await {
        tracing::warn!(
            groups = cgroups.live_count(),
            wait_secs = CGROUP_RELEASE_WAIT.as_secs(),
            "job cgroups still being released at shutdown; the sweep takes them"
        );
    }
    match cgroups.sweep().await {
        Ok(left) if !left.is_empty() => {
            tracing::warn!(groups = left.len(), "killed job cgroups left at shutdown")
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "job cgroups not swept at shutdown"),
    }
    if let Err(error) = cgroups.remove().await {
        tracing::debug!(%error, "the node's cgroup parent was not removed");
    }
}

/// The signals that stop a node (see [`Node::run`]).
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Signals, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|source| Error::Listen {
                what: "signal handler",
                addr: name.to_owned(),
                source,
            })
        };
        Ok(Signals {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The name of the next stopping signal.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
