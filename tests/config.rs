//! Configuration (SPEC §2, issue 2 item 2): defaults, partial policy tables,
//! and every error reported as `PATH:LINE:COL: message`.

use std::time::Duration;

use waygate::config::{BalancerKind, ConfigError};
use waygate::Config;

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("accepted an invalid config:\n{text}"),
        Err(e) => e.0,
    }
}

/// Asserts an error on `line` whose message contains `needle` (any case).
fn assert_error_at(errs: &[ConfigError], line: usize, needle: &str) {
    let found = errs.iter().any(|e| e.line == line && e.message.to_lowercase().contains(&needle.to_lowercase()));
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(found, "no error on line {line} mentioning {needle:?}; got:\n{}", shown.join("\n"));
}

#[test]
fn the_shipped_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("config/gateway.toml:\n{e}"));
    assert!(!c.services.is_empty() && !c.routes.is_empty());
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::parse(
        "[[services]]\nname = \"users\"\nendpoints = [\"127.0.0.1:3001\"]\n\n[[routes]]\npath_prefix = \"/api/users\"\nservice = \"users\"\n",
        "t.toml",
    )
    .expect("valid");
    assert_eq!(c.gateway.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.gateway.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(c.gateway.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.gateway.worker_threads, 0);
    assert_eq!(c.registry.heartbeat_ttl, Duration::from_secs(30));
    let s = &c.services[0];
    assert_eq!(s.balancer, BalancerKind::RoundRobin);
    assert_eq!(s.connect_timeout, Duration::from_secs(1));
    assert_eq!(s.request_timeout, Duration::from_secs(15));
    assert_eq!(s.max_concurrent_requests, 1024);
    assert_eq!(s.endpoints[0].weight, 1);
    // Policy tables left out turn the features off.
    assert!(s.health_check.is_none() && s.outlier_detection.is_none());
    assert!(s.circuit_breaker.is_none() && s.retry.is_none());
    let r = &c.routes[0];
    assert!(!r.strip_prefix && r.host.is_none() && r.methods.is_none());
}

#[test]
fn partial_policy_tables_take_the_defaults() {
    let c = Config::parse(
        r#"[[services]]
name = "users"
endpoints = ["127.0.0.1:3001", { address = "127.0.0.1:3011", weight = 3 }]
[services.health_check]
path = "/healthz"
[services.outlier_detection]
consecutive_failures = 2
[services.circuit_breaker]
open_duration = "10s"
[services.retry]
attempts = 1
"#,
        "t.toml",
    )
    .expect("valid");
    let s = &c.services[0];
    assert_eq!(s.endpoints[1].weight, 3);
    let hc = s.health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/healthz");
    assert_eq!((hc.interval, hc.timeout), (Duration::from_secs(5), Duration::from_secs(1)));
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold, hc.expected_status), (2, 3, (200, 399)));
    let od = s.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (od.consecutive_failures, od.base_ejection_time, od.max_ejection_percent),
        (2, Duration::from_secs(30), 50)
    );
    let cb = s.circuit_breaker.as_ref().unwrap();
    assert_eq!((cb.failure_threshold, cb.open_duration, cb.half_open_max_requests), (5, Duration::from_secs(10), 1));
    let rt = s.retry.as_ref().unwrap();
    assert_eq!((rt.attempts, rt.budget_ratio, rt.budget_min_per_second), (1, 0.2, 3));
    assert!(rt.on_connect_failure && rt.on_timeout && rt.on_status == vec![503]);
}

#[test]
fn every_error_is_reported_with_its_line_and_column() {
    let text = r#"[gateway]
listen = "not-an-address"

[registry]
heartbeat_ttl = "30"

[[services]]
name = "users"
endpoints = ["127.0.0.1:3001"]
balancer = "fastest"

[[services]]
name = "orders"
endpoints = ["127.0.0.1:3002"]
request_timeout = "soon"

[[services]]
name = "billing"
endpoints = ["127.0.0.1:3003"]
[services.circuit_breaker]
failure_threshold = 0

[[routes]]
path_prefix = "/api/users"
service = "users"

[[routes]]
path_prefix = "/api/users"
service = "users"

[surprise]
"#;
    let errs = errors(text);
    assert_error_at(&errs, 2, "not-an-address");
    assert_error_at(&errs, 5, "unit");
    assert_error_at(&errs, 10, "fastest");
    assert_error_at(&errs, 15, "soon");
    assert_error_at(&errs, 21, "failure_threshold");
    assert_error_at(&errs, 28, "duplicate");
    assert_error_at(&errs, 31, "surprise");
    assert_eq!(errs.len(), 7, "{errs:?}");
    for e in &errs {
        assert!(e.line >= 1 && e.col >= 1, "{e}");
        assert!(e.to_string().starts_with(&format!("t.toml:{}:{}: ", e.line, e.col)), "{e}");
    }
}

#[test]
fn routes_must_name_a_declared_service() {
    let text = "[[services]]\nname = \"a\"\nendpoints = []\n\n[[routes]]\npath_prefix = \"/a\"\nservice = \"ghost\"\n";
    let errs = errors(text);
    assert_error_at(&errs, 7, "ghost");
    assert_eq!(errs[0].col, 11, "the column of the service value");
}

/// "exit 1 with `PATH:LINE:COL: message` for every error found": two
/// independent mistakes in one `[[services]]` entry are two errors.
#[test]
fn two_errors_in_one_service_entry_are_both_reported() {
    let text = r#"[[services]]
name = "a"
endpoints = []
request_timeout = "soon"
[services.circuit_breaker]
failure_threshold = 0
"#;
    let errs = errors(text);
    assert_error_at(&errs, 4, "soon");
    assert_error_at(&errs, 6, "failure_threshold");
}

#[test]
fn columns_point_at_the_offending_value_or_key() {
    let errs = errors("[gateway]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5 parsecs\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, 3);
    assert!(errs[0].col == 1 || errs[0].col == 17, "col {} (key at 1, value at 17)", errs[0].col);

    let errs = errors("[[services]]\nname = \"a\"\n  wat = 1\n");
    assert_eq!((errs[0].line, errs[0].col), (3, 3), "{errs:?}");
}

#[test]
fn durations_need_a_unit() {
    for v in ["30", "\"30\"", "1.5"] {
        let errs = errors(&format!("[gateway]\ndrain_timeout = {v}\n"));
        assert_error_at(&errs, 2, "unit");
    }
    for v in ["\"250ms\"", "\"5s\"", "\"1m\"", "\"1m30s\""] {
        Config::parse(&format!("[gateway]\ndrain_timeout = {v}\n"), "t.toml").unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[test]
fn identical_routes_are_refused_but_different_hosts_or_methods_are_not() {
    let svc = "[[services]]\nname = \"s\"\nendpoints = []\n\n";
    let route = |extra: &str| format!("[[routes]]\npath_prefix = \"/a\"\nservice = \"s\"\n{extra}\n");
    let text = format!("{svc}{}{}", route(""), route(""));
    assert!(!errors(&text).is_empty());
    let text = format!("{svc}{}{}{}", route(""), route("host = \"x.example\""), route("methods = [\"POST\"]"));
    Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
}
