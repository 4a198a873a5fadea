//! A scheduler stand-in for the worker tests: `FakeScheduler` records what a worker sends and
//! answers renewals, starts and progress flushes as its `Script` says (`RenewMode`, `AckMode`);
//! `fake_link` is the `SchedulerLink` that reaches it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::protocol::{
    Backpressure, Finished, ProgressAck, ProgressFlush, Register, Renew, RenewReply, SchedulerLink,
    Started, TaskEnd,
};
use cadre_actors::{Error, FencingToken, WorkerId};
use cadre_supervisor::SupervisedContext;
use tokio::time::{sleep, Instant};

use super::harness::lock;

/// How the fake scheduler answers renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewMode {
    /// At once: renewed, except the tokens in `Script::refuse`.
    Answer,
    /// Never.
    Silent,
    /// After this delay.
    Late(Duration),
    /// Once with `Error::UnknownWorker`, then as `Answer`.
    ForgetOnce,
}

/// How the fake scheduler acknowledges progress flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Level(Backpressure),
    /// With the flush's sequence number plus one.
    Malformed,
}

pub struct Script {
    pub renew: RenewMode,
    pub refuse: BTreeSet<FencingToken>,
    pub ack: AckMode,
    pub refuse_started: bool,
}

/// What the fake scheduler received.
#[derive(Default)]
pub struct Received {
    pub registers: Vec<String>,
    pub renews: Vec<Renew>,
    /// When each renewal arrived and how it was to be answered.
    pub renew_log: Vec<(Instant, RenewMode)>,
    pub started: Vec<Started>,
    pub finished: Vec<Finished>,
    pub finished_at: Vec<Instant>,
    pub flushes: Vec<ProgressFlush>,
}

/// A scheduler stand-in that records what a worker sends and answers per its script.
#[derive(Clone)]
pub struct FakeScheduler {
    pub script: Arc<Mutex<Script>>,
    pub got: Arc<Mutex<Received>>,
}

impl FakeScheduler {
    pub fn new() -> FakeScheduler {
        FakeScheduler {
            script: Arc::new(Mutex::new(Script {
                renew: RenewMode::Answer,
                refuse: BTreeSet::new(),
                ack: AckMode::Level(Backpressure::None),
                refuse_started: false,
            })),
            got: Arc::new(Mutex::new(Received::default())),
        }
    }
    pub fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
    pub fn got(&self) -> MutexGuard<'_, Received> {
        lock(&self.got)
    }
    pub fn finished(&self) -> Vec<(FencingToken, TaskEnd)> {
        self.got()
            .finished
            .iter()
            .map(|f| (f.token, f.end.clone()))
            .collect()
    }
    pub fn flushes(&self) -> usize {
        self.got().flushes.len()
    }
}

impl Actor for FakeScheduler {
    type Context = SupervisedContext<Self>;
}

impl Handler<Register> for FakeScheduler {
    type Result = Result<WorkerId, Error>;
    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        let mut got = self.got();
        got.registers.push(msg.identity.to_string());
        Ok(WorkerId(got.registers.len() as u64))
    }
}

impl Handler<Renew> for FakeScheduler {
    type Result = ResponseFuture<Result<RenewReply, Error>>;
    fn handle(&mut self, msg: Renew, _: &mut Self::Context) -> Self::Result {
        let (mode, refuse) = {
            let mut script = self.script();
            let mode = script.renew;
            if mode == RenewMode::ForgetOnce {
                script.renew = RenewMode::Answer;
            }
            (mode, script.refuse.clone())
        };
        let mut got = self.got();
        got.renews.push(msg.clone());
        got.renew_log.push((Instant::now(), mode));
        drop(got);
        let mut reply = RenewReply::default();
        for (job, token) in &msg.leases {
            if refuse.contains(token) {
                reply.refused.push((*job, *token));
            } else {
                reply.renewed.push(*token);
            }
        }
        Box::pin(async move {
            match mode {
                RenewMode::Answer => Ok(reply),
                RenewMode::Silent => std::future::pending().await,
                RenewMode::Late(delay) => {
                    sleep(delay).await;
                    Ok(reply)
                }
                RenewMode::ForgetOnce => Err(Error::UnknownWorker { worker: msg.worker }),
            }
        })
    }
}

impl Handler<Started> for FakeScheduler {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: Started, _: &mut Self::Context) -> Self::Result {
        self.got().started.push(msg.clone());
        if self.script().refuse_started {
            return Err(Error::StaleToken {
                job: msg.job,
                worker: msg.worker,
                presented: msg.token,
                current: None,
            });
        }
        Ok(())
    }
}

impl Handler<Finished> for FakeScheduler {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: Finished, _: &mut Self::Context) -> Self::Result {
        let mut got = self.got();
        got.finished.push(msg);
        got.finished_at.push(Instant::now());
        Ok(())
    }
}

impl Handler<ProgressFlush> for FakeScheduler {
    type Result = Result<ProgressAck, Error>;
    fn handle(&mut self, msg: ProgressFlush, _: &mut Self::Context) -> Self::Result {
        let seq = msg.seq;
        self.got().flushes.push(msg);
        Ok(match self.script().ack {
            AckMode::Level(level) => ProgressAck {
                seq,
                level,
                refused: Vec::new(),
            },
            AckMode::Malformed => ProgressAck {
                seq: seq + 1,
                level: Backpressure::None,
                refused: Vec::new(),
            },
        })
    }
}

pub fn fake_link(addr: &Addr<FakeScheduler>, target: &str) -> SchedulerLink {
    SchedulerLink {
        target: target.to_owned(),
        register: addr.clone().recipient(),
        renew: addr.clone().recipient(),
        started: addr.clone().recipient(),
        finished: addr.clone().recipient(),
        progress: addr.clone().recipient(),
    }
}
