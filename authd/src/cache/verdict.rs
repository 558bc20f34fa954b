//! The verdict cache: the local level, then (one lookup per key at a time) the shared level,
//! then the sources; stale-if-error when the sources cannot decide; revocation.
//!
//! Two guards keep an obsolete answer out of both levels. Single flight: concurrent misses
//! for one key share one lookup. The generation guard: a lookup notes the local level's
//! generation before it starts, and every revocation (this replica's or another's, through
//! the subscriber) and every reload bumps it; a lookup that sees it moved answers its
//! callers but caches nothing, since what it found may be what was just revoked or what the
//! old sources said. A reload also forgets the lookups in flight, so no request after it
//! joins one still running against the old sources.
//!
//! What came from where is typed ([`Answer`], [`CacheOutcome`], [`Level`]); strings appear
//! only as metric labels (`label`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::local::{LocalCache, LocalEntry};
use super::redis::SharedCache;
use super::{CachedVerdict, SharedStore, Ttls};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::identity::Verdict;
use crate::metrics::{LevelLabels, Metrics};

/// A cache level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Local,
    Shared,
}

impl Level {
    /// The `level` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Level::Local => "local",
            Level::Shared => "shared",
        }
    }

    fn labels(self) -> LevelLabels {
        LevelLabels {
            level: self.label(),
        }
    }
}

/// What the verdict cache answered for one lookup.
#[derive(Debug)]
pub enum Answer {
    /// A fresh verdict found in a cache level.
    Hit(Arc<CachedVerdict>, Level),
    /// A verdict the sources gave just now.
    Miss(Arc<CachedVerdict>),
    /// The sources could not decide; an expired positive verdict still within its stale
    /// grace is served instead (stale-if-error).
    Stale {
        verdict: Arc<CachedVerdict>,
        level: Level,
        error: Arc<str>,
    },
    /// The sources could not decide and no cached verdict can stand in. The message is
    /// safe to log and to return.
    Undecided(Arc<str>),
}

impl Answer {
    pub fn outcome(&self) -> CacheOutcome {
        match self {
            Answer::Hit(_, Level::Local) => CacheOutcome::HitLocal,
            Answer::Hit(_, Level::Shared) => CacheOutcome::HitShared,
            Answer::Miss(_) | Answer::Undecided(_) => CacheOutcome::Miss,
            Answer::Stale { .. } => CacheOutcome::Stale,
        }
    }
}

/// How a review's verdict was obtained, as the `cache` label of `authd_verdicts` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Rejected before any lookup (empty or oversized token).
    None,
    HitLocal,
    HitShared,
    /// The sources were asked (whether or not they could decide).
    Miss,
    Stale,
}

impl CacheOutcome {
    /// Whether the verdict came from a cache (the response's `cached`).
    pub fn cached(self) -> bool {
        matches!(
            self,
            CacheOutcome::HitLocal | CacheOutcome::HitShared | CacheOutcome::Stale
        )
    }

    /// The `cache` metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::None => "none",
            CacheOutcome::HitLocal => "hit_local",
            CacheOutcome::HitShared => "hit_shared",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// The shared level and how long the local level may trust its copies when there is one.
pub struct SharedLevel<S = SharedCache> {
    pub cache: Arc<S>,
    pub local_ttl: Duration,
}

/// A lookup that could not decide: a safe message, and the shared level's expired positive
/// verdict if it had one still within its stale grace.
#[derive(Clone)]
struct Undecided {
    error: Arc<str>,
    shared_stale: Option<Arc<CachedVerdict>>,
}

/// Where a shared lookup found its verdict.
#[derive(Clone, Copy)]
enum Found {
    Shared,
    Source,
}

/// What a lookup shared by concurrent callers resolves to.
type Flight = Result<(Arc<CachedVerdict>, Found), Undecided>;

/// A lookup in progress, as the single-flight map holds it.
struct InFlight {
    /// Which lookup this is: a lookup that ends removes its own entry only, never a newer
    /// one for the same key (started after a reload forgot it).
    id: u64,
    result: Shared<BoxFuture<'static, Flight>>,
}

/// Held by a lookup's task: removes the lookup from the single-flight map when the task
/// ends, whether it finished, panicked or was dropped with the runtime.
struct LeavesTheMap<S: SharedStore> {
    cache: Arc<VerdictCache<S>>,
    fp: Fingerprint,
    id: u64,
}

impl<S: SharedStore> Drop for LeavesTheMap<S> {
    fn drop(&mut self) {
        let mut inflight = self
            .cache
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if inflight.get(&self.fp).is_some_and(|f| f.id == self.id) {
            inflight.remove(&self.fp);
        }
    }
}

/// Both cache levels with their guards. Shared behind an `Arc` (lookups in flight hold it).
pub struct VerdictCache<S = SharedCache> {
    /// Keys every level and index; the only form in which a token is ever a key.
    fingerprinter: Fingerprinter,
    local: LocalCache,
    shared: Option<SharedLevel<S>>,
    ttls: Ttls,
    /// Lookups in progress, so concurrent misses for one key make one source call.
    inflight: Mutex<HashMap<Fingerprint, InFlight>>,
    /// The next lookup's `InFlight::id`.
    next_flight: AtomicU64,
    metrics: Arc<Metrics>,
}

impl<S: SharedStore> VerdictCache<S> {
    /// With a shared level this starts its revocation subscriber (for Redis: a Tokio task,
    /// so it must run inside a Tokio runtime).
    pub fn new(
        fingerprinter: Fingerprinter,
        ttls: Ttls,
        max_entries: u64,
        shared: Option<SharedLevel<S>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let local = LocalCache::new(max_entries);
        if let Some(s) = &shared {
            s.cache.subscribe(local.clone());
        }
        Self {
            fingerprinter,
            local,
            shared,
            ttls,
            inflight: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn fingerprinter(&self) -> &Fingerprinter {
        &self.fingerprinter
    }

    /// The verdict for `fp` (the fingerprint of `token` and its audiences): a fresh local
    /// copy at once; otherwise one lookup per key at a time through the shared level and
    /// then `ask` (the sources), whose definitive verdict is stored in both levels unless a
    /// revocation or reload happened meanwhile. `ask` is called only by the caller that
    /// starts a lookup.
    pub async fn lookup<F, Fut>(self: &Arc<Self>, fp: Fingerprint, token: &str, ask: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verdict, Arc<str>>> + Send + 'static,
    {
        let now = SystemTime::now();
        let local = match self.local.get(&fp).await {
            Some(entry) if entry.is_fresh(now) => {
                self.metrics.local_hits.inc();
                return Answer::Hit(entry.verdict, Level::Local);
            }
            local => local,
        };
        self.metrics.local_misses.inc();
        let undecided = match self.coalesced(fp, token, ask).await {
            Ok((entry, Found::Shared)) => return Answer::Hit(entry, Level::Shared),
            Ok((entry, Found::Source)) => return Answer::Miss(entry),
            Err(undecided) => undecided,
        };
        match local {
            // Past its local trust window but within its TTL: as good as a shared hit
            // would have been.
            Some(l) if l.verdict.is_fresh(now) => {
                self.metrics.local_hits.inc();
                Answer::Hit(l.verdict, Level::Local)
            }
            local => match self.stale_if_error(local.map(|l| l.verdict), undecided.shared_stale) {
                Some((verdict, level)) => {
                    self.metrics
                        .stale_serves
                        .get_or_create(&level.labels())
                        .inc();
                    Answer::Stale {
                        verdict,
                        level,
                        error: undecided.error,
                    }
                }
                None => Answer::Undecided(undecided.error),
            },
        }
    }

    /// The cached positive verdict to serve while the source cannot decide, if stale-if-error
    /// is on and either level holds one still within its grace (the later one wins).
    fn stale_if_error(
        &self,
        local: Option<Arc<CachedVerdict>>,
        shared: Option<Arc<CachedVerdict>>,
    ) -> Option<(Arc<CachedVerdict>, Level)> {
        if self.ttls.stale_grace.is_zero() {
            return None;
        }
        let now = SystemTime::now();
        [(local, Level::Local), (shared, Level::Shared)]
            .into_iter()
            .filter_map(|(e, level)| e.map(|e| (e, level)))
            .filter(|(e, _)| e.is_servable_stale(now))
            .max_by_key(|(e, _)| e.stale_until)
    }

    /// One lookup per key at a time; concurrent callers share its result.
    ///
    /// The lookup runs in a task of its own, not in its callers: a caller that goes away
    /// (a cancelled review) neither stops it halfway, holding whatever the sources held
    /// (a connection, a lock), nor parks it in the map for a later caller to resume. The
    /// task removes its own entry when it ends, however it ends, and its length is bounded
    /// by the pipeline's deadline (the sources' timeouts).
    async fn coalesced<F, Fut>(self: &Arc<Self>, fp: Fingerprint, token: &str, ask: F) -> Flight
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verdict, Arc<str>>> + Send + 'static,
    {
        // Outside the lock that every miss takes.
        let token_id = self.fingerprinter.token_id(token);
        let fut = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&fp) {
                Some(flight) => {
                    self.metrics.coalesced.inc();
                    flight.result.clone()
                }
                None => {
                    // Noted before the sources are chosen, so a reload's swap cannot slip
                    // between the two unseen.
                    let generation = self.local.generation();
                    let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                    let asked = ask();
                    let this = self.clone();
                    // Boxed before it is spawned: the lookup's future is large (the
                    // sources' state machines), and the spawn moves it several times.
                    let task = tokio::spawn(Box::pin(async move {
                        let _leaves = LeavesTheMap {
                            cache: this.clone(),
                            fp,
                            id,
                        };
                        this.fetch(fp, token_id, generation, asked).await
                    }));
                    let result = task
                        .map(|joined| {
                            joined.unwrap_or_else(|_| {
                                Err(Undecided {
                                    error: "the lookup failed".into(),
                                    shared_stale: None,
                                })
                            })
                        })
                        .boxed()
                        .shared();
                    inflight.insert(
                        fp,
                        InFlight {
                            id,
                            result: result.clone(),
                        },
                    );
                    result
                }
            }
        };
        fut.await
    }

    /// The shared level, then the sources; a definitive verdict is stored in both levels
    /// unless the generation moved since `generation`.
    async fn fetch(
        &self,
        fp: Fingerprint,
        token_id: Fingerprint,
        generation: u64,
        ask: impl Future<Output = Result<Verdict, Arc<str>>>,
    ) -> Flight {
        // A revocation while this lookup runs: answer with what was found, but cache none
        // of it (it may be what was just revoked).
        let revoked_meanwhile = || self.local.generation() != generation;
        let mut shared_stale = None;
        if let Some(shared) = &self.shared {
            match shared.cache.get(&fp).await {
                Some(entry) if entry.is_fresh(SystemTime::now()) => {
                    self.metrics
                        .cache_hits
                        .get_or_create(&Level::Shared.labels())
                        .inc();
                    let entry = Arc::new(entry);
                    if !revoked_meanwhile() {
                        self.store_local(fp, token_id, entry.clone()).await;
                    }
                    return Ok((entry, Found::Shared));
                }
                other => {
                    self.metrics
                        .cache_misses
                        .get_or_create(&Level::Shared.labels())
                        .inc();
                    shared_stale = other.map(Arc::new);
                }
            }
        }
        let verdict = match ask.await {
            Ok(v) => v,
            Err(error) => {
                return Err(Undecided {
                    error,
                    shared_stale,
                })
            }
        };
        let entry = Arc::new(CachedVerdict::new(verdict, SystemTime::now(), &self.ttls));
        if revoked_meanwhile() {
            return Ok((entry, Found::Source));
        }
        let user_id = self.store_local(fp, token_id, entry.clone()).await;
        if let Some(shared) = &self.shared {
            shared
                .cache
                .put(&fp, &token_id, user_id.as_ref(), &entry)
                .await;
        }
        Ok((entry, Found::Source))
    }

    /// Puts a verdict in the local level, trusted for at most `local_ttl` when a shared
    /// level is behind it. Returns the user id it is indexed under.
    async fn store_local(
        &self,
        fp: Fingerprint,
        token_id: Fingerprint,
        verdict: Arc<CachedVerdict>,
    ) -> Option<Fingerprint> {
        let user_id = verdict
            .verdict
            .identity
            .as_ref()
            .map(|i| self.fingerprinter.username(&i.username));
        let fresh_until = match &self.shared {
            Some(s) => verdict.expires_at.min(SystemTime::now() + s.local_ttl),
            None => verdict.expires_at,
        };
        let entry = LocalEntry {
            verdict,
            fresh_until,
            token_id,
            user_id,
        };
        self.local.insert(fp, entry).await;
        user_id
    }

    /// Drops every cached verdict: new requests must not join a lookup still running
    /// against the old sources, and lookups started before must not cache what those said.
    /// For a reload; the shared level keeps its verdicts (each replica reloads on its own).
    /// The forgotten lookups still end by their deadline and remove nothing newer.
    pub fn invalidate_all(&self) {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.local.clear();
    }

    /// Drops every cached verdict for this token, whatever the audiences: from the shared
    /// level (which tells every replica) first, then from this replica. Returns how many
    /// verdicts left the shared level (0 without one). An error means the shared level
    /// could not be reached; this replica has still dropped its copies.
    pub async fn revoke_token(&self, token: &str) -> Result<u64, S::Error> {
        let id = self.fingerprinter.token_id(token);
        let shared = match &self.shared {
            Some(s) => Some(s.cache.revoke_token(&id).await),
            None => None,
        };
        let local = self.local.remove_token(&id).await;
        tracing::info!(token_id = %id.short(), local, shared = ?shared.as_ref().map(|r| r.as_ref().ok()), "token revoked");
        shared.unwrap_or(Ok(0))
    }

    /// Drops every cached verdict naming this user, as `revoke_token` does for a token.
    pub async fn revoke_user(&self, username: &str) -> Result<u64, S::Error> {
        let id = self.fingerprinter.username(username);
        let shared = match &self.shared {
            Some(s) => Some(s.cache.revoke_user(&id).await),
            None => None,
        };
        let local = self.local.remove_user(&id).await;
        tracing::info!(user_id = %id.short(), local, shared = ?shared.as_ref().map(|r| r.as_ref().ok()), "user revoked");
        shared.unwrap_or(Ok(0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use tokio::sync::{watch, Notify};

    use super::*;
    use crate::cache::memory::MemoryShared;
    use crate::identity::Identity;

    const TOKEN: &str = "a-token";

    type Said = Result<Verdict, Arc<str>>;

    /// A source stand-in: counts its calls, says when one has started, and holds every call
    /// until the test opens it.
    struct Source {
        answer: Said,
        calls: AtomicUsize,
        started: Notify,
        open: watch::Sender<bool>,
    }

    impl Source {
        fn new(answer: Said) -> Arc<Self> {
            Self::with_gate(answer, true)
        }

        fn held(answer: Said) -> Arc<Self> {
            Self::with_gate(answer, false)
        }

        fn with_gate(answer: Said, open: bool) -> Arc<Self> {
            Arc::new(Self {
                answer,
                calls: AtomicUsize::new(0),
                started: Notify::new(),
                open: watch::channel(open).0,
            })
        }

        fn open(&self) {
            self.open.send_replace(true);
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// What the service hands the cache: called only by a lookup's first caller.
        fn ask(self: &Arc<Self>) -> impl FnOnce() -> BoxFuture<'static, Said> {
            let this = self.clone();
            move || {
                async move {
                    this.calls.fetch_add(1, Ordering::SeqCst);
                    this.started.notify_one();
                    let mut open = this.open.subscribe();
                    let _ = open.wait_for(|o| *o).await;
                    this.answer.clone()
                }
                .boxed()
            }
        }
    }

    fn user(name: &str) -> Said {
        Ok(Verdict {
            identity: Some(Identity {
                username: name.into(),
                ..Default::default()
            }),
            source: "test".into(),
        })
    }

    fn down() -> Said {
        Err("identity source \"test\" could not decide: down".into())
    }

    type Cache = Arc<VerdictCache<MemoryShared>>;

    fn cache(shared: Option<&Arc<MemoryShared>>, stale_grace: Duration) -> Cache {
        let shared = shared.map(|cache| SharedLevel {
            cache: cache.clone(),
            local_ttl: Duration::from_secs(10),
        });
        Arc::new(VerdictCache::new(
            Fingerprinter::new(b"the verdict cache test key 0123456789"),
            Ttls {
                positive: Duration::from_secs(60),
                negative: Duration::from_secs(60),
                stale_grace,
            },
            100,
            shared,
            Arc::new(Metrics::new()),
        ))
    }

    fn fp(c: &Cache) -> Fingerprint {
        c.fingerprinter().token(TOKEN, &[])
    }

    async fn lookup(c: &Cache, source: &Arc<Source>) -> Answer {
        c.lookup(fp(c), TOKEN, source.ask()).await
    }

    /// Starts a lookup in its own task, as a concurrent request would.
    fn spawn_lookup(c: &Cache, source: &Arc<Source>) -> tokio::task::JoinHandle<Answer> {
        let (c, source) = (c.clone(), source.clone());
        tokio::spawn(async move { lookup(&c, &source).await })
    }

    /// Lets spawned lookups run until `n` of them have joined the one in flight.
    async fn until_coalesced(c: &Cache, n: u64) {
        while c.metrics.coalesced.get() < n {
            tokio::task::yield_now().await;
        }
    }

    /// The user a verdict names, and how the cache answered.
    fn seen(answer: &Answer) -> (Option<&str>, CacheOutcome) {
        let verdict = match answer {
            Answer::Hit(v, _) | Answer::Miss(v) | Answer::Stale { verdict: v, .. } => Some(v),
            Answer::Undecided(_) => None,
        };
        let name = verdict
            .and_then(|v| v.verdict.identity.as_ref())
            .map(|i| i.username.as_str());
        (name, answer.outcome())
    }

    /// A positive verdict past its TTL, servable stale for `stale_for` more.
    fn expired(name: &str, stale_for: Duration) -> CachedVerdict {
        let now = SystemTime::now();
        CachedVerdict {
            verdict: user(name).unwrap(),
            expires_at: now - Duration::from_secs(1),
            stale_until: now + stale_for,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_source_call() {
        let c = cache(None, Duration::ZERO);
        let source = Source::held(user("alice"));
        let lookups: Vec<_> = (0..8).map(|_| spawn_lookup(&c, &source)).collect();
        until_coalesced(&c, 7).await;
        source.open();
        for l in lookups {
            assert_eq!(seen(&l.await.unwrap()), (Some("alice"), CacheOutcome::Miss));
        }
        assert_eq!(source.calls(), 1);
        let again = lookup(&c, &source).await;
        assert_eq!(seen(&again), (Some("alice"), CacheOutcome::HitLocal));
        assert_eq!(source.calls(), 1);
    }

    fn in_flight(c: &Cache) -> usize {
        c.inflight.lock().unwrap().len()
    }

    /// Waits (a bounded time) for every lookup to leave the single-flight map.
    async fn until_no_lookup_in_flight(c: &Cache) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while in_flight(c) > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "a lookup stayed in the single-flight map");
    }

    #[tokio::test]
    async fn a_cancelled_caller_leaves_no_parked_lookup() {
        let c = cache(None, Duration::ZERO);
        let source = Source::held(user("alice"));
        let caller = spawn_lookup(&c, &source);
        source.started.notified().await;
        // The review is cancelled while the source is still answering.
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        source.open();
        // The lookup ran to its end without a caller and left the map...
        until_no_lookup_in_flight(&c).await;
        // ...and what it found is cached, not parked for a later caller to resume.
        let next = lookup(&c, &source).await;
        assert_eq!(seen(&next), (Some("alice"), CacheOutcome::HitLocal));
        assert_eq!(source.calls(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_block_later_callers() {
        let c = cache(None, Duration::ZERO);
        let source = Source::held(user("alice"));
        let first = spawn_lookup(&c, &source);
        source.started.notified().await;
        first.abort();
        let _ = first.await;
        // A later caller shares the lookup, which is still running, and gets its answer.
        let later = spawn_lookup(&c, &source);
        until_coalesced(&c, 1).await;
        source.open();
        let answer = tokio::time::timeout(Duration::from_secs(5), later)
            .await
            .expect("the later caller was blocked")
            .unwrap();
        assert_eq!(seen(&answer), (Some("alice"), CacheOutcome::Miss));
        assert_eq!(source.calls(), 1);
        until_no_lookup_in_flight(&c).await;
    }

    #[tokio::test]
    async fn a_lookup_ending_after_a_reload_keeps_the_newer_one_in_the_map() {
        let c = cache(None, Duration::ZERO);
        let old = Source::held(user("alice"));
        let running = spawn_lookup(&c, &old);
        old.started.notified().await;
        c.invalidate_all();
        let new = Source::held(user("bob"));
        let newer = spawn_lookup(&c, &new);
        new.started.notified().await;
        // The old lookup ends while the newer one for the same key still runs.
        old.open();
        assert_eq!(seen(&running.await.unwrap()).0, Some("alice"));
        assert_eq!(in_flight(&c), 1);
        // A third caller joins the newer lookup instead of starting another.
        let third = spawn_lookup(&c, &new);
        until_coalesced(&c, 1).await;
        new.open();
        assert_eq!(seen(&newer.await.unwrap()).0, Some("bob"));
        assert_eq!(seen(&third.await.unwrap()).0, Some("bob"));
        assert_eq!((old.calls(), new.calls()), (1, 1));
        until_no_lookup_in_flight(&c).await;
    }

    #[tokio::test]
    async fn a_shared_hit_fills_the_local_level() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::ZERO);
        let entry = CachedVerdict::new(user("alice").unwrap(), SystemTime::now(), &c.ttls);
        shared.insert(fp(&c), entry);
        let source = Source::new(user("bob"));
        let first = lookup(&c, &source).await;
        assert_eq!(seen(&first), (Some("alice"), CacheOutcome::HitShared));
        let second = lookup(&c, &source).await;
        assert_eq!(seen(&second), (Some("alice"), CacheOutcome::HitLocal));
        assert_eq!(source.calls(), 0);
    }

    #[tokio::test]
    async fn a_revocation_during_a_lookup_keeps_its_answer_out_of_both_levels() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::ZERO);
        let source = Source::held(user("alice"));
        let running = spawn_lookup(&c, &source);
        source.started.notified().await;
        c.revoke_token(TOKEN).await.unwrap();
        source.open();
        // Its caller gets what the source said...
        let answer = running.await.unwrap();
        assert_eq!(seen(&answer), (Some("alice"), CacheOutcome::Miss));
        // ...but neither level kept it.
        assert_eq!(shared.stored(), 0);
        let next = lookup(&c, &source).await;
        assert_eq!(seen(&next), (Some("alice"), CacheOutcome::Miss));
        assert_eq!(source.calls(), 2);
        // Cached again once no revocation races the lookup.
        assert_eq!(shared.stored(), 1);
        let last = lookup(&c, &source).await;
        assert_eq!(seen(&last), (Some("alice"), CacheOutcome::HitLocal));
    }

    /// Records today's behaviour, which is not a guarantee against the source: a revocation
    /// does not end the lookup in flight, so a request arriving after it (before the
    /// lookup ends) shares that lookup's answer; the answer is still not cached.
    #[tokio::test]
    async fn a_request_after_a_revocation_shares_the_lookup_in_flight() {
        let c = cache(None, Duration::ZERO);
        let source = Source::held(user("alice"));
        let first = spawn_lookup(&c, &source);
        source.started.notified().await;
        c.revoke_token(TOKEN).await.unwrap();
        let after = spawn_lookup(&c, &source);
        until_coalesced(&c, 1).await;
        source.open();
        assert_eq!(seen(&first.await.unwrap()).0, Some("alice"));
        assert_eq!(seen(&after.await.unwrap()).0, Some("alice"));
        assert_eq!(source.calls(), 1);
        assert_eq!(seen(&lookup(&c, &source).await).1, CacheOutcome::Miss);
    }

    #[tokio::test]
    async fn revoking_a_user_purges_both_levels_on_every_replica() {
        let shared = Arc::new(MemoryShared::default());
        let (a, b) = (
            cache(Some(&shared), Duration::ZERO),
            cache(Some(&shared), Duration::ZERO),
        );
        let source = Source::new(user("alice"));
        lookup(&a, &source).await;
        assert_eq!(seen(&lookup(&b, &source).await).1, CacheOutcome::HitShared);
        assert_eq!(a.revoke_user("alice").await.unwrap(), 1);
        assert_eq!(shared.stored(), 0);
        assert_eq!(seen(&lookup(&b, &source).await).1, CacheOutcome::Miss);
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn a_reload_during_a_lookup_keeps_the_old_answer_out() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::ZERO);
        let old = Source::held(user("alice"));
        let running = spawn_lookup(&c, &old);
        old.started.notified().await;
        // What `Authd::reload` does after swapping the pipeline.
        c.invalidate_all();
        // A request after the reload does not join the old lookup: it asks the new sources.
        let new = Source::new(user("bob"));
        let fresh = lookup(&c, &new).await;
        assert_eq!(seen(&fresh), (Some("bob"), CacheOutcome::Miss));
        old.open();
        assert_eq!(seen(&running.await.unwrap()).0, Some("alice"));
        // The old lookup, ending last, overwrote nothing.
        let cached = lookup(&c, &new).await;
        assert_eq!(seen(&cached), (Some("bob"), CacheOutcome::HitLocal));
        let in_shared = shared.entry(&fp(&c)).and_then(|e| e.verdict.identity);
        assert_eq!(in_shared.map(|i| i.username).as_deref(), Some("bob"));
        assert_eq!((old.calls(), new.calls()), (1, 1));
    }

    #[tokio::test]
    async fn undecided_is_never_cached() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::from_secs(60));
        let source = Source::new(down());
        for calls in 1..=2 {
            let answer = lookup(&c, &source).await;
            assert!(matches!(answer, Answer::Undecided(ref e) if e.contains("down")));
            assert_eq!(answer.outcome(), CacheOutcome::Miss);
            assert_eq!(source.calls(), calls);
        }
        assert_eq!(shared.stored(), 0);
    }

    #[tokio::test]
    async fn stale_if_error_serves_the_later_of_both_levels() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::from_secs(60));
        let key = fp(&c);
        let token_id = c.fingerprinter().token_id(TOKEN);
        shared.insert(key, expired("from-shared", Duration::from_secs(30)));
        let source = Source::new(down());
        let answer = lookup(&c, &source).await;
        assert_eq!(seen(&answer), (Some("from-shared"), CacheOutcome::Stale));
        assert!(
            matches!(answer, Answer::Stale { level: Level::Shared, ref error, .. }
            if error.contains("down"))
        );
        let local = expired("from-local", Duration::from_secs(50));
        c.store_local(key, token_id, Arc::new(local)).await;
        let answer = lookup(&c, &source).await;
        assert_eq!(seen(&answer), (Some("from-local"), CacheOutcome::Stale));
        assert!(matches!(
            answer,
            Answer::Stale {
                level: Level::Local,
                ..
            }
        ));
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn without_a_stale_grace_an_error_stays_an_error() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::ZERO);
        shared.insert(fp(&c), expired("alice", Duration::from_secs(30)));
        let answer = lookup(&c, &Source::new(down())).await;
        assert!(matches!(answer, Answer::Undecided(_)));
    }
}
