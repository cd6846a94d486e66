//! `random`: a uniform choice among the available endpoints.
//!
//! Stateless apart from the generator, so it needs no `update` and spreads
//! evenly without coordinating gateway instances (no shared counter phase as
//! with round robin). Weights are ignored, as for round robin.

use super::rng::SplitMix64;
use super::{eligible_count, nth_eligible, Balancer, PickContext};
use crate::config::BalancerKind;
use crate::registry::EndpointSet;

/// Uniform random choice; one atomic add per pick.
#[derive(Debug)]
pub struct Random {
    rng: SplitMix64,
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

impl Random {
    /// Seeded from the operating system.
    pub fn new() -> Self {
        Random { rng: SplitMix64::from_entropy() }
    }

    /// A reproducible sequence (tests, benchmarks).
    pub fn with_seed(seed: u64) -> Self {
        Random { rng: SplitMix64::with_seed(seed) }
    }
}

impl Balancer for Random {
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize> {
        let n = set.available.len();
        if n == 0 {
            return None;
        }
        if !ctx.avoid.is_empty() {
            // Uniform among the endpoints not tried yet, if there are any.
            let e = eligible_count(set, ctx);
            if e > 0 {
                return nth_eligible(set, ctx, self.rng.below(e));
            }
        }
        Some(set.available[self.rng.below(n)])
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::Random
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{counts, set};

    #[test]
    fn uniform_over_available() {
        let s = set(5);
        let r = Random::with_seed(42);
        let c = counts(5, 10_000, || r.pick(&s, &PickContext::default()));
        for n in c {
            // Expected 2,000 each; within 5%.
            assert!((1_900..=2_100).contains(&n), "{n}");
        }
    }

    #[test]
    fn only_available_endpoints() {
        let mut s = set(6);
        s.available = vec![1, 4];
        let r = Random::with_seed(3);
        let c = counts(6, 2_000, || r.pick(&s, &PickContext::default()));
        assert_eq!(c[0] + c[2] + c[3] + c[5], 0);
        assert!(c[1] > 900 && c[4] > 900, "{c:?}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let s = set(10);
        let (a, b) = (Random::with_seed(9), Random::with_seed(9));
        let pa: Vec<_> = (0..100).map(|_| a.pick(&s, &PickContext::default())).collect();
        let pb: Vec<_> = (0..100).map(|_| b.pick(&s, &PickContext::default())).collect();
        assert_eq!(pa, pb);
        let c = Random::with_seed(10);
        let pc: Vec<_> = (0..100).map(|_| c.pick(&s, &PickContext::default())).collect();
        assert_ne!(pa, pc);
    }

    #[test]
    fn avoid_is_uniform_over_the_rest() {
        let s = set(4);
        let r = Random::with_seed(5);
        let tried = [s.endpoints[1].clone()];
        let ctx = PickContext { hash: None, avoid: &tried };
        let c = counts(4, 9_000, || r.pick(&s, &ctx));
        assert_eq!(c[1], 0);
        for i in [0, 2, 3] {
            assert!((2_800..=3_200).contains(&c[i]), "{c:?}");
        }
    }
}
