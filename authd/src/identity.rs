//! What a verifier says about a token, and the verdict authd hands back.
//!
//! `Outcome` is the four-way answer every identity source gives. `Verdict` is the cacheable
//! subset of it: "could not decide" is deliberately not representable here, so it can never
//! reach a cache.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// A Kubernetes user as a source (after mapping) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// Audiences the token is valid for; empty unless the source is audience-aware.
    pub audiences: Vec<String>,
    /// When the credential itself stops being valid (JWT `exp`, a row's expiry), if known.
    /// No cached verdict outlives it.
    pub expires_at: Option<SystemTime>,
    /// The one cluster the credential is valid for (a session's issued token): refused for
    /// any other, after the cache (`service.rs`). `None`: any cluster its policy admits.
    pub cluster: Option<String>,
}

/// One source's answer for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The token is valid and belongs to this identity.
    Authenticated(Identity),
    /// The token is owned by this source and is not valid (wrong password, unknown token).
    Rejected,
    /// Like `Rejected`, for a token whose id the source knows but whose secret is wrong:
    /// someone holds the id (a theft signal for the throttle).
    WrongSecret,
    /// The token is not of a shape this source owns; it was not checked.
    NotMine,
    /// The source could not decide (down, timed out, misbehaving). Never cached; never a
    /// "yes". The message is for logs and must not contain secrets.
    Undecided(String),
}

/// A definitive, cacheable answer, with the source that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The identity when authenticated, `None` when rejected.
    pub identity: Option<Identity>,
    /// Name of the source that decided; empty when no source owned the token.
    pub source: String,
}

impl Verdict {
    pub fn authenticated(&self) -> bool {
        self.identity.is_some()
    }
}
