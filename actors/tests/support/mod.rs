//! Helpers shared by the runtime-actor tests (`backpressure.rs`, `health_*.rs`, `worker_*.rs`,
//! `scheduler_*.rs`), each of which declares `mod support;`. Split by role, every helper
//! reachable as `support::<name>`:
//! - `capture.rs`: captured tracing events (`Events`, `FieldMap`, `subscribed`), the one copy
//!   shared with the tests of the pure cores (see below);
//! - `counters.rs`: a counter summed over label sets, a gauge (also shared with them);
//! - `harness.rs`: `run` on a paused-clock actix System with captured events and a per-test
//!   metrics recorder, `Obs`, `until`, `Scratch`, `lock`, `ms`;
//! - `specs.rs`: the spec builders (`workload_spec`, `sched_job`, `gpu_job`, `forever`) and
//!   `LEASE_LOST`;
//! - `worker_rig.rs`: the worker rig (`WorkerRig`), its settings and constants, with
//!   `fake_scheduler.rs` (a scripted `FakeScheduler`) and `test_workload.rs` (`TestWorkload`);
//! - `sched_rig.rs`: the scheduler rig (`SchedRig` on a real journal), with `fake_worker.rs`
//!   (`FakeWorker`).
//!
//! `placement.rs` and `leases.rs` beside them are not part of this module: the tests of the
//! pure scheduling core (`sched_*.rs`, `lease_*.rs`) include them with `#[path]` and need none
//! of this harness; each of the two includes `capture.rs` and `counters.rs` in turn with `#[path]`, as does
//! `job_model.rs` alone, so that every test binary compiles the same capture and none of them
//! the actix harness for it.
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod capture;
mod counters;
mod fake_scheduler;
mod fake_worker;
mod harness;
mod sched_rig;
mod specs;
mod test_workload;
mod worker_rig;

// Each test file uses some roles only.
#[allow(unused_imports)]
pub use self::{
    capture::*, counters::*, fake_scheduler::*, fake_worker::*, harness::*, sched_rig::*, specs::*,
    test_workload::*, worker_rig::*,
};
