//! The scheduler's side of the cluster: a TCP listener, and for each agent a connection that
//! shakes hands, registers the agent's worker with the scheduler, and then carries messages
//! both ways until either side closes.
//!
//! Per connection: one task reads the agent's frames and hands each request to the scheduler
//! at once, in the order they came (so a task's start is handled before its end), answering
//! them in that order as the scheduler replies (pipelined, up to `IN_FLIGHT`); one task
//! writes what is queued for the agent, a batch per write; an `AgentLink` actor
//! ([`super::link`]) is the worker's link the scheduler sends `Assign` and `Kill` to. After the
//! welcome the agent is sent a `Sweep` of the jobs pruned meanwhile ([`super::prune`]). A
//! connection that ends ends the worker's registration: its leases are revoked. When it was
//! closed in order (FIN: only the kernel of an agent that exited sends one; an agent resets the
//! connections it closes itself) its jobs are requeued at once; when it broke (a reset, a malformed frame)
//! the agent may be alive, so they wait until their leases have run out, by when the agent has
//! fenced them. An agent that goes silent without closing (cut off, frozen) stops renewing, so
//! the health monitor, fed by its renewals, declares it dead, with the same wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::ids::{WorkerId, WorkerIdentity};
use cadre_actors::protocol::{
    Finished, GpuHealth, Heartbeat, ProgressFlush, Register, Renew, Started, WorkerDead, WorkerLink,
};
use cadre_actors::scheduler::Scheduler;
use cadre_wire::{
    HandshakeConfig, HelloAnswer, Refusal, RefusalKind, SchedulerAnswer, SchedulerRequest,
    ToScheduler, ToWorker, Welcome, WireError,
};
use futures_util::stream::{FuturesOrdered, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::link::{AgentLink, Agents, Answered, CloseLink};
use super::tls::{self, Reader, Writer};
use super::{micros, write_loop, AGENTS_CONNECTED, CONNECTION_ERRORS, UNEXPECTED_FRAMES};
use crate::error::Error;

/// What the cluster listener needs.
pub struct ServerConfig {
    /// Where agents connect.
    pub addr: SocketAddr,
    /// Versions, deadline and frame limits of the handshake.
    pub handshake: HandshakeConfig,
    /// The scheduler the agents' workers register with.
    pub scheduler: Addr<Scheduler>,
    /// The health monitor: each renewal of an agent is its heartbeat.
    pub heartbeats: Recipient<Heartbeat>,
    /// This node's name, told to agents in `Welcome`.
    pub name: String,
    /// A lease's time to live, told to agents in `Welcome`.
    pub lease_ttl: Duration,
    /// Mutual TLS; `None` is plain TCP (`--insecure-cluster`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Whether this node runs a worker of its own: an agent may not then take this node's
    /// name, or its registration would replace the local worker's.
    pub local_worker: bool,
}

/// Binds the cluster port and serves it until the returned task is aborted; returns the bound
/// address (the port chosen, for `:0`) and the task.
///
/// Connections are served on the calling thread, the scheduler's: on a two-core machine,
/// moving them to an arbiter of their own (so TLS and encoding leave the scheduler's thread)
/// cost more in thread hand-offs than it saved, 45,000 against 77,000 no-op jobs per second
/// through four agents (bench/README.md).
pub async fn listen(
    config: ServerConfig,
    agents: Agents,
) -> Result<(SocketAddr, actix_rt::task::JoinHandle<()>), Error> {
    let listen_error = |source| Error::Listen {
        what: "cluster listener",
        addr: config.addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(config.addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    metrics::gauge!(AGENTS_CONNECTED).set(0.0);
    let task = actix_rt::spawn(accept_loop(listener, Arc::new(config), agents));
    Ok((bound, task))
}

async fn accept_loop(listener: TcpListener, config: Arc<ServerConfig>, agents: Agents) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "TCP_NODELAY not set on a cluster connection");
                }
                actix_rt::spawn(serve_agent(
                    stream,
                    peer,
                    Arc::clone(&config),
                    agents.clone(),
                ));
            }
            Err(error) => {
                // Out of descriptors, mostly: wait a little instead of spinning.
                tracing::error!(%error, "cluster listener could not accept a connection");
                metrics::counter!(CONNECTION_ERRORS, "side" => "scheduler", "kind" => "accept")
                    .increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A welcomed connection, as the registry of live agents sees it.
pub(super) struct LiveConn {
    /// Its worker's registration.
    worker: WorkerId,
    peer: SocketAddr,
    /// When its last frame came (microseconds since the server started).
    heard_us: AtomicU64,
    /// Wakes its read loop to close it: a newer connection took its identity.
    close: Notify,
    /// Its worker's link, which also carries the scheduler's requests to the agent.
    pub(super) link: Addr<AgentLink>,
}

/// The registry of live agent connections, by identity: a second agent under a live one's
/// identity (two hosts given the same `--name`) is refused instead of evicting it, and a
/// reconnecting agent whose old connection went silent replaces that one.
#[derive(Default)]
pub(super) struct Registry {
    epoch: Option<Instant>,
    live: std::sync::Mutex<rustc_hash::FxHashMap<WorkerIdentity, Arc<LiveConn>>>,
}

impl Registry {
    /// An empty registry whose clock starts now.
    pub(super) fn new() -> Registry {
        Registry {
            epoch: Some(Instant::now()),
            ..Registry::default()
        }
    }

    pub(super) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, rustc_hash::FxHashMap<WorkerIdentity, Arc<LiveConn>>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_us(&self) -> u64 {
        self.epoch.map_or(0, |e| micros(e.elapsed()))
    }
}

/// Logs and counts a connection's end by an error (a peer's doing: a warning).
fn ended(peer: SocketAddr, worker: Option<WorkerId>, error: &WireError, during: &'static str) {
    tracing::warn!(%peer, worker = worker.map(|w| w.0), kind = error.kind(), %error, during,
        "cluster connection ended");
    metrics::counter!(CONNECTION_ERRORS, "side" => "scheduler", "kind" => error.kind())
        .increment(1);
}

async fn refuse(
    conn: &mut cadre_wire::Connection<Reader, Writer>,
    peer: SocketAddr,
    refusal: Refusal,
) {
    tracing::warn!(%peer, kind = refusal.kind.as_str(), reason = %refusal.message,
        "agent refused");
    metrics::counter!(cadre_wire::metrics::HANDSHAKE_REFUSALS,
        "reason" => refusal.kind.as_str(), "side" => "scheduler")
    .increment(1);
    if let Err(error) = conn.writer.send(&HelloAnswer::Refused(refusal)).await {
        tracing::debug!(%peer, %error, "the refusal did not reach the agent");
    }
}

async fn serve_agent(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    agents: Agents,
) {
    let registry = Arc::clone(&agents.registry);
    let epoch = Instant::now();
    let (r, w, cert) = match &config.tls {
        Some(acceptor) => {
            let tls = tokio::time::timeout(config.handshake.timeout, tls::accept(acceptor, stream));
            match tls.await {
                Ok(Ok((r, w, cert))) => (r, w, Some(cert)),
                Ok(Err(error)) => return tls::refused(peer, &error),
                Err(_) => {
                    return tls::refused(peer, &std::io::Error::other("the TLS handshake stalled"))
                }
            }
        }
        None => {
            let (r, w) = tls::plain(stream);
            (r, w, None)
        }
    };
    let (mut conn, hello) = match cadre_wire::accept(r, w, &config.handshake).await {
        Ok(accepted) => accepted,
        Err(error) => {
            // Counted by the handshake; said here, with the peer.
            tracing::warn!(%peer, kind = error.kind(), %error, "cluster handshake refused");
            return;
        }
    };
    if let Err(refusal) = hello.validate() {
        refuse(&mut conn, peer, refusal).await;
        return;
    }
    // An agent's certificate names its node: one agent's key cannot register another node.
    if let Some(cert) = &cert {
        if let Err(reason) = tls::cert_names(cert, &hello.node) {
            refuse(&mut conn, peer, Refusal::new(RefusalKind::Identity, reason)).await;
            return;
        }
    }
    if config.local_worker && hello.node == config.name {
        let refusal = Refusal::new(
            RefusalKind::Identity,
            format!(
                "{:?} is the scheduler's own node, which runs a worker: give the agent another name (--name)",
                hello.node
            ),
        );
        refuse(&mut conn, peer, refusal).await;
        return;
    }
    let identity = WorkerIdentity::new(hello.node.clone(), hello.worker.clone());
    // Another connection under this identity: refused while it is heard from (two agents
    // given one name must not evict each other's jobs back and forth); replaced once it has
    // been silent half a lease (a reconnecting agent whose old connection never closed here).
    let previous = registry.lock().get(&identity).cloned();
    if let Some(old) = previous {
        let silent_us = registry
            .now_us()
            .saturating_sub(old.heard_us.load(Ordering::Relaxed));
        if silent_us < micros(config.lease_ttl / 2) {
            let refusal = Refusal::new(
                RefusalKind::Identity,
                format!(
                    "{identity} is connected from {}, heard {} ms ago",
                    old.peer,
                    silent_us / 1000
                ),
            );
            refuse(&mut conn, peer, refusal).await;
            return;
        }
        tracing::warn!(%peer, %identity, old_peer = %old.peer, silent_ms = silent_us / 1000,
            "agent reconnected while its old connection was silent: the old one is closed");
        // Its registration goes first, as a silent one (its jobs wait for their leases), so
        // the registration below does not find it and count it gone.
        config.scheduler.do_send(WorkerDead {
            worker: old.worker,
            reason: format!("{identity} reconnected from {peer} while silent"),
            exited: false,
        });
        old.close.notify_one();
    }
    let (queue, outgoing) = mpsc::unbounded_channel::<ToWorker>();
    let link = AgentLink::new(queue.clone(), epoch).start();
    let registered = config
        .scheduler
        .send(Register {
            identity: identity.clone(),
            datacenter: hello.datacenter.clone(),
            labels: hello.labels.clone(),
            capacity: hello.capacity.clone(),
            link: WorkerLink {
                assign: link.clone().recipient(),
                kill: link.clone().recipient(),
            },
            address: Some(peer.to_string()),
        })
        .await;
    let worker = match registered {
        Ok(Ok(worker)) => worker,
        Ok(Err(error)) => {
            link.do_send(CloseLink);
            refuse(&mut conn, peer, Refusal::from(&error)).await;
            return;
        }
        Err(error) => {
            link.do_send(CloseLink);
            refuse(
                &mut conn,
                peer,
                Refusal::new(
                    RefusalKind::Unavailable,
                    format!("the scheduler is unreachable: {error}"),
                ),
            )
            .await;
            return;
        }
    };
    let welcome = HelloAnswer::Welcome(Welcome {
        worker,
        scheduler: config.name.clone(),
        lease_ttl_ms: config.lease_ttl.as_millis() as u64,
        clock_us: micros(epoch.elapsed()),
    });
    if let Err(error) = conn.writer.send(&welcome).await {
        ended(peer, Some(worker), &error, "welcome");
        // Unwelcomed, the agent runs nothing of this registration.
        config.scheduler.do_send(WorkerDead {
            worker,
            reason: format!("its connection from {peer} failed before it was welcomed"),
            exited: true,
        });
        link.do_send(CloseLink);
        return;
    }
    tracing::info!(%peer, worker = worker.0, %identity, datacenter = %hello.datacenter,
        version = conn.version, software = %hello.software, cpu_millis = hello.capacity.cpu_millis,
        gpus = hello.gpus.len(), running = hello.running.len(), "agent connected");
    metrics::gauge!(AGENTS_CONNECTED).increment(1.0);
    let live = Arc::new(LiveConn {
        worker,
        peer,
        heard_us: AtomicU64::new(registry.now_us()),
        close: Notify::new(),
        link: link.clone(),
    });
    registry.lock().insert(identity.clone(), Arc::clone(&live));
    // What was pruned while the agent was away is removed there.
    super::prune::sweep_on_connect(config.scheduler.clone(), agents, identity.clone());
    // An agent renews at least twice per lease: one silent for a whole lease is gone (the
    // health monitor has declared it dead by then); its connection is closed.
    let idle_limit = config.lease_ttl;
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    let cadre_wire::Connection {
        mut reader, writer, ..
    } = conn;
    let mut writing = actix_rt::spawn(write_loop(writer, outgoing));
    let session = Session {
        worker,
        identity: identity.clone(),
        epoch,
        queue,
        config: Arc::clone(&config),
        link: link.clone(),
    };
    let mut in_flight: FuturesOrdered<Answering> = FuturesOrdered::new();
    // Only an orderly close (the agent's kernel sent FIN: its process exited, or it closed the
    // connection itself, stopping its tasks) says the agent is gone; a reset or a broken read
    // may be the network, with the agent alive and running its tasks until it fences itself.
    let (reason, exited) = loop {
        tokio::select! {
            // Answers go out in the order their requests came.
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => session.send(answer),
            () = &mut idle => {
                // Checked when the timer fires rather than re-armed at every frame (a timer
                // reset per frame cost the scheduler's thread at tens of thousands per second).
                let silent = Duration::from_micros(
                    registry.now_us().saturating_sub(live.heard_us.load(Ordering::Relaxed)),
                );
                if silent < idle_limit {
                    idle.as_mut().reset(Instant::now() + (idle_limit - silent));
                    continue;
                }
                tracing::warn!(%peer, worker = worker.0, silent_ms = silent.as_millis() as u64,
                    "agent silent for a whole lease: its connection is closed");
                metrics::counter!(CONNECTION_ERRORS, "side" => "scheduler", "kind" => "silent")
                    .increment(1);
                break ("silent for a whole lease".to_owned(), false);
            }
            () = live.close.notified() => break ("replaced by a newer connection".to_owned(), false),
            frame = reader.recv::<ToScheduler>(), if in_flight.len() < IN_FLIGHT => match frame {
                Ok(msg) => {
                    live.heard_us.store(registry.now_us(), Ordering::Relaxed);
                    if let Some(answering) = session.handle(msg) {
                        in_flight.push_back(answering);
                    }
                }
                Err(WireError::Closed) => {
                    tracing::warn!(%peer, worker = worker.0, "agent closed its connection: its registration ends");
                    break ("closed".to_owned(), true);
                }
                Err(error) => {
                    ended(peer, Some(worker), &error, "reading");
                    break (error.to_string(), false);
                }
            },
            written = &mut writing => {
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => ended(peer, Some(worker), &error, "writing"),
                    Err(error) => tracing::error!(%peer, worker = worker.0, %error,
                        "cluster writer task failed"),
                }
                break ("its writes failed".to_owned(), false);
            }
        }
    };
    writing.abort();
    {
        let mut live_conns = registry.lock();
        if live_conns
            .get(&identity)
            .is_some_and(|l| Arc::ptr_eq(l, &live))
        {
            live_conns.remove(&identity);
        }
    }
    metrics::gauge!(AGENTS_CONNECTED).decrement(1.0);
    // The death first, then the link's close: an assignment the link can no longer take
    // would otherwise count the worker gone (its mailbox closed) before this says how.
    config.scheduler.do_send(WorkerDead {
        worker,
        reason: format!("its connection from {peer} ended: {reason}"),
        exited,
    });
    link.do_send(CloseLink);
}

/// One agent's connection after the handshake: turns its requests into the scheduler's messages.
struct Session {
    worker: WorkerId,
    identity: WorkerIdentity,
    epoch: Instant,
    queue: mpsc::UnboundedSender<ToWorker>,
    config: Arc<ServerConfig>,
    link: Addr<AgentLink>,
}

/// The answer to one request, once the scheduler has given it.
type Answering = std::pin::Pin<Box<dyn std::future::Future<Output = ToWorker>>>;

/// The most requests of one agent in flight at once: past it, its frames wait in the socket.
const IN_FLIGHT: usize = 4096;

fn answer(id: u64, answer: Result<SchedulerAnswer, Refusal>) -> ToWorker {
    ToWorker::Answer { id, answer }
}

fn unreachable(error: MailboxError) -> Refusal {
    Refusal::new(
        RefusalKind::Unavailable,
        format!("the scheduler is unreachable: {error}"),
    )
}

fn answered<T>(
    reply: Result<Result<T, cadre_actors::Error>, MailboxError>,
    ok: impl FnOnce(T) -> SchedulerAnswer,
) -> Result<SchedulerAnswer, Refusal> {
    match reply {
        Ok(Ok(value)) => Ok(ok(value)),
        Ok(Err(error)) => Err(Refusal::from(&error)),
        Err(error) => Err(unreachable(error)),
    }
}

impl Session {
    /// Handles one frame: a request goes to the scheduler at once (in the order frames came,
    /// so the scheduler sees a task's start before its end) and its answer is a future the
    /// read loop awaits alongside the next frames, so requests are pipelined.
    fn handle(&self, msg: ToScheduler) -> Option<Answering> {
        let scheduler = &self.config.scheduler;
        let worker = self.worker;
        match msg {
            ToScheduler::Request { id, request } => Some(match request {
                SchedulerRequest::Renew { leases } => {
                    if let Err(error) = self.config.heartbeats.try_send(Heartbeat { worker }) {
                        tracing::warn!(worker = worker.0, %error,
                            "an agent's heartbeat did not reach the health monitor");
                        metrics::counter!(cadre_actors::metrics::WORKER_SEND_FAILURES,
                            "msg" => "heartbeat")
                        .increment(1);
                    }
                    let reply = scheduler.send(Renew { worker, leases });
                    Box::pin(
                        async move { answer(id, answered(reply.await, SchedulerAnswer::Renewed)) },
                    )
                }
                SchedulerRequest::Started { job, token } => {
                    let reply = scheduler.send(Started { worker, job, token });
                    Box::pin(async move {
                        answer(id, answered(reply.await, |()| SchedulerAnswer::Done))
                    })
                }
                SchedulerRequest::Finished {
                    job,
                    token,
                    end,
                    output,
                } => {
                    let reply = scheduler.send(Finished {
                        worker,
                        job,
                        token,
                        end,
                        output,
                    });
                    Box::pin(async move {
                        answer(id, answered(reply.await, |()| SchedulerAnswer::Done))
                    })
                }
                SchedulerRequest::Progress { seq, updates } => {
                    let reply = scheduler.send(ProgressFlush {
                        worker,
                        seq,
                        updates,
                    });
                    Box::pin(
                        async move { answer(id, answered(reply.await, SchedulerAnswer::Progress)) },
                    )
                }
                SchedulerRequest::GpuHealth {
                    index,
                    healthy,
                    reason,
                } => {
                    let reply = scheduler.send(GpuHealth {
                        worker: self.identity.clone(),
                        index,
                        healthy,
                        reason,
                    });
                    Box::pin(async move {
                        answer(id, answered(reply.await, |()| SchedulerAnswer::Done))
                    })
                }
            }),
            ToScheduler::Ping { id } => {
                self.send(ToWorker::Pong {
                    id,
                    clock_us: micros(self.epoch.elapsed()),
                });
                None
            }
            ToScheduler::Answer { id, answer } => {
                self.link.do_send(Answered { id, answer });
                None
            }
            other @ ToScheduler::Pong { .. } => {
                // This scheduler sends no pings yet.
                tracing::warn!(
                    worker = worker.0,
                    kind = cadre_wire::WireMessage::kind(&other),
                    "agent sent an answer to nothing this scheduler asked"
                );
                metrics::counter!(UNEXPECTED_FRAMES, "side" => "scheduler",
                    "type" => cadre_wire::WireMessage::kind(&other))
                .increment(1);
                None
            }
        }
    }

    fn send(&self, msg: ToWorker) {
        // The writer is gone only when the connection is ending; the reader sees that next.
        if self.queue.send(msg).is_err() {
            tracing::debug!(
                worker = self.worker.0,
                "answer dropped: the connection is closing"
            );
        }
    }
}
