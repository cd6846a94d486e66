//! Header rewriting (SPEC §3): hop-by-hop removal both ways, X-Forwarded-*,
//! Host kept, x-request-id, W3C traceparent.

mod support;

use std::collections::HashSet;

use http::Request;
use support::*;

async fn setup() -> (TestGateway, Upstream) {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "")).await;
    (gw, up)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits a version-00 traceparent into (trace id, span id, flags), checking its shape.
fn traceparent_parts(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00", "traceparent {tp:?}");
    assert!(parts[1].len() == 32 && is_lower_hex(parts[1]), "trace id of {tp:?}");
    assert!(parts[2].len() == 16 && is_lower_hex(parts[2]), "span id of {tp:?}");
    assert!(parts[3].len() == 2 && is_lower_hex(parts[3]), "flags of {tp:?}");
    assert!(parts[1].bytes().any(|b| b != b'0'), "all-zero trace id in {tp:?}");
    assert!(parts[2].bytes().any(|b| b != b'0'), "all-zero span id in {tp:?}");
    (parts[1].to_string(), parts[2].to_string(), parts[3].to_string())
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let (gw, up) = setup().await;
    let req = Request::get("/api/x")
        .header("connection", "keep-alive, X-Secret, x-other")
        .header("keep-alive", "timeout=5")
        .header("x-secret", "hidden")
        .header("x-other", "hidden too")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "h2c") // without `Connection: upgrade`: not an upgrade request
        .header("x-kept", "yes")
        .body(empty())
        .unwrap();
    let r = gw.request(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    for gone in
        ["keep-alive", "x-secret", "x-other", "te", "trailer", "proxy-connection", "upgrade", "transfer-encoding"]
    {
        assert!(seen.header(gone).is_none(), "{gone} reached the upstream: {:?}", seen.headers);
    }
    if let Some(c) = seen.header("connection") {
        let c = c.to_ascii_lowercase();
        assert!(!c.contains("x-secret") && !c.contains("x-other"), "client's Connection forwarded: {c}");
    }
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let (gw, _up) = setup().await;
    let r = gw.get("/api/hop").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-up-kept"), Some("yes"));
    assert!(r.header("x-up-secret").is_none(), "a header named in the upstream's Connection reached the client");
    assert!(r.header("keep-alive").is_none(), "Keep-Alive reached the client");
    if let Some(c) = r.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-up-secret"), "upstream's Connection forwarded: {c}");
    }
}

#[tokio::test]
async fn forwarded_headers_and_host() {
    let (gw, up) = setup().await;
    // No X-Forwarded-For yet: the gateway starts one with the client address.
    let r = gw.request(Request::get("/api/x").header("host", "shop.example.test:8443").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.test:8443"));
    assert_eq!(seen.header("host"), Some("shop.example.test:8443"), "Host is kept, not rewritten to the upstream's");

    // An existing value is appended to.
    let r = gw
        .request(
            Request::get("/api/x")
                .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
                .header("x-forwarded-proto", "https") // the gateway states what it saw
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.7, 198.51.100.2, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    // The default Host the client sent is the gateway's own address.
    let gw_host = gw.proxy.to_string();
    assert_eq!(seen.header("host"), Some(gw_host.as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some(gw_host.as_str()));
}

#[tokio::test]
async fn request_id_is_kept_when_sent() {
    let (gw, up) = setup().await;
    let r = gw.request(Request::get("/api/x").header("x-request-id", "client-id-123").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("client-id-123"));
    assert_eq!(up.last().header("x-request-id"), Some("client-id-123"));
}

#[tokio::test]
async fn request_id_is_generated_returned_and_unique() {
    let (gw, up) = setup().await;
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let r = gw.get("/api/x").await;
        assert_eq!(r.status, 200);
        let id = r.header("x-request-id").expect("generated x-request-id on the response").to_string();
        assert!(!id.is_empty());
        assert_eq!(up.last().header("x-request-id"), Some(id.as_str()), "upstream and client see the same id");
        assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1, "exactly one x-request-id");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 5, "ids are unique: {ids:?}");
}

#[tokio::test]
async fn traceparent_is_continued_with_a_new_span() {
    let (gw, up) = setup().await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw
        .request(
            Request::get("/api/x")
                .header("traceparent", incoming)
                .header("tracestate", "vendor=abc")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    let tp = seen.header("traceparent").expect("traceparent upstream");
    let (trace, span, flags) = traceparent_parts(tp);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "same trace id");
    assert_ne!(span, "00f067aa0ba902b7", "a new span id for the upstream hop");
    assert_eq!(flags, "01", "flags kept");
    assert_eq!(seen.header("tracestate"), Some("vendor=abc"), "tracestate passes through");
}

#[tokio::test]
async fn traceparent_is_started_when_missing_or_invalid() {
    let (gw, up) = setup().await;
    let mut traces = HashSet::new();
    for sent in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
        let mut b = Request::get("/api/x");
        if let Some(s) = sent {
            b = b.header("traceparent", s);
        }
        let r = gw.request(b.body(empty()).unwrap()).await;
        assert_eq!(r.status, 200);
        let tp = up.last().header("traceparent").map(str::to_string);
        let tp = tp.unwrap_or_else(|| panic!("no traceparent upstream for {sent:?}"));
        let (trace, _, _) = traceparent_parts(&tp);
        traces.insert(trace);
    }
    assert_eq!(traces.len(), 3, "each started trace has its own id: {traces:?}");
}
