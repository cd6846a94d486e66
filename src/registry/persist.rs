//! Registry snapshots: with `[registry] snapshot` set, the leases are written
//! to that file whenever they change (coalesced, at most four times a second)
//! and restored on start with their remaining TTL, so a restart does not drop
//! live instances. The file is written to a temporary name, synced and renamed
//! over, so a crash never leaves half a file. A missing or corrupt file is
//! logged and ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::lease::{LeaseTable, Registration};
use super::Registry;
use crate::config::{valid_host_port, valid_name};

const VERSION: u32 = 1;
/// Changes within this window are written together.
pub const COALESCE: Duration = Duration::from_millis(250);

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    version: u32,
    saved_at_unix_ms: u64,
    instances: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    service: String,
    id: String,
    address: String,
    weight: u32,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    last_heartbeat_unix_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The snapshot's contents: every lease with its age now.
fn render(table: &LeaseTable) -> Vec<u8> {
    let instances = table
        .services()
        .flat_map(|(service, leases)| {
            leases.iter().map(move |(id, l)| Entry {
                service: service.clone(),
                id: id.clone(),
                address: l.endpoint.address.to_string(),
                weight: l.endpoint.weight,
                metadata: l.metadata.clone(),
                last_heartbeat_unix_ms: unix_ms(l.last_heartbeat_wall),
            })
        })
        .collect();
    let file = SnapshotFile { version: VERSION, saved_at_unix_ms: unix_ms(SystemTime::now()), instances };
    serde_json::to_vec_pretty(&file).expect("snapshot serializes")
}

/// Writes `bytes` to `path` atomically: temp file in the same directory,
/// fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Reads a snapshot: valid entries with their age. Problems are logged;
/// a bad file yields nothing, a bad entry is skipped.
pub fn load(path: &Path) -> Vec<(Registration, Duration)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(target: "waygate::registry", path = %path.display(), "no registry snapshot yet");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(target: "waygate::registry", path = %path.display(), error = %e, "cannot read the registry snapshot; starting empty");
            return Vec::new();
        }
    };
    let file: SnapshotFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(target: "waygate::registry", path = %path.display(), error = %e, "corrupt registry snapshot ignored; starting empty");
            return Vec::new();
        }
    };
    if file.version != VERSION {
        tracing::warn!(target: "waygate::registry", path = %path.display(), version = file.version, "unknown registry snapshot version ignored");
        return Vec::new();
    }
    let now = unix_ms(SystemTime::now());
    file.instances
        .into_iter()
        .filter(|e| {
            let ok = valid_name(&e.service) && valid_name(&e.id) && valid_host_port(&e.address) && e.weight > 0;
            if !ok {
                tracing::warn!(target: "waygate::registry", service = %e.service, id = %e.id, "invalid snapshot entry skipped");
            }
            ok
        })
        .map(|e| {
            let age = Duration::from_millis(now.saturating_sub(e.last_heartbeat_unix_ms));
            let reg = Registration { service: e.service, id: e.id, address: e.address, weight: e.weight, metadata: e.metadata };
            (reg, age)
        })
        .collect()
}

/// Writes the snapshot now (at shutdown, so the last changes are not lost
/// in the coalescing window).
pub fn save_now(registry: &Registry, path: &Path) {
    let bytes = registry.with_table(render);
    if let Err(e) = write_atomic(path, &bytes) {
        tracing::warn!(target: "waygate::registry", path = %path.display(), error = %e, "cannot write the registry snapshot");
    }
}

/// Writes the snapshot after changes until aborted. The render happens under
/// the registry lock (a copy of small records); the file I/O does not.
pub fn spawn_writer(registry: Arc<Registry>, path: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            registry.changed.notified().await;
            tokio::time::sleep(COALESCE).await;
            let bytes = registry.with_table(render);
            let p = path.clone();
            match tokio::task::spawn_blocking(move || write_atomic(&p, &bytes)).await {
                Ok(Ok(())) => {
                    tracing::debug!(target: "waygate::registry", path = %path.display(), "registry snapshot written")
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "waygate::registry", path = %path.display(), error = %e, "cannot write the registry snapshot")
                }
                Err(e) => tracing::warn!(target: "waygate::registry", error = %e, "snapshot writer task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_keeps_ages() {
        let dir = std::env::temp_dir().join(format!("waygate-persist-{}", std::process::id()));
        let path = dir.join("registry.json");
        let mut t = LeaseTable::new(Duration::from_secs(30));
        let reg = Registration {
            service: "users".into(),
            id: "u1".into(),
            address: "127.0.0.1:3001".into(),
            weight: 2,
            metadata: serde_json::json!({"zone": "a"}).as_object().unwrap().clone(),
        };
        let wall = SystemTime::now() - Duration::from_secs(5);
        t.upsert(reg.clone(), tokio::time::Instant::now(), wall).unwrap();
        write_atomic(&path, &render(&t)).unwrap();
        let back = load(&path);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, reg);
        assert!(back[0].1 >= Duration::from_secs(5) && back[0].1 < Duration::from_secs(7), "{:?}", back[0].1);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_empty());
        assert!(load(&dir.join("missing.json")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
