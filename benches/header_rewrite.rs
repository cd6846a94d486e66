//! The header work the request path does on every proxied request (SPEC §3):
//! request id, hop-by-hop removal, X-Forwarded-*, traceparent, on a header
//! map shaped like a browser's request (the map is cloned per iteration, as
//! hyper hands the proxy a fresh one per request; the clone is measured
//! alone for reference).
//!
//! `cargo bench --bench header_rewrite`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use waygate::proxy::headers;

fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        ("cookie", "session=4bf92f3577b34da6a3ce929d0e0e4736; theme=dark"),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let base = browser_request();
    let client = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let mut g = c.benchmark_group("header_rewrite");
    g.bench_function("clone_only", |b| b.iter(|| black_box(base.clone())));
    g.bench_function("request", |b| {
        b.iter(|| {
            let mut h = base.clone();
            let mut added = headers::Added::new(&h);
            let id = headers::ensure_request_id(&mut h, &mut added);
            let host = h.get(http::header::HOST).cloned();
            headers::remove_hop_by_hop(&mut h, false);
            headers::set_forwarded(&mut h, &mut added, client, false, host.as_ref());
            let trace = headers::propagate_traceparent(&mut h, &mut added);
            black_box((h, added, id, trace))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
