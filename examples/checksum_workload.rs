//! A cadre node with one extension workload, `checksum`: it reads a file through cadre's I/O
//! engine in 1 MiB chunks, reports progress after each, honours its cancel signal, and returns
//! the file's size and CRC32C.
//!
//! Run it as a node (`cargo run --example checksum_workload -- serve`), then submit:
//!
//! ```text
//! curl -s localhost:7070/v1/jobs -d '{"name": "sum", "kind": {"workload": {"name": "checksum",
//!   "params": {"path": "/etc/hostname"}}}}'
//! ```
//!
//! `params.panic: true` makes it panic (to see a failing extension logged, counted and restarted
//! while the node serves on); `params.delay_ms` sleeps between chunks.

use std::process::ExitCode;
use std::time::Duration;

use actix::prelude::*;
use cadre::actors::workload::{Run, WorkloadError};
use cadre::runtime::Extensions;
use cadre::supervisor::SupervisedContext;
use cadre_cpu::{BackendSetting, IoEngine, IoFile, OpenMode};

const CHUNK: usize = 1 << 20;

/// The workload actor. Stateless: every run opens its own file.
#[derive(Default)]
struct Checksum;

impl Actor for Checksum {
    type Context = SupervisedContext<Self>;
}

async fn checksum(run: Run) -> Result<serde_json::Value, WorkloadError> {
    let path = run.params["path"]
        .as_str()
        .ok_or_else(|| WorkloadError::new("params.path: expected a file path"))?
        .to_owned();
    let delay = Duration::from_millis(run.params["delay_ms"].as_u64().unwrap_or(0));
    if run.params["panic"].as_bool() == Some(true) {
        #[allow(
            clippy::panic,
            reason = "the example shows a panicking workload being contained"
        )]
        {
            panic!("checksum asked to panic for job {}", run.job);
        }
    }
    let engine = IoEngine::new(BackendSetting::Auto)
        .map_err(|e| WorkloadError::new(format!("I/O engine: {e}")))?;
    let file = IoFile::open(&path, OpenMode::read())
        .map_err(|e| WorkloadError::new(format!("params.path: {e}")))?;
    let size = std::fs::metadata(&path)
        .map_err(|e| WorkloadError::new(format!("params.path: {e}")))?
        .len();
    let mut crc = 0u32;
    let mut offset = 0u64;
    loop {
        if run.cancel.is_cancelled() {
            return Err(WorkloadError::new("cancelled"));
        }
        let chunk = engine
            .read_at(&file, CHUNK, offset)
            .await
            .map_err(|e| WorkloadError::new(format!("reading {path} at {offset}: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        crc = crc32c::crc32c_append(crc, chunk.as_slice());
        offset += chunk.len() as u64;
        let fraction = if size == 0 {
            1.0
        } else {
            offset as f64 / size as f64
        };
        run.progress
            .report(fraction, Some(format!("{offset} of {size} bytes")));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    Ok(serde_json::json!({ "path": path, "bytes": offset, "crc32c": format!("{crc:08x}") }))
}

impl Handler<Run> for Checksum {
    type Result = ResponseFuture<Result<serde_json::Value, WorkloadError>>;

    fn handle(&mut self, run: Run, _: &mut Self::Context) -> Self::Result {
        Box::pin(checksum(run))
    }
}

fn main() -> ExitCode {
    cadre::app::main(Extensions::new().workload("checksum", || Checksum))
}
