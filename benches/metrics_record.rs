//! What recording one request costs in metrics: the route's status counter
//! and duration histogram, and the endpoint's outcome counter — the work the
//! request path does per request for `/metrics`.
//!
//! `cargo bench --bench metrics_record`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use waygate::health::Outcome;
use waygate::metrics::Metrics;

fn bench(c: &mut Criterion) {
    let m = Metrics::new();
    let route = m.route("/api/users", "users");
    let endpoint = m.endpoint("users", "127.0.0.1:3001");
    route.record(&Method::GET, 200, 0.001); // the first sight of a status makes its handle
    c.bench_function("metrics_record/request", |b| {
        b.iter(|| {
            route.record(black_box(&Method::GET), black_box(200), black_box(0.0012));
            endpoint.record(black_box(Outcome::Success));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
