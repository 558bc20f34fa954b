//! The edge's cross-cutting behaviour, composed once in `backend.rs` (`Backend::layered`):
//! admission (load shed and the memory budget, taken by the handler before a body is read)
//! and small tower layers, each wrapping any backend (the balanced replicas or authd
//! in-process).
//!
//! Each future is written by hand so a review costs no allocation and no task hop per
//! layer: every layer's `poll_ready` is always ready, because capacity is decided per
//! review at admission (load shedding, never queueing).

pub mod admission;
pub mod deadline;
pub mod fail_fast;

pub use admission::{Admission, Admitted};
pub use deadline::{Deadline, DeadlineLayer};
pub use fail_fast::{FailFast, FailFastLayer};
