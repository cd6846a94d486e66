//! Shared harness for the integration tests (`mod support;` in each file).
//!
//! - [`Upstream`]: a real hyper HTTP/1.1 server on 127.0.0.1:0 that records
//!   every request and answers according to a switchable [`Mode`]; it also
//!   accepts `Upgrade` requests and echoes bytes on the upgraded connection.
//! - [`TestGateway`]: a `waygate::Gateway` started in-process on port 0 from a
//!   TOML body, with client helpers for the proxy and admin listeners.
//! - [`eventually`]: poll a condition with a deadline instead of sleeping.
//! - Streaming bodies with a deterministic byte pattern that never sit in
//!   memory whole ([`PatternBody`], [`PatternChecker`]), raw-socket helpers,
//!   TLS material, and a harness for the real `waygate` binary ([`Binary`]).
//!
//! Every wait here is bounded by a deadline; nothing sleeps and hopes.

#![allow(dead_code)]

pub mod admin;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response made by the harness.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Upper bound for any single client exchange in the tests; a test that
/// needs longer says so explicitly.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// eventually
// ---------------------------------------------------------------------------

/// Polls `cond` every 10 ms until it returns true; panics with `what` when
/// `timeout` passes first.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(remaining.max(Duration::from_millis(1)), cond()).await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("not true within {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `fut` with a deadline; panics naming `what` when it passes.
pub async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("did not finish within {timeout:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// The byte pattern repeats every `PERIOD` bytes: byte `i` is `i % 251`.
pub const PERIOD: usize = 251;
/// Frames of a [`PatternBody`] are at most this long (a multiple of PERIOD).
pub const CHUNK: usize = PERIOD * 256;
static PATTERN: LazyLock<Bytes> =
    LazyLock::new(|| (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect::<Vec<u8>>().into());

/// A body of `len` deterministic bytes, produced frame by frame as zero-copy
/// slices of one small static buffer: it never holds more than one frame.
#[derive(Debug, Clone)]
pub struct PatternBody {
    remaining: u64,
    offset: u64,
    exact_len: bool,
}

impl PatternBody {
    /// With an exact size hint (so a `Content-Length` is sent).
    pub fn new(len: u64) -> Self {
        PatternBody { remaining: len, offset: 0, exact_len: true }
    }

    /// Without a size hint (so HTTP/1.1 sends it chunked).
    pub fn chunked(len: u64) -> Self {
        PatternBody { remaining: len, offset: 0, exact_len: false }
    }

    pub fn boxed_body(self) -> TestBody {
        self.map_err(|never| match never {}).boxed()
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = (this.remaining as usize).min(CHUNK);
        let start = (this.offset % PERIOD as u64) as usize;
        let frame = PATTERN.slice(start..start + n);
        this.remaining -= n as u64;
        this.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_len {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Checks bytes against the pattern as they stream by.
#[derive(Debug, Clone)]
pub struct PatternChecker {
    pub len: u64,
    pub ok: bool,
}

impl PatternChecker {
    pub fn new() -> Self {
        PatternChecker { len: 0, ok: true }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let start = (self.len % PERIOD as u64) as usize;
            let n = data.len().min(CHUNK);
            if self.ok && data[..n] != PATTERN[start..start + n] {
                self.ok = false;
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }
}

/// Reads a body to its end, checking it against the pattern: (length, matches).
pub async fn check_pattern_body<B>(mut body: B) -> Result<(u64, bool), B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut checker = PatternChecker::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            checker.feed(&data);
        }
    }
    Ok((checker.len, checker.ok))
}

/// A body fed from a channel: the test decides when each frame goes out.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(capacity: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody { rx })
    }

    pub fn boxed_body(self) -> TestBody {
        self.map_err(|never| match never {}).boxed()
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

/// How an [`Upstream`] answers (paths like `/big/N` apply in `Ok` and `Slow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer at once (after reading the request body).
    Ok,
    /// Answer with this status and the usual JSON body.
    Status(u16),
    /// Never answer; keep the connection open.
    Hang,
    /// Drop the connection without answering.
    Close,
    /// Answer after this delay.
    Slow(Duration),
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    /// Body bytes read (None until the body was read to its end).
    pub body_len: Option<u64>,
    /// The gateway's side of the connection.
    pub peer: SocketAddr,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct UpstreamState {
    name: String,
    mode: Mutex<Mode>,
    records: Mutex<Vec<Recorded>>,
    accepted: AtomicUsize,
    /// Request body bytes received so far, over all requests.
    body_bytes: AtomicU64,
    gate: watch::Sender<bool>,
    upgraded: AtomicUsize,
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that records every request.
///
/// Answers JSON `{"instance", "method", "path", "uri", "query", "body_len",
/// "pattern_ok", "version"}` with header `x-instance: NAME`, except:
/// - `/big/N` streams N pattern bytes;
/// - `/echo` streams the request body back;
/// - `/hold` answers only once [`Upstream::release`] is called;
/// - `/gated` sends `first-chunk;` then waits for [`Upstream::release`] and sends `rest`;
/// - `/hop` adds hop-by-hop headers (`Connection: x-up-secret`, `x-up-secret`, `Keep-Alive`) to its answer;
/// - a request with `Connection: upgrade` + `Upgrade: P` gets `101` and an
///   echo on the upgraded connection (after a `welcome\n` greeting).
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            mode: Mutex::new(Mode::Ok),
            records: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            gate: watch::channel(false).0,
            upgraded: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_upstream_conn(st.clone(), stream, peer));
            }
        });
        Upstream { addr, state, task }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// `"127.0.0.1:PORT"`, as a config endpoint.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.records.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.records.lock().unwrap().len()
    }

    pub fn last(&self) -> Recorded {
        self.state.records.lock().unwrap().last().cloned().expect("the upstream received no request")
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Distinct client ports seen on recorded requests.
    pub fn distinct_peers(&self) -> usize {
        self.state.records.lock().unwrap().iter().map(|r| r.peer).collect::<HashSet<_>>().len()
    }

    /// Request body bytes received so far (all requests).
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Upgraded connections so far.
    pub fn upgraded(&self) -> usize {
        self.state.upgraded.load(Ordering::SeqCst)
    }

    /// Lets `/hold` and `/gated` requests proceed (now and later).
    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_upstream_conn(st: Arc<UpstreamState>, stream: TcpStream, peer: SocketAddr) {
    let close = Arc::new(Notify::new());
    let svc_close = close.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (st, close) = (st.clone(), svc_close.clone());
        async move { Ok::<_, Infallible>(upstream_handle(st, req, peer, close).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        // Mode::Close: drop the connection (and its socket) without answering.
        _ = close.notified() => {}
    }
}

async fn upstream_handle(
    st: Arc<UpstreamState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    close: Arc<Notify>,
) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    let uri = req.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
    let query = req.uri().query().map(str::to_string);
    let index = {
        let mut records = st.records.lock().unwrap();
        records.push(Recorded {
            method: req.method().clone(),
            uri: uri.clone(),
            path: path.clone(),
            query: query.clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body_len: None,
            peer,
        });
        records.len() - 1
    };

    let is_upgrade = req.headers().contains_key(http::header::UPGRADE)
        && req
            .headers()
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if is_upgrade {
        let proto = req.headers()[http::header::UPGRADE].clone();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let st2 = st.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            st2.upgraded.fetch_add(1, Ordering::SeqCst);
            let mut io = TokioIo::new(upgraded);
            if io.write_all(b"welcome\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 8192];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = io.shutdown().await;
        });
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(http::header::UPGRADE, proto);
        resp.headers_mut().insert("x-instance", HeaderValue::from_str(&st.name).unwrap());
        return resp;
    }

    let mode = *st.mode.lock().unwrap();
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Close => {
            close.notify_one();
            std::future::pending::<()>().await;
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Ok | Mode::Status(_) => {}
    }
    let status = match mode {
        Mode::Status(s) => StatusCode::from_u16(s).unwrap(),
        _ => StatusCode::OK,
    };

    let mut resp = if path == "/echo" {
        let body = req.into_body().map_err(BoxError::from).boxed();
        Response::new(body)
    } else if let Some(n) = path.strip_prefix("/big/").and_then(|n| n.parse::<u64>().ok()) {
        let _ = read_body(&st, index, req.into_body()).await;
        Response::new(PatternBody::new(n).boxed_body())
    } else if path == "/gated" {
        let _ = read_body(&st, index, req.into_body()).await;
        let (tx, body) = ChannelBody::new(2);
        let mut gate = st.gate.subscribe();
        tokio::spawn(async move {
            if tx.send(Bytes::from_static(b"first-chunk;")).await.is_err() {
                return;
            }
            let _ = gate.wait_for(|open| *open).await;
            let _ = tx.send(Bytes::from_static(b"rest")).await;
        });
        Response::new(body.boxed_body())
    } else {
        let (len, pattern_ok) = read_body(&st, index, req.into_body()).await;
        if path == "/hold" {
            let mut gate = st.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
        let body = serde_json::json!({
            "instance": st.name,
            "method": st.records.lock().unwrap()[index].method.as_str(),
            "path": path,
            "uri": uri,
            "query": query,
            "body_len": len,
            "pattern_ok": pattern_ok,
        });
        let mut r = Response::new(full(body.to_string()));
        r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if path == "/hop" {
            let h = r.headers_mut();
            h.insert(http::header::CONNECTION, HeaderValue::from_static("x-up-secret"));
            h.insert("x-up-secret", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-up-kept", HeaderValue::from_static("yes"));
        }
        r
    };
    *resp.status_mut() = status;
    resp.headers_mut().insert("x-instance", HeaderValue::from_str(&st.name).unwrap());
    resp
}

/// Reads a request body to its end, counting and pattern-checking it.
async fn read_body(st: &UpstreamState, index: usize, mut body: Incoming) -> (u64, bool) {
    let mut checker = PatternChecker::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            st.body_bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
            checker.feed(&data);
        }
    }
    st.records.lock().unwrap()[index].body_len = Some(checker.len);
    (checker.len, checker.ok && checker.len > 0)
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------

/// A `[[services]]` entry over `endpoints`, plus `extra` lines.
pub fn service_toml(name: &str, endpoints: &[String], extra: &str) -> String {
    let eps = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    format!("[[services]]\nname = \"{name}\"\nendpoints = [{eps}]\n{extra}\n\n")
}

/// A `[[routes]]` entry, plus `extra` lines.
pub fn route_toml(prefix: &str, service: &str, extra: &str) -> String {
    format!("[[routes]]\npath_prefix = \"{prefix}\"\nservice = \"{service}\"\n{extra}\n\n")
}

/// The usual test setup: one service `svc` over `ups` with `service_extra`,
/// routed at `/api` with `strip_prefix = true` (so `/api/echo` reaches `/echo`).
pub fn simple_toml(ups: &[&Upstream], service_extra: &str) -> String {
    let eps: Vec<String> = ups.iter().map(|u| u.endpoint()).collect();
    service_toml("svc", &eps, service_extra) + &route_toml("/api", "svc", "strip_prefix = true")
}

// ---------------------------------------------------------------------------
// TestGateway
// ---------------------------------------------------------------------------

pub type HttpClient = Client<HttpConnector, TestBody>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A collected response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-instance` header the upstream set.
    pub fn instance(&self) -> Option<&str> {
        self.header("x-instance")
    }

    pub async fn collect(resp: Response<Incoming>) -> Resp {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read response body").to_bytes();
        Resp { status: parts.status, version: parts.version, headers: parts.headers, body }
    }
}

/// A gateway started in-process from a TOML body.
pub struct TestGateway {
    gateway: Option<waygate::Gateway>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub client: HttpClient,
}

impl TestGateway {
    /// Starts a gateway with `body` (services, routes...) after a `[gateway]`
    /// table listening on 127.0.0.1:0 for both listeners.
    pub async fn start(body: &str) -> TestGateway {
        Self::start_with("", body).await
    }

    /// Same, with `gateway_extra` lines in the `[gateway]` table (a
    /// `[gateway.tls]` sub-table may come last).
    pub async fn start_with(gateway_extra: &str, body: &str) -> TestGateway {
        let text = gateway_toml(gateway_extra, body);
        let config = waygate::Config::parse(&text, "test.toml")
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n--- config ---\n{text}"));
        let gateway = waygate::Gateway::start(config).await.expect("gateway starts");
        TestGateway {
            proxy: gateway.proxy_addr(),
            admin: gateway.admin_addr(),
            gateway: Some(gateway),
            client: http_client(),
        }
    }

    pub fn gateway(&self) -> &waygate::Gateway {
        self.gateway.as_ref().expect("gateway already shut down")
    }

    /// Starts the graceful drain in the background; the client helpers keep
    /// working (against the addresses) while it runs.
    pub fn begin_shutdown(&mut self) -> JoinHandle<bool> {
        let gw = self.gateway.take().expect("gateway already shut down");
        tokio::spawn(gw.shutdown())
    }

    pub fn url(&self, path: &str) -> Uri {
        format!("http://{}{}", self.proxy, path).parse().unwrap()
    }

    pub fn admin_url(&self, path: &str) -> Uri {
        format!("http://{}{}", self.admin, path).parse().unwrap()
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Request::get(path).body(empty()).unwrap()).await
    }

    /// Sends `req` to the proxy listener (a relative URI is completed with
    /// the proxy address) and collects the response.
    pub async fn request(&self, req: Request<TestBody>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        let resp = self.send(req).await;
        within(EXCHANGE_TIMEOUT, &what, Resp::collect(resp)).await
    }

    /// Sends `req` to the proxy listener and returns the streaming response.
    pub async fn send(&self, mut req: Request<TestBody>) -> Response<Incoming> {
        if req.uri().authority().is_none() {
            *req.uri_mut() = self.url(req.uri().path_and_query().map_or("/", |pq| pq.as_str()));
        }
        let what = format!("{} {}", req.method(), req.uri());
        within(EXCHANGE_TIMEOUT, &what, self.client.request(req)).await.unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        let req = Request::get(self.admin_url(path)).body(empty()).unwrap();
        let what = format!("admin GET {path}");
        let resp =
            within(EXCHANGE_TIMEOUT, &what, self.client.request(req)).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
        within(EXCHANGE_TIMEOUT, &what, Resp::collect(resp)).await
    }
}

pub fn gateway_toml(gateway_extra: &str, body: &str) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{gateway_extra}\n\n{body}")
}

/// Asserts a JSON error answer (gateway-made or of the admin API): status, a
/// JSON content type, and a non-empty `error`; returns the body.
pub fn assert_json_error(resp: &Resp, status: u16, what: &str) -> serde_json::Value {
    assert_eq!(resp.status.as_u16(), status, "{what}: {}", resp.text());
    assert!(
        resp.header("content-type").is_some_and(|c| c.starts_with("application/json")),
        "{what}: content-type {:?}",
        resp.header("content-type")
    );
    let v = resp.json();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {v}");
    v
}

/// Asserts a gateway-made error answer (SPEC §3): status, JSON body with
/// `error`, a `message` and a `request_id` equal to the `x-request-id` header.
pub fn assert_gateway_error(resp: &Resp, status: u16, kind: &str) -> serde_json::Value {
    let v = assert_json_error(resp, status, kind);
    assert_eq!(v["error"], kind, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let id = v["request_id"].as_str().unwrap_or_else(|| panic!("no request_id: {v}"));
    assert!(!id.is_empty(), "{v}");
    assert_eq!(resp.header("x-request-id"), Some(id), "x-request-id header vs body");
    v
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// Reads until the peer closes, an error, or `timeout`: (bytes, closed).
/// `closed` is false only when the deadline passed with the socket open.
pub async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 16 * 1024 * 1024 {
                    panic!("peer sent more than 16 MiB");
                }
            }
        }
    }
}

/// Reads one response head (through the blank line): (head, bytes after it).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, timeout: Duration) -> (String, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = out.split_off(i + 4);
            return (String::from_utf8_lossy(&out).into_owned(), rest);
        }
        assert!(out.len() < 64 * 1024, "response head over 64 KiB");
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("no complete response head within {timeout:?}; got {:?}", String::from_utf8_lossy(&out)),
            Ok(Ok(0)) => panic!("connection closed before a response head; got {:?}", String::from_utf8_lossy(&out)),
            Ok(Err(e)) => panic!("read error before a response head: {e}; got {:?}", String::from_utf8_lossy(&out)),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads exactly `n` bytes with a deadline.
pub async fn read_exact_within<S: AsyncRead + Unpin>(s: &mut S, n: usize, timeout: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within(timeout, "read_exact", s.read_exact(&mut buf)).await.expect("read_exact");
    buf
}

/// Writes all of `data` with a deadline.
pub async fn write_within<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8], timeout: Duration) {
    within(timeout, "write_all", s.write_all(data)).await.expect("write_all");
}

/// Counts the HTTP responses in raw bytes (status lines at line starts).
pub fn count_status_lines(raw: &[u8]) -> usize {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n").filter(|l| l.starts_with("HTTP/1.1 ") || l.starts_with("HTTP/1.0 ")).count()
}

// ---------------------------------------------------------------------------
// Temp files and TLS material
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "waygate-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` / 127.0.0.1, written as PEM files.
pub struct TlsMaterial {
    pub dir: TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
}

impl TlsMaterial {
    pub fn generate() -> TlsMaterial {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("self-signed certificate");
        let dir = TempDir::new("tls");
        let cert_path = dir.write("gateway.crt", &ck.cert.pem());
        let key_path = dir.write("gateway.key", &ck.signing_key.serialize_pem());
        TlsMaterial { cert_der: ck.cert.der().clone(), dir, cert_path, key_path }
    }

    /// The `[gateway.tls]` sub-table pointing at the files.
    pub fn gateway_toml(&self) -> String {
        format!(
            "[gateway.tls]\ncert = {:?}\nkey = {:?}\n",
            self.cert_path.display().to_string(),
            self.key_path.display().to_string()
        )
    }

    /// Connects to `addr` with TLS (trusting only this certificate, SNI
    /// `localhost`) offering `alpn`.
    pub async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("trust the test certificate");
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        within(EXCHANGE_TIMEOUT, "TLS handshake", connector.connect(name, tcp)).await.expect("TLS handshake")
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

pub const BIN: &str = env!("CARGO_BIN_EXE_waygate");

/// Runs `waygate` with `args` to completion (bounded): (status, stdout, stderr).
pub fn run_binary(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env_remove("WAYGATE_CONFIG").env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn waygate");
    let out_reader = drain_pipe(child.stdout.take().unwrap());
    let err_reader = drain_pipe(child.stderr.take().unwrap());
    let status = wait_child(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("waygate {args:?} did not exit within {timeout:?}")
    });
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    (status, stdout, stderr)
}

fn drain_pipe<R: std::io::Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal to a process this test started, with the `kill` command.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// `waygate run` as a child process, with its bound addresses read from its
/// JSON log. Killed on drop if still running.
pub struct Binary {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    pub config_dir: TempDir,
}

impl Binary {
    /// Writes `config` (a whole file) to a temp dir and runs `waygate run
    /// --config FILE --log-format json`, waiting for its "listening" line.
    pub fn start(config: &str) -> Binary {
        let dir = TempDir::new("bin");
        let path = dir.write("gateway.toml", config);
        let path = path.to_str().unwrap().to_string();
        Binary::spawn(&["run", "--config", &path, "--log-format", "json"], &[], dir)
    }

    /// Runs `waygate demo` on 127.0.0.1:0 (both listeners).
    pub fn demo() -> Binary {
        let env = [("WAYGATE_DEMO_LISTEN", "127.0.0.1:0"), ("WAYGATE_DEMO_ADMIN", "127.0.0.1:0")];
        Binary::spawn(&["demo", "--log-format", "json"], &env, TempDir::new("demo"))
    }

    /// Runs `waygate ARGS` and waits (at most 20 s) for the JSON log line
    /// "waygate listening", which names the bound addresses. Both output
    /// streams are drained into [`Binary::log`] for the child's whole life,
    /// so access logs never fill a pipe and block it.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], config_dir: TempDir) -> Binary {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("WAYGATE_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn waygate");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [stdout, stderr] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    if v["message"] == "waygate listening" {
                        let proxy = v["proxy"].as_str().and_then(|s| s.parse().ok()).expect("proxy address in log");
                        let admin = v["admin"].as_str().and_then(|s| s.parse().ok()).expect("admin address in log");
                        return Binary { child, proxy, admin, log, config_dir };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "waygate {args:?} did not log 'waygate listening' within 20 s; output:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the process catches SIGTERM and SIGINT (SigCgt in
    /// /proc/PID/status), so a signal sent now is handled, not fatal.
    pub async fn wait_for_signal_handlers(&self) {
        let pid = self.pid();
        eventually(Duration::from_secs(10), "waygate installs its SIGTERM/SIGINT handlers", || async move {
            signal_caught(pid, 15) && signal_caught(pid, 2)
        })
        .await;
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` has a handler for signal number `signo` (SigCgt).
pub fn signal_caught(pid: u32, signo: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signo - 1)) != 0)
}

/// A `VmXXX:` line of /proc/PID/status, in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /proc/{pid}/status"))
}

/// A header name from a string (panics on an invalid one).
pub fn hname(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}
