//! Hostile clients (issue 2, item 8): request smuggling with both
//! `Content-Length` and `Transfer-Encoding`, oversized header blocks, garbage,
//! and slow clients cut off by `header_read_timeout`, while normal clients
//! keep being served.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HEADER_READ_TIMEOUT_MS: u64 = 300;
const T: Duration = Duration::from_secs(5);

async fn setup() -> (TestGateway, Upstream) {
    let up = Upstream::start("up").await;
    let extra = format!("header_read_timeout = \"{HEADER_READ_TIMEOUT_MS}ms\"");
    let gw = TestGateway::start_with(&extra, &simple_toml(&[&up], "")).await;
    (gw, up)
}

/// Sends `data` on a fresh connection (in the background, ignoring write
/// errors, so a server that answers and closes early cannot block us) and
/// returns what came back until the server closed.
async fn raw_exchange(gw: &TestGateway, data: Vec<u8>) -> (Vec<u8>, bool) {
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&data).await;
        wr // keep the write half open until the exchange is over
    });
    let out = read_to_close(&mut rd, T).await;
    drop(writer.await);
    out
}

/// A byte-by-byte sender: one byte every `every`, until the server closes
/// the connection or the bytes run out. Returns (bytes sent, time until the
/// server closed, whatever the server sent).
async fn trickle(gw: &TestGateway, bytes: &[u8], every: Duration) -> (usize, Option<Duration>, Vec<u8>) {
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tcp.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(every).await;
        }
        (sent, wr)
    });
    let limit = every * 40 + Duration::from_secs(2);
    let (got, closed) = read_to_close(&mut rd, limit).await;
    let closed_after = closed.then(|| started.elapsed());
    writer.abort();
    let sent = match writer.await {
        Ok((sent, _)) => sent,
        Err(_) => usize::MAX, // aborted mid-way: counted below by time instead
    };
    (sent, closed_after, got)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_second_request() {
    let (gw, up) = setup().await;
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (TE then CL) and (CL then TE); the CL covers the smuggled request for a
    // parser that believes it, the chunked framing ends before it.
    for te_first in [true, false] {
        let body = format!("0\r\n\r\n{smuggled}");
        let (a, b) = ("Transfer-Encoding: chunked\r\n".to_string(), format!("Content-Length: {}\r\n", body.len()));
        let (first, second) = if te_first { (a, b) } else { (b, a) };
        let req = format!("POST /api/a HTTP/1.1\r\nHost: x\r\n{first}{second}\r\n{body}");
        let before = up.count();
        let (resp, closed) = raw_exchange(&gw, req.into_bytes()).await;
        assert!(closed, "the connection is closed after a CL+TE request (te_first={te_first})");
        assert!(count_status_lines(&resp) <= 1, "at most one response: {}", text(&resp));
        if !resp.is_empty() {
            let t = text(&resp);
            assert!(t.starts_with("HTTP/1.1 400") || t.starts_with("HTTP/1.1 200"), "{t}");
        }
        let reqs = up.requests();
        assert!(
            reqs.iter().all(|r| !r.path.contains("smuggled")),
            "the smuggled request reached the upstream: {:?}",
            reqs.iter().map(|r| &r.uri).collect::<Vec<_>>()
        );
        assert!(up.count() - before <= 1, "never two upstream requests from one CL+TE request");
    }
}

/// Issue 2 item 8 says such a request "is refused". Hyper (RFC 9112 §6.3)
/// lets Transfer-Encoding win, drops Content-Length and closes the connection
/// afterwards; this checks the stricter reading: 400 and nothing upstream.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let (gw, up) = setup().await;
    let req = "POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (resp, closed) = raw_exchange(&gw, req.as_bytes().to_vec()).await;
    assert!(closed);
    assert!(text(&resp).starts_with("HTTP/1.1 400"), "{}", text(&resp));
    assert_eq!(up.count(), 0, "a CL+TE request reached the upstream");
}

#[tokio::test]
async fn ambiguous_framing_is_rejected_and_never_reaches_an_upstream() {
    let (gw, up) = setup().await;
    let cases = [
        // Two different Content-Lengths.
        "POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhelloGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        // A Transfer-Encoding that does not end in chunked.
        "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 3\r\n\r\nabc",
        // Whitespace before the colon (obfuscated header name).
        "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc",
    ];
    for case in cases {
        let (resp, closed) = raw_exchange(&gw, case.as_bytes().to_vec()).await;
        let t = text(&resp);
        assert!(closed, "connection closed for {case:?}");
        assert!(count_status_lines(&resp) <= 1, "{t}");
        assert!(t.is_empty() || t.starts_with("HTTP/1.1 400"), "{case:?} got {t}");
        assert!(up.requests().iter().all(|r| !r.path.contains("smuggled")), "{case:?}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.requests().iter().map(|r| &r.uri).collect::<Vec<_>>());
}

/// A request whose head is valid but whose chunked body is malformed: the
/// head may already be on its way upstream when the body fails, but the
/// fault is the client's, so the answer is a 400 (or a close), never a 502
/// `upstream_connect_error` (which blames, and later would eject, a healthy
/// endpoint).
#[tokio::test]
async fn malformed_client_body_is_not_blamed_on_the_upstream() {
    let (gw, _up) = setup().await;
    let req = "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let (resp, closed) = raw_exchange(&gw, req.as_bytes().to_vec()).await;
    let t = text(&resp);
    assert!(closed);
    assert!(t.is_empty() || t.starts_with("HTTP/1.1 400"), "got {t}");
}

fn head_with_padding(total_pad: usize) -> Vec<u8> {
    let mut head = b"GET /api/x HTTP/1.1\r\nHost: x\r\n".to_vec();
    let line = "a".repeat(1000);
    let mut i = 0;
    while i * 1000 < total_pad {
        head.extend_from_slice(format!("X-Pad-{i}: {line}\r\n").as_bytes());
        i += 1;
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[tokio::test]
async fn header_block_over_64_kib_is_431() {
    let (gw, up) = setup().await;
    let (resp, _) = raw_exchange(&gw, head_with_padding(70 * 1024)).await;
    let t = text(&resp);
    assert!(t.starts_with("HTTP/1.1 431"), "a 70 KiB head got: {t:?}");
    assert_eq!(up.count(), 0);

    // A large head under the limit is fine.
    let (resp, _) = raw_exchange(&gw, head_with_padding(40 * 1024)).await;
    let t = text(&resp);
    assert!(t.starts_with("HTTP/1.1 200"), "a 40 KiB head got: {}", t.lines().next().unwrap_or(""));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn garbage_gets_400_or_a_close() {
    let (gw, up) = setup().await;
    let cases: [&[u8]; 5] = [
        b"HELLO THERE\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\xfd\r\n\r\n",
        b"GET /api/x HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /api/\x7f\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for case in cases {
        let (resp, closed) = raw_exchange(&gw, case.to_vec()).await;
        let t = text(&resp);
        assert!(closed, "{case:?}: connection left open");
        assert!(t.is_empty() || t.starts_with("HTTP/1.1 400"), "{case:?} got {t:?}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn slow_header_sender_is_cut_off() {
    let (gw, up) = setup().await;
    let head = format!("GET /api/x HTTP/1.1\r\nHost: slow.example\r\nX-Slow: {}\r\n\r\n", "a".repeat(40));
    let (_, closed_after, got) = trickle(&gw, head.as_bytes(), Duration::from_millis(100)).await;
    let took = closed_after.expect("a client sending one byte per 100 ms is never cut off");
    let t = text(&got);
    assert!(t.is_empty() || t.starts_with("HTTP/1.1 408"), "{t:?}");
    cut_at_header_read_timeout(took);
    assert_eq!(up.count(), 0);
}

/// `took`, from the start of a wait for a request head to the close, is
/// header_read_timeout (with scheduling slack).
fn cut_at_header_read_timeout(took: Duration) {
    assert!(took >= Duration::from_millis(HEADER_READ_TIMEOUT_MS - 50), "cut too early: {took:?}");
    assert!(took < Duration::from_millis(HEADER_READ_TIMEOUT_MS + 700), "cut after {took:?}");
}

/// An idle keep-alive connection, just answered, is closed by the gateway
/// at header_read_timeout, without another byte.
async fn closed_at_header_read_timeout(tcp: &mut TcpStream) {
    let answered = Instant::now();
    let (rest, closed) = read_to_close(tcp, Duration::from_secs(3)).await;
    assert!(closed && rest.is_empty(), "open after 3 s, or sent {:?}", text(&rest));
    cut_at_header_read_timeout(answered.elapsed());
}

#[tokio::test]
async fn silent_client_is_cut_off() {
    let (gw, _up) = setup().await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_to_close(&mut tcp, Duration::from_secs(3)).await;
    assert!(closed, "a silent connection was still open after 3 s (header_read_timeout = {HEADER_READ_TIMEOUT_MS}ms)");
    assert!(started.elapsed() < Duration::from_millis(HEADER_READ_TIMEOUT_MS + 700));
}

/// One GET on an open keep-alive connection: the response's status line
/// and body.
async fn get_on(tcp: &mut TcpStream, path: &str) -> (String, Vec<u8>) {
    write_within(tcp, format!("GET {path} HTTP/1.1\r\nHost: ka.example\r\n\r\n").as_bytes(), T).await;
    let (head, mut body) = read_head(tcp, T).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("a Content-Length");
    if body.len() < len {
        let more = len - body.len();
        body.extend(read_exact_within(tcp, more, T).await);
    }
    assert_eq!(body.len(), len, "bytes after the response: {head}");
    (head.lines().next().unwrap_or_default().to_string(), body)
}

/// header_read_timeout also bounds the wait for a keep-alive connection's
/// next request, counted from the last response.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let (gw, up) = setup().await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (status, _) = get_on(&mut tcp, "/api/first").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    closed_at_header_read_timeout(&mut tcp).await;
    assert_eq!(up.count(), 1);
}

/// The connection's requests share one timer, armed for an earlier
/// request's deadline: when it fires, a connection whose current wait began
/// later must be kept, many timeouts over.
#[tokio::test]
async fn a_busy_keep_alive_connection_outlives_many_header_read_timeouts() {
    let (gw, up) = setup().await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let gap = Duration::from_millis(HEADER_READ_TIMEOUT_MS / 3);
    for i in 0..12 {
        let (status, _) = get_on(&mut tcp, &format!("/api/busy/{i}")).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "request {i} after {:?}", started.elapsed());
        tokio::time::sleep(gap).await;
    }
    assert!(started.elapsed() > Duration::from_millis(3 * HEADER_READ_TIMEOUT_MS));
    assert_eq!(up.connections(), 1, "one client connection, one upstream connection");
    assert_eq!(up.count(), 12);
}

/// header_read_timeout bounds request heads, not the answer: an upstream
/// slower than it is waited for (request_timeout bounds that), and the
/// connection stays usable after.
#[tokio::test]
async fn an_answer_slower_than_header_read_timeout_is_not_cut() {
    let (gw, up) = setup().await;
    up.set_mode(Mode::Slow(Duration::from_millis(2 * HEADER_READ_TIMEOUT_MS)));
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    let (status, _) = get_on(&mut tcp, "/api/slow").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(started.elapsed() >= Duration::from_millis(2 * HEADER_READ_TIMEOUT_MS));
    up.set_mode(Mode::Ok);
    let (status, _) = get_on(&mut tcp, "/api/after").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// The slow answer comes second on its connection, so the connection's
/// timer is armed for the header-read wait before it (hyper polled it while
/// the connection was idle) and fires while the answer is pending: that
/// firing must not cut the request.
#[tokio::test]
async fn a_slow_second_answer_is_not_cut_by_the_idle_wait_before_it() {
    let (gw, up) = setup().await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (status, _) = get_on(&mut tcp, "/api/fast").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    tokio::time::sleep(Duration::from_millis(50)).await; // hyper waits for the next head
    up.set_mode(Mode::Slow(Duration::from_millis(2 * HEADER_READ_TIMEOUT_MS)));
    let started = Instant::now();
    let (status, _) = get_on(&mut tcp, "/api/slow").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "after {:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(2 * HEADER_READ_TIMEOUT_MS));
}

/// After a few requests the connection's timer is still armed for an
/// earlier request's header-read deadline; when it fires it must re-arm for
/// the idle wait now in progress, which still ends at header_read_timeout.
#[tokio::test]
async fn an_idle_wait_after_earlier_requests_still_ends_at_header_read_timeout() {
    let (gw, _up) = setup().await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    for i in 0..2 {
        let (status, _) = get_on(&mut tcp, &format!("/api/warm/{i}")).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(HEADER_READ_TIMEOUT_MS / 3)).await;
    }
    let (status, _) = get_on(&mut tcp, "/api/last").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    closed_at_header_read_timeout(&mut tcp).await;
}

/// A response body that streams for longer than header_read_timeout and
/// request_timeout, with the client's next request already pipelined
/// behind it: neither deadline cuts it, and the next request is answered
/// after it.
#[tokio::test]
async fn a_long_body_with_a_pipelined_request_behind_it_is_not_cut() {
    use tokio::io::AsyncReadExt;
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = raw.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        for n in 0..2 {
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
            if n == 0 {
                // 10 chunks of 10 bytes, 100 ms apart: 1 s, beyond both deadlines.
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").await.unwrap();
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    s.write_all(b"0123456789").await.unwrap();
                }
            } else {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            }
        }
    });
    let extra = format!("header_read_timeout = \"{HEADER_READ_TIMEOUT_MS}ms\"");
    let body = service_toml("raw", &[addr.to_string()], "request_timeout = \"500ms\"")
        + &route_toml("/raw", "raw", "strip_prefix = true");
    let gw = TestGateway::start_with(&extra, &body).await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let started = Instant::now();
    write_within(&mut tcp, b"GET /raw/long HTTP/1.1\r\nHost: x\r\n\r\nGET /raw/next HTTP/1.1\r\nHost: x\r\n\r\n", T)
        .await;
    let (head, mut got) = read_head(&mut tcp, T).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The rest of the first body and all of the second answer.
    let second = b"ok";
    while !got.ends_with(second) || got.len() < 100 + second.len() {
        let more = within(T, "the rest of the answers", async {
            let mut b = [0u8; 4096];
            let n = tcp.read(&mut b).await.unwrap();
            b[..n].to_vec()
        })
        .await;
        assert!(!more.is_empty(), "closed after {} bytes: {:?}", got.len(), text(&got));
        got.extend(more);
    }
    assert_eq!(&got[..100], "0123456789".repeat(10).as_bytes());
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let rest = text(&got[100..]);
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.ends_with("\r\n\r\nok"), "{rest:?}");
}

#[tokio::test]
async fn slow_h2_preface_sender_is_cut_off() {
    let (gw, _up) = setup().await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let (_, closed_after, _) = trickle(&gw, preface, Duration::from_millis(100)).await;
    let took = closed_after.expect("the connection was never closed");
    assert!(
        took < Duration::from_millis(HEADER_READ_TIMEOUT_MS + 700),
        "a slow h2 preface kept the connection for {took:?}"
    );
}

#[tokio::test]
async fn normal_clients_are_served_during_attacks() {
    let (gw, up) = setup().await;
    let proxy = gw.proxy;
    let mut attackers = Vec::new();
    // Slow-header senders, silent connections, oversized heads, garbage and smuggling.
    for i in 0..40 {
        attackers.push(tokio::spawn(async move {
            let Ok(tcp) = TcpStream::connect(proxy).await else { return };
            let (mut rd, mut wr) = tcp.into_split();
            let payload: Vec<u8> = match i % 5 {
                0 => b"GET /api/x HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
                1 => Vec::new(),
                2 => head_with_padding(80 * 1024),
                3 => b"\x00\xffgarbage garbage\r\n\r\n".to_vec(),
                _ => b"POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            };
            let trickle = i % 5 == 0;
            let w = tokio::spawn(async move {
                for chunk in payload.chunks(if trickle { 1 } else { 16 * 1024 }) {
                    if wr.write_all(chunk).await.is_err() {
                        break;
                    }
                    if trickle {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                wr
            });
            let _ = read_to_close(&mut rd, Duration::from_secs(3)).await;
            w.abort();
        }));
    }
    // Meanwhile, a well-behaved client on fresh connections is served promptly.
    let client = http_client();
    for i in 0..20 {
        let started = Instant::now();
        let req = http::Request::get(gw.url(&format!("/api/normal/{i}"))).body(empty()).unwrap();
        let resp = within(Duration::from_secs(2), "a normal request during the attack", client.request(req))
            .await
            .expect("normal request");
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(1), "normal request {i} took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for a in attackers {
        within(Duration::from_secs(5), "attacker task", a).await.unwrap();
    }
    let normal = up.requests().iter().filter(|r| r.path.starts_with("/normal/")).count();
    assert_eq!(normal, 20);
    assert!(up.requests().iter().all(|r| !r.path.contains("smuggled")));
    // And after it all.
    assert_eq!(gw.get("/api/after").await.status, 200);
}
