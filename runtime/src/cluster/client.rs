//! The agent's side of the cluster: the actor its worker's
//! [`SchedulerLink`](cadre_actors::protocol::SchedulerLink) points at.
//!
//! - `Register` connects: each `--join` address in turn (starting after the last one that
//!   worked), the handshake, a `Hello` with the worker's identity, capacity and GPUs; the
//!   answer is the id in the scheduler's `Welcome`. A registration that finds no scheduler
//!   fails, and the next one waits out an exponential backoff with jitter (100 ms doubling to
//!   10 s, times 0.5..1 from a seeded RNG), so agents that lost their scheduler together do not
//!   come back in step.
//! - `Renew`, `Started`, `Finished`, `ProgressFlush` and `GpuHealth` become requests; each
//!   answer (or refusal) comes back as the error the worker already acts on. Without a
//!   connection they fail with `UnknownWorker`, so the worker stops its tasks and registers
//!   again, which reconnects.
//! - The scheduler's requests (a task's log for `cadre logs`, the removal of pruned jobs'
//!   files) are answered off the actor, from the agent's directories ([`super::files`]).
//! - `Assign` and `Kill` frames go to the worker. An assignment carries its lease deadline on
//!   the scheduler's clock; read on this clock (from the `Welcome`'s reading), one that has
//!   lapsed on the way is refused, and one that arrives late gets only the time its lease has
//!   left: a task's process starts only under a live lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::ids::{FencingToken, WorkerId, WorkerIdentity};
use cadre_actors::job::JobId;
use cadre_actors::protocol::{
    Finished, GpuDevice, GpuHealth, ProgressAck, ProgressFlush, Register, Renew, RenewReply,
    Started, WorkerLink,
};
use cadre_actors::Error as ActorsError;
use cadre_supervisor::SupervisedContext;
use cadre_wire::{
    HandshakeConfig, Hello, Refusal, SchedulerAnswer, SchedulerRequest, ToScheduler, ToWorker,
    WireError,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    micros, refusal_error, write_loop, CONNECTION_ERRORS, LATE_ASSIGNMENTS, RECONNECTS,
    REQUEST_FAILURES, REQUEST_SECONDS, UNEXPECTED_FRAMES,
};

type Ctx = SupervisedContext<SchedulerClient>;
type Pending = oneshot::Sender<Result<SchedulerAnswer, Refusal>>;

/// The first wait after a failed connection; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What an agent's link to its scheduler needs.
pub struct ClientConfig {
    /// The schedulers' addresses (`host:port`), tried in turn.
    pub join: Vec<String>,
    /// Versions, deadline and frame limits of the handshake.
    pub handshake: HandshakeConfig,
    /// Who the worker is.
    pub identity: WorkerIdentity,
    /// Its datacenter.
    pub datacenter: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its GPUs.
    pub gpus: Vec<GpuDevice>,
    /// How long a TCP connect may take, per address.
    pub connect_timeout: Duration,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// The seed of the backoff jitter.
    pub seed: u64,
    /// Mutual TLS; `None` is plain TCP (`--insecure-cluster`).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// The task logs the scheduler may read.
    pub files: super::files::AgentFiles,
}

/// The agent's link to its scheduler (see the module comment).
pub struct SchedulerClient {
    config: Arc<ClientConfig>,
    rng: SmallRng,
    live: Option<Live>,
    /// Bumped at each connection, so the reader of an old one is ignored.
    generation: u64,
    next_id: u64,
    pending: FxHashMap<u64, Pending>,
    /// Where assignments and kills go: the worker that registered.
    worker: Option<WorkerLink>,
    /// Connections made so far (the ones after the first are reconnects).
    connections: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// The address to try first.
    next_addr: usize,
    /// Requests in a row that got no answer in time on this connection.
    unanswered: u32,
    /// This actor's address, for the futures of requests to report a missing answer.
    me: Option<Addr<SchedulerClient>>,
}

/// Requests in a row left unanswered after which the connection is taken for dead and closed
/// (the worker then registers again, which connects anew, to another address if need be).
pub const UNANSWERED_LIMIT: u32 = 3;

struct Live {
    queue: mpsc::UnboundedSender<ToScheduler>,
    worker: WorkerId,
    /// This clock's instant when the `Welcome` was read, and the scheduler's clock in it.
    clock: (Instant, u64),
    addr: String,
    tasks: [actix_rt::task::JoinHandle<()>; 2],
    /// The connection's socket (a second descriptor of it), to reset it when this side
    /// closes it.
    socket: Option<TcpStream>,
}

impl Drop for Live {
    /// Closes the connection with a reset, never a FIN: the scheduler takes an orderly close
    /// for this agent's exit and runs its jobs again at once, while a connection this agent
    /// closes on its own (unanswered requests, a new registration, the actor stopping) may
    /// leave its tasks running until they are fenced. Only the kernel closing the socket of
    /// an agent that died says FIN.
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            if let Err(error) = socket.set_zero_linger() {
                tracing::warn!(scheduler = %self.addr, %error,
                    "the cluster connection could not be set to reset on close: the scheduler may take its close for this agent's exit");
                metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => "linger")
                    .increment(1);
            }
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A second descriptor of `stream`'s socket, kept to reset the connection on close (see
/// [`Live`]'s `Drop`); `None`, logged and counted, where it cannot be made.
fn second_descriptor(stream: &TcpStream, addr: &str) -> Option<TcpStream> {
    use std::os::fd::AsFd;
    // A duplicate shares the socket and its non-blocking mode, as `from_std` wants.
    let made = stream
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| TcpStream::from_std(std::net::TcpStream::from(fd)));
    match made {
        Ok(socket) => Some(socket),
        Err(error) => {
            tracing::warn!(%addr, %error,
                "no second descriptor of the cluster socket: closing it may read as this agent's exit");
            metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => "socket")
                .increment(1);
            None
        }
    }
}

impl SchedulerClient {
    /// A client that connects on the worker's first registration.
    pub fn new(config: Arc<ClientConfig>) -> SchedulerClient {
        SchedulerClient {
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            live: None,
            generation: 0,
            next_id: 1,
            pending: FxHashMap::default(),
            worker: None,
            connections: 0,
            failures: 0,
            retry_at: None,
            next_addr: 0,
            unanswered: 0,
            me: None,
        }
    }

    /// The worker's link to the client at `addr`.
    pub fn link(
        addr: &Addr<SchedulerClient>,
        target: String,
    ) -> cadre_actors::protocol::SchedulerLink {
        cadre_actors::protocol::SchedulerLink {
            target,
            register: addr.clone().recipient(),
            renew: addr.clone().recipient(),
            started: addr.clone().recipient(),
            finished: addr.clone().recipient(),
            progress: addr.clone().recipient(),
        }
    }

    fn close(&mut self, why: &str) {
        // Frames an old connection's reader already sent on are ignored from now on.
        self.generation += 1;
        self.unanswered = 0;
        if let Some(live) = self.live.take() {
            tracing::info!(scheduler = %live.addr, worker = live.worker.0, why,
                "connection to the scheduler closed");
        }
        // Every waiting request fails with the connection.
        self.pending.clear();
    }

    /// Sends `request`; the receiver gets its answer. `None` without a live connection for
    /// `worker`.
    fn request(
        &mut self,
        worker: WorkerId,
        request: SchedulerRequest,
    ) -> Option<oneshot::Receiver<Result<SchedulerAnswer, Refusal>>> {
        let live = self.live.as_ref().filter(|l| l.worker == worker)?;
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        if live
            .queue
            .send(ToScheduler::Request { id, request })
            .is_err()
        {
            return None;
        }
        self.pending.insert(id, tx);
        Some(rx)
    }

    /// The future of one request's answer, mapped for the worker.
    fn ask<T: 'static>(
        &mut self,
        worker: WorkerId,
        request: SchedulerRequest,
        about: Option<(JobId, FencingToken)>,
        take: fn(SchedulerAnswer) -> Option<T>,
    ) -> ResponseFuture<Result<T, ActorsError>> {
        let kind = request.kind();
        let timeout = self.config.request_timeout;
        let (generation, id, me) = (self.generation, self.next_id, self.me.clone());
        let Some(rx) = self.request(worker, request) else {
            // No connection: the worker registers again, which reconnects.
            return Box::pin(async move { Err(ActorsError::UnknownWorker { worker }) });
        };
        Box::pin(async move {
            let sent = Instant::now();
            let failed = |reason: String| {
                metrics::counter!(REQUEST_FAILURES, "type" => kind).increment(1);
                ActorsError::Unavailable { reason }
            };
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => {
                    metrics::histogram!(REQUEST_SECONDS, "type" => kind)
                        .record(sent.elapsed().as_secs_f64());
                    match answer {
                        Ok(answer) => take(answer).ok_or_else(|| {
                            failed(format!("the scheduler answered a {kind} with another type"))
                        }),
                        Err(refusal) => Err(refusal_error(refusal, worker, about)),
                    }
                }
                Ok(Err(_)) => Err(failed(format!(
                    "the connection to the scheduler ended before it answered a {kind}"
                ))),
                Err(_) => {
                    if let Some(me) = me {
                        me.do_send(Unanswered { generation, id });
                    }
                    Err(failed(format!(
                        "the scheduler did not answer a {kind} within {} ms",
                        timeout.as_millis()
                    )))
                }
            }
        })
    }

    fn install(&mut self, ctx: &mut Ctx, connected: Connected, addr: String) {
        let Connected {
            conn,
            welcome,
            hello_sent,
            socket,
            ..
        } = connected;
        let worker = welcome.worker;
        let scheduler_clock_us = welcome.clock_us;
        self.generation += 1;
        self.unanswered = 0;
        let generation = self.generation;
        let cadre_wire::Connection {
            mut reader, writer, ..
        } = conn;
        let (queue, outgoing) = mpsc::unbounded_channel();
        let me = ctx.address();
        let reading = actix_rt::spawn(async move {
            loop {
                match reader.recv::<ToWorker>().await {
                    Ok(msg) => me.do_send(Incoming { generation, msg }),
                    Err(error) => {
                        me.do_send(Lost { generation, error });
                        return;
                    }
                }
            }
        });
        let me = ctx.address();
        let writing = actix_rt::spawn(async move {
            let error = match write_loop(writer, outgoing).await {
                Ok(()) => return,
                Err(error) => error,
            };
            me.do_send(Lost { generation, error });
        });
        self.connections += 1;
        if self.connections > 1 {
            metrics::counter!(RECONNECTS).increment(1);
        }
        self.live = Some(Live {
            queue,
            worker,
            // The scheduler's clock read when it sent the welcome, taken as this clock's reading
            // before the hello went out: its instants then seem earlier here than they are, so
            // a lease deadline is never read as later than it is.
            clock: (hello_sent, scheduler_clock_us),
            addr,
            tasks: [reading, writing],
            socket,
        });
    }

    /// This clock's instant for an instant of the scheduler's clock.
    fn local(&self, scheduler_us: u64) -> Option<Instant> {
        let live = self.live.as_ref()?;
        let (at, base) = live.clock;
        Some(match scheduler_us.checked_sub(base) {
            Some(ahead) => at + Duration::from_micros(ahead),
            None => at
                .checked_sub(Duration::from_micros(base - scheduler_us))
                .unwrap_or(at),
        })
    }

    fn deliver_assign(&mut self, mut assign: cadre_actors::protocol::Assign, deadline_us: u64) {
        let (job, token) = (assign.job, assign.token);
        let Some(deadline) = self.local(deadline_us) else {
            tracing::warn!(job = %job, lease = %token,
                "assignment without a live connection: not started, its lease lapses");
            metrics::counter!(UNEXPECTED_FRAMES, "side" => "agent", "type" => "assign")
                .increment(1);
            return;
        };
        let now = Instant::now();
        let Some(left) = deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
        else {
            tracing::warn!(job = %job, lease = %token,
                "assignment arrived after its lease lapsed: not started");
            metrics::counter!(LATE_ASSIGNMENTS).increment(1);
            return;
        };
        assign.lease_ttl = assign.lease_ttl.min(left);
        let Some(worker) = &self.worker else {
            tracing::error!(job = %job, lease = %token, "assignment before the worker registered: dropped");
            metrics::counter!(UNEXPECTED_FRAMES, "side" => "agent", "type" => "assign")
                .increment(1);
            return;
        };
        if worker.assign.try_send(assign).is_err() {
            tracing::error!(job = %job, lease = %token,
                "the worker did not take an assignment: its lease runs out");
            metrics::counter!(cadre_actors::metrics::WORKER_SEND_FAILURES, "msg" => "assign")
                .increment(1);
        }
    }
}

impl Actor for SchedulerClient {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        self.me = Some(ctx.address());
    }
}

/// A request of connection `generation` got no answer in time.
#[derive(Message)]
#[rtype(result = "()")]
struct Unanswered {
    generation: u64,
    id: u64,
}

impl Handler<Unanswered> for SchedulerClient {
    type Result = ();

    fn handle(&mut self, msg: Unanswered, _: &mut Ctx) {
        if msg.generation != self.generation {
            return;
        }
        self.pending.remove(&msg.id);
        self.unanswered += 1;
        if self.unanswered >= UNANSWERED_LIMIT {
            let scheduler = self.live.as_ref().map(|l| l.addr.clone());
            tracing::error!(
                ?scheduler,
                unanswered = self.unanswered,
                "the scheduler answers nothing: the connection is closed, to connect anew"
            );
            metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => "unanswered")
                .increment(1);
            self.close("unanswered");
        }
    }
}

/// A frame from the scheduler, read by connection `generation`.
#[derive(Message)]
#[rtype(result = "()")]
struct Incoming {
    generation: u64,
    msg: ToWorker,
}

/// Connection `generation` ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Lost {
    generation: u64,
    error: WireError,
}

impl Handler<Lost> for SchedulerClient {
    type Result = ();

    fn handle(&mut self, msg: Lost, _: &mut Ctx) {
        let Some(scheduler) = self.live.as_ref().map(|l| l.addr.clone()) else {
            return;
        };
        if msg.generation != self.generation {
            return;
        }
        match &msg.error {
            WireError::Closed => tracing::warn!(%scheduler, "the scheduler closed the connection"),
            error => tracing::error!(%scheduler, kind = error.kind(), %error,
                "connection to the scheduler lost"),
        }
        metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => msg.error.kind())
            .increment(1);
        self.close("lost");
    }
}

impl Handler<Incoming> for SchedulerClient {
    type Result = ();

    fn handle(&mut self, msg: Incoming, _: &mut Ctx) {
        if msg.generation != self.generation {
            return;
        }
        match msg.msg {
            ToWorker::Assign {
                assign,
                lease_deadline_us,
                ..
            } => self.deliver_assign(*assign, lease_deadline_us),
            ToWorker::Kill(kill) => {
                let Some(worker) = &self.worker else {
                    tracing::warn!(job = %kill.job, lease = %kill.token,
                        "kill before the worker registered: nothing to stop");
                    metrics::counter!(UNEXPECTED_FRAMES, "side" => "agent", "type" => "kill")
                        .increment(1);
                    return;
                };
                if worker.kill.try_send(kill.clone()).is_err() {
                    tracing::error!(job = %kill.job, lease = %kill.token,
                        "the worker did not take a kill: its task stops when its lease runs out");
                    metrics::counter!(cadre_actors::metrics::WORKER_SEND_FAILURES, "msg" => "kill")
                        .increment(1);
                }
            }
            ToWorker::Answer { id, answer } => {
                // The scheduler answers: the count of unanswered requests starts again.
                self.unanswered = 0;
                match self.pending.remove(&id) {
                    Some(tx) => {
                        if tx.send(answer).is_err() {
                            tracing::debug!(id, "an answer came after its request gave up");
                        }
                    }
                    None => tracing::debug!(id, "an answer to no waiting request (timed out)"),
                }
            }
            ToWorker::Ping { id, .. } => {
                if let Some(live) = &self.live {
                    let clock_us = micros(live.clock.0.elapsed());
                    if live.queue.send(ToScheduler::Pong { id, clock_us }).is_err() {
                        tracing::debug!(id, "pong dropped: the connection is closing");
                    }
                }
            }
            ToWorker::Request { id, request } => {
                let Some(live) = &self.live else {
                    // Read before its connection closed: nothing to answer on.
                    tracing::debug!(
                        id,
                        kind = request.kind(),
                        "a request of the scheduler dropped: its connection is closed"
                    );
                    metrics::counter!(super::AGENT_REQUEST_FAILURES, "side" => "agent",
                        "type" => request.kind())
                    .increment(1);
                    return;
                };
                // Read off the actor: a log read waits on the disk, and the worker's messages
                // must not wait behind it.
                let queue = live.queue.clone();
                let files = self.config.files.clone();
                actix_rt::spawn(async move {
                    let answer = super::files::serve(&files, request).await;
                    if queue.send(ToScheduler::Answer { id, answer }).is_err() {
                        tracing::debug!(id, "an answer dropped: the connection is closing");
                    }
                });
            }
            other @ (ToWorker::Drain | ToWorker::Pong { .. }) => {
                let kind = cadre_wire::WireMessage::kind(&other);
                tracing::warn!(
                    kind,
                    "the scheduler sent a frame this agent does not act on"
                );
                metrics::counter!(UNEXPECTED_FRAMES, "side" => "agent", "type" => kind)
                    .increment(1);
            }
        }
    }
}

/// A connection made and welcomed.
struct Connected {
    conn: cadre_wire::Connection<super::tls::Reader, super::tls::Writer>,
    welcome: cadre_wire::Welcome,
    /// The index of the address that answered.
    index: usize,
    /// When the hello went out.
    hello_sent: Instant,
    /// A second descriptor of its socket (see [`Live`]).
    socket: Option<TcpStream>,
}

/// Connects to the first address that answers and shakes hands; the errors of each address
/// when none does.
async fn connect_any(
    config: Arc<ClientConfig>,
    first: usize,
    hello: Hello,
) -> Result<Connected, Vec<String>> {
    let mut errors = Vec::new();
    let n = config.join.len();
    for k in 0..n {
        let i = (first + k) % n;
        let addr = &config.join[i];
        let stream =
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr.as_str()))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    errors.push(format!("{addr}: {error}"));
                    continue;
                }
                Err(_) => {
                    errors.push(format!(
                        "{addr}: no connection within {} ms",
                        config.connect_timeout.as_millis()
                    ));
                    continue;
                }
            };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%addr, %error, "TCP_NODELAY not set on the cluster connection");
        }
        let socket = second_descriptor(&stream, addr);
        let (r, w) = match &config.tls {
            Some(connector) => {
                let tls = tokio::time::timeout(
                    config.handshake.timeout,
                    super::tls::connect(connector, addr, stream),
                );
                match tls.await {
                    Ok(Ok(halves)) => halves,
                    Ok(Err(error)) => {
                        metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => "tls")
                            .increment(1);
                        errors.push(format!("{addr}: TLS: {error}"));
                        continue;
                    }
                    Err(_) => {
                        metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => "tls")
                            .increment(1);
                        errors.push(format!("{addr}: the TLS handshake stalled"));
                        continue;
                    }
                }
            }
            None => super::tls::plain_resettable(stream),
        };
        let hello_sent = Instant::now();
        match cadre_wire::connect(r, w, &config.handshake, &hello).await {
            Ok((conn, welcome)) => {
                return Ok(Connected {
                    conn,
                    welcome,
                    index: i,
                    hello_sent,
                    socket,
                })
            }
            Err(error) => {
                metrics::counter!(CONNECTION_ERRORS, "side" => "agent", "kind" => error.kind())
                    .increment(1);
                errors.push(format!("{addr}: {error}"));
            }
        }
    }
    Err(errors)
}

impl Handler<Register> for SchedulerClient {
    type Result = ResponseActFuture<Self, Result<WorkerId, ActorsError>>;

    fn handle(&mut self, msg: Register, _: &mut Ctx) -> Self::Result {
        self.close("the worker registers again");
        self.worker = Some(msg.link.clone());
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                let wait = at - now;
                return Box::pin(fut::ready(Err(ActorsError::Unavailable {
                    reason: format!(
                        "no scheduler reachable; next try in {} ms",
                        wait.as_millis()
                    ),
                })));
            }
        }
        let config = Arc::clone(&self.config);
        let hello = Hello {
            node: config.identity.node.clone(),
            worker: config.identity.name.clone(),
            datacenter: config.datacenter.clone(),
            labels: config.labels.clone(),
            capacity: msg.capacity,
            gpus: config.gpus.clone(),
            running: Vec::new(),
            software: format!("cadre {}", env!("CARGO_PKG_VERSION")),
        };
        let first = self.next_addr;
        Box::pin(
            connect_any(config, first, hello).into_actor(self).map(
                |result, act, ctx| match result {
                    Ok(connected) => {
                        let i = connected.index;
                        let addr = act.config.join[i].clone();
                        let welcome = &connected.welcome;
                        let worker = welcome.worker;
                        tracing::info!(scheduler = %addr, name = %welcome.scheduler,
                        worker = worker.0, version = connected.conn.version,
                        lease_ttl_ms = welcome.lease_ttl_ms, "connected to the scheduler");
                        act.next_addr = i;
                        act.failures = 0;
                        act.retry_at = None;
                        act.install(ctx, connected, addr);
                        Ok(worker)
                    }
                    Err(errors) => {
                        act.failures = act.failures.saturating_add(1);
                        let doubled = BACKOFF_MIN
                            .saturating_mul(1u32 << act.failures.min(16))
                            .min(BACKOFF_MAX);
                        let wait = doubled.mul_f64(act.rng.random_range(0.5..=1.0));
                        act.retry_at = Some(Instant::now() + wait);
                        act.next_addr = (act.next_addr + 1) % act.config.join.len().max(1);
                        let reason = format!(
                            "no scheduler reachable ({}); next try in {} ms",
                            errors.join("; "),
                            wait.as_millis()
                        );
                        Err(ActorsError::Unavailable { reason })
                    }
                },
            ),
        )
    }
}

impl Handler<Renew> for SchedulerClient {
    type Result = ResponseFuture<Result<RenewReply, ActorsError>>;

    fn handle(&mut self, msg: Renew, _: &mut Ctx) -> Self::Result {
        self.ask(
            msg.worker,
            SchedulerRequest::Renew { leases: msg.leases },
            None,
            |a| match a {
                SchedulerAnswer::Renewed(reply) => Some(reply),
                _ => None,
            },
        )
    }
}

impl Handler<Started> for SchedulerClient {
    type Result = ResponseFuture<Result<(), ActorsError>>;

    fn handle(&mut self, msg: Started, _: &mut Ctx) -> Self::Result {
        self.ask(
            msg.worker,
            SchedulerRequest::Started {
                job: msg.job,
                token: msg.token,
            },
            Some((msg.job, msg.token)),
            |a| matches!(a, SchedulerAnswer::Done).then_some(()),
        )
    }
}

impl Handler<Finished> for SchedulerClient {
    type Result = ResponseFuture<Result<(), ActorsError>>;

    fn handle(&mut self, msg: Finished, _: &mut Ctx) -> Self::Result {
        self.ask(
            msg.worker,
            SchedulerRequest::Finished {
                job: msg.job,
                token: msg.token,
                end: msg.end,
                output: msg.output,
            },
            Some((msg.job, msg.token)),
            |a| matches!(a, SchedulerAnswer::Done).then_some(()),
        )
    }
}

impl Handler<ProgressFlush> for SchedulerClient {
    type Result = ResponseFuture<Result<ProgressAck, ActorsError>>;

    fn handle(&mut self, msg: ProgressFlush, _: &mut Ctx) -> Self::Result {
        self.ask(
            msg.worker,
            SchedulerRequest::Progress {
                seq: msg.seq,
                updates: msg.updates,
            },
            None,
            |a| match a {
                SchedulerAnswer::Progress(ack) => Some(ack),
                _ => None,
            },
        )
    }
}

impl Handler<GpuHealth> for SchedulerClient {
    type Result = ResponseFuture<Result<(), ActorsError>>;

    fn handle(&mut self, msg: GpuHealth, _: &mut Ctx) -> Self::Result {
        let Some(worker) = self.live.as_ref().map(|l| l.worker) else {
            return Box::pin(async {
                Err(ActorsError::Unavailable {
                    reason: "not connected to the scheduler".to_owned(),
                })
            });
        };
        self.ask(
            worker,
            SchedulerRequest::GpuHealth {
                index: msg.index,
                healthy: msg.healthy,
                reason: msg.reason,
            },
            None,
            |a| matches!(a, SchedulerAnswer::Done).then_some(()),
        )
    }
}
