//! Upstream failures and upstream connections (SPEC §3): 502
//! `upstream_connect_error`, 504 `upstream_timeout`, 503 `no_healthy_upstream`
//! and `overloaded`, round robin over static endpoints, pooled keep-alive.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use support::*;

const REQUEST_TIMEOUT_MS: u64 = 300;

fn timeouts() -> String {
    format!("request_timeout = \"{REQUEST_TIMEOUT_MS}ms\"\nconnect_timeout = \"300ms\"")
}

#[tokio::test]
async fn dead_port_is_502_upstream_connect_error() {
    let dead = dead_port().await;
    let body = service_toml("svc", &[dead.to_string()], &timeouts()) + &route_toml("/api", "svc", "");
    let gw = TestGateway::start(&body).await;
    let r = gw.get("/api/x").await;
    let v = assert_gateway_error(&r, 502, "upstream_connect_error");
    assert!(v["message"].as_str().unwrap().contains(&dead.to_string()), "message names the endpoint: {v}");
    // A client-sent id is the one in the error.
    let r = gw.request(Request::get("/api/x").header("x-request-id", "rid-502").body(empty()).unwrap()).await;
    assert_eq!(assert_gateway_error(&r, 502, "upstream_connect_error")["request_id"], "rid-502");
}

#[tokio::test]
async fn connection_closed_without_answer_is_502() {
    let up = Upstream::start("closer").await;
    up.set_mode(Mode::Close);
    let gw = TestGateway::start(&simple_toml(&[&up], &timeouts())).await;
    let r = gw.get("/api/x").await;
    assert_gateway_error(&r, 502, "upstream_connect_error");
    assert!(up.count() >= 1, "the request reached the upstream before it hung up");

    // The gateway recovers once the upstream behaves.
    up.set_mode(Mode::Ok);
    let r = gw.get("/api/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn hanging_upstream_is_504_within_request_timeout() {
    let up = Upstream::start("hang").await;
    up.set_mode(Mode::Hang);
    let gw = TestGateway::start(&simple_toml(&[&up], &timeouts())).await;
    let started = Instant::now();
    let r = gw.get("/api/x").await;
    let took = started.elapsed();
    let v = assert_gateway_error(&r, 504, "upstream_timeout");
    assert!(took >= Duration::from_millis(REQUEST_TIMEOUT_MS), "answered before request_timeout: {took:?} {v}");
    assert!(
        took < Duration::from_millis(REQUEST_TIMEOUT_MS + 100),
        "504 took {took:?}, more than request_timeout + 100 ms"
    );
}

#[tokio::test]
async fn slow_upstream_within_request_timeout_is_200() {
    let up = Upstream::start("slow").await;
    up.set_mode(Mode::Slow(Duration::from_millis(100)));
    let gw = TestGateway::start(&simple_toml(&[&up], &timeouts())).await;
    let r = gw.get("/api/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.instance(), Some("slow"));
}

#[tokio::test]
async fn upstream_statuses_pass_through_unchanged() {
    let up = Upstream::start("st").await;
    let gw = TestGateway::start(&simple_toml(&[&up], &timeouts())).await;
    for status in [201u16, 404, 500, 503] {
        up.set_mode(Mode::Status(status));
        let r = gw.get("/api/x").await;
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.json()["instance"], "st", "the upstream's own body, not a gateway error");
    }
}

#[tokio::test]
async fn service_without_endpoints_is_503_no_healthy_upstream() {
    let body = service_toml("empty", &[], "") + &route_toml("/api", "empty", "");
    let gw = TestGateway::start(&body).await;
    let r = gw.get("/api/x").await;
    assert_gateway_error(&r, 503, "no_healthy_upstream");
}

#[tokio::test]
async fn max_concurrent_requests_answers_503_overloaded() {
    let up = Upstream::start("one").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "max_concurrent_requests = 1")).await;
    // One request held at the upstream occupies the only slot.
    let held = {
        let client = gw.client.clone();
        let uri = gw.url("/api/hold");
        tokio::spawn(async move { client.request(Request::get(uri).body(empty()).unwrap()).await })
    };
    eventually(Duration::from_secs(5), "the held request reaches the upstream", || async { up.count() == 1 }).await;
    let started = Instant::now();
    let r = gw.get("/api/x").await;
    assert_gateway_error(&r, 503, "overloaded");
    assert!(started.elapsed() < Duration::from_secs(1), "overloaded is answered at once");
    assert_eq!(up.count(), 1, "the refused request never reached the upstream");

    up.release();
    let held = within(Duration::from_secs(5), "held request", held).await.unwrap().expect("held request");
    assert_eq!(held.status(), 200);
    // The slot is free again.
    let r = gw.get("/api/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn round_robin_alternates_over_two_endpoints() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&simple_toml(&[&a, &b], "balancer = \"round_robin\"")).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let r = gw.get("/api/x").await;
        assert_eq!(r.status, 200);
        seen.push(r.instance().unwrap().to_string());
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {seen:?}");
    }
    assert_eq!((a.count(), b.count()), (5, 5), "{seen:?}");
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let up = Upstream::start("pool").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "")).await;
    const N: usize = 50;
    for i in 0..N {
        let r = gw.get(&format!("/api/seq/{i}")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), N);
    assert!(
        up.distinct_peers() <= 2 && up.connections() <= 2,
        "{N} sequential requests used {} upstream connections ({} distinct client ports)",
        up.connections(),
        up.distinct_peers()
    );
    // A request with a body reuses the pool as well.
    let r = gw.request(Request::post("/api/post").body(full(vec![7u8; 10_000])).unwrap()).await;
    assert_eq!(r.json()["body_len"], 10_000);
    assert!(up.connections() <= 2);
}
