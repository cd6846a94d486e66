//! OTLP/HTTP span export (SPEC §5, `[telemetry] otlp_endpoint`).
//!
//! The request path hands one finished [`RequestSpan`] (the SERVER span of
//! a request plus a CLIENT span per upstream attempt) to [`Exporter::send`],
//! a non-blocking `try_send` into a bounded queue: when the queue is full
//! the spans are dropped and counted in `waygate_otlp_spans_dropped_total`.
//! A background task batches them (up to [`MAX_BATCH`] spans, or every
//! [`FLUSH_INTERVAL`]) into one `ExportTraceServiceRequest` (protobuf, the
//! `opentelemetry-proto` types) POSTed to `{otlp_endpoint}/v1/traces` with
//! a timeout. A failed export drops its batch (counted, warned about at
//! most every [`WARN_EVERY`]); nothing here ever waits on the request path.
//!
//! Only plain `http://` collectors are supported (no TLS client stack).
//! Without an `otlp_endpoint` none of this exists: no task, no queue, and
//! the request path allocates no span record.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::IntCounter;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::health::Outcome;
use crate::metrics::Metrics;

/// Queue capacity, in requests (each one carries 1 + attempts spans).
pub const QUEUE_CAPACITY: usize = 2048;
/// A batch is exported once it holds this many spans.
pub const MAX_BATCH: usize = 512;
/// A non-empty batch is exported at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// One export (connect, send, answer) may take this long.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Export failures are logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The SERVER span of one request and the CLIENT spans of its attempts.
#[derive(Debug)]
pub struct RequestSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The incoming `traceparent`'s parent id, when it was valid.
    pub parent_id: Option<[u8; 8]>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub method: Method,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub request_id: String,
    /// 0 when no response head was sent.
    pub status: u16,
    pub error: bool,
    pub attempts: Vec<AttemptSpan>,
}

/// One upstream attempt.
#[derive(Debug)]
pub struct AttemptSpan {
    pub span_id: [u8; 8],
    pub start_ns: u64,
    pub end_ns: u64,
    pub endpoint: Box<str>,
    pub outcome: Outcome,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
}

impl RequestSpan {
    fn span_count(&self) -> usize {
        1 + self.attempts.len()
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Lowercase hex → bytes; None when `hex` is not exactly `2 * N` hex digits.
pub fn hex_id<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(hex[2 * i])? << 4) | nibble(hex[2 * i + 1])?;
    }
    Some(out)
}

/// The handle the request path holds: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Box<RequestSpan>>,
    flush_tx: mpsc::Sender<oneshot::Sender<()>>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts the export task for `endpoint` (an `http://host:port` base URL).
    /// Must run inside a tokio runtime.
    pub fn start(endpoint: &str, metrics: &Metrics) -> Result<(Exporter, JoinHandle<()>), String> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let uri: Uri = url.parse().map_err(|e| format!("otlp_endpoint {endpoint:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "otlp_endpoint {endpoint:?}: only http:// collectors are supported (this build has no TLS client)"
            ));
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (flush_tx, flush_rx) = mpsc::channel(1);
        let dropped = metrics.otlp_dropped();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let task = Task {
            client,
            uri,
            exported: metrics.otlp_exported(),
            dropped: dropped.clone(),
            last_warn: None,
            unreported: 0,
        };
        let handle = tokio::spawn(task.run(rx, flush_rx));
        Ok((Exporter { inner: Arc::new(Inner { tx, flush_tx, dropped }) }, handle))
    }

    /// Queues the spans of a finished request, or drops (and counts) them
    /// when the queue is full or the exporter has stopped.
    pub fn send(&self, span: Box<RequestSpan>) {
        let n = span.span_count() as u64;
        if self.inner.tx.try_send(span).is_err() {
            self.inner.dropped.inc_by(n);
        }
    }

    /// Exports whatever is queued now; gives up after `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = oneshot::channel();
        tokio::time::timeout(timeout, async { self.inner.flush_tx.send(ack_tx).await.is_ok() && ack_rx.await.is_ok() })
            .await
            .unwrap_or(false)
    }
}

struct Task {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    exported: IntCounter,
    dropped: IntCounter,
    last_warn: Option<Instant>,
    /// Spans dropped by failed exports since the last warning.
    unreported: u64,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Box<RequestSpan>>,
        mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch: Vec<RequestSpan> = Vec::new();
        let mut spans = 0usize;
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(s) => {
                        spans += s.span_count();
                        batch.push(*s);
                        if spans >= MAX_BATCH {
                            self.export(std::mem::take(&mut batch), std::mem::take(&mut spans)).await;
                        }
                    }
                    None => {
                        self.export(batch, spans).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch), std::mem::take(&mut spans)).await;
                    }
                }
                Some(ack) = flush_rx.recv() => {
                    while let Ok(s) = rx.try_recv() {
                        spans += s.span_count();
                        batch.push(*s);
                    }
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch), std::mem::take(&mut spans)).await;
                    }
                    let _ = ack.send(());
                }
            }
        }
    }

    async fn export(&mut self, batch: Vec<RequestSpan>, spans: usize) {
        if batch.is_empty() {
            return;
        }
        let body = encode(&batch);
        let req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        let client = self.client.clone();
        let result = tokio::time::timeout(EXPORT_TIMEOUT, async move {
            let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
            if !status.is_success() {
                return Err(format!("collector answered {status}"));
            }
            // A partial success names the spans the collector rejected.
            let rejected = ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_spans.max(0) as u64);
            Ok(rejected)
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {EXPORT_TIMEOUT:?}")));
        let n = spans as u64;
        match result {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                self.exported.inc_by(n - rejected);
                if rejected > 0 {
                    self.dropped.inc_by(rejected);
                }
            }
            Err(error) => {
                self.dropped.inc_by(n);
                self.unreported += n;
                if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        target: "waygate::otlp",
                        collector = %self.uri,
                        %error,
                        dropped_spans = self.unreported,
                        "OTLP export failed; spans dropped"
                    );
                    self.last_warn = Some(Instant::now());
                    self.unreported = 0;
                }
            }
        }
    }
}

fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..Default::default()
    }
}

fn status(error: bool) -> Option<Status> {
    Some(Status { message: String::new(), code: if error { StatusCode::Error } else { StatusCode::Unset } as i32 })
}

/// The protobuf body of one export.
pub fn encode(batch: &[RequestSpan]) -> Vec<u8> {
    let mut spans = Vec::with_capacity(batch.iter().map(|s| s.span_count()).sum());
    for r in batch {
        let name = match &r.route {
            Some(route) => format!("{} {route}", r.method),
            None => r.method.to_string(),
        };
        let mut attributes =
            vec![kv_str("http.request.method", r.method.as_str()), kv_str("url.path", r.path.as_str())];
        if let Some(route) = &r.route {
            attributes.push(kv_str("http.route", &**route));
        }
        if r.status != 0 {
            attributes.push(kv_int("http.response.status_code", i64::from(r.status)));
        }
        if let Some(service) = &r.service {
            attributes.push(kv_str("waygate.service", &**service));
        }
        attributes.push(kv_str("waygate.request_id", r.request_id.as_str()));
        spans.push(Span {
            trace_id: r.trace_id.to_vec(),
            span_id: r.span_id.to_vec(),
            parent_span_id: r.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: SpanKind::Server as i32,
            start_time_unix_nano: r.start_ns,
            end_time_unix_nano: r.end_ns.max(r.start_ns),
            attributes,
            status: status(r.error),
            ..Default::default()
        });
        for a in &r.attempts {
            let mut attributes =
                vec![kv_str("server.address", &*a.endpoint), kv_str("waygate.outcome", a.outcome.label())];
            if let Some(s) = a.status {
                attributes.push(kv_int("http.response.status_code", i64::from(s)));
            }
            spans.push(Span {
                trace_id: r.trace_id.to_vec(),
                span_id: a.span_id.to_vec(),
                parent_span_id: r.span_id.to_vec(),
                name: "attempt".to_string(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: a.start_ns,
                end_time_unix_nano: a.end_ns.max(a.start_ns),
                attributes,
                status: status(a.outcome.is_failure()),
                ..Default::default()
            });
        }
    }
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv_str("service.name", "waygate")], ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "waygate".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    req.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Box<RequestSpan> {
        Box::new(RequestSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            start_ns: 10,
            end_ns: 20,
            method: Method::GET,
            path: "/api/x".into(),
            route: Some("/api".into()),
            service: Some("svc".into()),
            request_id: "rid".into(),
            status: 502,
            error: true,
            attempts: vec![AttemptSpan {
                span_id: [4; 8],
                start_ns: 11,
                end_ns: 19,
                endpoint: "127.0.0.1:1".into(),
                outcome: Outcome::ConnectError,
                status: None,
            }],
        })
    }

    #[tokio::test]
    async fn full_or_closed_queue_drops_and_counts() {
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(1);
        let (flush_tx, _flush_rx) = mpsc::channel(1);
        let e = Exporter { inner: Arc::new(Inner { tx, flush_tx, dropped: metrics.otlp_dropped() }) };
        e.send(sample());
        assert_eq!(metrics.otlp_dropped().get(), 0);
        e.send(sample()); // queue full: 2 spans dropped, no wait
        assert_eq!(metrics.otlp_dropped().get(), 2);
        assert!(rx.recv().await.is_some());
        rx.close();
        e.send(sample()); // exporter gone
        assert_eq!(metrics.otlp_dropped().get(), 4);
    }

    #[test]
    fn hex_ids() {
        assert_eq!(hex_id::<2>(b"0aff"), Some([0x0a, 0xff]));
        assert_eq!(hex_id::<2>(b"0af"), None);
        assert_eq!(hex_id::<2>(b"0axf"), None);
    }

    #[test]
    fn encodes_server_and_client_spans() {
        let bytes = encode(&[*sample()]);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let (server, client) = (&spans[0], &spans[1]);
        assert_eq!(server.name, "GET /api");
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(server.trace_id, vec![1; 16]);
        assert_eq!(server.parent_span_id, vec![3; 8]);
        assert_eq!(server.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(client.kind, SpanKind::Client as i32);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(client.trace_id, server.trace_id);
        assert!(client.attributes.iter().any(|kv| kv.key == "server.address"));
    }
}
