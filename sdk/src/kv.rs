//! The gateway's key-value store, counters and token buckets, private to
//! this plugin and shared by all its instances. They outlive instances and
//! reloads. Needs `grants = ["kv"]` in the plugin's configuration; without
//! it every call returns an error.

use std::time::Duration;

use crate::Error;
use crate::bindings::imports::sluice::filter::kv as raw;

fn millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// The value of `key`, if set and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(raw::get(key)?)
}

/// Set `key`, expiring after `ttl` if given.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
    Ok(raw::set(key, value, millis(ttl))?)
}

/// Remove `key`.
pub fn delete(key: &str) -> Result<(), Error> {
    Ok(raw::delete(key)?)
}

/// Add `delta` to counter `key` atomically, across all instances, and return
/// the new value. A new counter starts at 0 and expires `ttl` after it was
/// created, if given (a fixed window).
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error> {
    Ok(raw::increment(key, delta, millis(ttl))?)
}

/// A token bucket's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u32,
    /// How long until the tokens asked for would be there, when refused.
    pub retry_after: Duration,
}

/// Take `cost` tokens from bucket `key`, which holds `capacity` tokens and
/// refills completely over `window`.
pub fn take(key: &str, cost: u32, capacity: u32, window: Duration) -> Result<Bucket, Error> {
    let state = raw::take(key, cost, capacity, millis(Some(window)).unwrap_or(0))?;
    Ok(Bucket {
        allowed: state.allowed,
        remaining: state.remaining,
        retry_after: Duration::from_millis(state.retry_after_millis),
    })
}
