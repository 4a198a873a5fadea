//! A worker stand-in for the scheduler tests: `FakeWorker` records the assignments and kills it
//! receives, in order (`WorkerGot`).

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use cadre_actors::protocol::{Assign, Kill, KillReason};
use cadre_actors::{FencingToken, JobId};
use cadre_supervisor::SupervisedContext;

use super::harness::lock;

/// What a fake worker received.
#[derive(Default)]
pub struct WorkerGot {
    pub assigns: Vec<Assign>,
    pub kills: Vec<Kill>,
    /// Both, in the order they came: `assign <token>`, `kill <token>`.
    pub order: Vec<String>,
}

/// A worker stand-in that records assignments and kills.
#[derive(Clone, Default)]
pub struct FakeWorker {
    pub got: Arc<Mutex<WorkerGot>>,
}

impl Actor for FakeWorker {
    type Context = SupervisedContext<Self>;
}

impl Handler<Assign> for FakeWorker {
    type Result = ();
    fn handle(&mut self, msg: Assign, _: &mut Self::Context) {
        let mut got = lock(&self.got);
        got.order.push(format!("assign {}", msg.token));
        got.assigns.push(msg);
    }
}

impl Handler<Kill> for FakeWorker {
    type Result = ();
    fn handle(&mut self, msg: Kill, _: &mut Self::Context) {
        let mut got = lock(&self.got);
        got.order.push(format!("kill {}", msg.token));
        got.kills.push(msg);
    }
}

impl FakeWorker {
    pub fn assigns(&self) -> Vec<Assign> {
        lock(&self.got).assigns.clone()
    }
    pub fn kills(&self) -> Vec<(JobId, FencingToken, KillReason)> {
        lock(&self.got)
            .kills
            .iter()
            .map(|k| (k.job, k.token, k.reason))
            .collect()
    }
}
