//! The issued-token source: tokens a session's `Token` call minted (`session.rs`), owned by
//! their prefix (`kat_`). A token is valid while its record (found by the token's keyed
//! hash) is in the store and not expired; the answer carries the token's expiry (no cached
//! verdict outlives it) and its one cluster (`Identity::cluster`, checked after the cache
//! against the review's cluster). The token's credential id is `kat_<session id>`: ending
//! the session revokes that id, so every token of it is refused at once.
//!
//! Not configured as a `[[sources]]` entry: authd adds it after the configured sources
//! when `[sessions]` is set, and keeps it across reloads.

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;

use super::{Expiry, Verifier};
use crate::identity::{Identity, Outcome};
use crate::session::{self, SessionStore, TOKEN_PREFIX};

/// The name this source answers under.
pub const NAME: &str = "sessions";

pub struct IssuedTokens {
    store: Arc<SessionStore>,
}

impl IssuedTokens {
    pub fn new(store: Arc<SessionStore>) -> Self {
        Self { store }
    }
}

impl Verifier for IssuedTokens {
    fn name(&self) -> &str {
        NAME
    }

    fn owns(&self, token: &str) -> bool {
        token.starts_with(TOKEN_PREFIX)
    }

    fn credential_id<'t>(&self, token: &'t str) -> Option<&'t str> {
        session::token_credential_id(token)
    }

    fn expiry<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Expiry> {
        Box::pin(async move {
            match self.store.token(token).await {
                Ok(Some(r)) => Expiry::At(session::from_ms(r.expires_ms)),
                _ => Expiry::Unknown,
            }
        })
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if session::token_credential_id(token).is_none() {
                return Outcome::Rejected;
            }
            let record = match self.store.token(token).await {
                Ok(Some(r)) => r,
                Ok(None) => return Outcome::Rejected,
                Err(e) => return Outcome::Undecided(e.to_string()),
            };
            let expires_at = session::from_ms(record.expires_ms);
            if SystemTime::now() >= expires_at {
                return Outcome::Rejected;
            }
            let i = record.identity;
            Outcome::Authenticated(Identity {
                username: i.username,
                uid: i.uid,
                groups: i.groups,
                extra: i.extra,
                audiences: Vec::new(),
                expires_at: Some(expires_at),
                cluster: Some(record.cluster),
            })
        })
    }
}
