//! A built source behind its identity mapping: every authenticated answer goes through the
//! source's `mapping` before it is cached or returned.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};

use super::{Expiry, Verifier};
use crate::identity::{Identity, Outcome};
use crate::mapping::{Mapping, MappingError};

/// A source whose authenticated answers go through its mapping.
pub struct Mapped {
    inner: Arc<dyn Verifier>,
    mapping: Mapping,
}

impl Mapped {
    pub fn new(inner: Arc<dyn Verifier>, mapping: Mapping) -> Self {
        Self { inner, mapping }
    }
}

impl Verifier for Mapped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn owns(&self, token: &str) -> bool {
        self.inner.owns(token)
    }

    fn may_mint(&self, identity: &Identity) -> Result<(), MappingError> {
        self.mapping.check_reserved(identity)
    }

    fn credential_id<'t>(&self, token: &'t str) -> Option<&'t str> {
        self.inner.credential_id(token)
    }

    fn throttle_subject<'t>(&self, token: &'t str) -> Option<&'t str> {
        self.inner.throttle_subject(token)
    }

    fn expiry<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Expiry> {
        self.inner.expiry(token)
    }

    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        async move { self.map(self.inner.verify(token, audiences).await) }.boxed()
    }

    fn check_password<'a>(&'a self, user: &'a str, password: &'a str) -> BoxFuture<'a, Outcome> {
        async move { self.map(self.inner.check_password(user, password).await) }.boxed()
    }

    fn refresh<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Outcome> {
        async move { self.map(self.inner.refresh(user).await) }.boxed()
    }
}

impl Mapped {
    /// The source's answer through the mapping.
    fn map(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Authenticated(id) => {
                match self.mapping.apply(self.inner.name(), id) {
                    Ok(id) => Outcome::Authenticated(id),
                    Err(why) => {
                        // A source minting a reserved name is misconfigured or attacked:
                        // a definitive no, and loud.
                        tracing::warn!(source = %self.inner.name(), reason = %why,
                                "rejected: identity mapping refused the source's answer");
                        Outcome::Rejected
                    }
                }
            }
            other => other,
        }
    }
}
