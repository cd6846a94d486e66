//! The per-worker upstream connection pool against raw TCP upstreams whose
//! connection handling the test controls byte by byte: idle connections the
//! upstream closes fail no request; a response body
//! abandoned half-way closes its connection; an answer that comes before the
//! request body was sent does not make the next request wait; bodiless
//! answers (HEAD, 204) and answers with trailers keep their connection; and
//! CONNECT is refused.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Reads one request head (not its body); None at EOF.
async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// A raw upstream: `serve` runs for each accepted connection; the count of
/// accepted connections is shared.
async fn raw_upstream<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, accepted)
}

fn config(addr: &str) -> String {
    service_toml("svc", &[addr.to_string()], "request_timeout = \"2s\"") + &route_toml("/", "svc", "")
}

#[tokio::test]
async fn requests_succeed_when_the_upstream_closes_idle_connections() {
    // Answers one request with keep-alive semantics (no `Connection:
    // close`), then hangs up, as an upstream whose idle timeout fired would.
    // The pool skips a connection it sees closed, or resends a request the
    // closing connection never took; either way no request fails.
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let (addr, accepted) = raw_upstream(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            if read_head(&mut s).await.is_some() {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            }
            drop(s);
            let _ = closed_tx.send(());
        }
    })
    .await;
    let gw = TestGateway::start(&config(&addr)).await;
    const N: usize = 5;
    for i in 0..N {
        let r = gw.get(&format!("/x/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
        // The next request goes out only once this connection is closed.
        within(Duration::from_secs(5), "upstream hangs up", closed.recv()).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), N, "one fresh connection per request");
}

#[tokio::test]
async fn an_abandoned_response_body_does_not_return_its_connection() {
    // The first connection promises 1 MB and sends 10 bytes, then waits; the
    // others answer in full.
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let (addr, accepted) = raw_upstream(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            static FIRST: AtomicUsize = AtomicUsize::new(0);
            let first = FIRST.fetch_add(1, Ordering::SeqCst) == 0;
            while read_head(&mut s).await.is_some() {
                if first {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n0123456789").await;
                    let mut rest = [0u8; 1];
                    let _ = s.read(&mut rest).await; // until the gateway closes it
                    let _ = closed_tx.send(());
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfull").await;
            }
        }
    })
    .await;
    let gw = TestGateway::start(&config(&addr)).await;
    let resp = gw.send(Request::get("/big").body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    drop(resp); // the client walks away mid-body
    within(Duration::from_secs(5), "the half-read upstream connection is closed", closed.recv()).await;
    for i in 0..3 {
        let r = gw.get(&format!("/small/{i}")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "full"), "request {i}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the half-read connection was not reused");
}

#[tokio::test]
async fn bodiless_answers_keep_their_connection() {
    let (addr, accepted) = raw_upstream(|mut s| async move {
        let mut n = 0;
        while read_head(&mut s).await.is_some() {
            n += 1;
            let answer: &[u8] = if n % 2 == 1 {
                b"HTTP/1.1 204 No Content\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" // to a HEAD: no body follows
            };
            let _ = s.write_all(answer).await;
        }
    })
    .await;
    let gw = TestGateway::start(&config(&addr)).await;
    for i in 0..10 {
        let req = if i % 2 == 0 { Request::get("/nothing") } else { Request::head("/head") };
        let r = gw.request(req.body(empty()).unwrap()).await;
        assert_eq!(r.status.as_u16(), if i % 2 == 0 { 204 } else { 200 }, "request {i}");
        assert!(r.body.is_empty());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "ten bodiless answers over one connection");
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_does_not_hold_up_the_next_request() {
    // POSTs get a 413 before their body is read (the upload then runs on);
    // anything else gets a 200.
    let (addr, accepted) = raw_upstream(|mut s| async move {
        while let Some(head) = read_head(&mut s).await {
            if head.starts_with(b"POST") {
                let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await;
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        }
    })
    .await;
    // One worker, so both requests share one pool.
    let gw = TestGateway::start_with("worker_threads = 1", &config(&addr)).await;
    let (tx, body) = ChannelBody::new(4);
    tx.send(bytes::Bytes::from_static(b"first chunk")).await.unwrap();
    let req = Request::post("/upload").header("transfer-encoding", "chunked").body(body.boxed_body()).unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.status(), 413);
    let _ = Resp::collect(resp).await;
    // The upload is still open (tx alive): its connection must not be the
    // one the next request waits on (that would end in a 504 after 2 s).
    let r = gw.get("/other").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(tx);
}

#[tokio::test]
async fn answers_with_trailers_keep_their_connection() {
    let (addr, accepted) = raw_upstream(|mut s| async move {
        while read_head(&mut s).await.is_some() {
            let answer =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n";
            let _ = s.write_all(answer).await;
        }
    })
    .await;
    let gw = TestGateway::start_with("worker_threads = 1", &config(&addr)).await;
    for i in 0..5 {
        let r = gw.request(Request::get(format!("/t/{i}")).header("te", "trailers").body(empty()).unwrap()).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "five answers with trailers over one connection");
}

#[tokio::test]
async fn connect_is_refused_with_a_json_400() {
    let (addr, accepted) = raw_upstream(|_| async {}).await;
    let gw = TestGateway::start(&config(&addr)).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains("bad_request") {
        let n = within(Duration::from_secs(5), "CONNECT answer", s.read(&mut buf)).await.unwrap();
        assert!(n > 0, "connection closed without an answer: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    assert!(out.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing went upstream");
    // The gateway goes on serving.
    assert_eq!(gw.get("/x").await.status.as_u16(), 502);
}
