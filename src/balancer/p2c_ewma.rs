//! `p2c_ewma`: power of two choices over a peak-EWMA latency cost, as in
//! Finagle and linkerd.
//!
//! Each pick draws two distinct available endpoints at random and takes the
//! cheaper, where cost = latency estimate × (requests in flight + 1). Looking
//! at two instead of all keeps a pick O(1) and avoids the herding of "always
//! the global best" (every gateway instance piling onto the same endpoint
//! between two updates), while still steering away from slow or busy ones: an
//! endpoint only gets a request when it beats another one.
//!
//! The latency estimate is a *peak* EWMA kept in [`EndpointStats`]: a sample
//! above the estimate replaces it at once (react to trouble immediately),
//! smaller samples pull it down with weight `1 - exp(-elapsed / decay)`
//! (forget it slowly, in time rather than in samples). [`cost`] also decays the
//! estimate towards [`DEFAULT_RTT`] with the time since the last sample: an
//! endpoint that was slow once, and therefore stopped getting requests and
//! samples, drifts back to the default and is tried again, instead of being
//! shunned forever on stale evidence. Endpoints never measured cost
//! [`DEFAULT_RTT`].
//!
//! The proxy reports latencies with [`observe`]; time is passed in (as
//! [`now_ns`] on the request path) so tests control it exactly. Updates are
//! plain loads and stores of the two atomics, not a compare-and-swap loop: two
//! samples recorded at the same instant may lose one of them (or pair one's
//! estimate with the other's stamp), which only nudges an estimate.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::rng::SplitMix64;
use super::{eligible_count, nth_eligible, Balancer, PickContext};
use crate::config::BalancerKind;
use crate::registry::{EndpointSet, EndpointStats};

/// How fast old latency evidence fades: after `DEFAULT_DECAY` without samples
/// the excess over the default has shrunk to 1/e (linkerd's default too).
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Latency assumed for an endpoint never measured, and the level an idle
/// estimate decays to. 1 ms: a typical in-datacentre round trip, so a new
/// endpoint is neither shunned nor flooded next to measured ones.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Nanoseconds since the first call in this process (the clock of
/// `EndpointStats::ewma_stamp_ns`); monotonic.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// The weight old evidence keeps after `elapsed_ns`: `exp(-elapsed / decay)`.
fn keep(elapsed_ns: u64, decay: Duration) -> f64 {
    let tau = nanos(decay);
    if tau <= 0.0 {
        return 0.0;
    }
    (-(elapsed_ns as f64) / tau).exp()
}

/// Records one measured latency (`rtt`) of an endpoint at `now_ns`.
pub fn observe(stats: &EndpointStats, rtt: Duration, now_ns: u64, decay: Duration) {
    // 0 bits mean "never measured", so a sample is at least 1 ns.
    let rtt = nanos(rtt).max(1.0);
    let bits = stats.ewma_ns.load(Ordering::Relaxed);
    let next = if bits == 0 {
        rtt
    } else {
        let est = f64::from_bits(bits);
        if rtt >= est {
            rtt
        } else {
            let stamp = stats.ewma_stamp_ns.load(Ordering::Relaxed);
            let w = keep(now_ns.saturating_sub(stamp), decay);
            est * w + rtt * (1.0 - w)
        }
    };
    stats.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    stats.ewma_stamp_ns.store(now_ns, Ordering::Relaxed);
}

/// The latency estimate at `now_ns`, in nanoseconds: the recorded peak-EWMA
/// decayed towards [`DEFAULT_RTT`] by the time since its last sample.
pub fn estimate_ns(stats: &EndpointStats, now_ns: u64, decay: Duration) -> f64 {
    let default = nanos(DEFAULT_RTT);
    let bits = stats.ewma_ns.load(Ordering::Relaxed);
    if bits == 0 {
        return default;
    }
    let est = f64::from_bits(bits);
    let stamp = stats.ewma_stamp_ns.load(Ordering::Relaxed);
    let w = keep(now_ns.saturating_sub(stamp), decay);
    est * w + default * (1.0 - w)
}

/// What sending one more request to the endpoint costs: latency estimate ×
/// (requests in flight + 1).
pub fn cost(stats: &EndpointStats, now_ns: u64, decay: Duration) -> f64 {
    estimate_ns(stats, now_ns, decay) * (stats.active() as f64 + 1.0)
}

/// Power of two choices by peak-EWMA cost.
#[derive(Debug)]
pub struct P2cEwma {
    rng: SplitMix64,
    decay: Duration,
}

impl Default for P2cEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl P2cEwma {
    /// [`DEFAULT_DECAY`], choices seeded from the operating system.
    pub fn new() -> Self {
        P2cEwma { rng: SplitMix64::from_entropy(), decay: DEFAULT_DECAY }
    }

    /// Reproducible choices (tests, benchmarks).
    pub fn with_seed(seed: u64) -> Self {
        P2cEwma { rng: SplitMix64::with_seed(seed), decay: DEFAULT_DECAY }
    }

    pub fn with_decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The decay this balancer's costs use (pass it to [`observe`]).
    pub fn decay(&self) -> Duration {
        self.decay
    }

    /// [`Balancer::pick`] at a given time.
    pub fn pick_at(&self, set: &EndpointSet, ctx: &PickContext<'_>, now_ns: u64) -> Option<usize> {
        let n = set.available.len();
        if n == 0 {
            return None;
        }
        // Choose among the endpoints not tried yet, or among all if none is left.
        let e = if ctx.avoid.is_empty() { 0 } else { eligible_count(set, ctx) };
        let (a, b) = if e == 0 {
            if n == 1 {
                return Some(set.available[0]);
            }
            let (i, j) = self.two_distinct(n);
            (set.available[i], set.available[j])
        } else {
            if e == 1 {
                return nth_eligible(set, ctx, 0);
            }
            let (i, j) = self.two_distinct(e);
            (nth_eligible(set, ctx, i)?, nth_eligible(set, ctx, j)?)
        };
        let ca = cost(&set.endpoints[a].stats, now_ns, self.decay);
        let cb = cost(&set.endpoints[b].stats, now_ns, self.decay);
        Some(if cb < ca { b } else { a })
    }

    /// Two distinct numbers in `0..n`, `n >= 2`, uniformly.
    fn two_distinct(&self, n: usize) -> (usize, usize) {
        let mut rng = self.rng.stream();
        let i = rng.below(n);
        let mut j = rng.below(n - 1);
        if j >= i {
            j += 1;
        }
        (i, j)
    }
}

impl Balancer for P2cEwma {
    fn pick(&self, set: &EndpointSet, ctx: &PickContext<'_>) -> Option<usize> {
        self.pick_at(set, ctx, now_ns())
    }

    fn kind(&self) -> BalancerKind {
        BalancerKind::P2cEwma
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_util::{counts, set};

    const MS: Duration = Duration::from_millis(1);
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn unmeasured_costs_the_default() {
        let s = EndpointStats::default();
        assert_eq!(estimate_ns(&s, 5 * SEC, DEFAULT_DECAY), 1e6);
        s.active.store(3, Ordering::Relaxed);
        assert_eq!(cost(&s, 5 * SEC, DEFAULT_DECAY), 4e6);
    }

    #[test]
    fn peak_replaces_and_lower_samples_decay_in() {
        let s = EndpointStats::default();
        observe(&s, 2 * MS, SEC, DEFAULT_DECAY);
        assert_eq!(estimate_ns(&s, SEC, DEFAULT_DECAY), 2e6);
        // A higher sample replaces the estimate at once.
        observe(&s, 50 * MS, 2 * SEC, DEFAULT_DECAY);
        assert_eq!(estimate_ns(&s, 2 * SEC, DEFAULT_DECAY), 50e6);
        // A lower one one decay later keeps e^-1 of the old estimate.
        observe(&s, 10 * MS, 12 * SEC, DEFAULT_DECAY);
        let w = (-1.0f64).exp();
        let expected = 50e6 * w + 10e6 * (1.0 - w);
        assert!((estimate_ns(&s, 12 * SEC, DEFAULT_DECAY) - expected).abs() < 1.0);
        // Same instant: the old estimate keeps all its weight.
        observe(&s, MS, 12 * SEC, DEFAULT_DECAY);
        assert!((estimate_ns(&s, 12 * SEC, DEFAULT_DECAY) - expected).abs() < 1.0);
    }

    #[test]
    fn slow_endpoint_gets_far_fewer_picks() {
        let s = set(4);
        let now = 100 * SEC;
        observe(&s.endpoints[0].stats, 50 * MS, now, DEFAULT_DECAY);
        for ep in &s.endpoints[1..] {
            observe(&ep.stats, MS, now, DEFAULT_DECAY);
        }
        let p = P2cEwma::with_seed(1);
        let c = counts(4, 10_000, || p.pick_at(&s, &PickContext::default(), now));
        // Two distinct choices: the slowest never wins.
        assert_eq!(c[0], 0, "{c:?}");
        for n in &c[1..] {
            assert!((3_000..=3_700).contains(n), "{c:?}");
        }
    }

    #[test]
    fn busy_endpoint_loses_to_an_idle_one() {
        let s = set(2);
        s.endpoints[0].stats.active.store(3, Ordering::Relaxed);
        let p = P2cEwma::with_seed(2);
        for _ in 0..20 {
            assert_eq!(p.pick_at(&s, &PickContext::default(), SEC), Some(1));
        }
    }

    #[test]
    fn slow_once_recovers_without_samples() {
        let s = set(2);
        let (slow, steady) = (&s.endpoints[0].stats, &s.endpoints[1].stats);
        let p = P2cEwma::with_seed(3);
        let ctx = PickContext::default();
        let t0 = 10 * SEC;
        observe(slow, 200 * MS, t0, DEFAULT_DECAY);
        observe(steady, 2 * MS, t0, DEFAULT_DECAY);
        assert_eq!(p.pick_at(&s, &ctx, t0), Some(1));
        // One decay later (the slow one got no samples, the steady one keeps
        // reporting 2 ms) the slow one still costs ~74 ms and still loses.
        let mid = t0 + DEFAULT_DECAY.as_secs() * SEC;
        observe(steady, 2 * MS, mid, DEFAULT_DECAY);
        assert!(estimate_ns(slow, mid, DEFAULT_DECAY) > 70e6);
        assert_eq!(p.pick_at(&s, &ctx, mid), Some(1));
        // Ten decays later its estimate is back within 1% of the default,
        // below the steady one's 2 ms: it takes requests again.
        let later = t0 + 10 * DEFAULT_DECAY.as_secs() * SEC;
        observe(steady, 2 * MS, later, DEFAULT_DECAY);
        let est = estimate_ns(slow, later, DEFAULT_DECAY);
        assert!((est - 1e6).abs() < 0.01e6, "{est}");
        assert_eq!(p.pick_at(&s, &ctx, later), Some(0));
    }

    #[test]
    fn single_and_avoided() {
        let mut s = set(3);
        s.available = vec![2];
        let p = P2cEwma::with_seed(4);
        assert_eq!(p.pick_at(&s, &PickContext::default(), SEC), Some(2));
        s.available = vec![0, 1, 2];
        // The cheapest was tried already: the other two compete.
        observe(&s.endpoints[0].stats, 5 * MS, SEC, DEFAULT_DECAY);
        observe(&s.endpoints[1].stats, 9 * MS, SEC, DEFAULT_DECAY);
        observe(&s.endpoints[2].stats, MS, SEC, DEFAULT_DECAY);
        let tried = [s.endpoints[2].clone()];
        let ctx = PickContext { hash: None, avoid: &tried };
        for _ in 0..20 {
            assert_eq!(p.pick_at(&s, &ctx, SEC), Some(0));
        }
    }

    #[test]
    fn same_seed_same_choices() {
        let s = set(10);
        let (a, b) = (P2cEwma::with_seed(5), P2cEwma::with_seed(5));
        for _ in 0..100 {
            assert_eq!(a.pick_at(&s, &PickContext::default(), SEC), b.pick_at(&s, &PickContext::default(), SEC));
        }
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
