//! The worker against a scripted fake scheduler, reporting progress: obeying progress
//! back-pressure and returning to the base rate, and the progress circuit (opened after three
//! malformed acks, reopened at once when its trial flush fails).
//!
//! Time only moves through `tokio::time` on a paused clock, so every "not before" and "within"
//! below is about virtual time and is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cadre_actors::protocol::Backpressure;
use cadre_actors::worker::CIRCUIT_OPEN;
use cadre_actors::{FencingToken, WorkerId};
use serde_json::json;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::Level;

use support::{forever, ms, run, until, AckMode, WorkerRig, PROGRESS_EVERY};

#[test]
fn worker_obeys_progress_backpressure_and_returns_to_the_base_rate() {
    run(|_| async {
        let rig = WorkerRig::start(false).await;
        rig.assign(1, 10, json!({ "every_ms": 5 })).await;
        let window = Duration::from_secs(4);
        // Counts the flushes over `window` after letting a new level take hold.
        let count = |level: Backpressure| {
            let fake = rig.fake.clone();
            async move {
                fake.script().ack = AckMode::Level(level);
                // One flush at the old level's interval (at most 100x base) to learn the new
                // level, then the window.
                sleep(PROGRESS_EVERY * 100 + ms(100)).await;
                let before = fake.flushes();
                sleep(window).await;
                fake.flushes() - before
            }
        };
        let none = count(Backpressure::None).await;
        let batch = count(Backpressure::Batch).await;
        let back = count(Backpressure::None).await;
        let reject = count(Backpressure::Reject).await;
        let again = count(Backpressure::None).await;
        assert!(none >= 20, "base rate: {none} flushes in {window:?}");
        assert!(batch >= 1, "batch still flushes");
        assert!(none >= 10 * batch, "none {none} vs batch {batch}");
        assert!(back * 4 >= none * 3, "back to base: {back} vs {none}");
        assert!(reject <= batch, "reject {reject} vs batch {batch}");
        assert!(
            again * 4 >= none * 3,
            "back to base after reject: {again} vs {none}"
        );
        // Every flush carried the task's latest progress (a probe under reject included).
        {
            let got = rig.fake.got();
            assert!(got.flushes.iter().all(|f| f.worker == WorkerId(1)
                && f.updates.len() == 1
                && f.updates[0].token == FencingToken(10)));
            let seqs: Vec<u64> = got.flushes.iter().map(|f| f.seq).collect();
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs: {seqs:?}");
        }
        assert!(rig.fake.finished().is_empty());
        rig.stop().await;
    });
}

#[test]
fn worker_opens_the_progress_circuit_after_three_malformed_acks_and_re_resolves() {
    let obs = run(|obs| async move {
        let rig = WorkerRig::start(true).await;
        assert_eq!(rig.resolves.load(Ordering::SeqCst), 1);
        rig.fake.script().ack = AckMode::Malformed;
        rig.assign(1, 10, forever()).await;
        until("the circuit opens", Duration::from_secs(2), || {
            obs.counter("cadre_progress_circuit_opens_total", &[]) == 1
        })
        .await;
        let opened = Instant::now();
        assert_eq!(
            obs.counter(
                "cadre_progress_flush_failures_total",
                &[("reason", "malformed_ack")]
            ),
            3
        );
        assert_eq!(rig.fake.flushes(), 3);
        assert_eq!(rig.resolves.load(Ordering::SeqCst), 2, "re-resolved once");
        // Open: nothing is flushed anywhere.
        sleep_until(opened + CIRCUIT_OPEN - ms(100)).await;
        assert_eq!(rig.fake.flushes(), 3);
        assert_eq!(rig.alt.flushes(), 0);
        // Afterwards flushes go to the re-resolved scheduler, which answers properly.
        sleep_until(opened + CIRCUIT_OPEN + ms(500)).await;
        assert_eq!(rig.fake.flushes(), 3);
        assert!(rig.alt.flushes() >= 5, "{}", rig.alt.flushes());
        assert!(
            !rig.alt.got().renews.is_empty(),
            "renewals follow the new link"
        );
        assert_eq!(obs.counter("cadre_progress_circuit_opens_total", &[]), 1);
        assert!(rig.fake.finished().is_empty(), "the task is not affected");
        rig.stop().await;
    });
    let failed = obs.events.with(Level::ERROR, "progress flush failed");
    assert_eq!(failed.len(), 3);
    assert!(failed
        .iter()
        .all(|e| e.get("reason").map(String::as_str) == Some("malformed_ack")));
    assert!(failed[0].get("jobs").is_some_and(|j| j.contains('1')));
    assert_eq!(
        obs.events
            .with(
                Level::ERROR,
                "progress circuit open after repeated failures; scheduler re-resolved"
            )
            .len(),
        1
    );
}

#[test]
fn worker_reopens_the_circuit_at_once_when_its_trial_flush_fails() {
    let obs = run(|obs| async move {
        let rig = WorkerRig::start(true).await;
        rig.fake.script().ack = AckMode::Malformed;
        rig.alt.script().ack = AckMode::Malformed;
        rig.assign(1, 10, forever()).await;
        until("the circuit opens", Duration::from_secs(2), || {
            obs.counter("cadre_progress_circuit_opens_total", &[]) == 1
        })
        .await;
        let opened = Instant::now();
        // After the open period, one trial flush to the re-resolved scheduler fails: the
        // circuit opens again at once, without waiting for three failures.
        sleep_until(opened + CIRCUIT_OPEN + ms(500)).await;
        assert_eq!(rig.alt.flushes(), 1, "one trial flush");
        assert_eq!(obs.counter("cadre_progress_circuit_opens_total", &[]), 2);
        assert_eq!(
            obs.counter(
                "cadre_progress_flush_failures_total",
                &[("reason", "malformed_ack")]
            ),
            4
        );
        rig.stop().await;
    });
    assert_eq!(
        obs.events
            .with(
                Level::ERROR,
                "progress circuit open after repeated failures; scheduler re-resolved"
            )
            .len(),
        2
    );
}
