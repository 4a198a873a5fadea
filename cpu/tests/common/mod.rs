//! Helpers shared by the cpu crate's tests: scratch directories, the list of backends and a
//! launcher on each.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cgroup;
pub mod fake;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cadre_cpu::launcher::Launcher;
use cadre_cpu::{BackendSetting, IoEngine};

/// Whether `pid` is gone or a zombie (this machine's init reaps orphans late).
pub fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// A directory removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("cadre-test-{name}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir.canonicalize().unwrap())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("leaving {}: {e}", self.0.display());
        }
    }
}

/// Both backends. io_uring missing prints SKIP, or fails where CADRE_REQUIRE_URING=1 (CI).
pub fn engines() -> Vec<IoEngine> {
    let mut out = vec![IoEngine::new(BackendSetting::Std).unwrap()];
    match IoEngine::new(BackendSetting::Uring) {
        Ok(e) => out.push(e),
        Err(e) => {
            if std::env::var("CADRE_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring required (CADRE_REQUIRE_URING=1) but unavailable: {e}");
            }
            println!("SKIP io_uring backend: {e}");
        }
    }
    out
}

/// A launcher on each backend, named by it; io_uring prints SKIP where this kernel or sandbox
/// refuses it.
pub fn launchers() -> Vec<(&'static str, Launcher)> {
    engines()
        .into_iter()
        .map(|e| (e.backend().as_str(), Launcher::new(e)))
        .collect()
}
