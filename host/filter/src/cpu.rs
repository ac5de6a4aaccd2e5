//! Sharing the CPU with plugins that run long. A call into a plugin runs on
//! the thread serving its request; without a check, one that loops holds
//! that thread until its deadline, and every request queued behind it waits.
//! So a call yields to the runtime at every epoch tick, and once it has run
//! past [`LONG_CALL`] its plugin's long-running time is metered: all its
//! calls together get at most `cpu_share` of the gateway's workers, and a
//! call over the share pauses before it resumes. Ordinary calls (tens of
//! microseconds) are never metered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

/// Guest time after which a call counts as long-running.
pub const LONG_CALL: Duration = Duration::from_millis(5);
/// Long-running time a plugin may spend at once before pauses begin.
const BURST: Duration = Duration::from_millis(50);

/// One plugin's meter of long-running guest time (a GCRA: the theoretical
/// arrival time advances by each charge divided by the rate).
#[derive(Debug)]
pub struct CpuShare {
    /// CPU-seconds per second the plugin's long calls may use.
    rate: f64,
    tat: Mutex<Instant>,
}

impl CpuShare {
    /// A meter allowing `share` of `workers` threads.
    pub fn new(share: f64, workers: usize) -> CpuShare {
        CpuShare {
            rate: share * workers.max(1) as f64,
            tat: Mutex::new(Instant::now()),
        }
    }

    /// Charge a call that has now run `ran` in all, `before` of it at the
    /// last charge; returns how long it should pause before resuming.
    pub fn charge(&self, before: Duration, ran: Duration) -> Duration {
        let used = ran.saturating_sub(LONG_CALL) - before.saturating_sub(LONG_CALL);
        if used.is_zero() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        *tat = (*tat).max(now) + used.div_f64(self.rate);
        tat.checked_sub(BURST)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

/// Wall time a call may take, host waits aside, as a multiple of its
/// `call_timeout`: pauses for the CPU share and waits for a thread stretch
/// a call, but not without bound.
const WALL_FACTOR: u32 = 10;

/// A call that ran too long in wall time, though not in guest time.
#[derive(Debug, thiserror::Error)]
#[error("took over {0:?} of wall time (paused for its CPU share or waiting for a thread)")]
pub struct WallLimit(Duration);

/// How long the current call into an instance has run, as its deadline sees
/// it: the guest's own time, without the host's waits (outbound HTTP, the
/// store) and without pauses.
pub struct CallClock {
    timeout: Duration,
    share: Arc<CpuShare>,
    origin: Instant,
    /// When the guest last started or resumed, in nanoseconds after
    /// `origin`; written by the pause that resumes it.
    resumed: Arc<AtomicU64>,
    started: Instant,
    ran: Duration,
    /// Host waits since the guest last resumed, and in the whole call.
    waited: Duration,
    waited_in_call: Duration,
}

impl CallClock {
    /// A clock for calls limited to `timeout` of guest time, metered by `share`.
    pub fn new(timeout: Duration, share: Arc<CpuShare>) -> CallClock {
        let now = Instant::now();
        CallClock {
            timeout,
            share,
            origin: now,
            resumed: Arc::new(AtomicU64::new(0)),
            started: now,
            ran: Duration::ZERO,
            waited: Duration::ZERO,
            waited_in_call: Duration::ZERO,
        }
    }

    /// Wall time since the call began (its waits and pauses included).
    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// A call begins.
    pub fn start(&mut self) {
        let now = Instant::now();
        self.started = now;
        self.ran = Duration::ZERO;
        self.waited = Duration::ZERO;
        self.waited_in_call = Duration::ZERO;
        self.resumed
            .store(nanos_since(self.origin, now), Ordering::Relaxed);
    }

    /// Wait for `work` on the guest's behalf; the wait does not count as its time.
    pub async fn wait<T>(&mut self, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = work.await;
        let waited = started.elapsed();
        self.waited += waited;
        self.waited_in_call += waited;
        result
    }

    /// An epoch tick reached the running guest: stop it if it is out of
    /// time, otherwise yield to the runtime (pausing if its plugin is over
    /// its CPU share) and give it another tick.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        let resumed = self.origin + Duration::from_nanos(self.resumed.load(Ordering::Relaxed));
        let slice = now
            .saturating_duration_since(resumed)
            .saturating_sub(std::mem::take(&mut self.waited));
        let before = self.ran;
        self.ran += slice;
        if self.ran >= self.timeout {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        let wall = now
            .saturating_duration_since(self.started)
            .saturating_sub(self.waited_in_call);
        if wall >= self.timeout * WALL_FACTOR {
            return Err(WallLimit(self.timeout * WALL_FACTOR).into());
        }
        let pause = self.share.charge(before, self.ran);
        let (resumed, origin) = (self.resumed.clone(), self.origin);
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                match pause.is_zero() {
                    true => tokio::task::yield_now().await,
                    false => tokio::time::sleep(pause).await,
                }
                resumed.store(nanos_since(origin, Instant::now()), Ordering::Relaxed);
            }),
        ))
    }
}

fn nanos_since(origin: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(origin).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_calls_are_free_and_long_ones_pause_to_their_share() {
        let meter = CpuShare::new(0.1, 1);
        let ms = Duration::from_millis;
        assert_eq!(
            meter.charge(ms(0), ms(4)),
            Duration::ZERO,
            "under LONG_CALL"
        );
        // 5 ms over LONG_CALL at a 10% share is 50 ms of budget: the burst.
        assert_eq!(meter.charge(ms(4), ms(10)), Duration::ZERO);
        // 2 ms more needs 20 ms of budget the plugin does not have.
        let pause = meter.charge(ms(10), ms(12));
        assert!(pause > ms(15) && pause <= ms(20), "{pause:?}");
        let unmetered = CpuShare::new(1.0, 1);
        assert!(unmetered.charge(ms(0), ms(60)) <= ms(5));
    }
}
