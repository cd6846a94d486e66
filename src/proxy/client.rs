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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{header::HOST, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::body::UpstreamBody;

/// Idle pooled connections are not reused after this (below the 60-120 s
/// that common upstream servers use, so the gateway never sends on a
/// connection the upstream is closing); they are dropped when their pool is
/// next used for that endpoint.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

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

struct Pool {
    connect_timeout: Duration,
    /// Idle connections per endpoint, most recently used last. The lock is
    /// only ever taken by one worker (each has its own pool), so it is
    /// uncontended; it exists because request futures must be `Send`.
    idle: Mutex<HashMap<Authority, Vec<(Sender, Instant)>>>,
}

pub fn build(connect_timeout: Duration) -> HttpClient {
    HttpClient(Arc::new(Pool { connect_timeout, idle: Mutex::new(HashMap::new()) }))
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
                let host = HeaderValue::from_str(key.as_str()).expect("an authority is a valid header value");
                req.headers_mut().insert(HOST, host);
            }
            // Origin-form on the wire: `GET /path HTTP/1.1`.
            let origin = req.uri().path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
            *req.uri_mut() = origin;
        }
        async move {
            let key = key.ok_or(UpstreamError::NoAuthority)?;
            loop {
                let (mut sender, reused) = match self.checkout(&key).await {
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
    async fn checkout(&self, key: &Authority) -> Option<Sender> {
        loop {
            let mut sender = {
                let mut idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner());
                let list = idle.get_mut(key)?;
                loop {
                    let (s, since) = list.pop()?;
                    if !s.is_closed() && since.elapsed() < POOL_IDLE_TIMEOUT {
                        break s;
                    }
                }
            };
            // A connection comes back when its response body has ended; its
            // task may not have seen that yet.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
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
    fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(self.key).or_default();
        if list.len() >= MAX_IDLE_PER_ENDPOINT {
            // Make room from the stale end first.
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() < POOL_IDLE_TIMEOUT);
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                return;
            }
        }
        list.push((self.sender, Instant::now()));
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
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
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
