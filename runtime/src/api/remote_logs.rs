//! The logs of a task on an agent, read over its cluster connection one bounded chunk per
//! request (`ReadLog`), each asking from where the last answer said the next read starts:
//! the last `tail` bytes, or followed as they grow until the job ends.
//!
//! A first read that fails (the agent is not connected, does not answer in time, or refuses)
//! is the response's status (503 while it is not connected, 502 otherwise); a failure after
//! bytes went out ends the body with a marker line saying why, as a local read failure does.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use cadre_wire::{AgentAnswer, AgentRequest};

use super::logs::{job_ended, read_failed, text, Where};
use super::{fail, ApiState};
use crate::error::Error;

/// The most log bytes one request asks an agent for (less where the frame limit is lower).
const CHUNK: u32 = 1 << 20;

/// How often a follower of a running task asks its agent again when nothing new was there.
const POLL: Duration = Duration::from_millis(250);

fn request(state: &ApiState, at: &Where, offset: u64, tail: Option<u64>) -> AgentRequest {
    AgentRequest::ReadLog {
        job: at.job,
        task: at.task,
        stream: at.stream,
        offset,
        tail,
        max_bytes: CHUNK.min(state.agents.max_log_chunk()),
    }
}

async fn ask(
    state: &ApiState,
    node: &str,
    request: AgentRequest,
) -> Result<(Vec<u8>, u64, u64), Error> {
    match state.agents.ask(node, request, state.agent_timeout).await? {
        AgentAnswer::Log { bytes, next, end } => Ok((bytes, next, end)),
    }
}

/// The last `tail` bytes of the task's log on `node`, streamed a chunk at a time.
pub(super) async fn tail(state: Arc<ApiState>, node: String, at: Where, tail: u64) -> HttpResponse {
    const ROUTE: &str = "logs";
    let (first, next, end) = match ask(&state, &node, request(&state, &at, 0, Some(tail))).await {
        Ok(read) => read,
        Err(error) => {
            let (status, reason) = match error {
                Error::Agent {
                    connected: false,
                    reason,
                    ..
                } => (StatusCode::SERVICE_UNAVAILABLE, reason),
                Error::Agent { reason, .. } => (StatusCode::BAD_GATEWAY, reason),
                other => (StatusCode::BAD_GATEWAY, other.to_string()),
            };
            return fail(
                status,
                ROUTE,
                "agent unavailable",
                None,
                format!(
                    "the log of job {} task {} is on agent {node}: {reason}",
                    at.job, at.task
                ),
            );
        }
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
