//! Load balancing with real upstreams (SPEC §2 `balancer`, `hash_key`; issue 4
//! "How it is shown"): a slowed endpoint gets clearly fewer requests under
//! `least_connections` and `p2c_ewma` (with `round_robin` as the control that
//! splits evenly whatever the latency); `weighted_round_robin` honours static
//! and registered weights smoothly; `random` uses every endpoint; and
//! `consistent_hash` keeps every key on one endpoint over 1,000 requests,
//! moves only the keys of an endpoint that leaves (registry DELETE or reload)
//! or becomes unavailable (unhealthy, ejected, refusing), and accepts every
//! `hash_key` form (`header:`, `cookie:`, `path`, `client_ip`).
//!
//! Who served a request is read from the `x-instance` header the support
//! [`Upstream`] sets. The consistent-hash ring is built from endpoint ids
//! (the address for static endpoints), so a second gateway over the same
//! addresses minus one shows where the ring sends that one's keys.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::admin::*;
use support::*;

// ---------------------------------------------------------------------------
// Helpers (local to this file)
// ---------------------------------------------------------------------------

/// `GET uri` with `headers` through `client`, collected.
async fn fetch(client: &HttpClient, uri: Uri, headers: &[(&str, &str)]) -> Resp {
    let mut req = Request::get(uri.clone());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let what = format!("GET {uri} {headers:?}");
    let resp = within(EXCHANGE_TIMEOUT, &what, client.request(req.body(empty()).unwrap()))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    within(EXCHANGE_TIMEOUT, &what, Resp::collect(resp)).await
}

/// The instance that answered `r`, which must be a 200.
fn served_by(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.instance().unwrap_or_else(|| panic!("{what}: no x-instance header: {r:?}")).to_string()
}

/// `GET path` with `headers` through the gateway's client; the answering instance.
async fn instance_for(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> String {
    let r = fetch(&gw.client, gw.url(path), headers).await;
    served_by(&r, &format!("GET {path} {headers:?}"))
}

/// Registers an instance with a weight; asserts the 200 answer.
async fn register_weighted(gw: &TestGateway, service: &str, id: &str, address: &str, weight: u32) {
    register_json(gw, &json!({ "service": service, "id": id, "address": address, "weight": weight })).await;
}

/// How often each instance appears in `seq`.
fn tally<'a>(seq: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for s in seq {
        *c.entry(s.clone()).or_insert(0) += 1;
    }
    c
}

/// `n` sequential GETs on `/api/seq-i`; the answering instances in order.
async fn sequential(gw: &TestGateway, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(instance_for(gw, &format!("/api/seq-{i}"), &[]).await);
    }
    out
}

/// Concurrent load: `tasks` clients, each sending GETs one after another,
/// until `total` requests were sent overall or `for_at_most` passed. A shared
/// budget (rather than one per task) keeps all tasks busy until the end, so
/// the concurrency stays constant. Every answer must be a 200; returns the
/// requests each instance served.
async fn drive(gw: &TestGateway, tasks: usize, total: usize, for_at_most: Duration) -> BTreeMap<String, usize> {
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + for_at_most;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (client, issued) = (gw.client.clone(), issued.clone());
            let uri = gw.url(&format!("/api/load-{t}"));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < total {
                    let r = fetch(&client, uri.clone(), &[]).await;
                    seen.push(served_by(&r, &format!("load task {t}")));
                }
                seen
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for h in handles {
        let seen = within(Duration::from_secs(15), "a load task", h).await.expect("load task panicked");
        for (k, v) in tally(&seen) {
            *counts.entry(k).or_insert(0) += v;
        }
    }
    counts
}

/// Starts a fast upstream and a `Slow(50ms)` one behind `balancer` and drives
/// 8 concurrent clients at them: `(slow, total)` requests served.
async fn slow_endpoint_share(balancer: &str, total: usize, for_at_most: Duration) -> (usize, usize) {
    let fast = Upstream::start("fast").await;
    let slow = Upstream::start("slow").await;
    slow.set_mode(Mode::Slow(Duration::from_millis(50)));
    let gw = TestGateway::start(&simple_toml(&[&fast, &slow], &format!("balancer = \"{balancer}\"\n"))).await;
    let counts = drive(&gw, 8, total, for_at_most).await;
    let served: usize = counts.values().sum();
    let on_slow = counts.get("slow").copied().unwrap_or(0);
    assert_eq!(served, counts.get("fast").copied().unwrap_or(0) + on_slow, "{counts:?}");
    assert_eq!(slow.count(), on_slow, "the slow upstream's own count");
    assert!(served >= 80, "{balancer}: too few requests to judge ({counts:?})");
    eprintln!("{balancer}: {counts:?}");
    (on_slow, served)
}

/// A service over `endpoints` (already quoted TOML values) with `extra`,
/// routed at `/api` with the prefix stripped.
fn service_with(endpoints: &[String], extra: &str) -> String {
    format!("[[services]]\nname = \"svc\"\nendpoints = [{}]\n{extra}\n\n", endpoints.join(", "))
        + &route_toml("/api", "svc", "strip_prefix = true")
}

const CH_USER: &str = "balancer = \"consistent_hash\"\nhash_key = \"header:x-user-id\"\n";

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Where each user goes: one request per user, `x-user-id: USER`.
async fn assignment(gw: &TestGateway, users: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for u in users {
        out.insert(u.clone(), instance_for(gw, "/api/who", &[("x-user-id", u)]).await);
    }
    out
}

/// The users assigned to `instance`.
fn keys_of(a: &BTreeMap<String, String>, instance: &str) -> Vec<String> {
    a.iter().filter(|(_, i)| *i == instance).map(|(u, _)| u.clone()).collect()
}

/// The instance with the most keys in `a`.
fn busiest(a: &BTreeMap<String, String>) -> String {
    let (name, _) = tally(a.values()).into_iter().max_by_key(|(_, n)| *n).expect("some keys");
    name
}

/// Asserts that between `before` and `after` only the keys of `gone` moved,
/// that they all moved, and never onto `gone`.
fn only_keys_of_moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, gone: &str) {
    for (u, was) in before {
        let now = &after[u];
        if was == gone {
            assert_ne!(now, gone, "{u} still on {gone}");
        } else {
            assert_eq!(now, was, "{u} moved from {was} to {now} although only {gone} left");
        }
    }
}

fn parse_config(body: &str) -> Arc<waygate::Config> {
    let text = gateway_toml("", body);
    Arc::new(waygate::Config::parse(&text, "reload.toml").unwrap_or_else(|e| panic!("invalid config:\n{e}\n{text}")))
}

// ---------------------------------------------------------------------------
// A slowed endpoint gets fewer requests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_fewer_requests_to_a_slow_endpoint() {
    let (on_slow, total) = slow_endpoint_share("least_connections", 800, Duration::from_secs(3)).await;
    assert!(on_slow * 100 < total * 35, "least_connections: slow endpoint served {on_slow} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_sends_fewer_requests_to_a_slow_endpoint() {
    let (on_slow, total) = slow_endpoint_share("p2c_ewma", 800, Duration::from_secs(3)).await;
    assert!(on_slow * 100 < total * 35, "p2c_ewma: slow endpoint served {on_slow} of {total}");
}

/// The control: round robin ignores latency, so the same load splits evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_evenly_despite_a_slow_endpoint() {
    let (on_slow, total) = slow_endpoint_share("round_robin", 240, Duration::from_secs(3)).await;
    assert!(
        (total * 45..=total * 55).contains(&(on_slow * 100)),
        "round_robin: slow endpoint served {on_slow} of {total}, expected about half"
    );
}

#[tokio::test]
async fn least_connections_shares_evenly_between_equal_endpoints() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&simple_toml(&[&a, &b], "balancer = \"least_connections\"\n")).await;
    let c = tally(&sequential(&gw, 200).await);
    for name in ["a", "b"] {
        let n = c.get(name).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{name} served {n} of 200: {c:?}");
    }
}

// ---------------------------------------------------------------------------
// weighted_round_robin and random
// ---------------------------------------------------------------------------

/// Asserts a 3:1 split of 400 requests within ±10% and a smooth order: the
/// heavy instance never serves more than 3 in a row.
fn assert_three_to_one(seq: &[String], heavy: &str, light: &str) {
    let c = tally(seq);
    assert_eq!(c.len(), 2, "{c:?}");
    let (h, l) = (c.get(heavy).copied().unwrap_or(0), c.get(light).copied().unwrap_or(0));
    assert!((270..=330).contains(&h), "heavy served {h} of 400, expected 300 ±10%: {c:?}");
    assert!((90..=110).contains(&l), "light served {l} of 400, expected 100 ±10%: {c:?}");
    let longest = seq.split(|s| s != heavy).map(<[String]>::len).max().unwrap_or(0);
    assert!(longest <= 3, "smooth weighted round robin: {longest} picks of {heavy} in a row");
}

#[tokio::test]
async fn weighted_round_robin_splits_static_weights_three_to_one() {
    let heavy = Upstream::start("heavy").await;
    let light = Upstream::start("light").await;
    let eps = [format!("{{ address = \"{}\", weight = 3 }}", heavy.endpoint()), format!("\"{}\"", light.endpoint())];
    let gw = TestGateway::start(&service_with(&eps, "balancer = \"weighted_round_robin\"\n")).await;
    let seq = sequential(&gw, 400).await;
    assert_three_to_one(&seq, "heavy", "light");
    assert_eq!((heavy.count(), light.count()), (tally(&seq)["heavy"], tally(&seq)["light"]));
}

#[tokio::test]
async fn weighted_round_robin_honours_a_registered_weight() {
    let light = Upstream::start("light").await;
    let heavy = Upstream::start("heavy").await;
    let gw = TestGateway::start(&simple_toml(&[&light], "balancer = \"weighted_round_robin\"\n")).await;
    register_weighted(&gw, "svc", "heavy-1", &heavy.endpoint(), 3).await;

    let listed = gw.admin_get("/registry/svc").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let list = listed.json();
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|i| i["id"] == "heavy-1"))
        .unwrap_or_else(|| panic!("heavy-1 not listed: {list}"));
    assert_eq!(entry["weight"], 3, "{entry}");

    eventually(Duration::from_secs(2), "the registered instance serves", || async {
        instance_for(&gw, "/api/probe", &[]).await == "heavy"
    })
    .await;
    let seq = sequential(&gw, 400).await;
    assert_three_to_one(&seq, "heavy", "light");
}

#[tokio::test]
async fn random_spreads_over_every_endpoint() {
    let ups = [Upstream::start("r0").await, Upstream::start("r1").await, Upstream::start("r2").await];
    let gw = TestGateway::start(&simple_toml(&[&ups[0], &ups[1], &ups[2]], "balancer = \"random\"\n")).await;
    let seq = sequential(&gw, 300).await;
    let c = tally(&seq);
    for u in &ups {
        let n = c.get(u.name()).copied().unwrap_or(0);
        // Expected 100 each; 50 is more than 6 standard deviations away.
        assert!(n >= 50, "{} served {n} of 300: {c:?}", u.name());
    }
    // Not a disguised round robin: (2/3)^299 is the chance of never repeating.
    assert!(
        seq.windows(2).any(|w| w[0] == w[1]),
        "random never picked the same endpoint twice in a row: {:?}",
        &seq[..12]
    );
}

// ---------------------------------------------------------------------------
// consistent_hash
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_user_on_one_instance_over_1000_requests() {
    let ups = [Upstream::start("h0").await, Upstream::start("h1").await, Upstream::start("h2").await];
    let gw = TestGateway::start(&simple_toml(&[&ups[0], &ups[1], &ups[2]], CH_USER)).await;
    let users = users(50);

    // 10 concurrent clients, each with 5 users, 20 rounds: 1,000 requests.
    let handles: Vec<_> = (0..10)
        .map(|t| {
            let client = gw.client.clone();
            let uri = gw.url("/api/sticky");
            let mine: Vec<String> = users.iter().skip(t).step_by(10).cloned().collect();
            tokio::spawn(async move {
                let mut seen: Vec<(String, String)> = Vec::new();
                for round in 0..20 {
                    for u in &mine {
                        let r = fetch(&client, uri.clone(), &[("x-user-id", u)]).await;
                        seen.push((u.clone(), served_by(&r, &format!("{u} round {round}"))));
                    }
                }
                seen
            })
        })
        .collect();
    let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut total = 0;
    for h in handles {
        for (u, i) in within(Duration::from_secs(15), "a sticky client", h).await.expect("client panicked") {
            by_user.entry(u).or_default().insert(i);
            total += 1;
        }
    }
    assert_eq!(total, 1000);
    assert_eq!(by_user.len(), 50);
    for (u, instances) in &by_user {
        assert_eq!(instances.len(), 1, "{u} was served by {instances:?}");
    }
    let used: BTreeSet<&String> = by_user.values().flatten().collect();
    assert!(used.len() >= 2, "50 users all hashed to {used:?}");

    // The upstreams agree: every user id reached exactly one of them.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for up in &ups {
        for r in up.requests() {
            let u = r.header("x-user-id").expect("x-user-id forwarded").to_string();
            let prev = owner.insert(u.clone(), up.name().to_string());
            assert!(prev.is_none() || prev.as_deref() == Some(up.name()), "{u} reached {prev:?} and {}", up.name());
        }
    }
    assert_eq!(owner.len(), 50);

    // Requests without the key are still served, spread over the endpoints.
    let keyless = sequential(&gw, 9).await;
    assert!(tally(&keyless).len() >= 2, "keyless requests all went to one endpoint: {keyless:?}");
}

#[tokio::test]
async fn consistent_hash_deregistering_an_instance_moves_only_its_keys() {
    let ups = [
        Upstream::start("reg-a").await,
        Upstream::start("reg-b").await,
        Upstream::start("reg-c").await,
        Upstream::start("reg-d").await,
    ];
    let gw = TestGateway::start(&service_with(&[], CH_USER)).await;
    for u in &ups[..3] {
        register_weighted(&gw, "svc", u.name(), &u.endpoint(), 1).await;
    }
    let users = users(50);
    eventually(Duration::from_secs(2), "all three registered instances serve", || async {
        tally(assignment(&gw, &users).await.values()).len() == 3
    })
    .await;
    let before = assignment(&gw, &users).await;
    assert_eq!(assignment(&gw, &users).await, before, "the same users go to the same instances again");

    // Deregister the instance with the most keys.
    let gone = busiest(&before);
    let gone_up = ups.iter().find(|u| u.name() == gone).unwrap();
    let r = admin_delete(&gw, &format!("/registry/svc/{gone}")).await;
    assert_eq!(r.status, 204, "DELETE: {}", r.text());
    let probe = keys_of(&before, &gone)[0].clone();
    eventually(Duration::from_secs(1), "the deregistered instance's keys move", || async {
        instance_for(&gw, "/api/who", &[("x-user-id", &probe)]).await != gone
    })
    .await;
    let served_by_gone = gone_up.count();
    let after = assignment(&gw, &users).await;
    only_keys_of_moved(&before, &after, &gone);
    assert_eq!(assignment(&gw, &users).await, after, "the moved keys stay put");
    assert_eq!(gone_up.count(), served_by_gone, "no request reaches the deregistered instance");

    // A new instance takes over some keys and nothing else moves.
    register_weighted(&gw, "svc", "reg-d", &ups[3].endpoint(), 1).await;
    eventually(Duration::from_secs(2), "the new instance takes keys", || async {
        assignment(&gw, &users).await.values().any(|i| i == "reg-d")
    })
    .await;
    let more = assignment(&gw, &users).await;
    for (u, was) in &after {
        assert!(more[u] == *was || more[u] == "reg-d", "{u} moved from {was} to {} (not the new instance)", more[u]);
    }
}

#[tokio::test]
async fn consistent_hash_removing_an_endpoint_by_reload_moves_only_its_keys() {
    let ups = [Upstream::start("s0").await, Upstream::start("s1").await, Upstream::start("s2").await];
    let gw = TestGateway::start(&simple_toml(&[&ups[0], &ups[1], &ups[2]], CH_USER)).await;
    let users = users(50);
    let before = assignment(&gw, &users).await;
    let gone = busiest(&before);
    let kept: Vec<&Upstream> = ups.iter().filter(|u| u.name() != gone).collect();

    gw.gateway().proxy().install(parse_config(&simple_toml(&kept, CH_USER)));
    let probe = keys_of(&before, &gone)[0].clone();
    eventually(Duration::from_secs(2), "the removed endpoint's keys move", || async {
        instance_for(&gw, "/api/who", &[("x-user-id", &probe)]).await != gone
    })
    .await;
    let after = assignment(&gw, &users).await;
    only_keys_of_moved(&before, &after, &gone);
    assert_eq!(assignment(&gw, &users).await, after);
}

const HEALTH_CHECK: &str = "[services.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";

/// Where a gateway over `ups` (nothing else) sends `users`.
async fn reference_assignment(ups: &[&Upstream], users: &[String]) -> BTreeMap<String, String> {
    let gw = TestGateway::start(&simple_toml(ups, CH_USER)).await;
    assignment(&gw, users).await
}

#[tokio::test]
async fn consistent_hash_an_unhealthy_endpoint_hands_its_keys_to_the_next_and_gets_them_back() {
    let ups = [Upstream::start("u0").await, Upstream::start("u1").await, Upstream::start("u2").await];
    let gw = TestGateway::start(&simple_toml(&[&ups[0], &ups[1], &ups[2]], &format!("{CH_USER}{HEALTH_CHECK}"))).await;
    let users = users(50);
    let before = assignment(&gw, &users).await;
    let sick_name = busiest(&before);
    let sick = ups.iter().find(|u| u.name() == sick_name).unwrap();

    sick.set_mode(Mode::Status(500));
    wait_for_state(&gw, "svc", &sick.endpoint(), "unhealthy", Duration::from_secs(3)).await;
    let live = live_requests(sick);
    // Every request still succeeds: the sick endpoint's keys go elsewhere, nobody else's move.
    let during = assignment(&gw, &users).await;
    only_keys_of_moved(&before, &during, &sick_name);
    assert_eq!(assignment(&gw, &users).await, during, "the fallback is sticky too");
    assert_eq!(live_requests(sick), live, "no live request reached the unhealthy endpoint");

    // "The next on the ring": exactly where a ring without it sends them.
    let others: Vec<&Upstream> = ups.iter().filter(|u| u.name() != sick_name).collect();
    let reference = reference_assignment(&others, &users).await;
    assert_eq!(during, reference, "fallback differs from the ring without {sick_name}");

    // Healthy again: its keys come back.
    sick.set_mode(Mode::Ok);
    wait_for_state(&gw, "svc", &sick.endpoint(), "healthy", Duration::from_secs(3)).await;
    assert_eq!(assignment(&gw, &users).await, before, "the keys return to the recovered endpoint");
}

#[tokio::test]
async fn consistent_hash_an_ejected_endpoint_hands_its_keys_to_the_next() {
    let ups = [Upstream::start("e0").await, Upstream::start("e1").await, Upstream::start("e2").await];
    let outlier = "[services.outlier_detection]\nconsecutive_failures = 3\nbase_ejection_time = \"10s\"\nmax_ejection_percent = 50\n";
    let gw = TestGateway::start(&simple_toml(&[&ups[0], &ups[1], &ups[2]], &format!("{CH_USER}{outlier}"))).await;
    let users = users(50);
    let before = assignment(&gw, &users).await;
    let bad_name = busiest(&before);
    let bad = ups.iter().find(|u| u.name() == bad_name).unwrap();
    let key = keys_of(&before, &bad_name)[0].clone();

    // Three 500s in a row on live traffic eject it; the next request for the same key succeeds elsewhere.
    bad.set_mode(Mode::Status(500));
    let mut failures = 0;
    let mut next = None;
    for _ in 0..10 {
        let r = fetch(&gw.client, gw.url("/api/who"), &[("x-user-id", &key)]).await;
        if r.status == 500 {
            assert_eq!(r.instance(), Some(bad_name.as_str()));
            failures += 1;
        } else {
            next = Some(served_by(&r, "after the ejection"));
            break;
        }
    }
    assert_eq!(failures, 3, "consecutive_failures = 3: the fourth request is served elsewhere");
    let next = next.expect("the key was served after the ejection");
    assert_ne!(next, bad_name);
    let (state, reason) = endpoint_state(&gw, "svc", &bad.endpoint()).await;
    assert_eq!(state, "ejected", "reason: {reason}");

    let during = assignment(&gw, &users).await;
    only_keys_of_moved(&before, &during, &bad_name);
    assert_eq!(during[&key], next);
    assert_eq!(assignment(&gw, &users).await, during, "the fallback is sticky too");
}

#[tokio::test]
async fn consistent_hash_a_refusing_endpoint_is_retried_on_the_next_one() {
    let a = Upstream::start("ra").await;
    let b = Upstream::start("rb").await;
    let dead = dead_port().await.to_string();
    let retry = "[services.retry]\nattempts = 1\non = [\"connect_failure\"]\nbudget_ratio = 1.0\nbudget_min_per_second = 1000\n";
    let eps = vec![format!("\"{}\"", a.endpoint()), format!("\"{}\"", b.endpoint()), format!("\"{dead}\"")];
    let gw = TestGateway::start(&service_with(&eps, &format!("{CH_USER}{retry}"))).await;
    let users = users(50);
    // Every request succeeds, and keys whose endpoint refuses land where a
    // ring without it would put them; keys of a and b stay where they are.
    let got = assignment(&gw, &users).await;
    assert_eq!(assignment(&gw, &users).await, got, "sticky");
    assert_eq!(got, reference_assignment(&[&a, &b], &users).await);
    let m = scrape(&gw).await;
    let retries = m.sum("waygate_retries_total", &[("service", "svc")]);
    assert!(retries >= 1.0, "some of 50 keys must have hashed to the dead endpoint: {}", m.lines_with("retries"));
}

#[tokio::test]
async fn consistent_hash_by_cookie_is_sticky() {
    let ups = [Upstream::start("c0").await, Upstream::start("c1").await, Upstream::start("c2").await];
    let gw = TestGateway::start(&simple_toml(
        &[&ups[0], &ups[1], &ups[2]],
        "balancer = \"consistent_hash\"\nhash_key = \"cookie:session\"\n",
    ))
    .await;
    let mut by_session: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..5 {
        for s in 0..20 {
            // The session cookie among others, in a different position each round.
            let cookie =
                if round % 2 == 0 { format!("theme=dark; session=s{s}; lang=en") } else { format!("session=s{s}") };
            let i = instance_for(&gw, &format!("/api/c/{round}"), &[("cookie", &cookie)]).await;
            by_session.entry(format!("s{s}")).or_default().insert(i);
        }
    }
    for (s, i) in &by_session {
        assert_eq!(i.len(), 1, "session {s} served by {i:?}");
    }
    let used: BTreeSet<&String> = by_session.values().flatten().collect();
    assert!(used.len() >= 2, "20 sessions all hashed to {used:?}");
    // Without the cookie: still served.
    instance_for(&gw, "/api/no-cookie", &[("cookie", "theme=dark")]).await;
}

#[tokio::test]
async fn consistent_hash_by_path_is_sticky() {
    let ups = [Upstream::start("p0").await, Upstream::start("p1").await, Upstream::start("p2").await];
    let gw = TestGateway::start(&simple_toml(
        &[&ups[0], &ups[1], &ups[2]],
        "balancer = \"consistent_hash\"\nhash_key = \"path\"\n",
    ))
    .await;
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..5 {
        for p in 0..20 {
            let path = format!("/api/items/{p}");
            // The query string is not part of the key.
            let i = instance_for(&gw, &format!("{path}?round={round}"), &[]).await;
            by_path.entry(path).or_default().insert(i);
        }
    }
    for (p, i) in &by_path {
        assert_eq!(i.len(), 1, "{p} served by {i:?}");
    }
    let used: BTreeSet<&String> = by_path.values().flatten().collect();
    assert!(used.len() >= 2, "20 paths all hashed to {used:?}");
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is local on Linux).
fn client_from(ip: IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn consistent_hash_by_client_ip_is_sticky() {
    let ups = [Upstream::start("i0").await, Upstream::start("i1").await, Upstream::start("i2").await];
    let gw = TestGateway::start(&simple_toml(
        &[&ups[0], &ups[1], &ups[2]],
        "balancer = \"consistent_hash\"\nhash_key = \"client_ip\"\n",
    ))
    .await;
    let mut by_ip: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for n in 1..=20u8 {
        let ip = IpAddr::from([127, 0, 0, n]);
        let client = client_from(ip);
        for i in 0..5 {
            let r = fetch(&client, gw.url(&format!("/api/ip/{i}")), &[]).await;
            by_ip.entry(ip).or_default().insert(served_by(&r, &format!("from {ip}")));
        }
    }
    for (ip, i) in &by_ip {
        assert_eq!(i.len(), 1, "client {ip} served by {i:?}");
    }
    let used: BTreeSet<&String> = by_ip.values().flatten().collect();
    assert!(used.len() >= 2, "20 client addresses all hashed to {used:?}");
}
