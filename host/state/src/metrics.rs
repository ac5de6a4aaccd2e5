//! What the shared store's users watch: whether it is up, how long its
//! round trips take, why they fail, and how often a use fell back.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Labels as name/value pairs (the registry's own type).
pub type Labels = Vec<(String, String)>;

/// The shared store's metrics; the gateway registers them as `sluice_state_*`.
#[derive(Clone)]
pub struct StateMetrics {
    /// 1 while the breaker is closed, 0 while it is open.
    pub up: Gauge,
    /// Round trips to Redis, answered or not.
    pub round_trip: Histogram,
    /// Round trips that failed, by `reason` (`timeout`, `connection`, `server`).
    pub errors: Family<Labels, Counter>,
    /// Uses that fell back, by `use` (`rate_limit`, `kv`, `cache`) and `fallback`.
    pub fallbacks: Family<Labels, Counter>,
}

impl Default for StateMetrics {
    fn default() -> Self {
        StateMetrics {
            up: Gauge::default(),
            // 100 µs to ~3 s.
            round_trip: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            errors: Family::default(),
            fallbacks: Family::default(),
        }
    }
}

impl StateMetrics {
    /// Count a round trip that failed for `reason`.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// Count a use (`rate_limit`, `kv`, `cache`) that applied `fallback`.
    pub fn fell_back(&self, what: &str, fallback: &str) {
        let labels = vec![
            ("use".into(), what.into()),
            ("fallback".into(), fallback.into()),
        ];
        self.fallbacks.get_or_create(&labels).inc();
    }
}
