//! The lease table: registered instances by service, each with the time of its
//! last heartbeat. Pure logic, driven by the caller's clock (`tokio::time::Instant`,
//! so tests run on a paused clock), no I/O and no locking of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Endpoint, EndpointState, Source};

/// A validated registration or heartbeat (SPEC §4).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub service: String,
    pub id: String,
    pub address: String,
    pub weight: u32,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// One live instance.
#[derive(Debug, Clone)]
pub struct Lease {
    pub endpoint: Arc<Endpoint>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub last_heartbeat: Instant,
    /// The same moment on the wall clock, for snapshots that outlive the process.
    pub last_heartbeat_wall: SystemTime,
}

/// An instance evicted for a lapsed lease, remembered for a while so that
/// `GET /admin/upstreams` can show it as `expired`.
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub endpoint: Arc<Endpoint>,
    pub at: Instant,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new instance (the endpoint set changes).
    Registered,
    /// Same address and weight: only the lease moved.
    Renewed,
    /// Address or weight changed: updated in place (the endpoint set changes).
    Updated,
}

/// How long evicted instances stay visible as `expired`.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(300);
/// At most this many tombstones are kept (oldest go first).
pub const MAX_TOMBSTONES: usize = 1024;

#[derive(Debug)]
pub struct LeaseTable {
    ttl: Duration,
    services: BTreeMap<String, BTreeMap<String, Lease>>,
    expired: BTreeMap<(String, String), Tombstone>,
}

impl LeaseTable {
    pub fn new(ttl: Duration) -> Self {
        LeaseTable { ttl, services: BTreeMap::new(), expired: BTreeMap::new() }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// Registers or renews an instance. `reg.address` must already be a valid
    /// `host:port`.
    pub fn upsert(
        &mut self,
        reg: Registration,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Upsert, http::uri::InvalidUri> {
        let key = (reg.service.clone(), reg.id.clone());
        let instances = self.services.entry(reg.service).or_default();
        let outcome = match instances.get_mut(&reg.id) {
            Some(lease) => {
                let ep = &lease.endpoint;
                let outcome = if *ep.address != *reg.address || ep.weight != reg.weight {
                    lease.endpoint = Arc::new(ep.updated(&reg.address, reg.weight)?);
                    Upsert::Updated
                } else {
                    Upsert::Renewed
                };
                lease.metadata = reg.metadata;
                lease.last_heartbeat = now;
                lease.last_heartbeat_wall = wall;
                outcome
            }
            None => {
                let endpoint = Arc::new(Endpoint::new(&reg.id, &reg.address, reg.weight, Source::Registry)?);
                endpoint.stats.set_transition(EndpointState::Healthy, "registered".into());
                instances.insert(
                    reg.id,
                    Lease { endpoint, metadata: reg.metadata, last_heartbeat: now, last_heartbeat_wall: wall },
                );
                Upsert::Registered
            }
        };
        self.expired.remove(&key);
        Ok(outcome)
    }

    /// Restores a lease from a snapshot with its remaining time; `false` when
    /// it had already lapsed.
    pub fn restore(&mut self, reg: Registration, age: Duration, now: Instant, wall: SystemTime) -> bool {
        if age >= self.ttl {
            return false;
        }
        let Some(last) = now.checked_sub(age) else { return false };
        let last_wall = wall.checked_sub(age).unwrap_or(wall);
        match self.upsert(reg.clone(), last, last_wall) {
            Ok(_) => {
                if let Some(l) = self.services.get(&reg.service).and_then(|s| s.get(&reg.id)) {
                    l.endpoint.stats.set_transition(EndpointState::Healthy, "restored from snapshot".into());
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Graceful deregistration; `false` if unknown.
    pub fn remove(&mut self, service: &str, id: &str) -> bool {
        let Some(instances) = self.services.get_mut(service) else { return false };
        let removed = instances.remove(id).is_some();
        if instances.is_empty() {
            // The service stays known (listed, empty) only while something
            // else names it; the registry forgets empty services.
            self.services.remove(service);
        }
        removed
    }

    /// Evicts every lease older than the TTL; returns them as (service, id).
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let ttl = self.ttl;
        let mut evicted = Vec::new();
        for (service, instances) in self.services.iter_mut() {
            instances.retain(|id, lease| {
                let live = now.saturating_duration_since(lease.last_heartbeat) <= ttl;
                if !live {
                    lease.endpoint.stats.set_transition(
                        EndpointState::Expired,
                        format!("lease expired: no heartbeat for {}", humantime::format_duration(ttl)),
                    );
                    self.expired
                        .insert((service.clone(), id.clone()), Tombstone { endpoint: lease.endpoint.clone(), at: now });
                    evicted.push((service.clone(), id.clone()));
                }
                live
            });
        }
        self.services.retain(|_, instances| !instances.is_empty());
        self.expired.retain(|_, t| now.saturating_duration_since(t.at) < TOMBSTONE_TTL);
        while self.expired.len() > MAX_TOMBSTONES {
            let oldest = self.expired.iter().min_by_key(|(_, t)| t.at).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.expired.remove(&k),
                None => break,
            };
        }
        evicted
    }

    /// The registered endpoints of a service, ordered by id.
    pub fn endpoints_of(&self, service: &str) -> Vec<Arc<Endpoint>> {
        self.services.get(service).map(|m| m.values().map(|l| l.endpoint.clone()).collect()).unwrap_or_default()
    }

    pub fn service(&self, service: &str) -> Option<&BTreeMap<String, Lease>> {
        self.services.get(service)
    }

    pub fn services(&self) -> impl Iterator<Item = (&String, &BTreeMap<String, Lease>)> {
        self.services.iter()
    }

    /// Recently expired instances of a service.
    pub fn expired_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Tombstone> + 'a {
        self.expired.iter().filter(move |((s, _), _)| s == service).map(|(_, t)| t)
    }

    pub fn expired_services(&self) -> impl Iterator<Item = &String> {
        self.expired.keys().map(|(s, _)| s)
    }

    pub fn len(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The sweep period for a TTL: a quarter of it, between 10 ms and 1 s, so an
/// expired lease is evicted well within a second of lapsing.
pub fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(service: &str, id: &str, port: u16) -> Registration {
        Registration {
            service: service.into(),
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            weight: 1,
            metadata: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_lapses_after_ttl_not_before() {
        let mut t = LeaseTable::new(Duration::from_millis(300));
        let wall = SystemTime::now();
        assert_eq!(t.upsert(reg("users", "u1", 3001), Instant::now(), wall).unwrap(), Upsert::Registered);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(t.expire(Instant::now()).is_empty(), "exactly ttl old is still live");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(t.expire(Instant::now()), vec![("users".to_string(), "u1".to_string())]);
        assert!(t.endpoints_of("users").is_empty());
        let tomb: Vec<_> = t.expired_of("users").collect();
        assert_eq!(tomb.len(), 1);
        assert_eq!(tomb[0].endpoint.stats.transition().state, EndpointState::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_renews_the_lease() {
        let mut t = LeaseTable::new(Duration::from_millis(300));
        let wall = SystemTime::now();
        t.upsert(reg("users", "u1", 3001), Instant::now(), wall).unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(200)).await;
            assert_eq!(t.upsert(reg("users", "u1", 3001), Instant::now(), wall).unwrap(), Upsert::Renewed);
            assert!(t.expire(Instant::now()).is_empty());
        }
        assert_eq!(t.endpoints_of("users").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn address_or_weight_change_updates_in_place() {
        let mut t = LeaseTable::new(Duration::from_secs(30));
        let wall = SystemTime::now();
        t.upsert(reg("users", "u1", 3001), Instant::now(), wall).unwrap();
        let before = t.endpoints_of("users")[0].clone();
        let mut r = reg("users", "u1", 3002);
        r.weight = 5;
        assert_eq!(t.upsert(r, Instant::now(), wall).unwrap(), Upsert::Updated);
        let after = t.endpoints_of("users")[0].clone();
        assert_eq!(&*after.address, "127.0.0.1:3002");
        assert_eq!(after.weight, 5);
        assert!(Arc::ptr_eq(&before.stats, &after.stats), "stats survive the update");
    }

    #[tokio::test(start_paused = true)]
    async fn restore_keeps_the_remaining_ttl() {
        let mut t = LeaseTable::new(Duration::from_secs(10));
        let wall = SystemTime::now();
        assert!(t.restore(reg("users", "u1", 3001), Duration::from_secs(4), Instant::now(), wall));
        assert!(!t.restore(reg("users", "u2", 3002), Duration::from_secs(11), Instant::now(), wall));
        tokio::time::advance(Duration::from_millis(5_900)).await;
        assert!(t.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(t.expire(Instant::now()).len(), 1);
    }

    #[test]
    fn remove_forgets_the_instance() {
        let mut t = LeaseTable::new(Duration::from_secs(30));
        t.upsert(reg("users", "u1", 3001), Instant::now(), SystemTime::now()).unwrap();
        assert!(!t.remove("users", "nope"));
        assert!(t.remove("users", "u1"));
        assert!(!t.remove("users", "u1"));
        assert!(t.is_empty());
    }

    #[test]
    fn sweep_interval_bounds() {
        assert_eq!(sweep_interval(Duration::from_millis(200)), Duration::from_millis(50));
        assert_eq!(sweep_interval(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(sweep_interval(Duration::from_millis(8)), Duration::from_millis(10));
    }

    mod model {
        //! Random interleavings of register/renew/delete/expire against a
        //! plain model: a map of (service, id) → (address, last beat).
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Beat { svc: u8, id: u8, port: u16 },
            Delete { svc: u8, id: u8 },
            Advance { ms: u64 },
            Expire,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..3u8, 0..5u8, 1000..1003u16).prop_map(|(svc, id, port)| Op::Beat { svc, id, port }),
                1 => (0..3u8, 0..5u8).prop_map(|(svc, id)| Op::Delete { svc, id }),
                2 => (0..250u64).prop_map(|ms| Op::Advance { ms }),
                2 => Just(Op::Expire),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            #[test]
            fn table_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
                let ttl = Duration::from_millis(300);
                let mut table = LeaseTable::new(ttl);
                let mut model: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
                let start = Instant::now();
                let mut clock_ms = 0u64;
                for op in ops {
                    let now = start + Duration::from_millis(clock_ms);
                    match op {
                        Op::Beat { svc, id, port } => {
                            let r = reg(&format!("s{svc}"), &format!("i{id}"), port);
                            table.upsert(r.clone(), now, SystemTime::now()).unwrap();
                            model.insert((r.service, r.id), (r.address, clock_ms));
                        }
                        Op::Delete { svc, id } => {
                            let key = (format!("s{svc}"), format!("i{id}"));
                            prop_assert_eq!(table.remove(&key.0, &key.1), model.remove(&key).is_some());
                        }
                        Op::Advance { ms } => clock_ms += ms,
                        Op::Expire => {
                            table.expire(now);
                            model.retain(|_, (_, beat)| clock_ms - *beat <= ttl.as_millis() as u64);
                        }
                    }
                    let got: BTreeMap<(String, String), String> = table
                        .services()
                        .flat_map(|(s, m)| m.iter().map(move |(id, l)| ((s.clone(), id.clone()), l.endpoint.address.to_string())))
                        .collect();
                    let want: BTreeMap<(String, String), String> =
                        model.iter().map(|(k, (a, _))| (k.clone(), a.clone())).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
