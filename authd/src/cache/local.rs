//! The in-process verdict cache (moka), keyed by fingerprint.
//!
//! Entries live until their stale deadline; freshness is checked on read, so a stale
//! positive verdict is still at hand when stale-if-error is enabled. With a shared level
//! behind it, an entry is trusted only until `fresh_until` (capped by `cache.local_ttl`),
//! after which Redis is asked again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::future::Cache;
use moka::Expiry;

use super::CachedVerdict;
use crate::fingerprint::Fingerprint;

/// One in-process entry: the verdict plus what revocation needs to find it.
#[derive(Debug, Clone)]
pub struct LocalEntry {
    pub verdict: Arc<CachedVerdict>,
    /// Served as a local hit only before this (≤ `verdict.expires_at`).
    pub fresh_until: SystemTime,
    /// `Fingerprinter::token_id` of the token, for RevokeToken whatever the audiences.
    pub token_id: Fingerprint,
    /// `Fingerprinter::username` of a positive verdict's user, for RevokeUser.
    pub user_id: Option<Fingerprint>,
}

impl LocalEntry {
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until && self.verdict.is_fresh(now)
    }
}

struct UntilStale;

impl Expiry<Fingerprint, LocalEntry> for UntilStale {
    fn expire_after_create(
        &self,
        _key: &Fingerprint,
        value: &LocalEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.verdict.remaining(SystemTime::now()))
    }

    fn expire_after_update(
        &self,
        _key: &Fingerprint,
        value: &LocalEntry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.verdict.remaining(SystemTime::now()))
    }
}

#[derive(Clone)]
pub struct LocalCache {
    cache: Cache<Fingerprint, LocalEntry>,
    /// Bumped by every revocation, so a lookup that started before one does not cache what
    /// it found afterwards (it could be the very verdict just revoked).
    generation: Arc<AtomicU64>,
}

impl LocalCache {
    pub fn new(max_entries: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilStale)
            .build();
        Self {
            cache,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub async fn get(&self, key: &Fingerprint) -> Option<LocalEntry> {
        self.cache.get(key).await
    }

    pub async fn insert(&self, key: Fingerprint, value: LocalEntry) {
        if value.verdict.remaining(SystemTime::now()) > Duration::ZERO {
            self.cache.insert(key, value).await;
        }
    }

    pub async fn remove(&self, key: &Fingerprint) {
        self.cache.invalidate(key).await;
    }

    /// Drops every entry matching `pred`; returns how many.
    async fn remove_where(&self, pred: impl Fn(&LocalEntry) -> bool) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<Fingerprint> = self
            .cache
            .iter()
            .filter(|(_, v)| pred(v))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.cache.invalidate(k).await;
        }
        keys.len()
    }

    /// Drops every entry for one token (any audiences); returns how many.
    pub async fn remove_token(&self, token_id: &Fingerprint) -> usize {
        self.remove_where(|v| v.token_id == *token_id).await
    }

    /// Drops every entry whose verdict names this user (by keyed hash); returns how many.
    pub async fn remove_user(&self, user_id: &Fingerprint) -> usize {
        self.remove_where(|v| v.user_id.as_ref() == Some(user_id))
            .await
    }

    /// Drops everything: after a gap in revocation messages nothing local can be trusted.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }
}
