//! Panic capture and restart in place: fresh state, same address, queued messages kept, the
//! failing caller gets an error, async handlers included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use actix::prelude::*;
use cadre_supervisor::{SupervisedContext, SupervisorSpec, WorkerSpec};
use common::{counter, run, settle, snapshotter};

#[derive(Default)]
struct Acc {
    total: u64,
}

impl Actor for Acc {
    type Context = SupervisedContext<Self>;
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Add(u64);

impl Handler<Add> for Acc {
    type Result = u64;
    fn handle(&mut self, msg: Add, _: &mut Self::Context) -> u64 {
        if msg.0 == 0 {
            panic!("zero is not allowed");
        }
        self.total += msg.0;
        self.total
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
struct SlowAdd(u64);

impl Handler<SlowAdd> for Acc {
    type Result = ResponseFuture<u64>;
    fn handle(&mut self, msg: SlowAdd, _: &mut Self::Context) -> Self::Result {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if msg.0 == 0 {
                panic!("async zero");
            }
            msg.0
        })
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
struct RespAdd(u64);

impl Handler<RespAdd> for Acc {
    type Result = Response<u64>;
    fn handle(&mut self, msg: RespAdd, _: &mut Self::Context) -> Self::Result {
        if msg.0 == 1 {
            return Response::reply(1);
        }
        Response::fut(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if msg.0 == 0 {
                panic!("response zero");
            }
            msg.0
        })
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
struct ActAdd(u64);

impl Handler<ActAdd> for Acc {
    type Result = ResponseActFuture<Self, u64>;
    fn handle(&mut self, msg: ActAdd, _: &mut Self::Context) -> Self::Result {
        Box::pin(
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                msg.0
            }
            .into_actor(self)
            .map(|n, act, _| {
                if n == 0 {
                    panic!("act zero");
                }
                act.total += n;
                act.total
            }),
        )
    }
}

#[derive(Message)]
#[rtype(result = "u64")]
struct AtomicAdd(u64);

impl Handler<AtomicAdd> for Acc {
    type Result = AtomicResponse<Self, u64>;
    fn handle(&mut self, msg: AtomicAdd, _: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                msg.0
            }
            .into_actor(self)
            .map(|n, act, _| {
                if n == 0 {
                    panic!("atomic zero");
                }
                act.total += n;
                act.total
            }),
        ))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Fatal;

impl Handler<Fatal> for Acc {
    type Result = ();
    fn handle(&mut self, _: Fatal, ctx: &mut Self::Context) {
        ctx.fail("state is corrupt");
    }
}

#[test]
fn panic_restarts_with_fresh_state_same_addr_and_caller_gets_error() {
    snapshotter();
    let cap = run(|_| async {
        let spec = WorkerSpec::new("acc_restart", Acc::default);
        let addr = spec.addr();
        let root = SupervisorSpec::one_for_one()
            .child(spec)
            .start("t1")
            .await
            .unwrap();
        assert_eq!(addr.send(Add(5)).await.unwrap(), 5);
        let err = addr.send(Add(0)).await;
        assert!(matches!(err, Err(MailboxError::Closed)), "{err:?}");
        // fresh state: the total starts again from zero
        assert_eq!(addr.send(Add(1)).await.unwrap(), 1);
        root.stop().await.unwrap();
    });
    assert_eq!(cap.failures_of("t1/acc_restart", "panic"), 1);
    assert_eq!(
        counter(
            "cadre_actor_failures_total",
            &[("actor", "acc_restart"), ("kind", "panic")]
        ),
        1
    );
    assert_eq!(
        counter("cadre_actor_restarts_total", &[("actor", "acc_restart")]),
        1
    );
}

#[test]
fn queued_messages_survive_a_restart_and_are_handled_once() {
    let cap = run(|_| async {
        let spec = WorkerSpec::new("acc_queue", Acc::default).mailbox_capacity(64);
        let addr = spec.addr();
        let root = SupervisorSpec::one_for_one()
            .child(spec)
            .start("t2")
            .await
            .unwrap();
        // queue a panic followed by ten adds before the actor runs
        let failing = addr.send(Add(0));
        let rest: Vec<_> = (1..=10).map(|_| addr.send(Add(1))).collect();
        assert!(failing.await.is_err());
        let mut seen = Vec::new();
        for r in rest {
            seen.push(r.await.unwrap());
        }
        assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
        root.stop().await.unwrap();
    });
    assert_eq!(cap.failures_of("t2/acc_queue", "panic"), 1);
}

#[test]
fn async_handler_panics_are_failures_of_the_actor() {
    let cap = run(|_| async {
        let spec = WorkerSpec::new("acc_async", Acc::default);
        let addr = spec.addr();
        let root = SupervisorSpec::one_for_one()
            .intensity(10, Duration::from_secs(5))
            .child(spec)
            .start("t3")
            .await
            .unwrap();
        assert_eq!(addr.send(Add(3)).await.unwrap(), 3);
        assert!(addr.send(SlowAdd(0)).await.is_err());
        settle().await;
        assert_eq!(
            addr.send(Add(1)).await.unwrap(),
            1,
            "restarted after ResponseFuture panic"
        );
        assert_eq!(addr.send(RespAdd(1)).await.unwrap(), 1);
        assert_eq!(addr.send(RespAdd(5)).await.unwrap(), 5);
        assert!(addr.send(RespAdd(0)).await.is_err());
        settle().await;
        assert_eq!(
            addr.send(Add(2)).await.unwrap(),
            2,
            "restarted after Response::fut panic"
        );
        assert!(addr.send(ActAdd(0)).await.is_err());
        assert_eq!(
            addr.send(ActAdd(2)).await.unwrap(),
            2,
            "restarted after ResponseActFuture panic"
        );
        assert!(addr.send(AtomicAdd(0)).await.is_err());
        assert_eq!(
            addr.send(AtomicAdd(4)).await.unwrap(),
            4,
            "restarted after AtomicResponse panic"
        );
        assert!(addr.send(Fatal).await.is_ok());
        settle().await;
        assert_eq!(
            addr.send(Add(7)).await.unwrap(),
            7,
            "restarted after a fatal error"
        );
        root.stop().await.unwrap();
    });
    assert_eq!(cap.failures_of("t3/acc_async", "panic"), 4);
    assert_eq!(cap.failures_of("t3/acc_async", "fatal"), 1);
}

struct Fragile {
    starts: std::sync::Arc<std::sync::atomic::AtomicU32>,
    handled: u64,
}

impl Actor for Fragile {
    type Context = SupervisedContext<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n == 2 {
            panic!("start-up failed on instance {n}");
        }
    }
}

impl Handler<Add> for Fragile {
    type Result = u64;
    fn handle(&mut self, msg: Add, _: &mut Self::Context) -> u64 {
        if msg.0 == 0 {
            panic!("zero");
        }
        self.handled += 1;
        self.handled
    }
}

#[test]
fn messages_queued_while_a_restart_fails_in_start_up_are_kept() {
    let starts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s = starts.clone();
    let cap = run(|_| async move {
        let spec = WorkerSpec::new("fragile", move || Fragile {
            starts: s.clone(),
            handled: 0,
        })
        .mailbox_capacity(64);
        let addr = spec.addr();
        let root = SupervisorSpec::one_for_one()
            .child(spec)
            .start("t4")
            .await
            .unwrap();
        let failing = addr.send(Add(0));
        let queued: Vec<_> = (0..5).map(|_| addr.send(Add(1))).collect();
        assert!(failing.await.is_err());
        let mut seen = Vec::new();
        for r in queued {
            seen.push(r.await.unwrap());
        }
        // instance 2 failed in `started`; instance 3 handled every queued message, once
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        root.stop().await.unwrap();
    });
    assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(cap.failures_of("t4/fragile", "panic"), 1);
    assert_eq!(cap.failures_of("t4/fragile", "start_failed"), 1);
}
