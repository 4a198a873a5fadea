//! The counting global allocator: mimalloc, the allocator the `cadre` binary runs on, wrapped
//! by the `cap` crate's counter (with no limit), so a case can measure what a set of objects
//! costs on the heap ([`live_bytes`] before and after creating them) while every case runs on
//! the allocator a node really uses.
//!
//! It is installed for the whole process, so every case pays an atomic add per allocation and
//! per free; both implementations of a comparison pay them alike.

use cap::Cap;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: Cap<MiMalloc> = Cap::new(MiMalloc, usize::MAX);

/// Heap bytes allocated and not yet freed, process-wide.
pub fn live_bytes() -> usize {
    GLOBAL.allocated()
}
