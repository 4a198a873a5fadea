//! The extension API: what a Rust crate adds to a node when it starts.
//!
//! - A **workload kind**: an actix actor (context [`SupervisedContext`]) that handles
//!   [`Run`], reports progress through the reporter in the message
//!   and returns a JSON result. Jobs name it in `kind.workload.name`. Each kind runs as one
//!   supervised actor under `cadre/workloads/<name>`: a panic is logged, counted and the actor
//!   restarted (the job it was running fails with that reason); more than 20 restarts in 60 s
//!   disables that workload (loudly) without touching the rest of the node.
//! - A **callback** on [`NodeEvent`]s (job state changes, lease expiries, worker deaths), run by
//!   the supervisor crate's callback runner: isolated, ordered, bounded, restarted on panic and
//!   disabled after its limit.
//!
//! `examples/checksum_workload.rs` and `examples/finished_jobs_callback.rs` are complete nodes
//! built this way.

use std::collections::BTreeSet;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Handler, Recipient};
use cadre_actors::protocol::NodeEvent;
use cadre_actors::workload::Run;
use cadre_supervisor::{Callback, CallbackSpec, ChildSpec, Restart, SupervisedContext, WorkerSpec};

use crate::error::Error;

/// Restarts a workload actor may take within [`WORKLOAD_LIMIT_PERIOD`] before it is disabled.
pub const WORKLOAD_LIMIT: u32 = 20;
/// The window of [`WORKLOAD_LIMIT`].
pub const WORKLOAD_LIMIT_PERIOD: Duration = Duration::from_secs(60);

/// Workloads and callbacks to register when the node starts.
#[derive(Default)]
pub struct Extensions {
    pub(crate) workloads: Vec<(String, ChildSpec, Recipient<Run>)>,
    pub(crate) callbacks: Vec<CallbackSpec<NodeEvent>>,
}

impl Extensions {
    /// No extensions.
    pub fn new() -> Extensions {
        Extensions::default()
    }

    /// Adds a workload kind named `name`, whose actor `factory` makes (again on every restart).
    pub fn workload<A>(
        mut self,
        name: impl Into<String>,
        factory: impl Fn() -> A + Send + 'static,
    ) -> Extensions
    where
        A: Actor<Context = SupervisedContext<A>> + Handler<Run>,
        SupervisedContext<A>: ToEnvelope<A, Run>,
    {
        let name = name.into();
        let spec = WorkerSpec::new(name.clone(), factory)
            .restart(Restart::Permanent)
            .limit(WORKLOAD_LIMIT, WORKLOAD_LIMIT_PERIOD);
        let recipient = spec.addr().recipient();
        self.workloads.push((name, spec.into(), recipient));
        self
    }

    /// Adds a callback named `name` on node events.
    pub fn callback<C: Callback<NodeEvent>>(
        mut self,
        name: impl Into<String>,
        factory: impl Fn() -> C + Send + 'static,
    ) -> Extensions {
        self.callbacks.push(CallbackSpec::new(name, factory));
        self
    }

    /// Adds a callback from a full spec (queue size, restart limit).
    pub fn callback_spec(mut self, spec: CallbackSpec<NodeEvent>) -> Extensions {
        self.callbacks.push(spec);
        self
    }

    /// The workload names, checked: non-empty, of `[A-Za-z0-9._-]`, unique.
    pub fn workload_names(&self) -> Result<BTreeSet<String>, Error> {
        let mut names = BTreeSet::new();
        for (name, ..) in &self.workloads {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(Error::Config {
                    field: "extensions.workload".to_owned(),
                    reason: format!("{name:?}: a name is 1-64 characters of A-Z a-z 0-9 . _ -"),
                });
            }
            if !names.insert(name.clone()) {
                return Err(Error::Config {
                    field: "extensions.workload".to_owned(),
                    reason: format!("{name:?} is registered twice"),
                });
            }
        }
        Ok(names)
    }
}
