//! Instances by service: the static `endpoints` of the config and (later) the
//! instances that register themselves with heartbeats. Each service's current
//! set is an immutable [`EndpointSet`] snapshot; the request path only ever
//! loads a snapshot, never takes a lock shared with registration.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
}

impl Endpoint {
    /// `address` must be a valid `host:port` (config and registry validate it).
    pub fn new(
        id: &str,
        address: &str,
        weight: u32,
        source: Source,
    ) -> Result<Self, http::uri::InvalidUri> {
        Ok(Endpoint {
            id: id.into(),
            address: address.into(),
            authority: address.parse()?,
            weight,
            source,
            stats: Arc::new(EndpointStats::default()),
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
            transition: Mutex::new(Transition {
                state: EndpointState::Healthy,
                reason: "new endpoint".into(),
                at: SystemTime::now(),
            }),
        }
    }
}

impl EndpointStats {
    pub fn transition(&self) -> Transition {
        self.transition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
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
        EndpointSet {
            endpoints,
            available,
        }
    }
}
