//! Load balancing: one small trait, one file per strategy, chosen by the
//! service's `balancer =` (a [`BalancerKind`]).
//!
//! A balancer sees the service's current [`EndpointSet`] snapshot and returns
//! the index of the endpoint to use. Picking must take no lock and allocate
//! nothing: strategies keep their state in atomics (counters) or in snapshots
//! they rebuild in [`Balancer::update`] when the endpoint set changes.

mod round_robin;

use std::sync::Arc;

pub use round_robin::RoundRobin;

use crate::config::{BalancerKind, ServiceConfig};
use crate::registry::{Endpoint, EndpointSet};

/// What a pick may depend on besides the endpoint set.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    /// Hash of the request's `hash_key` value (for `consistent_hash`); `None`
    /// when the service hashes nothing or the request lacks the key.
    pub hash: Option<u64>,
    /// Endpoints this request already tried (retries): a balancer picks one of
    /// these only when no other endpoint is available.
    pub avoid: &'a [Arc<Endpoint>],
}

impl PickContext<'_> {
    pub fn avoids(&self, ep: &Arc<Endpoint>) -> bool {
        self.avoid.iter().any(|a| Arc::ptr_eq(a, ep))
    }
}

/// A load-balancing strategy.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Index into `set.endpoints` of the endpoint to use, chosen among
    /// `set.available`; `None` when nothing is available.
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize>;

    /// The endpoint set changed: rebuild derived state (rings, weight tables),
    /// keeping what still applies. Called off the request path.
    fn update(&self, _set: &EndpointSet) {}

    fn kind(&self) -> BalancerKind;
}

/// Builds the strategy a service asks for.
///
/// Until the other strategies land (see the README), every kind is served by
/// round robin and [`implemented`] says which kinds are real.
pub fn build(svc: &ServiceConfig) -> Box<dyn Balancer> {
    match svc.balancer {
        BalancerKind::RoundRobin => Box::new(RoundRobin::new()),
        other => Box::new(RoundRobin::standing_in_for(other)),
    }
}

/// Whether `kind` has its own implementation yet.
pub fn implemented(kind: BalancerKind) -> bool {
    matches!(kind, BalancerKind::RoundRobin)
}

/// A stable 64-bit hash (FNV-1a with a splitmix64 finaliser) of a request's
/// `hash_key` value: the same key maps to the same point in every process.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
