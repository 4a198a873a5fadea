//! Back-pressure hysteresis (`cadre_actors::backpressure::Hysteresis`): the target level for a
//! load, rising at once, falling one step per calm period, a spike restarting the wait, and no
//! jump from `Reject` straight to `None`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_actors::backpressure::Hysteresis;
use cadre_actors::protocol::Backpressure;
use tokio::time::Instant;

use support::ms;

const CALM: Duration = Hysteresis::CALM;

#[test]
fn hysteresis_targets_follow_the_load_bounds() {
    assert_eq!(Hysteresis::target(0.0), Backpressure::None);
    assert_eq!(Hysteresis::target(0.249), Backpressure::None);
    assert_eq!(Hysteresis::target(0.25), Backpressure::Throttle);
    assert_eq!(Hysteresis::target(0.5), Backpressure::Batch);
    assert_eq!(Hysteresis::target(0.75), Backpressure::Reject);
    assert_eq!(Hysteresis::target(3.0), Backpressure::Reject);
    assert_eq!(Hysteresis::new().level(), Backpressure::None);
}

#[test]
fn hysteresis_rises_at_once_to_the_target_level() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    assert_eq!(h.update(0.3, t0), Backpressure::Throttle);
    assert_eq!(h.update(0.6, t0), Backpressure::Batch);
    assert_eq!(h.level(), Backpressure::Batch);
    // Straight from none to reject, too.
    let mut h = Hysteresis::new();
    assert_eq!(h.update(0.9, t0), Backpressure::Reject);
    // A rise in the middle of a calm period is immediate as well.
    let mut h = Hysteresis::new();
    h.update(0.3, t0);
    assert_eq!(h.update(0.0, t0 + ms(500)), Backpressure::Throttle);
    assert_eq!(h.update(0.8, t0 + ms(600)), Backpressure::Reject);
}

#[test]
fn hysteresis_falls_one_step_per_calm_period() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    h.update(0.8, t0);
    // Low load starts the calm period; the level holds until it has lasted CALM.
    let calm0 = t0 + ms(10);
    assert_eq!(h.update(0.0, calm0), Backpressure::Reject);
    assert_eq!(
        h.update(0.0, calm0 + CALM - ms(1)),
        Backpressure::Reject,
        "fell before CALM"
    );
    assert_eq!(h.update(0.0, calm0 + CALM), Backpressure::Batch);
    // The next step needs a calm period of its own, counted from the next low sample.
    let calm1 = calm0 + CALM;
    assert_eq!(h.update(0.0, calm1), Backpressure::Batch);
    assert_eq!(h.update(0.0, calm1 + CALM - ms(1)), Backpressure::Batch);
    assert_eq!(h.update(0.0, calm1 + CALM), Backpressure::Throttle);
    let calm2 = calm1 + CALM;
    assert_eq!(h.update(0.0, calm2), Backpressure::Throttle);
    assert_eq!(h.update(0.0, calm2 + CALM), Backpressure::None);
    assert_eq!(h.update(0.0, calm2 + CALM * 5), Backpressure::None);
}

#[test]
fn hysteresis_spike_during_calm_restarts_the_wait() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    h.update(0.6, t0);
    assert_eq!(h.update(0.1, t0 + ms(100)), Backpressure::Batch);
    // A load at (or above) the current level during the calm period resets it.
    assert_eq!(h.update(0.55, t0 + ms(700)), Backpressure::Batch);
    // CALM after the first low sample is not enough any more...
    assert_eq!(h.update(0.1, t0 + ms(1100)), Backpressure::Batch);
    assert_eq!(h.update(0.1, t0 + ms(2099)), Backpressure::Batch);
    // ...CALM after the first low sample following the spike is.
    assert_eq!(h.update(0.1, t0 + ms(2100)), Backpressure::Throttle);
}

#[test]
fn hysteresis_never_jumps_from_reject_to_none() {
    let t0 = Instant::now();
    let mut h = Hysteresis::new();
    h.update(1.0, t0);
    h.update(0.0, t0 + ms(1));
    // However long the calm, one sample lowers the level by one step only.
    assert_eq!(
        h.update(0.0, t0 + Duration::from_secs(3600)),
        Backpressure::Batch
    );
    // A load between the bounds still lowers only as far as one step.
    let mut h = Hysteresis::new();
    h.update(1.0, t0);
    h.update(0.3, t0 + ms(1));
    let t1 = t0 + ms(1) + CALM;
    assert_eq!(h.update(0.3, t1), Backpressure::Batch);
    // The next calm period starts with the next low sample.
    assert_eq!(h.update(0.3, t1), Backpressure::Batch);
    assert_eq!(h.update(0.3, t1 + CALM), Backpressure::Throttle);
    // Throttle is the target for 0.3: it stays there.
    assert_eq!(h.update(0.3, t1 + CALM * 10), Backpressure::Throttle);
}
