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

/// Counter of jobs accepted (durable).
pub const JOBS_SUBMITTED: &str = "cadre_jobs_submitted_total";
/// Counter of jobs that ended for good: `{state}` (succeeded, failed, cancelled, timed_out).
pub const JOBS_FINISHED: &str = "cadre_jobs_finished_total";
/// Counter of attempts lost (worker died, lease expired, killed from outside, node restart):
/// `{reason}`.
pub const JOBS_LOST: &str = "cadre_jobs_lost_total";
/// Gauge of jobs leased or running.
pub const JOBS_RUNNING: &str = "cadre_jobs_running";
/// Counter of requests the scheduler refused: `{op, reason}`.
pub const SCHEDULER_REFUSALS: &str = "cadre_scheduler_refusals_total";
/// Counter of messages to a worker that could not be delivered: `{msg}`.
pub const WORKER_SEND_FAILURES: &str = "cadre_worker_send_failures_total";
/// Gauge of registered workers.
pub const WORKERS: &str = "cadre_workers";
/// Counter of workers declared dead.
pub const WORKER_DEATHS: &str = "cadre_worker_deaths_total";
/// Counter of heartbeats received by the health monitor.
pub const HEARTBEATS: &str = "cadre_heartbeats_total";
/// Counter of tasks a worker killed itself because it could not renew its lease in time.
pub const SELF_FENCES: &str = "cadre_worker_self_fences_total";
/// Counter of task failures inside a worker (spawn errors, wait errors): `{kind}`.
pub const WORKER_ERRORS: &str = "cadre_worker_errors_total";
/// Counter of renewal rounds a worker could not complete.
pub const RENEW_FAILURES: &str = "cadre_worker_renew_failures_total";

/// Gauge of the progress back-pressure level the scheduler last answered (0 none, 1 throttle,
/// 2 batch, 3 reject).
pub const PROGRESS_BACKPRESSURE: &str = "cadre_progress_backpressure_level";
/// Counter of progress flushes the scheduler received.
pub const PROGRESS_FLUSHES: &str = "cadre_progress_flushes_total";
/// Counter of progress updates refused under back-pressure.
pub const PROGRESS_REJECTED: &str = "cadre_progress_rejected_updates_total";
/// Counter of progress flushes a worker could not deliver or got no valid answer to:
/// `{reason}`.
pub const PROGRESS_FLUSH_FAILURES: &str = "cadre_progress_flush_failures_total";
/// Counter of times a worker's progress circuit opened after repeated flush failures.
pub const PROGRESS_CIRCUIT_OPENS: &str = "cadre_progress_circuit_opens_total";
/// Counter of tasks suspected of making no progress within their deadline.
pub const JOBS_SUSPECTED: &str = "cadre_jobs_suspected_total";
/// Counter of attempts stopped and lost because they stalled.
pub const JOBS_STALLED: &str = "cadre_jobs_stalled_total";
/// Counter of GPU health reports applied by the scheduler: `{state}` (`healthy`, `unhealthy`,
/// `unknown_worker`, `refused`).
pub const GPU_HEALTH_CHANGES: &str = "cadre_gpu_health_changes_total";
/// Gauge, 1 while the job store takes writes and 0 while its disk refuses them (submissions
/// are refused meanwhile).
pub const STORE_WRITABLE: &str = "cadre_store_writable";
/// Counter of failed attempts queued again for a retry (the job's `max_retries`): `{state}`
/// (`failed`, `timed_out`).
pub const JOBS_RETRIED: &str = "cadre_jobs_retried_total";
/// Counter of ended jobs removed by the retention policy: `{reason}` (`policy`: their age or
/// the count kept; `disk`: early, the data's disk being too full).
pub const JOBS_PRUNED: &str = "cadre_jobs_pruned_total";
/// Gauge: 1 while the data's disk is fuller than retention allows (ended jobs are pruned early),
/// else 0.
pub const RETENTION_DISK_PRESSURE: &str = "cadre_retention_disk_pressure";
/// Counter of looks at the data's disk (for retention) that failed.
pub const RETENTION_DISK_ERRORS: &str = "cadre_retention_disk_errors_total";
/// Gauge of ended jobs the node keeps (bounded by the retention policy).
pub const JOBS_KEPT_ENDED: &str = "cadre_jobs_kept_ended";
/// Counter of failures cleaning up after pruned jobs (their log files, scratch directories):
/// `{what}`.
pub const PRUNE_CLEANUP_ERRORS: &str = "cadre_prune_cleanup_errors_total";

/// Describes every metric of this crate (help text and unit) to the installed recorder, so
/// an exporter prints `# HELP` for each. Call once at start-up.
pub fn describe() {
    metrics::describe_counter!(
        ILLEGAL_TRANSITIONS,
        "Counter of refused job state transitions: `{from, to}`."
    );
    metrics::describe_counter!(LEASE_GRANTS, "Counter of leases granted.");
    metrics::describe_counter!(
        LEASE_GRANT_REFUSALS,
        "Counter of grants refused because the fencing token counter is exhausted."
    );
    metrics::describe_counter!(
        LEASE_RENEWALS,
        "Counter of leases renewed (one per lease in a batch)."
    );
    metrics::describe_counter!(
        LEASE_EXPIRATIONS,
        "Counter of leases that ran past their deadline unrenewed."
    );
    metrics::describe_counter!(
        LEASE_STALE_TOKENS,
        "Counter of messages refused for a stale or unknown fencing token: `{op}`."
    );
    metrics::describe_counter!(
        LEASE_REVOCATIONS,
        "Counter of leases revoked because their worker was declared dead."
    );
    metrics::describe_gauge!(LEASES_ACTIVE, "Gauge of leases held.");
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Gauge of jobs waiting in the scheduler's queue."
    );
    metrics::describe_histogram!(
        DECISION_SECONDS,
        metrics::Unit::Seconds,
        "Histogram of one scheduling decision's duration in seconds."
    );
    metrics::describe_counter!(
        CAPACITY_REFUSALS,
        "Counter of placements refused by the capacity table (a bug if it ever moves): `{reason}`."
    );
    metrics::describe_histogram!(
        STORE_APPEND_SECONDS,
        metrics::Unit::Seconds,
        "Histogram of the job store's journal append latency in seconds."
    );
    metrics::describe_counter!(
        STORE_APPEND_BYTES,
        "Counter of bytes the job store appended to its journal."
    );
    metrics::describe_counter!(STORE_ERRORS, "Counter of job store failures: `{op}`.");
    metrics::describe_counter!(STORE_RECOVERED_INTERRUPTED, "Counter of jobs requeued or failed at start-up because they were leased or running when the node stopped: `{outcome}`.");
    metrics::describe_counter!(JOBS_SUBMITTED, "Counter of jobs accepted (durable).");
    metrics::describe_counter!(
        JOBS_FINISHED,
        "Counter of jobs that ended for good: `{state}` (succeeded, failed, cancelled, timed_out)."
    );
    metrics::describe_counter!(JOBS_LOST, "Counter of attempts lost (worker died, lease expired, killed from outside, node restart): `{reason}`.");
    metrics::describe_gauge!(JOBS_RUNNING, "Gauge of jobs leased or running.");
    metrics::describe_counter!(
        SCHEDULER_REFUSALS,
        "Counter of requests the scheduler refused: `{op, reason}`."
    );
    metrics::describe_counter!(
        WORKER_SEND_FAILURES,
        "Counter of messages to a worker that could not be delivered: `{msg}`."
    );
    metrics::describe_gauge!(WORKERS, "Gauge of registered workers.");
    metrics::describe_counter!(WORKER_DEATHS, "Counter of workers declared dead.");
    metrics::describe_counter!(
        HEARTBEATS,
        "Counter of heartbeats received by the health monitor."
    );
    metrics::describe_counter!(
        SELF_FENCES,
        "Counter of tasks a worker killed itself because it could not renew its lease in time."
    );
    metrics::describe_counter!(
        WORKER_ERRORS,
        "Counter of task failures inside a worker (spawn errors, wait errors): `{kind}`."
    );
    metrics::describe_counter!(
        RENEW_FAILURES,
        "Counter of renewal rounds a worker could not complete."
    );
    metrics::describe_gauge!(PROGRESS_BACKPRESSURE, "Gauge of the progress back-pressure level the scheduler last answered (0 none, 1 throttle, 2 batch, 3 reject).");
    metrics::describe_counter!(
        PROGRESS_FLUSHES,
        "Counter of progress flushes the scheduler received."
    );
    metrics::describe_counter!(
        PROGRESS_REJECTED,
        "Counter of progress updates refused under back-pressure."
    );
    metrics::describe_counter!(PROGRESS_FLUSH_FAILURES, "Counter of progress flushes a worker could not deliver or got no valid answer to: `{reason}`.");
    metrics::describe_counter!(
        PROGRESS_CIRCUIT_OPENS,
        "Counter of times a worker's progress circuit opened after repeated flush failures."
    );
    metrics::describe_counter!(
        JOBS_SUSPECTED,
        "Counter of tasks suspected of making no progress within their deadline."
    );
    metrics::describe_counter!(
        JOBS_STALLED,
        "Counter of attempts stopped and lost because they stalled."
    );
    metrics::describe_counter!(
        GPU_HEALTH_CHANGES,
        "Counter of GPU health reports applied by the scheduler: `{state}` (`healthy`, `unhealthy`, `unknown_worker`, `refused`)."
    );
    metrics::describe_gauge!(
        STORE_WRITABLE,
        "Gauge, 1 while the job store takes writes and 0 while its disk refuses them (submissions are refused meanwhile)."
    );
    metrics::describe_counter!(
        JOBS_RETRIED,
        "Counter of failed attempts queued again for a retry (the job's `max_retries`): `{state}`."
    );
    metrics::describe_counter!(
        JOBS_PRUNED,
        "Counter of ended jobs removed by the retention policy, by reason (policy, disk)."
    );
    metrics::describe_counter!(
        RETENTION_DISK_ERRORS,
        "Counter of looks at the data's disk (for retention) that failed."
    );
    metrics::describe_gauge!(
        RETENTION_DISK_PRESSURE,
        "1 while the data's disk is fuller than retention allows and ended jobs are pruned early."
    );
    metrics::describe_gauge!(
        JOBS_KEPT_ENDED,
        "Gauge of ended jobs the node keeps (bounded by the retention policy)."
    );
    metrics::describe_counter!(
        PRUNE_CLEANUP_ERRORS,
        "Counter of failures cleaning up after pruned jobs (their log files, scratch directories): `{what}`."
    );
}
