//! Listeners: the accept loop (HTTP/1.1 and h2c prior knowledge on one port
//! by sniffing the first bytes, upgrades allowed), TLS termination with
//! rustls (ALPN h2 + http/1.1), and graceful drain.
//!
//! Drain: when `shutdown` flips, the accept loop drops its listener (new
//! connections are refused at once) and every connection is asked to finish
//! its in-flight requests and close; `hard_stop` cuts whatever is left.
//! Each connection task holds a clone of a `mpsc::Sender`, so "all connections
//! are gone" is the moment the receiver sees the channel close.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::{CatchUnwind, FutureExt as _};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsAcceptor;

use crate::config::{GatewayConfig, TlsConfig};
use crate::deadline::ConnTimer;
use crate::framing::{Framing, Verdict};
use crate::proxy::{ConnInfo, ResponseBody};

/// Protocol settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

impl ListenerOptions {
    pub fn from_config(g: &GatewayConfig) -> Self {
        ListenerOptions { header_read_timeout: g.header_read_timeout, max_header_bytes: g.max_header_bytes }
    }
}

/// The protocol builders of a listener. The connection's first bytes (read
/// by [`first_bytes`] anyway, for its deadline) say which one serves it, so
/// hyper-util's auto builder, which would sniff them again behind a wrapper
/// of its own, is not needed: one layer less per poll and a few KiB less per
/// idle connection.
struct Protocols {
    h1: hyper::server::conn::http1::Builder,
    max_header_bytes: usize,
}

impl Protocols {
    /// An HTTP/2 builder whose streams run on `streams` (made per
    /// connection: the executor is the connection's own stream set).
    fn h2(&self, streams: Streams) -> hyper::server::conn::http2::Builder<Streams> {
        let mut h2 = hyper::server::conn::http2::Builder::new(streams);
        h2.timer(TokioTimer::new())
            .max_header_list_size(self.max_header_bytes as u32)
            .max_concurrent_streams(Some(1024));
        h2
    }
}

fn protocols(opts: &ListenerOptions) -> Protocols {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // The timer is set per connection, in `Connection::drive`.
    h1
        // A client must send its whole request head within this time
        // (slowloris); the limit also bounds how long an idle keep-alive
        // connection waits for its next request.
        .header_read_timeout(opts.header_read_timeout)
        // Caps the read buffer, so a head larger than this is answered 431.
        .max_buf_size(opts.max_header_bytes)
        .keep_alive(true)
        // One buffer per write (send) instead of head and body as separate
        // iovecs (writev): for the small answers an API gateway mostly
        // carries, copying the body behind the head is cheaper than the
        // vectored write: -6 % CPU per request under wrk (median of five
        // alternating perf-stat pairs), -1.7 % instructions. The buffer
        // stays bounded by max_buf_size, so large bodies still stream.
        .writev(false);
    Protocols { h1, max_header_bytes: opts.max_header_bytes }
}

type StreamSet = FuturesUnordered<CatchUnwind<AssertUnwindSafe<Pin<Box<dyn Future<Output = ()> + Send>>>>>;

/// The HTTP/2 streams of one connection, run on the connection's own task.
///
/// hyper hands each stream to an executor. tokio's spawns a task per
/// stream: an aligned allocation, the stream's future (~1.7 KiB) moved into
/// it several times, and a task of its own to schedule and tear down. Here
/// a stream joins its connection's set and is polled by the connection's
/// task right after the connection ([`WithStreams`]); a worker is one
/// thread anyway. A stream whose handler panics is dropped alone (its
/// stream is reset), as a spawned task's panic would be.
/// Boxed: hyper runs two kinds of future on it (streams, and the send half
/// of CONNECT tunnels), and a stream's type names its executor.
#[derive(Clone)]
pub struct Streams(Arc<Mutex<StreamSet>>);

impl Streams {
    fn new() -> Self {
        Streams(Arc::new(Mutex::new(FuturesUnordered::new())))
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match self.0.try_lock() {
            Ok(set) => {
                set.push(AssertUnwindSafe(Box::pin(fut) as Pin<Box<dyn Future<Output = ()> + Send>>).catch_unwind())
            }
            // Only if a stream, while its set is being polled, started
            // another (hyper's streams do not): a task of its own then.
            Err(_) => {
                tokio::spawn(fut);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 connection and its [`Streams`], polled together: the
    /// connection first (it reads frames, which may start streams, and
    /// writes what streams queued), then every stream that was woken.
    /// When the connection ends, streams still in flight are dropped (they
    /// could no longer answer), as HTTP/1's in-flight request is.
    struct WithStreams<C> {
        #[pin]
        conn: C,
        streams: Streams,
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(out);
        }
        let mut set = match this.streams.0.lock() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Until every woken stream has been polled (the set yields Pending
        // once none is left, or after a bounded number, waking the task).
        while let Poll::Ready(Some(res)) = set.poll_next_unpin(cx) {
            if res.is_err() {
                tracing::error!("an HTTP/2 stream's handler panicked; the stream was reset");
            }
        }
        Poll::Pending
    }
}

/// Loads the certificate chain and key and builds an acceptor offering h2 and
/// http/1.1 by ALPN. Uses the `ring` provider explicitly, so the build never
/// depends on which rustls provider features other crates enable.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", tls.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: cannot read private key: {e}", tls.key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", display_pair(&tls.cert, &tls.key)))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn display_pair(a: &Path, b: &Path) -> String {
    format!("{} / {}", a.display(), b.display())
}

/// Signals shared by every connection of a server.
#[derive(Clone)]
pub struct Shutdown {
    /// Set: stop accepting, finish in-flight requests, close.
    pub drain: Signal,
    /// Set: close every connection now.
    pub hard_stop: Signal,
    /// Dropped by each connection task when it ends.
    pub tracker: mpsc::Sender<()>,
}

/// A flag that is set once and wakes every task waiting for it.
///
/// Every connection waits for two (drain, hard stop) beside serving, so its
/// task polls them on each wake-up, several times per request. A [`Watch`]
/// registered with its task costs one atomic load per poll; tokio's
/// `Notified` (under watch channels and `CancellationToken`) takes the
/// notifier's mutex, shared by every connection of every worker, on every
/// poll.
#[derive(Clone, Default)]
pub struct Signal(Arc<SignalState>);

#[derive(Default)]
struct SignalState {
    set: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub fn set(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// A handle that sets the signal when dropped, so an owner that goes
    /// away (a gateway whose start failed half-way, or that is dropped
    /// without a shutdown) never leaves connections waiting for ever.
    pub fn set_on_drop(&self) -> SetOnDrop {
        SetOnDrop(self.clone())
    }

    /// Resolves once the signal is set.
    pub fn watch(&self) -> Watch<'_> {
        // The `Notified` is made before any check of the flag, so a `set`
        // between the check and the registration still completes it.
        Watch { state: &self.0, notified: self.0.notify.notified(), registered: None }
    }
}

/// See [`Signal::set_on_drop`].
pub struct SetOnDrop(Signal);

impl SetOnDrop {
    pub fn set(&self) {
        self.0.set();
    }
}

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal::watch`].
    pub struct Watch<'a> {
        state: &'a SignalState,
        #[pin]
        notified: tokio::sync::futures::Notified<'a>,
        // The waker the `Notified` was registered with.
        registered: Option<Waker>,
    }
}

impl Future for Watch<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.state.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        // First poll, or polled from another task: (re)register. `set`
        // stores the flag before notifying, so Ready here means set.
        if this.notified.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Accepts connections until `shutdown.drain` flips, serving each with the
/// service that `make` builds for it. With `spread` (proxy workers), each
/// accepted connection goes to the worker with the fewest open connections,
/// which may be another one.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    opts: ListenerOptions,
    shutdown: Shutdown,
    mut spread: Option<crate::worker::Member>,
    make: F,
) where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let protocols = Arc::new(protocols(&opts));
    let drain = shutdown.drain.watch();
    tokio::pin!(drain);
    loop {
        let handed = async {
            match spread.as_mut() {
                Some(m) => m.handed_over().await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut drain => break,
            h = handed => match h {
                Some((stream, remote, load)) => Ok((stream, remote, Some(load))),
                None => break,
            },
            a = listener.accept() => a.map(|(stream, remote)| (stream, remote, None)),
        };
        let (stream, remote, load) = match accepted {
            // Handed over by another worker: already counted against this one.
            Ok((stream, remote, Some(load))) => (stream, remote, Some(load)),
            Ok((stream, remote, None)) => match spread.as_ref() {
                None => (stream, remote, None),
                Some(m) => match m.place(stream, remote) {
                    Some((stream, load)) => (stream, remote, Some(load)),
                    None => continue, // handed to another worker
                },
            },
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            protocols: protocols.clone(),
            tls: tls.clone(),
            shutdown: shutdown.clone(),
            handshake_timeout: opts.header_read_timeout,
            max_head: opts.max_header_bytes,
        };
        let make = make.clone();
        tokio::spawn(async move {
            let _load = load; // counted against this worker while the connection lives
            conn.run(stream, remote, make).await
        });
    }
    drop(listener);
}

struct Connection {
    protocols: Arc<Protocols>,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
    handshake_timeout: Duration,
    max_head: usize,
}

impl Connection {
    async fn run<F, Fut>(self, stream: TcpStream, remote: SocketAddr, make: F)
    where
        F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
    {
        let _tracker = self.shutdown.tracker.clone();
        let info = ConnInfo { client_ip: remote.ip(), tls: self.tls.is_some(), timer: None };
        match &self.tls {
            None => match first_bytes(stream, self.handshake_timeout, self.max_head).await {
                Ok((io, h2)) => self.drive(TokioIo::new(io), make, info, h2).await,
                Err(e) => tracing::debug!(%remote, error = %e, "connection closed before a request"),
            },
            // Boxed: the TLS states would otherwise be part of every plain
            // connection's task too (an async fn is as large as its largest
            // branch), and idle connections are paid for in memory.
            Some(acceptor) => {
                Box::pin(async {
                    match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => match first_bytes(tls, self.handshake_timeout, self.max_head).await {
                            Ok((io, h2)) => self.drive(TokioIo::new(io), make, info, h2).await,
                            Err(e) => tracing::debug!(%remote, error = %e, "connection closed before a request"),
                        },
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                })
                .await
            }
        }
    }

    async fn drive<I, F, Fut>(&self, io: I, make: F, mut info: ConnInfo, h2: bool)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
    {
        // The service's future is the handler's own, not wrapped in another
        // async block: hyper boxes it once per connection, and a wrapper
        // would hold it twice over (an idle connection's biggest cost).
        if h2 {
            let svc = hyper::service::service_fn(move |req| make(req, info.clone()));
            let streams = Streams::new();
            let conn = WithStreams { conn: self.protocols.h2(streams.clone()).serve_connection(io, svc), streams };
            // Boxed, so plain HTTP/1 connections do not carry its size.
            Box::pin(self.until_done(conn, |c| c.project().conn.graceful_shutdown())).await
        } else {
            // The connection's own timer, so its header-read deadlines and
            // its requests' deadlines share one timer-wheel entry (see
            // `deadline`).
            let timer = ConnTimer::new();
            let mut h1 = self.protocols.h1.clone();
            h1.timer(timer.clone());
            info.timer = Some(timer);
            let svc = hyper::service::service_fn(move |req| make(req, info.clone()));
            let conn = h1.serve_connection(io, svc).with_upgrades();
            self.until_done(conn, |c| c.graceful_shutdown()).await
        }
    }

    /// Serves `conn` until it ends; on drain asks it to finish what is in
    /// flight and close, on hard stop drops it.
    async fn until_done<C>(&self, conn: C, graceful: impl FnOnce(Pin<&mut C>))
    where
        C: Future<Output = Result<(), hyper::Error>>,
    {
        tokio::pin!(conn);
        let drain = self.shutdown.drain.watch();
        let hard = self.shutdown.hard_stop.watch();
        tokio::pin!(drain, hard);
        // Biased: the connection first, and no random branch order to draw
        // on every wake-up.
        tokio::select! {
            biased;
            res = conn.as_mut() => { log_conn_end(res); return; }
            _ = &mut hard => return,
            _ = drain => graceful(conn.as_mut()),
        }
        tokio::select! {
            biased;
            res = conn.as_mut() => log_conn_end(res),
            _ = hard => {}
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a connection's first bytes within `timeout`: enough to tell the
/// HTTP/2 preface from HTTP/1, under a deadline (a client that connects and
/// sends nothing, or trickles the preface, must not hold its connection
/// forever). The bytes read are replayed to the protocol through [`Rewind`];
/// the flag says HTTP/2.
async fn first_bytes<S: AsyncRead + Unpin>(
    mut io: S,
    timeout: Duration,
    max_head: usize,
) -> std::io::Result<(Rewind<S>, bool)> {
    let mut buf = bytes::BytesMut::with_capacity(128);
    let read = async {
        loop {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            let n = buf.len().min(H2_PREFACE.len());
            if n == H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {
            // HTTP/1 connections get their request framing watched (see
            // `framing`); HTTP/2 frames its messages itself.
            let h2 = buf.len() >= H2_PREFACE.len() && buf[..H2_PREFACE.len()] == *H2_PREFACE;
            let framing = (!h2).then(|| Framing::new(max_head));
            Ok((Rewind { prefix: buf.freeze(), inner: io, framing }, h2))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request head within header_read_timeout")),
    }
}

/// A stream that first yields bytes already read from it, and (HTTP/1)
/// refuses requests whose framing is ambiguous.
pub struct Rewind<S> {
    prefix: bytes::Bytes,
    inner: S,
    framing: Option<Framing>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
        } else {
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if let Some(framing) = self.framing.as_mut() {
            let new = &mut buf.filled_mut()[before..];
            if let Verdict::Smuggling { head_end } = framing.feed(new) {
                // Content-Length and Transfer-Encoding in one head: break the
                // head's final line feed so hyper refuses it (400, close)
                // before it is parsed, let alone forwarded.
                new[head_end - 1] = b'X';
                tracing::debug!("request with both Content-Length and Transfer-Encoding refused");
            }
            if framing.passthrough() {
                self.framing = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // HTTP/2 flushes through tokio-util's poll_write_buf, which writes
        // vectored whenever the stream can, even a single buffer (h2 copies
        // payloads under 256 bytes behind their frame heads, so most flushes
        // are one). One buffer goes out as a plain send.
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        match (parts.next(), parts.next()) {
            (Some(one), None) => Pin::new(&mut self.inner).poll_write(cx, one),
            _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn log_conn_end(res: Result<(), hyper::Error>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records which kind of write it was asked for.
    #[derive(Default)]
    struct Recorder {
        plain: usize,
        vectored: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.plain += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored.push(bufs.len());
            let before = self.bytes.len();
            for b in bufs {
                self.bytes.extend_from_slice(b);
            }
            Poll::Ready(Ok(self.bytes.len() - before))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_vectored_write_of_one_buffer_is_a_plain_write_and_of_more_stays_vectored() {
        use std::io::IoSlice;
        use tokio::io::AsyncWriteExt;
        let mut io = Rewind { prefix: bytes::Bytes::new(), inner: Recorder::default(), framing: None };
        assert!(io.is_write_vectored(), "h2 must still chain large payloads");
        let n = io.write_vectored(&[IoSlice::new(b""), IoSlice::new(b"head"), IoSlice::new(b"")]).await.unwrap();
        assert_eq!(n, 4);
        assert_eq!((io.inner.plain, io.inner.vectored.len()), (1, 0));
        let n = io.write_vectored(&[IoSlice::new(b"frame"), IoSlice::new(b"payload")]).await.unwrap();
        assert_eq!(n, 12);
        assert_eq!((io.inner.plain, &io.inner.vectored[..]), (1, &[2][..]));
        assert_eq!(io.inner.bytes, b"headframepayload");
    }

    #[tokio::test]
    async fn a_watch_resolves_when_set_before_or_after_its_first_poll() {
        let before = Signal::default();
        before.set();
        tokio::time::timeout(Duration::from_secs(5), before.watch()).await.expect("set before the watch");

        let after = Signal::default();
        let waiter = tokio::spawn({
            let after = after.clone();
            async move { after.watch().await }
        });
        tokio::task::yield_now().await; // the waiter registers first
        assert!(!waiter.is_finished());
        after.set();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken by set").unwrap();
        assert!(after.is_set());
    }

    #[tokio::test]
    async fn a_watch_made_before_set_resolves_when_first_polled_after_it() {
        let signal = Signal::default();
        let watch = signal.watch();
        signal.set();
        tokio::time::timeout(Duration::from_secs(5), watch).await.expect("resolved");
    }

    /// Polled again and again (as a connection's task does), a watch
    /// stays pending and still wakes the task when set, also after it was
    /// first registered with another waker.
    #[tokio::test]
    async fn a_watch_polled_often_still_wakes_its_task() {
        let signal = Signal::default();
        let waiting = signal.clone();
        let task = tokio::spawn(async move {
            let mut watch = std::pin::pin!(waiting.watch());
            assert!(watch.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
            std::future::poll_fn(|cx| {
                for _ in 0..100 {
                    assert!(watch.as_mut().poll(cx).is_pending());
                }
                Poll::Ready(())
            })
            .await;
            watch.await
        });
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        signal.set();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the task is woken").unwrap();
    }
}
