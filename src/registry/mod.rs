//! Instances by service: the static `endpoints` of the config and (later) the
//! instances that register themselves with heartbeats. Each service's current
//! set is an immutable [`EndpointSet`] snapshot; the request path only ever
//! loads a snapshot, never takes a lock shared with registration.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::uri::Authority;

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Static,
    Registry,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Registry => "registry",
        }
    }
}

/// One upstream instance. Immutable: a change of address or weight makes a
/// new `Endpoint` that shares the old one's [`EndpointStats`], so counters,
/// latency estimates and health survive the update.
#[derive(Debug)]
pub struct Endpoint {
    /// Instance id: the registered id, or the address for static endpoints.
    pub id: Box<str>,
    /// `host:port` as configured or registered.
    pub address: Box<str>,
    /// The same, pre-parsed for building upstream URIs without re-parsing.
    pub authority: Authority,
    pub weight: u32,
    pub source: Source,
    pub stats: Arc<EndpointStats>,
    /// `waygate_upstream_requests_total` handles, (re)made each time the
    /// endpoint joins a service (its series may have been removed meanwhile).
    pub metrics: arc_swap::ArcSwapOption<crate::metrics::EndpointMetrics>,
}

impl Endpoint {
    /// `address` must be a valid `host:port` (config and registry validate it).
    pub fn new(id: &str, address: &str, weight: u32, source: Source) -> Result<Self, http::uri::InvalidUri> {
        Ok(Endpoint {
            id: id.into(),
            address: address.into(),
            authority: address.parse()?,
            weight,
            source,
            stats: Arc::new(EndpointStats::default()),
            metrics: Default::default(),
        })
    }

    /// A copy with a new address/weight that keeps this endpoint's stats.
    pub fn updated(&self, address: &str, weight: u32) -> Result<Self, http::uri::InvalidUri> {
        Ok(Endpoint {
            id: self.id.clone(),
            address: address.into(),
            authority: address.parse()?,
            weight,
            source: self.source,
            stats: self.stats.clone(),
            metrics: Default::default(),
        })
    }
}

/// The one state of an endpoint shown by `GET /admin/upstreams` (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    Healthy,
    Unhealthy,
    Ejected,
    Expired,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::Ejected => "ejected",
            EndpointState::Expired => "expired",
        }
    }
}

/// The last transition of an endpoint: its state, why, and when.
#[derive(Debug, Clone)]
pub struct Transition {
    pub state: EndpointState,
    pub reason: String,
    pub at: SystemTime,
}

/// Live counters of one endpoint, shared by every snapshot that holds it.
#[derive(Debug)]
pub struct EndpointStats {
    /// Requests in flight through this gateway (response body not yet done).
    pub active: AtomicUsize,
    /// Peak-EWMA latency estimate in nanoseconds, as `f64` bits (p2c_ewma).
    pub ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds since the process clock's start.
    pub ewma_stamp_ns: AtomicU64,
    /// Verdict of the active health check (true until a check says otherwise).
    pub checked_healthy: AtomicBool,
    /// Ejected by outlier detection.
    pub ejected: AtomicBool,
    /// Failed live-traffic attempts in a row (outlier detection).
    pub consecutive_failures: AtomicU32,
    /// An active check of this endpoint is in flight.
    pub probing: AtomicBool,
    /// The service runtime that holds this endpoint now (timers that outlive
    /// a reload find the current one through it).
    pub owner: Mutex<std::sync::Weak<crate::service::Service>>,
    /// Slow-path health bookkeeping (check counter, ejection history); only
    /// health checks and ejections take it, never a successful request.
    pub book: Mutex<crate::health::HealthBook>,
    /// Last state transition; written on transitions and read by the admin
    /// API only, never on the request path.
    pub transition: Mutex<Transition>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            active: AtomicUsize::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_stamp_ns: AtomicU64::new(0),
            checked_healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            owner: Mutex::new(std::sync::Weak::new()),
            book: Mutex::new(Default::default()),
            transition: Mutex::new(Transition {
                state: EndpointState::Healthy,
                reason: "new endpoint".into(),
                at: SystemTime::now(),
            }),
        }
    }
}

impl EndpointStats {
    /// Records a transition (off the request path).
    pub fn set_transition(&self, state: EndpointState, reason: String) {
        *self.transition.lock().unwrap_or_else(|e| e.into_inner()) =
            Transition { state, reason, at: SystemTime::now() };
    }

    pub fn transition(&self) -> Transition {
        self.transition.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Healthy and not ejected: may take new requests.
    pub fn is_available(&self) -> bool {
        self.checked_healthy.load(Ordering::Acquire) && !self.ejected.load(Ordering::Acquire)
    }

    /// The one state that active health and ejection combine into (an
    /// expired lease is recorded by the registry when it evicts).
    pub fn combined_state(&self) -> EndpointState {
        if !self.checked_healthy.load(Ordering::Acquire) {
            EndpointState::Unhealthy
        } else if self.ejected.load(Ordering::Acquire) {
            EndpointState::Ejected
        } else {
            EndpointState::Healthy
        }
    }

    pub fn owner(&self) -> Option<Arc<crate::service::Service>> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner()).upgrade()
    }

    pub fn set_owner(&self, service: &Arc<crate::service::Service>) {
        *self.owner.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(service);
    }

    pub fn book(&self) -> std::sync::MutexGuard<'_, crate::health::HealthBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every endpoint of a service at one moment, and which of them may take
/// traffic. Built whole and swapped in whole.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Every endpoint: static ones in config order, then registered ones by id.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Indices into `endpoints` of those that are available (healthy, not
    /// ejected, lease fresh), ascending.
    pub available: Vec<usize>,
}

impl EndpointSet {
    /// A set in which every endpoint is available.
    pub fn all_available(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let available = (0..endpoints.len()).collect();
        EndpointSet { endpoints, available }
    }

    /// A set whose availability is read from each endpoint's health flags.
    pub fn from_health(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let available = endpoints.iter().enumerate().filter(|(_, e)| e.stats.is_available()).map(|(i, _)| i).collect();
        EndpointSet { endpoints, available }
    }
}

pub mod lease;
pub mod persist;

use std::time::Duration;

use lease::{LeaseTable, Registration, Upsert};
use tokio::sync::Notify;

/// Called with a service's registered endpoints whenever they change, while
/// the registry lock is held, so publications are never reordered.
pub type Publisher = Box<dyn Fn(&str, Vec<Arc<Endpoint>>) + Send + Sync>;

/// The heartbeat registry: the lease table behind a mutex that only
/// registration, the TTL sweep, the admin API and config reloads take. The
/// request path never touches it: it reads the per-service endpoint snapshots
/// this publishes.
pub struct Registry {
    table: Mutex<LeaseTable>,
    metrics: Arc<crate::metrics::Metrics>,
    publisher: std::sync::OnceLock<Publisher>,
    /// Woken on every change (for the snapshot writer).
    pub changed: Notify,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(ttl: Duration, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Registry {
            table: Mutex::new(LeaseTable::new(ttl)),
            metrics,
            publisher: Default::default(),
            changed: Notify::new(),
        }
    }

    /// Installs the publisher (once, at start-up).
    pub fn set_publisher(&self, p: Publisher) {
        let _ = self.publisher.set(p);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the table locked: readers (admin API) and config reloads,
    /// which must build new services from a registry that cannot change under them.
    pub fn with_table<R>(&self, f: impl FnOnce(&LeaseTable) -> R) -> R {
        f(&self.lock())
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.lock().set_ttl(ttl);
    }

    fn publish(&self, table: &LeaseTable, service: &str) {
        if let Some(p) = self.publisher.get() {
            p(service, table.endpoints_of(service));
        }
    }

    /// A registration or heartbeat.
    pub fn heartbeat(&self, reg: Registration) -> Result<Upsert, http::uri::InvalidUri> {
        let mut t = self.lock();
        let service = reg.service.clone();
        let id = reg.id.clone();
        let address = reg.address.clone();
        let outcome = t.upsert(reg, tokio::time::Instant::now(), SystemTime::now())?;
        match outcome {
            Upsert::Registered => {
                tracing::info!(target: "waygate::registry", service, id, address, "instance registered");
                self.publish(&t, &service);
            }
            Upsert::Updated => {
                tracing::info!(target: "waygate::registry", service, id, address, "instance updated");
                self.publish(&t, &service);
            }
            Upsert::Renewed => {}
        }
        drop(t);
        self.changed.notify_one();
        Ok(outcome)
    }

    /// A graceful deregistration; `false` if unknown.
    pub fn deregister(&self, service: &str, id: &str) -> bool {
        let mut t = self.lock();
        let removed = t.remove(service, id);
        if removed {
            tracing::info!(target: "waygate::registry", service, id, "instance deregistered");
            self.publish(&t, service);
        }
        drop(t);
        if removed {
            self.changed.notify_one();
        }
        removed
    }

    /// Evicts lapsed leases; returns how many were evicted per service.
    pub fn sweep(&self) -> Vec<(String, String)> {
        let mut t = self.lock();
        let evicted = t.expire(tokio::time::Instant::now());
        let ttl = t.ttl();
        let mut services: Vec<&str> = evicted.iter().map(|(s, _)| s.as_str()).collect();
        services.dedup();
        for (service, id) in &evicted {
            tracing::info!(
                target: "waygate::registry",
                service, id, ttl = %humantime::format_duration(ttl),
                "instance evicted: lease expired"
            );
            self.metrics.eviction(service).inc();
        }
        for s in services {
            self.publish(&t, s);
        }
        drop(t);
        if !evicted.is_empty() {
            self.changed.notify_one();
        }
        evicted
    }

    /// Restores leases from a snapshot (at start-up, before publishing).
    pub fn restore(&self, entries: Vec<(Registration, Duration)>) -> usize {
        let mut t = self.lock();
        let now = tokio::time::Instant::now();
        let wall = SystemTime::now();
        let mut n = 0;
        let mut services = Vec::new();
        for (reg, age) in entries {
            let s = reg.service.clone();
            if t.restore(reg, age, now, wall) {
                n += 1;
                services.push(s);
            }
        }
        services.sort();
        services.dedup();
        for s in &services {
            self.publish(&t, s);
        }
        n
    }

    /// Runs the TTL sweep until the task is aborted.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let reg = self.clone();
        tokio::spawn(async move {
            loop {
                let period = lease::sweep_interval(reg.lock().ttl());
                tokio::time::sleep(period).await;
                reg.sweep();
            }
        })
    }
}
