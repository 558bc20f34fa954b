//! The verdict path: fingerprint → cache → (single flight) → sources → policy → verdict.
//!
//! `Authd` is a cheap-to-clone handle and a `tower::Service` from `AuthenticateRequest` to
//! `AuthenticateResponse`. The gRPC server wraps it, and the all-in-one binary hands the
//! same service to the edge in-process, so both paths share one implementation.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse, StringList, User};
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::cache::local::LocalCache;
use crate::cache::{CachedVerdict, Ttls};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::identity::{Outcome, Verdict};
use crate::metrics::{LevelLabels, Metrics, SourceLabels, VerdictLabels};
use crate::policy::ClusterPolicy;
use crate::verifiers::Verifier;

/// The parts of the configuration that a reload swaps as one.
pub struct Pipeline {
    pub sources: Vec<Arc<dyn Verifier>>,
    pub clusters: BTreeMap<String, ClusterPolicy>,
}

/// What a lookup shared by concurrent callers resolves to. The error is a safe message.
type Lookup = Result<Arc<CachedVerdict>, Arc<str>>;

struct Inner {
    fingerprinter: Fingerprinter,
    pipeline: RwLock<Arc<Pipeline>>,
    local: LocalCache,
    ttls: Ttls,
    /// Lookups in progress, so concurrent misses for one key make one source call.
    inflight: Mutex<HashMap<Fingerprint, Shared<BoxFuture<'static, Lookup>>>>,
    metrics: Arc<Metrics>,
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
        Self {
            inner: Arc::new(Inner {
                fingerprinter,
                pipeline: RwLock::new(Arc::new(pipeline)),
                local: LocalCache::new(max_entries),
                ttls,
                inflight: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
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

    fn pipeline(&self) -> Arc<Pipeline> {
        self.inner
            .pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops every cached verdict for this token (any audiences seen with it are separate
    /// keys; the common case, the same audiences, is covered by passing them).
    pub async fn revoke_token(&self, token: &str, audiences: &[String]) {
        let fp = self.inner.fingerprinter.token(token, audiences);
        self.inner.local.remove(&fp).await;
    }

    /// Drops every cached verdict naming this user; returns how many were dropped.
    pub async fn revoke_user(&self, username: &str) -> usize {
        self.inner.local.remove_user(username).await
    }

    pub async fn authenticate(&self, req: AuthenticateRequest) -> AuthenticateResponse {
        let started = Instant::now();
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
                inner.metrics.cache_hits.get_or_create(&LOCAL).inc();
                (Ok(entry), "hit_local")
            }
            stale => {
                inner.metrics.cache_misses.get_or_create(&LOCAL).inc();
                match self.lookup_coalesced(fp, req).await {
                    Ok(entry) => (Ok(entry), "miss"),
                    Err(err) => match stale.filter(|s| s.is_servable_stale(SystemTime::now())) {
                        Some(entry) => {
                            tracing::warn!(
                                request_id = %req.request_id,
                                fingerprint = %fp.short(),
                                error = %err,
                                "source could not decide; serving a stale positive verdict (stale-if-error)"
                            );
                            (Ok(entry), "stale")
                        }
                        None => (Err(err), "miss"),
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
        let identity = match pipeline.clusters.get(&req.cluster) {
            None => identity,
            Some(policy) => match policy.apply(identity) {
                Ok(identity) => identity,
                Err(why) => {
                    tracing::info!(request_id = %req.request_id, cluster = %req.cluster,
                        fingerprint = %fp.short(), source = %verdict.source,
                        reason = %why, "refused by cluster policy");
                    return rejected("denied_by_policy");
                }
            },
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

    async fn lookup(&self, fp: Fingerprint, token: &str, audiences: &[String]) -> Lookup {
        let verdict = self.ask_sources(token, audiences).await?;
        let entry = Arc::new(CachedVerdict::new(
            verdict,
            SystemTime::now(),
            &self.inner.ttls,
        ));
        self.inner.local.insert(fp, entry.clone()).await;
        Ok(entry)
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
