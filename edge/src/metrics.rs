//! The edge's Prometheus metrics: reviews by cluster, apiVersion, result and HTTP code, a
//! latency histogram and configuration reloads. Label values come from fixed sets or
//! configured cluster names.

use authd_runtime::metrics::{latency_buckets, registered, LatencyHistogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Re-exported: the review labels and their callers name it as `metrics::Name`.
pub use authd_runtime::metrics::Name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub cluster: Name,
    pub api_version: &'static str,
    /// authenticated | rejected | undecided | bad_request | not_found | ...
    pub result: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// success | failure
    pub result: &'static str,
}

pub struct Metrics {
    pub reviews: Family<ReviewLabels, Counter>,
    /// Reloads of `edge.toml` by outcome.
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub latency: LatencyHistogram,
    pub registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edge");
        let reviews = registered(
            &mut registry,
            "reviews",
            "TokenReviews answered, by cluster, apiVersion, result and HTTP code",
            Family::<ReviewLabels, Counter>::default(),
        );
        let config_reloads = registered(
            &mut registry,
            "config_reloads",
            "Reloads of edge.toml after it changed, by result (success, failure: the running configuration stays)",
            Family::<ReloadLabels, Counter>::default(),
        );
        let latency = registered(
            &mut registry,
            "review_duration_seconds",
            "Time from request head to response",
            LatencyHistogram::new(latency_buckets()),
        );
        Self {
            reviews,
            config_reloads,
            latency,
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
