//! The counting global allocator: the system allocator instrumented by the `stats_alloc`
//! crate, so a case can measure what a set of objects costs on the heap ([`live_bytes`] before
//! and after creating them).
//!
//! It is installed for the whole process, so every case pays its few atomic adds per allocation
//! and per free; both implementations of a comparison pay them alike.

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not yet freed, process-wide.
pub fn live_bytes() -> usize {
    let stats = GLOBAL.stats();
    let live =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    live.max(0) as usize
}
