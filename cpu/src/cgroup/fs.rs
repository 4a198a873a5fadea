//! File helpers on cgroupfs and the errors of this module, each failure logged once and counted
//! in [`m::CGROUP_ERRORS`] where it is made.
//!
//! Invariants: a control file is written whole in one `write` to a file that must exist (never
//! created); a file is read only up to a bound given by the caller; `rmdir` retries only `EBUSY`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{MAX_NAME_BYTES, POLL};
use crate::error::{CpuError, Result};
use crate::metrics as m;

/// Polls of `rmdir` while the kernel still counts exiting tasks (`EBUSY`).
const RMDIR_POLLS: u32 = 200;

/// Enables `controllers` in `dir/cgroup.subtree_control` (v2). `EBUSY` is v2's rule that a
/// group with processes cannot hand controllers to children; that and a refusal for want of
/// privileges make cgroups unavailable.
pub(super) fn enable_controllers(group: &str, dir: &Path, controllers: &[&str]) -> Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let value: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    match write_file(&path, &value.join(" ")) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(unavailable(format!(
            "enabling {} in {}: {e}: the node's own cgroup holds processes, so v2 cannot give \
             controllers to groups below it; run the node in a leaf of a delegated cgroup \
             (systemd Delegate=yes)",
            controllers.join(", "),
            path.display()
        ))),
        Err(e) if denied(&e) => Err(unavailable(format!(
            "enabling {} in {}: {e} (cgroups need root or a delegated cgroup)",
            controllers.join(", "),
            path.display()
        ))),
        Err(e) => Err(fail("write", group, &path, e)),
    }
}

/// The error of a failed `mkdir`: cgroups unavailable when it was refused for privileges.
pub(super) fn mkdir_error(group: &str, dir: &Path, e: io::Error) -> CpuError {
    if denied(&e) {
        unavailable(format!(
            "creating {}: {e} (cgroups need root or a delegated cgroup)",
            dir.display()
        ))
    } else {
        fail("mkdir", group, dir, e)
    }
}

/// Removes directories made by a [`super::Cgroups::create`] that failed; a failure is logged only.
pub(super) fn undo_mkdir(group: &str, made: &[PathBuf]) {
    for dir in made {
        if let Err(e) = fs::remove_dir(dir) {
            fail("rmdir", group, dir, e);
        }
    }
}

/// `rmdir dir`, retried while the kernel answers `EBUSY` (tasks still exiting); gone is done.
pub(super) async fn rmdir(group: &str, dir: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..RMDIR_POLLS {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(fail("rmdir", group, dir, e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY));
    Err(fail("rmdir", group, dir, e))
}

/// Whether `e` is a refusal for privileges or a read-only filesystem.
pub(super) fn denied(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// Writes `value` to the control file `path`, as a failure of `group` when refused.
pub(super) fn write_ctl(group: &str, path: &Path, value: &str) -> Result<()> {
    write_file(path, value).map_err(|e| fail("write", group, path, e))
}

/// Writes `value` to an existing file in one `write` (cgroupfs takes a control value whole).
pub(super) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(value.as_bytes())
}

/// Reads a small text file whole, refusing one longer than `max` bytes.
pub(super) fn read_small(path: &Path, max: u64) -> io::Result<String> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The value of the line `<key> <n>` in a flat-keyed file (`memory.events`, `oom_control`).
pub(super) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key)).then(|| parts.next()?.parse().ok())?
    })
}

/// Checks a group name: one path component, not `.` or `..`, 1 to [`MAX_NAME_BYTES`] bytes,
/// no NUL or newline.
pub(super) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty".to_string()
    } else if name.len() > MAX_NAME_BYTES {
        format!("is {} bytes, more than {MAX_NAME_BYTES}", name.len())
    } else if name == "." || name == ".." {
        "is not a name".to_string()
    } else if name.contains(['/', '\0', '\n']) {
        "holds '/', a NUL or a newline".to_string()
    } else {
        return Ok(());
    };
    Err(invalid(name, format!("{name:?} {reason}")))
}

/// An invalid group name, logged and counted.
pub(super) fn invalid(group: &str, reason: String) -> CpuError {
    tracing::warn!(cgroup = %group, reason = %reason, "invalid cgroup name");
    metrics::counter!(m::CGROUP_ERRORS, "op" => "name").increment(1);
    CpuError::Invalid {
        field: "cgroup name",
        reason,
    }
}

/// Cgroups cannot be used here. Logged at info: the caller says so once, as a warning, and
/// falls back to process groups.
pub(super) fn unavailable(reason: String) -> CpuError {
    tracing::info!(reason = %reason, "cgroups are unavailable");
    metrics::counter!(m::CGROUP_ERRORS, "op" => "open").increment(1);
    CpuError::CgroupUnavailable { reason }
}

/// A failed operation on `path` of `group`, logged and counted.
pub(super) fn fail(op: &'static str, group: &str, path: &Path, source: io::Error) -> CpuError {
    tracing::warn!(cgroup = %group, op, path = %path.display(), error = %source,
        "cgroup operation failed");
    metrics::counter!(m::CGROUP_ERRORS, "op" => op).increment(1);
    CpuError::Cgroup {
        op,
        path: path.to_path_buf(),
        source,
    }
}
