//! What one access-log event costs on the request path with `--log-format
//! json`: the `tracing` dispatch through the gateway's real subscriber
//! (EnvFilter, the filtered generic JSON layer, the hand-written access
//! layer) and the line's copy into the thread's batch buffer. The batches are
//! written to a sink by the writer thread, as they would be to stderr.
//!
//! `cargo bench --bench access_log`

use criterion::{criterion_group, criterion_main, Criterion};
use waygate::telemetry::{self, Access, LogFormat};

fn bench(c: &mut Criterion) {
    let (dispatch, _guard) =
        telemetry::subscriber(LogFormat::Json, tracing_subscriber::EnvFilter::new("info"), Box::new(std::io::sink()));
    let record = Access {
        method: "GET",
        path: "/api/users/42",
        route: "/api",
        service: "users",
        endpoint: "127.0.0.1:3001",
        status: 200,
        duration_ms: 1.234567,
        bytes_in: 0,
        bytes_out: 1832,
        body_error: false,
        request_id: "c2298a57164d14e89905a63e455948df",
        trace_id: "4dafcfca602716dd8ff9d42f8442a1ed",
    };
    tracing::dispatcher::with_default(&dispatch, || {
        c.bench_function("access_log/json_event", |b| b.iter(|| std::hint::black_box(&record).emit()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
