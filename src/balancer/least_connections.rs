//! `least_connections`: the available endpoint with the fewest requests in
//! flight through this gateway (`EndpointStats::active`).
//!
//! Ties are broken at random. Breaking them by position would send every
//! request that arrives while several endpoints are equally loaded (at rest,
//! all of them) to the first, which turns the strategy into "always the first
//! endpoint" under light load. One pass keeps a uniform sample among the
//! minimal endpoints seen so far (reservoir sampling), so a pick allocates
//! nothing; the random numbers come from a local stream seeded by one shared
//! draw, so the shared generator is touched once per pick. The counts are read
//! without synchronisation: a pick may see a count that is a request out of
//! date, which only matters for that one pick.

use super::rng::SplitMix64;
use super::{Balancer, PickContext};
use crate::config::BalancerKind;
use crate::registry::EndpointSet;

/// Fewest active requests, random among equals.
#[derive(Debug)]
pub struct LeastConnections {
    rng: SplitMix64,
}

impl Default for LeastConnections {
    fn default() -> Self {
        Self::new()
    }
}

impl LeastConnections {
    /// Ties broken with a generator seeded from the operating system.
    pub fn new() -> Self {
        LeastConnections { rng: SplitMix64::from_entropy() }
    }

    /// Reproducible tie-breaking (tests, benchmarks).
    pub fn with_seed(seed: u64) -> Self {
        LeastConnections { rng: SplitMix64::with_seed(seed) }
    }

    /// One pass over the available endpoints, skipping tried ones if
    /// `skip_tried`; `None` when every candidate was skipped.
    fn scan(&self, set: &EndpointSet, ctx: &PickContext<'_>, skip_tried: bool) -> Option<usize> {
        let mut rng = self.rng.stream();
        let mut best = None;
        let mut least = usize::MAX;
        let mut ties = 0;
        for &i in &set.available {
            let ep = &set.endpoints[i];
            if skip_tried && ctx.avoids(ep) {
                continue;
            }
            let active = ep.stats.active();
            if best.is_none() || active < least {
                least = active;
                best = Some(i);
                ties = 1;
            } else if active == least {
                // Keep each of the `ties` minimal endpoints with probability 1/ties.
                ties += 1;
                if rng.below(ties) == 0 {
                    best = Some(i);
                }
            }
        }
        best
    }
}

impl Balancer for LeastConnections {
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize> {
        if set.available.is_empty() {
            return None;
        }
        if !ctx.avoid.is_empty() {
            if let Some(i) = self.scan(set, ctx, true) {
                return Some(i);
            }
        }
        self.scan(set, ctx, false)
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::LeastConnections
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::balancer::test_util::{counts, set};

    #[test]
    fn prefers_the_idle_endpoint() {
        let s = set(4);
        for (i, a) in [5, 0, 3, 1].into_iter().enumerate() {
            s.endpoints[i].stats.active.store(a, Ordering::Relaxed);
        }
        let lc = LeastConnections::with_seed(1);
        for _ in 0..100 {
            assert_eq!(lc.pick(&s, &PickContext::default()), Some(1));
        }
    }

    #[test]
    fn follows_the_counts() {
        let mut s = set(3);
        let lc = LeastConnections::with_seed(2);
        // Each pick's request stays in flight: picks fill the endpoints evenly.
        let mut c = [0; 3];
        for _ in 0..30 {
            let i = lc.pick(&s, &PickContext::default()).unwrap();
            s.endpoints[i].stats.active.fetch_add(1, Ordering::Relaxed);
            c[i] += 1;
        }
        assert_eq!(c, [10, 10, 10]);
        // Only available endpoints count, however idle the others are.
        s.available = vec![0, 2];
        s.endpoints[0].stats.active.store(50, Ordering::Relaxed);
        s.endpoints[1].stats.active.store(0, Ordering::Relaxed);
        assert_eq!(lc.pick(&s, &PickContext::default()), Some(2));
    }

    #[test]
    fn splits_evenly_between_equals() {
        let s = set(5);
        // Endpoint 4 is busier; the other four tie.
        s.endpoints[4].stats.active.store(2, Ordering::Relaxed);
        let lc = LeastConnections::with_seed(3);
        let c = counts(5, 10_000, || lc.pick(&s, &PickContext::default()));
        assert_eq!(c[4], 0);
        for n in &c[..4] {
            // 2,500 each, within ±10%.
            assert!((2_250..=2_750).contains(n), "{c:?}");
        }
    }

    #[test]
    fn same_seed_same_choices() {
        let s = set(8);
        let (a, b) = (LeastConnections::with_seed(4), LeastConnections::with_seed(4));
        for _ in 0..100 {
            assert_eq!(a.pick(&s, &PickContext::default()), b.pick(&s, &PickContext::default()));
        }
    }

    #[test]
    fn avoids_tried_even_if_least_loaded() {
        let s = set(3);
        s.endpoints[1].stats.active.store(4, Ordering::Relaxed);
        s.endpoints[2].stats.active.store(9, Ordering::Relaxed);
        let lc = LeastConnections::with_seed(5);
        let tried = [s.endpoints[0].clone()];
        let ctx = PickContext { hash: None, avoid: &tried };
        assert_eq!(lc.pick(&s, &ctx), Some(1));
    }
}
