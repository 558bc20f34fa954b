//! authd's Prometheus metrics. Labels carry source, cluster and result names only: never a
//! token, a password or a fingerprint. Every label value comes from a closed set (the
//! configuration's names, fixed words): a caller cannot add a series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Re-exported: authd's label structs and callers name it as `metrics::Name`.
pub use authd_runtime::metrics::Name;
use authd_runtime::metrics::{latency_buckets, LatencyHistogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// A configured cluster name, or "other" (`policy::OTHER`): never a name as sent.
    pub cluster: Name,
    /// authenticated | rejected | denied_by_policy | unknown_cluster | undecided
    pub result: &'static str,
    /// hit_local | hit_shared | miss | stale | none (rejected before any lookup)
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    /// authenticated | rejected | not_mine | undecided
    pub outcome: &'static str,
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
pub struct ReloadLabels {
    /// success | failure
    pub result: &'static str,
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
    pub latency: LatencyHistogram,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub stale_serves: Family<LevelLabels, Counter>,
    pub redis_errors: Family<RedisOpLabels, Counter>,
    pub redis_latency: Family<RedisOpLabels, Histogram>,
    /// Shared-cache values that failed to open: edited, moved or forged in Redis.
    pub cache_integrity_failures: Counter,
    pub registry: Registry,
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("authd");
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "verdicts",
            "Verdicts returned, by cluster, result and cache level",
            verdicts.clone(),
        );
        let source_calls = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_calls",
            "Identity source lookups, by source and outcome",
            source_calls.clone(),
        );
        let source_latency =
            Family::<SourceLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "source_latency_seconds",
            "Identity source lookup latency",
            source_latency.clone(),
        );
        let cache_hits = Family::<LevelLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Fresh cache hits by level",
            cache_hits.clone(),
        );
        let cache_misses = Family::<LevelLabels, Counter>::default();
        registry.register(
            "cache_misses",
            "Cache misses by level",
            cache_misses.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_lookups",
            "Lookups that waited for a concurrent identical lookup instead of calling a source",
            coalesced.clone(),
        );
        let grpc_requests = Family::<ClientLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls by client identity and method",
            grpc_requests.clone(),
        );
        let latency = LatencyHistogram::new(latency_buckets());
        registry.register(
            "authenticate_latency_seconds",
            "Time to produce a verdict",
            latency.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads after a change to the config or a file it references, by result",
            config_reloads.clone(),
        );
        let stale_serves = Family::<LevelLabels, Counter>::default();
        registry.register(
            "stale_serves",
            "Expired positive verdicts served because the source could not decide \
             (stale-if-error), by the cache level that held them",
            stale_serves.clone(),
        );
        let redis_errors = Family::<RedisOpLabels, Counter>::default();
        registry.register(
            "redis_errors",
            "Shared cache (Redis) commands that failed or timed out; reviews went on without it",
            redis_errors.clone(),
        );
        let redis_latency = Family::<RedisOpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        registry.register(
            "redis_latency_seconds",
            "Shared cache (Redis) operation latency, including failures",
            redis_latency.clone(),
        );
        let cache_integrity_failures = Counter::default();
        registry.register(
            "cache_integrity_failures",
            "Shared cache (Redis) values that failed verification (changed, moved to another \
             key, or sealed with another key) and were treated as misses",
            cache_integrity_failures.clone(),
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
            verdicts,
            source_calls,
            source_latency,
            cache_hits,
            cache_misses,
            coalesced,
            grpc_requests,
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
