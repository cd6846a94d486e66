//! Endpoint health: active checks ([`checker`]), passive outlier detection
//! ([`outlier`]) and the pure threshold counter they use ([`counter`]).
//!
//! Both feed the same two flags of an endpoint's stats (`checked_healthy`,
//! `ejected`), which combine with the registry lease into the endpoint's one
//! state. A change of either flag rebuilds the service's endpoint snapshot so
//! balancers only ever see available endpoints, and is logged as one
//! `tracing` event (target `waygate::health`) with the reason.
//!
//! The request path only touches atomics: a success clears a non-zero
//! failure run, a failure increments it; the slow path (an ejection) runs
//! once, when the run reaches `consecutive_failures`.

pub mod checker;
pub mod counter;
pub mod outlier;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use counter::HealthCounter;

use crate::registry::Endpoint;
use crate::service::Service;

/// Slow-path health state of one endpoint.
#[derive(Debug, Default)]
pub struct HealthBook {
    pub counter: HealthCounter,
    /// Ejections in the current run (see [`outlier`]).
    pub times_ejected: u32,
    /// When the last ejection ended.
    pub returned_at: Option<Instant>,
}

/// How one upstream attempt on live traffic went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Http5xx(u16),
    ConnectError,
    Timeout,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        self != Outcome::Success
    }

    pub fn describe(self) -> String {
        match self {
            Outcome::Success => "success".into(),
            Outcome::Http5xx(s) => format!("status {s}"),
            Outcome::ConnectError => "connect error".into(),
            Outcome::Timeout => "timeout".into(),
        }
    }

    /// One of each kind, in [`Outcome::index`] order.
    pub const ALL: [Outcome; 4] = [Outcome::Success, Outcome::Http5xx(500), Outcome::ConnectError, Outcome::Timeout];

    pub fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::Http5xx(_) => 1,
            Outcome::ConnectError => 2,
            Outcome::Timeout => 3,
        }
    }

    /// The `outcome` label of `waygate_upstream_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Http5xx(_) => "http_5xx",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Records the endpoint's new combined state if it changed: one event with
/// service, endpoint, from, to and reason.
pub fn note_transition(service: &str, ep: &Endpoint, reason: String) {
    let new = ep.stats.combined_state();
    let old = ep.stats.transition().state;
    if old == new {
        return;
    }
    tracing::info!(
        target: "waygate::health",
        service,
        endpoint = %ep.address,
        id = %ep.id,
        from = old.as_str(),
        to = new.as_str(),
        reason = %reason,
        "endpoint state changed"
    );
    ep.stats.set_transition(new, reason);
}

impl Service {
    /// Passive outlier detection: called for every upstream attempt. Cheap
    /// unless this failure completes a run of `consecutive_failures`.
    pub fn record_outcome(self: &Arc<Self>, ep: &Arc<Endpoint>, outcome: Outcome) {
        let Some(od) = &self.config.outlier_detection else { return };
        let run = &ep.stats.consecutive_failures;
        if !outcome.is_failure() {
            if run.load(Ordering::Relaxed) != 0 {
                run.store(0, Ordering::Relaxed);
            }
            return;
        }
        if run.fetch_add(1, Ordering::AcqRel) + 1 == od.consecutive_failures {
            self.eject(ep, outcome);
        }
    }

    fn eject(self: &Arc<Self>, ep: &Arc<Endpoint>, last: Outcome) {
        let Some(od) = &self.config.outlier_detection else { return };
        let _w = self.writer();
        ep.stats.consecutive_failures.store(0, Ordering::Relaxed);
        if !self.owns(ep) {
            return; // a request that started before a reload replaced this service
        }
        if ep.stats.ejected.load(Ordering::Acquire) {
            return;
        }
        let set = self.endpoints();
        let Some(idx) = set.endpoints.iter().position(|e| Arc::ptr_eq(e, ep)) else { return };
        let ejected = set.endpoints.iter().filter(|e| e.stats.ejected.load(Ordering::Acquire)).count();
        if !set.available.contains(&idx) || !outlier::may_eject(od, set.endpoints.len(), ejected, set.available.len()) {
            tracing::debug!(
                target: "waygate::health",
                service = %self.name, endpoint = %ep.address,
                "{} consecutive failures, but not ejected (max_ejection_percent / last available endpoint)",
                od.consecutive_failures
            );
            return;
        }
        let duration = {
            let mut book = ep.stats.book();
            // A run of ejections is forgotten after max_ejection_time in service.
            if book.returned_at.is_some_and(|t| t.elapsed() >= od.max_ejection_time) {
                book.times_ejected = 0;
            }
            book.times_ejected += 1;
            outlier::ejection_time(od, book.times_ejected)
        };
        ep.stats.ejected.store(true, Ordering::Release);
        self.refresh_locked();
        note_transition(
            &self.name,
            ep,
            format!(
                "outlier: {} consecutive failures, last: {}; ejected for {}",
                od.consecutive_failures,
                last.describe(),
                humantime::format_duration(duration)
            ),
        );
        let ep = ep.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            // The service that holds the endpoint now: a reload may have
            // replaced the one that ejected it.
            let owner = ep.stats.owner();
            let _w = owner.as_ref().map(|s| s.writer());
            ep.stats.ejected.store(false, Ordering::Release);
            ep.stats.consecutive_failures.store(0, Ordering::Relaxed);
            ep.stats.book().returned_at = Some(Instant::now());
            if let Some(svc) = &owner {
                svc.refresh_locked();
                note_transition(
                    &svc.name,
                    &ep,
                    format!("ejection ended after {}", humantime::format_duration(duration)),
                );
            }
        });
    }

    /// Whether this runtime is the one that currently holds `ep`.
    fn owns(self: &Arc<Self>, ep: &Endpoint) -> bool {
        ep.stats.owner().is_some_and(|o| Arc::ptr_eq(&o, self))
    }

    /// Applies one active check result.
    pub fn record_check(self: &Arc<Self>, ep: &Arc<Endpoint>, passed: bool, detail: &str, thresholds: (u32, u32)) {
        let (healthy_threshold, unhealthy_threshold) = thresholds;
        let _w = self.writer();
        if !self.owns(ep) {
            return; // a probe of a service a reload has replaced
        }
        let changed = ep.stats.book().counter.record(passed, healthy_threshold, unhealthy_threshold);
        let Some(healthy) = changed else { return };
        ep.stats.checked_healthy.store(healthy, Ordering::Release);
        self.refresh_locked();
        let reason = if healthy {
            format!("active check: {healthy_threshold} passes, last: {detail}")
        } else {
            format!("active check: {unhealthy_threshold} failures, last: {detail}")
        };
        note_transition(&self.name, ep, reason);
    }
}

/// Spread of the check interval: ±10 %, so checks of many gateways and
/// services do not fall into lockstep.
pub fn jittered(interval: Duration) -> Duration {
    let f = 0.9 + 0.2 * (crate::proxy::headers::fast_random() as f64 / u64::MAX as f64);
    interval.mul_f64(f)
}

/// Sanity for the endpoint state combination.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{EndpointState, Source};

    #[test]
    fn unhealthy_wins_over_ejected() {
        let ep = Endpoint::new("a", "127.0.0.1:1", 1, Source::Static).unwrap();
        assert_eq!(ep.stats.combined_state(), EndpointState::Healthy);
        ep.stats.ejected.store(true, Ordering::Relaxed);
        assert_eq!(ep.stats.combined_state(), EndpointState::Ejected);
        ep.stats.checked_healthy.store(false, Ordering::Relaxed);
        assert_eq!(ep.stats.combined_state(), EndpointState::Unhealthy);
        assert!(!ep.stats.is_available());
    }
}
