//! Reading a configuration file: the binaries' configs are TOML files whose errors name the
//! file, and (from the TOML parser) the line, column and field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads `path` and hands its text to `parse` together with the file's folder, which
/// anchors relative paths; `parse`'s error is reported against the file.
pub fn load<T>(
    path: &Path,
    parse: impl FnOnce(&str, &Path) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    })
}

/// Deserializes TOML text; the error names the line, the column and the field.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
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
