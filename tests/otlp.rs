//! OTLP/HTTP span export (SPEC §5, `[telemetry] otlp_endpoint`): a small
//! hyper server stands in for the collector and decodes every export with
//! the `opentelemetry-proto` types. A request yields a SERVER span carrying
//! the propagated trace id (and the incoming parent id) and a CLIENT span
//! per upstream attempt, child of it; an unreachable collector costs the
//! requests nothing and its spans are counted as dropped; without an
//! endpoint no exporter runs.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::admin::scrape;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Spans arrive within the 1 s batch interval; this leaves room for a slow machine.
const ARRIVAL: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// `service.name` of every export's resource.
    service_names: Vec<String>,
    /// Content types and paths of the export requests.
    requests: Vec<(String, String)>,
}

/// A fake OTLP/HTTP collector on 127.0.0.1:0.
struct Collector {
    addr: SocketAddr,
    got: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Received::default()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let g = g.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let g = g.clone();
                        async move { Ok::<_, Infallible>(handle(req, &g).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Collector { addr, got, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.got.lock().unwrap().spans.clone()
    }

    /// Waits for a SERVER span with `trace_id` and every CLIENT span of that trace.
    async fn wait_for_trace(&self, trace_id: &[u8]) -> (Span, Vec<Span>) {
        let what = format!("a SERVER span of trace {}", hex(trace_id));
        eventually(ARRIVAL, &what, || async {
            self.spans().iter().any(|s| s.trace_id == trace_id && s.kind == SpanKind::Server as i32)
        })
        .await;
        let spans = self.spans();
        let server =
            spans.iter().find(|s| s.trace_id == trace_id && s.kind == SpanKind::Server as i32).unwrap().clone();
        let clients =
            spans.into_iter().filter(|s| s.trace_id == trace_id && s.kind == SpanKind::Client as i32).collect();
        (server, clients)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(req: Request<Incoming>, got: &Mutex<Received>) -> Response<Full<Bytes>> {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let decoded = ExportTraceServiceRequest::decode(body);
    let mut g = got.lock().unwrap();
    g.requests.push((ct, path));
    match decoded {
        Ok(export) => {
            for rs in export.resource_spans {
                if let Some(name) = rs.resource.as_ref().and_then(|r| str_attr(&r.attributes, "service.name")) {
                    g.service_names.push(name);
                }
                for ss in rs.scope_spans {
                    g.spans.extend(ss.spans);
                }
            }
            Response::new(Full::new(ExportTraceServiceResponse::default().encode_to_vec().into()))
        }
        Err(e) => Response::builder().status(400).body(Full::new(format!("bad protobuf: {e}").into())).unwrap(),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn telemetry_toml(endpoint: &str) -> String {
    format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n")
}

fn status_code(span: &Span) -> i32 {
    span.status.as_ref().map_or(StatusCode::Unset as i32, |s| s.code)
}

#[tokio::test]
async fn request_with_traceparent_yields_server_and_attempt_spans() {
    let collector = Collector::start().await;
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&(simple_toml(&[&up], "") + &telemetry_toml(&collector.endpoint()))).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let req =
        Request::get("/api/hello").header("traceparent", format!("00-{trace}-{parent}-01")).body(empty()).unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let request_id = resp.header("x-request-id").expect("x-request-id").to_string();
    let seen = up.last().header("traceparent").expect("upstream got a traceparent").to_string();
    assert_eq!(&seen[3..35], trace, "trace id propagated");
    let sent_span_id = &seen[36..52];

    let (server, clients) = collector.wait_for_trace(&unhex(trace)).await;
    assert_eq!(hex(&server.span_id), sent_span_id, "the request span's id is the one sent upstream");
    assert_eq!(hex(&server.parent_span_id), parent, "parent: the incoming traceparent's parent id");
    assert_eq!(server.name, "GET /api");
    assert_eq!(str_attr(&server.attributes, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(str_attr(&server.attributes, "url.path").as_deref(), Some("/api/hello"));
    assert_eq!(str_attr(&server.attributes, "http.route").as_deref(), Some("/api"));
    assert_eq!(str_attr(&server.attributes, "waygate.service").as_deref(), Some("svc"));
    assert_eq!(str_attr(&server.attributes, "waygate.request_id").as_deref(), Some(request_id.as_str()));
    assert_eq!(int_attr(&server.attributes, "http.response.status_code"), Some(200));
    assert_ne!(status_code(&server), StatusCode::Error as i32);
    assert!(server.start_time_unix_nano > 0 && server.end_time_unix_nano >= server.start_time_unix_nano);

    assert_eq!(clients.len(), 1, "one attempt: {clients:?}");
    let attempt = &clients[0];
    assert_eq!(attempt.name, "attempt");
    assert_eq!(attempt.parent_span_id, server.span_id, "the attempt is a child of the request span");
    assert_ne!(attempt.span_id, server.span_id);
    assert_eq!(attempt.span_id.len(), 8);
    assert_eq!(str_attr(&attempt.attributes, "server.address"), Some(up.endpoint()));
    assert_eq!(str_attr(&attempt.attributes, "waygate.outcome").as_deref(), Some("success"));
    assert_eq!(int_attr(&attempt.attributes, "http.response.status_code"), Some(200));
    assert!(attempt.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(attempt.end_time_unix_nano <= server.end_time_unix_nano);

    {
        let got = collector.got.lock().unwrap();
        assert!(got.service_names.iter().all(|n| n == "waygate") && !got.service_names.is_empty());
        for (ct, path) in &got.requests {
            assert_eq!(ct, "application/x-protobuf");
            assert_eq!(path, "/v1/traces");
        }
    }
    eventually(ARRIVAL, "waygate_otlp_spans_exported_total counts the spans", || async {
        scrape(&gw).await.sum("waygate_otlp_spans_exported_total", &[]) >= 2.0
    })
    .await;
}

#[tokio::test]
async fn request_without_traceparent_uses_the_propagated_trace_id() {
    let collector = Collector::start().await;
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&(simple_toml(&[&up], "") + &telemetry_toml(&collector.endpoint()))).await;

    let resp = gw.get("/api/x").await;
    assert_eq!(resp.status, 200);
    let seen = up.last().header("traceparent").expect("upstream got a traceparent").to_string();
    let (server, clients) = collector.wait_for_trace(&unhex(&seen[3..35])).await;
    assert_eq!(hex(&server.span_id), &seen[36..52]);
    assert!(server.parent_span_id.is_empty(), "a new trace has no parent: {:?}", server.parent_span_id);
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].parent_span_id, server.span_id);
}

#[tokio::test]
async fn failed_attempt_marks_spans_as_errors() {
    let collector = Collector::start().await;
    let dead = dead_port().await;
    let body = service_toml("svc", &[dead.to_string()], "")
        + &route_toml("/api", "svc", "")
        + &telemetry_toml(&collector.endpoint());
    let gw = TestGateway::start(&body).await;

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let req = Request::get("/api/down")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .body(empty())
        .unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 502, "{}", resp.text());

    let (server, clients) = collector.wait_for_trace(&unhex(trace)).await;
    assert_eq!(int_attr(&server.attributes, "http.response.status_code"), Some(502));
    assert_eq!(status_code(&server), StatusCode::Error as i32);
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(str_attr(&clients[0].attributes, "waygate.outcome").as_deref(), Some("connect_error"));
    assert_eq!(int_attr(&clients[0].attributes, "http.response.status_code"), None);
    assert_eq!(status_code(&clients[0]), StatusCode::Error as i32);
}

#[tokio::test]
async fn unreachable_collector_drops_spans_without_slowing_requests() {
    let dead = dead_port().await;
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&(simple_toml(&[&up], "") + &telemetry_toml(&format!("http://{dead}")))).await;

    const N: usize = 20;
    let started = Instant::now();
    for i in 0..N {
        let resp = gw.get(&format!("/api/r{i}")).await;
        assert_eq!(resp.status, 200);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{N} requests took {took:?} with the collector down");

    eventually(ARRIVAL, "waygate_otlp_spans_dropped_total grows", || async {
        // Each request: a SERVER span and one attempt span.
        scrape(&gw).await.sum("waygate_otlp_spans_dropped_total", &[]) >= (2 * N) as f64
    })
    .await;
    let m = scrape(&gw).await;
    assert_eq!(m.sum("waygate_otlp_spans_exported_total", &[]), 0.0);

    // Still serving, still fast.
    let (resp, took) = support::admin::timed(gw.get("/api/after")).await;
    assert_eq!(resp.status, 200);
    assert!(took < Duration::from_secs(2), "a request after failed exports took {took:?}");
}

#[tokio::test]
async fn without_endpoint_no_exporter_runs() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&simple_toml(&[&up], "")).await;
    for i in 0..5 {
        assert_eq!(gw.get(&format!("/api/r{i}")).await.status, 200);
    }
    let m = scrape(&gw).await;
    // The families exist (at 0) but nothing is ever queued, exported or dropped.
    assert_eq!(m.get("waygate_otlp_spans_exported_total", &[]), Some(0.0), "{}", m.lines_with("otlp"));
    assert_eq!(m.get("waygate_otlp_spans_dropped_total", &[]), Some(0.0), "{}", m.lines_with("otlp"));
}

#[tokio::test]
async fn shutdown_flushes_queued_spans() {
    let collector = Collector::start().await;
    let up = Upstream::start("a").await;
    let mut gw = TestGateway::start(&(simple_toml(&[&up], "") + &telemetry_toml(&collector.endpoint()))).await;
    assert_eq!(gw.get("/api/last").await.status, 200);
    let seen = up.last().header("traceparent").expect("traceparent").to_string();
    let drained = within(Duration::from_secs(10), "shutdown", gw.begin_shutdown()).await.expect("shutdown task");
    assert!(drained);
    // No waiting here: the final flush sent them before shutdown returned.
    let trace = unhex(&seen[3..35]);
    assert!(
        collector.spans().iter().any(|s| s.trace_id == trace && s.kind == SpanKind::Server as i32),
        "the request's span was exported by the final flush"
    );
}
