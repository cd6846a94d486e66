//! The gateway's hand-written HTTP/1.1 upstream client (`src/proxy/h1.rs`,
//! `src/proxy/client.rs`) against raw TCP upstreams that read the request
//! bytes and write exact response bytes, so every framing case of RFC 9112
//! can be produced on the wire:
//!
//! - response bodies: chunked (split across writes, large, with trailers),
//!   close-delimited, `Connection: close`, HTTP/1.0, Transfer-Encoding plus
//!   Content-Length, interim 1xx heads, HEAD / 204 / 304 without a body;
//! - keep-alive: which answers leave their connection reusable (counted as
//!   connections the upstream accepted), and that a pooled connection the
//!   upstream closed while idle fails no request;
//! - malformed answers (not HTTP, bad or conflicting Content-Length, closed
//!   before a byte, bad chunk size, short body): a SPEC §3 JSON 502 when no
//!   head was forwarded yet, a failed body otherwise, never a hang, and the
//!   broken connection is never pooled;
//! - request bodies as the upstream sees them: Content-Length, chunked, empty
//!   POST, GET, `Host`, and an upstream that answers before reading the body.
//!
//! The gateway runs one worker (`worker_threads = 1`) so that all requests
//! share one upstream pool and connection counts are exact. Every wait is
//! bounded; the only fixed pauses are the few milliseconds that split an
//! upstream's writes into separate segments.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Bound on any single step of a test (the gateway's request_timeout is 2 s).
const STEP: Duration = Duration::from_secs(5);

/// A plain keep-alive answer.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Splits writes into separate TCP segments (and separate reads at the gateway).
async fn pause() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

// ---------------------------------------------------------------------------
// Raw upstream
// ---------------------------------------------------------------------------

/// One request as a raw upstream read it off the wire.
#[derive(Debug, Clone)]
struct Wire {
    request_line: String,
    /// Names lowercased, in wire order.
    headers: Vec<(String, String)>,
    /// The body bytes as sent, framing included.
    raw_body: Vec<u8>,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl Wire {
    fn method(&self) -> &str {
        self.request_line.split(' ').next().unwrap_or("")
    }

    fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    /// Connections whose handler finished (its socket is closed by then).
    closed: AtomicUsize,
    requests: Mutex<Vec<Wire>>,
}

/// The upstream's end of one connection, with bytes read and not yet consumed.
struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
    stats: Arc<Stats>,
}

impl Peer {
    /// Reads more into `buf`; false at end of stream or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next `n` bytes (reading as needed); None at end of stream.
    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next line, CRLF included.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Some(self.buf.drain(..i + 2).collect());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads a request head (not its body) and records the request.
    async fn read_head(&mut self) -> Option<Wire> {
        let request_line = String::from_utf8(self.line().await?).unwrap().trim_end().to_string();
        let mut headers = Vec::new();
        loop {
            let line = String::from_utf8(self.line().await?).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let wire = Wire { request_line, headers, raw_body: Vec::new(), body: Vec::new() };
        self.stats.requests.lock().unwrap().push(wire.clone());
        Some(wire)
    }

    /// Reads a whole request, its body by its framing (Content-Length or
    /// chunked), and records it with its body.
    async fn read_request(&mut self) -> Option<Wire> {
        let mut wire = self.read_head().await?;
        if wire.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked")) {
            loop {
                let line = self.line().await?;
                wire.raw_body.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line);
                let size = text.trim_end().split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("bad chunk size {text:?}"));
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let line = self.line().await?;
                        wire.raw_body.extend_from_slice(&line);
                        if line == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let data = self.take(size + 2).await?;
                assert!(data.ends_with(b"\r\n"), "chunk data not followed by CRLF");
                wire.raw_body.extend_from_slice(&data);
                wire.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(len) = wire.header("content-length") {
            let data = self.take(len.parse().expect("numeric content-length")).await?;
            wire.raw_body = data.clone();
            wire.body = data;
        }
        self.stats.requests.lock().unwrap().last_mut().unwrap().clone_from(&wire);
        Some(wire)
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// Writes `parts` one by one with a short pause between them, so that
    /// the gateway reads them in separate pieces.
    async fn send_split(&mut self, parts: &[&[u8]]) {
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                pause().await;
            }
            self.send(part).await;
        }
    }

    /// Reads and discards `n` bytes; false at end of stream.
    async fn skip(&mut self, mut n: usize) -> bool {
        loop {
            let k = n.min(self.buf.len());
            self.buf.drain(..k);
            n -= k;
            if n == 0 {
                return true;
            }
            if !self.fill().await {
                return false;
            }
        }
    }

    /// Waits until the gateway closes the connection, discarding what it sends.
    async fn wait_closed(&mut self) {
        while self.fill().await {
            self.buf.clear();
        }
    }
}

/// A raw TCP upstream on 127.0.0.1:0: `serve` runs once per accepted connection.
struct RawUpstream {
    addr: String,
    stats: Arc<Stats>,
}

impl RawUpstream {
    async fn start<F, Fut>(serve: F) -> RawUpstream
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let served = serve(Peer { s, buf: Vec::new(), stats: st.clone() });
                let st = st.clone();
                tokio::spawn(async move {
                    served.await; // the Peer, and so the socket, is dropped here
                    st.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawUpstream { addr, stats }
    }

    /// An upstream answering every request on a connection with `answer(request)`.
    async fn answering(answer: fn(&Wire) -> &'static [u8]) -> RawUpstream {
        RawUpstream::start(move |mut p| async move {
            while let Some(req) = p.read_request().await {
                p.send(answer(&req)).await;
            }
        })
        .await
    }

    fn connections(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.stats.closed.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Wire> {
        self.stats.requests.lock().unwrap().clone()
    }

    fn last(&self) -> Wire {
        self.requests().pop().expect("the upstream received no request")
    }
}

/// A one-worker gateway routing everything to `up`.
async fn gateway(up: &RawUpstream) -> TestGateway {
    let body =
        service_toml("svc", std::slice::from_ref(&up.addr), "request_timeout = \"2s\"\nconnect_timeout = \"1s\"")
            + &route_toml("/", "svc", "");
    TestGateway::start_with("worker_threads = 1", &body).await
}

/// GETs `path` and reads the whole body, bounded: the status and body, or
/// what failed (no response at all, or a body that broke off).
async fn try_get(gw: &TestGateway, path: &str) -> Result<(u16, Bytes), String> {
    let req = Request::get(gw.url(path)).body(empty()).unwrap();
    let resp = within(STEP, path, gw.client.request(req)).await.map_err(|e| format!("no response: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = within(STEP, "the response body ends or fails", resp.into_body().collect())
        .await
        .map_err(|e| format!("{status} whose body failed: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// A broken answer reached the client as a failure it can see: a 502 JSON
/// (nothing forwarded yet) or a failed exchange (the head was forwarded,
/// then the response was cut off). A clean end would pass a truncated body
/// off as complete.
fn assert_failure_visible(outcome: Result<(u16, Bytes), String>) {
    match outcome {
        Ok((502, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON 502");
            assert_eq!(v["error"], "upstream_connect_error", "{v}");
        }
        Err(_) => {}
        Ok((status, body)) => panic!("a broken answer ended cleanly as {status} with {body:?}"),
    }
}

/// Sends `parts` to the gateway over a new TCP connection (a short pause
/// between parts) and reads one response: (head, body read by its Content-Length).
async fn raw_exchange(gw: &TestGateway, parts: &[&[u8]]) -> (String, Vec<u8>) {
    let mut s = within(STEP, "connect to the gateway", TcpStream::connect(gw.proxy)).await.unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            pause().await;
        }
        write_within(&mut s, part, STEP).await;
    }
    let (head, mut body) = support::read_head(&mut s, STEP).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
        .map(|(_, v)| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    if body.len() < len {
        body.extend(read_exact_within(&mut s, len - body.len(), STEP).await);
    }
    (head, body)
}

// ---------------------------------------------------------------------------
// Response framing and keep-alive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn chunked_answer_split_across_writes_is_dechunked_and_its_connection_reused() {
    // The head itself arrives in two pieces, and chunk-size lines, data and
    // CRLFs are cut at awkward places (with a chunk extension thrown in).
    let up = RawUpstream::start(|mut p| async move {
        while p.read_request().await.is_some() {
            p.send_split(&[
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-",
                b"encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n",
                b"7;ext=\"x\"\r\n, world\r",
                b"\n1",
                b"0\r\n0123456789abcdef\r\n",
                b"0\r\n",
                b"\r\n",
            ])
            .await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    for i in 0..2 {
        let r = gw.get(&format!("/chunked/{i}")).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), "hello, world0123456789abcdef", "request {i}: the exact de-chunked body");
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    assert_eq!(up.requests().len(), 2);
    assert_eq!(up.connections(), 1, "a chunked answer read to its end leaves the connection reusable");
}

#[tokio::test]
async fn large_chunked_answer_with_varied_chunk_sizes_is_exact() {
    // 1 MiB in chunks from 1 byte to 300 KB: beyond the gateway's initial
    // 8 KiB read buffer and its 256 KiB maximum.
    fn payload() -> Vec<u8> {
        (0..1 << 20).map(|i: usize| (i % 251) as u8).collect()
    }
    let up = RawUpstream::start(|mut p| async move {
        while p.read_request().await.is_some() {
            let data = payload();
            p.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
            let sizes = [1usize, 10, 4095, 8192, 65_536, 300_000, 7];
            let mut rest = &data[..];
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*size).min(rest.len());
                let mut chunk = format!("{n:X}\r\n").into_bytes();
                chunk.extend_from_slice(&rest[..n]);
                chunk.extend_from_slice(b"\r\n");
                p.send(&chunk).await;
                rest = &rest[n..];
            }
            p.send(b"0\r\n\r\n").await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    for i in 0..2 {
        let r = gw.get(&format!("/large/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1 << 20, "request {i}");
        assert!(r.body[..] == payload()[..], "request {i}: the body differs from what the upstream sent");
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn chunked_answer_with_trailers_keeps_its_body_and_connection() {
    // The trailer block is split as well. Whether trailers reach an HTTP/1.1
    // client is not asserted (it depends on `TE: trailers` and the server).
    let up = RawUpstream::start(|mut p| async move {
        while p.read_request().await.is_some() {
            p.send_split(&[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n4\r\nwxyz\r\n",
                b"3\r\n123\r\n0\r\nx-sum: ",
                b"7\r\nx-other: a\r\n",
                b"\r\n",
            ])
            .await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    let r = gw.request(Request::get("/t/0").header("te", "trailers").body(empty()).unwrap()).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "wxyz123"));
    let r = gw.get("/t/1").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "wxyz123"));
    assert_eq!(up.connections(), 1, "trailers end the body; the connection is reused");
}

#[tokio::test]
async fn close_delimited_answer_is_read_to_the_close_and_not_reused() {
    // No Content-Length, no Transfer-Encoding: the body ends when the
    // upstream closes (RFC 9112 §6.3 rule 8), so the connection is spent.
    let up = RawUpstream::start(|mut p| async move {
        if p.read_request().await.is_some() {
            p.send_split(&[b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst ", b"second ", b"third"]).await;
        }
        // Returning drops the socket: that close is the end of the body.
    })
    .await;
    let gw = gateway(&up).await;
    for i in 0..2 {
        let r = gw.get(&format!("/until-close/{i}")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "first second third"), "request {i}");
    }
    assert_eq!(up.connections(), 2, "each close-delimited answer used a connection of its own");
}

/// An upstream that answers `answer` on every connection and then keeps the
/// connection open: the gateway must close it itself (reported on the
/// returned channel) rather than pool it.
async fn answer_then_linger(answer: &'static [u8]) -> (RawUpstream, mpsc::UnboundedReceiver<()>) {
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut p| {
        let closed_tx = closed_tx.clone();
        async move {
            if p.read_request().await.is_some() {
                p.send(answer).await;
                p.wait_closed().await;
                let _ = closed_tx.send(());
            }
        }
    })
    .await;
    (up, closed_rx)
}

/// `answer` leaves its connection unusable: the client gets `body` both
/// times, the gateway closes each connection, and the second request opens
/// a new one.
async fn answer_is_not_reused(answer: &'static [u8], body: &str) {
    let (up, mut closed) = answer_then_linger(answer).await;
    let gw = gateway(&up).await;
    for i in 0..2 {
        let r = gw.get(&format!("/once/{i}")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, body), "request {i}");
        within(STEP, "the gateway closes the connection it must not reuse", closed.recv()).await;
    }
    assert_eq!(up.connections(), 2, "the second request used a new connection");
}

#[tokio::test]
async fn connection_close_answer_is_not_reused() {
    answer_is_not_reused(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello", "hello").await;
}

#[tokio::test]
async fn http_1_0_answer_without_keep_alive_is_not_reused() {
    answer_is_not_reused(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello", "hello").await;
}

#[tokio::test]
async fn chunked_answer_that_also_has_a_content_length_is_read_chunked_and_not_reused() {
    // RFC 9112 §6.3: Transfer-Encoding wins; the pair smells of smuggling,
    // so the connection is closed afterwards.
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    answer_is_not_reused(answer, "hello").await;
}

#[tokio::test]
async fn interim_1xx_answers_are_skipped_for_the_final_one() {
    let up = RawUpstream::start(|mut p| async move {
        while p.read_request().await.is_some() {
            p.send_split(&[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n",
                b"content-length: 4\r\n\r\ndone",
            ])
            .await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    for i in 0..2 {
        let r = gw.request(Request::post(format!("/continue/{i}")).body(full("data")).unwrap()).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "done"), "request {i}");
        assert_eq!(r.header("link"), None, "an interim head's fields are not the final answer's");
    }
    assert_eq!(up.last().body, b"data");
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn head_answer_with_a_content_length_has_no_body_and_keeps_the_connection() {
    let up = RawUpstream::answering(|req| match req.method() {
        // The length of the body a GET would get; none follows.
        "HEAD" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        _ => OK,
    })
    .await;
    let gw = gateway(&up).await;
    let r = gw.request(Request::head("/h").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("100"), "HEAD keeps the GET's Content-Length");
    // Were the gateway waiting for 100 body bytes, this would get none of its own.
    let r = gw.get("/after-head").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    let r = gw.request(Request::head("/h").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.connections(), 1, "HEAD answers leave the connection reusable");
}

#[tokio::test]
async fn answers_204_and_304_have_no_body_and_keep_the_connection() {
    let up = RawUpstream::answering(|req| match req.path() {
        "/204" => b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n",
        // A 304's Content-Length describes the cached representation, not a body.
        "/304" => b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 10\r\n\r\n",
        _ => OK,
    })
    .await;
    let gw = gateway(&up).await;
    for round in 0..2 {
        let r = gw.get("/204").await;
        assert_eq!(r.status, 204, "round {round}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("x-a"), Some("1"));
        let r = gw.request(Request::get("/304").header("if-none-match", "\"v1\"").body(empty()).unwrap()).await;
        assert_eq!(r.status, 304, "round {round}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some("\"v1\""));
        let r = gw.get("/ok").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "round {round}");
    }
    assert_eq!(up.connections(), 1, "six answers, bodiless ones among them, over one connection");
}

#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_while_idle_is_not_used() {
    // Keep-alive answer, then the upstream hangs up (its idle timeout, say).
    let up = RawUpstream::start(|mut p| async move {
        if p.read_request().await.is_some() {
            p.send(OK).await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    let r = gw.get("/first").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    // Only once the upstream's end is closed does the next request go out:
    // the pooled connection must be seen closed (or the request resent).
    eventually(STEP, "the upstream closed its end of the first connection", || async { up.closed() == 1 }).await;
    let r = gw.get("/second").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "the stale pooled connection failed a request");
    assert_eq!(up.connections(), 2);
    assert_eq!(up.requests().len(), 2);
}

// ---------------------------------------------------------------------------
// Malformed and broken answers
// ---------------------------------------------------------------------------

/// `answer` to `/bad` is not HTTP the gateway can forward: the client gets
/// the SPEC's 502 JSON, the gateway closes that connection (the upstream
/// keeps it open) and the next request works on a new one.
async fn malformed_answer_is_a_502(answer: &'static [u8]) {
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut p| {
        let closed_tx = closed_tx.clone();
        async move {
            while let Some(req) = p.read_request().await {
                if req.path() == "/bad" {
                    p.send(answer).await;
                    p.wait_closed().await;
                    let _ = closed_tx.send(());
                    return;
                }
                p.send(OK).await;
            }
        }
    })
    .await;
    let gw = gateway(&up).await;
    let r = gw.get("/bad").await;
    let v = assert_gateway_error(&r, 502, "upstream_connect_error");
    assert!(v["message"].as_str().unwrap().contains(&up.addr), "the message names the endpoint: {v}");
    within(STEP, "the gateway closes the connection that answered garbage", closed.recv()).await;
    let r = gw.get("/good").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn garbage_instead_of_a_status_line_is_502() {
    malformed_answer_is_a_502(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
}

#[tokio::test]
async fn non_numeric_status_code_is_502() {
    malformed_answer_is_a_502(b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok").await;
}

#[tokio::test]
async fn non_numeric_content_length_is_502() {
    malformed_answer_is_a_502(b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nabc").await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_502() {
    malformed_answer_is_a_502(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!").await;
}

#[tokio::test]
async fn upstream_closing_before_any_byte_is_502() {
    let up = RawUpstream::start(|mut p| async move {
        while let Some(req) = p.read_request().await {
            if req.path() == "/bad" {
                return; // hangs up without a byte
            }
            p.send(OK).await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    let r = gw.get("/bad").await;
    let v = assert_gateway_error(&r, 502, "upstream_connect_error");
    assert!(v["message"].as_str().unwrap().contains(&up.addr), "{v}");
    let r = gw.get("/good").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn invalid_chunk_size_fails_the_answer() {
    // The head is valid, so it may be forwarded before the bad chunk-size
    // line arrives (it comes in a later write): then the client's body must
    // fail rather than end cleanly after "hello", which would pass a
    // truncated body off as complete.
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut p| {
        let closed_tx = closed_tx.clone();
        async move {
            while let Some(req) = p.read_request().await {
                if req.path() == "/bad" {
                    p.send_split(&[
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                        b"zz\r\nmore\r\n0\r\n\r\n",
                    ])
                    .await;
                    p.wait_closed().await;
                    let _ = closed_tx.send(());
                    return;
                }
                p.send(OK).await;
            }
        }
    })
    .await;
    let gw = gateway(&up).await;
    assert_failure_visible(try_get(&gw, "/bad").await);
    within(STEP, "the gateway closes the connection with the bad chunk", closed.recv()).await;
    let r = gw.get("/good").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn short_body_fails_the_answer_and_is_not_passed_off_as_complete() {
    // Content-Length: 10, four bytes, then the upstream hangs up: the client
    // must not get a clean answer (with or without the four bytes).
    let up = RawUpstream::start(|mut p| async move {
        while let Some(req) = p.read_request().await {
            if req.path() == "/short" {
                p.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd").await;
                return;
            }
            p.send(OK).await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    // hyper drops the buffered head when the body fails right after it, so
    // the client may see no response at all: a failure too.
    assert_failure_visible(try_get(&gw, "/short").await);
    let r = gw.get("/good").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.connections(), 2);
}

// ---------------------------------------------------------------------------
// Request bodies and the request head
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_length_body_arrives_byte_exact() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let r = gw.request(Request::post("/upload").body(full(data.clone())).unwrap()).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    let seen = up.last();
    assert_eq!(seen.request_line, "POST /upload HTTP/1.1");
    assert_eq!(seen.header("content-length"), Some("100000"));
    assert_eq!(seen.count("content-length"), 1);
    assert_eq!(seen.header("transfer-encoding"), None);
    assert!(seen.body == data, "the body arrived altered ({} bytes)", seen.body.len());
}

#[tokio::test]
async fn chunked_request_body_arrives_chunked_with_the_same_bytes() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    // Raw, so the gateway sees real chunked framing (a client's own chunk
    // boundaries and a chunk extension), sent in pieces.
    let (head, body) = raw_exchange(
        &gw,
        &[
            b"POST /chunked HTTP/1.1\r\nhost: chunked.example\r\ntransfer-encoding: chunked\r\n\r\n",
            b"6\r\nhello \r\n",
            b"5;x=y\r\nworld\r\n",
            b"1\r\n!\r\n0\r\n\r\n",
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let seen = up.last();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.header("content-length"), None, "chunked framing only");
    assert_eq!(seen.body, b"hello world!", "de-chunked at the upstream");
    assert!(seen.raw_body.ends_with(b"0\r\n\r\n"), "the last chunk ends the body: {:?}", seen.raw_body);
    assert_eq!(seen.header("host"), Some("chunked.example"), "Host is kept (SPEC §3)");
}

#[tokio::test]
async fn request_trailers_reach_the_upstream_without_framing_or_routing_fields() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    let (head, body) = raw_exchange(
        &gw,
        &[
            b"POST /trailers HTTP/1.1\r\nhost: t.example\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-checksum: abc\r\ncontent-length: 99\r\nhost: other.example\r\n\
              x-forwarded-for: 6.6.6.6\r\nx-request-id: spoof\r\n\r\n",
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let seen = up.last();
    assert_eq!(seen.body, b"hello");
    // A trailer that framed or routed the message, or spoofed what the
    // gateway vouches for, could be merged into the head by the upstream:
    // only the checksum travels.
    assert!(seen.raw_body.ends_with(b"0\r\nx-checksum: abc\r\n\r\n"), "{:?}", String::from_utf8_lossy(&seen.raw_body));
}

#[tokio::test]
async fn empty_post_says_content_length_0_and_get_has_no_framing() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;

    let r = gw.request(Request::post("/empty").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.method(), "POST");
    assert_eq!(seen.header("content-length"), Some("0"));
    assert_eq!(seen.header("transfer-encoding"), None);
    assert!(seen.raw_body.is_empty());

    let r = gw.get("/plain?q=1").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.request_line, "GET /plain?q=1 HTTP/1.1", "origin-form on the wire");
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(seen.header("transfer-encoding"), None);
    // The client's Host (the gateway's address, from the URL) is kept.
    assert_eq!(seen.header("host"), Some(gw.proxy.to_string().as_str()));
    assert_eq!(seen.count("host"), 1);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn http2_request_gets_its_authority_as_the_first_header_upstream() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    let tcp = within(STEP, "connect to the gateway", TcpStream::connect(gw.proxy)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let authority = format!("h2.example:{}", gw.proxy.port());
    let req = Request::get(format!("http://{authority}/h2")).header("x-first", "1").body(empty()).unwrap();
    let resp = within(STEP, "h2c GET", sender.send_request(req)).await.expect("h2c GET");
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.request_line, "GET /h2 HTTP/1.1");
    // RFC 9110 §7.2: a Host the proxy generates from :authority comes first.
    assert_eq!(seen.headers.first(), Some(&("host".to_string(), authority.clone())), "{:?}", seen.headers);
    assert_eq!(seen.count("host"), 1);
    assert_eq!(seen.header("x-first"), Some("1"));

    // A host header that names another host than :authority does not win
    // over it (the route was matched on :authority).
    let req = Request::get(format!("http://{authority}/h2b")).header("host", "other.example").body(empty()).unwrap();
    let resp = within(STEP, "h2c GET", sender.send_request(req)).await.expect("h2c GET");
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("host"), Some(authority.as_str()));
    assert_eq!(seen.count("host"), 1);
}

#[tokio::test]
async fn an_absolute_form_target_replaces_the_host_header_upstream() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    // RFC 9112 §3.2.2: the target's authority is the host (and the one the
    // route was matched on); a Host beside it is replaced.
    let (head, body) =
        raw_exchange(&gw, &[b"GET http://target.example:8080/abs?q=1 HTTP/1.1\r\nhost: other.example\r\n\r\n"]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let seen = up.last();
    assert_eq!(seen.request_line, "GET /abs?q=1 HTTP/1.1", "origin-form upstream");
    assert_eq!(seen.header("host"), Some("target.example:8080"));
    assert_eq!(seen.count("host"), 1);
    assert_eq!(seen.header("x-forwarded-host"), Some("target.example:8080"));
}

#[tokio::test]
async fn two_host_lines_are_refused_with_400_and_nothing_reaches_the_upstream() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    let (head, body) =
        raw_exchange(&gw, &[b"GET /two HTTP/1.1\r\nhost: a.example\r\nx-a: 1\r\nhost: b.example\r\n\r\n"]).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
    assert_eq!(v["error"], "bad_request", "{v}");
    assert!(v["request_id"].is_string(), "{v}");
    assert!(up.requests().is_empty(), "nothing was forwarded");
    // One Host line, with other repeated names, is served as usual.
    let (head, _) = raw_exchange(&gw, &[b"GET /one HTTP/1.1\r\nhost: a.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(up.last().header("host"), Some("a.example"));
}

#[tokio::test]
async fn request_without_host_gets_the_endpoint_authority_as_host() {
    let up = RawUpstream::answering(|_| OK).await;
    let gw = gateway(&up).await;
    // HTTP/1.0 may leave Host out; the upstream still needs one.
    let (head, body) = raw_exchange(&gw, &[b"GET /no-host HTTP/1.0\r\n\r\n"]).await;
    assert!(head.starts_with("HTTP/1."), "{head}");
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(body, b"ok");
    let seen = up.last();
    assert_eq!(seen.request_line, "GET /no-host HTTP/1.1", "upstream requests are HTTP/1.1");
    assert_eq!(seen.header("host"), Some(up.addr.as_str()), "the endpoint's authority");
    assert_eq!(seen.count("host"), 1);
}

#[tokio::test]
async fn early_answer_before_a_large_upload_is_delivered_and_the_gateway_goes_on() {
    // The upstream answers 413 as soon as it has the head of the 4 MiB
    // upload, then reads and discards the body (as servers do to keep the
    // connection) and goes on serving. The gateway may finish the upload and
    // reuse the connection, or abandon it and close the connection: either
    // way the client gets the 413 at once and the next request works.
    let up = RawUpstream::start(|mut p| async move {
        while let Some(req) = p.read_head().await {
            let len = req.header("content-length").map_or(0, |n| n.parse().unwrap());
            if req.path() == "/upload" {
                p.send(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 7\r\n\r\ntoo big").await;
                if !p.skip(len).await {
                    return; // the gateway abandoned the upload
                }
                continue;
            }
            if !p.skip(len).await {
                return;
            }
            p.send(OK).await;
        }
    })
    .await;
    let gw = gateway(&up).await;
    let req = Request::post("/upload").body(PatternBody::new(4 << 20).boxed_body()).unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.status(), 413, "the early answer reaches the client");
    let body = within(STEP, "the 413's body", resp.into_body().collect()).await;
    assert_eq!(&body.expect("the 413's body").to_bytes()[..], b"too big");
    // A fresh client: the gateway may close the connection whose request
    // body it did not read.
    let client = http_client();
    let next = within(STEP, "the next request", client.request(Request::get(gw.url("/next")).body(empty()).unwrap()))
        .await
        .expect("the next request");
    let r = within(STEP, "the next body", Resp::collect(next)).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert!(up.connections() <= 2, "{} upstream connections", up.connections());
}
