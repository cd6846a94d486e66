//! `consistent_hash`: requests with the same key (the hash of the service's
//! `hash_key`, in [`PickContext::hash`]) go to the same endpoint, and
//! membership changes move few keys.
//!
//! This is a ketama ring rather than maglev. Both balance well and look up
//! quickly, but the ring gives the two guarantees asked of this strategy
//! exactly, where maglev gives them only approximately: removing an endpoint
//! moves only that endpoint's keys and adding one moves only the keys it takes
//! over (maglev's table fill also reshuffles a few other slots), and when a
//! key's endpoint is unavailable the next endpoint clockwise is a natural,
//! stable second choice (maglev would need a second table or probe sequence).
//! Lookup is a binary search over the points, O(log points), against O(1) for
//! maglev: about 18 steps for 1,000 endpoints.
//!
//! The ring holds every endpoint of the set, available or not, each as
//! [`POINTS_PER_WEIGHT`] × weight points hashed from its *id*, so it depends
//! neither on the endpoints' order nor on their health: an endpoint going
//! down and back up moves nothing for good, and a rebuilt ring with the same
//! endpoints is the same ring. A pick walks clockwise from the key's point to
//! the first endpoint that is available and not yet tried by this request.
//!
//! The ring is rebuilt in [`Balancer::update`] and swapped in whole; a pick
//! loads it without a lock and allocates nothing. The ring remembers which
//! endpoint sat at each index; if the set a pick is given does not match
//! (no `update` yet, or a new set not yet passed to it), the pick falls back
//! to rendezvous hashing over the available endpoints (highest
//! `hash(key, id)` wins): linear, allocation-free, and just as consistent, so
//! keys stay put for as long as the set does. The same fallback answers the
//! rare walk that passes [`MAX_WALK`] points without finding an endpoint
//! (most of the service down).
//!
//! Requests without a key (`hash == None`: the header, cookie... is missing)
//! are spread round robin over the available endpoints: nothing ties them to
//! an endpoint, and sending them all to one would overload it.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::rng::{mix64, GAMMA};
use super::{is_available, Balancer, PickContext, RoundRobin};
use crate::config::BalancerKind;
use crate::registry::{Endpoint, EndpointSet};

/// Ring points per unit of weight: enough for each endpoint's share of keys
/// to be within a few percent of its weight's share.
pub const POINTS_PER_WEIGHT: u64 = 160;
/// Most points on a ring (12 bytes each): beyond this, points per weight
/// shrink in proportion (each endpoint keeps at least one).
pub const MAX_RING_POINTS: u64 = 1 << 18;
/// Points a pick walks past unavailable or tried endpoints before it falls
/// back to rendezvous hashing.
pub const MAX_WALK: usize = 4096;

/// A stable 64-bit hash (FNV-1a with a splitmix64 finaliser) of a request's
/// `hash_key` value: the same key maps to the same point in every process.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// Point `j` of the endpoint whose id hashes to `id_hash` (a splitmix64
/// sequence seeded by the id).
fn point(id_hash: u64, j: u64) -> u64 {
    mix64(id_hash.wrapping_add((j + 1).wrapping_mul(GAMMA)))
}

/// The rendezvous fallback: the available endpoint with the highest
/// `hash(key, id)`, preferring endpoints not tried yet.
fn rendezvous(set: &EndpointSet, ctx: &PickContext<'_>, key: u64) -> Option<usize> {
    let best = |skip_tried: bool| {
        set.available
            .iter()
            .copied()
            .filter(|&i| !(skip_tried && ctx.avoids(&set.endpoints[i])))
            .max_by_key(|&i| mix64(key ^ hash_bytes(set.endpoints[i].id.as_bytes())))
    };
    if !ctx.avoid.is_empty() {
        if let Some(i) = best(true) {
            return Some(i);
        }
    }
    best(false)
}

/// One built ring.
struct Ring {
    /// The set's endpoints when built, by index: a pick checks that the
    /// endpoint it lands on still sits at that index.
    endpoints: Box<[Arc<Endpoint>]>,
    /// Point hashes, ascending...
    points: Box<[u64]>,
    /// ... and the index of each point's endpoint.
    owners: Box<[u32]>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ring(endpoints {}, points {})", self.endpoints.len(), self.points.len())
    }
}

enum Walk {
    Found(usize),
    /// Nothing suitable within `MAX_WALK` points.
    NotFound,
    /// The ring was not built for this set.
    Stale,
}

impl Ring {
    fn empty() -> Ring {
        Ring { endpoints: Box::default(), points: Box::default(), owners: Box::default() }
    }

    fn build(set: &EndpointSet) -> Ring {
        if u32::try_from(set.endpoints.len()).is_err() {
            return Ring::empty(); // rendezvous for absurd sizes
        }
        let weight = |ep: &Endpoint| u64::from(ep.weight.max(1));
        let total: u64 = set.endpoints.iter().map(|e| weight(e)).sum();
        let per_weight = |w: u64| {
            if total.saturating_mul(POINTS_PER_WEIGHT) <= MAX_RING_POINTS {
                POINTS_PER_WEIGHT * w
            } else {
                (MAX_RING_POINTS * w / total).max(1)
            }
        };
        let mut pts: Vec<(u64, u32)> = Vec::new();
        for (i, ep) in set.endpoints.iter().enumerate() {
            let id_hash = hash_bytes(ep.id.as_bytes());
            pts.extend((0..per_weight(weight(ep))).map(|j| (point(id_hash, j), i as u32)));
        }
        // Ties (vanishingly rare) go by id, so the order of the set never matters.
        let id = |o: u32| &set.endpoints[o as usize].id;
        pts.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| id(a.1).cmp(id(b.1))));
        Ring {
            endpoints: set.endpoints.clone().into_boxed_slice(),
            points: pts.iter().map(|p| p.0).collect(),
            owners: pts.iter().map(|p| p.1).collect(),
        }
    }

    /// Walks clockwise from `key` to the first available endpoint (not tried
    /// yet, if `skip_tried`).
    fn walk(&self, set: &EndpointSet, ctx: &PickContext<'_>, key: u64, skip_tried: bool) -> Walk {
        let n = self.points.len();
        if n == 0 || self.endpoints.len() != set.endpoints.len() {
            return Walk::Stale;
        }
        let start = self.points.partition_point(|&p| p < key);
        let mut last = u32::MAX;
        for s in 0..n.min(MAX_WALK) {
            let owner = self.owners[(start + s) % n];
            if owner == last {
                continue;
            }
            last = owner;
            let i = owner as usize;
            let (ep, built) = (&set.endpoints[i], &self.endpoints[i]);
            if !Arc::ptr_eq(ep, built) && ep.id != built.id {
                return Walk::Stale;
            }
            if is_available(set, i) && !(skip_tried && ctx.avoids(ep)) {
                return Walk::Found(i);
            }
        }
        Walk::NotFound
    }
}

/// Ketama consistent hashing with a round-robin fallback for keyless requests.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: ArcSwap<Ring>,
    keyless: RoundRobin,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsistentHash {
    pub fn new() -> Self {
        ConsistentHash { ring: ArcSwap::from_pointee(Ring::empty()), keyless: RoundRobin::new() }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize> {
        if set.available.is_empty() {
            return None;
        }
        let Some(key) = ctx.hash else {
            return self.keyless.pick(set, ctx);
        };
        match self.ring.load().walk(set, ctx, key, !ctx.avoid.is_empty()) {
            Walk::Found(i) => Some(i),
            // Everything tried, most of the ring down, or a stale ring.
            Walk::NotFound | Walk::Stale => rendezvous(set, ctx, key),
        }
    }

    fn update(&self, set: &EndpointSet) {
        self.ring.store(Arc::new(Ring::build(set)));
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::ConsistentHash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{endpoint, set};

    const KEYS: u64 = 10_000;

    fn key(k: u64) -> u64 {
        hash_bytes(format!("user-{k}").as_bytes())
    }

    fn ctx(k: u64) -> PickContext<'static> {
        PickContext { hash: Some(key(k)), avoid: &[] }
    }

    /// The id each key goes to.
    fn assignment(b: &ConsistentHash, s: &EndpointSet) -> Vec<Box<str>> {
        (0..KEYS).map(|k| s.endpoints[b.pick(s, &ctx(k)).unwrap()].id.clone()).collect()
    }

    fn updated(s: &EndpointSet) -> ConsistentHash {
        let b = ConsistentHash::new();
        b.update(s);
        b
    }

    fn without(s: &EndpointSet, id: &str) -> EndpointSet {
        EndpointSet::all_available(s.endpoints.iter().filter(|e| &*e.id != id).cloned().collect())
    }

    #[test]
    fn same_key_same_endpoint() {
        let s = set(10);
        let b = updated(&s);
        for k in 0..100 {
            let first = b.pick(&s, &ctx(k));
            for _ in 0..5 {
                assert_eq!(b.pick(&s, &ctx(k)), first);
            }
            // Another balancer (another gateway process) agrees.
            assert_eq!(updated(&s).pick(&s, &ctx(k)), first);
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let s = set(10);
        let mut c = [0; 10];
        let b = updated(&s);
        for k in 0..KEYS {
            c[b.pick(&s, &ctx(k)).unwrap()] += 1;
        }
        assert!(c.iter().all(|n| (700..=1_300).contains(n)), "{c:?}");
    }

    #[test]
    fn weights_scale_the_share() {
        let s = EndpointSet::all_available(vec![endpoint("a", 1), endpoint("b", 3)]);
        let b = updated(&s);
        let on_b = (0..KEYS).filter(|&k| b.pick(&s, &ctx(k)) == Some(1)).count();
        assert!((7_000..=8_000).contains(&on_b), "{on_b}");
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_keys() {
        let s = set(10);
        let before = assignment(&updated(&s), &s);
        let fewer = without(&s, "e3");
        let after = assignment(&updated(&fewer), &fewer);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(moved as u64 <= KEYS * 15 / 100, "{moved}");
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || &**a == "e3"));
    }

    #[test]
    fn adding_one_to_ten_moves_only_keys_to_it() {
        let s = set(10);
        let before = assignment(&updated(&s), &s);
        let mut eps = s.endpoints.clone();
        eps.push(endpoint("e10", 1));
        let more = EndpointSet::all_available(eps);
        let after = assignment(&updated(&more), &more);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(moved as u64 <= KEYS * 15 / 100, "{moved}");
        assert!(moved > 0);
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || &**b == "e10"));
    }

    #[test]
    fn unavailable_goes_to_the_next_on_the_ring() {
        let mut s = set(10);
        let b = updated(&s);
        let before = assignment(&b, &s);
        // e3 down: its keys go where they would if e3 had left the ring
        // (the next endpoint clockwise); nobody else's keys move.
        s.available.retain(|&i| i != 3);
        let down = assignment(&b, &s);
        let fewer = without(&s, "e3");
        assert_eq!(down, assignment(&updated(&fewer), &fewer));
        assert!(before.iter().zip(&down).all(|(a, d)| a == d || &**a == "e3"));
        // Back up: everything returns.
        s.available = (0..10).collect();
        assert_eq!(assignment(&b, &s), before);
    }

    #[test]
    fn stable_across_a_reordered_rebuild() {
        let s = set(10);
        let before = assignment(&updated(&s), &s);
        let mut eps = s.endpoints.clone();
        eps.reverse();
        eps.rotate_left(3);
        let shuffled = EndpointSet::all_available(eps);
        assert_eq!(assignment(&updated(&shuffled), &shuffled), before);
    }

    #[test]
    fn avoid_goes_to_the_next_on_the_ring() {
        let s = set(5);
        let b = updated(&s);
        for k in 0..200 {
            let first = b.pick(&s, &ctx(k)).unwrap();
            let tried = [s.endpoints[first].clone()];
            let retry = PickContext { hash: Some(key(k)), avoid: &tried };
            let second = b.pick(&s, &retry).unwrap();
            let mut down = set(5);
            down.endpoints = s.endpoints.clone();
            down.available.retain(|&i| i != first);
            assert_eq!(Some(second), b.pick(&down, &ctx(k)));
        }
    }

    #[test]
    fn stale_or_missing_ring_still_answers_consistently() {
        let s = set(6);
        // Never updated: rendezvous, still one endpoint per key.
        let b = ConsistentHash::new();
        let first = assignment(&b, &s);
        assert_eq!(assignment(&b, &s), first);
        // Updated for another set: e2 replaced by x2 at the same index.
        b.update(&s);
        let mut eps = s.endpoints.clone();
        eps[2] = endpoint("x2", 1);
        let mut other = EndpointSet::all_available(eps);
        other.available = vec![0, 2, 4];
        for k in 0..1_000 {
            let i = b.pick(&other, &ctx(k)).unwrap();
            assert!(other.available.contains(&i));
            assert_eq!(b.pick(&other, &ctx(k)), Some(i));
        }
        // A shorter set than the ring's.
        let fewer = without(&s, "e5");
        for k in 0..100 {
            assert!(b.pick(&fewer, &ctx(k)).unwrap() < 5);
        }
    }

    #[test]
    fn keyless_requests_go_round_robin() {
        let mut s = set(4);
        s.available = vec![0, 2, 3];
        let b = updated(&s);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&s, &PickContext::default()).unwrap()).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn big_weights_cap_the_ring() {
        let s = EndpointSet::all_available(vec![endpoint("a", 10_000), endpoint("b", 10_000)]);
        let b = updated(&s);
        assert_eq!(b.ring.load().points.len() as u64, MAX_RING_POINTS);
    }
}
