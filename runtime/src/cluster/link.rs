//! An agent's link, on the scheduler: the `AgentLink` actor is the worker's
//! [`WorkerLink`](cadre_actors::protocol::WorkerLink) for one connection (`Assign` and `Kill`
//! become frames) and carries the scheduler's own requests to the agent (a task's log, the
//! removal of pruned jobs' files), matching answers to them by id; [`Agents`] finds the link
//! of a node for the API and the janitor, and bounds the log reads in flight.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::protocol::{Assign, Kill};
use cadre_wire::{AgentAnswer, AgentRequest, Refusal, ToWorker};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::server::Registry;
use super::{micros, AGENT_REQUEST_FAILURES, UNEXPECTED_FRAMES};
use crate::error::{AgentFailure, Error};

/// The agents connected to this scheduler, by node name: what the API asks of them (a task's
/// log). Cheap to clone; it knows no agent until [`super::server::listen`] is given it.
#[derive(Clone)]
pub struct Agents {
    pub(super) registry: Arc<Registry>,
    /// The largest frame the connections read: an answer must fit in one.
    max_frame: u32,
    /// Requests to agents in flight, at most [`ASKS_IN_FLIGHT`]: their answers (a log chunk
    /// each) share the connections with renewals, and must not crowd them out.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The most log reads from agents in flight at once, over all agents.
pub const ASKS_IN_FLIGHT: usize = 32;

/// The room a log answer's framing takes besides its bytes (MessagePack of the answer, its
/// id and offsets: well under this).
const ANSWER_OVERHEAD: u32 = 4096;

impl Agents {
    /// A handle with no agent connected yet; `max_frame` is the frame limit of the cluster
    /// port ([`cadre_wire::HandshakeConfig::max_frame`]).
    pub fn new(max_frame: u32) -> Agents {
        Agents {
            registry: Arc::new(Registry::new()),
            max_frame,
            in_flight: Arc::new(tokio::sync::Semaphore::new(ASKS_IN_FLIGHT)),
        }
    }

    /// The most payload bytes (log bytes in an answer, kept ranges in a sweep) one frame of
    /// the cluster port holds, its framing aside.
    pub fn frame_room(&self) -> u32 {
        self.max_frame.saturating_sub(ANSWER_OVERHEAD).max(1)
    }

    /// Asks the agent of `node` and waits up to `timeout` for its answer. Fails with
    /// [`Error::Agent`] when no agent of that name is connected, the connection ends first, the
    /// answer is late, or the agent refuses.
    pub async fn ask(
        &self,
        node: &str,
        request: AgentRequest,
        timeout: Duration,
    ) -> Result<AgentAnswer, Error> {
        let kind = request.kind();
        let failed = |failure: AgentFailure, reason: String| {
            tracing::warn!(node, kind, ?failure, %reason, "a request to an agent failed");
            metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "scheduler", "type" => kind)
                .increment(1);
            Error::Agent {
                node: node.to_owned(),
                failure,
                reason,
            }
        };
        let link = self
            .registry
            .lock()
            .iter()
            .find(|(identity, _)| identity.node == node)
            .map(|(_, live)| live.link.clone());
        let Some(link) = link else {
            return Err(failed(
                AgentFailure::NotConnected,
                "not connected".to_owned(),
            ));
        };
        // A log read holds a permit until its answer (or its timeout), so a bounded number of
        // log chunks is ever on its way; removals answer a few numbers and need none.
        let _permit = if matches!(request, AgentRequest::ReadLog { .. }) {
            match self.in_flight.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    tracing::debug!(
                        node,
                        kind,
                        limit = ASKS_IN_FLIGHT,
                        "a log read refused: too many in flight"
                    );
                    metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "scheduler", "type" => kind)
                        .increment(1);
                    return Err(Error::Agent {
                        node: node.to_owned(),
                        failure: AgentFailure::Busy,
                        reason: format!(
                            "{ASKS_IN_FLIGHT} log reads are in flight already; try again"
                        ),
                    });
                }
            }
        } else {
            None
        };
        let answer = match link.send(Ask(request)).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(failed(
                    AgentFailure::NotConnected,
                    "not connected (its connection closed)".to_owned(),
                ))
            }
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(refusal))) => Err(failed(
                AgentFailure::Refused,
                format!(
                    "it refused ({}): {}",
                    refusal.kind.as_str(),
                    refusal.message
                ),
            )),
            Ok(Err(_)) => Err(failed(
                AgentFailure::NotConnected,
                "not connected (its connection closed before it answered)".to_owned(),
            )),
            Err(_) => Err(failed(
                AgentFailure::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            )),
        }
    }
}

/// The worker's link for one agent: `Assign` and `Kill` from the scheduler become frames, as
/// do the API's requests ([`Ask`]), whose answers it hands back by id.
pub(super) struct AgentLink {
    queue: mpsc::UnboundedSender<ToWorker>,
    epoch: Instant,
    next_id: u64,
    /// The requests sent and not answered yet. Dropped with the link when the connection
    /// ends, which tells each asker so.
    pending: rustc_hash::FxHashMap<u64, oneshot::Sender<Result<AgentAnswer, Refusal>>>,
}

/// A request of the API to the agent; the receiver gets its answer.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Result<AgentAnswer, Refusal>>")]
struct Ask(AgentRequest);

/// The agent's answer to the request `id`.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Answered {
    pub(super) id: u64,
    pub(super) answer: Result<AgentAnswer, Refusal>,
}

impl Handler<Ask> for AgentLink {
    type Result = MessageResult<Ask>;
    fn handle(&mut self, msg: Ask, ctx: &mut Context<Self>) -> Self::Result {
        // Askers that gave up (timed out) leave their entries: dropped here, so a silent agent
        // cannot grow the map past the requests in flight.
        self.pending.retain(|_, tx| !tx.is_closed());
        let (tx, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, tx);
        self.queue(ToWorker::Request { id, request: msg.0 }, ctx);
        MessageResult(rx)
    }
}

impl Handler<Answered> for AgentLink {
    type Result = ();
    fn handle(&mut self, msg: Answered, _: &mut Context<Self>) {
        match self.pending.remove(&msg.id) {
            Some(tx) => {
                if tx.send(msg.answer).is_err() {
                    tracing::debug!(
                        id = msg.id,
                        "an agent's answer came after its asker gave up"
                    );
                }
            }
            // Its asker gave up (timed out) and its entry was dropped: late, not unexpected.
            None if msg.id < self.next_id => {
                tracing::debug!(id = msg.id, "an agent answered after its asker gave up");
            }
            None => {
                tracing::warn!(
                    id = msg.id,
                    "an agent answered a request this scheduler did not make"
                );
                metrics::counter!(UNEXPECTED_FRAMES, "side" => "scheduler", "type" => "answer")
                    .increment(1);
            }
        }
    }
}

impl Actor for AgentLink {
    type Context = Context<Self>;
}

/// Stops an [`AgentLink`]: its connection ended, so the scheduler's next delivery to it fails.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct CloseLink;

impl Handler<CloseLink> for AgentLink {
    type Result = ();
    fn handle(&mut self, _: CloseLink, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl AgentLink {
    /// A link writing to `queue`, its clock counted from `epoch` (the connection's).
    pub(super) fn new(queue: mpsc::UnboundedSender<ToWorker>, epoch: Instant) -> AgentLink {
        AgentLink {
            queue,
            epoch,
            next_id: 1,
            pending: rustc_hash::FxHashMap::default(),
        }
    }

    fn queue(&mut self, msg: ToWorker, ctx: &mut Context<Self>) {
        if self.queue.send(msg).is_err() {
            // The connection is ending: the scheduler learns it from the next delivery.
            ctx.stop();
        }
    }
}

impl Handler<Assign> for AgentLink {
    type Result = ();
    fn handle(&mut self, msg: Assign, ctx: &mut Context<Self>) {
        let now = self.epoch.elapsed();
        let deadline = now + msg.lease_ttl;
        self.queue(
            ToWorker::Assign {
                assign: Box::new(msg),
                clock_us: micros(now),
                lease_deadline_us: micros(deadline),
            },
            ctx,
        );
    }
}

impl Handler<Kill> for AgentLink {
    type Result = ();
    fn handle(&mut self, msg: Kill, ctx: &mut Context<Self>) {
        self.queue(ToWorker::Kill(msg), ctx);
    }
}
