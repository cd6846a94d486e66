//! Route matching over a table of 1,000 routes (and 10 for contrast):
//! the cost the request path pays to find its route.
//!
//! `cargo bench --bench route_match`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use waygate::proxy::router::Router;

/// `n` routes shaped like a real API: /api/v{1,2}/<resource>/<sub>, a few
/// host-specific ones, some with method filters.
fn table(n: usize) -> Router<usize> {
    let mut r = Router::new();
    r.insert(None, "/", None, 0);
    for i in 1..n {
        let prefix = format!("/api/v{}/resource{}/sub{}", i % 2 + 1, i / 10, i % 10);
        match i % 7 {
            0 => r.insert(Some("api.example.com"), &prefix, None, i),
            3 => r.insert(None, &prefix, Some(&[Method::GET, Method::HEAD]), i),
            _ => r.insert(None, &prefix, None, i),
        }
    }
    r
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000] {
        let r = table(n);
        let hit = format!("/api/v2/resource{}/sub{}/items/42?x=1", (n - 1) / 10, (n - 1) % 10);
        g.bench_with_input(BenchmarkId::new("deep_hit", n), &hit, |b, path| {
            b.iter(|| r.find(black_box(Some("www.example.com")), black_box(path), &Method::GET).map(|m| *m.value))
        });
        g.bench_with_input(BenchmarkId::new("fallback_root", n), &"/static/app.js", |b, path| {
            b.iter(|| r.find(black_box(None), black_box(path), &Method::GET).map(|m| *m.value))
        });
        g.bench_with_input(BenchmarkId::new("host_route", n), &"/api/v2/resource0/sub7", |b, path| {
            b.iter(|| r.find(black_box(Some("API.example.com:443")), black_box(path), &Method::GET).map(|m| *m.value))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
