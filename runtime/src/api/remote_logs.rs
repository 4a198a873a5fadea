//! The logs of a task on an agent, read over its cluster connection one bounded chunk per
//! request (`ReadLog`), each asking from where the last answer said the next read starts:
//! the last `tail` bytes, or followed as they grow until the job ends.
//!
//! A first read that fails (the agent is not connected, does not answer in time, or refuses)
//! is the response's status (503 while it is not connected or too many reads are in flight,
//! 504 when it did not answer in time, 502 otherwise); a failure after bytes went out ends the
//! body with a marker line saying why, as a local read failure does.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use cadre_wire::{AgentAnswer, AgentRequest};

use super::logs::{job_ended, read_failed, text, Where};
use super::{fail, ApiState};
use crate::error::{AgentFailure, Error};

/// The most log bytes one request asks an agent for (less where the frame limit is lower):
/// with at most `ASKS_IN_FLIGHT` reads in flight, a few MiB are ever on their way.
const CHUNK: u32 = 256 << 10;

/// How often a follower of a running task asks its agent again when nothing new was there.
const POLL: Duration = Duration::from_millis(250);

fn request(state: &ApiState, at: &Where, offset: u64, tail: Option<u64>) -> AgentRequest {
    AgentRequest::ReadLog {
        job: at.job,
        task: at.task,
        stream: at.stream,
        offset,
        tail,
        max_bytes: CHUNK.min(state.agents.frame_room()),
    }
}

async fn ask(
    state: &ApiState,
    node: &str,
    request: AgentRequest,
) -> Result<(Vec<u8>, u64, u64), Error> {
    match state.agents.ask(node, request, state.agent_timeout).await? {
        AgentAnswer::Log { bytes, next, end } => Ok((bytes, next, end)),
        other => {
            tracing::warn!(node, answer = ?other, "an agent answered a log read with something else");
            metrics::counter!(crate::cluster::AGENT_REQUEST_FAILURES,
                "side" => "scheduler", "type" => "read_log")
            .increment(1);
            Err(Error::Agent {
                node: node.to_owned(),
                failure: AgentFailure::Refused,
                reason: "it answered a log read with something else".to_owned(),
            })
        }
    }
}

/// The response to a first read that failed.
fn refused(at: &Where, node: &str, error: Error) -> HttpResponse {
    let (status, reason) = match error {
        Error::Agent {
            failure, reason, ..
        } => (
            match failure {
                AgentFailure::NotConnected | AgentFailure::Busy => StatusCode::SERVICE_UNAVAILABLE,
                AgentFailure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                AgentFailure::Refused => StatusCode::BAD_GATEWAY,
            },
            reason,
        ),
        other => (StatusCode::BAD_GATEWAY, other.to_string()),
    };
    fail(
        status,
        "logs",
        "agent unavailable",
        None,
        format!(
            "the log of job {} task {} is on agent {node}: {reason}",
            at.job, at.task
        ),
    )
}

/// The last `tail` bytes of the task's log on `node`, streamed a chunk at a time.
pub(super) async fn tail(state: Arc<ApiState>, node: String, at: Where, tail: u64) -> HttpResponse {
    let (first, next, end) = match ask(&state, &node, request(&state, &at, 0, Some(tail))).await {
        Ok(read) => read,
        Err(error) => return refused(&at, &node, error),
    };
    // The range is the log as the first answer found it: later growth is for `--follow`.
    let start = (!first.is_empty() && next < end).then_some(next);
    let rest = futures_util::stream::unfold(start, move |offset| {
        let state = Arc::clone(&state);
        let node = node.clone();
        let at = at.clone();
        async move {
            let offset = offset?;
            match ask(&state, &node, request(&state, &at, offset, None)).await {
                Ok((bytes, _, _)) if bytes.is_empty() => None,
                Ok((bytes, next, _)) => {
                    Some((Ok(web::Bytes::from(bytes)), (next < end).then_some(next)))
                }
                Err(error) => Some((Ok(read_failed(error)), None)),
            }
        }
    });
    let first = futures_util::stream::once(async move { Ok(web::Bytes::from(first)) });
    text(futures_util::StreamExt::chain(first, rest))
}

/// The task's log on `node` followed from its start until the job ends; a first read that
/// fails is the response's status.
pub(super) async fn follow(state: Arc<ApiState>, node: String, at: Where) -> HttpResponse {
    let (first, next, _) = match ask(&state, &node, request(&state, &at, 0, None)).await {
        Ok(read) => read,
        Err(error) => return refused(&at, &node, error),
    };
    let mut rest = Following::new(node, at);
    rest.offset = next;
    let rest = futures_util::stream::unfold(Some(rest), move |following| {
        let state = Arc::clone(&state);
        async move {
            following?
                .next_chunk(&state)
                .await
                .map(|(chunk, next)| (Ok(chunk), next))
        }
    });
    let first = futures_util::stream::once(async move { Ok(web::Bytes::from(first)) });
    text(futures_util::StreamExt::chain(first, rest))
}

/// A follow of a task's log on an agent (see the module comment).
pub(super) struct Following {
    node: String,
    at: Where,
    offset: u64,
    /// The job was seen ended before the last read: once a read finds nothing, all was read.
    ended: bool,
}

impl Following {
    /// A follow of `at` on `node` from its start.
    pub(super) fn new(node: String, at: Where) -> Following {
        Following {
            node,
            at,
            offset: 0,
            ended: false,
        }
    }

    /// The next bytes, waiting for them while the job runs, and the follow to go on with;
    /// `None` once the job has ended and everything was read. A failed read ends the follow
    /// with a marker saying why.
    pub(super) async fn next_chunk(
        mut self,
        state: &ApiState,
    ) -> Option<(web::Bytes, Option<Following>)> {
        loop {
            let asked = request(state, &self.at, self.offset, None);
            match ask(state, &self.node, asked).await {
                Ok((bytes, next, _)) => {
                    self.offset = next;
                    if !bytes.is_empty() {
                        return Some((web::Bytes::from(bytes), Some(self)));
                    }
                }
                Err(error) => return Some((read_failed(error), None)),
            }
            if self.ended {
                return None;
            }
            // Nothing new: read once more after the job is seen ended (its agent wrote the
            // last bytes before it reported the end), else wait and ask again.
            self.ended = job_ended(state, self.at.job).await;
            if !self.ended {
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
