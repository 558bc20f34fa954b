//! Identity sources. One module per source kind; each owns its `Config` (fields, defaults,
//! validation, the files it reads) and builds its [`Verifier`]. This module holds the trait,
//! the registry of kinds ([`SourceConfig`]) and [`build_all`]. A new kind is one module plus
//! one line in `registry!` below.
//!
//! Routing is explicit: a source declares which tokens it owns (`owns`), and a token is only
//! ever shown to sources that own it, so a user's LDAP password is never sent to another
//! source because an earlier one said "not mine".

pub mod basic_auth;
pub mod common;
pub mod jwt;
pub mod ldap;
mod mapped;
pub mod postgres;
pub mod token_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::field::FieldError;
use crate::identity::Outcome;
use crate::mapping::Mapping;
pub use mapped::Mapped;

/// An identity source.
pub trait Verifier: Send + Sync {
    /// The configured name, reported as the deciding source.
    fn name(&self) -> &str;

    /// Whether this source owns the token's shape. Must be cheap and must not look the
    /// token up anywhere.
    fn owns(&self, token: &str) -> bool;

    /// Checks a token this source owns.
    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> BoxFuture<'a, Outcome>;
}

/// A build-time failure of one source (a file that cannot be read, a bad key).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// What each kind's `Config` provides; the registry delegates to it once per kind.
pub trait Kind {
    /// The unique name, reported as the deciding source.
    fn name(&self) -> &str;
    /// How this source's answers map to Kubernetes users.
    fn mapping(&self) -> &Mapping;
    /// Local files this source reads; a change to any of them triggers a reload.
    fn files(&self) -> Vec<&Path>;
    /// Anchors relative paths at the configuration file's folder.
    fn resolve_paths(&mut self, base: &Path);
    /// Checks the kind's own fields; the error's path is relative to the source's table.
    fn validate(&self) -> Result<(), FieldError>;
    /// Reads the files and makes the verifier; nothing remote is contacted.
    fn build(&self) -> Result<Arc<dyn Verifier>, BuildError>;
}

/// The registry: one line per kind, `Variant(module)`. The TOML `type` is the variant's
/// snake_case name (`token_file`, `basic_auth`, `jwt`, `ldap`, `postgres`).
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($module:ident), )*) => {
        /// One identity source; `type` selects the kind.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum SourceConfig {
            $( $(#[$doc])* $variant(Box<$module::Config>), )*
        }

        impl SourceConfig {
            fn kind(&self) -> &dyn Kind {
                match self {
                    $( SourceConfig::$variant(c) => &**c, )*
                }
            }

            fn kind_mut(&mut self) -> &mut dyn Kind {
                match self {
                    $( SourceConfig::$variant(c) => &mut **c, )*
                }
            }
        }
    };
}

registry! {
    /// kube-apiserver `--token-auth-file` CSV.
    TokenFile(token_file),
    /// External HTTP Basic-auth service for `user:password` tokens.
    BasicAuth(basic_auth),
    /// JWTs from one issuer (OIDC ID tokens, service tokens).
    Jwt(jwt),
    /// `user:password` tokens checked against an LDAP directory.
    Ldap(ldap),
    /// Opaque `<prefix><id>.<secret>` tokens stored (hashed) in PostgreSQL.
    Postgres(postgres),
}

impl SourceConfig {
    /// The unique name, reported as the deciding source.
    pub fn name(&self) -> &str {
        self.kind().name()
    }

    /// How this source's answers map to Kubernetes users.
    pub fn mapping(&self) -> &Mapping {
        self.kind().mapping()
    }

    /// Local files this source reads; a change to any of them triggers a reload.
    pub fn files(&self) -> Vec<PathBuf> {
        self.kind().files().into_iter().map(Path::to_owned).collect()
    }

    /// Anchors relative paths at `base`, the configuration file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.kind_mut().resolve_paths(base);
    }

    /// Checks the source's fields and its mapping; paths are relative to its table.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name().trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        self.kind().validate()?;
        self.mapping()
            .validate()
            .map_err(|e| e.within("mapping"))
    }
}

/// Builds every configured source, in order, each behind its identity mapping. Errors name
/// the source and its field. Nothing remote is contacted here.
pub fn build_all(configs: &[SourceConfig]) -> anyhow::Result<Vec<Arc<dyn Verifier>>> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let source = c
                .kind()
                .build()
                .map_err(|e| anyhow::anyhow!("sources[{i}] ({:?}): {e}", c.name()))?;
            Ok(Arc::new(Mapped::new(source, c.mapping().clone())) as Arc<dyn Verifier>)
        })
        .collect()
}
