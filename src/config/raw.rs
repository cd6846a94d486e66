//! The first stage: `gateway.toml` as written, in serde structs that reject
//! unknown keys. Nothing here is validated beyond its TOML type; values that a
//! later check has to point at keep their span (`Spanned`).

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<DurationValue>>,
    pub worker_threads: Option<Spanned<u32>>,
    pub header_read_timeout: Option<Spanned<DurationValue>>,
    pub max_header_bytes: Option<Spanned<u32>>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub heartbeat_ttl: Option<Spanned<DurationValue>>,
    pub token: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub snapshot: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    #[serde(default)]
    pub endpoints: Vec<Spanned<RawEndpoint>>,
    pub balancer: Option<Spanned<BalancerKind>>,
    pub hash_key: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub request_timeout: Option<Spanned<DurationValue>>,
    pub max_concurrent_requests: Option<Spanned<u32>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub outlier_detection: Option<Spanned<RawOutlier>>,
    pub circuit_breaker: Option<Spanned<RawBreaker>>,
    pub retry: Option<Spanned<RawRetry>>,
}

/// `"127.0.0.1:3001"` or `{ address = "127.0.0.1:3011", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "an endpoint: \"host:port\" or { address = \"host:port\", weight = N }")]
pub enum RawEndpoint {
    Address(String),
    Table(RawEndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub address: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    LeastConnections,
    P2cEwma,
    ConsistentHash,
}

impl BalancerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BalancerKind::RoundRobin => "round_robin",
            BalancerKind::WeightedRoundRobin => "weighted_round_robin",
            BalancerKind::Random => "random",
            BalancerKind::LeastConnections => "least_connections",
            BalancerKind::P2cEwma => "p2c_ewma",
            BalancerKind::ConsistentHash => "consistent_hash",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub expected_status: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<Spanned<u32>>,
    pub base_ejection_time: Option<Spanned<DurationValue>>,
    pub max_ejection_time: Option<Spanned<DurationValue>>,
    pub max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failure_threshold: Option<Spanned<u32>>,
    pub open_duration: Option<Spanned<DurationValue>>,
    pub half_open_max_requests: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<u32>>,
    pub on: Option<Vec<Spanned<String>>>,
    pub budget_ratio: Option<Spanned<f64>>,
    pub budget_min_per_second: Option<Spanned<u32>>,
    pub per_try_timeout: Option<Spanned<DurationValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: Spanned<String>,
    pub service: Spanned<String>,
    pub strip_prefix: Option<bool>,
    pub host: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub request_timeout: Option<Spanned<DurationValue>>,
}

/// A duration written as a string with a unit (`"250ms"`, `"5s"`, `"1m"`).
/// A bare number is refused: `30` could mean seconds or milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration string with a unit, like \"250ms\", \"5s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationValue, E> {
                parse_duration(s).map(DurationValue).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DurationValue, E> {
                Err(E::custom(format!("duration {n} has no unit: write it as a string such as \"{n}s\" or \"{n}ms\"")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DurationValue, E> {
                self.visit_i64(n as i64)
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<DurationValue, E> {
                Err(E::custom(format!("duration {n} has no unit: write it as a string such as \"{n}s\"")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"250ms"`, `"5s"`, `"1m30s"` (humantime syntax); a unit is required.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("duration \"{s}\" has no unit: write \"{t}s\" or \"{t}ms\""));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration \"{s}\" ({e}); use a unit like \"250ms\", \"5s\", \"1m\""))
}
