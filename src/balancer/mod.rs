//! Load balancing: one small trait, one file per strategy, chosen by the
//! service's `balancer =` (a [`BalancerKind`]).
//!
//! A balancer sees the service's current [`EndpointSet`] snapshot and returns
//! the index of the endpoint to use. Picking must take no lock and allocate
//! nothing: strategies keep their state in atomics (counters) or in snapshots
//! they rebuild in [`Balancer::update`] when the endpoint set changes.

mod consistent_hash;
mod least_connections;
pub mod p2c_ewma;
mod random;
mod rng;
mod round_robin;
mod weighted_round_robin;

use std::sync::Arc;

pub use consistent_hash::{hash_bytes, ConsistentHash};
pub use least_connections::LeastConnections;
pub use p2c_ewma::P2cEwma;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

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

/// Builds the strategy a service asks for. None needs more than the kind:
/// weights come from the endpoints and `consistent_hash` gets the request's
/// hash in [`PickContext::hash`].
pub fn build(svc: &ServiceConfig) -> Box<dyn Balancer> {
    match svc.balancer {
        BalancerKind::RoundRobin => Box::new(RoundRobin::new()),
        BalancerKind::WeightedRoundRobin => Box::new(WeightedRoundRobin::new()),
        BalancerKind::Random => Box::new(Random::new()),
        BalancerKind::LeastConnections => Box::new(LeastConnections::new()),
        BalancerKind::P2cEwma => Box::new(P2cEwma::new()),
        BalancerKind::ConsistentHash => Box::new(ConsistentHash::new()),
    }
}

/// Whether `idx` is one of `set.available` (which is ascending).
fn is_available(set: &EndpointSet, idx: usize) -> bool {
    set.available.binary_search(&idx).is_ok()
}

/// How many available endpoints the request has not tried yet.
fn eligible_count(set: &EndpointSet, ctx: &PickContext<'_>) -> usize {
    set.available.iter().filter(|&&i| !ctx.avoids(&set.endpoints[i])).count()
}

/// The `n`-th (from 0) available endpoint the request has not tried yet.
fn nth_eligible(set: &EndpointSet, ctx: &PickContext<'_>, n: usize) -> Option<usize> {
    set.available.iter().copied().filter(|&i| !ctx.avoids(&set.endpoints[i])).nth(n)
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Endpoint sets for the strategies' tests.

    use std::sync::Arc;

    use crate::registry::{Endpoint, EndpointSet, Source};

    pub(crate) fn endpoint(id: &str, weight: u32) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(id, "127.0.0.1:80", weight, Source::Static).unwrap())
    }

    /// `n` endpoints `e0`, `e1`, ... of weight 1, all available.
    pub(crate) fn set(n: usize) -> EndpointSet {
        EndpointSet::all_available((0..n).map(|i| endpoint(&format!("e{i}"), 1)).collect())
    }

    /// One endpoint per weight, all available.
    pub(crate) fn weighted(weights: &[u32]) -> EndpointSet {
        EndpointSet::all_available(weights.iter().enumerate().map(|(i, &w)| endpoint(&format!("e{i}"), w)).collect())
    }

    /// How often each index was picked in `picks` picks.
    pub(crate) fn counts(n: usize, picks: usize, mut pick: impl FnMut() -> Option<usize>) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[pick().expect("something available")] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;

    fn service(kind: BalancerKind) -> ServiceConfig {
        ServiceConfig {
            name: "s".into(),
            endpoints: vec![],
            balancer: kind,
            hash_key: None,
            connect_timeout: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(1),
            max_concurrent_requests: 1,
            health_check: None,
            outlier_detection: None,
            circuit_breaker: None,
            retry: None,
        }
    }

    const ALL: [BalancerKind; 6] = [
        BalancerKind::RoundRobin,
        BalancerKind::WeightedRoundRobin,
        BalancerKind::Random,
        BalancerKind::LeastConnections,
        BalancerKind::P2cEwma,
        BalancerKind::ConsistentHash,
    ];

    #[test]
    fn builds_every_kind() {
        for kind in ALL {
            assert_eq!(build(&service(kind)).kind(), kind);
        }
    }

    /// The contract every strategy shares, with and without `update`.
    #[test]
    fn every_balancer_honours_empty_and_avoid() {
        for kind in ALL {
            for updated in [false, true] {
                for hash in [None, Some(hash_bytes(b"k"))] {
                    let b = build(&service(kind));
                    let empty = EndpointSet::default();
                    if updated {
                        b.update(&empty);
                    }
                    assert_eq!(b.pick(&empty, &PickContext { hash, avoid: &[] }), None, "{kind:?}");

                    let mut s = test_util::set(4);
                    s.available = vec![0, 2, 3];
                    if updated {
                        b.update(&s);
                    }
                    let tried = [s.endpoints[0].clone(), s.endpoints[3].clone()];
                    let ctx = PickContext { hash, avoid: &tried };
                    for _ in 0..50 {
                        assert_eq!(b.pick(&s, &ctx), Some(2), "{kind:?} updated={updated}");
                    }
                    // Everything tried: still an available endpoint.
                    let all = [s.endpoints[0].clone(), s.endpoints[2].clone(), s.endpoints[3].clone()];
                    let ctx = PickContext { hash, avoid: &all };
                    for _ in 0..50 {
                        let i = b.pick(&s, &ctx).unwrap();
                        assert!(s.available.contains(&i), "{kind:?}");
                    }
                    // Nothing available: nothing picked.
                    s.available.clear();
                    assert_eq!(b.pick(&s, &PickContext { hash, avoid: &[] }), None, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn hash_bytes_is_pinned() {
        // The key → point mapping must not change between processes or releases.
        assert_eq!(hash_bytes(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(hash_bytes(b"user-42"), 0x7a15_96f0_e94b_5793);
    }
}
