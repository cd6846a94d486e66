//! `Balancer::pick` of every strategy over 10, 100 and 1,000 endpoints: the
//! cost the request path pays to choose an endpoint.
//!
//! `cargo bench --bench balancer_pick`
//!
//! Endpoints have weights 1..=5 and are all available and idle (for
//! least_connections that is the worst case: every endpoint ties). Keys for
//! consistent_hash cycle through 1,024 precomputed hashes. The `*_stale`
//! cases pick from a set the balancer was not updated for: the fallback
//! paths (stride order for weighted round robin, rendezvous for the ring).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use waygate::balancer::{
    hash_bytes, p2c_ewma, Balancer, ConsistentHash, LeastConnections, P2cEwma, PickContext, Random, RoundRobin,
    WeightedRoundRobin,
};
use waygate::registry::{Endpoint, EndpointSet, Source};

fn endpoints(n: usize) -> EndpointSet {
    let eps = (0..n)
        .map(|i| {
            let address = format!("10.0.{}.{}:8080", i / 256, i % 256);
            Arc::new(Endpoint::new(&address, &address, (i % 5) as u32 + 1, Source::Static).unwrap())
        })
        .collect();
    EndpointSet::all_available(eps)
}

fn bench_pick(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, set: &EndpointSet, b: &dyn Balancer, keys: &[u64]) {
    group.bench_with_input(BenchmarkId::new(name, set.endpoints.len()), set, |bench, set| {
        let mut k = 0;
        bench.iter(|| {
            k = (k + 1) % keys.len();
            let ctx = PickContext { hash: Some(keys[k]), avoid: &[] };
            black_box(b.pick(black_box(set), &ctx))
        })
    });
}

fn pick(c: &mut Criterion) {
    let keys: Vec<u64> = (0..1024).map(|k| hash_bytes(format!("user-{k}").as_bytes())).collect();
    let mut group = c.benchmark_group("pick");
    for n in [10, 100, 1_000] {
        let set = endpoints(n);
        // Latency estimates for p2c_ewma: 1..=20 ms, measured just now.
        let now = p2c_ewma::now_ns();
        for (i, ep) in set.endpoints.iter().enumerate() {
            let rtt = Duration::from_millis(1 + (i % 20) as u64);
            p2c_ewma::observe(&ep.stats, rtt, now, p2c_ewma::DEFAULT_DECAY);
        }
        let strategies: [(&str, Box<dyn Balancer>); 6] = [
            ("round_robin", Box::new(RoundRobin::new())),
            ("weighted_round_robin", Box::new(WeightedRoundRobin::new())),
            ("random", Box::new(Random::with_seed(1))),
            ("least_connections", Box::new(LeastConnections::with_seed(1))),
            ("p2c_ewma", Box::new(P2cEwma::with_seed(1))),
            ("consistent_hash", Box::new(ConsistentHash::new())),
        ];
        for (name, b) in &strategies {
            b.update(&set);
            bench_pick(&mut group, name, &set, b.as_ref(), &keys);
        }
        // Not updated for this set: the fallbacks.
        let stale: [(&str, Box<dyn Balancer>); 2] = [
            ("weighted_round_robin_stale", Box::new(WeightedRoundRobin::new())),
            ("consistent_hash_stale", Box::new(ConsistentHash::new())),
        ];
        for (name, b) in &stale {
            bench_pick(&mut group, name, &set, b.as_ref(), &keys);
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
