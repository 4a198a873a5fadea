//! Ordered start and reverse-ordered stop: starting every child in order (stopping those
//! started when one fails), one child's shutdown per its spec (brutal, timeout then kill, or
//! infinity; a timeout is reported here), killing and closing them all.

use tokio::time::Instant;

use super::Supervisor;
use crate::failure::{report, Failure, FailureKind};
use crate::metrics::ACTOR_RESTARTS_TOTAL;
use crate::spec::{Restart, Shutdown};

impl Supervisor {
    pub(super) async fn start_all(
        &mut self,
        generation: u64,
        restart_count: u64,
    ) -> Result<(), String> {
        self.generation = generation;
        self.restart_count = restart_count;
        self.window.clear();
        let keys: Vec<u64> = self.children.keys().copied().collect();
        let is_restart = restart_count > 0;
        for key in keys {
            if let Err(reason) = self.start_instance(key, is_restart).await {
                let id = self
                    .children
                    .get(&key)
                    .map_or_else(String::new, |c| c.id.to_string());
                self.stop_all().await;
                return Err(format!("child {id:?} failed to start: {reason}"));
            }
        }
        self.running = true;
        Ok(())
    }

    pub(super) async fn start_instance(
        &mut self,
        key: u64,
        is_restart: bool,
    ) -> Result<(), String> {
        let Some(child) = self.children.get_mut(&key) else {
            return Ok(());
        };
        if child.running {
            return Ok(());
        }
        child.pending = 0;
        child.generation += 1;
        if is_restart {
            child.restarts += 1;
            metrics::counter!(ACTOR_RESTARTS_TOTAL, "actor" => child.info.label.to_string())
                .increment(1);
            tracing::info!(actor_path = %child.info.path, restart_count = child.restarts, "restarting child");
        }
        let result = child
            .runtime
            .start(&child.info.path, child.generation, child.restarts)
            .await;
        if result.is_ok() {
            child.running = true;
            child.started_at = Instant::now();
        }
        result
    }

    async fn shutdown_child(&mut self, key: u64) {
        let Some(child) = self.children.get_mut(&key) else {
            return;
        };
        child.pending = 0;
        if !child.running {
            return;
        }
        child.running = false;
        let path = child.info.path.as_str();
        match child.shutdown {
            Shutdown::Brutal => child.runtime.kill(path).await,
            Shutdown::Infinity => child.runtime.stop(path).await,
            Shutdown::Timeout(limit) => {
                if tokio::time::timeout(limit, child.runtime.stop(path))
                    .await
                    .is_err()
                {
                    report(
                        &self.journal,
                        Failure {
                            path,
                            actor: &child.info.label,
                            kind: FailureKind::ShutdownTimeout,
                            message: &format!("did not stop within {limit:?}; killed"),
                            restart_count: child.restarts,
                            context: None,
                        },
                    );
                    child.runtime.kill(path).await;
                }
            }
        }
    }

    /// Stops `keys` in the given order and removes the temporary ones.
    pub(super) async fn stop_keys(&mut self, keys: Vec<u64>) {
        for key in keys {
            self.shutdown_child(key).await;
            if self
                .children
                .get(&key)
                .is_some_and(|c| c.restart == Restart::Temporary)
            {
                self.remove(key);
            }
        }
    }

    pub(super) async fn stop_all(&mut self) {
        let keys: Vec<u64> = self.children.keys().rev().copied().collect();
        self.stop_keys(keys).await;
        self.running = false;
    }

    pub(super) async fn kill_all(&mut self) {
        let keys: Vec<u64> = self.children.keys().rev().copied().collect();
        for key in keys {
            if let Some(child) = self.children.get_mut(&key) {
                child.pending = 0;
                if child.running {
                    child.running = false;
                    child.runtime.kill(&child.info.path).await;
                }
            }
        }
        self.running = false;
    }

    pub(super) fn close_all(&mut self) {
        for (_, child) in std::mem::take(&mut self.children).into_iter().rev() {
            child.runtime.close(&child.info.path);
        }
        self.ids.clear();
        self.running = false;
    }
}
