//! Metric names of `cadre-cpu`, in one place so dashboards and tests agree.

/// Gauge, 1 for the backend the I/O engine runs on and 0 for the other: `{backend}`.
pub const IO_BACKEND_INFO: &str = "cadre_io_backend_info";
/// Counter of failed I/O requests and ring faults: `{op}`.
pub const IO_ERRORS: &str = "cadre_io_errors_total";
/// Counter of records made durable by the journal.
pub const JOURNAL_APPENDS: &str = "cadre_journal_appends_total";
/// Counter of group commits (one write and one fdatasync each).
pub const JOURNAL_COMMITS: &str = "cadre_journal_commits_total";
/// Counter of journal failures: `{kind}` (`io`, `torn_tail`, `corrupt`, ...).
pub const JOURNAL_ERRORS: &str = "cadre_journal_errors_total";
/// Counter of launcher failures: `{kind}` (`spawn`, `signal`, `capture`, `wait`, `ledger`,
/// `ledger_line`: a garbled line of the process ledger, `clock`: the boot clock unreadable,
/// `boot_id`: the boot id unreadable).
pub const LAUNCHER_ERRORS: &str = "cadre_launcher_errors_total";
/// Counter of processes the launcher has spawned.
pub const LAUNCHER_SPAWNS: &str = "cadre_launcher_spawns_total";
/// Counter of inventory failures: `{kind}` (`io`, `inventory`, `no_numa`, `rlimit`: the node's
/// open-files limit could not be raised).
pub const INVENTORY_ERRORS: &str = "cadre_inventory_errors_total";
/// Counter of cgroup failures: `{op}` (`open`, `name`, `mkdir`, `read`, `write`, `create`,
/// `kill`, `freeze`, `thaw`, `remove`, `rmdir`, `leave`, `hold`).
pub const CGROUP_ERRORS: &str = "cadre_cgroup_errors_total";
/// Counter of task cgroups a previous node left behind, killed and removed by the sweep.
pub const CGROUP_SWEPT: &str = "cadre_cgroup_swept_total";
/// Counter of task cgroups taken from the spares instead of created.
pub const CGROUP_REUSED: &str = "cadre_cgroup_reused_total";

/// Describes every metric of this crate (help text and unit) to the installed recorder, so
/// an exporter prints `# HELP` for each. Call once at start-up.
pub fn describe() {
    metrics::describe_gauge!(
        IO_BACKEND_INFO,
        "Gauge, 1 for the backend the I/O engine runs on and 0 for the other: `{backend}`."
    );
    metrics::describe_counter!(
        IO_ERRORS,
        "Counter of failed I/O requests and ring faults: `{op}`."
    );
    metrics::describe_counter!(
        JOURNAL_APPENDS,
        "Counter of records made durable by the journal."
    );
    metrics::describe_counter!(
        JOURNAL_COMMITS,
        "Counter of group commits (one write and one fdatasync each)."
    );
    metrics::describe_counter!(
        JOURNAL_ERRORS,
        "Counter of journal failures: `{kind}` (`io`, `torn_tail`, `corrupt`, ...)."
    );
    metrics::describe_counter!(
        LAUNCHER_ERRORS,
        "Counter of launcher failures: `{kind}` (`spawn`, `signal`, `capture`, `wait`)."
    );
    metrics::describe_counter!(
        LAUNCHER_SPAWNS,
        "Counter of processes the launcher has spawned."
    );
    metrics::describe_counter!(
        INVENTORY_ERRORS,
        "Counter of inventory failures: `{kind}` (`io`, `inventory`, `no_numa`)."
    );
    metrics::describe_counter!(
        CGROUP_ERRORS,
        concat!(
            "Counter of cgroup failures: `{op}` (`open`, `name`, `mkdir`, `read`, `write`, ",
            "`create`, `kill`, `freeze`, `thaw`, `remove`, `rmdir`, `rename`, `leave`)."
        )
    );
    metrics::describe_counter!(
        CGROUP_SWEPT,
        "Counter of task cgroups a previous node left behind, killed and removed by the sweep."
    );
    metrics::describe_counter!(
        CGROUP_REUSED,
        "Counter of task cgroups taken from the spares (emptied groups of earlier tasks) instead of created."
    );
}
