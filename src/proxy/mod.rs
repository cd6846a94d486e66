//! The request path: request id and trace context → route match → service
//! slot → endpoint pick → header rewrite → pooled upstream client → response
//! headers → access log (when the response body is done).
//!
//! The route table and the services it points at form one immutable
//! [`Snapshot`] behind an `ArcSwap`: a request loads it once, clones the
//! `Arc` of its route and never looks at shared mutable state again except
//! through atomics.

pub mod body;
pub mod client;
pub mod exchange;
pub mod h1;
pub mod headers;
pub mod router;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::balancer::{p2c_ewma, PickContext};
use crate::breaker::Ticket;
use crate::config::BalancerKind;
use crate::config::{Config, RouteConfig};
use crate::deadline::{far_future, timeout_at, ConnTimer};
use crate::error::GatewayError;
use crate::health::Outcome;
use crate::metrics::{Metrics, RouteMetrics};
use crate::otlp::Exporter;
use crate::registry::lease::LeaseTable;
use crate::registry::{Endpoint, Registry};
use crate::retry;
use crate::service::Service;
pub use body::{ResponseBody, UpstreamBody};
use client::Pooled;
use exchange::Exchange;
use router::Router;

pin_project_lite::pin_project! {
    /// A handler's future, answering as a hyper service does (never an error).
    pub struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Infallibly<F> {
    type Output = Result<F::Output, std::convert::Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

/// Who is on the other end of a client connection.
#[derive(Clone)]
pub struct ConnInfo {
    /// The client's address (its port is of no use to a request).
    pub client_ip: IpAddr,
    pub tls: bool,
    /// An HTTP/1 connection's timer, which its requests' deadlines share
    /// (see `deadline`); HTTP/2 streams, concurrent, have none.
    pub timer: Option<ConnTimer>,
}

/// A route as the request path needs it: its config, a label for logs and
/// metrics (made once), and its service.
#[derive(Debug)]
pub struct RouteEntry {
    pub config: RouteConfig,
    pub label: Arc<str>,
    pub service: Arc<Service>,
    pub metrics: RouteMetrics,
}

/// Routes and services of one config, swapped in whole.
#[derive(Debug)]
pub struct Snapshot {
    pub router: Router<Arc<RouteEntry>>,
    pub services: HashMap<String, Arc<Service>>,
    pub config: Arc<Config>,
    /// Metrics of requests that matched no route.
    pub no_route: Arc<RouteMetrics>,
}

impl Snapshot {
    /// Builds the snapshot for `config`, reusing the runtime (endpoints,
    /// balancer state, pool) of services in `previous` whose config is equal;
    /// new services start with the instances registered under their name.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
        registry: &LeaseTable,
        metrics: &Arc<Metrics>,
    ) -> Snapshot {
        let mut services = HashMap::with_capacity(config.services.len());
        for svc in &config.services {
            let old = previous.and_then(|p| p.services.get(&svc.name));
            let service = match old {
                Some(old) if old.config == *svc => old.clone(),
                // A changed policy: a new runtime, but the endpoints (and their
                // health, ejections, counters) carry over.
                _ => Service::new(
                    svc.clone(),
                    registry.endpoints_of(&svc.name),
                    old.map(|o| o.endpoints().endpoints.clone()).unwrap_or_default(),
                    metrics.clone(),
                    crate::worker::count(config.gateway.worker_threads),
                ),
            };
            services.insert(svc.name.clone(), service);
        }
        let mut router = Router::new();
        for r in &config.routes {
            let Some(service) = services.get(&r.service) else {
                continue;
            };
            let label: Arc<str> = match &r.host {
                Some(h) => format!("{h}{}", r.path_prefix).into(),
                None => r.path_prefix.as_str().into(),
            };
            let entry = Arc::new(RouteEntry {
                config: r.clone(),
                metrics: metrics.route(&label, &r.service),
                label,
                service: service.clone(),
            });
            router.insert(r.host.as_deref(), &r.path_prefix, r.methods.as_deref(), entry);
        }
        let no_route = Arc::new(metrics.route("", ""));
        Snapshot { router, services, config, no_route }
    }
}

/// The proxy: owns the current snapshot and the registry feeding it.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Set once at start when `[telemetry] otlp_endpoint` is configured.
    otlp: OnceLock<Exporter>,
}

impl Proxy {
    /// A proxy serving `config`, with registered instances published into its
    /// services from now on.
    pub fn new(config: Arc<Config>, registry: Arc<Registry>, metrics: Arc<Metrics>) -> Arc<Proxy> {
        let snapshot = registry.with_table(|t| Snapshot::build(config, None, t, &metrics));
        let proxy =
            Arc::new(Proxy { snapshot: ArcSwap::from_pointee(snapshot), registry, metrics, otlp: OnceLock::new() });
        let weak = Arc::downgrade(&proxy);
        proxy.registry.set_publisher(Box::new(move |service, endpoints| {
            if let Some(p) = weak.upgrade() {
                if let Some(svc) = p.snapshot.load().services.get(service) {
                    svc.set_registered(endpoints);
                }
            }
        }));
        proxy
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Exports the spans of every request from now on (once; later calls are ignored).
    pub fn set_exporter(&self, exporter: Exporter) {
        let _ = self.otlp.set(exporter);
    }

    /// Swaps in a new config; requests in flight finish on the old one. The
    /// registry is held while the new services are built and swapped in, so
    /// no registration falls between them.
    pub fn install(&self, config: Arc<Config>) {
        self.registry.set_ttl(config.registry.heartbeat_ttl);
        self.registry.with_table(|t| {
            let old = self.snapshot.load_full();
            let new = Snapshot::build(config, Some(&old), t, &self.metrics);
            // Endpoint series of services or endpoints that are gone; the
            // checkers of replaced runtimes stop (in-flight requests may keep
            // them alive a while, but they no longer decide anything).
            for (name, svc) in &old.services {
                if !new.services.get(name).is_some_and(|n| Arc::ptr_eq(n, svc)) {
                    svc.stop_checker();
                }
                let now = new.services.get(name).map(|s| s.endpoints());
                for ep in svc.endpoints().endpoints.iter() {
                    if !now.as_ref().is_some_and(|n| n.endpoints.iter().any(|e| e.address == ep.address)) {
                        self.metrics.remove_endpoint(name, &ep.address);
                    }
                }
            }
            self.snapshot.store(Arc::new(new));
        });
    }

    /// Serves one client request, in the shape a hyper service wants. A
    /// plain function returning [`Proxy::handle`]'s own future: the request
    /// is taken apart before that future is built, so it holds the parts
    /// once (an `async fn` taking the request would keep the request's slot
    /// beside them), and no outer future holds it (hyper moves a request's
    /// future a few times, and every byte of it is copied each time).
    pub fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Infallibly<impl Future<Output = Response<ResponseBody>>> {
        let (parts, body) = req.into_parts();
        Infallibly { inner: self.handle(parts, body, conn) }
    }

    #[allow(clippy::manual_async_fn)] // on purpose, see the block's comment
    fn handle(
        self: Arc<Self>,
        mut parts: http::request::Parts,
        body: Incoming,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> {
        // A block rather than an `async fn`: an async fn copies its
        // arguments into locals, so its future would hold the request's
        // parts, body and connection twice.
        async move {
            // tokio's clock (the same one, pausable in tests): the deadline
            // below is derived from it without reading the clock again. Kept
            // in the exchange only: a local would take room in this future
            // across every await.
            // What the gateway adds to the upstream request, beside the
            // client's headers (see `Added`).
            let mut added = headers::Added::new(&parts.headers);
            let request_id = headers::ensure_request_id(&mut parts.headers, &mut added);
            let mut ex = Exchange::new(
                tokio::time::Instant::now().into_std(),
                &parts.method,
                &parts.uri,
                &request_id,
                self.otlp.get(),
            );

            // A reverse proxy has no use for CONNECT: its authority-form target
            // names no path to route (it is counted with the unrouted requests).
            if parts.method == http::Method::CONNECT {
                ex.set_no_route(self.snapshot.load().no_route.clone());
                let message = "CONNECT is not supported: waygate is a reverse proxy, not a forward proxy".to_string();
                return error_response(&GatewayError::BadRequest { message }, &request_id, ex);
            }

            // More than one Host line (RFC 9112 §3.2: 400): the gateway
            // routes on one, an upstream might take another. The map counts
            // values and names, so a request with no repeated name pays
            // nothing more.
            if parts.headers.len() != parts.headers.keys_len()
                && parts.headers.get_all(header::HOST).iter().nth(1).is_some()
            {
                ex.set_no_route(self.snapshot.load().no_route.clone());
                let message = "more than one Host header".to_string();
                return error_response(&GatewayError::BadRequest { message }, &request_id, ex);
            }

            let Some((route, prefix_end)) = self.route(&parts) else {
                ex.set_no_route(self.snapshot.load().no_route.clone());
                let err = GatewayError::NoRoute { method: parts.method.clone(), path: parts.uri.path().to_string() };
                return error_response(&err, &request_id, ex);
            };
            ex.set_route(route.clone());
            let service = &route.service;

            // Concurrency limit: shed load at once rather than queue.
            if !service.try_acquire() {
                let err = GatewayError::Overloaded {
                    service: service.name.to_string(),
                    limit: service.config.max_concurrent_requests,
                };
                return error_response(&err, &request_id, ex);
            }
            ex.hold_slot();

            let hash = service.request_hash(&parts, conn.client_ip);
            let upgrade = headers::wants_upgrade(&parts.headers, parts.version);
            rewrite_request(&mut parts, &mut added, &route.config, prefix_end, &conn, upgrade);
            ex.propagate_trace(&mut parts.headers, &mut added);
            let timeout = route.config.request_timeout.unwrap_or(service.config.request_timeout);
            // request_timeout bounds the whole exchange until the response head,
            // retries included.
            // Checked: an absurd configured timeout must not panic here.
            let deadline = ex.started().checked_add(timeout).unwrap_or_else(far_future);

            // Retries need a body that can be sent again.
            let retry = service
                .config
                .retry
                .as_ref()
                .filter(|r| !upgrade && r.attempts > 0 && retry::idempotent(&parts.method));
            if let (Some(_), Some(budget)) = (retry, &service.budget) {
                budget.deposit();
            }
            let counter = if http_body::Body::is_end_stream(&body) { None } else { ex.request_body_counter() };
            let mut body = match retry {
                // Bounded by the request's deadline: a client that stalls its
                // body holds its slot no longer than request_timeout.
                Some(_) => {
                    let held = match ReplayBody::hold(body, &parts.headers, counter) {
                        Hold::Ready(b) => Ok(Ok(b)),
                        Hold::Read(read) => timeout_at(conn.timer.as_ref(), deadline, read).await,
                    };
                    match held {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => {
                            let err =
                                GatewayError::BadRequest { message: format!("cannot read the request body: {e}") };
                            return error_response(&err, &request_id, ex);
                        }
                        Err(_) => {
                            let err = GatewayError::BadRequest {
                                message: format!(
                                    "the request body did not arrive within {}",
                                    humantime::format_duration(timeout)
                                ),
                            };
                            return error_response(&err, &request_id, ex);
                        }
                    }
                }
                None => ReplayBody::Stream(Some(UpstreamBody::client(body, counter))),
            };

            // Circuit breaker, outside the retries: a request counts once.
            let mut ticket = match &service.breaker {
                Some(b) => match b.try_acquire() {
                    Ok(admission) => Some(Ticket::new(b, admission)),
                    Err(retry_after) => {
                        let err = GatewayError::CircuitOpen { service: service.name.to_string(), retry_after };
                        return error_response(&err, &request_id, ex);
                    }
                },
                None => None,
            };

            if upgrade {
                let Some(endpoint) = service.pick(&PickContext { hash, avoid: &[] }) else {
                    let err = GatewayError::NoHealthyUpstream { service: service.name.to_string() };
                    return error_response(&err, &request_id, ex);
                };
                ex.use_endpoint(endpoint);
                // Tunnels go through hyper's client, which takes one map.
                added.merge_into(&mut parts.headers);
                // Boxed: a rare path should not make every request's future, and
                // so every idle connection (hyper keeps room for it), larger.
                return Box::pin(self.tunnel(parts, body.take(), &route, timeout, request_id, ex)).await;
            }

            let mut tried: Vec<Arc<Endpoint>> = Vec::new();
            let Some(mut endpoint) = service.pick(&PickContext { hash, avoid: &[] }) else {
                let err = GatewayError::NoHealthyUpstream { service: service.name.to_string() };
                return error_response(&err, &request_id, ex);
            };
            loop {
                ex.use_endpoint(endpoint.clone());
                let may_retry = retry.is_some_and(|r| tried.len() < r.attempts as usize) && body.replayable();
                let attempt_deadline = match retry.and_then(|r| r.per_try_timeout) {
                    Some(per_try) => {
                        deadline.min(tokio::time::Instant::now().checked_add(per_try).unwrap_or_else(far_future))
                    }
                    None => deadline,
                };
                // Latency feeds p2c_ewma's estimate; other balancers skip the clock read.
                let p2c = service.balancer().kind() == BalancerKind::P2cEwma;
                let sent_at = p2c.then(Instant::now);
                let attempt_at = ex.attempt_started();
                let sent = service.client().request(&endpoint.authority, &parts, &added, body.take());
                let result = timeout_at(conn.timer.as_ref(), attempt_deadline, sent).await;
                if let Some(t) = sent_at {
                    // Responses and timeouts are latency; a refused connection says nothing about it.
                    if !matches!(result, Ok(Err(_))) {
                        p2c_ewma::observe(&endpoint.stats, t.elapsed(), p2c_ewma::now_ns(), p2c_ewma::DEFAULT_DECAY);
                    }
                }
                let outcome = match &result {
                    Ok(Ok(resp)) if resp.status().is_server_error() => Outcome::Http5xx(resp.status().as_u16()),
                    Ok(Ok(_)) => Outcome::Success,
                    Ok(Err(e)) if e.is_client_body() => {
                        // The client's body broke (bad chunking, client gone):
                        // not the upstream's fault, so no outlier/breaker verdict.
                        drop(ticket.take());
                        let err =
                            GatewayError::BadRequest { message: format!("the request body could not be read: {e}") };
                        return error_response(&err, &request_id, ex);
                    }
                    Ok(Err(_)) => Outcome::ConnectError,
                    Err(_) => Outcome::Timeout,
                };
                service.record_outcome(&endpoint, outcome);
                let status = match &result {
                    Ok(Ok(resp)) => Some(resp.status().as_u16()),
                    _ => None,
                };
                ex.record_attempt(attempt_at, &endpoint, outcome, status);
                if let Some(m) = endpoint.metrics.load().as_ref() {
                    m.record(outcome);
                }

                let wants_retry = may_retry
                    && retry.is_some_and(|r| match &result {
                        Ok(Ok(resp)) => retry::retryable_status(r, resp.status().as_u16()),
                        _ => retry::retryable(r, outcome),
                    })
                    && tokio::time::Instant::now() < deadline;
                if wants_retry {
                    // The next endpoint is chosen before the budget is spent: with
                    // none left, the client gets this attempt's real answer.
                    tried.push(endpoint.clone());
                    let next = service.pick(&PickContext { hash, avoid: &tried });
                    if let Some(next) = next.filter(|_| service.budget.as_ref().is_some_and(|b| b.withdraw())) {
                        tracing::debug!(service = %service.name, endpoint = %endpoint.address, outcome = %outcome.describe(), "retrying on another endpoint");
                        service.note_retry();
                        endpoint = next;
                        continue;
                    }
                }

                if let Some(t) = ticket.take() {
                    t.finish(!outcome.is_failure());
                }
                return answer(result, service, &endpoint, timeout, &request_id, ex);
            }
        }
    }

    fn route(&self, parts: &http::request::Parts) -> Option<(Arc<RouteEntry>, usize)> {
        let snap = self.snapshot.load();
        let host = parts.uri.host().or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        let m = snap.router.find(host, parts.uri.path(), &parts.method)?;
        Some((m.value.clone(), m.prefix_end))
    }

    /// Forwards an `Upgrade` request on a connection of its own and, on
    /// `101 Switching Protocols`, splices the two upgraded connections.
    async fn tunnel(
        &self,
        mut parts: http::request::Parts,
        body: UpstreamBody,
        route: &RouteEntry,
        timeout: Duration,
        request_id: HeaderValue,
        mut ex: Exchange,
    ) -> Response<ResponseBody> {
        let endpoint = ex.endpoint().cloned().expect("endpoint chosen");
        let service = &route.service;
        let Some(client_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            // HTTP/2 requests cannot upgrade this way; treat as a plain request.
            let result = tokio::time::timeout(
                timeout,
                service.client().request(&endpoint.authority, &parts, &headers::Added::default(), body),
            )
            .await;
            return answer(result, service, &endpoint, timeout, &request_id, ex);
        };
        // A connection of our own, on hyper's client, which writes the
        // URI as given (origin-form).
        parts.uri = parts.uri.path_and_query().map(|pq| Uri::from(pq.clone())).unwrap_or_default();
        let req = Request::from_parts(parts, body);
        let sent =
            tokio::time::timeout(timeout, client::send_upgrade(&endpoint.address, service.config.connect_timeout, req))
                .await;
        let mut resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return error_response(&connect_error(service, &endpoint, e), &request_id, ex),
            Err(_) => return error_response(&timeout_error(service, &endpoint, timeout), &request_id, ex),
        };
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            // hyper's client leaves the hop-by-hop headers in (the own
            // client's parser drops them).
            headers::remove_hop_by_hop(resp.headers_mut(), false);
            return upstream_response(resp.map(Pooled::unpooled), &request_id, ex);
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut head, _) = resp.into_parts();
        headers::remove_hop_by_hop(&mut head.headers, true);
        head.headers.insert(headers::X_REQUEST_ID.clone(), request_id);
        ex.set_status(101);
        // The exchange (and the endpoint's in-flight count) lasts as long as the tunnel.
        tokio::spawn(async move {
            match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(down), Ok(up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        Ok((_to_up, to_down)) => ex.finish(to_down, false),
                        Err(e) => {
                            tracing::debug!(error = %e, "tunnel ended with an error");
                            ex.finish(0, true)
                        }
                    }
                }
                (a, b) => {
                    tracing::debug!(client = ?a.err(), upstream = ?b.err(), "upgrade did not complete");
                    ex.finish(0, true)
                }
            }
        });
        Response::from_parts(head, ResponseBody::empty())
    }
}

/// The client's answer for an attempt's result.
fn answer<E: std::error::Error + Send + Sync + 'static>(
    result: Result<Result<Response<Pooled>, E>, impl std::error::Error>,
    service: &Service,
    endpoint: &Endpoint,
    timeout: Duration,
    request_id: &HeaderValue,
    ex: Exchange,
) -> Response<ResponseBody> {
    match result {
        Ok(Ok(resp)) => upstream_response(resp, request_id, ex),
        Ok(Err(e)) => {
            let err = connect_error(service, endpoint, e);
            tracing::debug!(error = %err, "upstream request failed");
            error_response(&err, request_id, ex)
        }
        Err(_) => error_response(&timeout_error(service, endpoint, timeout), request_id, ex),
    }
}

fn connect_error(
    service: &Service,
    endpoint: &Endpoint,
    source: impl std::error::Error + Send + Sync + 'static,
) -> GatewayError {
    GatewayError::UpstreamConnect {
        service: service.name.to_string(),
        endpoint: endpoint.address.to_string(),
        source: Box::new(source),
    }
}

fn timeout_error(service: &Service, endpoint: &Endpoint, timeout: Duration) -> GatewayError {
    GatewayError::UpstreamTimeout { service: service.name.to_string(), endpoint: endpoint.address.to_string(), timeout }
}

/// The request body as the retry loop sees it.
enum ReplayBody {
    /// Streamed once; taken by the first attempt.
    Stream(Option<UpstreamBody>),
    /// Small and complete: sent again on every attempt.
    Held(Option<Bytes>),
}

/// What [`ReplayBody::hold`] leaves to do: nothing, or reading a small
/// body whole.
enum Hold<F> {
    Ready(ReplayBody),
    /// Boxed: only requests with a body to hold pay for this future's
    /// room, not every request's future (see `handler_future_stays_small`).
    Read(Pin<Box<F>>),
}

impl ReplayBody {
    /// Holds an empty or small (Content-Length ≤ 64 KiB) body so it can be
    /// replayed; anything else keeps streaming (and is not retried).
    /// `counter` (access log on) receives the body's size.
    fn hold(
        body: Incoming,
        headers: &http::HeaderMap,
        counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    ) -> Hold<impl Future<Output = Result<ReplayBody, String>>> {
        use http_body::Body as _;
        use http_body_util::BodyExt as _;
        if body.is_end_stream() {
            return Hold::Ready(ReplayBody::Held(None));
        }
        match headers::content_length(headers) {
            Some(n) if n <= retry::MAX_REPLAY_BODY => Hold::Read(Box::pin(async move {
                let bytes = http_body_util::Limited::new(body, retry::MAX_REPLAY_BODY as usize)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if let Some(c) = counter {
                    c.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(ReplayBody::Held((!bytes.is_empty()).then_some(bytes)))
            })),
            _ => Hold::Ready(ReplayBody::Stream(Some(UpstreamBody::client(body, counter)))),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, ReplayBody::Held(_))
    }

    fn take(&mut self) -> UpstreamBody {
        match self {
            ReplayBody::Stream(b) => b.take().unwrap_or_else(UpstreamBody::empty),
            ReplayBody::Held(b) => UpstreamBody::Full(b.clone()),
        }
    }
}

/// Rewrites the inbound request head for the upstream hop.
fn rewrite_request(
    parts: &mut http::request::Parts,
    added: &mut headers::Added,
    route: &RouteConfig,
    prefix_end: usize,
    conn: &ConnInfo,
    upgrade: bool,
) {
    // The host the client asked for, the one its route was matched on: the
    // target's authority when it has one (HTTP/2's :authority, an HTTP/1
    // absolute-form target), else Host. A Host beside such a target is
    // replaced by it (RFC 9112 §3.2.2, RFC 9113 §8.3.1), so the upstream
    // never sees another host than the one routed on.
    let (host, from_target) = match parts.uri.authority() {
        Some(a) => {
            let a = a.as_str();
            (HeaderValue::from_str(a.rsplit('@').next().unwrap_or(a)).ok(), true)
        }
        None => (parts.headers.get(header::HOST).cloned(), false),
    };
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    headers::set_forwarded(&mut parts.headers, added, conn.client_ip, conn.tls, host.as_ref());
    if let Some(h) = host {
        // A Host the client sent with an origin-form target is kept as sent.
        if from_target || !parts.headers.contains_key(header::HOST) {
            added.set(&mut parts.headers, &header::HOST, h);
        }
    }
    if route.strip_prefix && prefix_end > 0 {
        let path = parts.uri.path();
        let rest = &path[prefix_end.min(path.len())..];
        let rest = if rest.is_empty() { "/" } else { rest };
        let pq = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok();
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
    }
    // Upstream pools speak HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
}

/// The upstream's response on its way back (its hop-by-hop headers already
/// dropped, see `h1::parse_response`): request id in, body streamed with the
/// exchange attached.
fn upstream_response(resp: Response<Pooled>, request_id: &HeaderValue, mut ex: Exchange) -> Response<ResponseBody> {
    let (mut head, body) = resp.into_parts();
    head.headers.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    ex.set_status(head.status.as_u16());
    Response::from_parts(head, ResponseBody::stream(body).with_exchange(ex))
}

/// A gateway-made error answer (SPEC §3).
pub fn error_response(err: &GatewayError, request_id: &HeaderValue, mut ex: Exchange) -> Response<ResponseBody> {
    let (mut head, body) = err.to_response(request_id.to_str().unwrap_or("")).into_parts();
    head.headers.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    ex.set_status(head.status.as_u16());
    Response::from_parts(head, ResponseBody::full(body).with_exchange(ex))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler's future is paid for in copies (hyper moves an HTTP/2
    /// stream's future several times, and allocates it per stream) and in
    /// memory (an HTTP/1 connection keeps room for it while idle). It was
    /// 1,200 bytes and is 936 (2026-12-08): this keeps it from growing
    /// back unnoticed.
    #[test]
    fn handler_future_stays_small() {
        fn returned_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = returned_size(Proxy::serve as fn(_, _, _) -> _);
        assert!(size <= 960, "the handler's future is {size} bytes");
    }
}
