//! One request's accounting from routing to the last byte of its response:
//! the service slot, the endpoint's in-flight count and the access-log event.
//! It ends when the response body ends or is dropped (see `ResponseBody`),
//! so counters stay exact however the exchange ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method};

use super::RouteEntry;
use crate::metrics::RouteMetrics;
use crate::registry::Endpoint;
use crate::service::Service;

pub struct Exchange {
    start: Instant,
    method: Method,
    route: Option<Arc<RouteEntry>>,
    /// Where the request is counted when no route matched.
    no_route: Option<Arc<RouteMetrics>>,
    /// Set once a service slot (`max_concurrent_requests`) is held.
    service: Option<Arc<Service>>,
    endpoint: Option<Arc<Endpoint>>,
    status: u16,
    bytes_out: u64,
    /// Present only when the access log is enabled, so a gateway with
    /// access logs off copies no strings per request.
    log: Option<Box<LogFields>>,
}

struct LogFields {
    path: String,
    request_id: HeaderValue,
    trace_id: [u8; 32],
    body_error: bool,
}

impl Exchange {
    pub fn new(start: Instant, method: &Method, path: &str, request_id: &HeaderValue) -> Self {
        let log = access_log_enabled().then(|| {
            Box::new(LogFields {
                path: path.to_string(),
                request_id: request_id.clone(),
                trace_id: [b'0'; 32],
                body_error: false,
            })
        });
        Exchange {
            start,
            method: method.clone(),
            route: None,
            no_route: None,
            service: None,
            endpoint: None,
            status: 0,
            bytes_out: 0,
            log,
        }
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

    /// Records that a service slot is held; it is released when this ends.
    pub fn hold_service(&mut self, service: Arc<Service>) {
        self.service = Some(service);
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
        if let Some(svc) = &self.service {
            svc.release();
        }
        if let Some(l) = self.log.take() {
            let route = self.route.as_ref().map(|r| r.label.as_ref()).unwrap_or("");
            let service =
                self.service.as_ref().map(|s| s.name.as_ref()).or(self.route.as_ref().map(|r| r.service.name.as_ref()));
            tracing::info!(
                target: "waygate::access",
                method = %self.method,
                path = %l.path,
                route,
                service = service.unwrap_or(""),
                endpoint = self.endpoint.as_ref().map_or("", |e| e.address.as_ref()),
                status = self.status,
                duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
                bytes_out = self.bytes_out,
                body_error = l.body_error,
                request_id = l.request_id.to_str().unwrap_or(""),
                trace_id = std::str::from_utf8(&l.trace_id).unwrap_or(""),
                "request"
            );
        }
    }
}

fn access_log_enabled() -> bool {
    tracing::enabled!(target: "waygate::access", tracing::Level::INFO)
}
