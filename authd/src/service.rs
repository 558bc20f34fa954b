//! The verdict path: fingerprint → local cache → (single flight: shared cache → sources)
//! → policy → verdict.
//!
//! `Authd` is a cheap-to-clone handle and a `tower::Service` from `AuthenticateRequest` to
//! `AuthenticateResponse`. The gRPC server wraps it, and the all-in-one binary hands the
//! same service to the edge in-process, so both paths share one implementation.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse, StringList, User};
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::authz::AdminAuthz;
use crate::cache::local::{LocalCache, LocalEntry};
use crate::cache::redis::{SharedCache, SharedCacheError};
use crate::cache::{CachedVerdict, Ttls};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::identity::{Outcome, Verdict};
use crate::metrics::{LevelLabels, Metrics, SourceLabels, VerdictLabels};
use crate::policy::ClusterPolicy;
use crate::source::Verifier;

/// The parts of the configuration that a reload swaps as one.
pub struct Pipeline {
    pub sources: Vec<Arc<dyn Verifier>>,
    pub clusters: BTreeMap<String, ClusterPolicy>,
}

/// The shared level and how long the local level may trust its copies when there is one.
pub struct SharedLevel {
    pub cache: Arc<SharedCache>,
    pub local_ttl: Duration,
}

/// Where a lookup found its verdict.
#[derive(Clone, Copy)]
enum Found {
    Shared,
    Source,
}

/// A lookup that could not decide: a safe message, and the shared level's expired positive
/// verdict if it had one still within its stale grace.
#[derive(Clone)]
struct Undecided {
    error: Arc<str>,
    shared_stale: Option<Arc<CachedVerdict>>,
}

/// What a lookup shared by concurrent callers resolves to.
type Lookup = Result<(Arc<CachedVerdict>, Found), Undecided>;

struct Inner {
    fingerprinter: Fingerprinter,
    pipeline: RwLock<Arc<Pipeline>>,
    local: LocalCache,
    shared: Option<SharedLevel>,
    ttls: Ttls,
    /// Who may call the Admin service (revocation).
    admin: Arc<AdminAuthz>,
    /// Lookups in progress, so concurrent misses for one key make one source call.
    inflight: Mutex<HashMap<Fingerprint, Shared<BoxFuture<'static, Lookup>>>>,
    metrics: Arc<Metrics>,
}

/// Longest token looked up; longer ones are rejected without touching caches or sources.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

fn count_unlooked_rejection(metrics: &Metrics, cluster: &str) {
    metrics
        .verdicts
        .get_or_create(&VerdictLabels {
            cluster: cluster.to_owned(),
            result: "rejected",
            cache: "none",
        })
        .inc();
}

#[derive(Clone)]
pub struct Authd {
    inner: Arc<Inner>,
}

impl Authd {
    pub fn new(
        fingerprinter: Fingerprinter,
        pipeline: Pipeline,
        ttls: Ttls,
        max_entries: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_levels(
            fingerprinter,
            pipeline,
            ttls,
            max_entries,
            metrics,
            None,
            AdminAuthz::deny_all(),
        )
    }

    /// Like `new`, with a shared cache level behind the local one and an Admin gate. With a
    /// shared level this starts its revocation subscriber, so it must run inside a Tokio
    /// runtime.
    pub fn with_levels(
        fingerprinter: Fingerprinter,
        pipeline: Pipeline,
        ttls: Ttls,
        max_entries: u64,
        metrics: Arc<Metrics>,
        shared: Option<SharedLevel>,
        admin: AdminAuthz,
    ) -> Self {
        let local = LocalCache::new(max_entries);
        if let Some(s) = &shared {
            s.cache.spawn_subscriber(local.clone());
        }
        Self {
            inner: Arc::new(Inner {
                fingerprinter,
                pipeline: RwLock::new(Arc::new(pipeline)),
                local,
                shared,
                ttls,
                admin: Arc::new(admin),
                inflight: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    pub fn admin_authz(&self) -> &AdminAuthz {
        &self.inner.admin
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Replaces sources and policy; in-flight lookups finish with the old ones.
    pub fn swap_pipeline(&self, pipeline: Pipeline) {
        *self
            .inner
            .pipeline
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(pipeline);
    }

    /// Swaps in a reloaded pipeline and drops every cached verdict, so a token removed from
    /// a source stops working at once rather than after its TTL.
    pub fn reload(&self, pipeline: Pipeline) {
        self.swap_pipeline(pipeline);
        // New requests must not join a lookup still running against the old sources.
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Also stops lookups started before the swap from caching what the old sources said.
        self.inner.local.clear();
    }

    fn pipeline(&self) -> Arc<Pipeline> {
        self.inner
            .pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops every cached verdict for this token, whatever the audiences: from Redis (which
    /// tells every replica) first, then from this replica. Returns how many verdicts left
    /// the shared level (0 without one). An error means Redis could not be reached; this
    /// replica has still dropped its copies.
    pub async fn revoke_token(&self, token: &str) -> Result<u64, SharedCacheError> {
        let id = self.inner.fingerprinter.token_id(token);
        let shared = match &self.inner.shared {
            Some(s) => Some(s.cache.revoke_token(&id).await),
            None => None,
        };
        let local = self.inner.local.remove_token(&id).await;
        tracing::info!(token_id = %id.short(), local, shared = ?shared.as_ref().map(|r| r.as_ref().ok()), "token revoked");
        shared.unwrap_or(Ok(0))
    }

    /// Drops every cached verdict naming this user, as `revoke_token` does for a token.
    pub async fn revoke_user(&self, username: &str) -> Result<u64, SharedCacheError> {
        let id = self.inner.fingerprinter.username(username);
        let shared = match &self.inner.shared {
            Some(s) => Some(s.cache.revoke_user(&id).await),
            None => None,
        };
        let local = self.inner.local.remove_user(&id).await;
        tracing::info!(user_id = %id.short(), local, shared = ?shared.as_ref().map(|r| r.as_ref().ok()), "user revoked");
        shared.unwrap_or(Ok(0))
    }

    pub async fn authenticate(&self, req: AuthenticateRequest) -> AuthenticateResponse {
        let started = Instant::now();
        // No source mints empty or enormous tokens: a definitive, cacheable "no" at once,
        // not an error (which kube-apiserver would retry five times).
        if req.token.is_empty() || req.token.len() > MAX_TOKEN_BYTES {
            tracing::debug!(request_id = %req.request_id, bytes = req.token.len(),
                "token empty or longer than the limit: rejected without a lookup");
            count_unlooked_rejection(&self.inner.metrics, &req.cluster);
            return AuthenticateResponse::default();
        }
        let response = self.decide(&req).await;
        self.inner
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn decide(&self, req: &AuthenticateRequest) -> AuthenticateResponse {
        let inner = &self.inner;
        let fp = inner.fingerprinter.token(&req.token, &req.audiences);
        let now = SystemTime::now();
        let cached = inner.local.get(&fp).await;
        let (lookup, cache_label) = match cached {
            Some(entry) if entry.is_fresh(now) => {
                inner.metrics.local_hits.inc();
                (Ok(entry.verdict), "hit_local")
            }
            local => {
                inner.metrics.local_misses.inc();
                match self.lookup_coalesced(fp, req).await {
                    Ok((entry, Found::Shared)) => (Ok(entry), "hit_shared"),
                    Ok((entry, Found::Source)) => (Ok(entry), "miss"),
                    Err(undecided) => match local {
                        // Past its local trust window but within its TTL: as good as a
                        // shared hit would have been.
                        Some(l) if l.verdict.is_fresh(now) => {
                            inner.metrics.local_hits.inc();
                            (Ok(l.verdict), "hit_local")
                        }
                        local => match self
                            .stale_if_error(local.map(|l| l.verdict), undecided.shared_stale)
                        {
                            Some((entry, level)) => {
                                inner.metrics.stale_serves.get_or_create(&level).inc();
                                tracing::warn!(
                                    request_id = %req.request_id,
                                    fingerprint = %fp.short(),
                                    level = level.level,
                                    error = %undecided.error,
                                    "source could not decide; serving a stale positive verdict (stale-if-error)"
                                );
                                (Ok(entry), "stale")
                            }
                            None => (Err(undecided.error), "miss"),
                        },
                    },
                }
            }
        };
        let from_cache = cache_label != "miss";
        let (response, result) = match lookup {
            Err(err) => {
                tracing::warn!(
                    request_id = %req.request_id,
                    cluster = %req.cluster,
                    fingerprint = %fp.short(),
                    error = %err,
                    "could not decide"
                );
                let response = AuthenticateResponse {
                    error: err.to_string(),
                    ..Default::default()
                };
                (response, "undecided")
            }
            Ok(entry) => self.finish(req, &fp, &entry.verdict, from_cache),
        };
        inner
            .metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                cluster: req.cluster.clone(),
                result,
                cache: cache_label,
            })
            .inc();
        response
    }

    /// The cached positive verdict to serve while the source cannot decide, if stale-if-error
    /// is on and either level holds one still within its grace (the later one wins).
    fn stale_if_error(
        &self,
        local: Option<Arc<CachedVerdict>>,
        shared: Option<Arc<CachedVerdict>>,
    ) -> Option<(Arc<CachedVerdict>, LevelLabels)> {
        if self.inner.ttls.stale_grace.is_zero() {
            return None;
        }
        let now = SystemTime::now();
        [(local, LOCAL), (shared, SHARED)]
            .into_iter()
            .filter_map(|(e, level)| e.map(|e| (e, level)))
            .filter(|(e, _)| e.is_servable_stale(now))
            .max_by_key(|(e, _)| e.stale_until)
    }

    /// Applies cluster policy to a (possibly cached) verdict and builds the response.
    fn finish(
        &self,
        req: &AuthenticateRequest,
        fp: &Fingerprint,
        verdict: &Verdict,
        cached: bool,
    ) -> (AuthenticateResponse, &'static str) {
        let rejected = |result| {
            let response = AuthenticateResponse {
                source: verdict.source.clone(),
                cached,
                ..Default::default()
            };
            (response, result)
        };
        let Some(identity) = verdict.identity.clone() else {
            tracing::debug!(request_id = %req.request_id, cluster = %req.cluster,
                fingerprint = %fp.short(), source = %verdict.source, cached, "rejected");
            return rejected("rejected");
        };
        // Under the read lock instead of cloning the Arc: no await here, and the refcount's
        // cache line is not bounced between cores on every verdict.
        let pipeline = self
            .inner
            .pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let identity = match crate::policy::admit(&pipeline.clusters, &req.cluster, identity) {
            Ok(identity) => identity,
            Err(why) => {
                tracing::info!(request_id = %req.request_id, cluster = %req.cluster,
                    fingerprint = %fp.short(), source = %verdict.source,
                    reason = %why, "refused by cluster policy");
                return rejected("denied_by_policy");
            }
        };
        tracing::debug!(request_id = %req.request_id, cluster = %req.cluster,
            fingerprint = %fp.short(), source = %verdict.source, user = %identity.username,
            cached, "authenticated");
        let user = User {
            username: identity.username,
            uid: identity.uid,
            groups: identity.groups,
            extra: identity
                .extra
                .into_iter()
                .map(|(k, values)| (k, StringList { values }))
                .collect(),
        };
        let response = AuthenticateResponse {
            authenticated: true,
            user: Some(user),
            audiences: identity.audiences,
            error: String::new(),
            source: verdict.source.clone(),
            cached,
        };
        (response, "authenticated")
    }

    /// One source lookup per key at a time; concurrent callers share its result.
    async fn lookup_coalesced(&self, fp: Fingerprint, req: &AuthenticateRequest) -> Lookup {
        let fut = {
            let mut inflight = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match inflight.get(&fp) {
                Some(fut) => {
                    self.inner.metrics.coalesced.inc();
                    fut.clone()
                }
                None => {
                    let this = self.clone();
                    let token = req.token.clone();
                    let audiences = req.audiences.clone();
                    let fut = async move {
                        let result = this.lookup(fp, &token, &audiences).await;
                        this.inner
                            .inflight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&fp);
                        result
                    }
                    .boxed()
                    .shared();
                    inflight.insert(fp, fut.clone());
                    fut
                }
            }
        };
        fut.await
    }

    /// The shared level, then the sources; a definitive verdict is stored in both levels.
    async fn lookup(&self, fp: Fingerprint, token: &str, audiences: &[String]) -> Lookup {
        let inner = &self.inner;
        let token_id = inner.fingerprinter.token_id(token);
        // A revocation while this lookup runs: answer with what was found, but cache none
        // of it (it may be what was just revoked).
        let generation = inner.local.generation();
        let revoked_meanwhile = || inner.local.generation() != generation;
        let mut shared_stale = None;
        if let Some(shared) = &inner.shared {
            match shared.cache.get(&fp).await {
                Some(entry) if entry.is_fresh(SystemTime::now()) => {
                    inner.metrics.cache_hits.get_or_create(&SHARED).inc();
                    let entry = Arc::new(entry);
                    if !revoked_meanwhile() {
                        self.store_local(fp, token_id, entry.clone()).await;
                    }
                    return Ok((entry, Found::Shared));
                }
                other => {
                    inner.metrics.cache_misses.get_or_create(&SHARED).inc();
                    shared_stale = other.map(Arc::new);
                }
            }
        }
        let verdict = match self.ask_sources(token, audiences).await {
            Ok(v) => v,
            Err(error) => {
                return Err(Undecided {
                    error,
                    shared_stale,
                })
            }
        };
        let entry = Arc::new(CachedVerdict::new(verdict, SystemTime::now(), &inner.ttls));
        if revoked_meanwhile() {
            return Ok((entry, Found::Source));
        }
        let user_id = self.store_local(fp, token_id, entry.clone()).await;
        if let Some(shared) = &inner.shared {
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
        let inner = &self.inner;
        let user_id = verdict
            .verdict
            .identity
            .as_ref()
            .map(|i| inner.fingerprinter.username(&i.username));
        let fresh_until = match &inner.shared {
            Some(s) => verdict.expires_at.min(SystemTime::now() + s.local_ttl),
            None => verdict.expires_at,
        };
        let entry = LocalEntry {
            verdict,
            fresh_until,
            token_id,
            user_id,
        };
        inner.local.insert(fp, entry).await;
        user_id
    }

    /// Asks, in order, only the sources that own the token; the first definitive answer
    /// wins. "Could not decide" stops the walk: a later source's "no" must not stand in
    /// for an earlier source's unknown answer.
    async fn ask_sources(&self, token: &str, audiences: &[String]) -> Result<Verdict, Arc<str>> {
        let pipeline = self.pipeline();
        for source in &pipeline.sources {
            if !source.owns(token) {
                continue;
            }
            let started = Instant::now();
            let outcome = source.verify(token, audiences).await;
            let label = |outcome| SourceLabels {
                source: source.name().to_owned(),
                outcome,
            };
            let outcome_label = match &outcome {
                Outcome::Authenticated(_) => "authenticated",
                Outcome::Rejected => "rejected",
                Outcome::NotMine => "not_mine",
                Outcome::Undecided(_) => "undecided",
            };
            let labels = label(outcome_label);
            self.inner.metrics.source_calls.get_or_create(&labels).inc();
            self.inner
                .metrics
                .source_latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let source_name = source.name().to_owned();
            match outcome {
                Outcome::Authenticated(identity) => {
                    return Ok(Verdict {
                        identity: Some(identity),
                        source: source_name,
                    })
                }
                Outcome::Rejected => {
                    return Ok(Verdict {
                        identity: None,
                        source: source_name,
                    })
                }
                Outcome::NotMine => continue,
                Outcome::Undecided(why) => {
                    return Err(
                        format!("identity source {source_name:?} could not decide: {why}").into(),
                    )
                }
            }
        }
        Ok(Verdict {
            identity: None,
            source: String::new(),
        })
    }
}

const LOCAL: LevelLabels = LevelLabels { level: "local" };
const SHARED: LevelLabels = LevelLabels { level: "shared" };

impl tower::Service<AuthenticateRequest> for Authd {
    type Response = AuthenticateResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<AuthenticateResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: AuthenticateRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.authenticate(req).await) })
    }
}
