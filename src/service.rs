//! The runtime of one upstream service: its policy, its current endpoint set
//! (an immutable snapshot behind `ArcSwap`), its balancer, its pooled client
//! and its in-flight count. Built once per service and kept across config
//! reloads that do not change the service.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntCounter;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::balancer::{self, Balancer, PickContext};
use crate::breaker::CircuitBreaker;
use crate::config::{HashKey, ServiceConfig};
use crate::metrics::Metrics;
use crate::proxy::client::{self, HttpClient};
use crate::registry::{Endpoint, EndpointSet, Source};
use crate::retry::RetryBudget;

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub config: ServiceConfig,
    balancer: Box<dyn Balancer>,
    endpoints: ArcSwap<EndpointSet>,
    /// Serializes writers of `endpoints` (registry, health checks, ejections),
    /// so no update is lost between a load and a store. Readers never take it.
    writer: Mutex<()>,
    /// One upstream pool per proxy worker (slot 0: every other thread), so a
    /// request only ever uses connections driven by its own thread.
    clients: Box<[HttpClient]>,
    inflight: AtomicUsize,
    /// Present when `[services.circuit_breaker]` is configured.
    pub breaker: Option<CircuitBreaker>,
    /// Present when `[services.retry]` is configured.
    pub budget: Option<RetryBudget>,
    retries: IntCounter,
    metrics: Arc<Metrics>,
    /// The active health check loop, stopped when the service is dropped.
    checker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(t) = self.checker.get_mut().ok().and_then(Option::take) {
            t.abort();
        }
    }
}

impl Service {
    /// Builds a service from its static endpoints and the instances
    /// currently registered under its name.
    /// `previous`: the endpoints of the runtime this one replaces (a reload
    /// that changed the service's policy); static endpoints with the same
    /// address keep their state.
    pub fn new(
        config: ServiceConfig,
        registered: Vec<Arc<Endpoint>>,
        previous: Vec<Arc<Endpoint>>,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> Arc<Service> {
        let mut endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                let old = previous.iter().find(|p| p.source == Source::Static && *p.address == *e.address);
                let made = match old {
                    Some(p) if p.weight == e.weight => return Some(p.clone()),
                    Some(p) => p.updated(&e.address, e.weight),
                    None => Endpoint::new(&e.address, &e.address, e.weight, Source::Static),
                };
                made.map(Arc::new)
                    .map_err(|err| {
                        // Config validation accepts only host:port, so this is unexpected.
                        tracing::error!(service = %config.name, endpoint = %e.address, error = %err, "unusable endpoint address");
                    })
                    .ok()
            })
            .collect();
        endpoints.extend(registered);
        metrics.declare_service(&config.name);
        let set = EndpointSet::from_health(endpoints);
        let balancer = balancer::build(&config);
        balancer.update(&set);
        let service = Arc::new(Service {
            name: config.name.as_str().into(),
            clients: (0..=workers).map(|_| client::build(config.connect_timeout)).collect(),
            balancer,
            endpoints: ArcSwap::from_pointee(set),
            writer: Mutex::new(()),
            inflight: AtomicUsize::new(0),
            breaker: config
                .circuit_breaker
                .clone()
                .map(|c| CircuitBreaker::new(&config.name, c, metrics.breaker_transitions(&config.name))),
            budget: config.retry.as_ref().map(RetryBudget::new),
            retries: metrics.retries(&config.name),
            metrics,
            checker: Mutex::new(None),
            config,
        });
        service.adopt_endpoints();
        *service.checker.lock().unwrap_or_else(|e| e.into_inner()) = crate::health::checker::spawn(&service);
        service
    }

    /// The upstream pool of the calling thread's worker.
    pub(crate) fn client(&self) -> &HttpClient {
        self.clients.get(crate::worker::index()).unwrap_or(&self.clients[0])
    }

    /// An endpoint enters this service: it gets fresh metric handles (its
    /// series may have been removed while it was out of every service) and
    /// this runtime becomes its owner.
    fn join(self: &Arc<Self>, ep: &Arc<Endpoint>) {
        ep.metrics.store(Some(Arc::new(self.metrics.endpoint(&self.name, &ep.address))));
        ep.stats.set_owner(self);
    }

    /// Becomes the owner of its endpoints; state left by a policy this
    /// service no longer has (a reload removed the table) is cleared.
    fn adopt_endpoints(self: &Arc<Self>) {
        let _w = self.writer();
        let set = self.endpoints.load_full();
        let mut changed = false;
        for ep in &set.endpoints {
            self.join(ep);
            if self.config.health_check.is_none() && !ep.stats.checked_healthy.load(Ordering::Acquire) {
                ep.stats.checked_healthy.store(true, Ordering::Release);
                *ep.stats.book() = Default::default();
                crate::health::note_transition(&self.name, ep, "health_check removed from the config".into());
                changed = true;
            }
            if self.config.outlier_detection.is_none() && ep.stats.ejected.load(Ordering::Acquire) {
                ep.stats.ejected.store(false, Ordering::Release);
                crate::health::note_transition(&self.name, ep, "outlier_detection removed from the config".into());
                changed = true;
            }
        }
        if changed {
            self.refresh_locked();
        }
    }

    /// Held while changing the endpoint snapshot.
    pub(crate) fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the active checker (the service was replaced by a reload; the
    /// replacement runs its own).
    pub fn stop_checker(&self) {
        if let Some(t) = self.checker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }

    /// Recomputes availability from the endpoints' health flags; the caller
    /// holds [`Service::writer`].
    pub(crate) fn refresh_locked(&self) {
        let endpoints = self.endpoints.load().endpoints.clone();
        self.store_locked(EndpointSet::from_health(endpoints));
    }

    fn store_locked(&self, set: EndpointSet) {
        self.balancer.update(&set);
        self.endpoints.store(Arc::new(set));
    }

    /// The current endpoint snapshot.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Replaces the registered endpoints (static ones stay as they are).
    pub fn set_registered(self: &Arc<Self>, registered: Vec<Arc<Endpoint>>) {
        let _w = self.writer();
        let current = self.endpoints.load();
        let mut endpoints: Vec<Arc<Endpoint>> =
            current.endpoints.iter().filter(|e| e.source == Source::Static).cloned().collect();
        endpoints.extend(registered);
        // Linear in the fleet size: a service with thousands of registered
        // instances is republished on every registration.
        let before: HashSet<*const Endpoint> = current.endpoints.iter().map(Arc::as_ptr).collect();
        let addresses: HashSet<&str> = endpoints.iter().map(|e| &*e.address).collect();
        for ep in endpoints.iter().filter(|e| !before.contains(&Arc::as_ptr(e))) {
            self.join(ep);
        }
        // Series of endpoints that left (evicted, deregistered, moved) go too.
        for gone in current.endpoints.iter().filter(|old| !addresses.contains(&*old.address)) {
            self.metrics.remove_endpoint(&self.name, &gone.address);
        }
        drop(addresses);
        self.store_locked(EndpointSet::from_health(endpoints));
    }

    pub fn balancer(&self) -> &dyn Balancer {
        self.balancer.as_ref()
    }

    /// Picks an available endpoint for a request.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let idx = self.balancer.pick(&set, ctx)?;
        set.endpoints.get(idx).cloned()
    }

    /// Takes one of `max_concurrent_requests` slots; `false` when full.
    /// Every `true` must be paired with one [`Service::release`].
    pub fn try_acquire(&self) -> bool {
        let limit = self.config.max_concurrent_requests;
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a retry (admin API; metrics count them too).
    pub fn note_retry(&self) {
        self.retries.inc();
    }

    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The hash of the request's `hash_key`, if the service has one and the
    /// request carries it.
    pub fn request_hash(&self, req: &http::request::Parts, client_ip: std::net::IpAddr) -> Option<u64> {
        let key = self.config.hash_key.as_ref()?;
        match key {
            HashKey::Header(name) => req.headers.get(name).map(|v| balancer::hash_bytes(v.as_bytes())),
            HashKey::Cookie(name) => cookie_value(&req.headers, name).map(|v| balancer::hash_bytes(v.as_bytes())),
            HashKey::Path => Some(balancer::hash_bytes(req.uri.path().as_bytes())),
            HashKey::ClientIp => Some(match client_ip {
                std::net::IpAddr::V4(a) => balancer::hash_bytes(&a.octets()),
                std::net::IpAddr::V6(a) => balancer::hash_bytes(&a.octets()),
            }),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; session=xyz".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie_value(&h, "session"), Some("xyz"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
