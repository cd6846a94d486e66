//! Retries: which requests may be retried, on what, and how many retries
//! the service can afford.
//!
//! Only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) whose body is
//! empty or small enough to hold whole (≤ [`MAX_REPLAY_BODY`]) are retried,
//! always on another endpoint when one exists, at most `attempts` times, and
//! only while the [`RetryBudget`] allows: retries stay under `budget_ratio`
//! of the requests of the last 10 seconds plus `budget_min_per_second`, so a
//! full outage adds at most that share of load (the idea of tower's
//! `TpsBudget` and Finagle's retry budget).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::config::RetryConfig;
use crate::health::Outcome;

/// Largest request body held in memory so the request can be replayed.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;
/// The budget's window.
pub const WINDOW: Duration = Duration::from_secs(10);
const BUCKETS: usize = 10;

pub fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
}

/// Whether a failed attempt's outcome is one `on` lists.
pub fn retryable(cfg: &RetryConfig, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Success => false,
        Outcome::ConnectError => cfg.on_connect_failure,
        Outcome::Timeout => cfg.on_timeout,
        Outcome::Http5xx(s) => cfg.on_status.contains(&s),
    }
}

/// Whether a (non-5xx) status is listed in `on` (e.g. 429).
pub fn retryable_status(cfg: &RetryConfig, status: u16) -> bool {
    cfg.on_status.contains(&status)
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which second this bucket counts (seconds since the budget's start).
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A sliding 10-second window of requests and retries in one-second
/// buckets of atomics: deposit and withdraw take no lock. Two threads
/// rolling a bucket over at the same instant can lose a count; the budget
/// is an estimate and that error is one request.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    start: Instant,
    buckets: [Bucket; BUCKETS],
}

impl RetryBudget {
    pub fn new(cfg: &RetryConfig) -> Self {
        RetryBudget {
            ratio: cfg.budget_ratio,
            min_per_second: cfg.budget_min_per_second,
            start: Instant::now(),
            buckets: Default::default(),
        }
    }

    fn now_sec(&self) -> u64 {
        // +1 so that epoch 0 means "never used".
        Instant::now().saturating_duration_since(self.start).as_secs() + 1
    }

    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != sec && b.epoch.compare_exchange(seen, sec, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts a request (first attempts only).
    pub fn deposit(&self) {
        self.bucket(self.now_sec()).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let now = self.now_sec();
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let e = b.epoch.load(Ordering::Acquire);
            if e != 0 && e + (BUCKETS as u64) > now {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = self.min_per_second as f64 * WINDOW.as_secs_f64() + self.ratio * requests as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, min: u32) -> RetryConfig {
        RetryConfig {
            attempts: 2,
            on_connect_failure: true,
            on_timeout: true,
            on_status: vec![503],
            budget_ratio: ratio,
            budget_min_per_second: min,
            per_try_timeout: None,
        }
    }

    #[test]
    fn only_idempotent_methods() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
    }

    #[test]
    fn retry_conditions_follow_on() {
        let mut c = cfg(0.2, 0);
        assert!(retryable(&c, Outcome::ConnectError));
        assert!(retryable(&c, Outcome::Http5xx(503)));
        assert!(!retryable(&c, Outcome::Http5xx(500)));
        c.on_timeout = false;
        assert!(!retryable(&c, Outcome::Timeout));
        assert!(!retryable(&c, Outcome::Success));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_is_a_ratio_of_recent_requests() {
        let b = RetryBudget::new(&cfg(0.2, 0));
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_floor_lets_a_quiet_service_retry() {
        let b = RetryBudget::new(&cfg(0.0, 3));
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30, "3 per second over the 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_leave_the_window() {
        let b = RetryBudget::new(&cfg(0.5, 0));
        for _ in 0..10 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw(), "deposits older than the window no longer count");
        b.deposit();
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }
}
