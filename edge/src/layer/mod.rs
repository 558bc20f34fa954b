//! The edge's cross-cutting behaviour as small tower layers, each wrapping any backend
//! (the balanced replicas or authd in-process). They are composed once, in
//! `backend.rs` (`Backend::layered`).
//!
//! Each future is written by hand so a review costs no allocation and no task hop per
//! layer: every layer's `poll_ready` is always ready, because capacity is decided per call
//! (load shedding, never queueing).

pub mod deadline;
pub mod fail_fast;
pub mod shed;

pub use deadline::{Deadline, DeadlineLayer};
pub use fail_fast::{FailFast, FailFastLayer};
pub use shed::{Shed, ShedLayer};
