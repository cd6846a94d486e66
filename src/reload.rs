//! Config reload: a change of the file (seen by a `notify` watch on its
//! directory, so editors that write-and-rename and bind-mounted files are
//! caught; plus a content-hash poll every [`POLL_INTERVAL`] as a fallback) or
//! SIGHUP → load and validate it exactly as at start-up → swap the route
//! table and services atomically, keeping the runtime state of services whose
//! settings did not change. An invalid file is refused with every error
//! logged and the old config keeps serving; the watcher keeps watching.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{content_hash, Config, ConfigErrors};
use crate::proxy::Proxy;

/// How often the file's content hash is compared with the active config's.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Quiet time after a file event before reading, so a burst of writes
/// (truncate + write + rename) is read once, complete.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Two reads this far apart must agree before a changed file is used.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Watches `path` and reloads on change or SIGHUP until aborted.
pub fn spawn(path: PathBuf, proxy: Arc<Proxy>) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = watch_dir(&path, tx);
    tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the watch
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by signal is off");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refused: Option<String> = None;
        loop {
            tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!(target: "waygate::reload", path = %path.display(), "SIGHUP received: reloading");
                    last_refused = None;
                    let _ = reload_if_changed(&path, &proxy, true, &mut last_refused);
                }
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    if settled(&path).await {
                        let _ = reload_if_changed(&path, &proxy, false, &mut last_refused);
                    }
                }
                _ = poll.tick() => {
                    if settled(&path).await {
                        let _ = reload_if_changed(&path, &proxy, false, &mut last_refused);
                    }
                }
            }
        }
    })
}

/// Whether the file reads the same twice, [`SETTLE`] apart: an in-place save
/// (truncate, then write) is not read half-written and refused for it.
async fn settled(path: &Path) -> bool {
    let first = std::fs::read(path).ok();
    tokio::time::sleep(SETTLE).await;
    first.is_some() && std::fs::read(path).ok() == first
}

/// A `notify` watch on the file's directory (not the file: an editor's
/// rename replaces the inode a file watch would follow).
fn watch_dir(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let handler = move |res: notify::Result<notify::Event>| {
        use notify::event::{EventKind, ModifyKind};
        let Ok(ev) = res else { return };
        // Only writes, creations, renames and removals of the config file
        // itself: reads (our own included) and metadata changes are noise.
        let relevant_kind = matches!(ev.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any)
            || matches!(ev.kind, EventKind::Modify(k) if !matches!(k, ModifyKind::Metadata(_)));
        let our_file = ev.paths.is_empty() || ev.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name);
        if relevant_kind && our_file {
            // Full channel = a reload is already pending.
            let _ = tx.try_send(());
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(target: "waygate::reload", error = %e, "file watch unavailable; relying on polling");
            return None;
        }
    };
    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(target: "waygate::reload", dir = %dir.display(), error = %e, "cannot watch the config directory; relying on polling");
        return None;
    }
    Some(w)
}

/// Reloads when the file's content differs from the active config (or
/// always, with `force`). A file that is briefly missing or unreadable is
/// skipped quietly; the same refused content is not reported twice.
fn reload_if_changed(
    path: &Path,
    proxy: &Proxy,
    force: bool,
    last_refused: &mut Option<String>,
) -> Result<bool, ConfigErrors> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            if force {
                tracing::error!(target: "waygate::reload", path = %path.display(), error = %e, "cannot read the config; the old config keeps serving");
                proxy.metrics().reload(false);
            }
            return Ok(false);
        }
    };
    if text.trim().is_empty() {
        // A truncated file mid-save, or a mistake: an empty config would
        // drop every route, so it is never applied by a reload.
        if force {
            tracing::warn!(target: "waygate::reload", path = %path.display(), "config file is empty; keeping the current config");
        }
        return Ok(false);
    }
    let hash = content_hash(text.as_bytes());
    if !force && hash == proxy.snapshot().config.hash {
        // Back to the active content: a later save of the refused file is news again.
        *last_refused = None;
        return Ok(false);
    }
    if !force && last_refused.as_deref() == Some(hash.as_str()) {
        return Ok(false);
    }
    match apply(&text, path, proxy) {
        Ok(()) => {
            *last_refused = None;
            Ok(true)
        }
        Err(e) => {
            *last_refused = Some(hash);
            Err(e)
        }
    }
}

/// Loads, validates and swaps in the file at `path` (SIGHUP semantics).
pub fn reload(path: &Path, proxy: &Proxy) -> Result<bool, ConfigErrors> {
    reload_if_changed(path, proxy, true, &mut None)
}

/// Validates `text` and swaps it in. Listener settings only change on
/// restart: a reload that changes them is applied without them, with a warning.
fn apply(text: &str, path: &Path, proxy: &Proxy) -> Result<(), ConfigErrors> {
    let mut config = match Config::parse(text, &path.display().to_string()) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(target: "waygate::reload", error = %e, "config refused; the old config keeps serving");
            }
            proxy.metrics().reload(false);
            return Err(errors);
        }
    };
    config.path = Some(path.to_path_buf());
    let old = proxy.snapshot();
    let (was, now) = (&old.config.gateway, &config.gateway);
    if was.listen != now.listen || was.admin_listen != now.admin_listen || was.tls != now.tls {
        tracing::warn!(
            target: "waygate::reload",
            "listen, admin_listen and [gateway.tls] change only on restart; keeping the current listeners"
        );
    }
    // Settings that belong to the listeners stay as the process started.
    config.gateway = was.clone();
    let hash = config.hash.clone();
    proxy.install(Arc::new(config));
    proxy.metrics().reload(true);
    tracing::info!(target: "waygate::reload", %hash, "config reloaded");
    Ok(())
}
