//! A circuit breaker in front of Redis: after a few failed round trips in a
//! row, calls fail at once (no request waits out a timeout) until, after a
//! while, one call probes; its success closes the breaker.
//!
//! It logs each change of state, so the log says when Redis went and came
//! back, once each, however many requests meanwhile.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

/// What a call may do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Go ahead (the breaker is closed).
    Call,
    /// Go ahead as the one probe of an open breaker.
    Probe,
    /// Don't: the breaker is open.
    Refused,
}

pub(crate) struct Breaker {
    /// Failures in a row, while closed.
    failures: AtomicU32,
    /// While open: when the next probe may go, in milliseconds from
    /// `epoch`; 0 when closed. Sending a probe moves it on, so a probe
    /// that never comes back (its request cancelled) holds nothing up.
    open_until: AtomicU64,
    threshold: u32,
    open_for: Duration,
    epoch: Instant,
    up: Gauge,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration, up: Gauge) -> Breaker {
        up.set(1);
        Breaker {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            threshold: threshold.max(1),
            open_for,
            epoch: Instant::now(),
            up,
        }
    }

    fn now(&self) -> u64 {
        // Never 0, which means closed.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a call may go to Redis now.
    pub(crate) fn permit(&self) -> Permit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Call;
        }
        let now = self.now();
        if now < until {
            return Permit::Refused;
        }
        let next = now + self.open_for.as_millis() as u64;
        match self
            .open_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Permit::Probe,
            Err(_) => Permit::Refused,
        }
    }

    /// Whether the breaker is open (calls refused).
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// A round trip answered.
    pub(crate) fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            self.up.set(1);
            tracing::warn!("state store: Redis answers again; shared state is back");
        }
    }

    /// Open it now (Redis unreachable at start).
    pub(crate) fn trip(&self, why: &str) {
        for _ in 0..self.threshold {
            self.failed(&Permit::Call, why);
        }
    }

    /// A round trip failed (`why`).
    pub(crate) fn failed(&self, permit: &Permit, why: &str) {
        if *permit == Permit::Probe {
            // Still open; sending it already set the next probe's time.
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold && !self.is_open() {
            let until = self.now() + self.open_for.as_millis() as u64;
            if self
                .open_until
                .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.up.set(0);
                tracing::warn!(
                    "state store: Redis failed {failures} round trips in a row ({why}); \
                     shared state falls back until a probe succeeds (every {:?})",
                    self.open_for
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_one_probe_closes_it() {
        let breaker = Breaker::new(2, Duration::from_millis(30), Gauge::default());
        breaker.failed(&Permit::Call, "timeout");
        assert_eq!(breaker.permit(), Permit::Call);
        breaker.failed(&Permit::Call, "timeout");
        assert_eq!(breaker.permit(), Permit::Refused);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.permit(), Permit::Probe);
        assert_eq!(breaker.permit(), Permit::Refused, "one probe at a time");
        breaker.failed(&Permit::Probe, "timeout");
        assert_eq!(
            breaker.permit(),
            Permit::Refused,
            "a failed probe reopens it"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.permit(), Permit::Probe);
        breaker.succeeded();
        assert_eq!(breaker.permit(), Permit::Call);
        assert!(!breaker.is_open());
    }
}
