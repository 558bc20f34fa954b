//! The edge's Prometheus metrics: reviews by cluster, apiVersion, result and HTTP code, and
//! a latency histogram. Label values come from fixed sets or configured cluster names.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub cluster: Name,
    pub api_version: &'static str,
    /// authenticated | rejected | undecided | bad_request | not_found | ...
    pub result: &'static str,
    pub code: u16,
}

/// A label value shared rather than copied: counting a review clones an `Arc`, where a
/// `String` label would allocate on every review.
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

pub struct Metrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub latency: Histogram,
    pub registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edge");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "TokenReviews answered, by cluster, apiVersion, result and HTTP code",
            reviews.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "review_duration_seconds",
            "Time from request head to response",
            latency.clone(),
        );
        Self {
            reviews,
            latency,
            registry,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
