//! One server of an upstream: its connections, what the balancer weighs
//! (requests in flight, a moving average of response times) and whether it
//! may be picked (active health checks, outlier ejection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use prometheus_client::metrics::histogram::Histogram;

use super::pool::Pool;
use crate::config::OutlierConfig;

/// One resolved address of a configured target.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The configured `host:port`: the default `Host` and TLS name.
    pub authority: Authority,
    pub(super) pool: Arc<Pool>,
    /// Times to its response heads (`sluice_upstream_response_seconds`).
    seconds: Histogram,
    in_flight: AtomicU32,
    /// The sum of the start times (milliseconds after [`epoch`]) of the
    /// requests in flight: with their count, how long they have waited.
    pending_since: AtomicU64,
    /// Moving average of the time to a response head, in microseconds.
    latency_us: AtomicU64,
    /// The last active health checks' verdict.
    healthy: AtomicBool,
    /// Ejected until this many milliseconds after [`epoch`] (0: not ejected).
    ejected_until: AtomicU64,
    /// Failures since the last success (outlier detection).
    failures: AtomicU32,
    outlier: Mutex<Outlier>,
    checks: Mutex<Checks>,
}

/// Passive outlier detection's record of a target's ejections.
#[derive(Default)]
struct Outlier {
    /// Ejections so far; each lasts longer. Forgotten after a quiet spell.
    ejections: u32,
    last_ejected: Option<Instant>,
}

/// Active health checks' record: passes or fails in a row.
#[derive(Default)]
struct Checks {
    passed: u32,
    failed: u32,
}

/// The instant targets' ejection deadlines count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds after [`epoch`], from 1: the proxy's one cheap clock for
/// deadlines and activity (targets, TCP and UDP listeners).
pub(crate) fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `instant`, for a caller that read the clock already.
pub(crate) fn ms_at(instant: Instant) -> u64 {
    instant.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

impl Target {
    pub(super) fn new(
        addr: SocketAddr,
        authority: Authority,
        pool: Arc<Pool>,
        seconds: Histogram,
    ) -> Target {
        Target {
            addr,
            authority,
            pool,
            seconds,
            in_flight: AtomicU32::new(0),
            pending_since: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            outlier: Mutex::default(),
            checks: Mutex::default(),
        }
    }

    /// Whether requests may go to it now.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected()
    }

    /// `ejected` (outlier detection), `unhealthy` (active checks) or `healthy`.
    pub fn state(&self) -> &'static str {
        if self.ejected() {
            "ejected"
        } else if self.healthy.load(Ordering::Relaxed) {
            "healthy"
        } else {
            "unhealthy"
        }
    }

    /// Whether outlier detection has it ejected now.
    pub fn ejected(&self) -> bool {
        // 0: never ejected, and no clock to read (every request asks).
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// Its connections open and waiting for a request.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }

    /// Requests in flight to it.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The expected cost of one more request, at `now` (milliseconds after
    /// [`epoch`]): its latency times the requests it would share the target
    /// with. The latency is the larger of the moving average and how long
    /// the requests in flight have waited so far (Finagle's and Linkerd's
    /// peak EWMA), so a target that stops answering costs more at once,
    /// before any of its requests ends.
    pub(super) fn load_score(&self, now: u64) -> u64 {
        let pending = u64::from(self.in_flight());
        let waited_us = match pending {
            0 => 0,
            n => (now * n).saturating_sub(self.pending_since.load(Ordering::Relaxed)) * 1000 / n,
        };
        (self.latency_us.load(Ordering::Relaxed).max(waited_us) + 1) * (pending + 1)
    }

    /// Count a request in flight, started at `now` (see [`now_ms`]), until the guard drops.
    pub(super) fn start(self: &Arc<Self>, now: u64) -> InFlight {
        self.pending_since.fetch_add(now, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone(), now)
    }

    /// A response head came after `took`: into the moving average.
    pub(super) fn answered(&self, took: Duration) {
        self.seconds.observe(took.as_secs_f64());
        let sample = took.as_micros() as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = match old {
            0 => sample,
            _ => (old * 7 + sample * 3) / 10,
        };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// A success resets the failure count (without a lock: it is every response).
    pub(super) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure (no connection, a timeout, a 5xx): enough in a row eject
    /// the target, for longer each time (ejections a quiet spell ago are
    /// forgotten), if `may_eject` says the cap allows. Returns whether
    /// this ejected it.
    pub(super) fn failed(&self, config: &OutlierConfig, may_eject: impl FnOnce() -> bool) -> bool {
        if config.consecutive_failures == 0 {
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < config.consecutive_failures || self.ejected() || !may_eject() {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let mut outlier = self.outlier.lock().expect("outlier lock");
        if outlier
            .last_ejected
            .is_some_and(|at| at.elapsed() > config.max_ejection)
        {
            outlier.ejections = 0;
        }
        outlier.ejections += 1;
        outlier.last_ejected = Some(Instant::now());
        let length = (config.base_ejection * outlier.ejections).min(config.max_ejection);
        self.ejected_until
            .store(now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// An active health check's verdict; returns the new state if it changed.
    pub(super) fn checked(
        &self,
        passed: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        let mut checks = self.checks.lock().expect("checks lock");
        let healthy = self.healthy.load(Ordering::Relaxed);
        if passed {
            checks.passed += 1;
            checks.failed = 0;
        } else {
            checks.failed += 1;
            checks.passed = 0;
        }
        let flip = match healthy {
            true => checks.failed >= unhealthy_after,
            false => checks.passed >= healthy_after,
        };
        if flip {
            self.healthy.store(!healthy, Ordering::Relaxed);
            if !healthy {
                // Back from the dead: outlier detection starts afresh.
                self.ejected_until.store(0, Ordering::Relaxed);
            }
            return Some(!healthy);
        }
        None
    }
}

/// A request counted in flight to a target, and when it started.
pub(super) struct InFlight(Arc<Target>, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.pending_since.fetch_sub(self.1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
