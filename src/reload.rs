//! Config reload: SIGHUP → load and validate the file exactly as at start-up
//! → swap the route table and services atomically, keeping the runtime state
//! of services whose settings did not change. An invalid file is refused
//! with every error logged and the old config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::{Config, ConfigErrors};
use crate::proxy::Proxy;

/// Reloads `path` on every SIGHUP until aborted.
pub fn spawn(path: PathBuf, proxy: Arc<Proxy>) -> JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by signal is off");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!(path = %path.display(), "SIGHUP received: reloading");
            let _ = reload(&path, &proxy);
        }
    })
}

/// Loads, validates and swaps in `path`. Listener settings only change on
/// restart: a reload that changes them is applied without them, with a warning.
pub fn reload(path: &Path, proxy: &Proxy) -> Result<(), ConfigErrors> {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(target: "waygate::reload", error = %e, "config refused; the old config keeps serving");
            }
            proxy.metrics().reload(false);
            return Err(errors);
        }
    };
    let old = proxy.snapshot();
    let (was, now) = (&old.config.gateway, &config.gateway);
    if was.listen != now.listen || was.admin_listen != now.admin_listen || was.tls != now.tls {
        tracing::warn!(
            target: "waygate::reload",
            "listen, admin_listen and [gateway.tls] change only on restart; keeping the current listeners"
        );
        config.gateway = was.clone();
    }
    let hash = config.hash.clone();
    proxy.install(Arc::new(config));
    proxy.metrics().reload(true);
    tracing::info!(target: "waygate::reload", %hash, "config reloaded");
    Ok(())
}
