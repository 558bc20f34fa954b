//! The in-process verdict cache (moka), keyed by fingerprint.
//!
//! Entries live until their stale deadline; freshness is checked on read, so a stale
//! positive verdict is still at hand when stale-if-error is enabled.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::future::Cache;
use moka::Expiry;

use super::CachedVerdict;
use crate::fingerprint::Fingerprint;

struct UntilStale;

impl Expiry<Fingerprint, Arc<CachedVerdict>> for UntilStale {
    fn expire_after_create(
        &self,
        _key: &Fingerprint,
        value: &Arc<CachedVerdict>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.remaining(SystemTime::now()))
    }

    fn expire_after_update(
        &self,
        _key: &Fingerprint,
        value: &Arc<CachedVerdict>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.remaining(SystemTime::now()))
    }
}

#[derive(Clone)]
pub struct LocalCache {
    cache: Cache<Fingerprint, Arc<CachedVerdict>>,
}

impl LocalCache {
    pub fn new(max_entries: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilStale)
            .build();
        Self { cache }
    }

    pub async fn get(&self, key: &Fingerprint) -> Option<Arc<CachedVerdict>> {
        self.cache.get(key).await
    }

    pub async fn insert(&self, key: Fingerprint, value: Arc<CachedVerdict>) {
        if value.remaining(SystemTime::now()) > Duration::ZERO {
            self.cache.insert(key, value).await;
        }
    }

    pub async fn remove(&self, key: &Fingerprint) {
        self.cache.invalidate(key).await;
    }

    /// Drops every entry (after a configuration reload).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Drops every entry whose verdict names this user; returns how many.
    pub async fn remove_user(&self, username: &str) -> usize {
        let keys: Vec<Fingerprint> = self
            .cache
            .iter()
            .filter(|(_, v)| {
                v.verdict
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.username == username)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.cache.invalidate(k).await;
        }
        keys.len()
    }
}
