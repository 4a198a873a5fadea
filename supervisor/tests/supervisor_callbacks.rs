//! Supervised callbacks: isolation, order, errors, overflow, and disabling after the limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadre_supervisor::{Callback, CallbackError, CallbackEvent, CallbackRunner, CallbackSpec};
use common::*;

struct JobDone(u64);

impl CallbackEvent for JobDone {
    fn event_id(&self) -> String {
        format!("job-{}", self.0)
    }
}

type Seen = Arc<Mutex<Vec<u64>>>;

struct Recorder(Seen);

impl Callback<JobDone> for Recorder {
    fn on_event(&mut self, event: &JobDone) -> Result<(), CallbackError> {
        self.0.lock().unwrap().push(event.0);
        Ok(())
    }
}

struct Panicker;

impl Callback<JobDone> for Panicker {
    fn on_event(&mut self, event: &JobDone) -> Result<(), CallbackError> {
        panic!("callback cannot handle job {}", event.0);
    }
}

struct Refuser;

impl Callback<JobDone> for Refuser {
    fn on_event(&mut self, event: &JobDone) -> Result<(), CallbackError> {
        if event.0.is_multiple_of(2) {
            Err(format!("webhook answered 503 for job {}", event.0).into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn one_panicking_callback_never_stops_the_other_nine_and_is_disabled_after_its_limit() {
    let seen: Vec<Seen> = (0..9).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let s = seen.clone();
    let cap = run(|_| async move {
        let (runner, spec) = CallbackRunner::<JobDone>::new();
        let root = spec.start("cb").await.unwrap();
        for (i, seen) in s.iter().enumerate() {
            if i == 3 {
                runner
                    .register(
                        CallbackSpec::new("bad", || Panicker).limit(3, Duration::from_secs(60)),
                    )
                    .await
                    .unwrap();
            }
            let seen = seen.clone();
            runner
                .register(CallbackSpec::new(format!("good{i}"), move || {
                    Recorder(seen.clone())
                }))
                .await
                .unwrap();
        }
        let mut disabled_seen = 0;
        for n in 0..50 {
            let report = runner.emit(JobDone(n));
            assert_eq!(report.queued + report.skipped_disabled, 10);
            disabled_seen += report.skipped_disabled;
            if n % 7 == 0 {
                settle().await;
            }
        }
        settle().await;
        assert!(
            disabled_seen > 0,
            "the bad callback was disabled while events kept coming"
        );
        root.stop().await.unwrap();
    });
    for (i, seen) in seen.iter().enumerate() {
        assert_eq!(
            *seen.lock().unwrap(),
            (0..50).collect::<Vec<u64>>(),
            "callback good{i}"
        );
    }
    // 4 panics (3 restarts allowed), then one loud disable
    assert_eq!(cap.failures_of("cb/bad", "panic"), 4);
    assert_eq!(cap.failures_of("cb/bad", "disabled"), 1);
    let first = cap
        .failures()
        .into_iter()
        .find(|f| f.get("kind").map(String::as_str) == Some("panic"))
        .unwrap();
    assert_eq!(first.get("actor").map(String::as_str), Some("bad"));
    assert_eq!(
        first.get("context").map(String::as_str),
        Some("event_id=job-0")
    );
    assert!(
        counter(
            "cadre_callback_events_dropped_total",
            &[("callback", "bad"), ("reason", "disabled")]
        ) > 0
    );
}

#[test]
fn callback_errors_are_logged_with_the_event_and_delivery_goes_on() {
    let cap = run(|_| async {
        let (runner, spec) = CallbackRunner::<JobDone>::new();
        let root = spec.start("cbe").await.unwrap();
        runner
            .register(CallbackSpec::new("webhook", || Refuser))
            .await
            .unwrap();
        for n in 0..4 {
            runner.emit(JobDone(n));
        }
        settle().await;
        root.stop().await.unwrap();
    });
    let errors: Vec<_> = cap
        .failures()
        .into_iter()
        .filter(|f| f.get("kind").map(String::as_str) == Some("callback_error"))
        .collect();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        errors[1].get("context").map(String::as_str),
        Some("event_id=job-2")
    );
    assert_eq!(
        errors[1].get("actor_path").map(String::as_str),
        Some("cbe/webhook")
    );
    assert_eq!(
        counter(
            "cadre_actor_failures_total",
            &[("actor", "webhook"), ("kind", "callback_error")]
        ),
        2
    );
}

#[test]
fn a_full_queue_drops_loudly_for_that_callback_only() {
    let fast: Seen = Arc::new(Mutex::new(Vec::new()));
    let slow: Seen = Arc::new(Mutex::new(Vec::new()));
    let (f, s) = (fast.clone(), slow.clone());
    let cap = run(|_| async move {
        let (runner, spec) = CallbackRunner::<JobDone>::new();
        let root = spec.start("cbq").await.unwrap();
        runner
            .register(CallbackSpec::new("small", move || Recorder(s.clone())).queue(4))
            .await
            .unwrap();
        runner
            .register(CallbackSpec::new("large", move || Recorder(f.clone())).queue(64))
            .await
            .unwrap();
        // emit without yielding: the small queue overflows, the large one does not
        let mut dropped = 0;
        for n in 0..20 {
            dropped += runner.emit(JobDone(n)).dropped_full;
        }
        assert!(dropped > 0);
        settle().await;
        root.stop().await.unwrap();
    });
    assert_eq!(*fast.lock().unwrap(), (0..20).collect::<Vec<u64>>());
    let small = slow.lock().unwrap().clone();
    let overflows = cap.failures_of("cbq/small", "overflow");
    assert_eq!(
        small.len() + overflows,
        20,
        "every event either delivered or logged as dropped"
    );
    assert!(
        small.windows(2).all(|w| w[0] < w[1]),
        "delivered in order: {small:?}"
    );
    assert_eq!(
        counter(
            "cadre_callback_events_dropped_total",
            &[("callback", "small"), ("reason", "full")]
        ),
        overflows as u64
    );
}
