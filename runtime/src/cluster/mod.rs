//! The cluster: a scheduler accepting agents over TCP ([`server`]), and an agent's link to its
//! scheduler ([`client`]), both speaking `cadre-wire`.
//!
//! Neither side changes the actors: on the scheduler, each agent connection is a
//! [`WorkerLink`](cadre_actors::protocol::WorkerLink) (an actor taking `Assign` and `Kill` and
//! writing them as frames) and turns the agent's requests into the scheduler's own messages;
//! on the agent, the worker's [`SchedulerLink`](cadre_actors::protocol::SchedulerLink) points
//! at the client actor, which turns them into requests and their answers back. Every message
//! about a job carries its lease token across the wire, and the scheduler checks it as for a
//! local worker.

pub mod certs;
pub mod client;
pub mod files;
pub mod link;
pub mod prune;
pub mod server;
pub mod tls;

use std::time::Duration;

use cadre_actors::ids::{FencingToken, WorkerId};
use cadre_actors::job::JobId;
use cadre_actors::Error as ActorsError;
use cadre_wire::{FrameWriter, Refusal, RefusalKind, WireMessage};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

/// Agents connected to this scheduler.
pub const AGENTS_CONNECTED: &str = "cadre_cluster_agents_connected";
/// Cluster connections that ended in an error, by `side` and `kind` (the wire error's kind).
pub const CONNECTION_ERRORS: &str = "cadre_cluster_connection_errors_total";
/// An agent's connections to a scheduler after its first.
pub const RECONNECTS: &str = "cadre_cluster_reconnects_total";
/// How long an agent's requests took to be answered, by `type` (seconds): the round trip
/// through the scheduler.
pub const REQUEST_SECONDS: &str = "cadre_cluster_request_seconds";
/// Requests an agent sent that were not answered (connection lost, timed out), by `type`.
pub const REQUEST_FAILURES: &str = "cadre_cluster_request_failures_total";
/// Assignments an agent refused because their lease had lapsed before they arrived.
pub const LATE_ASSIGNMENTS: &str = "cadre_cluster_late_assignments_total";
/// Frames a side did not expect (an answer to no request, a request it does not serve), by
/// `side` and `type`.
pub const UNEXPECTED_FRAMES: &str = "cadre_cluster_unexpected_frames_total";

/// The scheduler's requests to agents (a task's log) that failed, by `side` (`scheduler`:
/// the agent was not connected, did not answer in time or refused; `agent`: it could not serve
/// it) and `type`.
pub const AGENT_REQUEST_FAILURES: &str = "cadre_cluster_agent_request_failures_total";

/// Describes the cluster's metrics (the wire's too) and creates its counters at zero.
pub fn describe() {
    cadre_wire::metrics::describe();
    metrics::describe_gauge!(AGENTS_CONNECTED, "Agents connected to this scheduler");
    metrics::describe_counter!(
        CONNECTION_ERRORS,
        "Cluster connections ended by an error, by side and kind"
    );
    metrics::describe_counter!(RECONNECTS, "Connections of an agent after its first");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Round trip of an agent's requests to its scheduler, by type"
    );
    metrics::describe_counter!(
        REQUEST_FAILURES,
        "An agent's requests left unanswered, by type"
    );
    metrics::describe_counter!(
        LATE_ASSIGNMENTS,
        "Assignments refused by an agent because their lease lapsed on the way"
    );
    metrics::describe_counter!(
        UNEXPECTED_FRAMES,
        "Frames a side did not expect, by side and type"
    );
    metrics::describe_counter!(
        AGENT_REQUEST_FAILURES,
        "The scheduler's requests to agents that failed, by side and type"
    );
    metrics::counter!(RECONNECTS).increment(0);
    metrics::counter!(LATE_ASSIGNMENTS).increment(0);
}

/// The most messages one write takes from a connection's queue.
const WRITE_BATCH: usize = 512;

/// Writes what `queue` yields until it closes or the connection fails (the error is returned
/// for the caller's one log line). Whatever piled up is sent in one write.
pub(crate) async fn write_loop<W, M>(
    mut writer: FrameWriter<W>,
    mut queue: mpsc::UnboundedReceiver<M>,
) -> Result<(), cadre_wire::WireError>
where
    W: AsyncWrite + Unpin,
    M: WireMessage,
{
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        writer.send_all(&batch).await?;
        batch.clear();
    }
    Ok(())
}

/// Microseconds in `d`, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What a refusal from the scheduler means to the worker that asked: the errors it already
/// acts on (a stale token stops the task, an unknown worker registers again).
pub(crate) fn refusal_error(
    refusal: Refusal,
    worker: WorkerId,
    about: Option<(JobId, FencingToken)>,
) -> ActorsError {
    match (refusal.kind, about) {
        (RefusalKind::StaleToken, Some((job, token))) => ActorsError::StaleToken {
            job,
            worker,
            presented: token,
            current: None,
        },
        (RefusalKind::UnknownWorker, _) => ActorsError::UnknownWorker { worker },
        (RefusalKind::Invalid | RefusalKind::UnknownJob | RefusalKind::StaleToken, _) => {
            ActorsError::Rejected {
                reason: refusal.to_string(),
            }
        }
        _ => ActorsError::Unavailable {
            reason: format!("the scheduler refused: {refusal}"),
        },
    }
}
