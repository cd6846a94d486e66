//! Body types of the proxy. Both are enums rather than `BoxBody` so that the
//! common case (an upstream's `Incoming` streamed straight through) costs no
//! allocation and no dynamic dispatch.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::client::Pooled;
use super::exchange::Exchange;

/// The error of response bodies: an upstream's body can fail in ways hyper
/// has no error for (a malformed chunk, a short body).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body, streamed.
    Stream(Incoming),
    /// The client's body, streamed, its bytes counted (for the access log).
    Counted(Incoming, Arc<AtomicU64>),
    /// A body the gateway made or holds whole (health checks, empty bodies).
    Full(Option<Bytes>),
}

impl UpstreamBody {
    pub fn empty() -> Self {
        UpstreamBody::Full(None)
    }

    /// The client's body, counted into `counter` when there is one.
    pub fn client(body: Incoming, counter: Option<Arc<AtomicU64>>) -> Self {
        match counter {
            Some(c) => UpstreamBody::Counted(body, c),
            None => UpstreamBody::Stream(body),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Stream(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Counted(b, counter) => {
                let out = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(d))) = &out {
                    counter.fetch_add(d.data_ref().map_or(0, |d| d.len() as u64), Ordering::Relaxed);
                }
                out
            }
            UpstreamBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(b) | UpstreamBody::Counted(b, _) => b.is_end_stream(),
            UpstreamBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(b) | UpstreamBody::Counted(b, _) => b.size_hint(),
            UpstreamBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// What a response body carries: bytes the gateway made, or an upstream's
/// body streamed (its connection goes back to the pool when it ends). Apart
/// from [`UpstreamBody`] so that request bodies stay small.
#[derive(Debug)]
enum Answer {
    Made(Option<Bytes>),
    Upstream(Pooled),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Answer::Made(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Answer::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Made(b) => b.is_none(),
            Answer::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Made(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Answer::Upstream(b) => b.size_hint(),
        }
    }
}

/// A response body on its way to the client, carrying the request's
/// [`Exchange`] so counters stay exact however the exchange ends.
pub struct ResponseBody {
    inner: Answer,
    done: Option<Exchange>,
    bytes: u64,
    failed: bool,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("inner", &self.inner).field("bytes", &self.bytes).finish()
    }
}

impl ResponseBody {
    pub fn full(b: Bytes) -> Self {
        Self::new(Answer::Made(Some(b)))
    }

    pub fn empty() -> Self {
        Self::new(Answer::Made(None))
    }

    pub fn stream(b: Pooled) -> Self {
        Self::new(Answer::Upstream(b))
    }

    fn new(inner: Answer) -> Self {
        ResponseBody { inner, done: None, bytes: 0, failed: false }
    }

    /// Finishes `exchange` (counters, access log) when the body ends or is dropped.
    pub fn with_exchange(mut self, exchange: Exchange) -> Self {
        self.done = Some(exchange);
        self
    }

    fn finish(&mut self) {
        if let Some(exchange) = self.done.take() {
            exchange.finish(self.bytes, self.failed);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let out = Pin::new(&mut this.inner).poll_frame(cx);
        match &out {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.failed = true;
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}
