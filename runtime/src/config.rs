//! Reading a configuration file: the binaries' configs are TOML files whose errors name the
//! file, and (from the TOML parser) the line, column and field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// A configuration file that could not be used: unreadable, or refused by the binary's
/// parser (`E`, a [`FieldError`] unless the binary has a richer type).
///
/// The cause is part of the message and deliberately not an error `source`: a chain
/// printer (`{:#}`) would print it a second time.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError<E: std::error::Error + 'static = FieldError> {
    #[error("config file {path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {error}")]
    Invalid { path: PathBuf, error: E },
}

/// A bad setting: where it is (a dotted path from the top of the file, e.g.
/// `sources[2].mapping.username`, or `toml` for a syntax or type error, whose message names
/// the line and the key) and what is wrong. The error stays a value, not a formatted string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
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

/// Reads `path` and hands its text to `parse` together with the file's folder, which
/// anchors relative paths; `parse`'s error is reported against the file.
pub fn load<T, E: std::error::Error + 'static>(
    path: &Path,
    parse: impl FnOnce(&str, &Path) -> Result<T, E>,
) -> Result<T, ConfigError<E>> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|error| ConfigError::Invalid {
        path: path.to_owned(),
        error,
    })
}

/// A duration default written at its field: `#[serde(default = "secs::<25>")]`.
pub fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// A duration default in milliseconds: `#[serde(default = "millis::<100>")]`.
pub fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

/// Deserializes TOML text; the error names the line, the column and the field.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, FieldError> {
    toml::from_str(text).map_err(|e| FieldError::new("toml", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only deserialized.
    struct Sample {
        listen: String,
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn field_paths_nest() {
        let e = FieldError::new("username", "bad")
            .within("mapping")
            .within("sources[0]");
        assert_eq!(e.field, "sources[0].mapping.username");
        assert_eq!(e.to_string(), "sources[0].mapping.username: bad");
        assert_eq!(FieldError::new("[1]", "x").within("keys").field, "keys[1]");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"x\"\nlimitt = 3\n").expect("write");
        let e = load(&path, |text, base| {
            assert_eq!(base, dir.path());
            from_toml::<Sample>(text)
        })
        .expect_err("unknown field");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("limitt"), "{msg}");

        std::fs::write(&path, "listen = \"x\"\nlimit = \"many\"\n").expect("write");
        let msg = load(&path, |text, _| from_toml::<Sample>(text))
            .expect_err("wrong type")
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("limit"), "{msg}");

        let missing = dir.path().join("missing.toml");
        let msg = load(&missing, |text, _| from_toml::<Sample>(text))
            .expect_err("no file")
            .to_string();
        assert!(msg.contains("missing.toml: cannot read"), "{msg}");
    }
}
