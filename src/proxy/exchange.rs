//! One request's accounting from routing to the last byte of its response:
//! the service slot, the endpoint's in-flight count, the access-log event and
//! (with `[telemetry] otlp_endpoint` set) the spans handed to the exporter.
//! It ends when the response body ends or is dropped (see `ResponseBody`),
//! so counters stay exact however the exchange ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method};

use super::{headers, RouteEntry};
use crate::health::Outcome;
use crate::metrics::RouteMetrics;
use crate::otlp::{self, AttemptSpan, Exporter, RequestSpan};
use crate::registry::Endpoint;
use crate::service::Service;

pub struct Exchange {
    start: Instant,
    method: Method,
    route: Option<Arc<RouteEntry>>,
    /// Where the request is counted when no route matched.
    no_route: Option<Arc<RouteMetrics>>,
    /// Set once a service slot (`max_concurrent_requests`) is held.
    holds_slot: bool,
    endpoint: Option<Arc<Endpoint>>,
    status: u16,
    bytes_out: u64,
    /// Present only when the access log is enabled, so a gateway with
    /// access logs off copies no strings per request. Boxed: the exchange
    /// lives in every request's future, whose size is paid in copies and
    /// memory (see `handler_future_stays_small`).
    log: Option<Box<LogFields>>,
    /// Present only when an OTLP exporter runs, so a gateway without one
    /// records no spans.
    span: Option<Box<RequestSpan>>,
    exporter: Option<Exporter>,
}

/// Without copies (the path is a reference-counted slice of the request's
/// own buffer): the access log costs one allocation here, for this record.
struct LogFields {
    path: Option<PathAndQuery>,
    /// Request body bytes read from the client, shared with the body on its
    /// way upstream; made only for a request that has a body.
    bytes_in: Option<Arc<std::sync::atomic::AtomicU64>>,
    request_id: HeaderValue,
    trace_id: [u8; 32],
    body_error: bool,
}

impl Exchange {
    pub fn new(
        start: Instant,
        method: &Method,
        uri: &http::Uri,
        request_id: &HeaderValue,
        exporter: Option<&Exporter>,
    ) -> Self {
        let log = access_log_enabled().then(|| {
            Box::new(LogFields {
                path: uri.path_and_query().cloned(),
                bytes_in: None,
                request_id: request_id.clone(),
                trace_id: [b'0'; 32],
                body_error: false,
            })
        });
        let path = uri.path();
        let span = exporter.map(|_| {
            let now = otlp::unix_nanos();
            Box::new(RequestSpan {
                trace_id: [0; 16],
                span_id: [0; 8],
                parent_id: None,
                start_ns: now.saturating_sub(start.elapsed().as_nanos() as u64),
                end_ns: 0,
                method: method.clone(),
                path: path.to_string(),
                route: None,
                service: None,
                request_id: request_id.to_str().unwrap_or("").to_string(),
                status: 0,
                error: false,
                attempts: Vec::new(),
            })
        });
        Exchange {
            start,
            method: method.clone(),
            route: None,
            no_route: None,
            holds_slot: false,
            endpoint: None,
            status: 0,
            bytes_out: 0,
            log,
            span,
            exporter: exporter.cloned(),
        }
    }

    /// When the request started (tokio's clock, as it was given).
    pub fn started(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start)
    }

    /// Where the request body's size is counted (only with the access log on).
    pub fn request_body_counter(&mut self) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        self.log.as_mut().map(|l| l.bytes_in.get_or_insert_with(Default::default).clone())
    }

    pub fn set_route(&mut self, route: Arc<RouteEntry>) {
        self.route = Some(route);
    }

    pub fn set_no_route(&mut self, metrics: Arc<RouteMetrics>) {
        self.no_route = Some(metrics);
    }

    pub fn set_trace_id(&mut self, trace_id: [u8; 32]) {
        if let Some(l) = self.log.as_mut() {
            l.trace_id = trace_id;
        }
    }

    /// Continues (or starts) the W3C trace in the upstream request's
    /// `traceparent`; the span id sent upstream is this request's span id,
    /// the incoming parent id (when valid) its parent.
    pub fn propagate_trace(&mut self, headers: &mut HeaderMap, added: &mut headers::Added) {
        let incoming = match &self.span {
            Some(_) => headers.get(&headers::TRACEPARENT).cloned(),
            None => None,
        };
        let trace_id = headers::propagate_traceparent(headers, added);
        self.set_trace_id(trace_id);
        if let Some(s) = self.span.as_mut() {
            s.trace_id = otlp::hex_id(&trace_id).unwrap_or_default();
            if let Some(out) = added.get(headers, &headers::TRACEPARENT) {
                s.span_id = otlp::hex_id(&out.as_bytes()[36..52]).unwrap_or_default();
            }
            // The incoming header was used when its trace id was kept.
            s.parent_id = incoming
                .filter(|v| v.len() >= 55 && v.as_bytes()[3..35] == trace_id)
                .and_then(|v| otlp::hex_id(&v.as_bytes()[36..52]));
        }
    }

    /// The start of an upstream attempt, for its span (None without an exporter).
    pub fn attempt_started(&self) -> Option<u64> {
        self.span.as_ref().map(|_| otlp::unix_nanos())
    }

    /// An upstream attempt ended with `outcome` (and the upstream's `status`, if it answered).
    pub fn record_attempt(&mut self, started: Option<u64>, endpoint: &Endpoint, outcome: Outcome, status: Option<u16>) {
        if let (Some(s), Some(start_ns)) = (self.span.as_mut(), started) {
            s.attempts.push(AttemptSpan {
                span_id: (headers::fast_random() | 1).to_be_bytes(),
                start_ns,
                end_ns: otlp::unix_nanos(),
                endpoint: endpoint.address.clone(),
                outcome,
                status,
            });
        }
    }

    /// Records that a slot of the route's service is held; it is released
    /// when this ends.
    pub fn hold_slot(&mut self) {
        self.holds_slot = self.route.is_some();
    }

    fn service(&self) -> Option<&Service> {
        self.route.as_ref().map(|r| &*r.service)
    }

    /// Counts the request against `endpoint` until this ends.
    pub fn use_endpoint(&mut self, endpoint: Arc<Endpoint>) {
        endpoint.stats.active.fetch_add(1, Ordering::Relaxed);
        if let Some(prev) = self.endpoint.replace(endpoint) {
            prev.stats.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        self.endpoint.as_ref()
    }

    /// The response head is ready: records the request's status and
    /// duration (time to the response head).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
        let seconds = self.start.elapsed().as_secs_f64();
        match (&self.route, &self.no_route) {
            (Some(r), _) => r.metrics.record(&self.method, status, seconds),
            (None, Some(m)) => m.record(&self.method, status, seconds),
            (None, None) => {}
        }
    }

    /// The response body is done (or dropped): `bytes` were sent to the client.
    pub fn finish(mut self, bytes: u64, body_error: bool) {
        self.bytes_out = bytes;
        if let Some(s) = self.span.as_mut() {
            s.error |= body_error;
        }
        if let Some(l) = self.log.as_mut() {
            l.body_error = body_error;
        }
        // Drop does the rest.
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(ep) = &self.endpoint {
            ep.stats.active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(svc) = self.service().filter(|_| self.holds_slot) {
            svc.release();
        }
        if let (Some(mut s), Some(exporter)) = (self.span.take(), self.exporter.take()) {
            if s.span_id == [0; 8] {
                // Answered before trace propagation (no route, overload): a trace of its own.
                s.trace_id[..8].copy_from_slice(&headers::fast_random().to_be_bytes());
                s.trace_id[8..].copy_from_slice(&(headers::fast_random() | 1).to_be_bytes());
                s.span_id = (headers::fast_random() | 1).to_be_bytes();
            }
            s.end_ns = otlp::unix_nanos();
            s.status = self.status;
            s.error |= self.status == 0 || self.status >= 500;
            s.route = self.route.as_ref().map(|r| r.label.clone());
            s.service = self.service().map(|s| s.name.clone());
            exporter.send(s);
        }
        if let Some(l) = self.log.take() {
            let route = self.route.as_ref().map(|r| r.label.as_ref()).unwrap_or("");
            let service = self.service().map(|s| s.name.as_ref());
            crate::telemetry::Access {
                method: self.method.as_str(),
                path: l.path.as_ref().map_or("/", |p| p.path()),
                route,
                service: service.unwrap_or(""),
                endpoint: self.endpoint.as_ref().map_or("", |e| e.address.as_ref()),
                status: self.status,
                duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
                bytes_in: l.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed)),
                bytes_out: self.bytes_out,
                body_error: l.body_error,
                request_id: l.request_id.to_str().unwrap_or(""),
                trace_id: std::str::from_utf8(&l.trace_id).unwrap_or(""),
            }
            .emit();
        }
    }
}

fn access_log_enabled() -> bool {
    tracing::enabled!(target: "waygate::access", tracing::Level::INFO)
}
