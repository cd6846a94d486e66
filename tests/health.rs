//! Endpoint health (SPEC §2 `[services.health_check]`,
//! `[services.outlier_detection]`; §3 `no_healthy_upstream`; §4 the one
//! state of `GET /admin/upstreams`): active checks turn a flapping endpoint
//! unhealthy and back, an unhealthy endpoint gets no traffic, a service with
//! no available endpoint answers 503; passive outlier detection ejects a
//! 5xx-returning endpoint for `base_ejection_time` (doubled when it repeats),
//! and never the last available endpoint.
//!
//! The support `Upstream` answers every path, `/healthz` included, according
//! to its mode: `Status(500)` fails the checks, `Hang` makes them time out, a
//! dead port refuses them. Live traffic is counted without the checks
//! ([`live_requests`]).

mod support;

use std::time::{Duration, Instant};

use support::admin::*;
use support::*;

const HEALTH_CHECK: &str = "[services.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";

fn outlier(percent: u32) -> String {
    format!(
        "[services.outlier_detection]\nconsecutive_failures = 3\nbase_ejection_time = \"500ms\"\nmax_ejection_percent = {percent}\n"
    )
}

/// Sends `n` GETs that must all be answered 200 by `up`.
async fn all_served_by(gw: &TestGateway, up: &Upstream, n: usize) {
    for i in 0..n {
        let r = gw.get(&format!("/api/only-{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.instance(), Some(up.name()), "request {i}");
    }
}

#[tokio::test]
async fn a_flapping_endpoint_goes_unhealthy_gets_no_traffic_and_comes_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&simple_toml(&[&a, &b], &format!("request_timeout = \"2s\"\n{HEALTH_CHECK}"))).await;
    let (sa, sb) = (a.endpoint(), b.endpoint());

    eventually(Duration::from_secs(2), "both endpoints are probed", || async {
        health_checks(&a) >= 1 && health_checks(&b) >= 1
    })
    .await;
    let probe = b.requests().into_iter().find(|r| r.path == HEALTH_PATH).unwrap();
    assert_eq!(probe.method, http::Method::GET);

    // Both serve while healthy.
    for i in 0..4 {
        assert_eq!(gw.get(&format!("/api/{i}")).await.status, 200);
    }
    assert!(live_requests(&a) >= 1 && live_requests(&b) >= 1, "round robin uses both");

    // b fails its checks (status 500): unhealthy after 2 failures, no more traffic.
    b.set_mode(Mode::Status(500));
    let reason = wait_for_state(&gw, "svc", &sb, "unhealthy", Duration::from_secs(2)).await;
    assert!(reason.contains("active check") && reason.contains("500"), "reason: {reason}");
    let b_live = live_requests(&b);
    all_served_by(&gw, &a, 10).await;
    assert_eq!(live_requests(&b), b_live, "an unhealthy endpoint gets no traffic");
    let m = scrape(&gw).await;
    assert_eq!(m.get("waygate_endpoint_healthy", &[("service", "svc"), ("endpoint", &sb)]), Some(0.0));
    assert_eq!(m.get("waygate_endpoint_healthy", &[("service", "svc"), ("endpoint", &sa)]), Some(1.0));

    // b passes again: healthy after 2 passes, traffic comes back.
    b.set_mode(Mode::Ok);
    let reason = wait_for_state(&gw, "svc", &sb, "healthy", Duration::from_secs(2)).await;
    assert!(reason.contains("active check"), "reason: {reason}");
    for i in 0..10 {
        assert_eq!(gw.get(&format!("/api/back-{i}")).await.status, 200);
    }
    assert!(live_requests(&b) >= b_live + 4, "b takes its share again");

    // Flap again, this time by hanging: the checks time out.
    b.set_mode(Mode::Hang);
    let reason = wait_for_state(&gw, "svc", &sb, "unhealthy", Duration::from_secs(2)).await;
    assert!(reason.contains("active check") && reason.contains("timeout"), "reason: {reason}");
    let b_live = live_requests(&b);
    all_served_by(&gw, &a, 10).await;
    assert_eq!(live_requests(&b), b_live);
    b.set_mode(Mode::Ok);
    wait_for_state(&gw, "svc", &sb, "healthy", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn every_endpoint_unhealthy_is_503_no_healthy_upstream() {
    let a = Upstream::start("a").await;
    let dead = dead_port().await.to_string();
    let body = service_toml("svc", &[a.endpoint(), dead.clone()], &format!("request_timeout = \"2s\"\n{HEALTH_CHECK}"))
        + &route_toml("/api", "svc", "strip_prefix = true");
    let gw = TestGateway::start(&body).await;

    let reason = wait_for_state(&gw, "svc", &dead, "unhealthy", Duration::from_secs(2)).await;
    assert!(reason.contains("active check") && reason.contains("connect"), "reason: {reason}");
    all_served_by(&gw, &a, 4).await;

    a.set_mode(Mode::Status(500));
    wait_for_state(&gw, "svc", &a.endpoint(), "unhealthy", Duration::from_secs(2)).await;
    let a_live = live_requests(&a);
    for _ in 0..3 {
        let r = gw.get("/api/x").await;
        assert_gateway_error(&r, 503, "no_healthy_upstream");
    }
    assert_eq!(live_requests(&a), a_live, "no traffic to an unhealthy endpoint");
    let m = scrape(&gw).await;
    assert_eq!(m.sum("waygate_endpoint_healthy", &[("service", "svc")]), 0.0, "{}", m.lines_with("endpoint_healthy"));

    a.set_mode(Mode::Ok);
    wait_for_state(&gw, "svc", &a.endpoint(), "healthy", Duration::from_secs(2)).await;
    all_served_by(&gw, &a, 3).await;
}

#[tokio::test]
async fn registered_instances_are_checked_too() {
    let r = Upstream::start("registered").await;
    let body = service_toml("svc", &[], &format!("request_timeout = \"2s\"\n{HEALTH_CHECK}"))
        + &route_toml("/api", "svc", "strip_prefix = true");
    let gw = TestGateway::start_with("", &format!("[registry]\nheartbeat_ttl = \"30s\"\n\n{body}")).await;

    assert_gateway_error(&gw.get("/api/x").await, 503, "no_healthy_upstream");
    register(&gw, "svc", "svc-1", &r.endpoint()).await;
    all_served_by(&gw, &r, 2).await;
    eventually(Duration::from_secs(2), "the registered instance is probed", || async { health_checks(&r) >= 1 }).await;

    r.set_mode(Mode::Status(500));
    let reason = wait_for_state(&gw, "svc", &r.endpoint(), "unhealthy", Duration::from_secs(2)).await;
    assert!(reason.contains("active check"), "reason: {reason}");
    assert_gateway_error(&gw.get("/api/x").await, 503, "no_healthy_upstream");
    r.set_mode(Mode::Ok);
    wait_for_state(&gw, "svc", &r.endpoint(), "healthy", Duration::from_secs(2)).await;
    all_served_by(&gw, &r, 2).await;
}

#[tokio::test]
async fn a_500_returning_endpoint_is_ejected_and_returns_after_the_ejection_time() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    b.set_mode(Mode::Status(500));
    let gw = TestGateway::start(&simple_toml(&[&a, &b], &format!("request_timeout = \"2s\"\n{}", outlier(50)))).await;
    let sb = b.endpoint();

    // Round robin: drive traffic until b has failed 3 times in a row.
    let mut third_sent = None;
    for i in 0..20 {
        let before = b.count();
        let sent = Instant::now();
        let r = gw.get(&format!("/api/{i}")).await;
        if b.count() > before {
            assert_eq!(r.status, 500);
            if b.count() < 3 {
                assert_eq!(
                    endpoint_state(&gw, "svc", &sb).await.0,
                    "healthy",
                    "not ejected after {} failures",
                    b.count()
                );
            } else {
                third_sent = Some(sent);
                break;
            }
        } else {
            assert_eq!((r.status.as_u16(), r.instance()), (200, Some("a")));
        }
    }
    let third_sent = third_sent.expect("b got 3 requests within 20");
    let (state, reason) = endpoint_state(&gw, "svc", &sb).await;
    assert_eq!(state, "ejected", "reason: {reason}");
    assert!(reason.contains("outlier") && reason.contains('3') && reason.contains("500"), "reason: {reason}");
    let m = scrape(&gw).await;
    assert_eq!(m.get("waygate_endpoint_healthy", &[("service", "svc"), ("endpoint", &sb)]), Some(0.0));

    // While ejected (well inside the 500 ms) every request goes to a.
    let mut n = 0;
    while n < 5 || third_sent.elapsed() < Duration::from_millis(350) {
        let r = gw.get("/api/during").await;
        assert_eq!((r.status.as_u16(), r.instance()), (200, Some("a")), "request {n} during the ejection");
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.count(), 3, "an ejected endpoint gets no traffic");

    // It returns after base_ejection_time.
    let reason = wait_for_state(&gw, "svc", &sb, "healthy", Duration::from_secs(3)).await;
    let ejected_for = third_sent.elapsed();
    assert!(ejected_for >= Duration::from_millis(500), "back after {ejected_for:?}, base_ejection_time is 500ms");
    assert!(reason.contains("ejection"), "reason: {reason}");

    // Back in rotation (still failing): ejected again, for twice as long.
    for i in 0..20 {
        if b.count() == 6 {
            break;
        }
        gw.get(&format!("/api/again-{i}")).await;
    }
    assert_eq!(b.count(), 6, "b gets traffic again after its return");
    let (state, reason) = endpoint_state(&gw, "svc", &sb).await;
    assert_eq!(state, "ejected", "reason: {reason}");
    assert!(reason.contains("1s"), "the second ejection lasts 2 × 500ms: {reason}");
}

#[tokio::test]
async fn the_last_available_endpoint_is_never_ejected() {
    // One endpoint returning 500: it keeps receiving traffic.
    let solo = Upstream::start("solo").await;
    solo.set_mode(Mode::Status(500));
    let gw = TestGateway::start(&simple_toml(&[&solo], &format!("request_timeout = \"2s\"\n{}", outlier(50)))).await;
    for i in 0..10 {
        let r = gw.get(&format!("/api/{i}")).await;
        assert_eq!((r.status.as_u16(), r.instance()), (500, Some("solo")), "request {i}: {}", r.text());
    }
    assert_eq!(solo.count(), 10);
    assert_eq!(endpoint_state(&gw, "svc", &solo.endpoint()).await.0, "healthy");
    drop(gw);

    // Two endpoints returning 500, max_ejection_percent = 100: one is
    // ejected, the other is then the last available and stays.
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    a.set_mode(Mode::Status(500));
    b.set_mode(Mode::Status(500));
    let gw = TestGateway::start(&simple_toml(&[&a, &b], &format!("request_timeout = \"2s\"\n{}", outlier(100)))).await;
    let mut saw_ejection = false;
    for i in 0..12 {
        let r = gw.get(&format!("/api/{i}")).await;
        assert_eq!(r.status, 500, "request {i} is answered by an upstream, never no_healthy_upstream: {}", r.text());
        let states =
            [endpoint_state(&gw, "svc", &a.endpoint()).await.0, endpoint_state(&gw, "svc", &b.endpoint()).await.0];
        assert!(states.iter().any(|s| s == "healthy"), "after request {i}: {states:?}");
        saw_ejection |= states.iter().any(|s| s == "ejected");
    }
    assert!(saw_ejection, "one of the two was ejected");
    assert_eq!(a.count() + b.count(), 12);
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_slow_the_checks_of_the_others() {
    // timeout (1s, the SPEC default) longer than interval (100ms): checks of
    // `a` must still run every ~100 ms while every check of `b` hangs.
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    b.set_mode(Mode::Hang);
    let hc = "[services.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
    let gw = TestGateway::start(&simple_toml(&[&a, &b], &format!("request_timeout = \"2s\"\n{hc}"))).await;
    eventually(Duration::from_secs(2), "b's first check is under way", || async { health_checks(&b) >= 1 }).await;

    // a starts failing: 2 failed checks at a 100 ms interval should find it
    // well within a second, whatever b does.
    a.set_mode(Mode::Status(500));
    let started = Instant::now();
    wait_for_state(&gw, "svc", &a.endpoint(), "unhealthy", Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "a turned unhealthy {took:?} after it started failing (interval 100ms, unhealthy_threshold 2): \
         the checks of a waited for b's hanging checks ({} checks of a so far)",
        health_checks(&a)
    );
}

#[tokio::test]
async fn max_ejection_percent_is_counted_after_the_ejection() {
    // Four endpoints all returning 500, max_ejection_percent = 50: two may be
    // ejected (2 of 4 = 50 %), a third never (3 of 4 = 75 %).
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    ];
    for u in &ups {
        u.set_mode(Mode::Status(500));
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gw = TestGateway::start(&simple_toml(&refs, &format!("request_timeout = \"2s\"\n{}", outlier(50)))).await;
    let mut most = 0;
    for i in 0..20 {
        let r = gw.get(&format!("/api/{i}")).await;
        assert_eq!(r.status, 500, "request {i}: {}", r.text());
        let v = upstreams(&gw).await;
        let ejected =
            v["services"]["svc"]["endpoints"].as_array().unwrap().iter().filter(|e| e["state"] == "ejected").count();
        assert!(ejected <= 2, "after request {i}: {ejected} of 4 ejected with max_ejection_percent = 50: {v}");
        most = most.max(ejected);
    }
    assert_eq!(most, 2, "two of the four failing endpoints were ejected");
}
