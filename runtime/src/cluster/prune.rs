//! Retention across the cluster, the scheduler's side: what a pruned job left on an agent (its
//! logs and scratch directories) is removed there too, so an agent's disk does not fill over
//! months with the files of jobs its scheduler forgot.
//!
//! - When retention prunes a batch, the janitor removes the files of tasks that ran on this
//!   node, and asks each agent that ran some of the batch to `Forget` them.
//! - An agent that was not connected then (or restarted) is sent a `Sweep` at each connection:
//!   the ids the scheduler keeps, below which every other id was pruned.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::ids::WorkerIdentity;
use cadre_actors::job::JobId;
use cadre_actors::scheduler::{Janitor, KeptJobIds, PrunedJob, Scheduler};
use cadre_wire::{AgentAnswer, AgentRequest};

use super::link::Agents;
use super::AGENT_REQUEST_FAILURES;

/// The most jobs one `Forget` names (about 12 bytes each on the wire).
const FORGET_BATCH: usize = 8192;

/// How long a `Forget` or a `Sweep` may take on the agent (a sweep lists whole directories).
pub const REMOVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The scheduler's janitor in a cluster: `local` for the tasks that ran on this node (where
/// `own` names this node's worker, `None` without one), and a `Forget` to each agent for the
/// tasks that ran there. A job recorded before nodes were kept is taken as this node's.
pub fn janitor(local: Janitor, agents: Agents, own: Option<String>) -> Janitor {
    std::sync::Arc::new(move |jobs: Vec<PrunedJob>| {
        let mut here = Vec::new();
        let mut remote: BTreeMap<String, Vec<(JobId, u32)>> = BTreeMap::new();
        for job in jobs {
            if !job.command {
                continue;
            }
            let mut local_task = job.nodes.is_empty();
            for node in job.nodes.iter().collect::<std::collections::BTreeSet<_>>() {
                if own.as_ref() == Some(node) || node.is_empty() {
                    local_task = true;
                } else {
                    // A gang's agent is asked for all of the job's tasks: a task it did not
                    // run has nothing to remove.
                    remote
                        .entry(node.clone())
                        .or_default()
                        .push((job.job, job.tasks));
                }
            }
            if local_task {
                here.push(job);
            }
        }
        if !here.is_empty() {
            local(here);
        }
        for (node, jobs) in remote {
            for batch in jobs.chunks(FORGET_BATCH) {
                let agents = agents.clone();
                let node = node.clone();
                let request = AgentRequest::Forget {
                    jobs: batch.to_vec(),
                };
                actix_rt::spawn(async move {
                    // A failure is logged and counted by `ask`; the agent's next connection
                    // sweeps what is left.
                    if let Ok(answer) = agents.ask(&node, request, REMOVAL_TIMEOUT).await {
                        tracing::debug!(%node, ?answer, "an agent removed pruned jobs' files");
                    }
                });
            }
        }
    })
}

/// Sends a newly connected agent a `Sweep` of the jobs the scheduler no longer keeps, off the
/// connection's loop. A table too fragmented for one frame is not sent (said once): the
/// agent keeps those files until a later connection.
pub(crate) fn sweep_on_connect(
    scheduler: Addr<Scheduler>,
    agents: Agents,
    identity: WorkerIdentity,
) {
    actix_rt::spawn(async move {
        let kept = match scheduler.send(KeptJobIds).await {
            Ok(Ok(kept)) => kept,
            Ok(Err(error)) => {
                tracing::warn!(%identity, %error, "no sweep sent to the agent: the scheduler has no kept ids");
                metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "scheduler", "type" => "sweep")
                    .increment(1);
                return;
            }
            Err(error) => {
                tracing::warn!(%identity, %error, "no sweep sent to the agent: the scheduler is unreachable");
                metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "scheduler", "type" => "sweep")
                    .increment(1);
                return;
            }
        };
        // About 20 bytes a range in MessagePack.
        if kept.ranges.len().saturating_mul(20) > agents.frame_room() as usize {
            tracing::warn!(%identity, ranges = kept.ranges.len(),
                "the kept job ids do not fit in one frame: no sweep sent to the agent");
            metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "scheduler", "type" => "sweep")
                .increment(1);
            return;
        }
        let request = AgentRequest::Sweep {
            kept: kept.ranges.clone(),
            next: kept.next,
        };
        // A failure is logged and counted by `ask`.
        if let Ok(AgentAnswer::Removed {
            log_files,
            scratch_dirs,
            failures,
        }) = agents.ask(&identity.node, request, REMOVAL_TIMEOUT).await
        {
            tracing::info!(%identity, log_files, scratch_dirs, failures,
                "the agent swept what pruned jobs left there");
        }
    });
}
