//! Nothing swallowed: every kind of failure is exactly one error event with its structured
//! fields, one counter increment and one journal entry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cadre_supervisor::{
    Callback, CallbackError, CallbackEvent, CallbackRunner, CallbackSpec, FailureJournal, Shutdown,
    SupervisorSpec, WorkerSpec,
};
use common::*;

struct Ev(u32);

impl CallbackEvent for Ev {
    fn event_id(&self) -> String {
        self.0.to_string()
    }
}

struct Failing;

impl Callback<Ev> for Failing {
    fn on_event(&mut self, _: &Ev) -> Result<(), CallbackError> {
        Err("refused".into())
    }
}

#[test]
fn every_failure_is_one_error_event_one_counter_increment_and_one_journal_entry() {
    let log = new_log();
    let l = log.clone();
    let journal = FailureJournal::new(100);
    let j = journal.clone();
    let cap = run(|_| async move {
        let panicky = WorkerSpec::new("f_panic", Probe::factory("p", &l));
        let stuck = WorkerSpec::new("f_stuck", Probe::factory("s", &l))
            .progress_deadline(Duration::from_secs(1));
        let stubborn = WorkerSpec::new("f_stubborn", Probe::stubborn("t", &l))
            .shutdown(Shutdown::Timeout(Duration::from_secs(1)));
        let limited =
            WorkerSpec::new("f_limited", Probe::factory("d", &l)).limit(0, Duration::from_secs(60));
        let leaf = WorkerSpec::new("f_leaf", Probe::factory("leaf", &l));
        let (pa, sa, da, la) = (panicky.addr(), stuck.addr(), limited.addr(), leaf.addr());
        let nested = SupervisorSpec::one_for_one()
            .intensity(0, Duration::from_secs(5))
            .child(leaf);
        let (runner, callbacks) = CallbackRunner::<Ev>::new();
        let root = SupervisorSpec::one_for_one()
            .intensity(100, Duration::from_secs(1))
            .journal(j.clone())
            .child(stubborn)
            .child(panicky)
            .child(stuck)
            .child(limited)
            .child(nested.into_child("f_nested"))
            .child(callbacks.into_child("f_callbacks"))
            .start("f")
            .await
            .unwrap();
        // panic
        pa.do_send(Boom);
        assert_eq!(pa.send(Inc).await.unwrap(), 1);
        // unresponsive
        sa.do_send(Hang);
        assert_eq!(sa.send(Inc).await.unwrap(), 1);
        // disabled: a panic over a limit of zero restarts
        da.do_send(Boom);
        assert!(da.send(Inc).await.is_err());
        // restart_limit in the nested supervisor, escalated at the root
        la.do_send(Boom);
        assert_eq!(la.send(Inc).await.unwrap(), 1);
        // start_failed
        let refused = root
            .start_child(WorkerSpec::new("f_start", || -> Probe {
                panic!("cannot build")
            }))
            .await;
        assert!(refused.is_err());
        // callback_error and overflow
        runner
            .register(CallbackSpec::new("f_cb", || Failing).queue(1))
            .await
            .unwrap();
        for n in 0..4 {
            runner.emit(Ev(n));
        }
        settle().await;
        // shutdown_timeout
        root.stop().await.unwrap();
    });

    let failures = cap.failures();
    let by_kind = |kind: &str| failures.iter().filter(|f| f["kind"] == kind).count();
    assert_eq!(by_kind("panic"), 3, "f_panic, f_limited, f_leaf");
    assert_eq!(by_kind("unresponsive"), 1);
    assert_eq!(by_kind("disabled"), 1);
    assert_eq!(by_kind("restart_limit"), 1);
    assert_eq!(by_kind("escalated"), 1);
    assert_eq!(by_kind("start_failed"), 1);
    assert_eq!(by_kind("shutdown_timeout"), 1);
    assert!(by_kind("overflow") >= 1);
    assert!(by_kind("callback_error") >= 1);
    assert_eq!(
        by_kind("overflow") + by_kind("callback_error"),
        4,
        "each event either failed or was dropped"
    );

    // exactly one error event per failure: no other error-level line anywhere
    assert_eq!(cap.errors(), failures.len());
    // one journal entry per failure, same order, same fields
    let records = journal.records();
    assert_eq!(records.len(), failures.len());
    assert_eq!(journal.total(), failures.len() as u64);
    for (record, event) in records.iter().zip(&failures) {
        assert_eq!(record.path, event["actor_path"]);
        assert_eq!(record.kind.as_str(), event["kind"]);
        assert_eq!(record.restart_count.to_string(), event["restart_count"]);
        assert_eq!(record.seq.to_string(), event["failure_seq"]);
        assert!(!record.message.is_empty());
    }
    // one counter increment per failure, labelled by child id and kind
    let mut expected: HashMap<(String, String), u64> = HashMap::new();
    for f in &failures {
        *expected
            .entry((f["actor"].clone(), f["kind"].clone()))
            .or_default() += 1;
    }
    for ((actor, kind), n) in expected {
        assert_eq!(
            counter(
                "cadre_actor_failures_total",
                &[("actor", &actor), ("kind", &kind)]
            ),
            n,
            "{actor} {kind}"
        );
    }
    // the panic message and the child's place in the tree are in the event
    let panic = failures.iter().find(|f| f["actor"] == "f_panic").unwrap();
    assert_eq!(panic["actor_path"], "f/f_panic");
    assert!(panic["reason"].contains("boom in p"), "{}", panic["reason"]);
}
