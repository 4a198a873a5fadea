//! How a supervisor reaches one child: the commands (start, stop, kill, close) go to a worker's
//! cell or to a nested supervisor's task, and a child whose task is gone is logged and counted
//! here, since it cannot report itself.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::SupMsg;
use crate::cell::{CellShared, Cmd};

/// How the supervisor reaches a child.
pub(super) enum Runtime {
    Worker(Arc<CellShared>),
    Supervisor(mpsc::UnboundedSender<SupMsg>),
}

impl Runtime {
    /// Hands `cmd` to the child; false when its task is gone.
    fn send(&self, cmd: Cmd) -> bool {
        match self {
            Runtime::Worker(cell) => {
                cell.push(cmd);
                true
            }
            Runtime::Supervisor(tx) => tx.send(SupMsg::Control(cmd)).is_ok(),
        }
    }

    /// Starts a fresh instance. A start failure is reported by the child that saw it; a child
    /// whose task is gone cannot, so that case is logged and counted here.
    pub(super) async fn start(
        &self,
        path: &str,
        generation: u64,
        restart_count: u64,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Cmd::Start {
            generation,
            restart_count,
            reply,
        });
        let lost = if !sent {
            "child task is gone"
        } else {
            match rx.await {
                Ok(result) => return result,
                Err(_) => "child task ended without answering a start",
            }
        };
        tracing::error!(actor_path = path, reason = lost, "child cannot start");
        crate::metrics::internal_error("start_lost");
        Err(lost.to_owned())
    }

    /// Sends a stop or kill and waits for the child to answer.
    async fn ask(
        &self,
        path: &str,
        what: &'static str,
        make: impl FnOnce(oneshot::Sender<()>) -> Cmd,
    ) {
        let (reply, rx) = oneshot::channel();
        if !self.send(make(reply)) {
            tracing::warn!(
                actor_path = path,
                command = what,
                "command not delivered: the child task is gone"
            );
            crate::metrics::internal_error("command_lost");
            return;
        }
        if rx.await.is_err() {
            tracing::warn!(
                actor_path = path,
                command = what,
                "child task ended without answering"
            );
            crate::metrics::internal_error("no_answer");
        }
    }

    pub(super) async fn stop(&self, path: &str) {
        self.ask(path, "stop", |reply| Cmd::Stop { reply }).await;
    }

    pub(super) async fn kill(&self, path: &str) {
        self.ask(path, "kill", |reply| Cmd::Kill { reply }).await;
    }

    pub(super) fn close(&self, path: &str) {
        if !self.send(Cmd::Close) {
            tracing::debug!(
                actor_path = path,
                "close not delivered: the child task already ended"
            );
        }
    }
}
