//! Values built from files that are rebuilt when those files change (certificates and
//! keys), so rotation needs no restart: readers take the current `Arc` per connection, so
//! new connections see new material and open ones keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often watched files are checked (modification time and size).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A value rebuilt by a background task whenever one of its files changes.
pub struct Reloading<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the value now (errors stop start-up) and then every time `paths` change. A
    /// failed rebuild (say, a certificate written before its key) keeps the previous value
    /// and is retried on the next change. The watcher stops when every handle is dropped.
    pub fn start<F>(what: &'static str, paths: Vec<PathBuf>, build: F) -> anyhow::Result<Self>
    where
        F: Fn() -> anyhow::Result<T> + Send + 'static,
    {
        let mut seen = stamp(&paths);
        let current = Arc::new(RwLock::new(Arc::new(build()?)));
        let weak = Arc::downgrade(&current);
        tokio::spawn(async move {
            let mut failed: Option<Stamp> = None;
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                let now = stamp(&paths);
                if now == seen || failed.as_ref() == Some(&now) {
                    continue;
                }
                match build() {
                    Ok(value) => {
                        *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                        seen = now;
                        failed = None;
                        tracing::info!(what, "files changed: reloaded; new connections use them");
                    }
                    Err(e) => {
                        tracing::warn!(what, error = %format!("{e:#}"),
                            "files changed but cannot be loaded; keeping the previous ones");
                        failed = Some(now);
                    }
                }
            }
        });
        Ok(Self { current })
    }
}

impl<T> Reloading<T> {
    /// The current value. `#[inline]`: taken per connection, from other crates.
    #[inline]
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
