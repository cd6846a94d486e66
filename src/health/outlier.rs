//! Passive outlier detection: pure decisions over a run of live-traffic
//! outcomes. `consecutive_failures` failures in a row (connect errors,
//! timeouts, 5xx) eject an endpoint for `base_ejection_time`, doubled for
//! each repeated ejection (SPEC §2), capped at `max_ejection_time`; the run of ejections
//! is forgotten once the endpoint has stayed in for `max_ejection_time`.
//! `max_ejection_percent` is counted after the ejection, and the last
//! available endpoint is never ejected.

use std::time::Duration;

use crate::config::OutlierConfig;

/// Whether ejecting one more endpoint is allowed.
/// `total`: endpoints of the service; `ejected`: already ejected;
/// `available`: able to take traffic now (including the candidate).
pub fn may_eject(cfg: &OutlierConfig, total: usize, ejected: usize, available: usize) -> bool {
    if available <= 1 || total == 0 {
        return false;
    }
    (ejected + 1) * 100 <= cfg.max_ejection_percent as usize * total
}

/// How long the `times`-th ejection (1-based) lasts.
pub fn ejection_time(cfg: &OutlierConfig, times: u32) -> Duration {
    let doublings = times.max(1).saturating_sub(1).min(20);
    cfg.base_ejection_time.saturating_mul(1 << doublings).min(cfg.max_ejection_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pct: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: pct,
        }
    }

    #[test]
    fn percent_is_counted_after_the_ejection() {
        // 50% of 4: two may be ejected, not three.
        assert!(may_eject(&cfg(50), 4, 0, 4));
        assert!(may_eject(&cfg(50), 4, 1, 3));
        assert!(!may_eject(&cfg(50), 4, 2, 2));
        // 50% of 2: one of two.
        assert!(may_eject(&cfg(50), 2, 0, 2));
        assert!(!may_eject(&cfg(10), 2, 0, 2), "10% of 2 is less than one endpoint");
    }

    #[test]
    fn the_last_available_endpoint_stays() {
        assert!(!may_eject(&cfg(100), 1, 0, 1));
        assert!(!may_eject(&cfg(100), 3, 0, 1), "the others are unhealthy");
        assert!(may_eject(&cfg(100), 3, 1, 2));
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let c = cfg(50);
        assert_eq!(ejection_time(&c, 1), Duration::from_secs(30));
        assert_eq!(ejection_time(&c, 2), Duration::from_secs(60));
        assert_eq!(ejection_time(&c, 3), Duration::from_secs(120));
        assert_eq!(ejection_time(&c, 50), Duration::from_secs(300));
    }
}
