//! A live demonstration of a supervision tree, run by `cadre demo` and the
//! `supervision_tree` example: a worker with a bug that panics every few ticks, restarted in
//! place with its address and queue intact; a callback runner with one healthy and one broken
//! callback, which is disabled after its limit; then an ordered stop and the failure journal.

use std::time::Duration;

use actix::prelude::*;
use cadre_supervisor::{
    Callback, CallbackError, CallbackEvent, CallbackRunner, CallbackSpec, FailureRecord,
    SupervisedContext, SupervisorError, SupervisorSpec, WorkerSpec,
};

/// A tick of the demo worker, delivered to callbacks.
pub struct Ticked {
    /// Tick number since the demo started.
    pub tick: u64,
    /// The worker instance's own count (restarts from zero after every panic).
    pub local: u64,
}

impl CallbackEvent for Ticked {
    fn event_id(&self) -> String {
        format!("tick-{}", self.tick)
    }
}

struct Printer;

impl Callback<Ticked> for Printer {
    fn on_event(&mut self, event: &Ticked) -> Result<(), CallbackError> {
        tracing::info!(tick = event.tick, local = event.local, "tick delivered");
        Ok(())
    }
}

struct Flaky;

impl Callback<Ticked> for Flaky {
    #[allow(
        clippy::panic,
        reason = "the demo shows a panicking callback being caught, restarted and disabled"
    )]
    fn on_event(&mut self, event: &Ticked) -> Result<(), CallbackError> {
        if event.tick % 3 == 2 {
            panic!("flaky callback cannot handle tick {}", event.tick);
        }
        Ok(())
    }
}

/// The demo worker: counts ticks and has a bug every `crash_every` local ticks.
struct Ticker {
    local: u64,
    crash_every: u64,
    callbacks: CallbackRunner<Ticked>,
}

impl Actor for Ticker {
    type Context = SupervisedContext<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Tick(u64);

impl Handler<Tick> for Ticker {
    type Result = ();

    fn handle(&mut self, msg: Tick, ctx: &mut Self::Context) {
        self.local += 1;
        if self.local.is_multiple_of(self.crash_every) {
            ctx.fail(format!("demo bug at local tick {}", self.local));
            return;
        }
        self.callbacks.emit(Ticked {
            tick: msg.0,
            local: self.local,
        });
    }
}

/// Runs the demo for `duration` (or until Ctrl-C when `None`) and returns the failure journal.
/// Must run inside an actix System.
pub async fn run(duration: Option<Duration>) -> Result<Vec<FailureRecord>, SupervisorError> {
    cadre_supervisor::install_panic_hook();
    let (runner, callbacks) = CallbackRunner::<Ticked>::new();
    let r = runner.clone();
    let ticker = WorkerSpec::new("ticker", move || Ticker {
        local: 0,
        crash_every: 4,
        callbacks: r.clone(),
    });
    let addr = ticker.addr();
    let root = SupervisorSpec::one_for_one()
        .intensity(10, Duration::from_secs(10))
        .child(callbacks.into_child("callbacks"))
        .child(ticker)
        .start("cadre")
        .await?;
    runner
        .register(CallbackSpec::new("printer", || Printer))
        .await?;
    runner
        .register(CallbackSpec::new("flaky", || Flaky).limit(2, Duration::from_secs(60)))
        .await?;
    tracing::info!("demo tree started: root cadre, children callbacks and ticker; Ctrl-C stops it");

    let mut interval = tokio::time::interval(Duration::from_millis(250));
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                tick += 1;
                if let Err(error) = addr.try_send(Tick(tick)) {
                    tracing::warn!(tick, %error, "tick not queued");
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
            signal = tokio::signal::ctrl_c() => {
                if let Err(error) = signal {
                    tracing::error!(%error, "cannot listen for Ctrl-C; stopping");
                }
                break;
            }
        }
    }
    let records = root.journal().map(|j| j.records());
    root.stop().await?;
    Ok(records.unwrap_or_else(Vec::new))
}
