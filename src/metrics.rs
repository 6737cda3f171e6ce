//! Prometheus metrics, served in text format on the admin listener only.
//!
//! One registry per process. Per-route handles are resolved once when the
//! route table is built, so the hot path only bumps atomics.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    auth: Family<Outcome, Counter>,
    logins: Family<Outcome, Counter>,
    reuse_detected: Counter,
    store_errors: Family<Kind, Counter>,
    upstream_errors: Family<Kind, Counter>,
    pub open_connections: Gauge,
}

/// Handles for one route, resolved once.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    upstream_duration: Histogram,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RouteMetrics {
    pub fn observe(&self, status: u16, total_secs: f64, upstream_secs: Option<f64>) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(total_secs);
        if let Some(secs) = upstream_secs {
            self.upstream_duration.observe(secs);
        }
    }
}

pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("authgate");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            auth: Family::default(),
            logins: Family::default(),
            reuse_detected: Counter::default(),
            store_errors: Family::default(),
            upstream_errors: Family::default(),
            open_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by route and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Total request latency by route",
            m.duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Upstream latency (until the response head) by route",
            m.upstream_duration.clone(),
        );
        registry.register(
            "auth_outcomes",
            "Authentication outcomes: ok, missing, invalid, expired, refreshed, refresh_failed, forbidden",
            m.auth.clone(),
        );
        registry.register(
            "logins",
            "Logins: success, failure, throttled",
            m.logins.clone(),
        );
        registry.register(
            "refresh_reuse_detected",
            "Retired refresh tokens replayed (families revoked)",
            m.reuse_detected.clone(),
        );
        registry.register(
            "store_errors",
            "Session or user store errors by store",
            m.store_errors.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by kind: connect, timeout",
            m.upstream_errors.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: route.to_string(),
        };
        RouteMetrics {
            by_class: CLASSES.map(|status| {
                self.requests.get_or_create_owned(&RouteStatus {
                    route: route.to_string(),
                    status,
                })
            }),
            duration: self.duration.get_or_create_owned(&label),
            upstream_duration: self.upstream_duration.get_or_create_owned(&label),
        }
    }

    pub fn auth_outcome(&self, outcome: &'static str) {
        self.auth.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn reuse_detected(&self) {
        self.reuse_detected.inc();
    }

    pub fn store_error(&self, kind: &'static str) {
        self.store_errors.get_or_create(&Kind { kind }).inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&Kind { kind }).inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_handles_feed_the_registry() {
        let m = get();
        m.route("/unit-test").observe(503, 0.01, Some(0.005));
        m.auth_outcome("expired");
        let text = m.encode();
        assert!(
            text.contains("authgate_requests_total{route=\"/unit-test\",status=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("authgate_auth_outcomes_total{outcome=\"expired\"}"));
        assert!(text.contains("authgate_upstream_duration_seconds_bucket{le="));
    }
}
