//! A configuration error that names its field. Sources, mapping and the composed
//! configuration all report through it, so every message says where to look
//! (`sources[2].mapping.username`) and the error stays a value, not a formatted string.

use std::fmt;

/// A bad setting: where it is (a dotted path, e.g. `cache.redis.url`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// Path of the field from the top of the file.
    pub field: String,
    /// What is wrong with it, and when possible what to write instead.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error seen from the enclosing table: `parent` goes in front of the path
    /// (`url` inside `sources[0]` becomes `sources[0].url`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// The value of a setting that was removed: it never holds anything, because reading the
/// old spelling fails (with a message that says what to write instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed;

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_nest() {
        let e = FieldError::new("username", "bad")
            .within("mapping")
            .within("sources[0]");
        assert_eq!(e.field, "sources[0].mapping.username");
        assert_eq!(e.to_string(), "sources[0].mapping.username: bad");
        assert_eq!(FieldError::new("[1]", "x").within("keys").field, "keys[1]");
    }
}
