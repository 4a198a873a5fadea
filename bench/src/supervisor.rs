//! The `supervisor` suite: what supervision costs next to plain actix.
//!
//! Cases (each prints medians over interleaved rounds, see `bench/README.md`):
//! - `throughput`: one-way `do_send` throughput of one actor, supervised vs plain.
//! - `request_reply`: p50 latency of sequential `send(..).await` round trips.
//! - `panic_restart`: panic in a handler -> restart -> next queued message handled, against a
//!   bare `catch_unwind` loop as the floor.
//! - `idle_memory`: heap bytes per idle actor, counted by the global allocator.
//!
//! Everything runs on the System's arbiter (one thread), so both implementations share the same
//! executor and the same thread-locals.

use std::cell::Cell;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use cadre_supervisor::{SupervisedContext, SupervisorSpec, WorkerSpec};

use crate::alloc::live_bytes;
use crate::report::{baseline_first, median, nanos, p50, Reporter};
use crate::BenchError;

/// How much work each case does.
struct Params {
    /// Messages per throughput round.
    throughput_msgs: u64,
    /// Throughput rounds (each runs both implementations).
    throughput_rounds: usize,
    /// Round trips per request/reply round.
    pings: usize,
    /// Request/reply rounds.
    ping_rounds: usize,
    /// Restarts (and bare panics) per panic_restart round.
    restarts: usize,
    /// panic_restart rounds.
    restart_rounds: usize,
    /// Idle actors per idle_memory round.
    idle_actors: usize,
    /// idle_memory rounds.
    idle_rounds: usize,
}

impl Params {
    fn new(quick: bool) -> Self {
        if quick {
            Params {
                throughput_msgs: 100_000,
                throughput_rounds: 10,
                pings: 10_000,
                ping_rounds: 10,
                restarts: 100,
                restart_rounds: 10,
                idle_actors: 10_000,
                idle_rounds: 1,
            }
        } else {
            Params {
                throughput_msgs: 1_000_000,
                throughput_rounds: 20,
                pings: 100_000,
                ping_rounds: 10,
                restarts: 1_000,
                restart_rounds: 20,
                idle_actors: 100_000,
                idle_rounds: 3,
            }
        }
    }
}

/// Runs the suite (the short version with `quick`) and writes its JSON lines to stdout.
pub fn run(quick: bool) -> Result<(), BenchError> {
    let params = Params::new(quick);
    let out = Reporter::new("supervisor");
    actix::System::new().block_on(async move {
        throughput(&params, &out).await?;
        request_reply(&params, &out).await?;
        panic_restart(&params, &out).await?;
        idle_memory(&params, &out).await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// The counter actor, once under plain actix and once supervised, with identical handlers.

/// One-way message: adds its value to the counter.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick(u64);

/// Request: counts itself and returns the count.
#[derive(Message)]
#[rtype(result = "u64")]
struct Ping;

/// Request: returns the count (everything sent before it has been handled when it answers).
#[derive(Message)]
#[rtype(result = "u64")]
struct Flush;

macro_rules! counter_actor {
    ($name:ident, $context:ty) => {
        /// The benchmark's counter actor.
        #[derive(Default)]
        struct $name {
            count: u64,
        }

        impl Actor for $name {
            type Context = $context;
        }

        impl Handler<Tick> for $name {
            type Result = ();
            fn handle(&mut self, msg: Tick, _: &mut Self::Context) {
                self.count = self.count.wrapping_add(msg.0);
            }
        }

        impl Handler<Ping> for $name {
            type Result = u64;
            fn handle(&mut self, _: Ping, _: &mut Self::Context) -> u64 {
                self.count = self.count.wrapping_add(1);
                self.count
            }
        }

        impl Handler<Flush> for $name {
            type Result = u64;
            fn handle(&mut self, _: Flush, _: &mut Self::Context) -> u64 {
                self.count
            }
        }
    };
}

counter_actor!(PlainCounter, actix::Context<PlainCounter>);
counter_actor!(SupervisedCounter, SupervisedContext<SupervisedCounter>);

/// Which side of a comparison a round runs.
#[derive(Clone, Copy)]
enum Side {
    /// The baseline (plain actix, or the bare `catch_unwind` loop).
    Baseline,
    /// The supervised actor.
    Supervised,
}

/// The two sides in the order round `round` runs them.
fn sides(round: usize) -> [Side; 2] {
    if baseline_first(round) {
        [Side::Baseline, Side::Supervised]
    } else {
        [Side::Supervised, Side::Baseline]
    }
}

/// A one_for_one root that never gives up, with `worker` as its only child.
async fn root_with<A>(
    name: &str,
    worker: WorkerSpec<A>,
) -> Result<cadre_supervisor::SupervisorRef, BenchError>
where
    A: Actor<Context = SupervisedContext<A>>,
{
    Ok(SupervisorSpec::one_for_one()
        .intensity(u32::MAX, Duration::from_secs(1))
        .child(worker)
        .start(name)
        .await?)
}

// ---------------------------------------------------------------------------------------------
// throughput

/// One-way messages sent back to back before the sender yields to the actor (more than the
/// supervised cell's budget of 512 messages per poll, so its budget yield is part of the cost).
///
/// Without yields the whole run would queue in the mailbox (about 64 MB of envelopes for a
/// million messages); on this 2-core VM that made single rounds of either implementation
/// randomly 25-30 % slower and the ratio swing between 0.86 and 0.96 from run to run. Bursts
/// keep the queue in cache and measure the per-message cost.
const BURST: u64 = 1024;

/// Sends `n` one-way ticks in bursts of [`BURST`] (yielding after each so the actor drains its
/// mailbox), then waits until the actor handled them all; returns the elapsed time. Fails if the
/// actor's count did not grow by exactly `n`.
async fn blast<A>(addr: &Addr<A>, n: u64) -> Result<Duration, BenchError>
where
    A: Actor + Handler<Tick> + Handler<Flush>,
    A::Context: ToEnvelope<A, Tick> + ToEnvelope<A, Flush>,
{
    let before = addr.send(Flush).await?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let burst = BURST.min(n - sent);
        for _ in 0..burst {
            addr.do_send(Tick(1));
        }
        sent += burst;
        tokio::task::yield_now().await;
    }
    let after = addr.send(Flush).await?;
    let elapsed = start.elapsed();
    if after.wrapping_sub(before) != n {
        return Err(BenchError::Check(format!(
            "throughput: sent {n} ticks, the actor counted {}",
            after.wrapping_sub(before)
        )));
    }
    Ok(elapsed)
}

async fn throughput(p: &Params, out: &Reporter) -> Result<(), BenchError> {
    eprintln!(
        "throughput: {} rounds of {} messages",
        p.throughput_rounds, p.throughput_msgs
    );
    let plain = PlainCounter::default().start();
    let worker = WorkerSpec::new("counter", SupervisedCounter::default);
    let supervised = worker.addr();
    let root = root_with("throughput", worker).await?;

    // Warm-up (not measured): grows the queues and the allocator's pools for both.
    blast(&plain, p.throughput_msgs / 10).await?;
    blast(&supervised, p.throughput_msgs / 10).await?;

    let n = p.throughput_msgs;
    let rate = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let (mut plain_rates, mut sup_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..p.throughput_rounds {
        let (mut plain_rate, mut sup_rate) = (0.0, 0.0);
        for side in sides(round) {
            match side {
                Side::Baseline => plain_rate = rate(blast(&plain, n).await?),
                Side::Supervised => sup_rate = rate(blast(&supervised, n).await?),
            }
        }
        eprintln!(
            "throughput: round {round}: plain {plain_rate:.0} msg/s, supervised {sup_rate:.0} msg/s"
        );
        plain_rates.push(plain_rate);
        sup_rates.push(sup_rate);
        ratios.push(sup_rate / plain_rate);
    }
    root.stop().await?;

    let case = "throughput";
    out.emit(case, "plain", "msgs_per_sec", median(&plain_rates), "msg/s")?;
    out.emit(
        case,
        "supervised",
        "msgs_per_sec",
        median(&sup_rates),
        "msg/s",
    )?;
    out.emit(
        case,
        "supervised_vs_plain",
        "throughput_ratio",
        median(&ratios),
        "ratio",
    )
}

// ---------------------------------------------------------------------------------------------
// request_reply

/// `samples.len()` sequential round trips; returns their p50 in nanoseconds.
async fn ping_p50<A>(addr: &Addr<A>, samples: &mut [u64]) -> Result<f64, BenchError>
where
    A: Actor + Handler<Ping>,
    A::Context: ToEnvelope<A, Ping>,
{
    for sample in samples.iter_mut() {
        let start = Instant::now();
        let count = addr.send(Ping).await?;
        *sample = nanos(start.elapsed());
        std::hint::black_box(count);
    }
    Ok(p50(samples))
}

async fn request_reply(p: &Params, out: &Reporter) -> Result<(), BenchError> {
    eprintln!(
        "request_reply: {} rounds of {} round trips",
        p.ping_rounds, p.pings
    );
    let plain = PlainCounter::default().start();
    let worker = WorkerSpec::new("counter", SupervisedCounter::default);
    let supervised = worker.addr();
    let root = root_with("request_reply", worker).await?;

    let mut samples = vec![0u64; p.pings];
    // Warm-up (not measured).
    ping_p50(&plain, &mut samples).await?;
    ping_p50(&supervised, &mut samples).await?;

    let (mut plain_p50s, mut sup_p50s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..p.ping_rounds {
        let (mut plain_p50, mut sup_p50) = (0.0, 0.0);
        for side in sides(round) {
            match side {
                Side::Baseline => plain_p50 = ping_p50(&plain, &mut samples).await?,
                Side::Supervised => sup_p50 = ping_p50(&supervised, &mut samples).await?,
            }
        }
        eprintln!(
            "request_reply: round {round}: plain {plain_p50:.0} ns, supervised {sup_p50:.0} ns"
        );
        plain_p50s.push(plain_p50);
        sup_p50s.push(sup_p50);
        ratios.push(sup_p50 / plain_p50);
    }
    root.stop().await?;

    let case = "request_reply";
    out.emit(case, "plain", "p50_ns", median(&plain_p50s), "ns")?;
    out.emit(case, "supervised", "p50_ns", median(&sup_p50s), "ns")?;
    out.emit(
        case,
        "supervised_vs_plain",
        "p50_ratio",
        median(&ratios),
        "ratio",
    )
}

// ---------------------------------------------------------------------------------------------
// panic_restart

thread_local! {
    /// When the last `Boom` handler started (just before it panicked).
    static BOOM_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// When the last `Next` handler ran (in the restarted instance).
    static NEXT_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// One-way message whose handler records the time and panics.
#[derive(Message)]
#[rtype(result = "()")]
struct Boom;

/// One-way message whose handler records the time it ran.
#[derive(Message)]
#[rtype(result = "()")]
struct Next;

/// A supervised actor that panics on `Boom`.
#[derive(Default)]
struct Crasher {
    /// `Next` messages handled by this instance (1 after each restart).
    handled: u64,
}

impl Actor for Crasher {
    type Context = SupervisedContext<Self>;
}

impl Handler<Boom> for Crasher {
    type Result = ();
    #[allow(
        clippy::panic,
        reason = "the panic_restart case measures a handler panic"
    )]
    fn handle(&mut self, _: Boom, _: &mut Self::Context) {
        BOOM_AT.with(|at| at.set(Some(Instant::now())));
        panic!("boom (deliberate, measured by the panic_restart case)");
    }
}

impl Handler<Next> for Crasher {
    type Result = ();
    fn handle(&mut self, _: Next, _: &mut Self::Context) {
        NEXT_AT.with(|at| at.set(Some(Instant::now())));
        self.handled += 1;
    }
}

impl Handler<Flush> for Crasher {
    type Result = u64;
    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> u64 {
        self.handled
    }
}

/// `samples.len()` restarts: `Boom` and `Next` back to back, then a `Flush` round trip; each
/// sample is from the start of `Boom`'s handler to the start of `Next`'s. Returns the p50 in ns.
async fn restart_p50(addr: &Addr<Crasher>, samples: &mut [u64]) -> Result<f64, BenchError> {
    for sample in samples.iter_mut() {
        BOOM_AT.with(|at| at.set(None));
        NEXT_AT.with(|at| at.set(None));
        addr.do_send(Boom);
        addr.do_send(Next);
        let handled = addr.send(Flush).await?;
        let (boom, next) = (BOOM_AT.with(Cell::get), NEXT_AT.with(Cell::get));
        match (boom, next) {
            (Some(boom), Some(next)) if handled == 1 => *sample = nanos(next - boom),
            _ => {
                return Err(BenchError::Check(format!(
                    "panic_restart: expected a restart then one Next handled by the fresh \
                     instance; boom ran: {}, next ran: {}, the instance handled {handled}",
                    boom.is_some(),
                    next.is_some()
                )))
            }
        }
    }
    Ok(p50(samples))
}

#[allow(
    clippy::panic,
    reason = "the anchor measures a bare panic and its catch"
)]
fn bare_panic() {
    panic!("boom (deliberate, the bare_catch_unwind anchor)");
}

/// A task loop of `n` caught panics; each sample is one `catch_unwind(panic)` under the same
/// hook. Returns the p50 in ns.
async fn bare_p50(n: usize) -> Result<f64, BenchError> {
    let task = actix_rt::spawn(async move {
        let mut samples = vec![0u64; n];
        let mut caught = 0usize;
        for sample in samples.iter_mut() {
            let start = Instant::now();
            let result = std::panic::catch_unwind(bare_panic);
            *sample = nanos(start.elapsed());
            if result.is_err() {
                caught += 1;
            }
            drop(result);
            tokio::task::yield_now().await;
        }
        (samples, caught)
    });
    let (mut samples, caught) = task.await?;
    if caught != n {
        return Err(BenchError::Check(format!(
            "panic_restart: {caught} of {n} bare panics were caught"
        )));
    }
    Ok(p50(&mut samples))
}

async fn panic_restart(p: &Params, out: &Reporter) -> Result<(), BenchError> {
    eprintln!(
        "panic_restart: {} rounds of {} restarts (panic messages silenced)",
        p.restart_rounds, p.restarts
    );
    // Printing a panic costs more than the restart: silence the default hook, then put the
    // supervisor's hook (which records the location and stays quiet inside cells) on top.
    std::panic::set_hook(Box::new(|_| {}));
    cadre_supervisor::install_panic_hook();
    let result = panic_restart_rounds(p, out).await;
    // Back to the default hook, so that an unexpected panic later is not silent.
    drop(std::panic::take_hook());
    result
}

async fn panic_restart_rounds(p: &Params, out: &Reporter) -> Result<(), BenchError> {
    let worker = WorkerSpec::new("crasher", Crasher::default);
    let addr = worker.addr();
    let root = root_with("panic_restart", worker).await?;

    let mut samples = vec![0u64; p.restarts];
    // Warm-up (not measured).
    restart_p50(&addr, &mut samples).await?;
    bare_p50(p.restarts).await?;

    let (mut bare, mut sup, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..p.restart_rounds {
        let (mut bare_ns, mut sup_ns) = (0.0, 0.0);
        for side in sides(round) {
            match side {
                Side::Baseline => bare_ns = bare_p50(p.restarts).await?,
                Side::Supervised => sup_ns = restart_p50(&addr, &mut samples).await?,
            }
        }
        eprintln!("panic_restart: round {round}: bare {bare_ns:.0} ns, supervised {sup_ns:.0} ns");
        bare.push(bare_ns);
        sup.push(sup_ns);
        ratios.push(sup_ns / bare_ns);
    }
    root.stop().await?;

    let case = "panic_restart";
    out.emit(case, "supervised", "p50_ns", median(&sup), "ns")?;
    out.emit(case, "bare_catch_unwind", "p50_ns", median(&bare), "ns")?;
    out.emit(
        case,
        "supervised_vs_bare",
        "p50_ratio",
        median(&ratios),
        "ratio",
    )
}

// ---------------------------------------------------------------------------------------------
// idle_memory

thread_local! {
    /// Idle actors whose `started` ran and whose `stopped` has not.
    static IDLE_LIVE: Cell<usize> = const { Cell::new(0) };
}

macro_rules! idle_actor {
    ($name:ident, $context:ty) => {
        /// An actor that does nothing but count itself in `IDLE_LIVE`.
        #[derive(Default)]
        struct $name;

        impl Actor for $name {
            type Context = $context;

            fn started(&mut self, _: &mut Self::Context) {
                IDLE_LIVE.with(|n| n.set(n.get() + 1));
            }

            fn stopped(&mut self, _: &mut Self::Context) {
                IDLE_LIVE.with(|n| n.set(n.get().saturating_sub(1)));
            }
        }
    };
}

idle_actor!(IdlePlain, actix::Context<IdlePlain>);
idle_actor!(IdleSupervised, SupervisedContext<IdleSupervised>);

/// Yields until `done()` holds (other tasks on the arbiter run meanwhile); fails after 60 s.
async fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<(), BenchError> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Check(format!(
                "idle_memory: still waiting for {what} after 60 s"
            )));
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Lets the arbiter run whatever is left (cells closing, finished tasks being freed) until the
/// live heap stops changing, so that a baseline is not followed by frees of the previous round.
async fn settle() {
    let start = Instant::now();
    let mut stable = 0;
    while stable < 3 && start.elapsed() < Duration::from_secs(5) {
        let bytes = live_bytes();
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        stable = if live_bytes() == bytes { stable + 1 } else { 0 };
    }
}

fn idle_count() -> usize {
    IDLE_LIVE.with(Cell::get)
}

/// Heap bytes counted between `before` and now, per actor.
fn per_actor(before: usize, n: usize) -> f64 {
    live_bytes().wrapping_sub(before) as isize as f64 / n as f64
}

/// After a teardown: waits until every actor ran `stopped`, lets the arbiter free the finished
/// tasks, and reports (on stderr) what is still live compared with the baseline.
async fn after_teardown(name: &str, before: usize) -> Result<(), BenchError> {
    wait_until("the actors to stop", || idle_count() == 0).await?;
    settle().await;
    eprintln!(
        "idle_memory: {name}: {} bytes still live after teardown",
        live_bytes().wrapping_sub(before) as isize
    );
    Ok(())
}

/// Bytes per actor for `n` plain actix actors (`.start()`, then polled once: `started` ran).
/// `addrs` is empty with room for `n`, allocated before the baseline.
async fn idle_plain(
    name: &str,
    n: usize,
    addrs: &mut Vec<Addr<IdlePlain>>,
) -> Result<f64, BenchError> {
    settle().await;
    let before = live_bytes();
    for _ in 0..n {
        addrs.push(IdlePlain.start());
    }
    wait_until("the actors to start", || idle_count() == n).await?;
    let bytes = per_actor(before, n);
    // The actors stop once their last address is gone.
    addrs.clear();
    after_teardown(name, before).await?;
    Ok(bytes)
}

/// Bytes per actor for `n` supervised actors, all children of one supervisor (started with the
/// tree, so each has started when `start` returns). `addrs` as for [`idle_plain`].
async fn idle_supervised(
    name: &str,
    n: usize,
    addrs: &mut Vec<Addr<IdleSupervised>>,
) -> Result<f64, BenchError> {
    settle().await;
    let before = live_bytes();
    let mut spec = SupervisorSpec::one_for_one().intensity(u32::MAX, Duration::from_secs(1));
    for i in 0..n {
        let worker = WorkerSpec::new(format!("w{i}"), || IdleSupervised);
        addrs.push(worker.addr());
        spec = spec.child(worker);
    }
    let root = spec.start("idle_memory").await?;
    wait_until("the actors to start", || idle_count() == n).await?;
    let bytes = per_actor(before, n);
    root.stop().await?;
    drop(root);
    addrs.clear();
    after_teardown(name, before).await?;
    Ok(bytes)
}

async fn idle_memory(p: &Params, out: &Reporter) -> Result<(), BenchError> {
    eprintln!(
        "idle_memory: {} rounds of {} idle actors",
        p.idle_rounds, p.idle_actors
    );
    let n = p.idle_actors;
    let mut plain_addrs = Vec::with_capacity(n);
    let mut sup_addrs = Vec::with_capacity(n);

    // Warm-up (not measured): grows the executor's queues and the allocator's pools.
    idle_plain("plain (warm-up)", n, &mut plain_addrs).await?;
    idle_supervised("supervised (warm-up)", n, &mut sup_addrs).await?;

    let (mut plain_bytes, mut sup_bytes, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..p.idle_rounds {
        let (mut plain_b, mut sup_b) = (0.0, 0.0);
        for side in sides(round) {
            match side {
                Side::Baseline => plain_b = idle_plain("plain", n, &mut plain_addrs).await?,
                Side::Supervised => {
                    sup_b = idle_supervised("supervised", n, &mut sup_addrs).await?;
                }
            }
        }
        eprintln!(
            "idle_memory: round {round}: plain {plain_b:.1} B/actor, supervised {sup_b:.1} B/actor"
        );
        plain_bytes.push(plain_b);
        sup_bytes.push(sup_b);
        ratios.push(sup_b / plain_b);
    }

    let case = "idle_memory";
    out.emit(
        case,
        "plain",
        "bytes_per_actor",
        median(&plain_bytes),
        "bytes",
    )?;
    out.emit(
        case,
        "supervised",
        "bytes_per_actor",
        median(&sup_bytes),
        "bytes",
    )?;
    out.emit(
        case,
        "supervised_vs_plain",
        "bytes_ratio",
        median(&ratios),
        "ratio",
    )
}
