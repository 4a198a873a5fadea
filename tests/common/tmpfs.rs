//! A small tmpfs mounted for one test: a disk that really fills up (`ENOSPC`), unmounted when
//! dropped. Shared by the node tests and, through `#[path]`, by the cpu crate's journal tests.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Where it cannot be done the test prints `SKIP` with the
//! reason; `CADRE_REQUIRE_TMPFS=1` (set by CI) turns that into a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on a new directory named after `name`; `None` (after printing
    /// SKIP, or failing under `CADRE_REQUIRE_TMPFS=1`) where that cannot be done.
    pub fn mount(name: &str, bytes: u64) -> Option<Tmpfs> {
        let path = std::env::temp_dir().join(format!("cadre-tmpfs-{name}-{}", std::process::id()));
        let _ = Command::new("umount").arg(&path).output();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { path }),
            Ok(o) => {
                skip(&format!(
                    "cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                let _ = std::fs::remove_dir(&path);
                None
            }
            Err(e) => {
                skip(&format!("cannot run mount: {e}"));
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the filesystem with the file `name` until a write fails with `ENOSPC`; returns its
    /// path (remove it to give the space back).
    pub fn fill(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0x5au8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Whatever a partial block left, and the last pages the kernel still had.
        while f.write(&block[..1]).is_ok_and(|n| n > 0) {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Prints why a tmpfs test does not run, or fails it under `CADRE_REQUIRE_TMPFS=1`.
pub fn skip(reason: &str) {
    if std::env::var("CADRE_REQUIRE_TMPFS").as_deref() == Ok("1") {
        panic!("a tmpfs is required (CADRE_REQUIRE_TMPFS=1): {reason}");
    }
    println!("SKIP: {reason}");
}
