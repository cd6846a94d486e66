//! Prometheus metrics (SPEC §5), one registry per gateway.
//!
//! Two kinds of series:
//! - event counters and histograms, recorded on the request path through
//!   handles made once per route, service and endpoint (no label is
//!   formatted per request; a new status code on a route makes its handle
//!   once, off the steady state);
//! - gauges of current state (endpoint health and in-flight requests,
//!   breaker state, registry instances, config hash), set from the live
//!   state at scrape time, so they can never drift from it.
//!
//! Endpoint series are removed when the endpoint leaves its service, so
//! cardinality follows the fleet.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;
use std::sync::Mutex;

use arc_swap::ArcSwap;
use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::health::Outcome;
use crate::proxy::Proxy;

/// Request duration buckets, 0.5 ms to 30 s.
pub const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    upstream_requests: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    endpoint_active: IntGaugeVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    registry_instances: IntGaugeVec,
    registry_evictions: IntCounterVec,
    retries: IntCounterVec,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    otlp_exported: IntCounter,
    otlp_dropped: IntCounter,
    /// Serializes scrapes (the state gauges are reset and refilled).
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "waygate_http_request_duration_seconds",
                "Time from receiving a request to sending its response head, by route.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "service"],
        )
        .expect("valid metric");
        r.register(Box::new(http_duration.clone())).expect("registered once");
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Metrics {
            http_requests: counter(
                &r,
                "waygate_http_requests_total",
                "Requests answered, by route, service, method and status.",
                &["route", "service", "method", "status"],
            ),
            http_duration,
            upstream_requests: counter(
                &r,
                "waygate_upstream_requests_total",
                "Attempts sent to upstream endpoints, by outcome.",
                &["service", "endpoint", "outcome"],
            ),
            endpoint_healthy: gauge(
                &r,
                "waygate_endpoint_healthy",
                "1 when the endpoint may take traffic (healthy and not ejected), else 0.",
                &["service", "endpoint"],
            ),
            endpoint_active: gauge(
                &r,
                "waygate_endpoint_active_requests",
                "Requests in flight to the endpoint through this gateway.",
                &["service", "endpoint"],
            ),
            breaker_state: gauge(
                &r,
                "waygate_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["service"],
            ),
            breaker_transitions: counter(
                &r,
                "waygate_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                &["service", "to"],
            ),
            registry_instances: gauge(
                &r,
                "waygate_registry_instances",
                "Instances registered through /registry with a live lease.",
                &["service"],
            ),
            registry_evictions: counter(
                &r,
                "waygate_registry_evictions_total",
                "Registered instances evicted because their lease expired.",
                &["service"],
            ),
            retries: counter(&r, "waygate_retries_total", "Retries sent to another endpoint.", &["service"]),
            config_reloads: counter(&r, "waygate_config_reloads_total", "Config reloads, by result.", &["result"]),
            config_info: gauge(&r, "waygate_config_info", "The active config, by content hash (always 1).", &["hash"]),
            otlp_exported: plain_counter(
                &r,
                "waygate_otlp_spans_exported_total",
                "Spans accepted by the OTLP collector ([telemetry] otlp_endpoint).",
            ),
            otlp_dropped: plain_counter(
                &r,
                "waygate_otlp_spans_dropped_total",
                "Spans dropped: export queue full, or the OTLP collector failed or was unreachable.",
            ),
            registry: r,
            scrape: Mutex::new(()),
        }
        .with_zero_series()
    }

    /// Series that exist from the start at 0 (a family with no series would
    /// be missing from the scrape altogether).
    fn with_zero_series(self) -> Self {
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
        self
    }

    /// Creates a declared service's counters at 0.
    pub fn declare_service(&self, service: &str) {
        self.registry_evictions.with_label_values(&[service]);
        self.retries.with_label_values(&[service]);
    }

    /// Handles for one route (made when the route table is built).
    pub fn route(&self, route: &str, service: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            service: service.into(),
            duration: self.http_duration.with_label_values(&[route, service]),
            requests: self.http_requests.clone(),
            by_status: ArcSwap::from_pointee(HashMap::default()),
        }
    }

    /// Handles for one endpoint of a service.
    pub fn endpoint(&self, service: &str, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics {
            outcomes: Outcome::ALL.map(|o| self.upstream_requests.with_label_values(&[service, endpoint, o.label()])),
        }
    }

    /// Drops the series of an endpoint that left its service.
    pub fn remove_endpoint(&self, service: &str, endpoint: &str) {
        for o in Outcome::ALL {
            let _ = self.upstream_requests.remove_label_values(&[service, endpoint, o.label()]);
        }
    }

    pub fn retries(&self, service: &str) -> IntCounter {
        self.retries.with_label_values(&[service])
    }

    /// Transition counters of a service's breaker, indexed like `Phase`.
    pub fn breaker_transitions(&self, service: &str) -> [IntCounter; 3] {
        let c = |to: &str| self.breaker_transitions.with_label_values(&[service, to]);
        [c("closed"), c("open"), c("half_open")]
    }

    pub fn eviction(&self, service: &str) -> IntCounter {
        self.registry_evictions.with_label_values(&[service])
    }

    /// `waygate_otlp_spans_exported_total`.
    pub fn otlp_exported(&self) -> IntCounter {
        self.otlp_exported.clone()
    }

    /// `waygate_otlp_spans_dropped_total`.
    pub fn otlp_dropped(&self) -> IntCounter {
        self.otlp_dropped.clone()
    }

    pub fn reload(&self, success: bool) {
        self.config_reloads.with_label_values(&[if success { "success" } else { "failure" }]).inc();
    }

    /// The text exposition, with the state gauges read from `proxy` now.
    pub fn render(&self, proxy: &Proxy) -> Vec<u8> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for g in [
            &self.endpoint_healthy,
            &self.endpoint_active,
            &self.breaker_state,
            &self.registry_instances,
            &self.config_info,
        ] {
            g.reset();
        }
        let snap = proxy.snapshot();
        self.config_info.with_label_values(&[snap.config.hash.as_str()]).set(1);
        for (name, svc) in &snap.services {
            let set = svc.endpoints();
            for ep in &set.endpoints {
                let labels = [name.as_str(), &*ep.address];
                self.endpoint_healthy.with_label_values(&labels).set(i64::from(ep.stats.is_available()));
                self.endpoint_active.with_label_values(&labels).set(ep.stats.active() as i64);
            }
            if let Some(b) = &svc.breaker {
                self.breaker_state.with_label_values(&[name.as_str()]).set(b.phase() as i64);
            }
        }
        for name in snap.services.keys() {
            self.registry_instances.with_label_values(&[name.as_str()]).set(0);
        }
        proxy.registry().with_table(|t| {
            for (name, leases) in t.services() {
                self.registry_instances.with_label_values(&[name.as_str()]).set(leases.len() as i64);
            }
        });
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Per-route handles. Status codes seen on the route get their counter the
/// first time (copy-on-write map), then recording is a lock-free lookup.
pub struct RouteMetrics {
    route: Box<str>,
    service: Box<str>,
    duration: Histogram,
    requests: IntCounterVec,
    /// Fx: a lookup per request, keys bounded (method index, status code).
    by_status: ArcSwap<HashMap<(u8, u16), IntCounter, FxBuildHasher>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").field("route", &self.route).finish_non_exhaustive()
    }
}

/// Standard methods by index; anything else is labelled `OTHER` (bounded cardinality).
const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "OTHER"];

fn method_index(m: &Method) -> u8 {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

impl RouteMetrics {
    /// Records one answered request.
    pub fn record(&self, method: &Method, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let key = (method_index(method), status);
        if let Some(c) = self.by_status.load().get(&key) {
            c.inc();
            return;
        }
        let status_buf = itoa_status(status);
        let status_str = std::str::from_utf8(&status_buf).unwrap_or("0");
        let c = self.requests.with_label_values(&[&*self.route, &*self.service, METHODS[key.0 as usize], status_str]);
        c.inc();
        self.by_status.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(key, c.clone());
            m
        });
    }
}

fn itoa_status(s: u16) -> [u8; 3] {
    let s = s.min(999);
    [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]
}

/// Per-endpoint handles, indexed by outcome.
#[derive(Debug)]
pub struct EndpointMetrics {
    outcomes: [IntCounter; 4],
}

impl EndpointMetrics {
    pub fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counter_handles_are_reused() {
        let m = Metrics::new();
        let r = m.route("/api", "svc");
        for _ in 0..3 {
            r.record(&Method::GET, 200, 0.001);
        }
        r.record(&Method::from_bytes(b"PURGE").unwrap(), 503, 0.002);
        assert_eq!(r.by_status.load().len(), 2);
        let text =
            String::from_utf8(TextEncoder::new().encode_to_string(&m.registry.gather()).unwrap().into_bytes()).unwrap();
        assert!(
            text.contains(r#"waygate_http_requests_total{method="GET",route="/api",service="svc",status="200"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"method="OTHER""#), "{text}");
    }

    #[test]
    fn status_digits() {
        assert_eq!(&itoa_status(200), b"200");
        assert_eq!(&itoa_status(504), b"504");
    }
}
