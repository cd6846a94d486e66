//! The upstream client: HTTP/1.1 keep-alive connections pooled per endpoint,
//! one pool per service per worker (see `Service::client`), so that each
//! service's `connect_timeout` applies, its pool survives reloads that leave
//! the service unchanged, and no pool is shared between threads; plus one-off
//! connections for upgrades.
//!
//! Hand-written on tokio sockets and [`super::h1`] rather than hyper's
//! client connections because this is the hot path. A hyper connection is a
//! task of its own that takes requests over a channel and answers over
//! another: per request, two task wake-ups, an mpsc send and a oneshot,
//! about a third of a proxied request's instructions. Here the request's
//! own task writes the head, reads and parses the answer, and its response
//! body reads the rest; the connection goes back to its pool when that
//! body ends (see [`Pooled`]). A pooled connection has no task watching
//! it: whether the upstream closed it meanwhile is read from the socket's
//! readiness at checkout, without a system call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::Authority;
use http::{header::HOST, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustc_hash::FxBuildHasher;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::body::{BoxError, UpstreamBody};
use super::h1::{self, ChunkedDecoder, Decoded, RequestFraming, ResponseFraming};
use super::headers::Added;

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

/// A connection's read buffer starts at this size (hyper's too) and grows,
/// by doubling while reads fill it, up to [`READ_MAX`] for large bodies.
const READ_INIT: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("upstream connection: {0}")]
    Io(#[source] std::io::Error),
    #[error("upstream closed the connection before answering")]
    Closed,
    #[error("invalid response from upstream: {0}")]
    Protocol(#[from] h1::ProtocolError),
    /// The client's request body failed while it was being forwarded.
    #[error("{0}")]
    ClientBody(#[source] hyper::Error),
    /// The client's request body did not match the length it declared.
    #[error("the request body did not match its declared length")]
    ClientBodyLength,
    /// From hyper's client, which upgrades (tunnels) still use.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// The client's request body failed while it was being forwarded:
    /// not the upstream's fault.
    pub fn is_client_body(&self) -> bool {
        match self {
            UpstreamError::ClientBody(_) | UpstreamError::ClientBodyLength => true,
            // hyper reports a failing request body as a "user" error.
            UpstreamError::Http(e) => e.is_user(),
            _ => false,
        }
    }
}

/// One keep-alive connection to an upstream. Boxed where it is kept, so
/// that lending it out and pooling it again moves a pointer.
struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Where request heads are written (its memory is reused).
    out: BytesMut,
    /// How much the next read asks for (grows while reads fill it).
    read_size: usize,
}

impl Conn {
    fn new(io: TcpStream) -> Box<Self> {
        Box::new(Conn { io, buf: BytesMut::new(), out: BytesMut::new(), read_size: READ_INIT })
    }

    /// Whether a pooled connection can take a request: nothing has arrived
    /// on it since its last answer was read to the end. An upstream that
    /// closed it (or sent bytes nobody asked for) made it readable, which
    /// tokio records from epoll. No readiness: alive, with no system call.
    /// Readiness can also be left over from a read that exactly filled the
    /// buffer (tokio clears it only on a short read or `WouldBlock`), so it
    /// is confirmed with one non-blocking read: `WouldBlock` is alive (and
    /// clears it), end of stream, an error or stray bytes are not.
    ///
    /// Polled outside tokio's task budget: once a task has spent its budget
    /// every readiness poll is `Pending`, which would make a checkout that
    /// skipped ~128 closed connections take the next closed one for alive.
    fn idle_ok(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let probe = tokio::task::unconstrained(std::future::poll_fn(|cx| Poll::Ready(self.io.poll_read_ready(cx))));
        match std::pin::pin!(probe).poll(&mut cx) {
            Poll::Ready(Poll::Pending) => true,
            Poll::Ready(Poll::Ready(Ok(()))) => {
                matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            _ => false,
        }
    }

    /// Ready for the pool: a large body's read size and buffers are not
    /// kept by an idle connection.
    fn shrink(&mut self) {
        self.read_size = READ_INIT;
        if self.buf.capacity() > 4 * READ_INIT {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > 4 * READ_INIT {
            self.out = BytesMut::new();
        }
    }

    /// Reads what has arrived into `buf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == spare && self.read_size < READ_MAX {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Reads until a final response head has arrived and parses it.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &http::Method,
    ) -> Poll<Result<h1::ResponseHead, UpstreamError>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = h1::parse_response(&mut self.buf, method)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.buf.is_empty() => return Poll::Ready(Err(UpstreamError::Closed)),
                Ok(0) => return Poll::Ready(Err(h1::ProtocolError("response head cut short").into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
            }
        }
    }
}

/// The request body on its way up, polled beside the response so that
/// an upstream may answer (and stream its answer) before the body ends.
struct Upload {
    body: UpstreamBody,
    chunked: bool,
    /// Bytes framed and not yet written.
    out: BytesMut,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    finished: bool,
}

enum UploadError {
    /// Writing to the upstream failed: it closed, perhaps after answering.
    Upstream,
    /// The client's body failed.
    Client(hyper::Error),
    /// The client's body did not match its declared length.
    Length,
}

impl Upload {
    fn new(body: UpstreamBody, framing: RequestFraming) -> Box<Self> {
        let (chunked, owed) = match framing {
            RequestFraming::Chunked => (true, 0),
            RequestFraming::Length(n) => (false, n),
            RequestFraming::Empty => (false, 0),
        };
        Box::new(Upload { body, chunked, out: BytesMut::new(), owed, finished: false })
    }

    /// Writes as much of the body as can go now; `Ready(Ok)` when all of it went.
    fn poll(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), UploadError>> {
        loop {
            while !self.out.is_empty() {
                match ready!(Pin::new(&mut *io).poll_write(cx, &self.out)) {
                    Ok(0) | Err(_) => return Poll::Ready(Err(UploadError::Upstream)),
                    Ok(n) => self.out.advance(n),
                }
            }
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        h1::encode_chunk_size(&mut self.out, data.len());
                        self.out.extend_from_slice(&data);
                        self.out.put_slice(b"\r\n");
                    }
                    Ok(data) => {
                        self.owed = self.owed.checked_sub(data.len() as u64).ok_or(UploadError::Length)?;
                        self.out.extend_from_slice(&data);
                    }
                    Err(frame) => {
                        // Trailers end the body; only chunked framing can carry them.
                        if self.chunked {
                            h1::encode_chunked_end(&mut self.out, frame.trailers_ref());
                        }
                        self.finished = true;
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(UploadError::Client(e))),
                None => {
                    if self.chunked {
                        h1::encode_chunked_end(&mut self.out, None);
                    }
                    self.finished = true;
                }
            }
            if self.finished && !self.chunked && self.owed != 0 {
                return Poll::Ready(Err(UploadError::Length));
            }
        }
    }
}

/// How the request body is framed: by its size when known.
fn request_framing(body: &UpstreamBody) -> RequestFraming {
    if body.is_end_stream() {
        return RequestFraming::Empty;
    }
    match body.size_hint().exact() {
        Some(n) => RequestFraming::Length(n),
        None => RequestFraming::Chunked,
    }
}

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
type IdleMap = HashMap<Box<str>, Vec<(Box<Conn>, u64)>, FxBuildHasher>;

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
    /// Sends the request `parts` (with `body`, and the gateway's `added`
    /// headers after the client's) to the endpoint at
    /// `authority`, in origin-form, on an idle connection to it or a new
    /// one. A request whose head could not be written on a pooled
    /// connection (it closed while idle) is sent again on another, as
    /// hyper's client does.
    ///
    /// The head is borrowed, not moved in: this future lives inside the
    /// request's future, which is moved several times per request (HTTP/2
    /// streams), and a retried request is sent again from the same head
    /// without a copy of its header map.
    pub fn request<'a>(
        &'a self,
        authority: &'a Authority,
        parts: &'a http::request::Parts,
        added: &'a Added,
        body: UpstreamBody,
    ) -> impl Future<Output = Result<Response<Pooled>, UpstreamError>> + Send + 'a {
        let framing = request_framing(&body);
        let mut body = Some(body);
        async move {
            // Host goes first (RFC 9110 §7.2 SHOULD): the client's own stays
            // where it was (first, from HTTP/1 clients); one the gateway adds
            // (HTTP/2's :authority) is written before the client's headers;
            // without either, the endpoint's authority, without the default
            // port, as hyper's client wrote it.
            let added_host = added.host().map(http::HeaderValue::as_bytes);
            let host = match added_host {
                Some(h) => Some(h),
                None if parts.headers.contains_key(HOST) => None,
                None if authority.port_u16() == Some(80) => Some(authority.host().as_bytes()),
                None => Some(authority.as_str().as_bytes()),
            };
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            loop {
                let (mut conn, reused) = match self.checkout(authority) {
                    Some(c) => (c, true),
                    // Boxed: a new connection is rare, and its future
                    // would make every request's future larger.
                    None => (Box::pin(self.connect(authority)).await?, false),
                };
                let Conn { io, out, .. } = &mut *conn;
                out.clear();
                let skip_host = added_host.is_some();
                let headers = parts.headers.iter().chain(added.iter().filter(move |(n, _)| !skip_host || **n != HOST));
                h1::encode_request_head(out, &parts.method, target, host, headers, framing);
                // A body held whole (retries, health checks) goes out with the head.
                if let Some(UpstreamBody::Full(Some(b))) = &body {
                    out.extend_from_slice(b);
                }
                match tokio::io::AsyncWriteExt::write_all(io, out).await {
                    Ok(()) => {}
                    // Nothing of it reached an upstream that had closed: send it again.
                    Err(_) if reused => continue,
                    Err(e) => return Err(UpstreamError::Io(e)),
                }
                let mut upload = match body.take() {
                    Some(b @ (UpstreamBody::Stream(_) | UpstreamBody::Counted(..)))
                        if framing != RequestFraming::Empty =>
                    {
                        Some(Upload::new(b, framing))
                    }
                    _ => None,
                };
                let mut reusable = true;
                let head = std::future::poll_fn(|cx| {
                    if let Some(up) = upload.as_mut() {
                        match up.poll(&mut conn.io, cx) {
                            Poll::Ready(Ok(())) => upload = None,
                            Poll::Ready(Err(UploadError::Client(e))) => {
                                return Poll::Ready(Err(UpstreamError::ClientBody(e)))
                            }
                            // The client's body, not the upstream: no verdict on the endpoint.
                            Poll::Ready(Err(UploadError::Length)) => {
                                return Poll::Ready(Err(UpstreamError::ClientBodyLength))
                            }
                            // The upstream may have answered already: read on.
                            Poll::Ready(Err(UploadError::Upstream)) => {
                                upload = None;
                                reusable = false;
                            }
                            Poll::Pending => {}
                        }
                    }
                    conn.poll_head(cx, &parts.method)
                })
                .await?;
                let state = match head.framing {
                    ResponseFraming::Empty => State::Done,
                    ResponseFraming::Length(n) => State::Length(n),
                    ResponseFraming::Chunked => State::Chunked(ChunkedDecoder::default()),
                    ResponseFraming::UntilClose => State::UntilClose,
                };
                let reading = Reading {
                    conn,
                    state,
                    upload,
                    keep_alive: head.keep_alive && reusable,
                    pool: self.0.clone(),
                    key: authority.clone(),
                };
                let mut body = Pooled { inner: Inner::Own(reading) };
                // Nothing to read (HEAD, 204, 304): the connection is free now.
                body.release_if_done();
                return Ok(Response::from_parts(head.parts, body));
            }
        }
    }

    /// An idle connection to `key` that can take a request, if any; others
    /// (closed, stale) are dropped on the way.
    fn checkout(&self, key: &Authority) -> Option<Box<Conn>> {
        let mut idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = idle.sweeps;
        let list = idle.by_endpoint.get_mut(key.as_str())?;
        while let Some((c, since)) = list.pop() {
            if fresh(now, since) && c.idle_ok() {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self, key: &Authority) -> Result<Box<Conn>, UpstreamError> {
        let timeout = self.0.connect_timeout;
        let host = key.host().trim_start_matches('[').trim_end_matches(']');
        let connect = TcpStream::connect((host, key.port_u16().unwrap_or(80)));
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        // The sweep runs on the worker that owns this pool (pools are per
        // worker), which outlives it; expiry depends on it (see IDLE_SWEEPS).
        if !self.0.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(&self.0)));
        }
        Ok(Conn::new(stream))
    }
}

impl Pool {
    fn put(&self, key: Authority, mut conn: Box<Conn>) {
        conn.shrink();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = idle.sweeps;
        let list = match idle.by_endpoint.get_mut(key.as_str()) {
            Some(list) => list,
            None => idle.by_endpoint.entry(key.as_str().into()).or_default(),
        };
        // Full (the sweep clears stale entries): the connection closes.
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((conn, now));
        }
    }

    /// Counts a sweep, closes idle connections that are no longer fresh or
    /// were closed by their upstream, and forgets endpoints with none left
    /// (endpoints come and go with the registry).
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.sweeps += 1;
        let now = idle.sweeps;
        idle.by_endpoint.retain(|_, list| {
            list.retain(|(c, since)| fresh(now, *since) && c.idle_ok());
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

/// Where a response body stands.
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// Read to the end.
    Done,
}

/// A response body being read from its connection.
struct Reading {
    conn: Box<Conn>,
    state: State,
    /// The rest of the request body, when the upstream answered before it ended.
    upload: Option<Box<Upload>>,
    /// Whether the connection may be pooled once the body ends.
    keep_alive: bool,
    pool: Arc<Pool>,
    key: Authority,
}

impl Reading {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(up) = self.upload.as_mut() {
                match up.poll(&mut self.conn.io, cx) {
                    Poll::Ready(Ok(())) => self.upload = None,
                    Poll::Ready(Err(UploadError::Client(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Err(UploadError::Length)) => {
                        return Poll::Ready(Some(Err("request body length mismatch".into())))
                    }
                    Poll::Ready(Err(UploadError::Upstream)) => {
                        self.upload = None;
                        self.keep_alive = false;
                    }
                    Poll::Pending => {}
                }
            }
            let buf = &mut self.conn.buf;
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) => {}
                State::Chunked(dec) => match dec.decode(buf) {
                    Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Decoded::Trailers(t)) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(UpstreamError::from(e).into()))),
                },
                State::UntilClose if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))))
                }
                State::UntilClose => {}
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, State::UntilClose) => {
                    self.state = State::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err("upstream closed the connection before the body ended".into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(UpstreamError::Io(e).into()))),
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Length(n) => SizeHint::with_exact(*n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream response body. Read to the end, its connection goes back
/// to the pool (if the upstream keeps it alive, the request body was sent
/// whole and nothing more arrived); dropped before the end, or after an
/// error, the connection is closed (the rest would have to be read first).
pub struct Pooled {
    inner: Inner,
}

enum Inner {
    Own(Reading),
    /// hyper's body, for upgrade requests answered without an upgrade.
    Hyper(Incoming),
    /// Finished; the connection was pooled or closed.
    Done,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Own(r) => f.debug_struct("Pooled").field("endpoint", &r.key).finish_non_exhaustive(),
            Inner::Hyper(_) => f.write_str("Pooled(upgrade connection)"),
            Inner::Done => f.write_str("Pooled(done)"),
        }
    }
}

impl Pooled {
    /// A body whose connection is not pooled (upgrades).
    pub fn unpooled(body: Incoming) -> Self {
        Pooled { inner: Inner::Hyper(body) }
    }

    /// Pools the connection if the body has been read to its end.
    fn release_if_done(&mut self) {
        let Inner::Own(r) = &self.inner else { return };
        if !matches!(r.state, State::Done) {
            return;
        }
        let Inner::Own(r) = std::mem::replace(&mut self.inner, Inner::Done) else { unreachable!() };
        if r.keep_alive && r.upload.is_none() && r.conn.buf.is_empty() {
            r.pool.put(r.key, r.conn);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Own(r) => {
                let out = r.poll_frame(cx);
                match &out {
                    Poll::Ready(Some(Err(_))) => this.inner = Inner::Done,
                    Poll::Ready(_) => this.release_if_done(),
                    Poll::Pending => {}
                }
                out
            }
            Inner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Own(r) => matches!(r.state, State::Done),
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Own(r) => r.size_hint(),
            Inner::Hyper(b) => b.size_hint(),
            Inner::Done => SizeHint::with_exact(0),
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
        let (parts, body) = Request::get("/").body(UpstreamBody::empty()).unwrap().into_parts();
        let authority: Authority = addr.to_string().parse().unwrap();
        let resp = client.request(&authority, &parts, &Added::default(), body).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[test]
    fn a_body_that_breaks_its_declared_length_is_the_clients_fault_not_the_upstreams() {
        assert!(UpstreamError::ClientBodyLength.is_client_body());
        assert!(!UpstreamError::Protocol(h1::ProtocolError("invalid chunk size")).is_client_body());
        assert!(!UpstreamError::Closed.is_client_body());
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
            |c: &HttpClient| c.0.idle.lock().unwrap().by_endpoint.values().flatten().all(|(conn, _)| !conn.idle_ok());
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

    #[tokio::test]
    async fn an_answer_that_exactly_fills_the_read_buffer_leaves_its_connection_reusable() {
        // tokio clears read readiness only on a short read: a read that
        // fills the buffer leaves it set although the socket is drained.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // 41 bytes of head, then the body up to READ_INIT in all.
                    let mut answer =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", READ_INIT - 41).into_bytes();
                    assert_eq!(answer.len(), 41);
                    answer.resize(READ_INIT, b'x');
                    let mut buf = [0u8; 1024];
                    loop {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        s.write_all(&answer).await.unwrap();
                    }
                });
            }
        });
        let client = build(Duration::from_secs(2));
        for _ in 0..3 {
            let (parts, body) = Request::get("/").body(UpstreamBody::empty()).unwrap().into_parts();
            let authority: Authority = addr.to_string().parse().unwrap();
            let resp = client.request(&authority, &parts, &Added::default(), body).await.unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), READ_INIT - 41);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection served all three");
    }

    #[tokio::test]
    async fn many_connections_closed_at_once_are_all_seen_closed_at_checkout() {
        // More than tokio's per-task budget (128 readiness polls).
        const N: usize = 200;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = build(Duration::from_secs(2));
        let key: Authority = addr.to_string().parse().unwrap();
        let mut server_side = Vec::new();
        for _ in 0..N {
            let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
            client.0.put(key.clone(), Conn::new(c.unwrap()));
            server_side.push(s.unwrap().0);
        }
        assert_eq!(idle_count(&client), N);
        drop(server_side); // the upstream closes every idle connection
        let all_closed =
            |c: &HttpClient| c.0.idle.lock().unwrap().by_endpoint.values().flatten().all(|(c, _)| !c.idle_ok());
        for _ in 0..400 {
            if all_closed(&client) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(all_closed(&client), "every close was seen within 2 s");
        assert!(client.checkout(&key).is_none(), "no closed connection is lent, however many are skipped");
        assert_eq!(idle_count(&client), 0);
    }
}
