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
use prometheus_client::registry::{Metric, Registry};

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
struct Event {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Via {
    via: &'static str,
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
    websocket_revocations: Family<Via, Counter>,
    access_log_dropped: Counter,
    log_lines_dropped: Counter,
    audit_events: Family<Event, Counter>,
    audit_dropped: Counter,
    /// The auth outcome counters, resolved once: a family lookup hashes
    /// its labels under a lock, and this one is bumped on every request.
    auth_counters: Vec<(&'static str, Counter)>,
}

/// Every `outcome` label [`crate::auth::authenticate::AuthOutcome::metric_label`]
/// gives, counted from zero so dashboards see each one before it happens.
pub(crate) const AUTH_OUTCOMES: [&str; 7] = [
    "ok",
    "missing",
    "invalid",
    "expired",
    "refreshed",
    "refresh_failed",
    "forbidden",
];

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

/// Registers `metric` and returns the handle the gateway keeps: a clone
/// shares the registered value, so what the handle counts shows in
/// `/metrics`.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("authgate");
        let r = &mut registry;
        // Names and help texts are what `/metrics` shows and docs/operations.md
        // lists; the registry exports them in this order.
        #[rustfmt::skip]
        let mut metrics = Metrics {
            requests:          registered(r, "requests", "Requests by route and status class", Family::default()),
            duration:          registered(r, "request_duration_seconds", "Total request latency by route", Family::new_with_constructor(latency_histogram)),
            upstream_duration: registered(r, "upstream_duration_seconds", "Upstream latency (until the response head) by route", Family::new_with_constructor(latency_histogram)),
            auth:              registered(r, "auth_outcomes", "Authentication outcomes: ok, missing, invalid, expired, refreshed, refresh_failed, forbidden", Family::default()),
            logins:            registered(r, "logins", "Logins: success, failure, throttled", Family::default()),
            reuse_detected:    registered(r, "refresh_reuse_detected", "Retired refresh tokens replayed (families revoked)", Counter::default()),
            store_errors:      registered(r, "store_errors", "Session or user store errors by store", Family::default()),
            upstream_errors:   registered(r, "upstream_errors", "Upstream failures by kind: connect, timeout", Family::default()),
            open_connections:  registered(r, "open_connections", "Open client connections", Gauge::default()),
            websocket_revocations: registered(r, "websocket_revocations", "WebSockets closed because their session ended, by how it was learnt: message, check", Family::default()),
            access_log_dropped: registered(r, "access_log_dropped", "Access log lines dropped: the writer did not keep up (slow disk, full pipe)", Counter::default()),
            log_lines_dropped: registered(r, "log_lines_dropped", "Process log lines dropped: stderr did not keep up (a full pipe nobody reads)", Counter::default()),
            audit_events:      registered(r, "audit_events", "Audit events recorded, by event", Family::default()),
            audit_dropped:     registered(r, "audit_dropped", "Audit events dropped: the audit file's writer did not keep up", Counter::default()),
            auth_counters: Vec::new(),
            registry,
        };
        // Every event counted from zero, as the auth outcomes are.
        for event in crate::observe::audit::AuditEvent::ALL {
            metrics.audit_events.get_or_create_owned(&Event {
                event: event.name(),
            });
        }
        metrics.auth_counters = AUTH_OUTCOMES
            .map(|outcome| {
                let counter = metrics.auth.get_or_create_owned(&Outcome { outcome });
                (outcome, counter)
            })
            .to_vec();
        metrics
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
        match self.auth_counters.iter().find(|(name, _)| *name == outcome) {
            Some((_, counter)) => counter.inc(),
            None => self.auth.get_or_create(&Outcome { outcome }).inc(),
        };
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn reuse_detected(&self) {
        self.reuse_detected.inc();
    }

    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub fn log_line_dropped(&self) {
        self.log_lines_dropped.inc();
    }

    pub fn audit_event(&self, event: &'static str) {
        self.audit_events.get_or_create(&Event { event }).inc();
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    pub fn store_error(&self, kind: &'static str) {
        self.store_errors.get_or_create(&Kind { kind }).inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&Kind { kind }).inc();
    }

    /// `sockets` closed because their session ended, learnt `via` a
    /// revocation message or the batched check.
    pub fn websocket_revocations(&self, via: &'static str, sockets: usize) {
        if sockets > 0 {
            self.websocket_revocations
                .get_or_create(&Via { via })
                .inc_by(sockets as u64);
        }
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

    /// The names, help texts and types dashboards and docs/operations.md rely on,
    /// in export order.
    #[test]
    fn every_metric_keeps_its_name_help_and_type() {
        let m = Metrics::new();
        // A family shows its header only once it has a labelled child.
        m.route("/r").observe(200, 0.01, Some(0.005));
        m.login("success");
        m.store_error("users");
        m.upstream_error("connect");
        let text = m.encode();
        let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("# ")).collect();
        assert_eq!(
            headers,
            [
                "# HELP authgate_requests Requests by route and status class.",
                "# TYPE authgate_requests counter",
                "# HELP authgate_request_duration_seconds Total request latency by route.",
                "# TYPE authgate_request_duration_seconds histogram",
                "# HELP authgate_upstream_duration_seconds Upstream latency (until the response head) by route.",
                "# TYPE authgate_upstream_duration_seconds histogram",
                "# HELP authgate_auth_outcomes Authentication outcomes: ok, missing, invalid, expired, refreshed, refresh_failed, forbidden.",
                "# TYPE authgate_auth_outcomes counter",
                "# HELP authgate_logins Logins: success, failure, throttled.",
                "# TYPE authgate_logins counter",
                "# HELP authgate_refresh_reuse_detected Retired refresh tokens replayed (families revoked).",
                "# TYPE authgate_refresh_reuse_detected counter",
                "# HELP authgate_store_errors Session or user store errors by store.",
                "# TYPE authgate_store_errors counter",
                "# HELP authgate_upstream_errors Upstream failures by kind: connect, timeout.",
                "# TYPE authgate_upstream_errors counter",
                "# HELP authgate_open_connections Open client connections.",
                "# TYPE authgate_open_connections gauge",
                "# HELP authgate_access_log_dropped Access log lines dropped: the writer did not keep up (slow disk, full pipe).",
                "# TYPE authgate_access_log_dropped counter",
                "# HELP authgate_log_lines_dropped Process log lines dropped: stderr did not keep up (a full pipe nobody reads).",
                "# TYPE authgate_log_lines_dropped counter",
                "# HELP authgate_audit_events Audit events recorded, by event.",
                "# TYPE authgate_audit_events counter",
                "# HELP authgate_audit_dropped Audit events dropped: the audit file's writer did not keep up.",
                "# TYPE authgate_audit_dropped counter",
                "# EOF",
            ]
        );
    }
}
