//! The verdict path: fingerprint → verdict cache (local level, then one lookup per key at
//! a time through the shared level and the sources) → cluster policy → response.
//!
//! `Authd` only composes: the cache (`cache::verdict`) holds both levels and their guards,
//! the pipeline (`pipeline.rs`) the sources and policies a reload swaps. It is a cheap-to-
//! clone handle and a `tower::Service` from `AuthenticateRequest` to `AuthenticateResponse`.
//! The gRPC server wraps it, and the all-in-one binary hands the same service to the edge
//! in-process, so both paths share one implementation.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse, StringList, User};
use futures::future::BoxFuture;

use crate::audit::{Audit, Record};
use crate::cache::redis::SharedCacheError;
use crate::cache::revocations::{Denial, Kind};
use crate::cache::verdict::{
    Answer, CacheOutcome, RevocationSettings, Revoked, SharedLevel, VerdictCache,
};
use crate::cache::Ttls;
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::identity::Verdict;
use crate::metrics::{Metrics, Name, VerdictLabels, CACHE_OUTCOMES, RESULTS};
use crate::policy::Cluster;
use prometheus_client::metrics::counter::Counter;

use crate::pipeline::{Pipeline, Walk};
use crate::source::{Expiry, Verifier};
use crate::throttle::{self, SubjectKind, SubjectStatus, Throttle};

/// What a review came to, as the `result` label of `authd_verdicts` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Decision {
    Authenticated,
    Rejected,
    DeniedByPolicy,
    /// A revocation in force denies the verdict.
    Revoked,
    /// Too many failed verifications: the source was not asked (`throttle.rs`).
    Throttled,
    /// The cluster asked for is not configured: refused before any lookup.
    UnknownCluster,
    Undecided,
}

impl Decision {
    fn label(self) -> &'static str {
        match self {
            Decision::Authenticated => "authenticated",
            Decision::Rejected => "rejected",
            Decision::DeniedByPolicy => "denied_by_policy",
            Decision::Revoked => "revoked",
            Decision::Throttled => "throttled",
            Decision::UnknownCluster => "unknown_cluster",
            Decision::Undecided => "undecided",
        }
    }

    /// The audit log's outcome: a refusal is `rejected` with its reason class.
    fn audit_outcome(self) -> &'static str {
        match self {
            Decision::Authenticated => "authenticated",
            Decision::Rejected | Decision::DeniedByPolicy | Decision::UnknownCluster => "rejected",
            Decision::Revoked => "revoked",
            Decision::Throttled => "throttled",
            Decision::Undecided => "undecided",
        }
    }
}

/// Longest caller-chosen name (a cluster) an audit record keeps.
const MAX_AUDITED_NAME: usize = 253;

struct Inner {
    cache: Arc<VerdictCache>,
    pipeline: RwLock<Arc<Pipeline>>,
    metrics: Arc<Metrics>,
    /// The audit log, when configured.
    audit: Option<Audit>,
    /// Failure budgets, kept across reloads (the pipeline carries their settings).
    throttle: Arc<Throttle>,
    /// A source not in the configuration (the login sessions' issued tokens), which every
    /// pipeline swapped in gets after the configured sources.
    extra_source: Option<Arc<dyn Verifier>>,
}

/// How a review reached authd, as the audit log records it.
#[derive(Clone, Debug)]
pub struct Via {
    /// `authenticate` (the gRPC Authenticator), `in_process` (the all-in-one edge).
    pub entry: &'static str,
    /// The caller's client certificate identity, when it has one.
    pub caller: Option<Arc<str>>,
}

impl Via {
    pub const IN_PROCESS: Via = Via {
        entry: "in_process",
        caller: None,
    };
}

/// What one review came to, for its counters and its audit record.
struct Reviewed {
    response: AuthenticateResponse,
    result: Decision,
    cache: CacheOutcome,
    /// Why a refusal, as a class.
    reason: Option<&'static str>,
}

/// What `Authd::prepare` read from the pipeline for one review.
struct Prepared {
    cluster: Arc<Cluster>,
    digest: [u8; 32],
    credential: Option<String>,
}

/// Longest token looked up; longer ones are rejected without touching caches or sources.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Counts a review of a served cluster: a counter resolved once per (result, cache), under
/// the cluster's configured label ("other" for the `"*"` policy).
fn count(metrics: &Metrics, cluster: &Cluster, result: Decision, cache: CacheOutcome) {
    cluster
        .verdicts
        .get(result as usize, cache as usize, || {
            verdicts(metrics, cluster.label.clone(), result, cache)
        })
        .inc();
}

/// The `authd_verdicts` counter of `cluster`, a label `Clusters::label` gave: a configured
/// name or "other", never a name a caller chose.
fn verdicts(metrics: &Metrics, cluster: Name, result: Decision, cache: CacheOutcome) -> Counter {
    metrics
        .verdicts
        .get_or_create(&VerdictLabels {
            cluster,
            result: result.label(),
            cache: cache.label(),
        })
        .clone()
}

// `count` indexes its table by these.
const _: () = assert!(Decision::Undecided as usize + 1 == RESULTS);
const _: () = assert!(CacheOutcome::Stale as usize + 1 == CACHE_OUTCOMES);

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
            RevocationSettings::default(),
        )
    }

    /// Like `new`, with a shared cache level behind the local one. With a shared level this
    /// starts its revocation subscriber, so it must run inside a Tokio runtime.
    pub fn with_levels(
        fingerprinter: Fingerprinter,
        pipeline: Pipeline,
        ttls: Ttls,
        max_entries: u64,
        metrics: Arc<Metrics>,
        shared: Option<SharedLevel>,
        revocation: RevocationSettings,
    ) -> Self {
        let throttle = Arc::new(Throttle::new(
            &fingerprinter,
            shared
                .as_ref()
                .map(|s| s.cache.clone() as Arc<dyn throttle::Scripts>),
            metrics.clone(),
        ));
        let cache = VerdictCache::new(
            fingerprinter,
            ttls,
            max_entries,
            shared,
            metrics.clone(),
            revocation,
        );
        let cache = Arc::new(cache);
        let revoking = cache.clone();
        throttle.revoke_with(Box::new(move |id| {
            let cache = revoking.clone();
            tokio::spawn(async move {
                match cache.revoke_credential(&id, None).await {
                    Ok(_) => tracing::warn!(id, "token id revoked after a wrong secret (revoke_on_theft)"),
                    Err(e) => tracing::warn!(id, error = %e,
                        "token id revoked on this replica only after a wrong secret (revoke_on_theft): Redis did not take it"),
                }
            });
        }));
        Self {
            inner: Arc::new(Inner {
                cache,
                pipeline: RwLock::new(Arc::new(pipeline)),
                metrics,
                audit: None,
                throttle,
                extra_source: None,
            }),
        }
    }

    /// Writes every decision to `audit` from now on. Only before the handle is shared.
    pub fn with_audit(mut self, audit: Option<Audit>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_audit before the service is shared")
            .audit = audit;
        self
    }

    /// Adds `source` after the configured sources, in this pipeline and every reloaded
    /// one (the login sessions' issued tokens). Only before the handle is shared.
    pub fn with_extra_source(mut self, source: Arc<dyn Verifier>) -> Self {
        let inner =
            Arc::get_mut(&mut self.inner).expect("with_extra_source before the service is shared");
        inner.extra_source = Some(source.clone());
        let pipeline = inner.pipeline.get_mut().unwrap_or_else(|e| e.into_inner());
        Arc::get_mut(pipeline)
            .expect("the pipeline is not shared before the service is")
            .sources
            .push(source);
        self
    }

    /// The configured source named `name`, in the current pipeline.
    pub fn source(&self, name: &str) -> Option<Arc<dyn Verifier>> {
        self.pipeline()
            .sources
            .iter()
            .find(|s| s.name() == name)
            .cloned()
    }

    /// Whether reviews for `cluster` are served (it is configured, or `"*"` is).
    pub fn serves_cluster(&self, cluster: &str) -> bool {
        self.pipeline().clusters.get(cluster).is_some()
    }

    /// Whether decisions go to an audit log.
    pub fn audits(&self) -> bool {
        self.inner.audit.is_some()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Replaces sources and policy; in-flight lookups finish with the old ones.
    pub fn swap_pipeline(&self, mut pipeline: Pipeline) {
        if let Some(extra) = &self.inner.extra_source {
            pipeline.sources.push(extra.clone());
        }
        *self
            .inner
            .pipeline
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(pipeline);
    }

    /// Swaps in a reloaded pipeline and drops every cached verdict, so a token removed from
    /// a source stops working at once rather than after its TTL.
    pub fn reload(&self, pipeline: Pipeline) {
        // Swap first: a lookup the cache lets start after `invalidate_all` must see the new
        // sources.
        self.swap_pipeline(pipeline);
        self.inner.cache.invalidate_all();
    }

    fn pipeline(&self) -> Arc<Pipeline> {
        self.inner
            .pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Denies this token on every replica (see `VerdictCache::revoke_token`).
    pub async fn revoke_token(
        &self,
        token: &str,
        until: Option<SystemTime>,
    ) -> Result<Revoked, SharedCacheError> {
        let known = match until {
            Some(_) => Expiry::Unknown,
            None => self.pipeline().expiry(token).await,
        };
        self.inner.cache.revoke_token(token, until, known).await
    }

    /// Denies every credential of this (mapped) username on every replica.
    pub async fn revoke_user(
        &self,
        username: &str,
        until: Option<SystemTime>,
    ) -> Result<Revoked, SharedCacheError> {
        self.inner.cache.revoke_user(username, until).await
    }

    /// Denies one credential by its source's id on every replica.
    pub async fn revoke_credential(
        &self,
        credential_id: &str,
        until: Option<SystemTime>,
    ) -> Result<Revoked, SharedCacheError> {
        self.inner
            .cache
            .revoke_credential(credential_id, until)
            .await
    }

    /// Lifts a revocation on every replica; whether one was in force.
    pub async fn unrevoke(&self, kind: Kind, id: Fingerprint) -> Result<bool, SharedCacheError> {
        self.inner.cache.unrevoke(kind, id).await
    }

    /// Lifts a revocation named by what it revoked (a token, a username, a credential id)
    /// under every key of the cache key ring, on every replica.
    pub async fn unrevoke_under_every_key(
        &self,
        kind: Kind,
        id: impl Fn(&Fingerprinter) -> Fingerprint,
    ) -> Result<bool, SharedCacheError> {
        self.inner.cache.unrevoke_under_every_key(kind, id).await
    }

    /// The revocations in force.
    pub fn revocations(&self) -> Vec<Denial> {
        self.inner.cache.revocations()
    }

    /// Loads the revocations from the shared level before serving.
    pub async fn load_revocations(&self) -> Result<usize, SharedCacheError> {
        self.inner.cache.load_revocations().await
    }

    pub fn fingerprinter(&self) -> &Fingerprinter {
        self.inner.cache.fingerprinter()
    }

    /// The failure budgets of a username (`SubjectKind::User`) or token id in every
    /// throttled source of that kind, or only in `source`.
    pub async fn throttle_status(
        &self,
        kind: SubjectKind,
        subject: &str,
        source: Option<&str>,
    ) -> Vec<SubjectStatus> {
        let pipeline = self.pipeline();
        self.inner
            .throttle
            .status(&pipeline.throttle, kind, subject, source)
            .await
    }

    /// Empties those budgets; how many were reset.
    pub async fn throttle_reset(
        &self,
        kind: SubjectKind,
        subject: &str,
        source: Option<&str>,
    ) -> Result<usize, String> {
        let pipeline = self.pipeline();
        self.inner
            .throttle
            .reset(&pipeline.throttle, kind, subject, source)
            .await
    }

    /// What a review needs from the current pipeline before its lookup: the metric label of
    /// the cluster asked for (`Err` with the label of a refused one), the pipeline's digest
    /// (the cache namespace), and the token's keyed credential id when a credential
    /// revocation is in force (one read of the lock for all three).
    fn prepare(&self, req: &AuthenticateRequest) -> Result<Prepared, Name> {
        let pipeline = self
            .inner
            .pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let cluster = match pipeline.clusters.get(&req.cluster) {
            Some(c) => c.clone(),
            None => return Err(pipeline.clusters.label(&req.cluster)),
        };
        let cache = &self.inner.cache;
        let credential = cache
            .denies_credentials()
            .then(|| pipeline.credential_id(&req.token))
            .flatten()
            .map(str::to_owned);
        Ok(Prepared {
            cluster,
            digest: pipeline.digest,
            credential,
        })
    }

    /// Reviews one token for a caller in this process (the all-in-one binary's edge).
    pub async fn authenticate(&self, req: AuthenticateRequest) -> AuthenticateResponse {
        self.review(req, Via::IN_PROCESS).await
    }

    /// Reviews one token; `via` says how it arrived (for the audit log).
    pub async fn review(&self, req: AuthenticateRequest, via: Via) -> AuthenticateResponse {
        let started = Instant::now();
        let reviewed = self.decide(&req).await;
        match &self.inner.audit {
            None => reviewed.response,
            Some(audit) => self.audit(audit, req, via, reviewed, started),
        }
    }

    /// Queues the audit record of a review (never waits) and returns its response.
    fn audit(
        &self,
        audit: &Audit,
        req: AuthenticateRequest,
        via: Via,
        reviewed: Reviewed,
        started: Instant,
    ) -> AuthenticateResponse {
        let Reviewed {
            response,
            result,
            cache,
            reason,
        } = reviewed;
        let token_id = (!req.token.is_empty() && req.token.len() <= MAX_TOKEN_BYTES)
            .then(|| self.fingerprinter().token_id(&req.token));
        let user = response
            .user
            .as_ref()
            .filter(|_| audit.include_identity)
            .map(|u| (u.username.clone(), u.groups.clone()));
        let mut cluster = req.cluster;
        if cluster.len() > MAX_AUDITED_NAME {
            // A caller-chosen name: bounded in the log.
            let mut end = MAX_AUDITED_NAME;
            while !cluster.is_char_boundary(end) {
                end -= 1;
            }
            cluster.truncate(end);
        }
        audit.record(Record {
            at: SystemTime::now(),
            request_id: req.request_id,
            entry: via.entry,
            caller: via.caller,
            cluster,
            source: response.source.clone(),
            outcome: result.audit_outcome(),
            reason,
            user,
            token_id,
            latency: started.elapsed(),
            cache: cache.label(),
        });
        response
    }

    /// The whole decision for one review, counted.
    async fn decide(&self, req: &AuthenticateRequest) -> Reviewed {
        // An unknown cluster is a definitive "no" (kube-apiserver: not authenticated), before
        // any cache or source sees the token: the set of clusters is the configured one. The
        // review keeps the cluster it found here to the end, policy and counters alike.
        let prepared = match self.prepare(req) {
            Ok(p) => p,
            Err(other) => {
                tracing::debug!(request_id = %req.request_id, cluster = %req.cluster.escape_debug(),
                    "cluster not configured: refused without a lookup");
                verdicts(
                    &self.inner.metrics,
                    other,
                    Decision::UnknownCluster,
                    CacheOutcome::None,
                )
                .inc();
                return Reviewed {
                    response: AuthenticateResponse::default(),
                    result: Decision::UnknownCluster,
                    cache: CacheOutcome::None,
                    reason: Some("unknown_cluster"),
                };
            }
        };
        // No source mints empty or enormous tokens: a definitive, cacheable "no" at once,
        // not an error (which kube-apiserver would retry five times).
        if req.token.is_empty() || req.token.len() > MAX_TOKEN_BYTES {
            tracing::debug!(request_id = %req.request_id, bytes = req.token.len(),
                "token empty or longer than the limit: rejected without a lookup");
            count(
                &self.inner.metrics,
                &prepared.cluster,
                Decision::Rejected,
                CacheOutcome::None,
            );
            return Reviewed {
                response: AuthenticateResponse::default(),
                result: Decision::Rejected,
                cache: CacheOutcome::None,
                reason: Some("malformed_token"),
            };
        }
        let started = Instant::now();
        let reviewed = self.look_up(req, prepared).await;
        self.inner
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        reviewed
    }

    async fn look_up(&self, req: &AuthenticateRequest, prepared: Prepared) -> Reviewed {
        let Prepared {
            cluster,
            digest,
            credential,
        } = prepared;
        let cache = &self.inner.cache;
        let fp = cache
            .fingerprinter()
            .token(&req.token, &req.audiences)
            .within(&digest);
        // Runs only for the caller that starts a lookup; reads the pipeline when it runs.
        // Its cluster's failure budget is the one a throttled source's failure uses.
        let ask = || {
            let this = self.clone();
            let token = req.token.clone();
            let audiences = req.audiences.clone();
            let cluster_label = cluster.label.clone();
            async move {
                let pipeline = this.pipeline();
                let with = Walk {
                    metrics: &this.inner.metrics,
                    throttle: &this.inner.throttle,
                    cluster: &cluster_label.0,
                };
                pipeline.decide(&token, &audiences, with).await
            }
        };
        let answer = cache
            .lookup(fp, &req.token, credential.as_deref(), ask)
            .await;
        let outcome = answer.outcome();
        let cached = outcome.cached();
        let (response, result, reason) = match answer {
            Answer::Hit(entry, _) | Answer::Miss(entry) => {
                self.finish(req, &cluster, &fp, &entry.verdict, cached)
            }
            Answer::Stale {
                verdict,
                level,
                error,
            } => {
                tracing::warn!(
                    request_id = %req.request_id,
                    fingerprint = %fp.short(),
                    level = level.label(),
                    error = %error,
                    "source could not decide; serving a stale positive verdict (stale-if-error)"
                );
                self.finish(req, &cluster, &fp, &verdict.verdict, cached)
            }
            Answer::Revoked(_) => {
                tracing::debug!(request_id = %req.request_id, cluster = %req.cluster,
                    fingerprint = %fp.short(), cached, "refused: revoked");
                let response = AuthenticateResponse {
                    cached,
                    ..Default::default()
                };
                (response, Decision::Revoked, Some("revoked"))
            }
            Answer::Undecided(err) if throttle::is_throttled(&err) => {
                // Definitive for kube-apiserver (no error), kept by no authd cache; counted
                // and logged (rate-limited) by the throttle; held a moment (`answer_delay`).
                tracing::debug!(request_id = %req.request_id, cluster = %req.cluster,
                    fingerprint = %fp.short(), "refused: throttled");
                let pipeline = self.pipeline();
                pipeline.throttle.hold_throttled_answer().await;
                (
                    AuthenticateResponse::default(),
                    Decision::Throttled,
                    Some("throttled"),
                )
            }
            Answer::Undecided(err) => {
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
                (response, Decision::Undecided, Some("source_undecided"))
            }
        };
        count(&self.inner.metrics, &cluster, result, outcome);
        Reviewed {
            response,
            result,
            cache: outcome,
            reason,
        }
    }

    /// Applies cluster policy to a (possibly cached) verdict and builds the response.
    fn finish(
        &self,
        req: &AuthenticateRequest,
        cluster: &Cluster,
        fp: &Fingerprint,
        verdict: &Verdict,
        cached: bool,
    ) -> (AuthenticateResponse, Decision, Option<&'static str>) {
        let rejected = |result, reason| {
            let response = AuthenticateResponse {
                source: verdict.source.clone(),
                cached,
                ..Default::default()
            };
            (response, result, Some(reason))
        };
        let Some(identity) = verdict.identity.clone() else {
            tracing::debug!(request_id = %req.request_id, cluster = %req.cluster,
                fingerprint = %fp.short(), source = %verdict.source, cached, "rejected");
            let reason = if verdict.source.is_empty() {
                "no_source"
            } else {
                "source_rejected"
            };
            return rejected(Decision::Rejected, reason);
        };
        // Every answer, cached or fresh, from either level: a name the deciding source may
        // not mint is never served, whatever put it in a cache. Under the read lock instead
        // of cloning the Arc: no await here.
        let may_serve = self
            .inner
            .pipeline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .may_serve(&verdict.source, &identity);
        if let Err(why) = may_serve {
            tracing::warn!(request_id = %req.request_id, fingerprint = %fp.short(),
                source = %verdict.source, cached, reason = %why,
                "refused: the answer names what its source may not mint");
            return rejected(Decision::Rejected, "reserved_name");
        }
        // A credential bound to one cluster (a session's token) is refused on every other,
        // whatever cache answered: the verdict is cached once for all clusters.
        if identity
            .cluster
            .as_deref()
            .is_some_and(|bound| bound != req.cluster)
        {
            tracing::info!(request_id = %req.request_id, cluster = %req.cluster.escape_debug(),
                fingerprint = %fp.short(), source = %verdict.source, cached,
                "refused: the token is bound to another cluster");
            return rejected(Decision::Rejected, "other_cluster");
        }
        let identity = match cluster.admit(&req.cluster, identity) {
            Ok(identity) => identity,
            Err(why) => {
                tracing::info!(request_id = %req.request_id, cluster = %req.cluster,
                    fingerprint = %fp.short(), source = %verdict.source,
                    reason = %why, "refused by cluster policy");
                return rejected(Decision::DeniedByPolicy, "cluster_policy");
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
        (response, Decision::Authenticated, None)
    }
}

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
