//! authd's Prometheus metrics. Labels carry source, cluster and result names only: never a
//! token, a password or a fingerprint.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub cluster: String,
    /// authenticated | rejected | denied_by_policy | undecided
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

/// A label value shared rather than copied: counting a call clones an `Arc`, where a
/// `String` label would allocate on every call.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
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
    pub latency: LatencyHistogram,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub stale_serves: Family<LevelLabels, Counter>,
    pub redis_errors: Family<RedisOpLabels, Counter>,
    pub redis_latency: Family<RedisOpLabels, Histogram>,
    pub registry: Registry,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
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
        let latency = LatencyHistogram::new(exponential_buckets(0.000_05, 2.0, 18));
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
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A latency histogram without a lock: bucket counts and the sum (in nanoseconds) are
/// atomics, so observations from every worker thread never wait for each other.
/// prometheus-client's `Histogram` takes a write lock on every observation, which two
/// threads answering reviews contend for on every review. Encoded as a Prometheus
/// histogram (`_bucket`, `_sum`, `_count`); `_count` is the sum of the buckets.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds in seconds, ascending; the last count is the `+Inf` bucket.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Buckets {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let b = &self.0;
        // The first bucket whose upper bound is ≥ the value, as Prometheus' `le`.
        let i = b.bounds.partition_point(|bound| *bound < seconds);
        b.counts[i].fetch_add(1, Ordering::Relaxed);
        b.sum_nanos
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        let buckets: Vec<(f64, u64)> = b
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(b.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = b.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn latency_histogram_buckets_like_prometheus() {
        let h = LatencyHistogram::new([0.001, 0.01]);
        for v in [0.0005, 0.001, 0.005, 0.5] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            "t_bucket{le=\"0.001\"} 2",
            "t_bucket{le=\"0.01\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
            "t_sum 0.5065",
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }
    }
}
