//! Configuration: `gateway.toml` → raw serde structs ([`raw`]) → validated
//! runtime types ([`Config`]).
//!
//! Loading never stops at the first problem it can get past: every section and
//! every `[[services]]` / `[[routes]]` entry is deserialized on its own, and the
//! cross-checks (routes name declared services, no duplicate routes, ...) run
//! over everything that parsed, so `waygate check` reports every error at once,
//! each as `PATH:LINE:COL: message`. Every default is a named constant below.

pub mod raw;
mod validate;

pub use validate::{valid_host_port, valid_name};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use raw::BalancerKind;

// ---- defaults (SPEC §2) ---------------------------------------------------
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WORKER_THREADS: usize = 0;
/// A client must deliver its whole request head within this time.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line + headers) accepted; larger gets 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_BALANCER: BalancerKind = BalancerKind::RoundRobin;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
pub const DEFAULT_WEIGHT: u32 = 1;
pub const DEFAULT_HC_PATH: &str = "/health";
pub const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HC_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_HC_UNHEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_HC_EXPECTED_STATUS: (u16, u16) = (200, 399);
pub const DEFAULT_OD_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_OD_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_OD_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
pub const DEFAULT_OD_MAX_EJECTION_PERCENT: u32 = 50;
pub const DEFAULT_CB_FAILURE_THRESHOLD: u32 = 5;
pub const DEFAULT_CB_OPEN_DURATION: Duration = Duration::from_secs(30);
pub const DEFAULT_CB_HALF_OPEN_MAX_REQUESTS: u32 = 1;
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BUDGET_RATIO: f64 = 0.2;
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 3;

/// The validated, immutable configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub registry: RegistryConfig,
    pub telemetry: TelemetryConfig,
    pub services: Vec<ServiceConfig>,
    pub routes: Vec<RouteConfig>,
    /// Hex digest of the file's bytes: identifies the active config.
    pub hash: String,
    /// Where it was read from (None when built in code, e.g. the demo).
    pub path: Option<PathBuf>,
    pub loaded_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub drain_timeout: Duration,
    /// 0 = one per core.
    pub worker_threads: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    pub heartbeat_ttl: Duration,
    /// The bearer token (from `token`, or read from `token_env` at load).
    pub token: Option<String>,
    pub snapshot: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryConfig {
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub endpoints: Vec<StaticEndpoint>,
    pub balancer: BalancerKind,
    pub hash_key: Option<HashKey>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier_detection: Option<OutlierConfig>,
    pub circuit_breaker: Option<BreakerConfig>,
    pub retry: Option<RetryConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaticEndpoint {
    /// `host:port` as written (a host name is resolved when connecting).
    pub address: String,
    pub weight: u32,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
    Path,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive status range counted as a pass.
    pub expected_status: (u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_duration: Duration,
    pub half_open_max_requests: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_timeout: bool,
    /// Upstream statuses that are retried.
    pub on_status: Vec<u16>,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    /// Bound of one attempt (extension); unset = the request's remaining
    /// `request_timeout`, so a `timeout` can only be retried when this is set.
    pub per_try_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Normalised: starts with `/`, no trailing `/` (except the root itself).
    pub path_prefix: String,
    pub service: String,
    pub strip_prefix: bool,
    /// Lower-case, without a port.
    pub host: Option<String>,
    pub methods: Option<Vec<http::Method>>,
    /// Overrides the service's `request_timeout` for this route.
    pub request_timeout: Option<Duration>,
}

/// One problem found in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.path, self.line, self.col, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: shown.clone(),
                line: 1,
                col: 1,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        let mut cfg = Config::parse(&text, &shown)?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Validates config text; `name` is used as the PATH in error messages.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigErrors> {
        validate::parse(text, name)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A short human summary (for `waygate check`).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let g = &self.gateway;
        let _ = writeln!(
            s,
            "listen {} ({}), admin {}, drain {:?}, workers {}",
            g.listen,
            if g.tls.is_some() { "TLS" } else { "plain" },
            g.admin_listen,
            g.drain_timeout,
            if g.worker_threads == 0 { "auto".to_string() } else { g.worker_threads.to_string() }
        );
        let _ = writeln!(
            s,
            "registry: heartbeat_ttl {:?}, token {}, snapshot {}",
            self.registry.heartbeat_ttl,
            if self.registry.token.is_some() { "set" } else { "none" },
            self.registry.snapshot.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "off".into())
        );
        let _ = writeln!(s, "{} service(s):", self.services.len());
        for svc in self.services.iter().take(20) {
            let mut policies = Vec::new();
            if svc.health_check.is_some() {
                policies.push("health_check");
            }
            if svc.outlier_detection.is_some() {
                policies.push("outlier_detection");
            }
            if svc.circuit_breaker.is_some() {
                policies.push("circuit_breaker");
            }
            if svc.retry.is_some() {
                policies.push("retry");
            }
            let _ = writeln!(
                s,
                "  {:<20} {} endpoint(s), {}{}",
                svc.name,
                svc.endpoints.len(),
                svc.balancer.as_str(),
                if policies.is_empty() { String::new() } else { format!(", {}", policies.join(" ")) }
            );
        }
        if self.services.len() > 20 {
            let _ = writeln!(s, "  ... and {} more", self.services.len() - 20);
        }
        let _ = writeln!(s, "{} route(s):", self.routes.len());
        for r in self.routes.iter().take(20) {
            let _ = writeln!(
                s,
                "  {}{} -> {}{}{}",
                r.host.as_deref().unwrap_or(""),
                r.path_prefix,
                r.service,
                if r.strip_prefix { " (strip_prefix)" } else { "" },
                r.methods
                    .as_ref()
                    .map(|m| format!(" [{}]", m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")))
                    .unwrap_or_default()
            );
        }
        if self.routes.len() > 20 {
            let _ = writeln!(s, "  ... and {} more", self.routes.len() - 20);
        }
        s
    }
}

/// A stable 64-bit digest as hex, enough to tell two config files apart
/// (not a security boundary).
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:016x}", crate::balancer::hash_bytes(bytes))
}
