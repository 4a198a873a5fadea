//! How full a filesystem is (`statvfs`), for messages that say why a write was refused, and the
//! errors that mean a disk takes no more writes (`ENOSPC`, `EDQUOT`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Free and total bytes of the filesystem a path is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    /// The filesystem's size (`f_blocks * f_frsize`).
    pub total_bytes: u64,
    /// Bytes in use (`(f_blocks - f_bfree) * f_frsize`): neither free nor reserved for root.
    pub used_bytes: u64,
}

impl DiskSpace {
    /// The share of the space writers can have that is in use, in percent, as `df` shows it:
    /// used / (used + free), so that blocks reserved for root count as neither.
    pub fn used_percent(&self) -> f64 {
        let usable = self.used_bytes.saturating_add(self.free_bytes);
        if usable == 0 {
            return 100.0;
        }
        self.used_bytes as f64 * 100.0 / usable as f64
    }
}

impl std::fmt::Display for DiskSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} free of {}",
            human_bytes(self.free_bytes),
            human_bytes(self.total_bytes)
        )
    }
}

/// The space of the filesystem holding `path`.
#[allow(unsafe_code)]
pub fn space(path: &Path) -> io::Result<DiskSpace> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // Safety: statvfs is a plain C struct of integers, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // Safety: `c` is a NUL-terminated string that outlives the call, and `st` is a valid,
    // writable statvfs the kernel fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize;
    Ok(DiskSpace {
        free_bytes: st.f_bavail.saturating_mul(frsize),
        total_bytes: st.f_blocks.saturating_mul(frsize),
        used_bytes: st
            .f_blocks
            .saturating_sub(st.f_bfree)
            .saturating_mul(frsize),
    })
}

/// Whether the error means the filesystem (or the user's quota) is full.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// `n` bytes for people: `512 B`, `3.0 KiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_read_for_people_and_a_real_filesystem_has_space() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        let s = space(Path::new("/")).unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes);
        assert!(s.used_bytes <= s.total_bytes);
        // As df: root's reserve counts as neither used nor free.
        let reserved = DiskSpace {
            free_bytes: 40,
            total_bytes: 100,
            used_bytes: 40,
        };
        assert_eq!(reserved.used_percent(), 50.0);
        assert!(space(Path::new("/no/such/dir")).is_err());
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
