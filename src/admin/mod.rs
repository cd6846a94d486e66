//! The admin listener: `/health`, `/ready`, `/registry` (see [`registry`]),
//! `/admin/upstreams`, `/admin/config`. It is a separate port; nothing here
//! is reachable on the proxy listener.

pub mod registry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::breaker::Phase;
use crate::proxy::{Proxy, ResponseBody};
use crate::registry::Endpoint;

/// What the admin handlers read.
#[derive(Debug)]
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    /// True from the start of a drain: `/ready` answers 503.
    pub draining: AtomicBool,
}

impl AdminState {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        AdminState { proxy, draining: AtomicBool::new(false) }
    }
}

pub async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Response<ResponseBody> {
    let raw_path = req.uri().path();
    if raw_path == "/registry" || raw_path.starts_with("/registry/") {
        return registry::handle(&state, req).await;
    }
    let path = raw_path.trim_end_matches('/');
    let method = req.method();
    let (allowed, result): (&str, Option<(StatusCode, Value)>) = match path {
        "/health" => ("GET, HEAD", get(method, || (StatusCode::OK, json!({"status": "ok"})))),
        "/ready" => (
            "GET, HEAD",
            get(method, || {
                if state.draining.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "draining"}))
                } else {
                    (StatusCode::OK, json!({"status": "ready"}))
                }
            }),
        ),
        "/admin/upstreams" => ("GET, HEAD", get(method, || (StatusCode::OK, upstreams(&state.proxy)))),
        "/metrics" if method == Method::GET || method == Method::HEAD => {
            let mut r = Response::new(ResponseBody::full(Bytes::from(state.proxy.metrics().render(&state.proxy))));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            return r;
        }
        "/metrics" => ("GET, HEAD", None),
        "/admin/config" => ("GET, HEAD", get(method, || (StatusCode::OK, config_info(&state.proxy)))),
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "message": format!("no admin endpoint at {}", req.uri().path())}),
            )
        }
    };
    match result {
        Some((status, body)) => json_response(status, &body),
        None => method_not_allowed(method, path, allowed),
    }
}

pub fn method_not_allowed(method: &Method, path: &str, allowed: &'static str) -> Response<ResponseBody> {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "message": format!("{method} is not allowed on {path}")}),
    );
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
    r
}

fn get(method: &Method, f: impl FnOnce() -> (StatusCode, Value)) -> Option<(StatusCode, Value)> {
    (method == Method::GET || method == Method::HEAD).then(f)
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn ms_ago(t: SystemTime) -> u64 {
    SystemTime::now().duration_since(t).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Every service with its breaker state and every endpoint with its one state
/// and the reason and time of its last transition (recently expired
/// instances included, as `expired`).
fn upstreams(proxy: &Proxy) -> Value {
    let snap = proxy.snapshot();
    proxy.registry().with_table(|table| {
        let mut names: Vec<&String> = snap.services.keys().collect();
        names.extend(table.services().map(|(n, _)| n));
        names.extend(table.expired_services());
        names.sort();
        names.dedup();
        let mut services = serde_json::Map::new();
        for name in names {
            let svc = snap.services.get(name);
            let live: Vec<Arc<Endpoint>> = match svc {
                Some(svc) => svc.endpoints().endpoints.clone(),
                None => table.endpoints_of(name),
            };
            let endpoints: Vec<Value> = live
                .iter()
                .chain(table.expired_of(name).map(|t| &t.endpoint))
                .map(|ep| {
                    let t = ep.stats.transition();
                    json!({
                        "id": ep.id.as_ref(),
                        "address": ep.address.as_ref(),
                        "source": ep.source.as_str(),
                        "weight": ep.weight,
                        "state": t.state.as_str(),
                        "reason": t.reason,
                        "since": rfc3339(t.at),
                        "since_ms_ago": ms_ago(t.at),
                        "active_requests": ep.stats.active(),
                    })
                })
                .collect();
            let entry = match svc {
                Some(svc) => json!({
                    "declared": true,
                    "balancer": svc.balancer().kind().as_str(),
                    "circuit_breaker": match &svc.breaker {
                        Some(b) => json!({
                            "state": b.phase().as_str(),
                            // Rounded up: 0 only once trials are really let through.
                            "retry_after_ms": b.retry_after().map(|d| d.as_micros().div_ceil(1000) as u64),
                            "opened_total": b.transitions_to(Phase::Open),
                        }),
                        None => json!({"state": "disabled"}),
                    },
                    "retries_total": svc.retries(),
                    "inflight": svc.inflight(),
                    "max_concurrent_requests": svc.config.max_concurrent_requests,
                    "endpoints": endpoints,
                }),
                // Registered under a name no [[services]] entry declares: kept and
                // listed, but no route can reach it until the config declares it.
                None => json!({ "declared": false, "endpoints": endpoints }),
            };
            services.insert(name.clone(), entry);
        }
        json!({ "services": services })
    })
}

fn config_info(proxy: &Proxy) -> Value {
    let snap = proxy.snapshot();
    let c = &snap.config;
    json!({
        "hash": c.hash,
        "loaded_at": rfc3339(c.loaded_at),
        "path": c.path.as_ref().map(|p| p.display().to_string()),
        "services": c.services.len(),
        "routes": c.routes.len(),
    })
}
