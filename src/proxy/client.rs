//! The upstream client: HTTP/1.1 keep-alive connections pooled per endpoint,
//! one pool per service per worker (see `Service::client`), so that each
//! service's `connect_timeout` applies, its pool survives reloads that leave
//! the service unchanged, and no pool is shared between threads; plus one-off
//! connections for upgrades.
//!
//! Hand-written on `hyper::client::conn::http1` rather than hyper-util's
//! legacy `Client` because this is the hot path and the pool is per worker:
//! the legacy client boxes every response future, keys its pool behind a
//! lock shared by all threads, and spawns a task per request only to wait
//! for the connection to become idle again. Here a connection goes back to
//! its pool when the response body ends (see [`Pooled`]), from the task
//! that read it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header::HOST, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustc_hash::FxBuildHasher;

use super::body::UpstreamBody;

/// Idle pooled connections are not reused after this many sweeps (one
/// every [`SWEEP_EVERY`]): 45-50 s after their last use, below the 60-120 s
/// that common upstream servers use, so the gateway closes first and rarely
/// sends on a connection the upstream is closing. Counted in sweeps rather
/// than read from the clock: pooling and reusing a connection, twice per
/// request, then read no clock.
const IDLE_SWEEPS: u64 = 10;

/// Whether a connection pooled at sweep `since` may still be used at sweep `now`.
fn fresh(now: u64, since: u64) -> bool {
    now - since < IDLE_SWEEPS
}

/// At most this many idle connections are kept per endpoint (per worker);
/// more are closed when they finish.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("request has no upstream authority")]
    NoAuthority,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// The client's request body failed while it was being forwarded
    /// (hyper reports that as a "user" error): not the upstream's fault.
    pub fn is_client_body(&self) -> bool {
        matches!(self, UpstreamError::Http(e) if e.is_user())
    }
}

type Sender = SendRequest<UpstreamBody>;

/// A pool of keep-alive connections, by endpoint. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient(Arc<Pool>);

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("connect_timeout", &self.0.connect_timeout).finish_non_exhaustive()
    }
}

/// Idle connections per endpoint, most recently used last, each with the
/// sweep it was pooled at. Keyed by the authority's text, compared as is:
/// `Authority` hashes and compares byte by byte, ignoring case, which cost
/// ~300 instructions per lookup (two lookups per request); the authorities
/// here are endpoint addresses, written one way.
type IdleMap = HashMap<Box<str>, Vec<(Sender, u64)>, FxBuildHasher>;

#[derive(Default)]
struct Idle {
    /// Sweeps so far.
    sweeps: u64,
    by_endpoint: IdleMap,
}

struct Pool {
    connect_timeout: Duration,
    /// Idle connections per endpoint, most recently used last. The lock is
    /// only ever taken by one worker (each has its own pool), so it is
    /// uncontended; it exists because request futures must be `Send`.
    /// Fx, not SipHash: looked up twice per request, and the keys are
    /// endpoint addresses from the config and the registry, not from clients.
    idle: Mutex<Idle>,
    /// Whether [`sweep`] runs for this pool (started with its first connection).
    sweeping: AtomicBool,
}

pub fn build(connect_timeout: Duration) -> HttpClient {
    HttpClient(Arc::new(Pool { connect_timeout, idle: Mutex::new(Idle::default()), sweeping: AtomicBool::new(false) }))
}

impl HttpClient {
    /// Sends `req` (absolute-form URI naming the endpoint) on an idle
    /// connection to that endpoint, or a new one. A request the connection
    /// never took (it closed while idle, before anything was written) is
    /// sent again on another connection, like the legacy client does.
    ///
    /// Not an `async fn`: its request parameter would be stored twice in
    /// the future (as argument and as the mutable local), and this future is
    /// moved on every request.
    pub fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<Pooled>, UpstreamError>> + Send + '_ {
        let key = req.uri().authority().cloned();
        if let Some(key) = &key {
            if !req.headers().contains_key(HOST) {
                // Without the default port, as the legacy client wrote it.
                let host = if key.port_u16() == Some(80) { key.host() } else { key.as_str() };
                let host = HeaderValue::from_str(host).expect("an authority is a valid header value");
                req.headers_mut().insert(HOST, host);
            }
            // Origin-form on the wire: `GET /path HTTP/1.1`.
            let origin = req.uri().path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
            *req.uri_mut() = origin;
        }
        async move {
            let key = key.ok_or(UpstreamError::NoAuthority)?;
            loop {
                let (mut sender, reused) = match self.checkout(&key) {
                    Some(s) => (s, true),
                    None => (self.connect(&key).await?, false),
                };
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let lease = Lease { pool: self.0.clone(), key, sender };
                        return Ok(resp.map(|body| Pooled { body, lease: Some(lease) }));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) if reused => req = r,
                        _ => return Err(UpstreamError::Http(e.into_error())),
                    },
                }
            }
        }
    }

    /// An idle connection to `key` that is ready for a request, if any.
    /// Only ready connections are pooled, so one that is not ready here is
    /// closing: it is dropped, never waited on.
    fn checkout(&self, key: &Authority) -> Option<Sender> {
        let mut idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = idle.sweeps;
        let list = idle.by_endpoint.get_mut(key.as_str())?;
        while let Some((s, since)) = list.pop() {
            if s.is_ready() && fresh(now, since) {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self, key: &Authority) -> Result<Sender, UpstreamError> {
        let timeout = self.0.connect_timeout;
        let host = key.host().trim_start_matches('[').trim_end_matches(']');
        let connect = tokio::net::TcpStream::connect((host, key.port_u16().unwrap_or(80)));
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The sweep runs on the worker that owns this pool (pools are per
        // worker), which outlives it; expiry depends on it (see IDLE_SWEEPS).
        if !self.0.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(&self.0)));
        }
        // The connection runs on this worker, beside the requests it serves.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A connection lent to one exchange.
struct Lease {
    pool: Arc<Pool>,
    key: Authority,
    sender: Sender,
}

impl Lease {
    /// Pools the connection if it can take a request now. One that cannot
    /// yet (the upstream answered before the request body was sent, or the
    /// connection's task has not seen the end of the response) is pooled by
    /// a small task once it can, or dropped if it closes: a connection in
    /// the pool is never one a request would have to wait for.
    fn release(self) {
        if self.sender.is_ready() {
            self.pool.put(self.key, self.sender);
        } else if !self.sender.is_closed() {
            let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
            let (pool, key, mut sender) = (Arc::downgrade(&self.pool), self.key, self.sender);
            rt.spawn(async move {
                if sender.ready().await.is_ok() {
                    if let Some(pool) = pool.upgrade() {
                        pool.put(key, sender);
                    }
                }
            });
        }
    }
}

impl Pool {
    fn put(&self, key: Authority, sender: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = idle.sweeps;
        let list = match idle.by_endpoint.get_mut(key.as_str()) {
            Some(list) => list,
            None => idle.by_endpoint.entry(key.as_str().into()).or_default(),
        };
        // Full (the sweep clears stale entries): the connection closes.
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((sender, now));
        }
    }

    /// Counts a sweep, closes idle connections that are no longer fresh or
    /// already closed, and forgets endpoints with none left (endpoints come
    /// and go with the registry).
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.sweeps += 1;
        let now = idle.sweeps;
        idle.by_endpoint.retain(|_, list| {
            list.retain(|(s, since)| !s.is_closed() && fresh(now, *since));
            !list.is_empty()
        });
    }
}

/// How often a pool is swept (see [`IDLE_SWEEPS`]).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Sweeps `pool` on the runtime that uses it until the pool is dropped
/// (its service was replaced or removed).
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

/// An upstream response body that returns its connection to the pool when
/// it has been read to the end. Dropped before the end, the connection is
/// closed instead (the rest of the body would have to be read first).
#[derive(Debug)]
pub struct Pooled {
    body: Incoming,
    lease: Option<Lease>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("endpoint", &self.key).finish()
    }
}

impl Pooled {
    /// A body whose connection is not pooled (upgrades).
    pub fn unpooled(body: Incoming) -> Self {
        Pooled { body, lease: None }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let out = Pin::new(&mut this.body).poll_frame(cx);
        match &out {
            Poll::Ready(None) => this.release(),
            // hyper stops polling a body after its trailers.
            Poll::Ready(Some(Ok(f))) if f.is_trailers() || this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => drop(this.lease.take()),
            _ => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A body that was never polled but has nothing to read (HEAD, 204,
        // 304, an empty 200) leaves its connection reusable.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

/// Sends an upgrade request (WebSocket, ...) on a connection of its own: an
/// upgraded connection becomes a tunnel and never returns to the pool.
pub async fn send_upgrade(
    address: &str,
    connect_timeout: Duration,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(connect_timeout))?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    Ok(sender.send_request(req).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers one request `ok` and keeps the connection
    /// open until the returned sender is dropped.
    async fn one_answer_upstream() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            let _ = close_rx.await;
        });
        (addr, close_tx)
    }

    /// One request through `client` to `addr`, read to the end (so its
    /// connection is pooled).
    async fn get_ok(client: &HttpClient, addr: std::net::SocketAddr) {
        let req = Request::get(format!("http://{addr}/")).body(UpstreamBody::empty()).unwrap();
        let body = client.request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    fn idle_count(c: &HttpClient) -> usize {
        c.0.idle.lock().unwrap().by_endpoint.values().map(Vec::len).sum()
    }

    #[tokio::test]
    async fn sweep_closes_nothing_live_and_forgets_closed_connections_and_their_endpoint() {
        let (addr, close_tx) = one_answer_upstream().await;
        let client = build(Duration::from_secs(2));
        get_ok(&client, addr).await;
        assert_eq!(idle_count(&client), 1, "read to the end, the connection is pooled");
        client.0.sweep();
        assert_eq!(idle_count(&client), 1, "a live, fresh connection survives a sweep");

        drop(close_tx); // the upstream hangs up
        let closed =
            |c: &HttpClient| c.0.idle.lock().unwrap().by_endpoint.values().flatten().all(|(s, _)| s.is_closed());
        for _ in 0..400 {
            if closed(&client) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(closed(&client), "the pooled connection saw the upstream close within 2 s");
        client.0.sweep();
        assert!(client.0.idle.lock().unwrap().by_endpoint.is_empty(), "the endpoint is forgotten");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_idle_sweeps_and_never_reused_stale() {
        let (addr, _keep_open) = one_answer_upstream().await;
        let client = build(Duration::from_secs(2));
        get_ok(&client, addr).await;
        assert_eq!(idle_count(&client), 1, "pooled");
        for _ in 1..IDLE_SWEEPS {
            client.0.sweep();
        }
        assert_eq!(idle_count(&client), 1, "fresh for {} sweeps", IDLE_SWEEPS - 1);
        let key: Authority = addr.to_string().parse().unwrap();
        client.0.idle.lock().unwrap().sweeps += 1; // the next sweep's count, without its pruning
        assert!(client.checkout(&key).is_none(), "a stale connection is not lent");
        assert_eq!(idle_count(&client), 0, "and is dropped at checkout");

        let (addr, _keep_open) = one_answer_upstream().await;
        get_ok(&client, addr).await;
        assert_eq!(idle_count(&client), 1, "pooled");
        for _ in 1..IDLE_SWEEPS {
            client.0.sweep();
        }
        assert_eq!(idle_count(&client), 1, "fresh for {} sweeps", IDLE_SWEEPS - 1);
        client.0.sweep();
        assert_eq!(idle_count(&client), 0, "closed by the sweep that makes it stale");
        assert!(client.0.idle.lock().unwrap().by_endpoint.is_empty());
    }
}
