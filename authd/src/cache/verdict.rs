//! The verdict cache: the local level, then (one lookup per key at a time) the shared level,
//! then the sources; stale-if-error when the sources cannot decide; revocation.
//!
//! Revocation is a deny-list (`revocations.rs`), not only a purge: every answer — local hit,
//! shared hit, joined lookup, fresh lookup, stale-if-error — passes it just before it is
//! returned, so nothing computed before a revocation is served after it, wherever it was
//! cached. The purge and the guards below only keep the levels tidy.
//!
//! Two guards keep an obsolete answer out of both levels. Single flight: concurrent misses
//! for one key share one lookup. The generation guard: a lookup notes the local level's
//! generation before it starts, and every revocation (this replica's or another's, through
//! the subscriber) and every reload bumps it; a lookup that sees it moved answers its
//! callers but caches nothing, since what it found may be what was just revoked or what the
//! old sources said. A reload also forgets the lookups in flight, so no request after it
//! joins one still running against the old sources. Across replicas the shared level keeps
//! the same promise itself: a lookup writes its verdict under the revocation epoch it read
//! before asking the sources, and the write is refused if any replica revoked or lifted
//! anything since (`SharedStore::put`), before this replica has even heard of it.
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
use super::revocations::{self, Denial, DenyList, Kind};
use super::{CachedVerdict, SharedStore, Ttls};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::identity::{Identity, Verdict};
use crate::metrics::{LevelLabels, Metrics};
use crate::source::Expiry;

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
    /// A positive verdict, obtained as the outcome says, that a revocation in force denies:
    /// a definitive no.
    Revoked(CacheOutcome),
}

impl Answer {
    pub fn outcome(&self) -> CacheOutcome {
        match self {
            Answer::Hit(_, Level::Local) => CacheOutcome::HitLocal,
            Answer::Hit(_, Level::Shared) => CacheOutcome::HitShared,
            Answer::Miss(_) | Answer::Undecided(_) => CacheOutcome::Miss,
            Answer::Stale { .. } => CacheOutcome::Stale,
            Answer::Revoked(outcome) => *outcome,
        }
    }

    /// The positive verdict the answer would serve, if any.
    fn positive(&self) -> Option<&CachedVerdict> {
        match self {
            Answer::Hit(v, _) | Answer::Miss(v) | Answer::Stale { verdict: v, .. } => {
                Some(&**v).filter(|v| v.verdict.authenticated())
            }
            Answer::Undecided(_) | Answer::Revoked(_) => None,
        }
    }
}

/// How revocations behave.
#[derive(Debug, Clone, Copy)]
pub struct RevocationSettings {
    /// How long a token revocation lasts when the token's own expiry is unknown.
    pub max_token_ttl: Duration,
    /// Between full resynchronisations of the deny-list from the shared level.
    pub resync_every: Duration,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            max_token_ttl: Duration::from_secs(7 * 24 * 3600),
            resync_every: Duration::from_secs(10),
        }
    }
}

/// What a revocation did.
#[derive(Debug, Clone, Copy)]
pub struct Revoked {
    pub denial: Denial,
    /// Verdicts dropped from the shared level (0 without one).
    pub removed: u64,
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
    /// Revocations in force, checked on every answer.
    deny: Arc<DenyList>,
    revocation: RevocationSettings,
    metrics: Arc<Metrics>,
}

impl<S: SharedStore> VerdictCache<S> {
    /// With a shared level this starts its revocation subscriber and the deny-list's
    /// resync (for Redis: Tokio tasks, so it must run inside a Tokio runtime).
    pub fn new(
        fingerprinter: Fingerprinter,
        ttls: Ttls,
        max_entries: u64,
        shared: Option<SharedLevel<S>>,
        metrics: Arc<Metrics>,
        revocation: RevocationSettings,
    ) -> Self {
        let local = LocalCache::new(max_entries);
        let deny = Arc::new(DenyList::default());
        match &shared {
            Some(s) => {
                s.cache.subscribe(local.clone(), deny.clone());
                deny.spawn_resync(s.cache.clone(), revocation.resync_every);
            }
            None => tracing::warn!(
                "no shared cache (Redis): revocations hold in this process only and are lost when it restarts"
            ),
        }
        Self {
            fingerprinter,
            local,
            shared,
            ttls,
            inflight: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            deny,
            revocation,
            metrics,
        }
    }

    /// Loads the deny-list from the shared level (at start, before serving). An error
    /// leaves it to the periodic resync.
    pub async fn load_revocations(&self) -> Result<usize, S::Error> {
        match &self.shared {
            Some(s) => self.deny.resync(&*s.cache).await,
            None => Ok(0),
        }
    }

    /// Whether a revocation by credential id is in force (so the caller computes the
    /// token's credential id only then).
    pub fn denies_credentials(&self) -> bool {
        self.deny.has_credentials()
    }

    pub fn fingerprinter(&self) -> &Fingerprinter {
        &self.fingerprinter
    }

    /// The verdict for `fp` (the fingerprint of `token` and its audiences): a fresh local
    /// copy at once; otherwise one lookup per key at a time through the shared level and
    /// then `ask` (the sources), whose definitive verdict is stored in both levels unless a
    /// revocation or reload happened meanwhile. `ask` is called only by the caller that
    /// starts a lookup.
    ///
    /// Every answer passes the deny-list last: `credential` is the token's credential id
    /// (its source's) when a credential revocation is in force (`denies_credentials`).
    pub async fn lookup<F, Fut>(
        self: &Arc<Self>,
        fp: Fingerprint,
        token: &str,
        credential: Option<&str>,
        ask: F,
    ) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verdict, Arc<str>>> + Send + 'static,
    {
        let now = SystemTime::now();
        let local = match self.local.get(&fp).await {
            Some(entry) if entry.is_fresh(now) => {
                self.metrics.local_hits.inc();
                // The entry carries its keyed ids: no hashing on the warm path.
                let credential_id = credential.map(|c| self.fingerprinter.credential(c));
                if self
                    .deny
                    .denies(&[Some(entry.token_id), entry.user_id, credential_id])
                    || self.denied_under_previous_keys(
                        token,
                        entry.verdict.verdict.identity.as_ref(),
                        credential,
                    )
                {
                    return Answer::Revoked(CacheOutcome::HitLocal);
                }
                return Answer::Hit(entry.verdict, Level::Local);
            }
            local => local,
        };
        self.metrics.local_misses.inc();
        // Outside the lock that every miss takes.
        let token_id = self.fingerprinter.token_id(token);
        let answer = self.missed(fp, token_id, local, now, ask).await;
        self.unless_revoked(answer, token, token_id, credential)
    }

    /// The answer, or `Revoked` when a revocation in force denies its positive verdict.
    fn unless_revoked(
        &self,
        answer: Answer,
        token: &str,
        token_id: Fingerprint,
        credential: Option<&str>,
    ) -> Answer {
        let Some(verdict) = answer.positive() else {
            return answer;
        };
        let identity = verdict.verdict.identity.as_ref();
        let credential_id = credential.map(|c| self.fingerprinter.credential(c));
        if !self.deny.denies(&[Some(token_id), credential_id]) {
            let user_id = identity.map(|i| self.fingerprinter.username(&i.username));
            if !self.deny.denies(&[user_id])
                && !self.denied_under_previous_keys(token, identity, credential)
            {
                return answer;
            }
        }
        Answer::Revoked(answer.outcome())
    }

    /// Whether a revocation made under a previous key of the ring denies this token, its
    /// user or its credential. Outside a key rotation, or while nothing is revoked, this
    /// computes nothing.
    fn denied_under_previous_keys(
        &self,
        token: &str,
        identity: Option<&Identity>,
        credential: Option<&str>,
    ) -> bool {
        let previous = self.fingerprinter.previous();
        if previous.is_empty() || self.deny.is_empty() {
            return false;
        }
        previous.iter().any(|f| {
            self.deny.denies(&[
                Some(f.token_id(token)),
                identity.map(|i| f.username(&i.username)),
                credential.map(|c| f.credential(c)),
            ])
        })
    }

    /// A local miss: the shared level and the sources (one lookup per key), then
    /// stale-if-error.
    async fn missed<F, Fut>(
        self: &Arc<Self>,
        fp: Fingerprint,
        token_id: Fingerprint,
        local: Option<LocalEntry>,
        now: SystemTime,
        ask: F,
    ) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verdict, Arc<str>>> + Send + 'static,
    {
        let undecided = match self.coalesced(fp, token_id, ask).await {
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
    async fn coalesced<F, Fut>(
        self: &Arc<Self>,
        fp: Fingerprint,
        token_id: Fingerprint,
        ask: F,
    ) -> Flight
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verdict, Arc<str>>> + Send + 'static,
    {
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
        let mut epoch = None;
        if let Some(shared) = &self.shared {
            let read = shared.cache.get(&fp).await;
            epoch = read.epoch;
            match read.entry {
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
        // Written under the epoch read before the sources were asked: the shared level
        // refuses it if any replica revoked or lifted anything since.
        if let (Some(shared), Some(epoch)) = (&self.shared, epoch) {
            shared
                .cache
                .put(&fp, &token_id, user_id.as_ref(), &entry, epoch)
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

    /// Denies this token until `until`, by default until it would have expired (`known`,
    /// what its source keeps; else a JWT's `exp`; else `max_token_ttl`; a token its source
    /// says never expires: until lifted), and never for less than a cached verdict of it
    /// could live; then drops its cached verdicts, whatever the audiences. See `revoke`.
    pub async fn revoke_token(
        &self,
        token: &str,
        until: Option<SystemTime>,
        known: Expiry,
    ) -> Result<Revoked, S::Error> {
        let until = match (until, known) {
            (Some(until), _) => Some(until),
            (None, Expiry::At(at)) => Some(at),
            (None, Expiry::Never) => None,
            (None, Expiry::Unknown) => Some(
                revocations::jwt_expiry(token)
                    .unwrap_or_else(|| SystemTime::now() + self.revocation.max_token_ttl),
            ),
        };
        let until = until.map(|u| u.max(self.outlives_every_verdict()));
        self.revoke_under_every_key(Kind::Token, until, |f| f.token_id(token))
            .await
    }

    /// Denies every credential mapping to this username until `until` (`None`: until
    /// lifted), and drops its cached verdicts. See `revoke`.
    pub async fn revoke_user(
        &self,
        username: &str,
        until: Option<SystemTime>,
    ) -> Result<Revoked, S::Error> {
        self.revoke_under_every_key(Kind::User, until, |f| f.username(username))
            .await
    }

    /// Denies one credential by its source's id until `until` (by default
    /// `max_token_ttl`, and never for less than a cached verdict could live).
    pub async fn revoke_credential(
        &self,
        credential_id: &str,
        until: Option<SystemTime>,
    ) -> Result<Revoked, S::Error> {
        let until = until.unwrap_or_else(|| SystemTime::now() + self.revocation.max_token_ttl);
        let until = Some(until.max(self.outlives_every_verdict()));
        self.revoke_under_every_key(Kind::Credential, until, |f| f.credential(credential_id))
            .await
    }

    /// One revocation under every key of the ring (current first; only the current one
    /// outside a rotation), so a replica still on a previous key refuses it too. Answers
    /// the current key's denial, with the verdicts dropped under all of them.
    async fn revoke_under_every_key(
        &self,
        kind: Kind,
        until: Option<SystemTime>,
        id: impl Fn(&Fingerprinter) -> Fingerprint,
    ) -> Result<Revoked, S::Error> {
        let mut first: Option<Revoked> = None;
        for f in self.fingerprinter.ring() {
            let denial = Denial {
                kind,
                id: id(f),
                until,
            };
            let r = self.revoke(denial).await?;
            match &mut first {
                Some(first) => first.removed += r.removed,
                None => first = Some(r),
            }
        }
        Ok(first.expect("a ring has a current key"))
    }

    /// The latest a verdict cached now could still be served: a revocation lasting at
    /// least this long cannot end before a late write of what it revoked has expired.
    fn outlives_every_verdict(&self) -> SystemTime {
        SystemTime::now()
            + self
                .ttls
                .positive
                .max(self.ttls.negative)
                .saturating_add(self.ttls.stale_grace)
    }

    /// Puts a revocation in force: in this replica's memory first (every answer from now
    /// on is checked against it), then durably in the shared level, which tells every
    /// replica; then drops the verdicts it covers from both levels. `Ok` only once the
    /// shared level holds it (always without one). On an error it still holds here, and
    /// the resync writes it to the shared level when it can.
    async fn revoke(&self, denial: Denial) -> Result<Revoked, S::Error> {
        self.deny.insert(denial);
        let mut removed = 0;
        if let Some(s) = &self.shared {
            if let Err(e) = s.cache.deny(&denial).await {
                self.deny.keep_pending(denial);
                self.purge_local(&denial).await;
                return Err(e);
            }
            // The revocation is durable now: a purge that fails leaves entries the
            // deny-list refuses until they expire.
            let purged = match denial.kind {
                Kind::Token => s.cache.revoke_token(&denial.id).await,
                Kind::User => s.cache.revoke_user(&denial.id).await,
                Kind::Credential => Ok(0),
            };
            removed = purged.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "revoked, but its cached verdicts stay in Redis until they expire (refused meanwhile)");
                0
            });
        }
        self.purge_local(&denial).await;
        Ok(Revoked { denial, removed })
    }

    /// Drops this replica's copies a revocation covers (a credential's are not indexed:
    /// the deny-list refuses them until they expire).
    async fn purge_local(&self, denial: &Denial) {
        match denial.kind {
            Kind::Token => {
                self.local.remove_token(&denial.id).await;
            }
            Kind::User => {
                self.local.remove_user(&denial.id).await;
            }
            Kind::Credential => {}
        }
    }

    /// Lifts a revocation here and (with a shared level) on every replica; whether it was
    /// in force anywhere.
    pub async fn unrevoke(&self, kind: Kind, id: Fingerprint) -> Result<bool, S::Error> {
        let here = self.deny.remove(&id);
        let shared = match &self.shared {
            Some(s) => s.cache.lift(kind, &id).await?,
            None => false,
        };
        Ok(here || shared)
    }

    /// Lifts what `revoke_*` put in force: the revocation under every key of the ring.
    pub async fn unrevoke_under_every_key(
        &self,
        kind: Kind,
        id: impl Fn(&Fingerprinter) -> Fingerprint,
    ) -> Result<bool, S::Error> {
        let mut lifted = false;
        for f in self.fingerprinter.ring() {
            lifted |= self.unrevoke(kind, id(f)).await?;
        }
        Ok(lifted)
    }

    /// The revocations in force on this replica.
    pub fn revocations(&self) -> Vec<Denial> {
        self.deny.list()
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

    const KEY: &[u8] = b"the verdict cache test key 0123456789";

    fn cache(shared: Option<&Arc<MemoryShared>>, stale_grace: Duration) -> Cache {
        keyed_cache(Fingerprinter::new(KEY), shared, stale_grace)
    }

    fn keyed_cache(
        fingerprinter: Fingerprinter,
        shared: Option<&Arc<MemoryShared>>,
        stale_grace: Duration,
    ) -> Cache {
        let shared = shared.map(|cache| SharedLevel {
            cache: cache.clone(),
            local_ttl: Duration::from_secs(10),
        });
        Arc::new(VerdictCache::new(
            fingerprinter,
            Ttls {
                positive: Duration::from_secs(60),
                negative: Duration::from_secs(60),
                stale_grace,
            },
            100,
            shared,
            Arc::new(Metrics::new()),
            RevocationSettings::default(),
        ))
    }

    fn fp(c: &Cache) -> Fingerprint {
        c.fingerprinter().token(TOKEN, &[])
    }

    async fn lookup(c: &Cache, source: &Arc<Source>) -> Answer {
        c.lookup(fp(c), TOKEN, None, source.ask()).await
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
            Answer::Undecided(_) | Answer::Revoked(_) => None,
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

    fn revoked(answer: &Answer) -> Option<CacheOutcome> {
        match answer {
            Answer::Revoked(outcome) => Some(*outcome),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_revocation_during_a_lookup_refuses_its_answer_and_caches_nothing() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::ZERO);
        let source = Source::held(user("alice"));
        let running = spawn_lookup(&c, &source);
        source.started.notified().await;
        c.revoke_token(TOKEN, None, Expiry::Unknown).await.unwrap();
        source.open();
        // What the source said before the revocation is not served after it...
        let answer = running.await.unwrap();
        assert_eq!(revoked(&answer), Some(CacheOutcome::Miss));
        // ...nor kept by either level.
        assert_eq!(shared.stored(), 0);
        let next = lookup(&c, &source).await;
        assert_eq!(revoked(&next), Some(CacheOutcome::Miss));
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn a_request_joining_a_lookup_after_a_revocation_is_refused() {
        let c = cache(None, Duration::ZERO);
        let source = Source::held(user("alice"));
        let first = spawn_lookup(&c, &source);
        source.started.notified().await;
        c.revoke_token(TOKEN, None, Expiry::Unknown).await.unwrap();
        let after = spawn_lookup(&c, &source);
        until_coalesced(&c, 1).await;
        source.open();
        assert_eq!(revoked(&first.await.unwrap()), Some(CacheOutcome::Miss));
        assert_eq!(revoked(&after.await.unwrap()), Some(CacheOutcome::Miss));
        assert_eq!(source.calls(), 1);
    }

    #[tokio::test]
    async fn a_revoked_user_is_refused_at_every_level_on_every_replica() {
        let shared = Arc::new(MemoryShared::default());
        let (a, b) = (
            cache(Some(&shared), Duration::ZERO),
            cache(Some(&shared), Duration::ZERO),
        );
        let source = Source::new(user("alice"));
        lookup(&a, &source).await;
        assert_eq!(seen(&lookup(&b, &source).await).1, CacheOutcome::HitShared);
        assert_eq!(seen(&lookup(&b, &source).await).1, CacheOutcome::HitLocal);
        // A late write of the old verdict (another replica's lookup ending now) lands in
        // the shared level after the purge: the deny-list still refuses it.
        let entry = CachedVerdict::new(user("alice").unwrap(), SystemTime::now(), &a.ttls);
        let r = a.revoke_user("alice", None).await.unwrap();
        assert_eq!(r.removed, 1);
        shared.insert(fp(&a), entry.clone());
        assert_eq!(
            revoked(&lookup(&b, &source).await),
            Some(CacheOutcome::HitShared)
        );
        assert_eq!(
            revoked(&lookup(&a, &source).await),
            Some(CacheOutcome::HitShared)
        );
        // A local copy the purge missed (written just after it) is refused too.
        b.store_local(fp(&b), b.fingerprinter().token_id(TOKEN), Arc::new(entry))
            .await;
        assert_eq!(
            revoked(&lookup(&b, &source).await),
            Some(CacheOutcome::HitLocal)
        );
        // Fresh from the source: refused; the source still accepts the token.
        shared.clear();
        b.invalidate_all();
        assert_eq!(
            revoked(&lookup(&b, &source).await),
            Some(CacheOutcome::Miss)
        );
        // Lifted on A: B serves alice again.
        assert!(a.unrevoke(Kind::User, r.denial.id).await.unwrap());
        assert_eq!(seen(&lookup(&b, &source).await).0, Some("alice"));
    }

    #[tokio::test]
    async fn a_stale_answer_of_a_revoked_user_is_refused() {
        let shared = Arc::new(MemoryShared::default());
        let c = cache(Some(&shared), Duration::from_secs(60));
        shared.insert(fp(&c), expired("alice", Duration::from_secs(30)));
        c.revoke_user("alice", None).await.unwrap();
        let answer = lookup(&c, &Source::new(down())).await;
        assert_eq!(revoked(&answer), Some(CacheOutcome::Stale));
    }

    #[tokio::test]
    async fn a_revocation_ends_at_its_until_and_a_credential_matches_by_id() {
        let c = cache(None, Duration::ZERO);
        let source = Source::new(user("alice"));
        let past = SystemTime::now() - Duration::from_secs(1);
        c.revoke_user("alice", Some(past)).await.unwrap();
        assert_eq!(seen(&lookup(&c, &source).await).0, Some("alice"));
        let soon = SystemTime::now() + Duration::from_millis(300);
        c.revoke_user("alice", Some(soon)).await.unwrap();
        assert!(revoked(&lookup(&c, &source).await).is_some());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(seen(&lookup(&c, &source).await).0, Some("alice"));
        // By credential id: only when the caller names the token's credential.
        c.revoke_credential("0123abcd", None).await.unwrap();
        assert!(c.denies_credentials());
        let cred = Some("0123abcd");
        assert_eq!(seen(&lookup(&c, &source).await).0, Some("alice"));
        let answer = c.lookup(fp(&c), TOKEN, cred, source.ask()).await;
        assert_eq!(revoked(&answer), Some(CacheOutcome::HitLocal));
    }

    /// A cache key rotation: revocations made under the old key keep holding on a replica
    /// whose ring has the new key current, and those it makes hold on a replica still on
    /// the old key; lifting by name lifts them under every key.
    #[tokio::test]
    async fn revocations_hold_across_a_cache_key_rotation() {
        const NEW: &[u8] = b"the next verdict cache test key 0123456789";
        let shared = Arc::new(MemoryShared::default());
        let old = cache(Some(&shared), Duration::ZERO);
        let ring = keyed_cache(
            Fingerprinter::with_previous(NEW, &[KEY]),
            Some(&shared),
            Duration::ZERO,
        );
        // One token per user (a cached verdict is per token).
        let (alice, bob) = (Source::new(user("alice")), Source::new(user("bob")));
        let at =
            |c: &Cache, token: &'static str, credential: Option<&'static str>, s: &Arc<Source>| {
                let (c, ask) = (c.clone(), s.ask());
                async move {
                    let fp = c.fingerprinter().token(token, &[]);
                    c.lookup(fp, token, credential, ask).await
                }
            };
        // Admitted before anything is revoked (cached: the local-hit path checks too).
        assert_eq!(seen(&at(&ring, "ta", None, &alice).await).0, Some("alice"));
        old.revoke_user("alice", None).await.unwrap();
        old.revoke_credential("0123abcd", None).await.unwrap();
        old.revoke_token("tb", None, Expiry::Unknown).await.unwrap();
        ring.load_revocations().await.unwrap();
        assert!(
            revoked(&at(&ring, "ta", None, &alice).await).is_some(),
            "user, old key"
        );
        let answer = at(&ring, "tb2", Some("0123abcd"), &bob).await;
        assert!(revoked(&answer).is_some(), "credential, old key");
        assert!(
            revoked(&at(&ring, "tb", None, &bob).await).is_some(),
            "token, old key"
        );
        // The ring's revocation reaches the replica still on the old key.
        ring.revoke_user("bob", None).await.unwrap();
        old.load_revocations().await.unwrap();
        assert!(
            revoked(&at(&old, "tb3", None, &bob).await).is_some(),
            "ring's, on the old key"
        );
        // Lifted by name on the ring: lifted under both keys.
        let lifted = ring.unrevoke_under_every_key(Kind::User, |f| f.username("alice"));
        assert!(lifted.await.unwrap());
        old.load_revocations().await.unwrap();
        ring.load_revocations().await.unwrap();
        assert_eq!(seen(&at(&ring, "ta", None, &alice).await).0, Some("alice"));
        assert_eq!(seen(&at(&old, "ta", None, &alice).await).0, Some("alice"));
    }

    #[tokio::test]
    async fn a_replica_starting_later_loads_the_revocations_and_a_lost_set_is_written_back() {
        let shared = Arc::new(MemoryShared::default());
        let a = cache(Some(&shared), Duration::ZERO);
        a.revoke_user("alice", None).await.unwrap();
        let b = cache(Some(&shared), Duration::ZERO);
        assert_eq!(b.load_revocations().await.unwrap(), 1);
        let source = Source::new(user("alice"));
        assert!(revoked(&lookup(&b, &source).await).is_some());
        // The shared level loses its set (Redis restarted without its data): the next
        // resync writes back what the replica knows instead of forgetting it.
        a.load_revocations().await.unwrap();
        shared.forget_denials();
        assert_eq!(a.load_revocations().await.unwrap(), 1);
        let c = cache(Some(&shared), Duration::ZERO);
        assert_eq!(c.load_revocations().await.unwrap(), 1);
        assert!(revoked(&lookup(&c, &source).await).is_some());
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
