//! What jobs leave on an agent, as the scheduler asks for it: their logs read (`ReadLog`),
//! and their logs and scratch directories removed once the scheduler's retention pruned them
//! (`Forget` for a batch just pruned; `Sweep`, at each connection, for every job pruned while
//! the agent was away).
//!
//! `ReadLog` answers from the agent's log directory, one bounded chunk per request, so
//! `cadre logs` of a job on an agent reads the same bytes (head, a marker where the cap dropped
//! some, tail) as on one node.
//!
//! Offsets are logical (see `cadre_cpu::joblog`): an answer says where the next read starts,
//! past its bytes and any dropped range its marker stands for, so a reader that always asks
//! from the last answer's `next` never repeats or skips a byte.

use std::path::PathBuf;

use cadre_actors::worker::task_log_paths;
use cadre_cpu::launcher::LogReader;
use cadre_wire::{AgentAnswer, AgentRequest, LogStream, Refusal, RefusalKind};

use super::AGENT_REQUEST_FAILURES;

/// Where an agent's job files are, and how much one answer may carry.
#[derive(Debug, Clone)]
pub struct AgentFiles {
    /// Reads logs.
    pub reader: LogReader,
    /// The agent's log directory (`<job>.<task>.out` and `.err`).
    pub dir: PathBuf,
    /// The agent's scratch directory (`<job>.<task>/`).
    pub scratch_dir: PathBuf,
    /// The most bytes one answer carries: what fits in a frame of the agent's limit.
    pub max_bytes: u32,
}

/// Answers one request of the scheduler. A log that does not exist (the task has not written
/// yet, or never ran here) reads as empty; a read that fails is refused with why, logged and
/// counted. Removals run on the blocking pool; each failure is logged and counted there, and
/// the answer says how many.
pub async fn serve(access: &AgentFiles, request: AgentRequest) -> Result<AgentAnswer, Refusal> {
    match request {
        AgentRequest::Forget { jobs } => {
            let (logs, scratch) = (access.dir.clone(), access.scratch_dir.clone());
            removed(
                "forget",
                tokio::task::spawn_blocking(move || {
                    crate::confine::remove_pruned(&logs, &scratch, &jobs)
                })
                .await,
            )
        }
        AgentRequest::Sweep { kept, next } => {
            let kept = match crate::confine::KeptIds::from_ranges(kept, next) {
                Ok(kept) => kept,
                Err(reason) => {
                    tracing::warn!(%reason, "the scheduler sent a sweep with invalid kept ids; nothing removed");
                    metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "agent", "type" => "sweep")
                        .increment(1);
                    return Err(Refusal::new(RefusalKind::Invalid, reason));
                }
            };
            let (logs, scratch) = (access.dir.clone(), access.scratch_dir.clone());
            removed(
                "sweep",
                tokio::task::spawn_blocking(move || {
                    crate::confine::sweep_pruned(&logs, &scratch, &kept)
                })
                .await,
            )
        }
        AgentRequest::ReadLog {
            job,
            task,
            stream,
            offset,
            tail,
            max_bytes,
        } => {
            let (out, err) = task_log_paths(&access.dir, job, task);
            let path = match stream {
                LogStream::Stdout => out,
                LogStream::Stderr => err,
            };
            if !path.exists() {
                return Ok(AgentAnswer::Log {
                    bytes: Vec::new(),
                    next: if tail.is_some() { 0 } else { offset },
                    end: 0,
                });
            }
            let max = max_bytes.clamp(1, access.max_bytes.max(1)) as usize;
            match read(&access.reader, &path, offset, tail, max).await {
                Ok(answer) => Ok(answer),
                Err(error) => {
                    // The reader logged the failure with its path; this says whose it was.
                    tracing::error!(job = %job, task, %error, "a task's log could not be read for the scheduler");
                    metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "agent", "type" => "read_log")
                        .increment(1);
                    Err(Refusal::new(
                        RefusalKind::Internal,
                        format!("reading the log of job {job} task {task} failed: {error}"),
                    ))
                }
            }
        }
    }
}

/// The answer to a removal, or a refusal when its blocking task failed.
fn removed(
    kind: &'static str,
    done: Result<crate::confine::Swept, tokio::task::JoinError>,
) -> Result<AgentAnswer, Refusal> {
    match done {
        Ok(swept) => {
            tracing::info!(
                kind,
                log_files = swept.log_files,
                scratch_dirs = swept.scratch_dirs,
                failures = swept.failures,
                "removed what pruned jobs left here"
            );
            Ok(AgentAnswer::Removed {
                log_files: swept.log_files,
                scratch_dirs: swept.scratch_dirs,
                failures: swept.failures,
            })
        }
        Err(error) => {
            tracing::error!(kind, %error, "removing what pruned jobs left here failed");
            metrics::counter!(AGENT_REQUEST_FAILURES, "side" => "agent", "type" => kind)
                .increment(1);
            Err(Refusal::new(
                RefusalKind::Internal,
                format!("the removal failed: {error}"),
            ))
        }
    }
}

async fn read(
    reader: &LogReader,
    path: &std::path::Path,
    offset: u64,
    tail: Option<u64>,
    max: usize,
) -> Result<AgentAnswer, cadre_cpu::CpuError> {
    let mut chunks = match tail {
        Some(tail) => reader.tail(path, tail).await?,
        None => reader.read_from(path, offset).await?,
    };
    let end = chunks.end();
    let mut bytes = Vec::new();
    let mut next = chunks.offset();
    while bytes.len() < max {
        let before = chunks.offset();
        let Some(chunk) = chunks.next_chunk().await? else {
            break;
        };
        let after = chunks.offset();
        let room = max - bytes.len();
        if chunk.len() <= room {
            bytes.extend_from_slice(&chunk);
            next = after;
            continue;
        }
        // Bytes of the log map one to one onto offsets, so part of them can be sent and the
        // next read starts right after; a marker stands for a dropped range and goes whole
        // (it is short), alone if need be so that a read always moves on.
        if after - before == chunk.len() as u64 {
            bytes.extend_from_slice(&chunk[..room]);
            next = before + room as u64;
        } else if bytes.is_empty() {
            bytes.extend_from_slice(&chunk);
            next = after;
        }
        break;
    }
    Ok(AgentAnswer::Log { bytes, next, end })
}
