//! Admin-listener and `/metrics` helpers (`use support::admin::*;`): requests
//! to the admin API, registry writes, reading `/admin/upstreams`, a parser for
//! the Prometheus text exposition, sending any method, and counting only the
//! requests an upstream got from live traffic (not from health checks).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::{Method, Request};
use serde_json::{json, Value};

use super::*;

/// The health-check path the tests configure.
pub const HEALTH_PATH: &str = "/healthz";

/// Requests `up` received from live traffic, i.e. not on [`HEALTH_PATH`].
pub fn live_requests(up: &Upstream) -> usize {
    up.requests().iter().filter(|r| r.path != HEALTH_PATH).count()
}

/// Health-check requests `up` received.
pub fn health_checks(up: &Upstream) -> usize {
    up.requests().iter().filter(|r| r.path == HEALTH_PATH).count()
}

/// Live requests of `up` with this method.
pub fn requests_with(up: &Upstream, method: &Method) -> usize {
    up.requests().iter().filter(|r| r.path != HEALTH_PATH && r.method == method).count()
}

/// Sends `method path` with `body` to the proxy listener.
pub async fn send(gw: &TestGateway, method: Method, path: &str, body: &'static str) -> Resp {
    let req = Request::builder().method(method).uri(path).body(full(body)).unwrap();
    gw.request(req).await
}

/// Runs `fut` and says how long it took.
pub async fn timed<T>(fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = fut.await;
    (out, start.elapsed())
}

/// One request to the admin listener.
pub async fn admin(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)], body: TestBody) -> Resp {
    let mut req = Request::builder().method(method.clone()).uri(gw.admin_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).unwrap();
    let what = format!("admin {method} {path}");
    let resp =
        within(EXCHANGE_TIMEOUT, &what, gw.client.request(req)).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
    within(EXCHANGE_TIMEOUT, &what, Resp::collect(resp)).await
}

/// `POST path` on the admin listener with a JSON body.
pub async fn admin_post_json(gw: &TestGateway, path: &str, body: &Value) -> Resp {
    admin(gw, Method::POST, path, &[("content-type", "application/json")], full(body.to_string())).await
}

/// `DELETE path` on the admin listener.
pub async fn admin_delete(gw: &TestGateway, path: &str) -> Resp {
    admin(gw, Method::DELETE, path, &[], empty()).await
}

/// The `POST /registry` body of an instance.
pub fn registration(service: &str, id: &str, address: &str) -> Value {
    json!({ "service": service, "id": id, "address": address })
}

/// Registers (or renews) an instance through `POST /registry` with this body;
/// asserts 200 and returns the answer.
pub async fn register_json(gw: &TestGateway, body: &Value) -> Value {
    let r = admin_post_json(gw, "/registry", body).await;
    assert_eq!(r.status, 200, "POST /registry {body}: {}", r.text());
    r.json()
}

/// Registers (or renews) an instance through `POST /registry`; asserts 200
/// and returns the answer.
pub async fn register(gw: &TestGateway, service: &str, id: &str, address: &str) -> Value {
    register_json(gw, &registration(service, id, address)).await
}

// ---------------------------------------------------------------------------
// /admin/upstreams
// ---------------------------------------------------------------------------

pub async fn upstreams(gw: &TestGateway) -> Value {
    let r = gw.admin_get("/admin/upstreams").await;
    assert_eq!(r.status, 200, "/admin/upstreams: {}", r.text());
    r.json()
}

/// The `/admin/upstreams` entry of one service (`null` when it is not listed).
pub async fn upstream_entry(gw: &TestGateway, service: &str) -> Value {
    upstreams(gw).await["services"][service].clone()
}

/// The `/admin/upstreams` entry of one endpoint of a service.
pub async fn endpoint_entry(gw: &TestGateway, service: &str, address: &str) -> Value {
    let v = upstreams(gw).await;
    v["services"][service]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == address).cloned())
        .unwrap_or_else(|| panic!("no endpoint {address} of {service} in /admin/upstreams: {v}"))
}

/// `(state, reason)` of an endpoint in `/admin/upstreams`.
pub async fn endpoint_state(gw: &TestGateway, service: &str, address: &str) -> (String, String) {
    let e = endpoint_entry(gw, service, address).await;
    (e["state"].as_str().unwrap_or_default().to_string(), e["reason"].as_str().unwrap_or_default().to_string())
}

/// The `circuit_breaker` object of a service in `/admin/upstreams`.
pub async fn breaker(gw: &TestGateway, service: &str) -> Value {
    let v = upstreams(gw).await;
    let b = v["services"][service]["circuit_breaker"].clone();
    assert!(b.is_object(), "no circuit_breaker for {service}: {v}");
    b
}

pub async fn breaker_state(gw: &TestGateway, service: &str) -> String {
    breaker(gw, service).await["state"].as_str().unwrap_or_default().to_string()
}

/// Polls until the endpoint shows `state`; returns its reason.
pub async fn wait_for_state(gw: &TestGateway, service: &str, address: &str, state: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (now, reason) = endpoint_state(gw, service, address).await;
        if now == state {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "endpoint {address} of {service} not {state} within {timeout:?}: it is {now} ({reason})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

/// One sample line of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
    /// `# TYPE` of each family.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line: {line:?}")));
        }
        Scrape { text: text.to_string(), samples, types }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the matching samples (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// The value of the one matching sample, if any (panics on several).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.find(name, labels).collect();
        assert!(found.len() <= 1, "several samples of {name} match {labels:?}: {found:?}");
        found.first().map(|s| s.value)
    }

    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.find(name, labels).next().is_some()
    }

    /// Lines mentioning `needle` (for failure messages).
    pub fn lines_with(&self, needle: &str) -> String {
        self.text.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>().join("\n")
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let eq = r.find('=')?;
            let key = r[..eq].trim().to_string();
            let mut chars = r[eq + 1..].char_indices();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            let mut end = None;
            let mut escaped = false;
            for (i, c) in chars {
                if escaped {
                    value.push(match c {
                        'n' => '\n',
                        other => other,
                    });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(eq + 1 + i + 1);
                    break;
                } else {
                    value.push(c);
                }
            }
            labels.insert(key, value);
            r = &r[end?..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

pub async fn scrape(gw: &TestGateway) -> Scrape {
    let r = gw.admin_get("/metrics").await;
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    Scrape::parse(&r.text())
}
