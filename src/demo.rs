//! `waygate demo`: the gateway in front of four in-process demo services
//! (`users` ×2, `orders` ×2, one `orders` instance flaky), on
//! 127.0.0.1:8080 (proxy) and 127.0.0.1:9901 (admin).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::{Config, Gateway};

/// A small JSON HTTP service standing in for a real one.
pub struct DemoService {
    pub name: &'static str,
    pub instance: String,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DemoService {
    /// Serves on 127.0.0.1:0. A flaky instance answers every third request
    /// with 500, which the gateway's outlier detection and breaker notice.
    pub async fn spawn(
        name: &'static str,
        instance: String,
        flaky: bool,
    ) -> std::io::Result<DemoService> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counter = Arc::new(AtomicU64::new(0));
        let id = instance.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (id, counter) = (id.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        let fail = flaky && n % 3 == 0;
                        let status = if fail {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let body = serde_json::json!({
                            "service": name,
                            "instance": id,
                            "method": req.method().as_str(),
                            "path": req.uri().to_string(),
                            "request_id": req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
                            "request_number": n,
                            "ok": !fail,
                        });
                        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                        *resp.status_mut() = status;
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(DemoService {
            name,
            instance,
            addr,
            task,
        })
    }
}

impl Drop for DemoService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The demo's gateway config for the given service addresses.
pub fn demo_config(
    listen: &str,
    admin: &str,
    users: &[SocketAddr],
    orders: &[SocketAddr],
) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[gateway]
listen = "{listen}"
admin_listen = "{admin}"
drain_timeout = "5s"

[[services]]
name = "users"
endpoints = [{users}]
balancer = "round_robin"

[[services]]
name = "orders"
endpoints = [{orders}]
balancer = "round_robin"
request_timeout = "5s"

[[routes]]
path_prefix = "/api/users"
service = "users"

[[routes]]
path_prefix = "/api/orders"
service = "orders"
strip_prefix = true
"#,
        users = list(users),
        orders = list(orders),
    )
}

pub async fn run() -> ExitCode {
    let listen = std::env::var("WAYGATE_DEMO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let admin = std::env::var("WAYGATE_DEMO_ADMIN").unwrap_or_else(|_| "127.0.0.1:9901".into());
    let mut services = Vec::new();
    for (name, i, flaky) in [
        ("users", 1, false),
        ("users", 2, false),
        ("orders", 1, false),
        ("orders", 2, true),
    ] {
        match DemoService::spawn(name, format!("{name}-{i}"), flaky).await {
            Ok(s) => services.push(s),
            Err(e) => {
                eprintln!("demo: cannot start demo service {name}-{i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let addrs = |n: &str| {
        services
            .iter()
            .filter(|s| s.name == n)
            .map(|s| s.addr)
            .collect::<Vec<_>>()
    };
    let text = demo_config(&listen, &admin, &addrs("users"), &addrs("orders"));
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
    for s in &services {
        tracing::info!(service = s.name, instance = %s.instance, address = %s.addr, "demo service up");
    }
    println!(
        "\nwaygate demo is running. Try:\n\
         \x20 curl -i http://{p}/api/users/42          # round robin over users-1 and users-2\n\
         \x20 curl -i http://{p}/api/orders/7          # strip_prefix: the orders service sees /7; orders-2 fails every 3rd request\n\
         \x20 curl -i http://{p}/nowhere               # 404 no_route, JSON\n\
         \x20 curl -s http://{a}/admin/upstreams       # every endpoint and its state\n\
         \x20 curl -s http://{a}/health\n\
         Ctrl-C drains and stops.\n"
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    gateway.shutdown().await;
    drop(services);
    ExitCode::SUCCESS
}
