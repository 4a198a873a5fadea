//! Reading metrics a test recorded: a counter summed over the label sets that carry given
//! labels, and a gauge's value, for every test binary of the crate: `harness.rs` uses it as a
//! module of `support`, `placement.rs` and `leases.rs` include it with `#[path]` (as they
//! include `capture.rs`).

use metrics_util::debugging::{DebugValue, Snapshotter};

/// The value of counter `name` summed over the label sets that carry every one of `labels`
/// (all of them when `labels` is empty).
pub fn counter(snap: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == name)
        .filter(|(k, _, _, _)| {
            labels
                .iter()
                .all(|(lk, lv)| k.key().labels().any(|l| l.key() == *lk && l.value() == *lv))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

/// The value of gauge `name` (of whichever label set the snapshot lists first: meant for
/// gauges without labels), if it was set.
pub fn gauge(snap: &Snapshotter, name: &str) -> Option<f64> {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, _, _, _)| k.key().name() == name)
        .and_then(|(_, _, _, v)| match v {
            DebugValue::Gauge(g) => Some(g.0),
            _ => None,
        })
}
