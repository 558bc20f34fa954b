//! Static token file in kube-apiserver's `--token-auth-file` CSV format.
//!
//! `token,user,uid,"group1,group2"`: at least three columns, groups optional. The first
//! column may be `sha256:<64 hex>` so the file need not hold plaintext tokens. Tokens are
//! indexed by their SHA-256 digest and the final comparison is constant-time, so lookup time
//! does not depend on how much of a guessed token is right.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::common::{check_prefix, resolve};
use super::{BuildError, Kind, Verifier};
use crate::field::FieldError;
use crate::identity::{Identity, Outcome};
use crate::mapping::Mapping;

/// `type = "token_file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    /// The CSV file; re-read when it changes.
    pub path: PathBuf,
    /// Only tokens starting with this are looked up; a miss is then a definitive no.
    pub prefix: Option<String>,
    #[serde(default)]
    pub mapping: Mapping,
}

impl Kind for Config {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn files(&self) -> Vec<&Path> {
        vec![&self.path]
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.path);
    }

    fn validate(&self) -> Result<(), FieldError> {
        check_prefix(self.prefix.as_deref())
    }

    fn build(&self) -> Result<Arc<dyn Verifier>, BuildError> {
        Ok(Arc::new(TokenFile::open(
            &self.name,
            &self.path,
            self.prefix.clone(),
        )?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    identity: Identity,
}

/// The parsed file: digest → entry.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: HashMap<[u8; 32], Entry>,
}

impl TokenTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn lookup(&self, token: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entry = self.entries.get(&digest)?;
        bool::from(entry.digest.ct_eq(&digest)).then_some(&entry.identity)
    }

    /// Parses the CSV text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TokenFileError> {
        let line_err = |line: u64, message: String| TokenFileError::Line {
            path: path.to_owned(),
            line,
            message,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let mut entries = HashMap::new();
        let mut first_line = HashMap::new();
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                line_err(line, format!("malformed CSV: {e}"))
            })?;
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            if record.iter().all(str::is_empty) {
                continue;
            }
            if record.len() < 3 {
                return Err(line_err(
                    line,
                    format!(
                        "must have at least 3 columns (token, user name, user uid), found {}",
                        record.len()
                    ),
                ));
            }
            let digest = parse_token_column(&record[0]).map_err(|m| line_err(line, m))?;
            let username = record[1].to_owned();
            if username.is_empty() {
                return Err(line_err(line, "user name (column 2) is empty".into()));
            }
            let groups = record
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(previous) = first_line.insert(digest, line) {
                return Err(line_err(
                    line,
                    format!("duplicate token (column 1), first seen on line {previous}"),
                ));
            }
            let identity = Identity {
                username,
                uid: record[2].to_owned(),
                groups,
                ..Identity::default()
            };
            entries.insert(digest, Entry { digest, identity });
        }
        Ok(Self { entries })
    }

    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

fn parse_token_column(column: &str) -> Result<[u8; 32], String> {
    if column.is_empty() {
        return Err("token (column 1) is empty".into());
    }
    match column.strip_prefix("sha256:") {
        Some(hexed) => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hexed, &mut digest).map_err(|_| {
                "token (column 1): sha256: must be followed by 64 hex digits".to_string()
            })?;
            Ok(digest)
        }
        None => Ok(Sha256::digest(column.as_bytes()).into()),
    }
}

/// The verifier: a table that can be swapped on reload.
pub struct TokenFile {
    name: String,
    path: PathBuf,
    prefix: Option<String>,
    table: RwLock<Arc<TokenTable>>,
}

impl TokenFile {
    /// Loads the file; fails naming the file, line and column.
    pub fn open(name: &str, path: &Path, prefix: Option<String>) -> Result<Self, TokenFileError> {
        let table = TokenTable::load(path)?;
        Ok(Self {
            name: name.to_owned(),
            path: path.to_owned(),
            prefix,
            table: RwLock::new(Arc::new(table)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file. On error the previous table stays in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let table = TokenTable::load(&self.path)?;
        let n = table.len();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(n)
    }

    fn current(&self) -> Arc<TokenTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Verifier for TokenFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, token: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| token.starts_with(p))
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        let outcome = match self.current().lookup(token) {
            Some(identity) => Outcome::Authenticated(identity.clone()),
            // With a prefix the file owns that token space, so a miss is a definitive no.
            // Without one, a miss means "not one of mine" and later sources may own it.
            None if self.prefix.is_some() => Outcome::Rejected,
            None => Outcome::NotMine,
        };
        Box::pin(std::future::ready(outcome))
    }

    /// For a login session (`kube-authd up`'s demo users): the password is the user's
    /// token from the file, and the line must be that user's. A demo convenience, not a
    /// password store: the file keeps plain or unsalted SHA-256 tokens.
    fn check_password<'a>(&'a self, user: &'a str, password: &'a str) -> BoxFuture<'a, Outcome> {
        let outcome = match self.current().lookup(password) {
            Some(identity) if identity.username == user => Outcome::Authenticated(identity.clone()),
            _ => Outcome::Rejected,
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenTable, TokenFileError> {
        TokenTable::parse(Path::new("t.csv"), text)
    }

    #[test]
    fn parses_plain_hashed_and_quoted_groups() {
        let hashed = hex::encode(Sha256::digest(b"secret2"));
        let t = parse(&format!(
            "secret1,alice,u1,\"dev,ops\"\nsha256:{hashed},bob,u2\n# comment\n\n"
        ))
        .unwrap();
        assert_eq!(t.len(), 2);
        let a = t.lookup("secret1").unwrap();
        assert_eq!(a.username, "alice");
        assert_eq!(a.groups, vec!["dev", "ops"]);
        assert_eq!(t.lookup("secret2").unwrap().username, "bob");
        assert!(t.lookup("secret").is_none());
        assert!(t.lookup(&format!("sha256:{hashed}")).is_none());
    }

    #[test]
    fn rejects_with_line_numbers() {
        let e = parse("a,alice,1\nb,bob\n").unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("at least 3 columns"),
            "{e}"
        );
        let e = parse("a,alice,1\na,bob,2\n").unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("duplicate") && e.contains("line 1"),
            "{e}"
        );
        let e = parse("a,,1\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("user name"), "{e}");
        let e = parse("sha256:zz,alice,1\n").unwrap_err().to_string();
        assert!(e.contains("64 hex"), "{e}");
    }

    #[test]
    fn duplicate_detected_across_plain_and_hashed() {
        let hashed = hex::encode(Sha256::digest(b"tok"));
        let e = parse(&format!("tok,a,1\nsha256:{hashed},b,2\n")).unwrap_err();
        assert!(e.to_string().contains("duplicate"));
    }
}
