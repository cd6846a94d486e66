//! Bodies stream in both directions (SPEC §3, issue 2 item 7).
//!
//! In CI: 64 MiB up and down through an in-process gateway, checked byte for
//! byte against a deterministic pattern that neither side ever holds whole,
//! plus proofs that the first bytes cross the gateway before the last ones
//! exist. The 1 GiB case with the real binary and a memory ceiling is
//! `#[ignore]`d because it wants an optimised build; run it with
//!
//! ```text
//! cargo test --release --test streaming -- --ignored
//! ```

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::*;

const MIB: u64 = 1024 * 1024;

async fn setup() -> (TestGateway, Upstream) {
    let up = Upstream::start("bulk").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "request_timeout = \"60s\"")).await;
    (gw, up)
}

#[tokio::test]
async fn download_64_mib_streams_intact() {
    let (gw, _up) = setup().await;
    let n = 64 * MIB;
    let started = Instant::now();
    let resp = gw.send(Request::get(format!("/api/big/{n}")).body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-length").and_then(|v| v.to_str().ok()), Some(n.to_string().as_str()));
    let (len, ok) =
        within(Duration::from_secs(60), "64 MiB download", check_pattern_body(resp.into_body())).await.unwrap();
    assert_eq!(len, n);
    assert!(ok, "downloaded bytes differ from the pattern");
    eprintln!("64 MiB download took {:?}", started.elapsed());
}

#[tokio::test]
async fn upload_64_mib_streams_intact() {
    let (gw, up) = setup().await;
    let n = 64 * MIB;
    let started = Instant::now();
    let req = Request::post("/api/upload").body(PatternBody::new(n).boxed_body()).unwrap();
    let resp = gw.send(req).await;
    let r = within(Duration::from_secs(60), "64 MiB upload", Resp::collect(resp)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["body_len"], n);
    assert_eq!(v["pattern_ok"], true, "uploaded bytes differ from the pattern");
    assert_eq!(up.last().header("content-length"), Some(n.to_string().as_str()));
    eprintln!("64 MiB upload took {:?}", started.elapsed());
}

#[tokio::test]
async fn chunked_upload_and_echo_stream_both_ways_at_once() {
    let (gw, up) = setup().await;
    // No Content-Length: the client sends chunked.
    let n = 8 * MIB + 12_345;
    let r = gw.request(Request::post("/api/upload").body(PatternBody::chunked(n).boxed_body()).unwrap()).await;
    assert_eq!((r.json()["body_len"].as_u64(), r.json()["pattern_ok"].as_bool()), (Some(n), Some(true)));
    assert!(up.last().header("content-length").is_none());

    // The echo upstream sends back what it receives while it receives it.
    let n = 16 * MIB + 7;
    let resp = gw.send(Request::post("/api/echo").body(PatternBody::chunked(n).boxed_body()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    let (len, ok) = within(Duration::from_secs(60), "16 MiB echo", check_pattern_body(resp.into_body())).await.unwrap();
    assert_eq!((len, ok), (n, true));
}

#[tokio::test]
async fn response_bytes_reach_the_client_before_the_upstream_finishes() {
    let (gw, up) = setup().await;
    let resp = gw.send(Request::get("/api/gated").body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream sent its first chunk and now waits for `release`.
    let first = within(Duration::from_secs(5), "first chunk while the upstream holds the rest", body.frame())
        .await
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data frame");
    assert_eq!(&first[..], b"first-chunk;");
    up.release();
    let rest = within(Duration::from_secs(5), "rest of the body", body.collect()).await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"rest");
}

#[tokio::test]
async fn request_bytes_reach_the_upstream_before_the_client_finishes() {
    let (gw, up) = setup().await;
    let (tx, body) = ChannelBody::new(1);
    let client = gw.client.clone();
    let uri = gw.url("/api/upload");
    let pending =
        tokio::spawn(async move { client.request(Request::post(uri).body(body.boxed_body()).unwrap()).await });
    tx.send(Bytes::from(vec![1u8; 1024])).await.unwrap();
    eventually(Duration::from_secs(5), "the first KiB reaches the upstream while the client still sends", || async {
        up.body_bytes() >= 1024
    })
    .await;
    assert!(!pending.is_finished());
    tx.send(Bytes::from(vec![2u8; 1024])).await.unwrap();
    drop(tx);
    let resp = within(Duration::from_secs(5), "upload response", pending).await.unwrap().expect("upload");
    let r = Resp::collect(resp).await;
    assert_eq!(r.json()["body_len"], 2048);
}

/// 1 GiB down and 1 GiB up at the same time through the real binary; its
/// peak RSS (VmHWM) must stay under 64 MiB. Run with
/// `cargo test --release --test streaming -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1 GiB each way: run with `cargo test --release --test streaming -- --ignored`"]
async fn one_gib_each_way_keeps_the_binary_under_64_mib() {
    const GIB: u64 = 1024 * MIB;
    let up = Upstream::start("bulk").await;
    let config = gateway_toml("drain_timeout = \"5s\"", &simple_toml(&[&up], "request_timeout = \"600s\""));
    let mut bin = Binary::start(&config);
    let client = http_client();
    let started = Instant::now();

    let down = {
        let client = client.clone();
        let uri = format!("http://{}/api/big/{GIB}", bin.proxy);
        async move {
            let resp = client.request(Request::get(uri).body(empty()).unwrap()).await.expect("download");
            assert_eq!(resp.status(), 200);
            check_pattern_body(resp.into_body()).await.expect("download body")
        }
    };
    let upload = {
        let client = client.clone();
        let uri = format!("http://{}/api/upload", bin.proxy);
        async move {
            let resp = client
                .request(Request::post(uri).body(PatternBody::new(GIB).boxed_body()).unwrap())
                .await
                .expect("upload");
            Resp::collect(resp).await
        }
    };
    let ((len, ok), r) = within(Duration::from_secs(600), "1 GiB each way", async { tokio::join!(down, upload) }).await;
    assert_eq!((len, ok), (GIB, true), "download");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["body_len"].as_u64(), r.json()["pattern_ok"].as_bool()), (Some(GIB), Some(true)), "upload");

    let peak_kib = bin.peak_rss_kib();
    eprintln!(
        "1 GiB each way in {:?}; waygate peak RSS (VmHWM) {} KiB = {:.1} MiB",
        started.elapsed(),
        peak_kib,
        peak_kib as f64 / 1024.0
    );
    assert!(peak_kib < 64 * 1024, "waygate peak RSS {peak_kib} KiB is over 64 MiB");

    bin.wait_for_signal_handlers().await;
    send_signal(bin.pid(), "TERM");
    let status = bin.wait(Duration::from_secs(10)).expect("waygate exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", bin.log());
}
