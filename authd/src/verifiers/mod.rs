//! Identity sources. One module per source; each answers for the tokens it owns.
//!
//! Routing is explicit: a source declares which tokens it owns (`owns`), and a token is only
//! ever shown to sources that own it, so a user's LDAP password is never sent to another
//! source because an earlier one said "not mine".

pub mod basic_auth;
pub mod jwt;
pub mod ldap;
pub mod sql;
pub mod token_file;

use futures::future::BoxFuture;

use crate::identity::Outcome;

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

use std::sync::Arc;

use crate::config::SourceConfig;
use crate::mapping::Mapped;

/// Builds every configured source, in order, each behind its identity mapping. Errors name
/// the source and its field. Nothing remote is contacted here.
pub fn build_all(configs: &[SourceConfig]) -> anyhow::Result<Vec<Arc<dyn Verifier>>> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| build(i, c))
        .collect()
}

fn build(index: usize, config: &SourceConfig) -> anyhow::Result<Arc<dyn Verifier>> {
    let context =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("sources[{index}] ({:?}): {e}", config.name());
    let source: Arc<dyn Verifier> = match config {
        SourceConfig::TokenFile(c) => Arc::new(
            token_file::TokenFile::open(&c.name, &c.path, c.prefix.clone())
                .map_err(|e| context(&e))?,
        ),
        SourceConfig::BasicAuth(c) => {
            Arc::new(basic_auth::BasicAuth::new(c).map_err(|e| context(&e))?)
        }
        SourceConfig::Jwt(c) => Arc::new(jwt::Jwt::new(c).map_err(|e| context(&e))?),
        SourceConfig::Ldap(c) => Arc::new(ldap::LdapVerifier::new(c).map_err(|e| context(&e))?),
        SourceConfig::Postgres(c) => sql::SqlVerifier::new(c).map_err(|e| context(&e))?,
    };
    Ok(Arc::new(Mapped::new(source, config.mapping().clone())))
}
