//! The default store: this process's memory, exact under concurrency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use crate::buckets::{Admission, TokenBuckets};
use crate::{StateStore, StoreError};

enum Value {
    Bytes(Bytes),
    Counter(i64),
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// Expired entries are swept every this many writes.
const SWEEP_EVERY: u64 = 4096;

/// The default store: in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    entries: DashMap<String, Entry>,
    buckets: TokenBuckets,
    writes: AtomicU64,
}

impl MemoryStore {
    fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.entries.retain(|_, e| e.live(now));
        }
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let now = Instant::now();
        Ok(self.entries.get(key).and_then(|e| match &e.value {
            Value::Bytes(b) if e.live(now) => Some(b.clone()),
            Value::Counter(n) if e.live(now) => Some(Bytes::from(n.to_string())),
            _ => None,
        }))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), StoreError> {
        let entry = Entry {
            value: Value::Bytes(value),
            expires: ttl.map(|ttl| Instant::now() + ttl),
        };
        self.entries.insert(key.to_owned(), entry);
        self.wrote();
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.entries.remove(key);
        Ok(())
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        let now = Instant::now();
        let fresh = || Entry {
            value: Value::Counter(0),
            expires: ttl.map(|ttl| now + ttl),
        };
        let mut entry = self.entries.entry(key.to_owned()).or_insert_with(fresh);
        if !entry.live(now) {
            *entry = fresh();
        }
        let value = match &mut entry.value {
            Value::Counter(n) => {
                *n = n.saturating_add(delta);
                *n
            }
            Value::Bytes(_) => {
                return Err(StoreError::WrongType(format!(
                    "`{}` holds a value, not a counter",
                    key.rsplit('\0').next().unwrap_or(key)
                )));
            }
        };
        drop(entry);
        self.wrote();
        Ok(value)
    }

    async fn take(
        &self,
        key: &str,
        cost: u32,
        capacity: u32,
        window: Duration,
    ) -> Result<Admission, StoreError> {
        Ok(self.buckets.take(key, cost, capacity, window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_are_exact_and_expire() {
        let store = MemoryStore::default();
        assert_eq!(store.increment("p\0n", 2, None).await.unwrap(), 2);
        assert_eq!(store.increment("p\0n", -1, None).await.unwrap(), 1);
        let short = Some(Duration::from_millis(20));
        assert_eq!(store.increment("p\0w", 1, short).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(store.increment("p\0w", 1, short).await.unwrap(), 1);
        store
            .set("p\0v", Bytes::from_static(b"x"), None)
            .await
            .unwrap();
        assert!(store.increment("p\0v", 1, None).await.is_err());
        store.delete("p\0v").await.unwrap();
        assert_eq!(store.get("p\0v").await.unwrap(), None);
    }
}
