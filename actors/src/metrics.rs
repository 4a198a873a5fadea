//! Metric names of `cadre-actors`, in one place so dashboards and tests agree.

/// Counter of refused job state transitions: `{from, to}`.
pub const ILLEGAL_TRANSITIONS: &str = "cadre_job_illegal_transitions_total";
