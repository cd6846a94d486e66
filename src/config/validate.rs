//! The second stage: raw structs → [`Config`], collecting every error with its
//! position instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::raw::*;
use super::*;

/// Collects errors as (byte span, message) and renders them with line/col.
struct Errors<'a> {
    text: &'a str,
    name: &'a str,
    list: Vec<(usize, String)>,
}

impl<'a> Errors<'a> {
    fn at(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.list.push((span.start, msg.into()));
    }

    fn toml(&mut self, e: toml::de::Error) {
        let start = e.span().map(|s| s.start).unwrap_or(0);
        self.list.push((start, e.message().trim().to_string()));
    }

    fn finish(mut self) -> ConfigErrors {
        self.list.sort_by_key(|(pos, _)| *pos);
        self.list.dedup();
        ConfigErrors(
            self.list
                .into_iter()
                .map(|(pos, message)| {
                    let (line, col) = line_col(self.text, pos);
                    ConfigError { path: self.name.to_string(), line, col, message }
                })
                .collect(),
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..floor_char_boundary(text, pos)];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Deserializes one table, reporting every bad key in it: after an error the
/// key it points at is dropped and the rest is tried again, so `check` lists
/// all the problems of a table, not only the first. The result is `None` if
/// the table could not be read at all.
fn de<T: DeserializeOwned>(mut v: Spanned<DeValue<'_>>, errs: &mut Errors) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..64 {
        let err = match T::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        // "missing field `x`" after `x` itself was dropped for a bad value
        // is a consequence, not a second problem.
        if removed.iter().any(|k| err.message().contains(&format!("missing field `{k}`"))) {
            return None;
        }
        let at = err.span().map(|s| s.start);
        errs.toml(err);
        let at = at?;
        let DeValue::Table(table) = v.get_mut() else { return None };
        let key = table
            .iter()
            .find(|(k, val)| k.span().contains(&at) || val.span().contains(&at) || val.span().start == at)
            .map(|(k, _)| k.clone());
        let key = key?;
        table.remove(&key);
        removed.push(key.get_ref().to_string());
    }
    None
}

pub(super) fn parse(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    let mut errs = Errors { text, name, list: Vec::new() };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            errs.toml(e);
            return Err(errs.finish());
        }
    };
    let mut doc = doc.into_inner();

    let gateway: RawGateway = take_table(&mut doc, "gateway", &mut errs).unwrap_or_default();
    let registry: RawRegistry = take_table(&mut doc, "registry", &mut errs).unwrap_or_default();
    let telemetry: RawTelemetry = take_table(&mut doc, "telemetry", &mut errs).unwrap_or_default();
    let services: Vec<Option<RawService>> = take_array(&mut doc, "services", &mut errs);
    let routes: Vec<Option<RawRoute>> = take_array(&mut doc, "routes", &mut errs);
    for (key, _) in doc.iter() {
        errs.at(
            key.span(),
            format!(
                "unknown key `{}`; expected one of `gateway`, `registry`, `telemetry`, `services`, `routes`",
                key.get_ref()
            ),
        );
    }
    let services_parsed = services.iter().all(Option::is_some);

    let gateway = check_gateway(gateway, &mut errs);
    let registry = check_registry(registry, &mut errs);
    let telemetry = check_telemetry(telemetry, &mut errs);

    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    let mut svc_out = Vec::new();
    for raw in services.into_iter().flatten() {
        let span = raw.name.span();
        if let Some(svc) = check_service(raw, &mut errs) {
            if names.contains_key(&svc.name) {
                errs.at(span, format!("service `{}` is declared twice", svc.name));
                continue;
            }
            names.insert(svc.name.clone(), span);
            svc_out.push(svc);
        }
    }

    let mut seen_routes: Vec<(RouteConfig, Range<usize>)> = Vec::new();
    for raw in routes.into_iter().flatten() {
        let span = raw.path_prefix.span();
        let service_name = raw.service.get_ref().clone();
        let service_span = raw.service.span();
        let Some(route) = check_route(raw, &mut errs) else {
            continue;
        };
        // An unknown service is only reported when every service parsed;
        // otherwise the name may belong to the entry that failed.
        if !names.contains_key(&service_name) && services_parsed {
            errs.at(
                service_span,
                format!(
                    "route {} names service `{service_name}`, which is not declared in [[services]]",
                    route.path_prefix
                ),
            );
        }
        for (other, _) in &seen_routes {
            if other.host == route.host
                && other.path_prefix == route.path_prefix
                && methods_overlap(&other.methods, &route.methods)
            {
                errs.at(
                    span.clone(),
                    format!(
                        "route {}{} duplicates an earlier route with the same host, prefix and methods",
                        route.host.as_deref().unwrap_or(""),
                        route.path_prefix
                    ),
                );
                break;
            }
        }
        seen_routes.push((route, span));
    }

    if !errs.list.is_empty() {
        return Err(errs.finish());
    }
    Ok(Config {
        gateway: gateway.expect("no errors"),
        registry: registry.expect("no errors"),
        telemetry,
        services: svc_out,
        routes: seen_routes.into_iter().map(|(r, _)| r).collect(),
        hash: content_hash(text.as_bytes()),
        path: None,
        loaded_at: SystemTime::now(),
    })
}

/// Two routes at the same host and prefix clash when their method sets are
/// equal or overlap (a route without `methods` is more general, not a clash:
/// a route with methods is tried first).
fn methods_overlap(a: &Option<Vec<http::Method>>, b: &Option<Vec<http::Method>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => false,
    }
}

fn take_table<T: DeserializeOwned + Default>(doc: &mut DeTable<'_>, key: &str, errs: &mut Errors) -> Option<T> {
    let v = doc.remove(key)?;
    if !v.get_ref().is_table() {
        errs.at(v.span(), format!("`{key}` must be a table ([{key}])"));
        return None;
    }
    de(v, errs)
}

fn take_array<T: DeserializeOwned>(doc: &mut DeTable<'_>, key: &str, errs: &mut Errors) -> Vec<Option<T>> {
    let Some(v) = doc.remove(key) else {
        return Vec::new();
    };
    let span = v.span();
    match v.into_inner() {
        DeValue::Array(items) => {
            let items: Vec<Spanned<DeValue<'_>>> = items.iter().cloned().collect();
            items.into_iter().map(|item| de(item, errs)).collect()
        }
        _ => {
            errs.at(span, format!("`{key}` must be an array of tables ([[{key}]])"));
            vec![None]
        }
    }
}

fn addr(s: &Spanned<String>, what: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match s.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.at(s.span(), format!("{what} \"{}\" is not an IP:port address (e.g. \"0.0.0.0:8080\")", s.get_ref()));
            None
        }
    }
}

fn positive(v: &Spanned<u32>, what: &str, errs: &mut Errors) -> u32 {
    if *v.get_ref() == 0 {
        errs.at(v.span(), format!("{what} must be greater than 0"));
    }
    *v.get_ref()
}

fn nonzero_duration(v: &Spanned<DurationValue>, what: &str, errs: &mut Errors) -> Duration {
    let d = v.get_ref().0;
    if d.is_zero() {
        errs.at(v.span(), format!("{what} must be longer than 0"));
    }
    d
}

fn dur_or(v: &Option<Spanned<DurationValue>>, what: &str, default: Duration, errs: &mut Errors) -> Duration {
    v.as_ref().map(|v| nonzero_duration(v, what, errs)).unwrap_or(default)
}

fn pos_or(v: &Option<Spanned<u32>>, what: &str, default: u32, errs: &mut Errors) -> u32 {
    v.as_ref().map(|v| positive(v, what, errs)).unwrap_or(default)
}

fn check_gateway(g: RawGateway, errs: &mut Errors) -> Option<GatewayConfig> {
    let listen = match &g.listen {
        Some(s) => addr(s, "listen", errs),
        None => DEFAULT_LISTEN.parse().ok(),
    };
    let admin_listen = match &g.admin_listen {
        Some(s) => addr(s, "admin_listen", errs),
        None => DEFAULT_ADMIN_LISTEN.parse().ok(),
    };
    if let (Some(l), Some(a)) = (listen, admin_listen) {
        if l == a && l.port() != 0 {
            let span = g.admin_listen.as_ref().or(g.listen.as_ref()).map(|s| s.span()).unwrap_or(0..0);
            errs.at(span, "admin_listen must differ from listen: admin paths are never served on the proxy listener");
        }
    }
    let drain_timeout = g.drain_timeout.as_ref().map(|d| d.get_ref().0).unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    let header_read_timeout = dur_or(&g.header_read_timeout, "header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT, errs);
    let max_header_bytes = match &g.max_header_bytes {
        Some(v) if *v.get_ref() < 8192 => {
            errs.at(v.span(), "max_header_bytes must be at least 8192");
            0
        }
        Some(v) => *v.get_ref() as usize,
        None => DEFAULT_MAX_HEADER_BYTES,
    };
    let tls = g.tls.map(|t| {
        for (p, what) in [(&t.cert, "cert"), (&t.key, "key")] {
            if p.get_ref().is_empty() {
                errs.at(p.span(), format!("tls.{what} must name a PEM file"));
            }
        }
        TlsConfig { cert: PathBuf::from(t.cert.into_inner()), key: PathBuf::from(t.key.into_inner()) }
    });
    Some(GatewayConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        drain_timeout,
        worker_threads: g.worker_threads.map(|w| *w.get_ref() as usize).unwrap_or(DEFAULT_WORKER_THREADS),
        header_read_timeout,
        max_header_bytes,
        tls,
    })
}

fn check_registry(r: RawRegistry, errs: &mut Errors) -> Option<RegistryConfig> {
    let heartbeat_ttl = dur_or(&r.heartbeat_ttl, "heartbeat_ttl", DEFAULT_HEARTBEAT_TTL, errs);
    let mut token = None;
    if let Some(t) = &r.token {
        if t.get_ref().is_empty() {
            errs.at(t.span(), "token must not be empty (leave it out to disable registry auth)");
        }
        token = Some(t.get_ref().clone());
    }
    if let Some(env) = &r.token_env {
        if r.token.is_some() {
            errs.at(env.span(), "set either token or token_env, not both");
        } else {
            match std::env::var(env.get_ref()) {
                Ok(v) if !v.is_empty() => token = Some(v),
                _ => errs.at(env.span(), format!("token_env names ${}, which is not set or empty", env.get_ref())),
            }
        }
    }
    Some(RegistryConfig { heartbeat_ttl, token, snapshot: r.snapshot.map(|s| PathBuf::from(s.into_inner())) })
}

fn check_telemetry(t: RawTelemetry, errs: &mut Errors) -> TelemetryConfig {
    if let Some(e) = &t.otlp_endpoint {
        // The exporter speaks plain HTTP (no TLS client is linked for it).
        if !e.get_ref().starts_with("http://") || e.get_ref().parse::<http::Uri>().is_err() {
            errs.at(
                e.span(),
                format!(
                    "otlp_endpoint \"{}\" must be an http:// URL (https collectors are not supported)",
                    e.get_ref()
                ),
            );
        }
    }
    TelemetryConfig { otlp_endpoint: t.otlp_endpoint.map(Spanned::into_inner) }
}

/// `[A-Za-z0-9._-]{1,128}`: service names and instance ids (SPEC §4).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `host:port` with a non-empty host (name, IPv4 or `[IPv6]`) and a port 1-65535.
pub fn valid_host_port(s: &str) -> bool {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.port() != 0;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = matches!(port.parse::<u16>(), Ok(p) if p > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with('-')
        && !host.starts_with('.');
    port_ok && host_ok
}

fn check_service(s: RawService, errs: &mut Errors) -> Option<ServiceConfig> {
    let name = s.name.get_ref().clone();
    if !valid_name(&name) {
        errs.at(s.name.span(), format!("service name \"{name}\" must be 1-128 characters of [A-Za-z0-9._-]"));
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for ep in &s.endpoints {
        let (address, weight) = match ep.get_ref() {
            RawEndpoint::Address(a) => (a.clone(), DEFAULT_WEIGHT),
            RawEndpoint::Table(t) => (t.address.clone(), t.weight.unwrap_or(DEFAULT_WEIGHT)),
        };
        if !valid_host_port(&address) {
            errs.at(ep.span(), format!("endpoint \"{address}\" is not host:port"));
            continue;
        }
        if weight == 0 {
            errs.at(ep.span(), "endpoint weight must be greater than 0");
        }
        if !seen.insert(address.clone()) {
            errs.at(ep.span(), format!("endpoint \"{address}\" is listed twice"));
            continue;
        }
        endpoints.push(StaticEndpoint { address, weight });
    }
    let balancer = s.balancer.as_ref().map(|b| *b.get_ref()).unwrap_or(DEFAULT_BALANCER);
    let hash_key = match &s.hash_key {
        Some(k) => match parse_hash_key(k.get_ref()) {
            Ok(k) => Some(k),
            Err(m) => {
                errs.at(k.span(), m);
                None
            }
        },
        None => None,
    };
    if balancer == BalancerKind::ConsistentHash && s.hash_key.is_none() {
        let span = s.balancer.as_ref().map(|b| b.span()).unwrap_or(s.name.span());
        errs.at(span, "balancer \"consistent_hash\" needs hash_key (header:NAME, cookie:NAME, client_ip or path)");
    }
    let health_check = s.health_check.as_ref().map(|h| {
        let h = h.get_ref();
        let path = h.path.as_ref().map(|p| p.get_ref().clone()).unwrap_or_else(|| DEFAULT_HC_PATH.to_string());
        if let Some(p) = &h.path {
            if !p.get_ref().starts_with('/') || p.get_ref().parse::<http::uri::PathAndQuery>().is_err() {
                errs.at(
                    p.span(),
                    format!("health_check.path \"{}\" must be an absolute path like \"/health\"", p.get_ref()),
                );
            }
        }
        let expected_status = match &h.expected_status {
            Some(e) => parse_status_range(e.get_ref()).unwrap_or_else(|m| {
                errs.at(e.span(), m);
                DEFAULT_HC_EXPECTED_STATUS
            }),
            None => DEFAULT_HC_EXPECTED_STATUS,
        };
        HealthCheckConfig {
            path,
            interval: dur_or(&h.interval, "health_check.interval", DEFAULT_HC_INTERVAL, errs),
            timeout: dur_or(&h.timeout, "health_check.timeout", DEFAULT_HC_TIMEOUT, errs),
            healthy_threshold: pos_or(&h.healthy_threshold, "healthy_threshold", DEFAULT_HC_HEALTHY_THRESHOLD, errs),
            unhealthy_threshold: pos_or(
                &h.unhealthy_threshold,
                "unhealthy_threshold",
                DEFAULT_HC_UNHEALTHY_THRESHOLD,
                errs,
            ),
            expected_status,
        }
    });
    let outlier_detection = s.outlier_detection.as_ref().map(|o| {
        let o = o.get_ref();
        let pct = o.max_ejection_percent.as_ref().map(|p| *p.get_ref()).unwrap_or(DEFAULT_OD_MAX_EJECTION_PERCENT);
        if let Some(p) = &o.max_ejection_percent {
            if *p.get_ref() > 100 {
                errs.at(p.span(), "max_ejection_percent must be between 0 and 100");
            }
        }
        let base = dur_or(&o.base_ejection_time, "base_ejection_time", DEFAULT_OD_BASE_EJECTION_TIME, errs);
        let max = dur_or(&o.max_ejection_time, "max_ejection_time", DEFAULT_OD_MAX_EJECTION_TIME.max(base), errs);
        if max < base {
            if let Some(m) = &o.max_ejection_time {
                errs.at(m.span(), "max_ejection_time must not be shorter than base_ejection_time");
            }
        }
        OutlierConfig {
            consecutive_failures: pos_or(
                &o.consecutive_failures,
                "consecutive_failures",
                DEFAULT_OD_CONSECUTIVE_FAILURES,
                errs,
            ),
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: pct,
        }
    });
    let circuit_breaker = s.circuit_breaker.as_ref().map(|c| {
        let c = c.get_ref();
        BreakerConfig {
            failure_threshold: pos_or(&c.failure_threshold, "failure_threshold", DEFAULT_CB_FAILURE_THRESHOLD, errs),
            open_duration: dur_or(&c.open_duration, "open_duration", DEFAULT_CB_OPEN_DURATION, errs),
            half_open_max_requests: pos_or(
                &c.half_open_max_requests,
                "half_open_max_requests",
                DEFAULT_CB_HALF_OPEN_MAX_REQUESTS,
                errs,
            ),
        }
    });
    let retry = s.retry.as_ref().map(|r| {
        let r = r.get_ref();
        let (mut on_connect_failure, mut on_timeout, mut on_status) = (false, false, Vec::new());
        match &r.on {
            None => {
                on_connect_failure = true;
                on_timeout = true;
                on_status.push(503);
            }
            Some(list) => {
                for item in list {
                    match item.get_ref().as_str() {
                        "connect_failure" => on_connect_failure = true,
                        "timeout" => on_timeout = true,
                        other => match other.parse::<u16>() {
                            Ok(code) if (100..=599).contains(&code) => on_status.push(code),
                            _ => errs.at(
                                item.span(),
                                format!("retry.on \"{other}\" is not connect_failure, timeout or an HTTP status code"),
                            ),
                        },
                    }
                }
            }
        }
        let budget_ratio = match &r.budget_ratio {
            Some(b) if !(0.0..=1.0).contains(b.get_ref()) => {
                errs.at(b.span(), "budget_ratio must be between 0.0 and 1.0");
                DEFAULT_RETRY_BUDGET_RATIO
            }
            Some(b) => *b.get_ref(),
            None => DEFAULT_RETRY_BUDGET_RATIO,
        };
        RetryConfig {
            attempts: r.attempts.as_ref().map(|a| *a.get_ref()).unwrap_or(DEFAULT_RETRY_ATTEMPTS),
            on_connect_failure,
            on_timeout,
            on_status,
            budget_ratio,
            budget_min_per_second: r
                .budget_min_per_second
                .as_ref()
                .map(|b| *b.get_ref())
                .unwrap_or(DEFAULT_RETRY_BUDGET_MIN_PER_SECOND),
            per_try_timeout: r.per_try_timeout.as_ref().map(|d| nonzero_duration(d, "per_try_timeout", errs)),
        }
    });
    Some(ServiceConfig {
        name,
        endpoints,
        balancer,
        hash_key,
        connect_timeout: dur_or(&s.connect_timeout, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, errs),
        request_timeout: dur_or(&s.request_timeout, "request_timeout", DEFAULT_REQUEST_TIMEOUT, errs),
        max_concurrent_requests: pos_or(
            &s.max_concurrent_requests,
            "max_concurrent_requests",
            DEFAULT_MAX_CONCURRENT_REQUESTS as u32,
            errs,
        ) as usize,
        health_check,
        outlier_detection,
        circuit_breaker,
        retry,
    })
}

pub(crate) fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    let bad = || format!("hash_key \"{s}\" must be header:NAME, cookie:NAME, client_ip or path");
    match s {
        "client_ip" => Ok(HashKey::ClientIp),
        "path" => Ok(HashKey::Path),
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                http::HeaderName::from_bytes(h.trim().as_bytes()).map(HashKey::Header).map_err(|_| bad())
            } else if let Some(c) = s.strip_prefix("cookie:") {
                let c = c.trim();
                if c.is_empty() || c.contains([';', '=', ' ']) {
                    Err(bad())
                } else {
                    Ok(HashKey::Cookie(c.to_string()))
                }
            } else {
                Err(bad())
            }
        }
    }
}

/// `"200"`, `"200-399"`.
fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected_status \"{s}\" must be a status or a range like \"200-399\"");
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn check_route(r: RawRoute, errs: &mut Errors) -> Option<RouteConfig> {
    let raw_prefix = r.path_prefix.get_ref();
    let mut ok = true;
    if !raw_prefix.starts_with('/') || raw_prefix.contains(['?', '#', ' ']) {
        errs.at(r.path_prefix.span(), format!("path_prefix \"{raw_prefix}\" must be a path starting with /"));
        ok = false;
    }
    let path_prefix = normalize_prefix(raw_prefix);
    let host = r.host.as_ref().map(|h| {
        let v = h.get_ref().trim().to_ascii_lowercase();
        if v.is_empty() || v.contains(['/', ' ']) || v.contains(':') {
            errs.at(h.span(), format!("host \"{}\" must be a host name without port or path", h.get_ref()));
            ok = false;
        }
        v
    });
    let methods = r.methods.as_ref().map(|ms| {
        let mut out = Vec::new();
        for m in ms {
            let upper = m.get_ref().to_ascii_uppercase();
            match http::Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => {
                    if !out.contains(&method) {
                        out.push(method)
                    }
                }
                _ => {
                    errs.at(m.span(), format!("\"{}\" is not an HTTP method", m.get_ref()));
                    ok = false;
                }
            }
        }
        if ms.is_empty() {
            errs.at(r.path_prefix.span(), "methods must not be empty (leave it out to allow every method)");
            ok = false;
        }
        out
    });
    let request_timeout = r.request_timeout.as_ref().map(|d| nonzero_duration(d, "request_timeout", errs));
    ok.then(|| RouteConfig {
        path_prefix,
        service: r.service.into_inner(),
        strip_prefix: r.strip_prefix.unwrap_or(false),
        host,
        methods,
        request_timeout,
    })
}

/// `/api/users/` → `/api/users`; `/` stays `/`.
pub(crate) fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[gateway]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"

[[services]]
name = "users"
endpoints = ["127.0.0.1:3001", { address = "127.0.0.1:3011", weight = 3 }]

[[routes]]
path_prefix = "/api/users/"
service = "users"
"#;

    fn errs(text: &str) -> Vec<ConfigError> {
        Config::parse(text, "t.toml").expect_err("should fail").0
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("needle") + 1
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(MIN, "t.toml").unwrap();
        assert_eq!(c.gateway.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.registry.heartbeat_ttl, DEFAULT_HEARTBEAT_TTL);
        let s = &c.services[0];
        assert_eq!(s.balancer, BalancerKind::RoundRobin);
        assert_eq!(s.endpoints[1], StaticEndpoint { address: "127.0.0.1:3011".into(), weight: 3 });
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(s.health_check.is_none() && s.retry.is_none());
        assert_eq!(c.routes[0].path_prefix, "/api/users");
    }

    #[test]
    fn partial_policy_table_takes_defaults() {
        let text = format!("{MIN}\n[services.health_check]\ninterval = \"2s\"\n");
        // the table belongs to the last [[services]] entry
        let text = text.replace("[[routes]]", "[services.retry]\nattempts = 1\n\n[[routes]]");
        let c = Config::parse(&text, "t.toml").unwrap();
        let s = &c.services[0];
        assert_eq!(s.retry.as_ref().unwrap().attempts, 1);
        assert!(s.retry.as_ref().unwrap().on_connect_failure);
        assert_eq!(s.retry.as_ref().unwrap().on_status, vec![503]);
    }

    #[test]
    fn unknown_key_points_at_its_line() {
        let text = MIN.replace("name = \"users\"", "name = \"users\"\nbogus = 1");
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, line_of(&text, "bogus"));
        assert!(e[0].message.contains("bogus"), "{}", e[0].message);
    }

    #[test]
    fn duration_without_unit_is_refused() {
        let text = MIN.replace("admin_listen", "drain_timeout = 30\nadmin_listen");
        let e = errs(&text);
        assert_eq!(e[0].line, line_of(&text, "drain_timeout"));
        assert!(e[0].message.contains("unit"), "{}", e[0].message);
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let text = format!(
            "{MIN}\n[[routes]]\npath_prefix = \"/a\"\nservice = \"ghost1\"\n\n[[routes]]\npath_prefix = \"/b\"\nservice = \"ghost2\"\n"
        );
        let e = errs(&text);
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert!(lines.contains(&line_of(&text, "ghost1")), "{e:?}");
        assert!(lines.contains(&line_of(&text, "ghost2")), "{e:?}");
    }

    #[test]
    fn errors_in_two_services_are_both_reported() {
        let text = format!(
            "{MIN}\n[[services]]\nname = \"a\"\nbalancer = \"fastest\"\n\n[[services]]\nname = \"b\"\nconnect_timeout = \"3 parsecs\"\n"
        );
        let e = errs(&text);
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert!(lines.contains(&line_of(&text, "fastest")), "{e:?}");
        assert!(lines.contains(&line_of(&text, "parsecs")), "{e:?}");
    }

    #[test]
    fn duplicate_routes_and_services_are_refused() {
        let text = format!("{MIN}\n[[routes]]\npath_prefix = \"/api/users\"\nservice = \"users\"\n");
        let e = errs(&text);
        assert!(e[0].message.contains("duplicates"), "{e:?}");
        let text = format!("{MIN}\n[[services]]\nname = \"users\"\n");
        assert!(errs(&text)[0].message.contains("twice"));
    }

    #[test]
    fn route_with_methods_does_not_clash_with_catch_all() {
        let text =
            format!("{MIN}\n[[routes]]\npath_prefix = \"/api/users\"\nservice = \"users\"\nmethods = [\"get\"]\n");
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.routes[1].methods.as_deref(), Some(&[http::Method::GET][..]));
    }

    #[test]
    fn bad_values_are_refused() {
        for (from, to, needle) in [
            ("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\"", "listen"),
            ("127.0.0.1:3001\"", "127.0.0.1\"", "127.0.0.1\""),
            ("path_prefix = \"/api/users/\"", "path_prefix = \"api\"", "path_prefix"),
        ] {
            let text = MIN.replace(from, to);
            let e = errs(&text);
            assert_eq!(e[0].line, line_of(&text, needle), "{e:?}");
        }
        let text = format!("{MIN}\n[bogus]\nx = 1\n");
        assert_eq!(errs(&text)[0].line, line_of(&text, "[bogus]"));
    }

    #[test]
    fn consistent_hash_needs_a_key() {
        let text = MIN.replace("endpoints", "balancer = \"consistent_hash\"\nendpoints");
        assert!(errs(&text)[0].message.contains("hash_key"));
        let text =
            MIN.replace("endpoints", "balancer = \"consistent_hash\"\nhash_key = \"header:x-user-id\"\nendpoints");
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.services[0].hash_key, Some(HashKey::Header(http::HeaderName::from_static("x-user-id"))));
    }

    #[test]
    fn host_port_validation() {
        for ok in ["127.0.0.1:80", "users:3001", "[::1]:8080", "a.b-c.example:65535"] {
            assert!(valid_host_port(ok), "{ok}");
        }
        for bad in ["127.0.0.1", ":80", "host:0", "127.0.0.1:0", "host:99999", "a b:80", "http://x:80", ""] {
            assert!(!valid_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}
