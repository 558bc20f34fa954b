//! Configuration errors that name their field. Sources, mapping and the composed
//! configuration all report through [`FieldError`] (shared with the edge, from
//! `authd-runtime`), so every message says where to look (`sources[2].mapping.username`)
//! and the error stays a value, not a formatted string.

pub use authd_runtime::config::FieldError;

/// The value of a setting that was removed: it never holds anything, because reading the
/// old spelling fails (with a message that says what to write instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed;
