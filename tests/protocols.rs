//! Protocols on the proxy listener (SPEC §2 `listen`, §3): HTTP/2 with prior
//! knowledge (h2c) proxied to HTTP/1.1 upstreams, TLS termination with ALPN
//! h2 and http/1.1, and `Upgrade` tunnels in both directions.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

async fn h2_sender<I>(io: I) -> http2::SendRequest<TestBody>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

async fn h1_sender<I>(io: I) -> http1::SendRequest<TestBody>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied_to_an_http1_upstream() {
    let up = Upstream::start("h1up").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "")).await;
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let mut sender = h2_sender(tcp).await;

    let authority = format!("h2.example.test:{}", gw.proxy.port());
    let req = Request::get(format!("http://{authority}/api/x?q=1")).body(empty()).unwrap();
    let resp = within(T, "h2c GET", sender.send_request(req)).await.expect("h2c GET");
    assert_eq!(resp.version(), Version::HTTP_2);
    let r = Resp::collect(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uri"], "/x?q=1");
    assert!(r.header("x-request-id").is_some());

    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11, "the upstream hop is HTTP/1.1");
    assert_eq!(seen.header("host"), Some(authority.as_str()), "Host comes from :authority");
    assert_eq!(seen.header("x-forwarded-host"), Some(authority.as_str()));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    // A body both ways, and many concurrent streams on the one connection.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let mut s = sender.clone();
        let uri = format!("http://{authority}/api/echo");
        tasks.push(tokio::spawn(async move {
            let body = PatternBody::new(10_000 + i).boxed_body();
            let resp = s.send_request(Request::post(uri).body(body).unwrap()).await.expect("h2c POST");
            assert_eq!(resp.status(), 200);
            check_pattern_body(resp.into_body()).await.expect("echo body")
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (len, ok) = within(T, "h2c echo", t).await.unwrap();
        assert_eq!((len, ok), (10_000 + i as u64, true));
    }
}

/// The streams of one HTTP/2 connection run on the connection's task (see
/// `server::Streams`): a held stream must not hold back the others, and a
/// drain waits for it and lets it finish.
#[tokio::test]
async fn h2_streams_of_one_connection_progress_independently_and_drain_lets_them_finish() {
    let up = Upstream::start("h2up").await;
    let mut gw = TestGateway::start_with("drain_timeout = \"5s\"", &simple_toml(&[&up], "")).await;
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let sender = h2_sender(tcp).await;
    let authority = format!("127.0.0.1:{}", gw.proxy.port());

    let held = {
        let mut s = sender.clone();
        let req = Request::get(format!("http://{authority}/api/hold")).body(empty()).unwrap();
        tokio::spawn(async move { Resp::collect(s.send_request(req).await.expect("held stream")).await })
    };
    eventually(T, "the held stream reaches the upstream", || async { up.count() == 1 }).await;
    for i in 0..3 {
        let mut s = sender.clone();
        let req = Request::get(format!("http://{authority}/api/quick/{i}")).body(empty()).unwrap();
        let r = Resp::collect(within(T, "a stream beside the held one", s.send_request(req)).await.unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["path"], format!("/quick/{i}"));
    }
    assert!(!held.is_finished());

    let shutdown = gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shutdown.is_finished(), "the drain waits for the held stream");
    up.release();
    let r = within(T, "the held stream", held).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/hold");
    assert!(within(T, "shutdown", shutdown).await.unwrap(), "drained within drain_timeout");
}

#[tokio::test]
async fn tls_alpn_negotiates_h2_when_offered() {
    let up = Upstream::start("tls-up").await;
    let tls = TlsMaterial::generate();
    let gw = TestGateway::start_with(&tls.gateway_toml(), &simple_toml(&[&up], "")).await;

    let stream = tls.connect(gw.proxy, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 is chosen when offered");
    let mut sender = h2_sender(stream).await;
    let req = Request::get(format!("https://localhost:{}/api/x", gw.proxy.port())).body(empty()).unwrap();
    let resp = within(T, "h2 over TLS", sender.send_request(req)).await.expect("h2 over TLS");
    assert_eq!(resp.version(), Version::HTTP_2);
    let r = Resp::collect(resp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.instance(), Some("tls-up"));
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.version, Version::HTTP_11);
}

#[tokio::test]
async fn tls_alpn_negotiates_http11_otherwise() {
    let up = Upstream::start("tls-up").await;
    let tls = TlsMaterial::generate();
    let gw = TestGateway::start_with(&tls.gateway_toml(), &simple_toml(&[&up], "")).await;

    for offered in [&[&b"http/1.1"[..]][..], &[][..]] {
        let stream = tls.connect(gw.proxy, offered).await;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if offered.is_empty() {
            assert_eq!(alpn, None, "no ALPN offered, none chosen");
        } else {
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        }
        let mut sender = h1_sender(stream).await;
        let req = Request::post("/api/echo")
            .header("host", format!("localhost:{}", gw.proxy.port()))
            .body(full(Bytes::from_static(b"over tls")))
            .unwrap();
        let resp = within(T, "h1 over TLS", sender.send_request(req)).await.expect("h1 over TLS");
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"over tls");
        assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    }

    // Plain HTTP on the TLS port gets nowhere near an upstream.
    let before = up.count();
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let _ = tcp.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, closed) = read_to_close(&mut tcp, T).await;
    assert!(closed, "a plaintext request on the TLS listener is dropped");
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn upgrade_is_tunnelled_both_ways() {
    let up = Upstream::start("ws").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "")).await;
    let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
    write_within(
        &mut tcp,
        b"GET /api/socket HTTP/1.1\r\nHost: ws.example.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Request-Id: rid-up\r\n\r\n",
        T,
    )
    .await;
    let (head, mut rest) = read_head(&mut tcp, T).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(lower.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(lower.contains("\r\nx-request-id: rid-up\r\n"), "{head}");

    // Upstream → client without the client sending anything: the greeting.
    let want = b"welcome\n";
    if rest.len() < want.len() {
        let more = read_exact_within(&mut tcp, want.len() - rest.len(), T).await;
        rest.extend_from_slice(&more);
    }
    assert_eq!(&rest[..], want);

    // Client → upstream → client, several rounds, including a large one.
    for msg in [&b"hello"[..], &b"second message"[..], &vec![b'z'; 200_000][..]] {
        write_within(&mut tcp, msg, T).await;
        let back = read_exact_within(&mut tcp, msg.len(), T).await;
        assert!(back == msg, "echo of {} bytes differs", msg.len());
    }
    let seen = up.last();
    assert_eq!(seen.header("upgrade"), Some("echo"));
    assert_eq!(seen.path, "/socket");
    assert_eq!(up.upgraded(), 1);

    // The client closing its side ends the tunnel and the upstream's side.
    tcp.shutdown().await.unwrap();
    let (tail, closed) = read_to_close(&mut tcp, T).await;
    assert!(closed && tail.is_empty(), "tunnel closes after the client's FIN; got {} more bytes", tail.len());

    // The listener still serves plain requests.
    assert_eq!(gw.get("/api/x").await.status, 200);
}
