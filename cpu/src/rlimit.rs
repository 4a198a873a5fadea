//! The node's own open-files limit. Each running command job holds about a dozen descriptors in
//! the node (two pipes, two log files, a pidfd, its cgroup's control files), and the default soft
//! limit of many systems is 1,024: a node there could not run a hundred jobs at once. At start the
//! node raises its soft limit towards its hard limit, at most to [`MAX_OPEN_FILES`], as Go's
//! runtime raises its own. Go restores the original soft limit in the processes it starts; cadre
//! cannot without giving up `posix_spawn` (a limit set between fork and exec needs a fork of the
//! node, see the launcher), so jobs inherit the raised limit: the cap keeps it at a size that a
//! program closing every descriptor up to its limit, or using `select`, still copes with.

use std::io;

use crate::metrics as m;

/// The highest soft limit the node sets itself: room for about 5,000 jobs at once.
pub const MAX_OPEN_FILES: u64 = 65_536;

/// The open-files limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now (the same where nothing was raised).
    pub after: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, at most [`MAX_OPEN_FILES`]
/// (never lowers it), and says so in one line: info where it was raised, debug where it was
/// high enough, a warning (counted in [`m::INVENTORY_ERRORS`], kind `rlimit`) where it failed.
pub fn raise_open_files_logged() {
    match raise_open_files() {
        Ok(limit) if limit.after > limit.before => {
            tracing::info!(
                before = limit.before,
                after = limit.after,
                hard = limit.hard,
                "raised the open-files limit"
            );
        }
        Ok(limit) => {
            tracing::debug!(
                limit = limit.after,
                hard = limit.hard,
                "open-files limit kept"
            );
        }
        Err(error) => {
            tracing::warn!(%error,
                "cannot raise the open-files limit; the node runs fewer jobs at once than it could");
            metrics::counter!(m::INVENTORY_ERRORS, "kind" => "rlimit").increment(1);
        }
    }
}

/// [`raise_open_files_logged`] without the log line: the limits before and after.
#[allow(unsafe_code)]
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes into the struct we own, for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (before, hard) = (limit.rlim_cur, limit.rlim_max);
    let target = hard.min(MAX_OPEN_FILES);
    if before >= target {
        return Ok(OpenFiles {
            before,
            after: before,
            hard,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // Safety: setrlimit reads the struct we pass, which lives for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OpenFiles {
        before,
        after: target,
        hard,
    })
}
