//! authd's Prometheus metrics. Labels carry source, cluster and result names only: never a
//! token, a password or a fingerprint. Every label value comes from a closed set (the
//! configuration's names, fixed words): a caller cannot add a series.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Re-exported: authd's label structs and callers name it as `metrics::Name`.
pub use authd_runtime::metrics::Name;
use authd_runtime::metrics::{latency_buckets, registered, LatencyHistogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// A configured cluster name, or "other" (`policy::OTHER`): never a name as sent.
    pub cluster: Name,
    /// authenticated | rejected | denied_by_policy | revoked | throttled | unknown_cluster |
    /// undecided
    pub result: &'static str,
    /// hit_local | hit_shared | miss | stale | none (rejected before any lookup)
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    /// authenticated | rejected | wrong_secret | not_mine | undecided
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    /// Which budget: user | token_id | cluster (never the user or the id itself).
    pub kind: &'static str,
    /// A configured source name.
    pub source: String,
    /// enforce | shadow (counted, not throttled)
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOnlyLabels {
    /// A configured source name.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    /// local | shared
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisOpLabels {
    /// get | put | revoke | publish | subscribe | connect
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// The caller's identity (client certificate name) or "anonymous".
    pub client: Name,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The caller (Envoy's client certificate name) or "anonymous": the webhook's cluster.
    pub client: Name,
    /// allowed | denied | forbidden | undecided
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// login | token | logout | end_session
    pub method: &'static str,
    /// ok | rejected | throttled | invalid | unavailable
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// success | failure
    pub result: &'static str,
}

/// How many results (`Decision` in service.rs) and cache outcomes (`CacheOutcome`) a
/// verdict is counted under.
pub const RESULTS: usize = 7;
pub const CACHE_OUTCOMES: usize = 5;

/// The `authd_verdicts` counters of one cluster label, each resolved on its first use:
/// counting a review is then a load and an increment, not a family lookup (hashing the
/// labels under a read lock both threads contend for).
#[derive(Debug)]
pub struct VerdictCounters([[OnceLock<Counter>; CACHE_OUTCOMES]; RESULTS]);

impl Default for VerdictCounters {
    fn default() -> Self {
        Self(std::array::from_fn(|_| {
            std::array::from_fn(|_| OnceLock::new())
        }))
    }
}

impl VerdictCounters {
    /// The counter for (`result`, `cache`), by their indexes; `resolve` looks it up in the
    /// family the first time.
    pub fn get(&self, result: usize, cache: usize, resolve: impl FnOnce() -> Counter) -> &Counter {
        self.0[result][cache].get_or_init(resolve)
    }
}

/// Every metric authd exports, registered once.
pub struct Metrics {
    pub verdicts: Family<VerdictLabels, Counter>,
    pub source_calls: Family<SourceLabels, Counter>,
    pub source_latency: Family<SourceLabels, Histogram>,
    pub cache_hits: Family<LevelLabels, Counter>,
    pub cache_misses: Family<LevelLabels, Counter>,
    /// `cache_hits` / `cache_misses` for `level="local"`, resolved once: every review counts
    /// one of them, and a family lookup takes a read lock both threads contend for.
    pub local_hits: Counter,
    pub local_misses: Counter,
    pub coalesced: Counter,
    pub grpc_requests: Family<ClientLabels, Counter>,
    /// Envoy `Check` calls answered, by caller and result.
    pub ext_authz_checks: Family<CheckLabels, Counter>,
    /// Time to answer one `Check`.
    pub ext_authz_latency: LatencyHistogram,
    pub latency: LatencyHistogram,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub stale_serves: Family<LevelLabels, Counter>,
    pub redis_errors: Family<RedisOpLabels, Counter>,
    pub redis_latency: Family<RedisOpLabels, Histogram>,
    /// Shared-cache values that failed to open: edited, moved or forged in Redis.
    pub cache_integrity_failures: Counter,
    /// Shared-cache writes the epoch check refused: the lookup began before a revocation.
    pub cache_late_writes_refused: Counter,
    /// Decisions written to the audit log, and dropped because its queue was full.
    pub audit_records: Counter,
    pub audit_dropped: Counter,
    /// Failed verifications refused before their source was asked (or, in shadow mode,
    /// that would have been), by budget kind and source.
    pub throttled: Family<ThrottleLabels, Counter>,
    /// Failures admitted that used a budget's last unit.
    pub throttle_near_limit: Family<ThrottleLabels, Counter>,
    /// Lookups admitted without throttling as a recently successful credential.
    pub throttle_known_good: Family<SourceOnlyLabels, Counter>,
    /// Known token ids presented with a wrong secret.
    pub throttle_theft_signals: Family<SourceOnlyLabels, Counter>,
    /// Throttle decisions this replica took alone because Redis failed.
    pub throttle_fallbacks: Counter,
    /// Sessions calls (`session.rs`), by method and result.
    pub session_calls: Family<SessionLabels, Counter>,
    pub registry: Registry,
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("authd");
        let verdicts = registered(
            &mut registry,
            "verdicts",
            "Verdicts returned, by cluster, result and cache level",
            Family::<VerdictLabels, Counter>::default(),
        );
        let source_calls = registered(
            &mut registry,
            "source_calls",
            "Identity source lookups, by source and outcome",
            Family::<SourceLabels, Counter>::default(),
        );
        let source_latency = registered(
            &mut registry,
            "source_latency_seconds",
            "Identity source lookup latency",
            Family::<SourceLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _),
        );
        let cache_hits = registered(
            &mut registry,
            "cache_hits",
            "Fresh cache hits by level",
            Family::<LevelLabels, Counter>::default(),
        );
        let cache_misses = registered(
            &mut registry,
            "cache_misses",
            "Cache misses by level",
            Family::<LevelLabels, Counter>::default(),
        );
        let coalesced = registered(
            &mut registry,
            "coalesced_lookups",
            "Lookups that waited for a concurrent identical lookup instead of calling a source",
            Counter::default(),
        );
        let grpc_requests = registered(
            &mut registry,
            "grpc_requests",
            "gRPC calls by client identity and method",
            Family::<ClientLabels, Counter>::default(),
        );
        let ext_authz_checks = registered(
            &mut registry,
            "ext_authz_checks",
            "Envoy ext_authz Check calls answered, by caller and result",
            Family::<CheckLabels, Counter>::default(),
        );
        let ext_authz_latency = registered(
            &mut registry,
            "ext_authz_check_duration_seconds",
            "Time to answer an Envoy ext_authz Check",
            LatencyHistogram::new(latency_buckets()),
        );
        let latency = registered(
            &mut registry,
            "authenticate_latency_seconds",
            "Time to produce a verdict",
            LatencyHistogram::new(latency_buckets()),
        );
        let config_reloads = registered(
            &mut registry,
            "config_reloads",
            "Configuration reloads after a change to the config or a file it references, by result",
            Family::<ReloadLabels, Counter>::default(),
        );
        let stale_serves = registered(
            &mut registry,
            "stale_serves",
            "Expired positive verdicts served because the source could not decide \
             (stale-if-error), by the cache level that held them",
            Family::<LevelLabels, Counter>::default(),
        );
        let redis_errors = registered(
            &mut registry,
            "redis_errors",
            "Shared cache (Redis) commands that failed or timed out; reviews went on without it",
            Family::<RedisOpLabels, Counter>::default(),
        );
        let redis_latency = registered(
            &mut registry,
            "redis_latency_seconds",
            "Shared cache (Redis) operation latency, including failures",
            Family::<RedisOpLabels, Histogram>::new_with_constructor(
                latency_histogram as fn() -> _,
            ),
        );
        let cache_integrity_failures = Counter::default();
        registry.register(
            "cache_integrity_failures",
            "Shared cache (Redis) values that failed verification (changed, moved to another \
             key, or sealed with another key) and were treated as misses",
            cache_integrity_failures.clone(),
        );
        let cache_late_writes_refused = Counter::default();
        registry.register(
            "cache_late_writes_refused",
            "Shared cache (Redis) writes refused because a revocation or lift happened after \
             their lookup began (the revocation epoch moved)",
            cache_late_writes_refused.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "audit_records",
            "Decisions written to the audit log",
            audit_records.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Decisions not written to the audit log because its queue was full (the writer \
             could not keep up)",
            audit_dropped.clone(),
        );
        let throttled = registered(
            &mut registry,
            "throttled",
            "Failed verifications refused before their source was asked (mode=shadow: would \
             have been), by budget kind (user, token_id, cluster) and source",
            Family::<ThrottleLabels, Counter>::default(),
        );
        let throttle_near_limit = registered(
            &mut registry,
            "throttle_near_limit",
            "Failures admitted that used the last unit of a budget, by kind and source",
            Family::<ThrottleLabels, Counter>::default(),
        );
        let throttle_known_good = registered(
            &mut registry,
            "throttle_known_good",
            "Lookups admitted without throttling as a credential that succeeded recently",
            Family::<SourceOnlyLabels, Counter>::default(),
        );
        let throttle_theft_signals = registered(
            &mut registry,
            "throttle_theft_signals",
            "Known token ids presented with a wrong secret (someone holds the id), by source",
            Family::<SourceOnlyLabels, Counter>::default(),
        );
        let throttle_fallbacks = registered(
            &mut registry,
            "throttle_fallbacks",
            "Throttle decisions this replica took from its own memory because Redis failed",
            Counter::default(),
        );
        let session_calls = registered(
            &mut registry,
            "session_calls",
            "Sessions calls (Login, Token, Logout, EndSession), by method and result",
            Family::<SessionLabels, Counter>::default(),
        );
        let local_hits = cache_hits
            .get_or_create(&LevelLabels { level: "local" })
            .clone();
        let local_misses = cache_misses
            .get_or_create(&LevelLabels { level: "local" })
            .clone();
        Self {
            local_hits,
            local_misses,
            stale_serves,
            redis_errors,
            redis_latency,
            cache_integrity_failures,
            cache_late_writes_refused,
            audit_records,
            audit_dropped,
            throttled,
            throttle_near_limit,
            throttle_known_good,
            throttle_theft_signals,
            throttle_fallbacks,
            session_calls,
            verdicts,
            source_calls,
            source_latency,
            cache_hits,
            cache_misses,
            coalesced,
            grpc_requests,
            ext_authz_checks,
            ext_authz_latency,
            latency,
            config_reloads,
            registry,
        }
    }

    pub fn encode(&self) -> String {
        authd_runtime::metrics::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
