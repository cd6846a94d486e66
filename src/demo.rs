//! `waygate demo`: the gateway in front of four in-process demo services
//! (`users` ×2, `orders` ×2, one `orders` instance flaky), on
//! 127.0.0.1:8080 (proxy) and 127.0.0.1:9901 (admin) unless
//! `WAYGATE_DEMO_LISTEN` / `WAYGATE_DEMO_ADMIN` say otherwise. The services
//! register themselves with real HTTP heartbeats to `/registry` and
//! deregister with `DELETE` when the demo stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{Config, Gateway};

/// A small JSON HTTP service standing in for a real one.
pub struct DemoService {
    pub name: &'static str,
    pub instance: String,
    pub addr: SocketAddr,
    /// Flips to true when the instance "crashes" (`POST .../_demo/kill`).
    killed: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DemoService {
    /// Serves on 127.0.0.1:0. A flaky instance answers every third request
    /// with 500. A request to a path ending in `/_demo/kill` makes the
    /// instance stop serving and stop heartbeating, as a crash would.
    pub async fn spawn(name: &'static str, instance: String, flaky: bool) -> std::io::Result<DemoService> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counter = Arc::new(AtomicU64::new(0));
        let (kill_tx, killed) = watch::channel(false);
        let kill_tx = Arc::new(kill_tx);
        let id = instance.clone();
        let mut stop = killed.clone();
        let server = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.wait_for(|k| *k) => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (id, counter, kill_tx) = (id.clone(), counter.clone(), kill_tx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        let kill = req.uri().path().ends_with("/_demo/kill");
                        let fail = flaky && n % 3 == 0 && !kill;
                        let status = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
                        let body = serde_json::json!({
                            "service": name,
                            "instance": id,
                            "method": req.method().as_str(),
                            "path": req.uri().to_string(),
                            "request_id": req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
                            "request_number": n,
                            "ok": !fail,
                            "killed": kill,
                        });
                        if kill {
                            tracing::warn!(instance = %id, "demo instance killed: no more heartbeats; watch the gateway evict it");
                            let _ = kill_tx.send(true);
                        }
                        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(DemoService { name, instance, addr, killed, tasks: vec![server] })
    }

    /// Registers with the gateway's `/registry` and heartbeats every
    /// `ttl / 3` until killed.
    pub fn heartbeat(&mut self, admin: SocketAddr, ttl: Duration) {
        let body = serde_json::json!({
            "service": self.name,
            "id": self.instance,
            "address": self.addr.to_string(),
            "metadata": { "demo": true },
        })
        .to_string();
        let mut killed = self.killed.clone();
        let instance = self.instance.clone();
        self.tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let uri: http::Uri = format!("http://{admin}/registry").parse().expect("admin uri");
            loop {
                let req = Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.clone())))
                    .expect("request");
                match client.request(req).await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(%instance, status = %r.status(), "heartbeat refused"),
                    Err(e) => tracing::warn!(%instance, error = %e, "heartbeat failed"),
                }
                tokio::select! {
                    _ = killed.wait_for(|k| *k) => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
            }
        }));
    }

    /// Deregisters (graceful shutdown), unless the instance was killed.
    pub async fn deregister(&self, admin: SocketAddr) {
        if *self.killed.borrow() {
            return;
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::delete(format!("http://{admin}/registry/{}/{}", self.name, self.instance))
            .body(Full::new(Bytes::new()))
            .expect("request");
        match client.request(req).await {
            Ok(r) => tracing::info!(instance = %self.instance, status = %r.status(), "deregistered"),
            Err(e) => tracing::warn!(instance = %self.instance, error = %e, "deregistration failed"),
        }
    }
}

impl Drop for DemoService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The demo's heartbeat TTL (short, so an eviction shows quickly).
pub const DEMO_TTL: Duration = Duration::from_secs(6);

/// The demo's gateway config: two services with no static endpoints; their
/// instances register themselves.
pub fn demo_config(listen: &str, admin: &str) -> String {
    format!(
        r#"[gateway]
listen = "{listen}"
admin_listen = "{admin}"
drain_timeout = "5s"

[registry]
heartbeat_ttl = "{ttl}s"

[[services]]
name = "users"
balancer = "round_robin"

[[services]]
name = "orders"
balancer = "round_robin"
request_timeout = "5s"

# orders-2 fails every third request: a retry hides it from clients, outlier
# detection ejects it after 3 failures in a row (it rarely gets there), and
# the breaker opens only if the whole service fails.
[services.retry]
attempts = 1
on = ["connect_failure", "500", "503"]

[services.outlier_detection]
consecutive_failures = 3
base_ejection_time = "10s"

[services.circuit_breaker]
failure_threshold = 5
open_duration = "10s"

[[routes]]
path_prefix = "/api/users"
service = "users"

[[routes]]
path_prefix = "/api/orders"
service = "orders"
strip_prefix = true
"#,
        ttl = DEMO_TTL.as_secs()
    )
}

pub async fn run() -> ExitCode {
    let listen = std::env::var("WAYGATE_DEMO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let admin = std::env::var("WAYGATE_DEMO_ADMIN").unwrap_or_else(|_| "127.0.0.1:9901".into());
    let mut services = Vec::new();
    for (name, i, flaky) in [("users", 1, false), ("users", 2, false), ("orders", 1, false), ("orders", 2, true)] {
        match DemoService::spawn(name, format!("{name}-{i}"), flaky).await {
            Ok(s) => services.push(s),
            Err(e) => {
                eprintln!("demo: cannot start demo service {name}-{i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let text = demo_config(&listen, &admin);
    let config = match Config::parse(&text, "<demo>") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (p, a) = (gateway.proxy_addr(), gateway.admin_addr());
    for s in &mut services {
        tracing::info!(service = s.name, instance = %s.instance, address = %s.addr, "demo service up");
        s.heartbeat(a, DEMO_TTL);
    }
    println!(
        "\nwaygate demo is running. Try:\n\
         \x20 curl -i http://{p}/api/users/42          # round robin over users-1 and users-2\n\
         \x20 curl -i http://{p}/api/orders/7          # strip_prefix: orders sees /7; orders-2 fails every 3rd request, retried on orders-1\n\
         \x20 curl -i http://{p}/nowhere               # 404 no_route, JSON\n\
         \x20 curl -s http://{a}/registry              # the instances that registered themselves\n\
         \x20 curl -s http://{a}/admin/upstreams       # every endpoint and its state\n\
         \x20 curl -X POST http://{p}/api/users/_demo/kill   # crash the instance that answers: evicted after {ttl}s\n\
         \x20 curl -s http://{a}/health\n\
         Ctrl-C drains and stops.\n",
        ttl = DEMO_TTL.as_secs()
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for s in &services {
        s.deregister(a).await;
    }
    gateway.shutdown().await;
    drop(services);
    ExitCode::SUCCESS
}
