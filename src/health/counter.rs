//! The active-check threshold counter: a pure state machine.
//! `unhealthy_threshold` consecutive failures turn a healthy endpoint
//! unhealthy; `healthy_threshold` consecutive passes turn it back.

/// Consecutive passes/failures and the state they lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCounter {
    healthy: bool,
    passes: u32,
    failures: u32,
}

impl Default for HealthCounter {
    /// New endpoints start healthy: a static endpoint is trusted until a
    /// check says otherwise, a registered one just sent a heartbeat.
    fn default() -> Self {
        HealthCounter { healthy: true, passes: 0, failures: 0 }
    }
}

impl HealthCounter {
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(&mut self, passed: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.healthy && self.passes >= healthy_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= unhealthy_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_unhealthy_after_exactly_the_threshold() {
        let mut c = HealthCounter::default();
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), Some(false));
        assert_eq!(c.record(false, 2, 3), None, "no repeated transition");
    }

    #[test]
    fn a_pass_resets_the_failure_run() {
        let mut c = HealthCounter::default();
        c.record(false, 2, 3);
        c.record(false, 2, 3);
        c.record(true, 2, 3);
        assert_eq!(c.record(false, 2, 3), None);
        assert!(c.is_healthy());
    }

    #[test]
    fn recovers_after_healthy_threshold_passes() {
        let mut c = HealthCounter::default();
        for _ in 0..3 {
            c.record(false, 2, 3);
        }
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None, "a failure breaks the pass run");
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), Some(true));
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut c = HealthCounter::default();
        assert_eq!(c.record(false, 1, 1), Some(false));
        assert_eq!(c.record(true, 1, 1), Some(true));
    }
}
