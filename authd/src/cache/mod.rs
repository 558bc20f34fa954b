//! Verdict caches. `verdict` is the cache the service asks: both levels, single flight and
//! the guards against caching what a revocation or reload made obsolete. `local` is the
//! in-process level in front of everything else; `redis` is the optional shared level behind
//! it, seen by `verdict` only through [`SharedStore`] (`memory` stands in for it in tests);
//! `seal` encrypts and authenticates what it stores.

pub mod local;
#[cfg(test)]
pub mod memory;
pub mod redis;
pub mod revocations;
pub mod seal;
pub mod verdict;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::fingerprint::Fingerprint;
use crate::identity::Verdict;
use local::LocalCache;
use revocations::{Denial, DenyList, Kind, Stored};

/// The shared level behind the in-process one, as the verdict cache uses it. Lookups never
/// fail (a failure is a miss); revocations report their failure, because the operator must
/// retry them.
pub trait SharedStore: Send + Sync + 'static {
    type Error: std::error::Error + Send + 'static;

    /// The shared verdict for `fp`, if there is one (fresh or not), and the revocation
    /// epoch a verdict computed from now on must be written under.
    fn get(&self, fp: &Fingerprint) -> impl Future<Output = SharedRead> + Send;

    /// Stores a definitive verdict, indexed by token and (for a positive one) by user,
    /// unless a revocation or lift since `epoch` was read moved the epoch: checked by the
    /// shared level itself, atomically with the write, so a late write of an answer
    /// computed before a revocation never lands after it.
    fn put(
        &self,
        fp: &Fingerprint,
        token_id: &Fingerprint,
        user_id: Option<&Fingerprint>,
        entry: &CachedVerdict,
        epoch: Epoch,
    ) -> impl Future<Output = ()> + Send;

    /// Drops every verdict of one token and tells every replica; returns how many.
    fn revoke_token(
        &self,
        token_id: &Fingerprint,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Drops every verdict naming one user and tells every replica; returns how many.
    fn revoke_user(
        &self,
        user_id: &Fingerprint,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Records a revocation durably and tells every replica; returns once it is stored.
    fn deny(&self, denial: &Denial) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Lifts a revocation and tells every replica; whether it was there.
    fn lift(
        &self,
        kind: Kind,
        id: &Fingerprint,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Every stored revocation (ended ones may be dropped) and the set's marker.
    fn denials(&self) -> impl Future<Output = Result<Stored, Self::Error>> + Send;

    /// Adds revocations (a resync writing back what this replica knows) and sets the
    /// marker; drops ended ones.
    fn add_denials(
        &self,
        denials: &[Denial],
        marker: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Starts applying every replica's revocations to `local` (purges) and `deny` (the
    /// deny-list), asking `deny` for a resync whenever messages may have been lost.
    fn subscribe(self: &Arc<Self>, local: LocalCache, deny: Arc<DenyList>);
}

/// The revocation epoch of a part of the shared level, as read before a lookup: every
/// revocation and every lift moves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch(pub String);

/// What a read of the shared level found.
#[derive(Debug, Default)]
pub struct SharedRead {
    pub entry: Option<CachedVerdict>,
    /// `None` when the shared level did not answer: nothing is written then.
    pub epoch: Option<Epoch>,
}

/// A cached verdict with its deadlines (wall-clock, so replicas sharing a cache agree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedVerdict {
    pub verdict: Verdict,
    /// Fresh until then.
    pub expires_at: SystemTime,
    /// May be served while a source cannot decide until then (stale-if-error); equal to
    /// `expires_at` when that is off or the verdict is negative.
    pub stale_until: SystemTime,
}

impl CachedVerdict {
    /// Builds the entry for a fresh verdict: TTL by sign, never past the credential's own
    /// expiry, stale grace only for positive verdicts.
    pub fn new(verdict: Verdict, now: SystemTime, ttls: &Ttls) -> Self {
        let (ttl, grace) = match &verdict.identity {
            Some(_) => (ttls.positive, ttls.stale_grace),
            None => (ttls.negative, Duration::ZERO),
        };
        let mut expires_at = now + ttl;
        let mut stale_until = expires_at + grace;
        if let Some(hard) = verdict.identity.as_ref().and_then(|i| i.expires_at) {
            expires_at = expires_at.min(hard);
            stale_until = stale_until.min(hard);
        }
        Self {
            verdict,
            expires_at,
            stale_until,
        }
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    pub fn is_servable_stale(&self, now: SystemTime) -> bool {
        self.verdict.authenticated() && now < self.stale_until
    }

    /// Time left until the entry is of no use at all.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.stale_until
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }
}

/// Lifetimes of cached verdicts.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub positive: Duration,
    pub negative: Duration,
    /// Stale-if-error grace for positive verdicts; zero means off.
    pub stale_grace: Duration,
}
