//! `weighted_round_robin`: smooth weighted round robin (nginx's algorithm),
//! weights from [`Endpoint::weight`](crate::registry::Endpoint).
//!
//! Smooth means the heavy endpoints are interleaved with the light ones
//! instead of served in bursts: weights {5, 1, 1} give `a a b a c a a`, not
//! `a a a a a b c`, so no endpoint sees its whole share at once.
//!
//! nginx finds each pick by updating a running "current weight" per endpoint,
//! which needs a lock. Here [`Balancer::update`] runs that algorithm once over
//! a whole period (the sum of the weights after dividing them by their gcd)
//! and stores the resulting sequence (as positions in `available`) in an
//! [`ArcSwap`] snapshot; a pick is one atomic add and two array reads.
//!
//! The table is built only while it stays small: at most [`MAX_TABLE_LEN`]
//! entries (64 KiB) and at most [`MAX_BUILD_STEPS`] steps to compute (period ×
//! endpoints). Beyond that, and whenever a pick sees a set other than the one
//! the snapshot was built for (no `update` yet, or a new set not yet passed
//! to `update`), a pick uses a *stride* order instead: position
//! `counter × k mod total` over the cumulative weights, with `k` coprime with
//! the total and close to total / φ. That visits every position exactly once
//! per period (exact ratios) and spreads consecutive picks around the weight
//! line (a low-discrepancy order, nearly as smooth), without any state. It
//! costs a binary search on the snapshot's cumulative weights, or one linear
//! pass over the set when the snapshot does not match.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::{Balancer, PickContext};
use crate::config::BalancerKind;
use crate::registry::EndpointSet;

/// Longest smooth sequence tabulated (entries of 4 bytes).
pub const MAX_TABLE_LEN: u64 = 1 << 14;
/// Most work `update` spends tabulating: period × available endpoints.
pub const MAX_BUILD_STEPS: u64 = 1 << 24;

/// Identifies the set a snapshot was built for, cheaply: the addresses and
/// lengths of its two vectors. These stay put when the set is moved (into an
/// `Arc`, say), and differ between two sets alive at the same time. A set
/// built after the fingerprinted one was freed could reuse its addresses;
/// that only skews weights until the next `update` (see [`Snapshot::at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    endpoints: usize,
    n: usize,
    available: usize,
    m: usize,
}

impl Fingerprint {
    fn of(set: &EndpointSet) -> Self {
        Fingerprint {
            endpoints: set.endpoints.as_ptr() as usize,
            n: set.endpoints.len(),
            available: set.available.as_ptr() as usize,
            m: set.available.len(),
        }
    }
}

/// How picks are answered for the fingerprinted set.
enum Plan {
    /// Not built for any set yet, or nothing available.
    Unbuilt,
    /// One period of the smooth sequence, as positions in `available`.
    Sequence(Box<[u32]>),
    /// Too long to tabulate: cumulative reduced weights along `available`
    /// and the stride to walk them with.
    Stride { cumulative: Box<[u64]>, stride: u64 },
}

struct Snapshot {
    fingerprint: Option<Fingerprint>,
    plan: Plan,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.plan {
            Plan::Unbuilt => f.write_str("Unbuilt"),
            Plan::Sequence(s) => write!(f, "Sequence(len {})", s.len()),
            Plan::Stride { cumulative, stride } => write!(f, "Stride(endpoints {}, stride {stride})", cumulative.len()),
        }
    }
}

/// An endpoint's weight as used here; 0 (rejected by config and registry)
/// would count as 1.
fn weight_of(set: &EndpointSet, idx: usize) -> u64 {
    u64::from(set.endpoints[idx].weight.max(1))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A stride for walking `total` positions: coprime with `total` (so it
/// visits each once per period), near `total / φ` (so it spreads).
fn stride_for(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let start = ((u128::from(total) * 0x9e37_79b9_7f4a_7c15) >> 64) as u64;
    // A coprime number is never far away; the bound only guards the loop.
    (start..start + 1_000).find(|&k| gcd(k, total) == 1).unwrap_or(1)
}

/// The position on the weight line that pick number `c` lands on.
fn position(c: u64, total: u64, stride: u64) -> u64 {
    ((u128::from(c % total) * u128::from(stride)) % u128::from(total)) as u64
}

/// The stride order computed from the set itself, over the available
/// endpoints `keep` accepts; `None` if it accepts none.
fn stride_pick(set: &EndpointSet, c: u64, keep: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = set.available.iter().filter(|&&i| keep(i)).map(|&i| weight_of(set, i)).sum();
    if total == 0 {
        return None;
    }
    let p = position(c, total, stride_for(total));
    let mut acc = 0;
    for &i in set.available.iter().filter(|&&i| keep(i)) {
        acc += weight_of(set, i);
        if p < acc {
            return Some(i);
        }
    }
    None
}

/// One period of nginx's smooth weighted round robin over endpoints with
/// `weights`, as positions in that list.
fn smooth_sequence(weights: &[u64], total: u64) -> Box<[u32]> {
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (j, &w) in weights.iter().enumerate() {
            current[j] += w as i64;
            if current[j] > current[best] {
                best = j;
            }
        }
        current[best] -= total as i64;
        seq.push(best as u32);
    }
    seq.into_boxed_slice()
}

impl Snapshot {
    fn build(set: &EndpointSet) -> Snapshot {
        let fingerprint = Some(Fingerprint::of(set));
        if set.available.is_empty() {
            return Snapshot { fingerprint, plan: Plan::Unbuilt };
        }
        let mut weights: Vec<u64> = set.available.iter().map(|&i| weight_of(set, i)).collect();
        let g = weights.iter().fold(0, |g, &w| gcd(g, w));
        weights.iter_mut().for_each(|w| *w /= g);
        let total: u64 = weights.iter().sum();
        let small = total <= MAX_TABLE_LEN
            && total.saturating_mul(weights.len() as u64) <= MAX_BUILD_STEPS
            && u32::try_from(weights.len()).is_ok();
        let plan = if small {
            Plan::Sequence(smooth_sequence(&weights, total))
        } else {
            let cumulative = weights
                .iter()
                .scan(0u64, |acc, &w| {
                    *acc += w;
                    Some(*acc)
                })
                .collect();
            Plan::Stride { cumulative, stride: stride_for(total) }
        };
        Snapshot { fingerprint, plan }
    }

    /// Pick number `c` by the plan, if the plan was built for `set`. Both
    /// plans yield a position in `set.available`, so even a different set
    /// that happened to reuse the fingerprinted addresses and lengths gets
    /// an available endpoint.
    fn at(&self, set: &EndpointSet, c: u64) -> Option<usize> {
        if self.fingerprint != Some(Fingerprint::of(set)) {
            return None;
        }
        match &self.plan {
            Plan::Unbuilt => None,
            Plan::Sequence(seq) => set.available.get(seq[(c % seq.len() as u64) as usize] as usize).copied(),
            Plan::Stride { cumulative, stride } => {
                let total = *cumulative.last()?;
                let p = position(c, total, *stride);
                set.available.get(cumulative.partition_point(|&x| x <= p)).copied()
            }
        }
    }
}

/// Smooth weighted round robin: a shared counter over a precomputed order.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    next: AtomicUsize,
    snapshot: ArcSwap<Snapshot>,
}

impl Default for WeightedRoundRobin {
    fn default() -> Self {
        Self::new()
    }
}

impl WeightedRoundRobin {
    pub fn new() -> Self {
        WeightedRoundRobin {
            next: AtomicUsize::new(0),
            snapshot: ArcSwap::from_pointee(Snapshot { fingerprint: None, plan: Plan::Unbuilt }),
        }
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize> {
        if set.available.is_empty() {
            return None;
        }
        let c = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let first = self.snapshot.load().at(set, c).or_else(|| stride_pick(set, c, |_| true))?;
        if ctx.avoid.is_empty() || !ctx.avoids(&set.endpoints[first]) {
            return Some(first);
        }
        // Already tried: weighted among the untried ones, if any are left.
        stride_pick(set, c, |i| !ctx.avoids(&set.endpoints[i])).or(Some(first))
    }

    fn update(&self, set: &EndpointSet) {
        self.snapshot.store(std::sync::Arc::new(Snapshot::build(set)));
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::WeightedRoundRobin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{counts, weighted};

    fn picks(b: &WeightedRoundRobin, set: &EndpointSet, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(set, &PickContext::default()).unwrap()).collect()
    }

    #[test]
    fn nginx_smooth_sequence() {
        let s = weighted(&[5, 1, 1]);
        let b = WeightedRoundRobin::new();
        b.update(&s);
        // a a b a c a a, twice.
        assert_eq!(picks(&b, &s, 14), [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_reduced_by_gcd() {
        let s = weighted(&[10, 20]);
        let b = WeightedRoundRobin::new();
        b.update(&s);
        assert!(matches!(&b.snapshot.load().plan, Plan::Sequence(seq) if seq.len() == 3));
        assert_eq!(picks(&b, &s, 6), [1, 0, 1, 1, 0, 1]);
    }

    fn assert_ratios(c: &[usize], weights: &[u32]) {
        let total: u32 = weights.iter().sum();
        let n: usize = c.iter().sum();
        for (got, &w) in c.iter().zip(weights) {
            let want = n as f64 * f64::from(w) / f64::from(total);
            assert!((*got as f64 - want).abs() <= want * 0.02, "{c:?} vs weights {weights:?}");
        }
    }

    #[test]
    fn ratios_follow_weights() {
        let w = [1, 3, 6];
        let s = weighted(&w);
        let b = WeightedRoundRobin::new();
        b.update(&s);
        assert_ratios(&counts(3, 10_000, || b.pick(&s, &PickContext::default())), &w);
    }

    #[test]
    fn ratios_without_update_and_beyond_the_table() {
        // Never updated: computed from the set.
        let w = [1, 3, 6];
        let s = weighted(&w);
        let b = WeightedRoundRobin::new();
        assert_ratios(&counts(3, 10_000, || b.pick(&s, &PickContext::default())), &w);
        // A period of 100,031 is too long to tabulate: the stride plan.
        let w = [10_007, 30_011, 60_013];
        let s = weighted(&w);
        let b = WeightedRoundRobin::new();
        b.update(&s);
        assert!(matches!(&b.snapshot.load().plan, Plan::Stride { .. }));
        assert_ratios(&counts(3, 10_000, || b.pick(&s, &PickContext::default())), &w);
    }

    #[test]
    fn stride_order_is_smooth_enough() {
        // The fallback order for {5, 1, 1}: no run of the heavy one longer
        // than 3, each light one once per 7.
        let s = weighted(&[5, 1, 1]);
        let b = WeightedRoundRobin::new();
        let p = picks(&b, &s, 7);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 1);
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 1);
        assert!(p.windows(4).all(|w| w.iter().any(|&i| i != 0)), "{p:?}");
    }

    #[test]
    fn a_set_other_than_the_updated_one_is_detected() {
        let mut s = weighted(&[5, 1, 1]);
        let b = WeightedRoundRobin::new();
        b.update(&s);
        // Same endpoints, endpoint 0 no longer available, no update yet.
        let mut other = EndpointSet { endpoints: s.endpoints.clone(), available: vec![1, 2] };
        assert_eq!(counts(3, 100, || b.pick(&other, &PickContext::default())), [0, 50, 50]);
        // Availability changed in place (same vectors, new length).
        s.available.truncate(2);
        let c = counts(3, 600, || b.pick(&s, &PickContext::default()));
        assert_eq!(c, [500, 100, 0]);
        // Updated for the new set: the table again.
        other.available = vec![0, 2];
        b.update(&other);
        assert!(matches!(&b.snapshot.load().plan, Plan::Sequence(seq) if seq.len() == 6));
        assert_eq!(counts(3, 600, || b.pick(&other, &PickContext::default())), [500, 0, 100]);
    }

    #[test]
    fn a_set_changed_in_place_still_gets_available_endpoints() {
        // Same vectors, same lengths, different contents: the fingerprint
        // cannot tell, but every pick is still an available endpoint.
        let mut s = weighted(&[5, 1, 1, 1]);
        s.available = vec![0, 1, 2];
        let b = WeightedRoundRobin::new();
        b.update(&s);
        s.available[2] = 3;
        let c = counts(4, 700, || b.pick(&s, &PickContext::default()));
        assert_eq!(c, [500, 100, 0, 100]);
    }

    #[test]
    fn avoid_keeps_weights_among_the_rest() {
        let s = weighted(&[5, 1, 3]);
        let b = WeightedRoundRobin::new();
        b.update(&s);
        let tried = [s.endpoints[0].clone()];
        let ctx = PickContext { hash: None, avoid: &tried };
        let c = counts(3, 4_000, || b.pick(&s, &ctx));
        assert_eq!(c[0], 0);
        assert!((900..=1_100).contains(&c[1]) && (2_900..=3_100).contains(&c[2]), "{c:?}");
    }

    #[test]
    fn stride_is_coprime() {
        for total in 1..2_000u64 {
            let k = stride_for(total);
            assert_eq!(gcd(k, total), 1, "{total}");
        }
    }
}
