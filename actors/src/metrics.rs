//! Metric names of `cadre-actors`, in one place so dashboards and tests agree.

/// Counter of refused job state transitions: `{from, to}`.
pub const ILLEGAL_TRANSITIONS: &str = "cadre_job_illegal_transitions_total";

/// Counter of leases granted.
pub const LEASE_GRANTS: &str = "cadre_lease_grants_total";
/// Counter of grants refused because the fencing token counter is exhausted.
pub const LEASE_GRANT_REFUSALS: &str = "cadre_lease_grant_refusals_total";
/// Counter of leases renewed (one per lease in a batch).
pub const LEASE_RENEWALS: &str = "cadre_lease_renewals_total";
/// Counter of leases that ran past their deadline unrenewed.
pub const LEASE_EXPIRATIONS: &str = "cadre_lease_expirations_total";
/// Counter of messages refused for a stale or unknown fencing token: `{op}`.
pub const LEASE_STALE_TOKENS: &str = "cadre_lease_stale_token_rejections_total";
/// Counter of leases revoked because their worker was declared dead.
pub const LEASE_REVOCATIONS: &str = "cadre_lease_revocations_total";
/// Gauge of leases held.
pub const LEASES_ACTIVE: &str = "cadre_leases_active";

/// Gauge of jobs waiting in the scheduler's queue.
pub const QUEUE_DEPTH: &str = "cadre_scheduler_queue_depth";
/// Histogram of one scheduling decision's duration in seconds.
pub const DECISION_SECONDS: &str = "cadre_scheduler_decision_seconds";
/// Counter of placements refused by the capacity table (a bug if it ever moves): `{reason}`.
pub const CAPACITY_REFUSALS: &str = "cadre_scheduler_capacity_refusals_total";

/// Histogram of the job store's journal append latency in seconds.
pub const STORE_APPEND_SECONDS: &str = "cadre_store_append_seconds";
/// Counter of bytes the job store appended to its journal.
pub const STORE_APPEND_BYTES: &str = "cadre_store_append_bytes_total";
/// Counter of job store failures: `{op}`.
pub const STORE_ERRORS: &str = "cadre_store_errors_total";
/// Counter of jobs requeued or failed at start-up because they were leased or running when the
/// node stopped: `{outcome}`.
pub const STORE_RECOVERED_INTERRUPTED: &str = "cadre_store_interrupted_jobs_total";
