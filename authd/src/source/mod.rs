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
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use crate::field::FieldError;
use crate::identity::{Identity, Outcome};
use crate::mapping::{check_reserved, Mapping, MappingError, DEFAULT_RESERVED};
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

    /// Whether this source may mint `identity` (its mapping's reserved prefixes), checked on
    /// every answer naming it, cached or not. Without a mapping: the default prefixes.
    fn may_mint(&self, identity: &Identity) -> Result<(), MappingError> {
        check_reserved(DEFAULT_RESERVED, identity)
    }

    /// The id this source gives the credential, if it names its credentials (PostgreSQL's
    /// token id): a revocation by that id (`kube-authd token disable`) then matches the
    /// token without anyone holding it. Not a secret.
    fn credential_id<'t>(&self, _token: &'t str) -> Option<&'t str> {
        None
    }

    /// What failed verifications of this token are throttled by (`throttle.rs`): the
    /// username of a `user:password` token, the id of an `<id>.<secret>` one. `None`: not
    /// throttled (the source verifies offline, or refuses this token without asking anyone).
    fn throttle_subject<'t>(&self, _token: &'t str) -> Option<&'t str> {
        None
    }

    /// When a token this source owns stops being valid, if the source keeps that (a
    /// PostgreSQL row's `expires_at`): a revocation of the token lasts exactly that long.
    /// Looked up only for a revocation, never on a review.
    fn expiry<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Expiry> {
        Box::pin(async { Expiry::Unknown })
    }

    /// Checks a user name and password directly, for a session `Login` (`session.rs`):
    /// the same check `verify` makes of a `user:password` token, without building one.
    /// `NotMine` from a source that does not check passwords.
    fn check_password<'a>(&'a self, _user: &'a str, _password: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::NotMine })
    }

    /// Looks a user up again without their password, for each session `Token`: whether the
    /// account still exists and its current groups. `NotMine` from a source that cannot
    /// (the Basic-auth service only answers with a password): the login's identity stands.
    fn refresh<'a>(&'a self, _user: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async { Outcome::NotMine })
    }
}

/// What a source knows of a token's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The source does not keep it (or does not accept the token).
    Unknown,
    /// Valid until then.
    At(std::time::SystemTime),
    /// Valid until someone disables it.
    Never,
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
/// snake_case name, which is also the module's (`token_file`, `basic_auth`, `jwt`, `ldap`,
/// `postgres`).
macro_rules! registry {
    ($( $(#[$doc:meta])* $variant:ident($module:ident), )*) => {
        /// One identity source; `type` selects the kind.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum SourceConfig {
            $( $(#[$doc])* $variant(Box<$module::Config>), )*
        }

        /// Reads one source table (without its `type`) straight into `kind`'s `Config`,
        /// keeping the positions serde's tag handling loses; `None` for an unknown kind.
        fn reread(kind: &str, table: ValueDeserializer<'_>) -> Option<Result<(), toml::de::Error>> {
            match kind {
                $( stringify!($module) => Some($module::Config::deserialize(table).map(drop)), )*
                _ => None,
            }
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
        self.kind()
            .files()
            .into_iter()
            .map(Path::to_owned)
            .collect()
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
        self.mapping().validate().map_err(|e| e.within("mapping"))
    }
}

/// A source table that failed to load, read again on its own so the error points at the
/// line of the bad field: serde reads the `type` tag by buffering the whole table, which
/// loses every position inside it. `None` when the table reads fine alone (or has no known
/// `type`): the caller keeps its own error.
/// With the error comes the path of the field it is about, relative to the source's table
/// (`url`, `mapping.username`), when its position falls on one.
pub fn locate_error(table: Spanned<DeValue<'_>>) -> Option<(Option<String>, toml::de::Error)> {
    let span = table.span();
    let DeValue::Table(mut table) = table.into_inner() else {
        return None;
    };
    let kind = table.remove("type")?.into_inner();
    let kind = kind.as_str()?.to_owned();
    let mut fields = Vec::new();
    field_spans(&table, "", &mut fields);
    let table = ValueDeserializer::from(Spanned::new(span, DeValue::Table(table)));
    let error = reread(&kind, table)?.err()?;
    // The innermost field whose key or value holds the error's position.
    let at = error.span().map(|s| s.start);
    let field = fields
        .into_iter()
        .filter(|(_, span)| at.is_some_and(|at| span.contains(&at)))
        .max_by_key(|(path, _)| path.len())
        .map(|(path, _)| path);
    Some((field, error))
}

/// Every field of `table` (nested tables too) with the span from its key to its value's end.
fn field_spans(
    table: &toml::de::DeTable<'_>,
    parent: &str,
    out: &mut Vec<(String, std::ops::Range<usize>)>,
) {
    for (key, value) in table.iter() {
        let path = if parent.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{parent}.{}", key.get_ref())
        };
        let (k, v) = (key.span(), value.span());
        out.push((path.clone(), k.start.min(v.start)..k.end.max(v.end)));
        if let DeValue::Table(inner) = value.get_ref() {
            field_spans(inner, &path, out);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_named_like_its_module() {
        for kind in ["token_file", "basic_auth", "jwt", "ldap", "postgres"] {
            let doc = format!("type = '{kind}'\nname = 'x'\nno_such_field = 1\n");
            let table = toml::de::DeTable::parse(&doc).unwrap();
            let table = Spanned::new(table.span(), DeValue::Table(table.into_inner()));
            let (field, e) =
                locate_error(table).unwrap_or_else(|| panic!("{kind} not in the registry"));
            assert_eq!(field.as_deref(), Some("no_such_field"), "{kind}: {e}");
            assert!(e.message().contains("no_such_field"), "{kind}: {e}");
            let at = doc.find("no_such_field").unwrap();
            assert_eq!(
                e.span(),
                Some(at..at + "no_such_field".len()),
                "{kind}: {e}"
            );
        }
    }
}
