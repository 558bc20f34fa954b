//! Verdict caches. `local` is the in-process level in front of everything else; `redis`
//! is the optional shared level behind it.

pub mod local;
pub mod redis;

use std::time::{Duration, SystemTime};

use crate::identity::Verdict;

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
