//! Prometheus `/metrics` (SPEC §5): a scrape taken after traffic that touches
//! every family passes the real `promtool check metrics`; every family named
//! by the SPEC is there with its type and exact labels; request, upstream,
//! retry, breaker, registry and reload counters move as the traffic says;
//! endpoint series disappear when the endpoint leaves (eviction,
//! deregistration, reload).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Request;
use support::admin::*;
use support::*;

/// Runs `promtool check metrics` on `text` (stdin): (success, its output).
async fn promtool_check(text: String) -> (bool, String) {
    let run = tokio::task::spawn_blocking(move || {
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "promtool is not on PATH: `.ci/run` installs it (Debian package `prometheus`, /usr/bin/promtool); \
                 run `apt-get install -y prometheus` to run this test locally"
            ),
            Err(e) => panic!("cannot run promtool: {e}"),
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).expect("write the scrape to promtool");
        let out = child.wait_with_output().expect("promtool output");
        let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
        msg.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), msg)
    });
    within(Duration::from_secs(30), "promtool check metrics", run).await.expect("promtool task")
}

/// The families of SPEC §5: name, type, label names (histograms: of `_count`).
const SPEC_FAMILIES: &[(&str, &str, &[&str])] = &[
    ("waygate_http_requests_total", "counter", &["route", "service", "method", "status"]),
    ("waygate_http_request_duration_seconds", "histogram", &["route", "service"]),
    ("waygate_upstream_requests_total", "counter", &["service", "endpoint", "outcome"]),
    ("waygate_endpoint_healthy", "gauge", &["service", "endpoint"]),
    ("waygate_endpoint_active_requests", "gauge", &["service", "endpoint"]),
    ("waygate_circuit_breaker_state", "gauge", &["service"]),
    ("waygate_circuit_breaker_transitions_total", "counter", &["service", "to"]),
    ("waygate_registry_instances", "gauge", &["service"]),
    ("waygate_registry_evictions_total", "counter", &["service"]),
    ("waygate_retries_total", "counter", &["service"]),
    ("waygate_config_reloads_total", "counter", &["result"]),
];

fn assert_spec_families(m: &Scrape) {
    for (name, kind, labels) in SPEC_FAMILIES {
        assert_eq!(m.types.get(*name).map(String::as_str), Some(*kind), "# TYPE of {name}\n{}", m.text);
        let sample_name = if *kind == "histogram" { format!("{name}_count") } else { name.to_string() };
        let series: Vec<&Sample> = m.find(&sample_name, &[]).collect();
        assert!(!series.is_empty(), "no series of {name}\n{}", m.text);
        let mut want: Vec<&str> = labels.to_vec();
        want.sort();
        for s in &series {
            let got: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "labels of {name}: {s:?}");
        }
        if *kind == "histogram" {
            for suffix in ["_bucket", "_sum"] {
                assert!(m.has(&format!("{name}{suffix}"), &[]), "{name}{suffix} missing");
            }
            let bucket_name = format!("{name}_bucket");
            let bucket = m.find(&bucket_name, &[]).next().unwrap();
            assert!(bucket.labels.contains_key("le"), "{bucket:?}");
            // Buckets suit a gateway: from 0.5 ms to 30 s.
            for le in ["0.0005", "30", "+Inf"] {
                assert!(m.has(&format!("{name}_bucket"), &[("le", le)]), "{name} has no le=\"{le}\" bucket");
            }
        }
    }
}

/// Heartbeats every 50 ms until aborted (bounded to 30 s).
fn keep_registered(gw: &TestGateway, service: &str, id: &str, address: &str) -> tokio::task::JoinHandle<()> {
    let (client, uri) = (gw.client.clone(), gw.admin_url("/registry"));
    let body = registration(service, id, address).to_string();
    tokio::spawn(async move {
        for _ in 0..600 {
            let req = Request::post(uri.clone()).body(full(body.clone())).unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.request(req)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Series of any family that carry `endpoint = address`.
fn endpoint_series(m: &Scrape, address: &str) -> Vec<Sample> {
    m.samples.iter().filter(|s| s.labels.get("endpoint").map(String::as_str) == Some(address)).cloned().collect()
}

struct Fleet {
    ok: Upstream,
    hang: Upstream,
    busy: Upstream,
    ok2: Upstream,
    fail: Upstream,
    dead: String,
}

impl Fleet {
    async fn start() -> Fleet {
        let fleet = Fleet {
            ok: Upstream::start("ok").await,
            hang: Upstream::start("hang").await,
            busy: Upstream::start("busy").await,
            ok2: Upstream::start("ok2").await,
            fail: Upstream::start("fail").await,
            dead: dead_port().await.to_string(),
        };
        fleet.hang.set_mode(Mode::Hang);
        fleet.busy.set_mode(Mode::Status(503));
        fleet.fail.set_mode(Mode::Status(500));
        fleet
    }

    /// Services and routes: `ok` (200), `dead` (502), `hang` (504 after
    /// 200 ms), `empty` (503 no_healthy_upstream), `flaky` (a retry),
    /// `brk` (a breaker opening after one failure), `reg` (registered only).
    fn body(&self) -> String {
        let mut b = service_toml("ok", &[self.ok.endpoint()], "")
            + &service_toml("dead", std::slice::from_ref(&self.dead), "connect_timeout = \"300ms\"")
            + &service_toml("hang", &[self.hang.endpoint()], "request_timeout = \"200ms\"")
            + &service_toml("empty", &[], "")
            + &service_toml("flaky", &[self.busy.endpoint(), self.ok2.endpoint()], "[services.retry]\nattempts = 1")
            + &service_toml(
                "brk",
                &[self.fail.endpoint()],
                "[services.circuit_breaker]\nfailure_threshold = 1\nopen_duration = \"30s\"",
            )
            + &service_toml("reg", &[], "");
        for s in ["ok", "dead", "hang", "empty", "flaky", "brk", "reg"] {
            b += &route_toml(&format!("/{s}"), s, "strip_prefix = true");
        }
        format!("[registry]\nheartbeat_ttl = \"200ms\"\n\n{b}")
    }
}

#[tokio::test]
async fn a_scrape_after_traffic_on_every_family_passes_promtool() {
    let fleet = Fleet::start().await;
    let reg_gone = Upstream::start("reg-gone").await;
    let reg_live = Upstream::start("reg-live").await;
    let body = fleet.body();
    let gw = TestGateway::start(&body).await;

    // 200, 404, 502, 503, 504, a retry, a breaker transition.
    assert_eq!(gw.get("/ok/x").await.status, 200);
    assert_gateway_error(&gw.get("/nothing/here").await, 404, "no_route");
    assert_gateway_error(&gw.get("/dead/x").await, 502, "upstream_connect_error");
    assert_gateway_error(&gw.get("/empty/x").await, 503, "no_healthy_upstream");
    assert_gateway_error(&gw.get("/hang/x").await, 504, "upstream_timeout");
    for _ in 0..2 {
        assert_eq!(gw.get("/flaky/x").await.status, 200);
    }
    assert_eq!(gw.get("/brk/x").await.status, 500);
    assert_gateway_error(&gw.get("/brk/x").await, 503, "circuit_open");

    // A registration that is evicted (heartbeat_ttl 200ms), then one kept alive.
    register(&gw, "reg", "reg-gone", &reg_gone.endpoint()).await;
    assert_eq!(gw.get("/reg/x").await.instance(), Some("reg-gone"));
    let gw_ref = &gw;
    eventually(Duration::from_secs(3), "reg-gone is evicted", || async move {
        scrape(gw_ref).await.get("waygate_registry_evictions_total", &[("service", "reg")]) == Some(1.0)
    })
    .await;
    let heartbeats = keep_registered(&gw, "reg", "reg-live", &reg_live.endpoint());
    eventually(Duration::from_secs(3), "reg-live serves", || async {
        gw.get("/reg/x").await.instance() == Some("reg-live")
    })
    .await;

    // A reload that succeeds and one that is refused.
    let dir = TempDir::new("metrics-reload");
    let path = dir.write("gateway.toml", &gateway_toml("", &body));
    waygate::reload::reload(&path, gw.gateway().proxy()).expect("the same config reloads");
    let bad = dir.write("bad.toml", &gateway_toml("", "[[services]]\nname = 7\n"));
    assert!(waygate::reload::reload(&bad, gw.gateway().proxy()).is_err(), "an invalid file is refused");
    assert_eq!(gw.get("/ok/x").await.status, 200, "the old config keeps serving");

    let r = gw.admin_get("/metrics").await;
    assert_eq!(r.status, 200);
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"), "content-type {ctype:?}");
    let text = r.text();
    let (ok, out) = promtool_check(text.clone()).await;
    assert!(ok, "promtool check metrics failed:\n{out}\n--- scrape ---\n{text}");
    assert!(out.trim().is_empty(), "promtool reported lint problems:\n{out}");

    let m = Scrape::parse(&text);
    assert_spec_families(&m);

    // The values the traffic implies.
    let req = |route: &str, status: &str| {
        m.get("waygate_http_requests_total", &[("route", route), ("method", "GET"), ("status", status)])
    };
    assert_eq!(req("/ok", "200"), Some(2.0));
    assert_eq!(req("", "404"), Some(1.0), "unrouted requests: route=\"\"\n{}", m.lines_with("404"));
    assert_eq!(req("/dead", "502"), Some(1.0));
    assert_eq!(req("/empty", "503"), Some(1.0));
    assert_eq!(req("/hang", "504"), Some(1.0));
    assert_eq!(req("/brk", "503"), Some(1.0));
    for outcome in ["success", "http_5xx", "connect_error", "timeout"] {
        assert!(
            m.sum("waygate_upstream_requests_total", &[("outcome", outcome)]) >= 1.0,
            "no {outcome} outcome\n{}",
            m.lines_with("upstream_requests")
        );
    }
    let up = |service: &str, endpoint: &str, outcome: &str| {
        m.get("waygate_upstream_requests_total", &[("service", service), ("endpoint", endpoint), ("outcome", outcome)])
    };
    assert_eq!(up("dead", &fleet.dead, "connect_error"), Some(1.0));
    assert_eq!(up("hang", &fleet.hang.endpoint(), "timeout"), Some(1.0));
    assert_eq!(up("brk", &fleet.fail.endpoint(), "http_5xx"), Some(1.0));
    assert_eq!(m.get("waygate_retries_total", &[("service", "flaky")]), Some(fleet.busy.count() as f64));
    assert!(fleet.busy.count() >= 1);
    assert_eq!(m.get("waygate_circuit_breaker_state", &[("service", "brk")]), Some(1.0));
    assert_eq!(m.get("waygate_circuit_breaker_transitions_total", &[("service", "brk"), ("to", "open")]), Some(1.0));
    assert_eq!(m.get("waygate_registry_instances", &[("service", "reg")]), Some(1.0));
    assert_eq!(m.get("waygate_registry_evictions_total", &[("service", "reg")]), Some(1.0));
    assert_eq!(m.get("waygate_config_reloads_total", &[("result", "success")]), Some(1.0));
    assert_eq!(m.get("waygate_config_reloads_total", &[("result", "failure")]), Some(1.0));
    let ok_ep = fleet.ok.endpoint();
    assert_eq!(m.get("waygate_endpoint_healthy", &[("service", "ok"), ("endpoint", &ok_ep)]), Some(1.0));
    assert_eq!(m.get("waygate_endpoint_active_requests", &[("service", "ok"), ("endpoint", &ok_ep)]), Some(0.0));
    assert_eq!(m.get("waygate_endpoint_healthy", &[("service", "reg"), ("endpoint", &reg_live.endpoint())]), Some(1.0));
    assert!(endpoint_series(&m, &reg_gone.endpoint()).is_empty(), "the evicted endpoint has no series");
    // Issue 6: process metrics too, and the config hash.
    for p in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
        assert!(m.has(p, &[]), "{p} missing");
    }
    assert!(m.has("waygate_config_info", &[]), "waygate_config_info missing");
    heartbeats.abort();
}

#[tokio::test]
async fn request_counters_and_histograms_move_per_status() {
    let fleet = Fleet::start().await;
    let gw = TestGateway::start(&fleet.body()).await;

    // (path, route label, service label, status, upstream (endpoint, outcome) expected to move)
    let hang_ep = fleet.hang.endpoint();
    let ok_ep = fleet.ok.endpoint();
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("/ok/x", "/ok", "ok", "200", Some((ok_ep.as_str(), "success"))),
        ("/missing", "", "", "404", None),
        ("/dead/x", "/dead", "dead", "502", Some((fleet.dead.as_str(), "connect_error"))),
        ("/empty/x", "/empty", "empty", "503", None),
        ("/hang/x", "/hang", "hang", "504", Some((hang_ep.as_str(), "timeout"))),
        ("/brk/x", "/brk", "brk", "500", None),
        ("/brk/x", "/brk", "brk", "503", None),
    ];
    for (path, route, service, status, upstream) in cases {
        let before = scrape(&gw).await;
        let r = gw.get(path).await;
        assert_eq!(r.status.as_str(), status, "GET {path}: {}", r.text());
        let after = scrape(&gw).await;

        let labels = [("route", route), ("service", service), ("method", "GET"), ("status", status)];
        let delta =
            after.sum("waygate_http_requests_total", &labels) - before.sum("waygate_http_requests_total", &labels);
        assert_eq!(delta, 1.0, "{path}: waygate_http_requests_total{labels:?}\n{}", after.lines_with("http_requests"));
        let total = |m: &Scrape| m.sum("waygate_http_requests_total", &[]);
        assert_eq!(total(&after) - total(&before), 1.0, "{path}: only one request counted");

        let h = [("route", route), ("service", service)];
        let count = |m: &Scrape| m.sum("waygate_http_request_duration_seconds_count", &h);
        let sum = |m: &Scrape| m.sum("waygate_http_request_duration_seconds_sum", &h);
        let bucket = |m: &Scrape, le: &str| {
            m.sum("waygate_http_request_duration_seconds_bucket", &[("route", route), ("service", service), ("le", le)])
        };
        assert_eq!(count(&after) - count(&before), 1.0, "{path}: histogram count");
        assert_eq!(bucket(&after, "+Inf") - bucket(&before, "+Inf"), 1.0, "{path}: +Inf bucket");
        if status == "504" {
            // Answered after the 200 ms request_timeout.
            assert!(sum(&after) - sum(&before) >= 0.2, "{path}: duration {}", sum(&after) - sum(&before));
            assert_eq!(bucket(&after, "0.1"), bucket(&before, "0.1"), "{path}: not in the 100 ms bucket");
        }

        if let Some((endpoint, outcome)) = upstream {
            let u = [("service", service), ("endpoint", endpoint), ("outcome", outcome)];
            let d =
                after.sum("waygate_upstream_requests_total", &u) - before.sum("waygate_upstream_requests_total", &u);
            assert_eq!(d, 1.0, "{path}: waygate_upstream_requests_total{u:?}");
        }
    }
    // Whatever is answered without trying an upstream moves no upstream counter.
    let m = scrape(&gw).await;
    assert_eq!(m.sum("waygate_upstream_requests_total", &[("service", "empty")]), 0.0);
    assert_eq!(m.sum("waygate_upstream_requests_total", &[("service", "brk")]), 1.0, "circuit_open tried nothing");
}

#[tokio::test]
async fn endpoint_series_disappear_when_the_endpoint_leaves() {
    let st = Upstream::start("static").await;
    let gone = Upstream::start("evicted").await;
    let dereg = Upstream::start("deregistered").await;
    let other = Upstream::start("other").await;
    let body = |endpoints: &[String]| {
        format!(
            "[registry]\nheartbeat_ttl = \"200ms\"\n\n{}{}",
            service_toml("reg", endpoints, ""),
            route_toml("/reg", "reg", "strip_prefix = true")
        )
    };
    let gw = TestGateway::start(&body(&[st.endpoint(), other.endpoint()])).await;

    register(&gw, "reg", "evicted", &gone.endpoint()).await;
    let heartbeats = keep_registered(&gw, "reg", "deregistered", &dereg.endpoint());
    eventually(Duration::from_secs(3), "every endpoint has served", || async {
        gw.get("/reg/x").await;
        [&st, &gone, &dereg, &other].iter().all(|u| u.count() >= 1)
    })
    .await;
    let m = scrape(&gw).await;
    for (u, what) in [(&gone, "registered"), (&dereg, "registered"), (&st, "static")] {
        let ep = u.endpoint();
        for family in
            ["waygate_upstream_requests_total", "waygate_endpoint_healthy", "waygate_endpoint_active_requests"]
        {
            assert!(m.has(family, &[("service", "reg"), ("endpoint", &ep)]), "{what} {ep}: no {family}\n{}", m.text);
        }
    }
    assert_eq!(m.get("waygate_registry_instances", &[("service", "reg")]), Some(2.0));

    // Eviction: `evicted` stops heartbeating.
    let gw_ref = &gw;
    eventually(Duration::from_secs(3), "the lease lapses and is evicted", || async move {
        scrape(gw_ref).await.get("waygate_registry_evictions_total", &[("service", "reg")]) == Some(1.0)
    })
    .await;
    let m = scrape(&gw).await;
    assert_eq!(endpoint_series(&m, &gone.endpoint()), vec![], "series of the evicted endpoint");
    assert_eq!(m.get("waygate_registry_instances", &[("service", "reg")]), Some(1.0));
    assert_eq!(endpoint_state(&gw, "reg", &gone.endpoint()).await.0, "expired");

    // Deregistration.
    heartbeats.abort();
    let _ = heartbeats.await;
    assert_eq!(admin_delete(&gw, "/registry/reg/deregistered").await.status, 204);
    let m = scrape(&gw).await;
    assert_eq!(endpoint_series(&m, &dereg.endpoint()), vec![], "series of the deregistered endpoint");
    assert_eq!(
        m.get("waygate_registry_evictions_total", &[("service", "reg")]),
        Some(1.0),
        "a deregistration is no eviction"
    );

    // A reload that drops a static endpoint drops its series; the kept one stays.
    let dir = TempDir::new("metrics-series");
    let path = dir.write("gateway.toml", &gateway_toml("", &body(&[other.endpoint()])));
    waygate::reload::reload(&path, gw.gateway().proxy()).expect("reload");
    let m = scrape(&gw).await;
    assert_eq!(endpoint_series(&m, &st.endpoint()), vec![], "series of the endpoint removed by the reload");
    assert!(
        m.has("waygate_upstream_requests_total", &[("endpoint", &other.endpoint())]),
        "kept endpoint keeps its series"
    );
    assert_eq!(m.get("waygate_config_reloads_total", &[("result", "success")]), Some(1.0));
}

#[tokio::test]
async fn a_registered_endpoint_keeps_counting_after_its_service_is_removed_and_re_added_by_reloads() {
    let inst = Upstream::start("inst").await;
    let with_svc = format!(
        "[registry]\nheartbeat_ttl = \"30s\"\n\n{}{}",
        service_toml("reg", &[], ""),
        route_toml("/reg", "reg", "strip_prefix = true")
    );
    let gw = TestGateway::start(&with_svc).await;
    register(&gw, "reg", "inst-1", &inst.endpoint()).await;
    assert_eq!(gw.get("/reg/x").await.instance(), Some("inst"));
    let ep = inst.endpoint();
    let success = |m: &Scrape| {
        m.get("waygate_upstream_requests_total", &[("service", "reg"), ("endpoint", &ep), ("outcome", "success")])
    };
    assert_eq!(success(&scrape(&gw).await), Some(1.0));

    // The service leaves the config (the instance stays registered), then comes back.
    let dir = TempDir::new("metrics-readd");
    let without = dir.write("without.toml", &gateway_toml("", &format!("{}{}", service_toml("other", &[], ""), "")));
    waygate::reload::reload(&without, gw.gateway().proxy()).expect("reload without the service");
    assert!(endpoint_series(&scrape(&gw).await, &ep).is_empty(), "no series while the service is not declared");
    let with = dir.write("with.toml", &gateway_toml("", &with_svc));
    waygate::reload::reload(&with, gw.gateway().proxy()).expect("reload with the service again");

    for _ in 0..3 {
        assert_eq!(gw.get("/reg/x").await.instance(), Some("inst"));
    }
    let m = scrape(&gw).await;
    assert!(
        success(&m).is_some_and(|v| v >= 3.0),
        "3 successful upstream requests to {ep} are not counted: {:?}\n{}",
        success(&m),
        m.lines_with("upstream_requests")
    );
}

/// The access log of the real binary (`--log-format json`): one JSON line per
/// request, with every field issue 6 names, bytes in both directions counted
/// for streamed, held (retry) and gateway-answered requests alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_with_every_field() {
    let up = Upstream::start("up").await;
    let body = simple_toml(&[&up], "") + "\n[services.retry]\nattempts = 1\n";
    let config = gateway_toml("worker_threads = 2", &body);
    let mut bin = Binary::start(&config);
    let client = http_client();
    let send = |req: Request<TestBody>| {
        let client = client.clone();
        async move { Resp::collect(within(EXCHANGE_TIMEOUT, "request", client.request(req)).await.expect("send")).await }
    };
    let url = |path: &str| format!("http://{}{path}", bin.proxy);
    // A streamed POST (not retryable), a held PUT (retryable), a 404.
    let post =
        send(Request::post(url("/api/streamed")).header("x-request-id", "req-post").body(full("0123456789A")).unwrap())
            .await;
    assert_eq!(post.status, 200);
    let put = send(Request::put(url("/api/held")).header("x-request-id", "req-put").body(full("abcd")).unwrap()).await;
    assert_eq!(put.status, 200);
    let missing = send(Request::get(url("/nowhere")).header("x-request-id", "req-404").body(empty()).unwrap()).await;
    assert_eq!(missing.status, 404);

    bin.wait_for_signal_handlers().await;
    send_signal(bin.pid(), "TERM");
    assert!(bin.wait(Duration::from_secs(10)).is_some_and(|s| s.success()), "clean exit:\n{}", bin.log());
    let log = bin.log();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "waygate::access")
        .collect();
    assert_eq!(access.len(), 3, "one access line per request:\n{log}");
    let line = |id: &str| access.iter().find(|v| v["request_id"] == id).unwrap_or_else(|| panic!("no line for {id}"));

    let p = line("req-post");
    assert_eq!((p["method"].as_str(), p["path"].as_str()), (Some("POST"), Some("/api/streamed")));
    assert_eq!((p["route"].as_str(), p["service"].as_str()), (Some("/api"), Some("svc")));
    assert_eq!(p["endpoint"].as_str(), Some(up.endpoint().as_str()));
    assert_eq!(p["status"], 200);
    assert_eq!(p["bytes_in"], 11, "streamed request body counted");
    assert_eq!(p["bytes_out"].as_u64(), Some(post.body.len() as u64));
    assert!(p["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{p}");
    let trace_id = p["trace_id"].as_str().unwrap();
    assert!(trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "{p}");
    assert!(up.requests().iter().any(|r| r.header("traceparent").is_some_and(|t| t.contains(trace_id))));

    assert_eq!(line("req-put")["bytes_in"], 4, "held (retryable) body counted");
    let m = line("req-404");
    assert_eq!((m["status"].as_u64(), m["route"].as_str(), m["bytes_in"].as_u64()), (Some(404), Some(""), Some(0)));
    assert!(m["bytes_out"].as_u64().is_some_and(|b| b > 0), "the JSON error body is counted: {m}");
}
