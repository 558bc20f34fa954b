//! Generic metric pieces: a lock-free latency histogram, a label value shared rather than
//! copied, and registry encoding. The servers' own metric sets and label structs stay in
//! their crates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

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

/// The latency buckets both servers use: 50 µs doubling up to ≈ 6.5 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 18)
}

/// Registers `metric` under `name` and hands it back: a server's metric set is built one
/// statement a metric.
pub fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The registry's exposition text (OpenMetrics, ending in `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
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

    /// Records one observation of `seconds`. `#[inline]`: every review observes, and the
    /// callers are in other crates (no LTO in the release profile).
    #[inline]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_buckets_like_prometheus() {
        let h = LatencyHistogram::new([0.001, 0.01]);
        for v in [0.0005, 0.001, 0.005, 0.5] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let out = encode(&registry);
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
