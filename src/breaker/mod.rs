//! Per-service circuit breaker: closed → open after `failure_threshold`
//! consecutive failed requests; open answers `circuit_open` at once; after
//! `open_duration` half-open lets at most `half_open_max_requests` trial
//! requests through; that many successes close it, a failure re-opens it.
//!
//! [`BreakerState`] is the pure state machine (time is passed in, so tests
//! are exact). [`CircuitBreaker`] wraps it for concurrent use: while closed,
//! admitting a request is one atomic load and a success one more; the mutex
//! is taken only on failures and in the open/half-open states.
//!
//! A request's outcome is recorded once, after retries (the breaker sits
//! outside the retry loop), so a retried failure counts once.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use prometheus::IntCounter;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

/// The breaker states as the metrics gauge numbers them (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Open,
            2 => Phase::HalfOpen,
            _ => Phase::Closed,
        }
    }
}

/// How a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// While closed.
    Normal,
    /// One of the half-open trial requests.
    Trial,
}

/// The pure state machine.
#[derive(Debug, Clone)]
pub struct BreakerState {
    pub phase: Phase,
    /// Consecutive failures while closed.
    pub failures: u32,
    /// When it opened (valid while open).
    pub opened_at: Instant,
    /// Trials admitted and not yet finished (half-open).
    pub trials_in_flight: u32,
    /// Successful trials so far (half-open).
    pub trial_successes: u32,
}

impl BreakerState {
    pub fn new(now: Instant) -> Self {
        BreakerState { phase: Phase::Closed, failures: 0, opened_at: now, trials_in_flight: 0, trial_successes: 0 }
    }

    /// Lets a request through, or says how long until it might.
    /// Returns the admission and the phase change it caused, if any.
    pub fn admit(&mut self, cfg: &BreakerConfig, now: Instant) -> Result<(Admission, Option<Phase>), Duration> {
        let mut changed = None;
        if self.phase == Phase::Open {
            let elapsed = now.saturating_duration_since(self.opened_at);
            if elapsed < cfg.open_duration {
                return Err(cfg.open_duration - elapsed);
            }
            self.phase = Phase::HalfOpen;
            self.trials_in_flight = 0;
            self.trial_successes = 0;
            changed = Some(Phase::HalfOpen);
        }
        match self.phase {
            Phase::Closed => Ok((Admission::Normal, changed)),
            Phase::HalfOpen if self.trials_in_flight + self.trial_successes < cfg.half_open_max_requests => {
                self.trials_in_flight += 1;
                Ok((Admission::Trial, changed))
            }
            // Trials are all in flight: others wait for their verdict.
            _ => Err(Duration::from_secs(1)),
        }
    }

    /// Records how an admitted request ended (`None`: it ended without a
    /// verdict, e.g. the client went away). Returns the phase change, if any.
    pub fn record(
        &mut self,
        cfg: &BreakerConfig,
        admission: Admission,
        success: Option<bool>,
        now: Instant,
    ) -> Option<Phase> {
        match (admission, self.phase) {
            (Admission::Normal, Phase::Closed) => match success {
                Some(true) => {
                    self.failures = 0;
                    None
                }
                Some(false) => {
                    self.failures += 1;
                    (self.failures >= cfg.failure_threshold).then(|| self.open(now))
                }
                None => None,
            },
            (Admission::Trial, Phase::HalfOpen) => {
                self.trials_in_flight = self.trials_in_flight.saturating_sub(1);
                match success {
                    Some(true) => {
                        self.trial_successes += 1;
                        (self.trial_successes >= cfg.half_open_max_requests).then(|| {
                            self.phase = Phase::Closed;
                            self.failures = 0;
                            Phase::Closed
                        })
                    }
                    Some(false) => Some(self.open(now)),
                    None => None,
                }
            }
            // A request admitted in an earlier phase: its verdict is stale.
            _ => None,
        }
    }

    fn open(&mut self, now: Instant) -> Phase {
        self.phase = Phase::Open;
        self.opened_at = now;
        self.failures = 0;
        self.trials_in_flight = 0;
        self.trial_successes = 0;
        Phase::Open
    }
}

/// The breaker of one service, safe to share across workers.
#[derive(Debug)]
pub struct CircuitBreaker {
    pub cfg: BreakerConfig,
    service: Box<str>,
    /// Mirror of `state.phase` for the lock-free closed path.
    phase: AtomicU8,
    /// Mirror of `state.failures` > 0, so a success in the closed state only
    /// writes when there is a run to reset.
    failing: AtomicU32,
    state: Mutex<BreakerState>,
    /// Transitions into each phase (indexed by `Phase as usize`): the
    /// `waygate_circuit_breaker_transitions_total` series of the service.
    transitions: [IntCounter; 3],
}

impl CircuitBreaker {
    pub fn new(service: &str, cfg: BreakerConfig, transitions: [IntCounter; 3]) -> Self {
        CircuitBreaker {
            cfg,
            service: service.into(),
            phase: AtomicU8::new(Phase::Closed as u8),
            failing: AtomicU32::new(0),
            state: Mutex::new(BreakerState::new(Instant::now())),
            transitions,
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request or returns the time left before it might be.
    pub fn try_acquire(&self) -> Result<Admission, Duration> {
        if self.phase() == Phase::Closed {
            return Ok(Admission::Normal);
        }
        let mut st = self.lock();
        let (admission, changed) = st.admit(&self.cfg, Instant::now())?;
        self.publish(&st, changed, "open_duration passed; letting trial requests through");
        Ok(admission)
    }

    /// Records the final outcome of an admitted request.
    pub fn record(&self, admission: Admission, success: Option<bool>) {
        if admission == Admission::Normal && success == Some(true) {
            // The hot path: nothing to do unless a failure run is pending.
            if self.failing.load(Ordering::Relaxed) == 0 {
                return;
            }
        }
        let mut st = self.lock();
        let changed = st.record(&self.cfg, admission, success, Instant::now());
        self.failing.store(st.failures, Ordering::Relaxed);
        let reason = match changed {
            Some(Phase::Open) if admission == Admission::Trial => "a trial request failed".to_string(),
            Some(Phase::Open) => format!("{} consecutive failed requests", self.cfg.failure_threshold),
            Some(Phase::Closed) => format!("{} trial request(s) succeeded", self.cfg.half_open_max_requests),
            _ => String::new(),
        };
        self.publish(&st, changed, &reason);
    }

    fn publish(&self, st: &BreakerState, changed: Option<Phase>, reason: &str) {
        self.phase.store(st.phase as u8, Ordering::Release);
        if let Some(to) = changed {
            tracing::warn!(target: "waygate::breaker", service = %self.service, to = to.as_str(), reason, "circuit breaker changed state");
            self.transitions[to as usize].inc();
        }
    }

    /// How many times the breaker entered `phase`.
    pub fn transitions_to(&self, phase: Phase) -> u64 {
        self.transitions[phase as usize].get()
    }

    /// Time until an open breaker lets trials through (for the admin API).
    pub fn retry_after(&self) -> Option<Duration> {
        let st = self.lock();
        (st.phase == Phase::Open)
            .then(|| self.cfg.open_duration.saturating_sub(Instant::now().saturating_duration_since(st.opened_at)))
    }
}

/// Holds an admission until the request's verdict is recorded; a request
/// dropped before (client gone) releases its trial slot without a verdict.
pub struct Ticket<'a> {
    breaker: &'a CircuitBreaker,
    admission: Admission,
    done: bool,
}

impl<'a> Ticket<'a> {
    pub fn new(breaker: &'a CircuitBreaker, admission: Admission) -> Self {
        Ticket { breaker, admission, done: false }
    }

    pub fn finish(mut self, success: bool) {
        self.done = true;
        self.breaker.record(self.admission, Some(success));
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.admission, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(threshold: u32, trials: u32) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: threshold,
            open_duration: Duration::from_secs(30),
            half_open_max_requests: trials,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_exactly_the_threshold() {
        let c = cfg(3, 1);
        let mut s = BreakerState::new(Instant::now());
        for _ in 0..2 {
            assert_eq!(s.admit(&c, Instant::now()), Ok((Admission::Normal, None)));
            assert_eq!(s.record(&c, Admission::Normal, Some(false), Instant::now()), None);
        }
        s.admit(&c, Instant::now()).unwrap();
        assert_eq!(s.record(&c, Admission::Normal, Some(false), Instant::now()), Some(Phase::Open));
        let left = s.admit(&c, Instant::now()).unwrap_err();
        assert_eq!(left, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_run() {
        let c = cfg(2, 1);
        let mut s = BreakerState::new(Instant::now());
        s.record(&c, Admission::Normal, Some(false), Instant::now());
        s.record(&c, Admission::Normal, Some(true), Instant::now());
        assert_eq!(s.record(&c, Admission::Normal, Some(false), Instant::now()), None);
        assert_eq!(s.phase, Phase::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_only_the_allowance_and_closes_on_success() {
        let c = cfg(1, 2);
        let mut s = BreakerState::new(Instant::now());
        s.record(&c, Admission::Normal, Some(false), Instant::now());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(s.admit(&c, Instant::now()).unwrap_err(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.admit(&c, Instant::now()), Ok((Admission::Trial, Some(Phase::HalfOpen))));
        assert_eq!(s.admit(&c, Instant::now()), Ok((Admission::Trial, None)));
        assert!(s.admit(&c, Instant::now()).is_err(), "a third concurrent trial is refused");
        // A request admitted while closed finishing now changes nothing.
        assert_eq!(s.record(&c, Admission::Normal, Some(false), Instant::now()), None);
        assert_eq!(s.record(&c, Admission::Trial, Some(true), Instant::now()), None);
        assert!(s.admit(&c, Instant::now()).is_err(), "one success + one in flight fill the allowance");
        assert_eq!(s.record(&c, Admission::Trial, Some(true), Instant::now()), Some(Phase::Closed));
        assert_eq!(s.admit(&c, Instant::now()), Ok((Admission::Normal, None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_for_a_full_period() {
        let c = cfg(1, 1);
        let mut s = BreakerState::new(Instant::now());
        s.record(&c, Admission::Normal, Some(false), Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        let (a, _) = s.admit(&c, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.record(&c, a, Some(false), Instant::now()), Some(Phase::Open));
        assert_eq!(s.admit(&c, Instant::now()).unwrap_err(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_without_verdict_frees_its_slot() {
        let c = cfg(1, 1);
        let mut s = BreakerState::new(Instant::now());
        s.record(&c, Admission::Normal, Some(false), Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        let (a, _) = s.admit(&c, Instant::now()).unwrap();
        assert!(s.admit(&c, Instant::now()).is_err());
        assert_eq!(s.record(&c, a, None, Instant::now()), None);
        assert!(s.admit(&c, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_breaker_counts_once_per_request() {
        let b = CircuitBreaker::new("s", cfg(3, 1), crate::metrics::Metrics::new().breaker_transitions("s"));
        for _ in 0..3 {
            let a = b.try_acquire().unwrap();
            Ticket::new(&b, a).finish(false);
        }
        assert_eq!(b.phase(), Phase::Open);
        assert!(b.try_acquire().is_err());
        tokio::time::advance(Duration::from_secs(30)).await;
        let a = b.try_acquire().unwrap();
        assert_eq!(b.phase(), Phase::HalfOpen);
        assert!(b.try_acquire().is_err());
        Ticket::new(&b, a).finish(true);
        assert_eq!(b.phase(), Phase::Closed);
    }
}
