//! Resilience (SPEC §2 `[services.circuit_breaker]`, `[services.retry]`,
//! `max_concurrent_requests`, `request_timeout`; §3 `circuit_open`,
//! `overloaded`, `upstream_timeout`): the breaker opens after exactly
//! `failure_threshold` failed requests, fails fast without touching an
//! upstream until `open_duration` passes, lets only `half_open_max_requests`
//! trials through and closes on their success; idempotent requests are
//! retried onto another endpoint, POST and PATCH never; a full outage is not
//! amplified beyond the retry budget; the concurrency limit sheds load at
//! once; a hanging upstream is cut at `request_timeout` (or the route's).

mod support;

use std::time::{Duration, Instant};

use http::{Method, Request};
use support::admin::*;
use support::*;

fn total(ups: &[&Upstream]) -> usize {
    ups.iter().map(|u| u.count()).sum()
}

fn breaker_toml(threshold: u32, open: &str, trials: u32) -> String {
    format!(
        "[services.circuit_breaker]\nfailure_threshold = {threshold}\nopen_duration = \"{open}\"\nhalf_open_max_requests = {trials}\n"
    )
}

/// Spawns `GET path` on its own task (for requests held by an upstream).
fn spawn_get(gw: &TestGateway, path: &str) -> tokio::task::JoinHandle<Resp> {
    let client = gw.client.clone();
    let uri = gw.url(path);
    tokio::spawn(async move {
        let what = format!("GET {uri}");
        let resp = within(EXCHANGE_TIMEOUT, &what, client.request(Request::get(uri.clone()).body(empty()).unwrap()))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        within(EXCHANGE_TIMEOUT, &what, Resp::collect(resp)).await
    })
}

fn assert_circuit_open(r: &Resp) {
    assert_gateway_error(r, 503, "circuit_open");
    let retry_after = r.header("retry-after").unwrap_or_else(|| panic!("circuit_open without Retry-After: {r:?}"));
    let secs: u64 = retry_after.parse().unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {retry_after:?}"));
    assert!((1..=1).contains(&secs), "Retry-After {secs}: open_duration is 500ms, so 1 s rounded up");
}

#[tokio::test]
async fn breaker_opens_after_exactly_failure_threshold_and_fails_fast_until_open_duration() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set_mode(Mode::Status(500));
    b.set_mode(Mode::Status(500));
    let ups = [&a, &b];
    let gw =
        TestGateway::start(&simple_toml(&ups, &format!("request_timeout = \"2s\"\n{}", breaker_toml(3, "500ms", 1))))
            .await;

    // Failures 1 and 2 leave it closed; the third opens it. Each one reaches an upstream.
    let mut third_sent = Instant::now();
    for i in 1..=3 {
        assert_eq!(breaker_state(&gw, "svc").await, "closed", "before failure {i}");
        third_sent = Instant::now();
        let r = gw.get("/api/x").await;
        assert_eq!(r.status, 500, "failure {i} is the upstream's own answer: {}", r.text());
        assert_eq!(total(&ups), i, "failure {i} reached an upstream");
    }
    assert_eq!(breaker_state(&gw, "svc").await, "open");

    // Open: 503 circuit_open with Retry-After, and no upstream sees a request.
    // Probe until 350 ms after the third request was sent: it opened after
    // that instant, so every probe lands well inside open_duration (500 ms).
    let mut probes = 0;
    while probes == 0 || third_sent.elapsed() < Duration::from_millis(350) {
        let (r, took) = timed(gw.get("/api/x")).await;
        assert_circuit_open(&r);
        assert!(took < Duration::from_millis(200), "circuit_open is answered at once, took {took:?}");
        assert_eq!(total(&ups), 3, "an open breaker sends nothing upstream (probe {probes})");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = scrape(&gw).await;
    assert_eq!(m.get("waygate_circuit_breaker_transitions_total", &[("service", "svc"), ("to", "open")]), Some(1.0));
    assert_eq!(m.get("waygate_circuit_breaker_state", &[("service", "svc")]), Some(1.0), "gauge: 1 = open");

    // After open_duration one trial goes through; it fails (still 500), so it re-opens.
    eventually(Duration::from_secs(3), "a trial request reaches an upstream", || async {
        let r = gw.get("/api/x").await;
        assert!(r.status == 500 || r.status == 503, "{r:?}");
        total(&ups) == 4
    })
    .await;
    assert!(
        third_sent.elapsed() >= Duration::from_millis(500),
        "the first request after opening reached an upstream {:?} after the third failure was sent (open_duration 500ms)",
        third_sent.elapsed()
    );
    assert_eq!(breaker_state(&gw, "svc").await, "open", "a failed trial re-opens the breaker");
    assert_circuit_open(&gw.get("/api/x").await);
    assert_eq!(total(&ups), 4);

    // Recovery: the next trial succeeds and closes it.
    a.set_mode(Mode::Ok);
    b.set_mode(Mode::Ok);
    eventually(Duration::from_secs(3), "a trial succeeds after the upstreams recover", || async {
        gw.get("/api/x").await.status == 200
    })
    .await;
    assert_eq!(breaker_state(&gw, "svc").await, "closed");
    for _ in 0..4 {
        assert_eq!(gw.get("/api/x").await.status, 200);
    }

    let m = scrape(&gw).await;
    let to = |phase: &str| m.get("waygate_circuit_breaker_transitions_total", &[("service", "svc"), ("to", phase)]);
    assert_eq!(to("open"), Some(2.0), "{}", m.lines_with("breaker"));
    assert_eq!(to("half_open"), Some(2.0), "{}", m.lines_with("breaker"));
    assert_eq!(to("closed"), Some(1.0), "{}", m.lines_with("breaker"));
    assert_eq!(m.get("waygate_circuit_breaker_state", &[("service", "svc")]), Some(0.0));
}

#[tokio::test]
async fn a_retried_failure_counts_once_toward_the_breaker() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set_mode(Mode::Status(503));
    b.set_mode(Mode::Status(503));
    let ups = [&a, &b];
    let extra = format!(
        "request_timeout = \"2s\"\n{}[services.retry]\nattempts = 1\non = [\"503\"]\n",
        breaker_toml(3, "30s", 1)
    );
    let gw = TestGateway::start(&simple_toml(&ups, &extra)).await;
    for i in 1..=3 {
        assert_eq!(breaker_state(&gw, "svc").await, "closed", "before request {i}");
        let r = gw.get("/api/x").await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(total(&ups), 2 * i, "request {i}: first attempt + one retry on the other endpoint");
    }
    assert_eq!(breaker_state(&gw, "svc").await, "open", "3 failed requests (6 failed attempts) open it");
    let r = gw.get("/api/x").await;
    assert_gateway_error(&r, 503, "circuit_open");
    assert_eq!(total(&ups), 6);
    let m = scrape(&gw).await;
    assert_eq!(m.get("waygate_retries_total", &[("service", "svc")]), Some(3.0));
    assert_eq!(m.get("waygate_circuit_breaker_transitions_total", &[("service", "svc"), ("to", "open")]), Some(1.0));
}

#[tokio::test]
async fn half_open_admits_only_half_open_max_requests_concurrent_trials() {
    let up = Upstream::start("up").await;
    up.set_mode(Mode::Status(500));
    let gw =
        TestGateway::start(&simple_toml(&[&up], &format!("request_timeout = \"5s\"\n{}", breaker_toml(1, "500ms", 2))))
            .await;

    assert_eq!(gw.get("/api/x").await.status, 500);
    assert_eq!(breaker_state(&gw, "svc").await, "open");
    up.set_mode(Mode::Ok);
    let gw_ref = &gw;
    eventually(Duration::from_secs(3), "open_duration passes (retry_after_ms reaches 0)", || async move {
        breaker(gw_ref, "svc").await["retry_after_ms"].as_u64() == Some(0)
    })
    .await;

    // Two trials are admitted and held by the upstream (`/hold` answers on release).
    let held = [spawn_get(&gw, "/api/hold"), spawn_get(&gw, "/api/hold")];
    eventually(Duration::from_secs(5), "both trials reach the upstream", || async {
        up.requests().iter().filter(|r| r.path == "/hold").count() == 2
    })
    .await;
    assert_eq!(breaker_state(&gw, "svc").await, "half_open");

    // Every other request meanwhile is refused without reaching the upstream.
    for _ in 0..5 {
        let (r, took) = timed(gw.get("/api/x")).await;
        assert_gateway_error(&r, 503, "circuit_open");
        assert!(r.header("retry-after").is_some(), "circuit_open in half-open carries Retry-After too");
        assert!(took < Duration::from_millis(200), "refused at once, took {took:?}");
    }
    assert_eq!(up.requests().iter().filter(|r| r.path == "/x").count(), 1, "only the opening request reached /x");

    // The trials succeed: the breaker closes.
    up.release();
    for h in held {
        let r = within(EXCHANGE_TIMEOUT, "held trial", h).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(breaker_state(&gw, "svc").await, "closed");
    assert_eq!(gw.get("/api/x").await.status, 200);
    let m = scrape(&gw).await;
    assert_eq!(m.get("waygate_circuit_breaker_transitions_total", &[("service", "svc"), ("to", "closed")]), Some(1.0));
}

#[tokio::test]
async fn a_hanging_trial_holds_the_only_half_open_slot_and_its_timeout_reopens() {
    let up = Upstream::start("up").await;
    up.set_mode(Mode::Status(500));
    let gw = TestGateway::start(&simple_toml(
        &[&up],
        &format!("request_timeout = \"300ms\"\n{}", breaker_toml(1, "500ms", 1)),
    ))
    .await;
    assert_eq!(gw.get("/api/x").await.status, 500);
    up.set_mode(Mode::Hang);
    let gw_ref = &gw;
    eventually(Duration::from_secs(3), "open_duration passes", || async move {
        breaker(gw_ref, "svc").await["retry_after_ms"].as_u64() == Some(0)
    })
    .await;

    let trial = spawn_get(&gw, "/api/x");
    eventually(Duration::from_secs(5), "the trial reaches the upstream", || async { up.count() == 2 }).await;
    let r = gw.get("/api/x").await;
    assert_gateway_error(&r, 503, "circuit_open");
    assert_eq!(up.count(), 2, "the second request is refused while the trial hangs");

    // The trial times out (a failure): the breaker opens again.
    let r = within(EXCHANGE_TIMEOUT, "hanging trial", trial).await.unwrap();
    assert_gateway_error(&r, 504, "upstream_timeout");
    assert_eq!(breaker_state(&gw, "svc").await, "open");
    assert_circuit_open(&gw.get("/api/x").await);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn idempotent_requests_are_retried_onto_a_healthy_endpoint() {
    let dead = dead_port().await;
    let ok_a = Upstream::start("ok-a").await;
    let busy = Upstream::start("busy").await;
    busy.set_mode(Mode::Status(503));
    let ok_b = Upstream::start("ok-b").await;
    let retry = "request_timeout = \"2s\"\nconnect_timeout = \"500ms\"\n[services.retry]\nattempts = 1\n";
    let body = service_toml("dead", &[dead.to_string(), ok_a.endpoint()], retry)
        + &service_toml("busy", &[busy.endpoint(), ok_b.endpoint()], retry)
        + &route_toml("/dead", "dead", "strip_prefix = true")
        + &route_toml("/busy", "busy", "strip_prefix = true");
    let gw = TestGateway::start(&body).await;

    for i in 0..6 {
        let r = gw.get(&format!("/dead/x{i}")).await;
        assert_eq!(r.status, 200, "GET {i} over a dead endpoint: {}", r.text());
        assert_eq!(r.instance(), Some("ok-a"));
        let r = gw.get(&format!("/busy/x{i}")).await;
        assert_eq!(r.status, 200, "GET {i} over a 503 endpoint: {}", r.text());
        assert_eq!(r.instance(), Some("ok-b"));
    }
    assert_eq!(ok_a.count(), 6);
    assert_eq!(ok_b.count(), 6);
    assert!(busy.count() >= 1, "round robin sent some first attempts to the 503 endpoint");

    // Other idempotent methods too, with a small body replayed on the retry.
    for method in [Method::PUT, Method::DELETE, Method::OPTIONS, Method::HEAD] {
        for _ in 0..2 {
            let body = if method == Method::PUT { "replayed-body" } else { "" };
            let r = send(&gw, method.clone(), "/busy/m", body).await;
            assert_eq!(r.status, 200, "{method}: {}", r.text());
            assert_eq!(r.instance(), Some("ok-b"), "{method}");
        }
    }
    let puts: Vec<_> = ok_b.requests().into_iter().filter(|r| r.method == Method::PUT).collect();
    assert_eq!(puts.len(), 2);
    assert!(puts.iter().all(|r| r.body_len == Some("replayed-body".len() as u64)), "{puts:?}");
    let busy_puts = requests_with(&busy, &Method::PUT);
    assert!(
        busy.requests().iter().filter(|r| r.method == Method::PUT).all(|r| r.body_len == Some(13)),
        "the failed attempt carried the body too ({busy_puts} PUTs)"
    );

    // waygate_retries_total: one retry per failed first attempt.
    let m = scrape(&gw).await;
    let connect_errors = m.sum(
        "waygate_upstream_requests_total",
        &[("service", "dead"), ("endpoint", &dead.to_string()), ("outcome", "connect_error")],
    );
    assert!(connect_errors >= 1.0, "{}", m.lines_with("dead"));
    assert_eq!(
        m.get("waygate_retries_total", &[("service", "dead")]),
        Some(connect_errors),
        "{}",
        m.lines_with("retries")
    );
    assert_eq!(
        m.get("waygate_retries_total", &[("service", "busy")]),
        Some(busy.count() as f64),
        "{}",
        m.lines_with("retries")
    );
    let v = upstreams(&gw).await;
    assert_eq!(v["services"]["busy"]["retries_total"], busy.count() as u64, "{v}");
}

#[tokio::test]
async fn post_and_patch_are_never_retried() {
    let bad = Upstream::start("bad").await;
    bad.set_mode(Mode::Status(503));
    let good = Upstream::start("good").await;
    let dead = dead_port().await;
    let good2 = Upstream::start("good2").await;
    let retry =
        "request_timeout = \"2s\"\n[services.retry]\nattempts = 2\non = [\"connect_failure\", \"timeout\", \"503\"]\n";
    let body = service_toml("svc", &[bad.endpoint(), good.endpoint()], retry)
        + &service_toml("deadsvc", &[dead.to_string(), good2.endpoint()], retry)
        + &route_toml("/api", "svc", "strip_prefix = true")
        + &route_toml("/dead", "deadsvc", "strip_prefix = true");
    let gw = TestGateway::start(&body).await;

    // Round robin starts with the first endpoint: the POST lands on `bad`.
    let r = send(&gw, Method::POST, "/api/orders", "{\"n\":1}").await;
    assert_eq!(r.status, 503, "the client gets the upstream's error: {}", r.text());
    assert_eq!(r.instance(), Some("bad"));
    assert_eq!(requests_with(&bad, &Method::POST), 1, "the failing upstream sees exactly one POST");
    assert_eq!(good.count(), 0, "the POST was not retried on the healthy endpoint");

    // Many POSTs and PATCHes: each reaches exactly one endpoint once.
    let mut errors = 0;
    for i in 0..8 {
        let method = if (i / 2) % 2 == 0 { Method::PATCH } else { Method::POST };
        let r = send(&gw, method.clone(), "/api/orders/1", "{\"n\":2}").await;
        match r.instance() {
            Some("bad") => {
                assert_eq!(r.status, 503, "{method}");
                errors += 1;
            }
            Some("good") => assert_eq!(r.status, 200, "{method}"),
            other => panic!("{method}: unexpected answer from {other:?}: {r:?}"),
        }
    }
    assert!(errors >= 1 && requests_with(&bad, &Method::PATCH) >= 1, "some PATCHes hit the failing endpoint");
    assert_eq!(bad.count(), errors + 1, "one attempt per failed request");
    assert_eq!(bad.count() + good.count(), 9, "9 requests, 9 attempts");

    // A refused connection is not retried for POST either: 502 to the client.
    let mut refused = 0;
    for _ in 0..4 {
        let r = send(&gw, Method::POST, "/dead/x", "{}").await;
        if r.status == 502 {
            assert_gateway_error(&r, 502, "upstream_connect_error");
            refused += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    assert_eq!(refused, 2, "round robin: half the POSTs go to the dead endpoint and fail");
    assert_eq!(good2.count(), 2, "the failed POSTs were not retried on the healthy endpoint");

    let m = scrape(&gw).await;
    assert_eq!(m.sum("waygate_retries_total", &[]), 0.0, "{}", m.lines_with("retries"));
}

#[tokio::test]
async fn retry_budget_bounds_upstream_load_during_a_full_outage() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set_mode(Mode::Status(503));
    b.set_mode(Mode::Status(503));
    let retry = "request_timeout = \"2s\"\n[services.retry]\nattempts = 2\non = [\"503\"]\nbudget_ratio = 0.2\nbudget_min_per_second = 1\n";
    let gw = TestGateway::start(&simple_toml(&[&a, &b], retry)).await;

    const N: usize = 200;
    for _ in 0..N {
        let r = gw.get("/api/x").await;
        assert_eq!(r.status, 503, "{}", r.text());
    }
    let upstream = a.count() + b.count();
    // budget_ratio × requests + budget_min_per_second × the 10 s window.
    let bound = (1.2 * N as f64) as usize + 10;
    assert!(upstream <= bound, "{N} client GETs made {upstream} upstream requests (bound {bound})");
    assert!(upstream > N, "some retries were allowed ({upstream} upstream requests for {N} GETs)");
    let m = scrape(&gw).await;
    let retries = m.get("waygate_retries_total", &[("service", "svc")]).unwrap_or(0.0);
    assert_eq!(retries as usize, upstream - N, "every upstream request beyond the first attempts is a counted retry");
}

#[tokio::test]
async fn the_request_beyond_max_concurrent_requests_is_overloaded_at_once() {
    let up = Upstream::start("held").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "request_timeout = \"10s\"\nmax_concurrent_requests = 3")).await;

    let held: Vec<_> = (0..3).map(|_| spawn_get(&gw, "/api/hold")).collect();
    eventually(Duration::from_secs(5), "three requests held by the upstream", || async { up.count() == 3 }).await;
    assert_eq!(upstreams(&gw).await["services"]["svc"]["inflight"], 3);

    for _ in 0..3 {
        let (r, took) = timed(gw.get("/api/x")).await;
        assert_gateway_error(&r, 503, "overloaded");
        assert!(took < Duration::from_millis(200), "shed at once, not queued: took {took:?}");
    }
    assert_eq!(up.count(), 3, "overloaded requests never reach the upstream");

    up.release();
    for h in held {
        assert_eq!(within(EXCHANGE_TIMEOUT, "held request", h).await.unwrap().status, 200);
    }
    // The slots are free again.
    for _ in 0..4 {
        assert_eq!(gw.get("/api/x").await.status, 200);
    }
    let m = scrape(&gw).await;
    assert_eq!(
        m.get("waygate_http_requests_total", &[("route", "/api"), ("method", "GET"), ("status", "503")]),
        Some(3.0),
        "{}",
        m.lines_with("http_requests_total")
    );
}

#[tokio::test]
async fn a_hanging_upstream_is_504_within_request_timeout_and_routes_can_override_it() {
    let hang = Upstream::start("hang").await;
    hang.set_mode(Mode::Hang);
    let slow = Upstream::start("slow").await;
    slow.set_mode(Mode::Slow(Duration::from_millis(400)));
    let body = service_toml("hang", &[hang.endpoint()], "request_timeout = \"300ms\"")
        + &service_toml("slow", &[slow.endpoint()], "request_timeout = \"200ms\"")
        + &route_toml("/hang", "hang", "strip_prefix = true")
        + &route_toml("/hang-short", "hang", "strip_prefix = true\nrequest_timeout = \"150ms\"")
        + &route_toml("/slow", "slow", "strip_prefix = true")
        + &route_toml("/slow-long", "slow", "strip_prefix = true\nrequest_timeout = \"2s\"");
    let gw = TestGateway::start(&body).await;

    let slack = Duration::from_millis(100);
    for (path, timeout) in [("/hang/x", 300), ("/hang-short/x", 150), ("/slow/x", 200)] {
        let timeout = Duration::from_millis(timeout);
        let (r, took) = timed(gw.get(path)).await;
        let v = assert_gateway_error(&r, 504, "upstream_timeout");
        assert!(took >= timeout, "{path}: 504 after {took:?}, before request_timeout {timeout:?}: {v}");
        assert!(took <= timeout + slack, "{path}: 504 after {took:?}, request_timeout {timeout:?} + 100 ms: {v}");
    }
    // A longer route timeout lets the slow upstream answer.
    let (r, took) = timed(gw.get("/slow-long/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took >= Duration::from_millis(400), "{took:?}");

    let m = scrape(&gw).await;
    let timeouts = m.sum("waygate_upstream_requests_total", &[("service", "hang"), ("outcome", "timeout")]);
    assert_eq!(timeouts, 2.0, "{}", m.lines_with("upstream_requests"));
    assert_eq!(m.get("waygate_http_requests_total", &[("route", "/hang-short"), ("status", "504")]), Some(1.0));
}
