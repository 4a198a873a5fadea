//! Metric names and descriptions of the supervisor crate, in one place.
//!
//! Labels carry child ids (`actor`) and callback names, never per-instance ids, so the number of
//! series stays bounded by the size of the tree.

/// Counter: failures of supervised children, labels `actor` (child id) and `kind`.
pub const ACTOR_FAILURES_TOTAL: &str = "cadre_actor_failures_total";
/// Counter: restarts of supervised children, label `actor` (child id).
pub const ACTOR_RESTARTS_TOTAL: &str = "cadre_actor_restarts_total";
/// Counter: callback events not delivered, labels `callback` and `reason` (`full`, `disabled`).
pub const CALLBACK_EVENTS_DROPPED_TOTAL: &str = "cadre_callback_events_dropped_total";
/// Counter: callback events delivered to a callback's queue, label `callback`.
pub const CALLBACK_EVENTS_TOTAL: &str = "cadre_callback_events_total";

/// Counter: internal messages of the supervision machinery that could not be delivered or were
/// never answered (a task gone earlier than it should), label `what`. Each is also one log event.
pub const SUPERVISOR_INTERNAL_ERRORS_TOTAL: &str = "cadre_supervisor_internal_errors_total";

/// Counts one internal error of kind `what` (the caller logs it).
pub(crate) fn internal_error(what: &'static str) {
    metrics::counter!(SUPERVISOR_INTERNAL_ERRORS_TOTAL, "what" => what).increment(1);
}

/// Registers the descriptions of this crate's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        ACTOR_FAILURES_TOTAL,
        "failures of supervised actors (panic, fatal, start_failed, shutdown_timeout, unresponsive, restart_limit, escalated, disabled, callback_error, overflow)"
    );
    metrics::describe_counter!(ACTOR_RESTARTS_TOTAL, "restarts of supervised actors");
    metrics::describe_counter!(
        CALLBACK_EVENTS_DROPPED_TOTAL,
        "callback events not delivered because the callback's queue was full or the callback is disabled"
    );
    metrics::describe_counter!(CALLBACK_EVENTS_TOTAL, "callback events queued for delivery");
    metrics::describe_counter!(
        SUPERVISOR_INTERNAL_ERRORS_TOTAL,
        "supervision messages that could not be delivered or were never answered"
    );
}
