//! Token buckets kept by the host for rate-limit filters: the plugin names the
//! bucket and its size, the host does the counting, exactly, under concurrency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The outcome of taking tokens, with what `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The bucket's capacity.
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Milliseconds until this request could succeed, when refused.
    pub retry_after_millis: u64,
}

impl Admission {
    /// Whole seconds until this request could succeed (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_millis.div_ceil(1000).max(1)
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
    /// When it will be full again; a full bucket is the same as none, so it can go.
    full_at: Instant,
}

/// Full buckets are swept every this many takes, so idle keys don't pile up.
const SWEEP_EVERY: u64 = 4096;

/// All buckets, keyed by plugin-chosen keys.
#[derive(Default)]
pub struct TokenBuckets {
    buckets: DashMap<String, Bucket>,
    takes: AtomicU64,
}

impl TokenBuckets {
    /// Take `cost` tokens from bucket `key`, which holds `capacity` tokens and
    /// refills completely over `window`.
    pub fn take(&self, key: &str, cost: u32, capacity: u32, window: Duration) -> Admission {
        let now = Instant::now();
        if self.takes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.buckets.retain(|_, b| b.full_at > now);
        }
        let rate = f64::from(capacity) / window.as_secs_f64().max(1e-3); // tokens per second
        let mut bucket = match self.buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => self.buckets.entry(key.to_owned()).or_insert(Bucket {
                tokens: f64::from(capacity),
                updated: now,
                full_at: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(capacity));
        bucket.updated = now;
        let cost = f64::from(cost);
        let allowed = bucket.tokens >= cost;
        if allowed {
            bucket.tokens -= cost;
        }
        let until_full = (f64::from(capacity) - bucket.tokens).max(0.0) / rate;
        bucket.full_at = now + Duration::from_secs_f64(until_full);
        Admission {
            allowed,
            limit: capacity,
            remaining: bucket.tokens.floor() as u32,
            reset_secs: until_full.ceil() as u64,
            retry_after_millis: if allowed {
                0
            } else {
                ((cost - bucket.tokens).max(0.0) / rate * 1000.0).ceil() as u64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_capacity_and_reports_counts() {
        let buckets = TokenBuckets::default();
        let window = Duration::from_secs(3600);
        for left in (0..3).rev() {
            let a = buckets.take("k", 1, 3, window);
            assert!(a.allowed);
            assert_eq!(a.remaining, left);
        }
        let refused = buckets.take("k", 1, 3, window);
        assert!(!refused.allowed);
        assert!(refused.retry_after_secs() >= 1);
        assert!(
            buckets.take("other", 1, 3, window).allowed,
            "keys are independent"
        );
    }
}
