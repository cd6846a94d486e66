//! Heap allocations per proxied request, counted with a counting global
//! allocator: N keep-alive GETs straight to an in-process upstream, then N
//! through an in-process gateway to the same upstream; the difference per
//! request is the gateway's own cost (both runs include the client and the
//! upstream, which cancel out).
//!
//! `cargo bench --bench alloc_count`

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: u64 = 20_000;

async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello from upstream\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

/// Allocations per request for N sequential keep-alive GETs to `url`.
async fn per_request(url: &str) -> f64 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = url.parse().unwrap();
    for _ in 0..200 {
        let r = client.get(uri.clone()).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..N {
        let r = client.get(uri.clone()).await.unwrap();
        assert!(r.status().is_success());
        r.into_body().collect().await.unwrap();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

fn main() {
    // One worker thread: the same thread runs client, gateway and upstream,
    // so nothing else allocates meanwhile.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let up = upstream().await;
        let direct = per_request(&format!("http://{up}/x")).await;
        let config = waygate::Config::parse(
            &format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
                 [[services]]\nname = \"bench\"\nendpoints = [\"{up}\"]\n\n\
                 [services.outlier_detection]\n\n[services.circuit_breaker]\n\n\
                 [[routes]]\npath_prefix = \"/\"\nservice = \"bench\"\n"
            ),
            "bench.toml",
        )
        .unwrap();
        let gw = waygate::Gateway::start(config).await.unwrap();
        let via = per_request(&format!("http://{}/x", gw.proxy_addr())).await;
        println!("allocations per request: direct {direct:.1}, through waygate {via:.1}");
        println!("waygate's own allocations per proxied request: {:.1}", via - direct);
        println!("(access log off: no tracing subscriber is installed in this bench)");
    });
}
