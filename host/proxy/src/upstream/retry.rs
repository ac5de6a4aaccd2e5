//! The retry budget (Finagle's): every request puts `share` of a token in,
//! every retry takes one out, and a reserve of ten retries a second keeps a
//! quiet upstream retryable. Over time retries add at most `share` to the
//! load, so they cannot turn an outage into an overload; the balance (up to
//! a hundred) lets the requests in flight on a target that just died all
//! be retried at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Tokens are counted in thousandths.
const TOKEN: i64 = 1000;
/// The most retries saved up.
const CAP: i64 = 100 * TOKEN;
/// The reserve: thousandths of a token per millisecond (ten a second).
const RESERVE_PER_MS: i64 = 10;

pub(super) struct RetryBudget {
    balance: AtomicI64,
    per_request: i64,
    /// Milliseconds after [`epoch`] of the last reserve top-up.
    topped_up: AtomicU64,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RetryBudget {
    /// A full budget, earning `share` of a retry per request.
    pub(super) fn new(share: f64) -> RetryBudget {
        RetryBudget {
            balance: AtomicI64::new(CAP),
            per_request: (share * TOKEN as f64) as i64,
            topped_up: AtomicU64::new(now_ms()),
        }
    }

    /// A request was sent.
    pub(super) fn deposit(&self) {
        self.add(self.per_request);
    }

    /// Whether a retry may be made now (and if so, paid for).
    pub(super) fn withdraw(&self) -> bool {
        let now = now_ms();
        let since = now.saturating_sub(self.topped_up.swap(now, Ordering::Relaxed));
        self.add(since as i64 * RESERVE_PER_MS);
        if self.balance.fetch_sub(TOKEN, Ordering::Relaxed) >= TOKEN {
            return true;
        }
        self.balance.fetch_add(TOKEN, Ordering::Relaxed);
        false
    }

    fn add(&self, amount: i64) {
        if amount > 0 && self.balance.fetch_add(amount, Ordering::Relaxed) + amount > CAP {
            self.balance.fetch_min(CAP, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_once_the_savings_are_spent() {
        let budget = RetryBudget::new(0.2);
        let mut spent = 0;
        while budget.withdraw() {
            spent += 1;
        }
        assert!((100..=101).contains(&spent), "{spent}");
        for _ in 0..50 {
            budget.deposit();
        }
        let mut more = 0;
        while budget.withdraw() {
            more += 1;
        }
        assert!((10..=11).contains(&more), "{more}");
    }
}
