//! `round_robin`: an exact cycle over the available endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickContext};
use crate::config::BalancerKind;
use crate::registry::EndpointSet;

/// One shared counter; its position survives changes of the endpoint set.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Default for RoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

impl RoundRobin {
    pub fn new() -> Self {
        RoundRobin { next: AtomicUsize::new(0) }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize> {
        let n = set.available.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Skip endpoints this request already tried, unless all were tried.
        for k in 0..n {
            let idx = set.available[start.wrapping_add(k) % n];
            if ctx.avoid.is_empty() || !ctx.avoids(&set.endpoints[idx]) {
                return Some(idx);
            }
        }
        Some(set.available[start % n])
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::RoundRobin
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::{Endpoint, Source};

    fn set(n: usize) -> EndpointSet {
        let eps = (0..n)
            .map(|i| {
                Arc::new(
                    Endpoint::new(&format!("e{i}"), &format!("127.0.0.1:{}", 1000 + i), 1, Source::Static).unwrap(),
                )
            })
            .collect();
        EndpointSet::all_available(eps)
    }

    #[test]
    fn exact_cycle() {
        let s = set(3);
        let rr = RoundRobin::new();
        let picks: Vec<_> = (0..7).map(|_| rr.pick(&s, &PickContext::default()).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn cycles_over_available_only() {
        let mut s = set(4);
        s.available = vec![1, 3];
        let rr = RoundRobin::new();
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&s, &PickContext::default()).unwrap()).collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
    }

    #[test]
    fn empty_set_picks_nothing() {
        assert_eq!(RoundRobin::new().pick(&set(0), &PickContext::default()), None);
    }

    #[test]
    fn avoids_tried_endpoints_when_it_can() {
        let s = set(2);
        let rr = RoundRobin::new();
        let tried = [s.endpoints[0].clone()];
        let ctx = PickContext { hash: None, avoid: &tried };
        for _ in 0..5 {
            assert_eq!(rr.pick(&s, &ctx), Some(1));
        }
        let all = [s.endpoints[0].clone(), s.endpoints[1].clone()];
        let ctx = PickContext { hash: None, avoid: &all };
        assert!(rr.pick(&s, &ctx).is_some());
    }
}
