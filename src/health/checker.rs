//! Active health checks: per service, every endpoint (static and registered)
//! is probed with `GET <path>` every `interval` (jittered), all endpoints of
//! a round concurrently, each with its own `timeout`. A status in
//! `expected_status` passes; anything else, a timeout or a connect error fails.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use http::header::{HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Limited};
use tokio::task::JoinSet;

use super::jittered;
use crate::config::HealthCheckConfig;
use crate::proxy::headers::Added;
use crate::proxy::UpstreamBody;
use crate::registry::Endpoint;
use crate::service::Service;

/// Starts the check loop of a service that has `[services.health_check]`.
/// The loop ends by itself once the service is dropped (after a reload that
/// replaced it).
pub fn spawn(service: &Arc<Service>) -> Option<tokio::task::JoinHandle<()>> {
    let hc = service.config.health_check.clone()?;
    let weak = Arc::downgrade(service);
    Some(tokio::spawn(run(weak, hc)))
}

async fn run(weak: Weak<Service>, hc: HealthCheckConfig) {
    let mut probes = JoinSet::new();
    loop {
        tokio::time::sleep(jittered(hc.interval)).await;
        while probes.try_join_next().is_some() {}
        let Some(service) = weak.upgrade() else { return };
        // Every endpoint on its own task: a probe that hangs until its timeout
        // delays neither the others nor the next round. An endpoint whose
        // previous probe is still out is skipped this round.
        for ep in service.endpoints().endpoints.iter().cloned() {
            if ep.stats.probing.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (client, hc, weak) = (service.client().clone(), hc.clone(), weak.clone());
            probes.spawn(async move {
                let slot = ProbeSlot(ep.clone());
                let result = probe(&client, &ep, &hc).await;
                drop(slot);
                let Some(service) = weak.upgrade() else { return };
                let (passed, detail) = match result {
                    Ok(status) => {
                        let ok = (hc.expected_status.0..=hc.expected_status.1).contains(&status);
                        (ok, format!("status {status}"))
                    }
                    Err(e) => (false, e),
                };
                service.record_check(&ep, passed, &detail, (hc.healthy_threshold, hc.unhealthy_threshold));
            });
        }
    }
}

/// Marks an endpoint's probe as done however the probe task ends (it is
/// aborted when its service is replaced, and the endpoint may live on).
struct ProbeSlot(Arc<Endpoint>);

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        self.0.stats.probing.store(false, Ordering::Release);
    }
}

/// One probe: the status, or why there was none.
async fn probe(
    client: &crate::proxy::client::HttpClient,
    ep: &Endpoint,
    hc: &HealthCheckConfig,
) -> Result<u16, String> {
    let (parts, body) = Request::get(&*hc.path)
        .header(HOST, &*ep.address)
        .header(USER_AGENT, "waygate-health-check")
        .body(UpstreamBody::empty())
        .map_err(|e| format!("bad check request: {e}"))?
        .into_parts();
    let exchange = async {
        let resp = client
            .request(&ep.authority, &parts, &Added::default(), body)
            .await
            .map_err(|e| format!("connect error: {e}"))?;
        let status = resp.status().as_u16();
        // Read the (small) body so the connection can go back to the pool.
        let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
        Ok(status)
    };
    tokio::time::timeout(hc.timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {}", humantime::format_duration(hc.timeout))))
}
