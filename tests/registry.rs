//! The registry API over real HTTP (SPEC §2 `[registry]`, §4, issue 3):
//! registration and heartbeats route traffic, lapsed leases are evicted
//! within a second, DELETE deregisters, bad input of every kind changes
//! nothing, the token guards writes, the proxy port knows no `/registry`,
//! and snapshots carry leases across a restart.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::admin::*;
use support::*;

// ---------------------------------------------------------------------------
// Helpers (local to this file)
// ---------------------------------------------------------------------------

async fn post_registry(gw: &TestGateway, body: &Value) -> Resp {
    admin_post_json(gw, "/registry", body).await
}

async fn post_registry_with(gw: &TestGateway, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    admin(gw, Method::POST, "/registry", &h, full(body.to_string())).await
}

async fn delete_instance(gw: &TestGateway, service: &str, id: &str, headers: &[(&str, &str)]) -> Resp {
    admin(gw, Method::DELETE, &format!("/registry/{service}/{id}"), headers, empty()).await
}

/// `GET /registry` with the fields that move by themselves (the time of the
/// answer, lease ages) blanked, so two answers can be compared.
async fn registry_state(gw: &TestGateway) -> Value {
    let r = gw.admin_get("/registry").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut v = r.json();
    if let Some(o) = v.as_object_mut() {
        o.remove("generated_at");
    }
    if let Some(services) = v["services"].as_object_mut() {
        for instances in services.values_mut() {
            for i in instances.as_array_mut().expect("instances are an array") {
                if !i["last_heartbeat_ms_ago"].is_null() {
                    i["last_heartbeat_ms_ago"] = json!("<number>");
                }
            }
        }
    }
    v
}

/// The instances of `service` in `GET /registry` (panics when it is not listed).
async fn instances(gw: &TestGateway, service: &str) -> Vec<Value> {
    let v = gw.admin_get("/registry").await.json();
    v["services"][service].as_array().unwrap_or_else(|| panic!("{service} not in GET /registry: {v}")).clone()
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|i| i["id"] == id)
}

/// Is `id` listed under `service` in `GET /registry`?
async fn listed(gw: &TestGateway, service: &str, id: &str) -> bool {
    let v = gw.admin_get("/registry").await.json();
    v["services"][service].as_array().is_some_and(|l| find(l, id).is_some())
}

/// A body sent without a size hint, so HTTP/1.1 sends it chunked.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn chunked(data: Vec<u8>) -> TestBody {
    let frames: VecDeque<Bytes> = data.chunks(8 * 1024).map(Bytes::copy_from_slice).collect();
    Chunked(frames).map_err(|never| match never {}).boxed()
}

/// A registration body of exactly `len` bytes (padded in `metadata`).
fn padded_registration(service: &str, id: &str, address: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"service":"{service}","id":"{id}","address":"{address}","metadata":{{"pad":""#);
    let tail = r#""}}"#;
    assert!(len >= head.len() + tail.len());
    let mut s = head;
    s.push_str(&"x".repeat(len - s.len() - tail.len()));
    s.push_str(tail);
    assert_eq!(s.len(), len);
    s.into_bytes()
}

/// Sends `n` GETs to `path` through the proxy; returns the answering instances.
async fn spray(gw: &TestGateway, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = gw.get(path).await;
        out.push(r.instance().map(str::to_string).unwrap_or_else(|| format!("status {}", r.status.as_u16())));
    }
    out
}

/// `[registry]` table plus a service `svc` over `static_eps`, routed at `/api`.
fn registry_config(registry: &str, static_eps: &[String]) -> String {
    format!("[registry]\n{registry}\n\n")
        + &service_toml("svc", static_eps, "")
        + &route_toml("/api", "svc", "strip_prefix = true")
}

// ---------------------------------------------------------------------------
// Registration, heartbeats, listing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn registered_instance_gets_traffic_and_heartbeat_renews() {
    let up = Upstream::start("reg-1").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[])).await;

    // No instance yet: the service has nowhere to send requests.
    assert_gateway_error(&gw.get("/api/x").await, 503, "no_healthy_upstream");

    let body = json!({ "service": "svc", "id": "svc-1", "address": up.endpoint() });
    let r = post_registry(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(r.json(), json!({ "service": "svc", "id": "svc-1", "ttl_ms": 20_000 }), "the POST answer");

    // Traffic reaches it through the route, within a second (SPEC §4).
    eventually(Duration::from_secs(1), "the registered instance answers", || async {
        gw.get("/api/hello").await.instance() == Some("reg-1")
    })
    .await;
    let last = up.last();
    assert_eq!(last.path, "/hello", "strip_prefix applies to registered instances too");

    // The same body again is a heartbeat: still one instance, lease renewed.
    eventually(Duration::from_secs(2), "the lease ages", || async {
        instances(&gw, "svc").await[0]["last_heartbeat_ms_ago"].as_u64().unwrap() >= 300
    })
    .await;
    let r = post_registry(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({ "service": "svc", "id": "svc-1", "ttl_ms": 20_000 }));
    let list = instances(&gw, "svc").await;
    assert_eq!(list.len(), 1, "a heartbeat does not add an instance: {list:?}");
    let ago = list[0]["last_heartbeat_ms_ago"].as_u64().unwrap();
    assert!(ago < 300, "the heartbeat renewed the lease: last_heartbeat_ms_ago {ago}");
    let metrics = scrape(&gw).await;
    assert_eq!(metrics.sum("waygate_registry_instances", &[("service", "svc")]), 1.0, "{}", metrics.text);

    for _ in 0..5 {
        assert_eq!(gw.get("/api/again").await.instance(), Some("reg-1"));
    }
}

#[tokio::test]
async fn listing_shows_every_field() {
    let st = Upstream::start("static").await;
    let up = Upstream::start("reg").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[st.endpoint()])).await;
    register_json(
        &gw,
        &json!({
            "service": "svc", "id": "svc-reg", "address": up.endpoint(),
            "weight": 3, "metadata": { "zone": "eu-1", "version": "2.1" }
        }),
    )
    .await;

    let r = gw.admin_get("/registry").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    let v = r.json();
    let services = v["services"].as_object().unwrap_or_else(|| panic!("no services object: {v}"));
    assert_eq!(services.keys().collect::<Vec<_>>(), ["svc"], "{v}");
    let list = services["svc"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let fields = [
        "id",
        "address",
        "source",
        "healthy",
        "ejected",
        "active_requests",
        "weight",
        "metadata",
        "last_heartbeat_ms_ago",
    ];
    for i in list {
        for f in fields {
            assert!(i.get(f).is_some(), "instance lacks `{f}`: {i}");
        }
    }

    let s = list.iter().find(|i| i["source"] == "static").unwrap_or_else(|| panic!("no static instance: {v}"));
    assert_eq!(s["address"], st.endpoint());
    assert_eq!(s["healthy"], true);
    assert_eq!(s["ejected"], false);
    assert_eq!(s["active_requests"], 0);
    assert_eq!(s["weight"], 1);
    assert!(s["metadata"].is_object(), "{s}");
    assert!(s["last_heartbeat_ms_ago"].is_null(), "null for a static instance: {s}");

    let g = find(list, "svc-reg").unwrap_or_else(|| panic!("no svc-reg: {v}"));
    assert_eq!(g["source"], "registry");
    assert_eq!(g["address"], up.endpoint());
    assert_eq!(g["healthy"], true);
    assert_eq!(g["ejected"], false);
    assert_eq!(g["active_requests"], 0);
    assert_eq!(g["weight"], 3);
    assert_eq!(g["metadata"], json!({ "zone": "eu-1", "version": "2.1" }));
    let ago = g["last_heartbeat_ms_ago"].as_u64().unwrap_or_else(|| panic!("a number for a registered one: {g}"));
    assert!(ago < 10_000, "{g}");

    // GET /registry/{service}: the same instances as an array.
    let r = gw.admin_get("/registry/svc").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let one = r.json();
    let one = one.as_array().unwrap_or_else(|| panic!("an array: {one}"));
    assert_eq!(one.len(), 2);
    let ids = |l: &[Value]| {
        let mut ids: Vec<String> = l.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(one), ids(list));
    assert_eq!(find(one, "svc-reg").unwrap()["metadata"]["zone"], "eu-1");

    // Unknown service: 404 JSON.
    let r = gw.admin_get("/registry/nope").await;
    assert_json_error(&r, 404, "GET /registry/nope");

    // Both instances take traffic (round robin, the weight aside).
    let seen = spray(&gw, "/api/x", 12).await;
    assert!(seen.iter().any(|s| s == "static") && seen.iter().any(|s| s == "reg"), "{seen:?}");
}

#[tokio::test]
async fn unrouted_service_is_kept_and_listed() {
    let up = Upstream::start("lonely").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[])).await;
    register_json(&gw, &json!({ "service": "nobody-routes-me", "id": "n-1", "address": up.endpoint() })).await;

    let list = instances(&gw, "nobody-routes-me").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "n-1");
    assert_eq!(list[0]["source"], "registry");
    let r = gw.admin_get("/registry/nobody-routes-me").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    // The declared service is still listed next to it.
    assert!(gw.admin_get("/registry").await.json()["services"].get("svc").is_some());
    // Heartbeats keep working for it, and it can be deregistered.
    register_json(&gw, &json!({ "service": "nobody-routes-me", "id": "n-1", "address": up.endpoint() })).await;
    assert_eq!(instances(&gw, "nobody-routes-me").await.len(), 1);
    let r = delete_instance(&gw, "nobody-routes-me", "n-1", &[]).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(up.count(), 0, "no route reaches it");
}

#[tokio::test]
async fn names_of_128_characters_and_a_64_kib_body_are_accepted() {
    let up = Upstream::start("edge").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[])).await;
    let long = "a".repeat(128);
    let r = post_registry(&gw, &json!({ "service": long, "id": "A.b_c-9", "address": up.endpoint() })).await;
    assert_eq!(r.status, 200, "128 characters is the limit: {}", r.text());
    let r = post_registry(&gw, &json!({ "service": "svc", "id": long, "address": up.endpoint() })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A host name is a valid address too.
    let r = post_registry(&gw, &json!({ "service": "svc", "id": "by-name", "address": "localhost:9" })).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Exactly 64 KiB: accepted (only bodies *over* 64 KiB are refused).
    let body = padded_registration("svc", "big", &up.endpoint(), 64 * 1024);
    let r = admin(&gw, Method::POST, "/registry", &[], full(body)).await;
    assert_eq!(r.status, 200, "a 65536-byte body: {}", r.text());
    assert!(find(&instances(&gw, "svc").await, "big").is_some());
}

// ---------------------------------------------------------------------------
// Leases: eviction, deregistration, address updates
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lapsed_lease_is_evicted_and_traffic_stops_within_a_second() {
    const TTL: Duration = Duration::from_millis(300);
    let st = Upstream::start("static").await;
    let up = Upstream::start("leased").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"300ms\"", &[st.endpoint()])).await;
    let body = registration("svc", "leased-1", &up.endpoint());
    let evictions_before = scrape(&gw).await.sum("waygate_registry_evictions_total", &[("service", "svc")]);

    // Heartbeats every 100 ms keep it alive for well over one TTL.
    register_json(&gw, &body).await;
    let kept_until = Instant::now() + TTL * 3;
    let mut last_beat = Instant::now();
    let mut beats = 0;
    while Instant::now() < kept_until && beats < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        register_json(&gw, &body).await;
        last_beat = Instant::now();
        beats += 1;
        assert!(listed(&gw, "svc", "leased-1").await, "evicted although heartbeats came every 100 ms");
    }
    let seen = spray(&gw, "/api/x", 6).await;
    assert!(seen.iter().any(|s| s == "leased"), "the leased instance takes traffic: {seen:?}");

    // Heartbeats stop. Within ttl + 1 s of the last one, it is gone and
    // gets no new requests.
    let deadline = last_beat + TTL + Duration::from_secs(1);
    eventually(deadline.saturating_duration_since(Instant::now()), "traffic to the lapsed instance stops", || async {
        let before = up.count();
        let seen = spray(&gw, "/api/y", 4).await;
        up.count() == before && seen.iter().all(|s| s == "static") && !listed(&gw, "svc", "leased-1").await
    })
    .await;
    let evicted_at = last_beat.elapsed();
    assert!(evicted_at >= TTL, "evicted after {evicted_at:?}, before its TTL of {TTL:?}");

    // The static endpoint keeps serving; the lapsed one stays out.
    let before = up.count();
    let seen = spray(&gw, "/api/z", 10).await;
    assert!(seen.iter().all(|s| s == "static"), "{seen:?}");
    assert_eq!(up.count(), before);

    // /admin/upstreams shows it as expired, with a reason; the counter grew.
    let u = gw.admin_get("/admin/upstreams").await.json();
    let eps = u["services"]["svc"]["endpoints"].as_array().unwrap_or_else(|| panic!("{u}"));
    let e = find(eps, "leased-1").unwrap_or_else(|| panic!("the expired instance is shown: {u}"));
    assert_eq!(e["state"], "expired", "{e}");
    assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
    let s = find(eps, &st.endpoint()).unwrap_or_else(|| panic!("{u}"));
    assert_eq!(s["state"], "healthy", "{s}");
    let metrics = scrape(&gw).await;
    let evictions = metrics.sum("waygate_registry_evictions_total", &[("service", "svc")]);
    assert_eq!(evictions, evictions_before + 1.0, "{}", metrics.text);

    // A new heartbeat brings it back.
    register_json(&gw, &body).await;
    eventually(Duration::from_secs(1), "the re-registered instance answers again", || async {
        spray(&gw, "/api/back", 2).await.iter().any(|s| s == "leased")
    })
    .await;
}

#[tokio::test]
async fn delete_deregisters_and_unknown_is_404() {
    let st = Upstream::start("static").await;
    let up = Upstream::start("gone").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[st.endpoint()])).await;
    register_json(&gw, &registration("svc", "gone-1", &up.endpoint())).await;
    eventually(Duration::from_secs(1), "the instance answers", || async {
        spray(&gw, "/api/x", 2).await.iter().any(|s| s == "gone")
    })
    .await;

    let r = delete_instance(&gw, "svc", "gone-1", &[]).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty(), "204 has no body");
    assert!(!listed(&gw, "svc", "gone-1").await);
    // No new request reaches it: the set changed before the 204.
    let before = up.count();
    let seen = spray(&gw, "/api/y", 10).await;
    assert!(seen.iter().all(|s| s == "static"), "{seen:?}");
    assert_eq!(up.count(), before);

    // Again, and unknown ones: 404 JSON, registry unchanged.
    let state = registry_state(&gw).await;
    for (service, id) in [("svc", "gone-1"), ("svc", "never"), ("nope", "x")] {
        let r = delete_instance(&gw, service, id, &[]).await;
        assert_json_error(&r, 404, &format!("DELETE /registry/{service}/{id}"));
    }
    // A static endpoint is not a registration: it cannot be deleted.
    let r = delete_instance(&gw, "svc", &st.endpoint(), &[]).await;
    assert!(r.status == 404 || r.status == 400, "DELETE of a static endpoint: {} {}", r.status, r.text());
    assert_eq!(registry_state(&gw).await, state);
    assert_eq!(spray(&gw, "/api/z", 2).await, ["static", "static"]);
}

#[tokio::test]
async fn heartbeat_with_a_new_address_updates_in_place() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[])).await;
    register_json(&gw, &json!({ "service": "svc", "id": "mover", "address": old.endpoint(), "weight": 1 })).await;
    assert_eq!(spray(&gw, "/api/x", 3).await, ["old", "old", "old"]);

    register_json(
        &gw,
        &json!({ "service": "svc", "id": "mover", "address": new.endpoint(), "weight": 2, "metadata": {"v": 2} }),
    )
    .await;
    let list = instances(&gw, "svc").await;
    assert_eq!(list.len(), 1, "updated in place, not added: {list:?}");
    assert_eq!(list[0]["id"], "mover");
    assert_eq!(list[0]["address"], new.endpoint());
    assert_eq!(list[0]["weight"], 2);
    assert_eq!(list[0]["metadata"], json!({"v": 2}));
    let before = old.count();
    eventually(Duration::from_secs(1), "traffic moves to the new address", || async {
        gw.get("/api/y").await.instance() == Some("new")
    })
    .await;
    assert_eq!(spray(&gw, "/api/z", 5).await, ["new"; 5]);
    assert_eq!(old.count(), before, "no request reaches the old address after the update");
}

// ---------------------------------------------------------------------------
// Bad input changes nothing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let st = Upstream::start("static").await;
    let up = Upstream::start("reg").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[st.endpoint()])).await;
    let good = json!({ "service": "svc", "id": "keep", "address": up.endpoint(), "weight": 2, "metadata": {"k": "v"} });
    register_json(&gw, &good).await;
    let registered = Instant::now();
    let state = registry_state(&gw).await;
    let addr = up.endpoint();
    let n129 = "n".repeat(129);

    // 400 with the field named. Several target the registered instance, so a
    // partial update or a renewed lease would show.
    let field_cases: Vec<(Value, &str)> = vec![
        (json!({ "id": "x", "address": addr }), "service"),
        (json!({ "service": null, "id": "x", "address": addr }), "service"),
        (json!({ "service": "svc", "address": addr }), "id"),
        (json!({ "service": "svc", "id": "keep" }), "address"),
        (json!({ "service": "bad name", "id": "x", "address": addr }), "service"),
        (json!({ "service": "a/b", "id": "x", "address": addr }), "service"),
        (json!({ "service": "", "id": "x", "address": addr }), "service"),
        (json!({ "service": "svc!", "id": "x", "address": addr }), "service"),
        (json!({ "service": "sérvice", "id": "x", "address": addr }), "service"),
        (json!({ "service": n129, "id": "x", "address": addr }), "service"),
        (json!({ "service": 7, "id": "x", "address": addr }), "service"),
        (json!({ "service": "svc", "id": n129, "address": addr }), "id"),
        (json!({ "service": "svc", "id": "keep/1", "address": addr }), "id"),
        (json!({ "service": "svc", "id": "", "address": addr }), "id"),
        (json!({ "service": "svc", "id": "keep", "address": "127.0.0.1" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": "127.0.0.1:" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": ":8080" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": "127.0.0.1:70000" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": "127.0.0.1:http" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": "bad host:80" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": "http://127.0.0.1:80" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": "" }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": 8080 }), "address"),
        (json!({ "service": "svc", "id": "keep", "address": addr, "weight": 0 }), "weight"),
        (json!({ "service": "svc", "id": "keep", "address": addr, "weight": -1 }), "weight"),
        (json!({ "service": "svc", "id": "keep", "address": addr, "weight": 1.5 }), "weight"),
        (json!({ "service": "svc", "id": "keep", "address": addr, "weight": "3" }), "weight"),
        (json!({ "service": "svc", "id": "keep", "address": addr, "metadata": [1] }), "metadata"),
        (json!({ "service": "svc", "id": "keep", "address": addr, "metadata": "x" }), "metadata"),
    ];
    for (body, field) in &field_cases {
        let r = post_registry(&gw, body).await;
        let v = assert_json_error(&r, 400, &format!("POST {body}"));
        assert_eq!(v["field"], *field, "POST {body} must name the field: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(registry_state(&gw).await, state, "POST {body} changed the registry");
    }

    // 400 without a field: not JSON, or not an object.
    for raw in [
        &b"{\"service\":\"svc\",\"id\":\"keep\""[..],
        b"not json",
        b"",
        b"[1,2]",
        b"\"svc\"",
        b"null",
        b"{\"service\":\"svc\",\"id\":\"keep\",\"address\":\"127.0.0.1:1\"} trailing",
        b"\xff\xfe{}",
    ] {
        let what = format!("POST {:?}", String::from_utf8_lossy(raw));
        let r =
            admin(&gw, Method::POST, "/registry", &[("content-type", "application/json")], full(raw.to_vec())).await;
        assert_json_error(&r, 400, &what);
        assert_eq!(registry_state(&gw).await, state, "{what} changed the registry");
    }

    // 405 on registry paths, with an Allow header.
    for (method, path) in [
        (Method::PUT, "/registry"),
        (Method::DELETE, "/registry"),
        (Method::PATCH, "/registry"),
        (Method::POST, "/registry/svc"),
        (Method::PUT, "/registry/svc"),
        (Method::DELETE, "/registry/svc"),
        (Method::GET, "/registry/svc/keep"),
        (Method::PUT, "/registry/svc/keep"),
        (Method::POST, "/registry/svc/keep"),
    ] {
        let what = format!("{method} {path}");
        let r = admin(&gw, method, path, &[("content-type", "application/json")], full(good.to_string())).await;
        assert_json_error(&r, 405, &what);
        assert!(r.header("allow").is_some(), "{what}: 405 without Allow");
        assert_eq!(registry_state(&gw).await, state, "{what} changed the registry");
    }

    // 413: over 64 KiB, with a Content-Length and chunked. The bodies are
    // otherwise valid registrations that would move the instance.
    let big = padded_registration("svc", "keep", &st.endpoint(), 64 * 1024 + 1);
    let r = admin(&gw, Method::POST, "/registry", &[("content-type", "application/json")], full(big.clone())).await;
    assert_json_error(&r, 413, "POST 64 KiB + 1 with Content-Length");
    assert_eq!(registry_state(&gw).await, state, "the 413 (Content-Length) changed the registry");
    let bigger = padded_registration("svc", "keep", &st.endpoint(), 200 * 1024);
    let r = admin(&gw, Method::POST, "/registry", &[("content-type", "application/json")], chunked(bigger)).await;
    assert_json_error(&r, 413, "POST 200 KiB chunked");
    assert_eq!(registry_state(&gw).await, state, "the 413 (chunked) changed the registry");
    let r = admin(&gw, Method::POST, "/registry", &[], chunked(big)).await;
    assert_json_error(&r, 413, "POST 64 KiB + 1 chunked");
    assert_eq!(registry_state(&gw).await, state, "the 413 (chunked) changed the registry");

    // None of it renewed the lease of `keep` either.
    let floor = registered.elapsed().as_millis() as u64;
    let ago = find(&instances(&gw, "svc").await, "keep").unwrap()["last_heartbeat_ms_ago"].as_u64().unwrap();
    assert!(ago + 5 >= floor, "a refused request renewed the lease: {ago} ms ago, registered {floor} ms ago");
    // And the instance still takes traffic at its registered address.
    let seen = spray(&gw, "/api/x", 6).await;
    assert!(seen.iter().any(|s| s == "reg"), "{seen:?}");
}

#[tokio::test]
async fn token_guards_writes_and_reads_stay_open() {
    let up = Upstream::start("reg").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"\ntoken = \"s3cret-token\"", &[])).await;
    let body = registration("svc", "t-1", &up.endpoint());
    let state = registry_state(&gw).await;

    for (headers, what) in [
        (vec![], "no Authorization"),
        (vec![("authorization", "Bearer wrong-token")], "wrong token"),
        (vec![("authorization", "Bearer s3cret-toke")], "a prefix of the token"),
        (vec![("authorization", "Bearer s3cret-token-and-more")], "the token and more"),
        (vec![("authorization", "Basic czNjcmV0LXRva2Vu")], "another scheme"),
        (vec![("authorization", "s3cret-token")], "no scheme"),
        (vec![("authorization", "Bearer ")], "an empty token"),
    ] {
        let r = post_registry_with(&gw, &body, &headers).await;
        assert_json_error(&r, 401, &format!("POST with {what}"));
        assert_eq!(registry_state(&gw).await, state, "POST with {what} changed the registry");
    }
    // 401 comes before the body is looked at: a bad body without a token is still 401.
    let r = post_registry(&gw, &json!({ "service": "bad name" })).await;
    assert_json_error(&r, 401, "bad body without a token");

    // Reads need no token.
    assert_eq!(gw.admin_get("/registry").await.status, 200);
    assert_eq!(gw.admin_get("/registry/svc").await.status, 200);

    // The right token works.
    let auth = [("authorization", "Bearer s3cret-token")];
    let r = post_registry_with(&gw, &body, &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "t-1");
    eventually(Duration::from_secs(1), "the instance answers", || async {
        gw.get("/api/x").await.instance() == Some("reg")
    })
    .await;
    let state = registry_state(&gw).await;

    // DELETE is a write too.
    for (headers, what) in [(vec![], "no Authorization"), (vec![("authorization", "Bearer nope")], "wrong token")] {
        let r = delete_instance(&gw, "svc", "t-1", &headers).await;
        assert_json_error(&r, 401, &format!("DELETE with {what}"));
        assert_eq!(registry_state(&gw).await, state, "DELETE with {what} changed the registry");
    }
    // Bad input with the right token is judged on its own (400, not 401).
    let r = post_registry_with(&gw, &json!({ "service": "svc", "id": "t-1", "address": "nope" }), &auth).await;
    assert_eq!(assert_json_error(&r, 400, "bad address with token")["field"], "address");
    assert_eq!(registry_state(&gw).await, state);

    let r = delete_instance(&gw, "svc", "t-1", &auth).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!listed(&gw, "svc", "t-1").await);
}

#[tokio::test]
async fn registry_paths_on_the_proxy_port_register_nothing() {
    let up = Upstream::start("reg").await;
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[])).await;
    register_json(&gw, &registration("svc", "present", &up.endpoint())).await;
    let state = registry_state(&gw).await;
    let body = registration("svc", "sneaky", &up.endpoint()).to_string();

    for (method, path) in [
        (Method::POST, "/registry"),
        (Method::GET, "/registry"),
        (Method::GET, "/registry/svc"),
        (Method::DELETE, "/registry/svc/present"),
        (Method::GET, "/admin/upstreams"),
        (Method::GET, "/metrics"),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("content-type", "application/json")
            .body(full(body.clone()))
            .unwrap();
        let r = gw.request(req).await;
        assert_gateway_error(&r, 404, "no_route");
        assert_eq!(registry_state(&gw).await, state, "{method} {path} on the proxy port changed the registry");
    }
    assert!(!listed(&gw, "svc", "sneaky").await);
    assert!(listed(&gw, "svc", "present").await);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn port_zero_is_not_a_usable_address() {
    let gw = TestGateway::start(&registry_config("heartbeat_ttl = \"20s\"", &[])).await;
    let state = registry_state(&gw).await;
    for address in ["localhost:0", "127.0.0.1:0", "[::1]:0"] {
        let r = post_registry(&gw, &registration("svc", "zero", address)).await;
        let v = assert_json_error(&r, 400, &format!("address {address}"));
        assert_eq!(v["field"], "address", "{v}");
        assert_eq!(registry_state(&gw).await, state, "address {address} changed the registry");
    }
}

// ---------------------------------------------------------------------------
// Snapshots across a restart
// ---------------------------------------------------------------------------

fn snapshot_config(path: &std::path::Path, static_eps: &[String]) -> String {
    registry_config(&format!("heartbeat_ttl = \"2s\"\nsnapshot = {:?}", path.display().to_string()), static_eps)
}

#[tokio::test]
async fn snapshot_keeps_leases_across_a_restart() {
    const TTL: Duration = Duration::from_secs(2);
    let dir = TempDir::new("registry-snapshot");
    let path = dir.path().join("state").join("registry.json");
    let up = Upstream::start("survivor").await;
    let config = snapshot_config(&path, &[]);

    let mut first = TestGateway::start_with("drain_timeout = \"2s\"", &config).await;
    register_json(
        &first,
        &json!({
            "service": "svc", "id": "survivor-1", "address": up.endpoint(), "weight": 4, "metadata": {"az": "b"}
        }),
    )
    .await;
    let beat = Instant::now();
    register_json(&first, &registration("elsewhere", "e-1", "127.0.0.1:9")).await;
    assert_eq!(first.get("/api/x").await.instance(), Some("survivor"));
    // Let the lease age, so "remaining TTL" differs from a fresh one.
    eventually(Duration::from_secs(3), "the lease ages by 1200 ms", || async {
        beat.elapsed() >= Duration::from_millis(1200)
    })
    .await;
    let drained = within(Duration::from_secs(10), "shutdown", first.begin_shutdown()).await.expect("shutdown task");
    assert!(drained, "the first gateway drained");
    assert!(path.exists(), "a snapshot was written to {}", path.display());

    let second = TestGateway::start_with("drain_timeout = \"2s\"", &config).await;
    let age_at_restart = beat.elapsed();
    let list = instances(&second, "svc").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let i = &list[0];
    assert_eq!(i["id"], "survivor-1");
    assert_eq!(i["address"], up.endpoint());
    assert_eq!(i["source"], "registry");
    assert_eq!(i["weight"], 4);
    assert_eq!(i["metadata"], json!({"az": "b"}));
    let ago = i["last_heartbeat_ms_ago"].as_u64().unwrap();
    // Restored with its age (to the millisecond rounding of the file), not as a fresh lease.
    let age_ms = age_at_restart.as_millis() as u64;
    assert!(
        ago + 50 >= age_ms && ago <= beat.elapsed().as_millis() as u64 + 50,
        "restored age {ago} ms, real {age_ms} ms"
    );
    assert_eq!(
        find(&instances(&second, "elsewhere").await, "e-1").map(|e| e["address"].clone()),
        Some(json!("127.0.0.1:9"))
    );

    // It takes traffic at once.
    let before = up.count();
    assert_eq!(second.get("/api/y").await.instance(), Some("survivor"));
    assert_eq!(up.count(), before + 1);

    // And it lapses at the end of its original lease, not a TTL after the restart.
    let deadline = beat + TTL + Duration::from_secs(1);
    assert!(beat + TTL > Instant::now(), "the test machine was too slow to see the lease live after the restart");
    eventually(deadline.saturating_duration_since(Instant::now()), "the restored lease lapses on time", || async {
        !listed(&second, "svc", "survivor-1").await
    })
    .await;
    assert!(beat.elapsed() >= TTL, "evicted before its TTL: {:?}", beat.elapsed());
}

#[tokio::test]
async fn corrupt_snapshot_is_ignored() {
    let st = Upstream::start("static").await;
    let up = Upstream::start("reg").await;
    let dir = TempDir::new("registry-corrupt");
    for (i, garbage) in [
        &b"{\"version\":1,\"instances\":[{\"service\":"[..],
        b"\x00\x01\x02 not json at all",
        b"{\"version\":99,\"saved_at_unix_ms\":0,\"instances\":[]}",
        b"[]",
        b"",
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("registry-{i}.json"));
        std::fs::write(&path, garbage).unwrap();
        let gw = TestGateway::start_with("drain_timeout = \"2s\"", &snapshot_config(&path, &[st.endpoint()])).await;
        let v = gw.admin_get("/registry").await.json();
        let list = v["services"]["svc"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(list.len(), 1, "only the static endpoint: {v}");
        assert_eq!(list[0]["source"], "static");
        assert_eq!(v["services"].as_object().unwrap().len(), 1, "{v}");
        assert_eq!(gw.get("/api/x").await.instance(), Some("static"));

        // The registry works, and the file is replaced by a valid snapshot.
        register_json(&gw, &registration("svc", "fresh", &up.endpoint())).await;
        eventually(Duration::from_secs(3), "a valid snapshot replaces the corrupt file", || async {
            std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v.to_string().contains("fresh"))
        })
        .await;
    }
}

/// Snapshot entries as (service, id) pairs, or None while the file is absent or unreadable.
fn snapshot_ids(path: &std::path::Path) -> Option<Vec<(String, String)>> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let mut ids: Vec<(String, String)> = v["instances"]
        .as_array()?
        .iter()
        .map(|i| (i["service"].as_str().unwrap_or("").to_string(), i["id"].as_str().unwrap_or("").to_string()))
        .collect();
    ids.sort();
    Some(ids)
}

#[tokio::test]
async fn snapshot_follows_changes_without_a_clean_shutdown() {
    let dir = TempDir::new("registry-snapshot-crash");
    let path = dir.path().join("registry.json");
    let up = Upstream::start("kept").await;
    let config = registry_config(&format!("heartbeat_ttl = \"20s\"\nsnapshot = {:?}", path.display().to_string()), &[]);
    let pair = |s: &str, i: &str| (s.to_string(), i.to_string());

    let first = TestGateway::start(&config).await;
    register_json(&first, &registration("svc", "kept", &up.endpoint())).await;
    register_json(&first, &registration("svc", "dropped", "127.0.0.1:9")).await;
    eventually(Duration::from_secs(2), "both leases are in the snapshot", || async {
        snapshot_ids(&path) == Some(vec![pair("svc", "dropped"), pair("svc", "kept")])
    })
    .await;
    let r = delete_instance(&first, "svc", "dropped", &[]).await;
    assert_eq!(r.status, 204);
    eventually(Duration::from_secs(2), "the deregistration reaches the snapshot", || async {
        snapshot_ids(&path) == Some(vec![pair("svc", "kept")])
    })
    .await;
    // Gone without a drain (as in a crash): what is on disk is what comes back.
    drop(first);

    let second = TestGateway::start(&config).await;
    let list = instances(&second, "svc").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], "kept");
    assert_eq!(second.get("/api/x").await.instance(), Some("kept"));
}

#[tokio::test]
async fn leases_that_lapsed_while_the_gateway_was_down_are_not_restored() {
    let dir = TempDir::new("registry-snapshot-lapsed");
    let path = dir.path().join("registry.json");
    let config =
        registry_config(&format!("heartbeat_ttl = \"300ms\"\nsnapshot = {:?}", path.display().to_string()), &[]);
    let mut first = TestGateway::start_with("drain_timeout = \"2s\"", &config).await;
    register_json(&first, &registration("svc", "short", "127.0.0.1:9")).await;
    let beat = Instant::now();
    within(Duration::from_secs(10), "shutdown", first.begin_shutdown()).await.expect("shutdown task");
    assert!(snapshot_ids(&path).is_some_and(|ids| ids.len() == 1), "the snapshot holds the lease");
    eventually(Duration::from_secs(2), "the lease lapses while no gateway runs", || async {
        beat.elapsed() > Duration::from_millis(400)
    })
    .await;

    let second = TestGateway::start(&config).await;
    let v = second.admin_get("/registry").await.json();
    assert_eq!(v["services"]["svc"], json!([]), "a lapsed lease is not restored: {v}");
    assert_gateway_error(&second.get("/api/x").await, 503, "no_healthy_upstream");
}

#[tokio::test]
async fn token_env_guards_writes() {
    const VAR: &str = "WAYGATE_TEST_REGISTRY_TOKEN_7f3a";
    std::env::set_var(VAR, "from-the-env");
    let up = Upstream::start("reg").await;
    let gw = TestGateway::start(&registry_config(&format!("token_env = \"{VAR}\""), &[])).await;
    let body = registration("svc", "env-1", &up.endpoint());
    assert_json_error(&post_registry(&gw, &body).await, 401, "no token");
    assert_json_error(&post_registry_with(&gw, &body, &[("authorization", "Bearer nope")]).await, 401, "wrong token");
    assert!(!listed(&gw, "svc", "env-1").await);
    let r = post_registry_with(&gw, &body, &[("authorization", "Bearer from-the-env")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(listed(&gw, "svc", "env-1").await);
}
