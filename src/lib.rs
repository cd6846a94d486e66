//! waygate: an API gateway and reverse proxy.
//!
//! [`Gateway::start`] builds everything from a validated [`Config`], binds
//! the proxy and admin listeners and returns their addresses, so tests can
//! start a gateway in-process on port 0. The binary (`src/main.rs`) is a thin
//! CLI around it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod balancer;
pub mod breaker;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod error;
pub mod framing;
pub mod health;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod retry;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::Config;
use proxy::Proxy;
use server::{ListenerOptions, Shutdown};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the proxy workers: {0}")]
    Workers(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A running gateway.
pub struct Gateway {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    proxy: Arc<Proxy>,
    admin: Arc<admin::AdminState>,
    config: Arc<Config>,
    drain: server::SetOnDrop,
    hard_stop: server::SetOnDrop,
    admin_stop: server::SetOnDrop,
    conns_rx: mpsc::Receiver<()>,
    /// Yields `None` once every proxy worker thread has ended.
    workers_rx: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
    /// Sweeper, snapshot writer: aborted at shutdown.
    background: Vec<JoinHandle<()>>,
    /// The OTLP exporter and its task (with `[telemetry] otlp_endpoint`).
    otlp: Option<(otlp::Exporter, JoinHandle<()>)>,
}

impl Gateway {
    /// Binds both listeners and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let g = &config.gateway;
        let tls = match &g.tls {
            Some(t) => Some(server::tls_acceptor(t).map_err(StartError::Tls)?),
            None => None,
        };
        let proxy_listener =
            TcpListener::bind(g.listen).await.map_err(|source| StartError::Bind { addr: g.listen, source })?;
        let admin_listener = TcpListener::bind(g.admin_listen)
            .await
            .map_err(|source| StartError::Bind { addr: g.admin_listen, source })?;
        let proxy_addr = proxy_listener.local_addr().map_err(|source| StartError::Bind { addr: g.listen, source })?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| StartError::Bind { addr: g.admin_listen, source })?;

        let metrics = Arc::new(metrics::Metrics::new());
        let registry = Arc::new(registry::Registry::new(config.registry.heartbeat_ttl, metrics.clone()));
        let proxy = Proxy::new(config.clone(), registry.clone(), metrics);
        if let Some(path) = &config.registry.snapshot {
            let restored = registry.restore(registry::persist::load(path));
            if restored > 0 {
                tracing::info!(target: "waygate::registry", restored, path = %path.display(), "leases restored from snapshot");
            }
        }
        let mut tasks = vec![registry.spawn_sweeper()];
        if let Some(path) = &config.registry.snapshot {
            tasks.push(registry::persist::spawn_writer(registry.clone(), path.clone()));
        }
        let admin = Arc::new(admin::AdminState::new(proxy.clone()));

        let (drain, hard_stop, admin_stop) =
            (server::Signal::default(), server::Signal::default(), server::Signal::default());
        // Owned by the gateway and set when dropped: should the start fail
        // past this point, the workers already running stop with it.
        let owned = (drain.set_on_drop(), hard_stop.set_on_drop(), admin_stop.set_on_drop());
        let (conns_tx, conns_rx) = mpsc::channel(1);
        let opts = ListenerOptions::from_config(g);

        let proxy_listener = proxy_listener.into_std().map_err(|source| StartError::Bind { addr: g.listen, source })?;
        let workers_rx = worker::spawn(
            worker::count(g.worker_threads),
            proxy_listener,
            tls,
            opts.clone(),
            Shutdown { drain: drain.clone(), hard_stop: hard_stop.clone(), tracker: conns_tx },
            proxy.clone(),
        )
        .map_err(StartError::Workers)?;
        // The admin listener serves until the process stops (through a drain),
        // so it has its own stop signal; its connections are not tracked.
        let (admin_conns_tx, _admin_conns_rx) = mpsc::channel(1);
        let a = admin.clone();
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            None,
            opts,
            Shutdown { drain: admin_stop.clone(), hard_stop: admin_stop.clone(), tracker: admin_conns_tx },
            None,
            move |req, _conn| {
                let a = a.clone();
                async move { Ok(admin::handle(a, req).await) }
            },
        ));
        let otlp = match &config.telemetry.otlp_endpoint {
            Some(endpoint) => match otlp::Exporter::start(endpoint, proxy.metrics()) {
                Ok((exporter, task)) => {
                    proxy.set_exporter(exporter.clone());
                    tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
                    Some((exporter, task))
                }
                Err(e) => {
                    tracing::error!(error = %e, "[telemetry] otlp_endpoint: no spans are exported");
                    None
                }
            },
            None => None,
        };
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, tls = g.tls.is_some(), config = %config.hash, "waygate listening");
        Ok(Gateway {
            proxy_addr,
            admin_addr,
            proxy,
            admin,
            config,
            drain: owned.0,
            hard_stop: owned.1,
            admin_stop: owned.2,
            conns_rx,
            workers_rx,
            background: tasks,
            tasks: vec![admin_task],
            otlp,
        })
    }

    /// Where the proxy listener is bound.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where the admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Graceful drain (SPEC §1): the proxy listener stops accepting at once,
    /// `/ready` turns 503, in-flight requests finish for up to
    /// `drain_timeout`, then whatever is left is cut. The admin listener serves
    /// until the end. Returns true when every connection finished in time.
    pub async fn shutdown(mut self) -> bool {
        self.admin.draining.store(true, Ordering::SeqCst);
        self.drain.set();
        let timeout = self.config.gateway.drain_timeout;
        tracing::info!(?timeout, "draining: no new connections, finishing in-flight requests");
        let drained = tokio::time::timeout(timeout, self.conns_rx.recv()).await.is_ok();
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(?timeout, "drain_timeout passed; cutting the remaining connections");
        }
        // Ends the workers (and cuts what is left after a timeout).
        self.hard_stop.set();
        if tokio::time::timeout(std::time::Duration::from_secs(1), self.workers_rx.recv()).await.is_err() {
            tracing::warn!("a proxy worker did not stop within 1s");
        }
        self.admin_stop.set();
        for t in &self.background {
            t.abort();
        }
        if let Some((exporter, task)) = self.otlp.take() {
            // The spans of the drained requests: one last export, bounded.
            if !exporter.flush(std::time::Duration::from_secs(1)).await {
                tracing::warn!("OTLP: final flush did not finish within 1s");
            }
            task.abort();
        }
        if let Some(path) = &self.config.registry.snapshot {
            registry::persist::save_now(self.proxy.registry(), path);
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        drained
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A gateway dropped without `shutdown` (tests) stops serving at once.
        self.drain.set();
        self.hard_stop.set();
        self.admin_stop.set();
        for t in &self.background {
            t.abort();
        }
        if let Some((_, task)) = &self.otlp {
            task.abort();
        }
    }
}
