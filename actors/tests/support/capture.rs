//! Captured tracing events, the one copy every test of this crate uses: `Events` is a
//! `tracing_subscriber` layer that records each event at or above a chosen level as its level
//! and its fields (`message` included) rendered to strings, with lookups by level (`at`), by
//! level and message (`with`) and a draining read (`take`); `subscribed` installs one capturing
//! WARN and above for the calling thread.
//!
//! It depends on `tracing` and `tracing-subscriber` only, so both kinds of test include it: the
//! actor tests through `mod support;` (which re-exports it), the tests of the pure cores through
//! `support/placement.rs` and `support/leases.rs` (which include it with `#[path]`), and a test
//! with nothing else to share with `#[path = "support/capture.rs"] mod capture;`.
//!
//! Fields render as the test wrote them: a `&str` value bare (`op = "renew"` reads `renew`), any
//! other value by its `Debug` (`%x` by its `Display`, as tracing passes it). Every event is kept
//! until the capture is dropped, unless `take` drains it, so long tests capture WARN and above.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event's fields (`message` included) rendered to strings.
pub type FieldMap = BTreeMap<String, String>;

/// The events at `min` and more severe that reached the subscriber this layer is part of, in
/// the order they were emitted. Clones share the events.
#[derive(Clone)]
pub struct Events {
    min: Level,
    seen: Arc<Mutex<Vec<(Level, FieldMap)>>>,
}

impl Default for Events {
    /// Captures every event, TRACE included.
    fn default() -> Events {
        Events::at_least(Level::TRACE)
    }
}

impl Events {
    /// Captures the events at `min` and more severe (`Level::WARN`: warnings and errors).
    pub fn at_least(min: Level) -> Events {
        Events {
            min,
            seen: Arc::default(),
        }
    }

    /// Installs a subscriber made of this layer alone as the calling thread's default, until
    /// the guard is dropped.
    pub fn install(&self) -> DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// The events at exactly `level`, as field maps.
    pub fn at(&self, level: Level) -> Vec<FieldMap> {
        self.matching(|l, _| l == level)
    }

    /// The events at exactly `level` whose message is `message`, as field maps.
    pub fn with(&self, level: Level, message: &str) -> Vec<FieldMap> {
        self.matching(|l, f| l == level && f.get("message").map(String::as_str) == Some(message))
    }

    /// Removes the events at exactly `level` and returns them as field maps: each call sees those
    /// emitted since the previous one. Events at other levels stay.
    pub fn take(&self, level: Level) -> Vec<FieldMap> {
        let mut seen = self.seen.lock().unwrap();
        let (taken, kept) = std::mem::take(&mut *seen)
            .into_iter()
            .partition(|(l, _)| *l == level);
        *seen = kept;
        taken.into_iter().map(|(_, f)| f).collect()
    }

    fn matching(&self, keep: impl Fn(Level, &FieldMap) -> bool) -> Vec<FieldMap> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, f)| keep(*l, f))
            .map(|(_, f)| f.clone())
            .collect()
    }
}

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // Severity grows as `Level` decreases: ERROR < WARN < ... < TRACE.
        let level = *event.metadata().level();
        if level <= self.min {
            let mut fields = FieldMap::new();
            event.record(&mut Fields(&mut fields));
            self.seen.lock().unwrap().push((level, fields));
        }
    }
}

/// Renders an event's fields into a `FieldMap`.
struct Fields<'a>(&'a mut FieldMap);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Captures the calling thread's events at WARN and above until the guard is dropped. Every test
/// of a pure core runs under one, even one that reads no event: tracing caches each callsite's
/// interest process-wide, and a callsite first hit on a thread without a subscriber can be
/// cached as uninteresting, losing another test's events.
pub fn subscribed() -> (Events, DefaultGuard) {
    let events = Events::at_least(Level::WARN);
    let guard = events.install();
    (events, guard)
}
