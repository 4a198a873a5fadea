//! Cgroups for the cpu crate's tests: a parent group unique to one test, swept and removed when
//! dropped, or a SKIP (a failure where `CADRE_REQUIRE_CGROUPS=1`) where cgroups are unavailable.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Deref;
use std::path::PathBuf;

use cadre_cpu::cgroup::{Cgroups, Controller};
use cadre_cpu::CpuError;

/// The parent group of one real test, swept and removed when dropped (on a thread with a
/// runtime of its own, so a failed test still cleans up).
pub struct Parent(Option<Cgroups>);

impl Deref for Parent {
    type Target = Cgroups;
    fn deref(&self) -> &Cgroups {
        self.0.as_ref().unwrap()
    }
}

impl Parent {
    /// Sweeps and removes the parent, asserting both worked.
    pub async fn finish(mut self) {
        let cg = self.0.take().unwrap();
        cg.sweep().await.unwrap();
        let dirs: Vec<PathBuf> = Controller::ALL
            .iter()
            .map(|c| cg.path(*c).to_path_buf())
            .collect();
        cg.remove().await.unwrap();
        for dir in dirs {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Err(e) = cg.sweep().await {
                        eprintln!("cleanup sweep of {}: {e}", cg.parent());
                    }
                    if let Err(e) = cg.remove().await {
                        eprintln!("cleanup remove: {e}");
                    }
                });
            })
            .join();
        }
    }
}

/// Opens a parent group unique to this process and test, or says SKIP (fails where
/// `CADRE_REQUIRE_CGROUPS=1`) when cgroups are unavailable here.
pub fn real(test: &str) -> Option<Parent> {
    let name = format!("cadre-test-{}-{test}", std::process::id());
    match Cgroups::open(&name) {
        Ok(cg) => {
            println!(
                "{test}: cgroup {} at {}",
                cg.version(),
                cg.path(Controller::Memory).display()
            );
            Some(Parent(Some(cg)))
        }
        Err(CpuError::CgroupUnavailable { reason }) => {
            if std::env::var("CADRE_REQUIRE_CGROUPS").as_deref() == Ok("1") {
                panic!("cgroups required (CADRE_REQUIRE_CGROUPS=1) but unavailable: {reason}");
            }
            println!("SKIP: {test}: cgroups are unavailable: {reason}");
            None
        }
        Err(e) => panic!("opening cgroups: {e}"),
    }
}

/// [`real`] where the cgroups are v1 (the only version that keeps spare groups); `None`, with
/// a line saying why, on v2.
pub fn real_v1(test: &str) -> Option<Parent> {
    let parent = real(test)?;
    if parent.version() != cadre_cpu::cgroup::CgroupVersion::V1 {
        println!("{test}: v2 keeps no spares; nothing to check");
        return None;
    }
    Some(parent)
}
