//! The pooled upstream client (HTTP/1.1 keep-alive), one per service so that
//! each service's `connect_timeout` applies and its pool survives reloads that
//! leave the service unchanged; plus one-off connections for upgrades.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::UpstreamBody;

pub type HttpClient = Client<HttpConnector, UpstreamBody>;

/// Idle pooled connections are closed after this (below the 60-120 s that
/// common upstream servers use, so the gateway closes first and never sends
/// on a connection the upstream is closing).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub fn build(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(http)
}

/// Error of a one-off upgrade connection.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeConnError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Sends an upgrade request (WebSocket, ...) on a connection of its own: an
/// upgraded connection becomes a tunnel and never returns to the pool.
pub async fn send_upgrade(
    address: &str,
    connect_timeout: Duration,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, UpgradeConnError> {
    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| UpgradeConnError::ConnectTimeout(connect_timeout))?
        .map_err(UpgradeConnError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    Ok(sender.send_request(req).await?)
}
