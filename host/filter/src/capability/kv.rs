//! The key-value store, atomic counters and token buckets (grant `kv`).
//! Private to each plugin, whose name prefixes every key, and kept by the
//! gateway, so they outlive instances and reloads.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{HasData, Linker};

use super::{Grant, Refusals};
use crate::bindings::{v1, v2};
use crate::config::PluginConfig;
use crate::cpu::CallClock;
use crate::error::HostError;
use sluice_state::{StateStore, StoreError, Stores};

/// One plugin's access to the store.
pub(crate) struct Kv {
    /// Present when granted.
    store: Option<Arc<dyn StateStore>>,
    /// The largest value it may set.
    max_value: usize,
    refusals: Refusals,
}

/// A bucket after a `take`.
struct Bucket {
    allowed: bool,
    remaining: u32,
    retry_after_millis: u64,
}

impl Kv {
    pub(crate) fn bind(
        grants: &[Grant],
        config: &PluginConfig,
        stores: &Stores,
        refusals: Refusals,
    ) -> Kv {
        Kv {
            store: grants
                .contains(&Grant::Kv)
                .then(|| stores.pick(config.state.as_ref().map(|s| *s.get_ref()))),
            max_value: stores.max_value,
            refusals,
        }
    }

    /// The store and the key in this plugin's namespace, if granted.
    fn open(&self, key: &str) -> Result<(&dyn StateStore, String), HostError> {
        match &self.store {
            Some(store) => Ok((&**store, format!("{}\0{key}", self.refusals.plugin()))),
            None => Err(self.refusals.refuse(&Grant::Kv)),
        }
    }

    async fn get(&self, clock: &mut CallClock, key: &str) -> Result<Option<Bytes>, HostError> {
        let (store, key) = self.open(key)?;
        clock.wait(store.get(&key)).await.map_err(unavailable)
    }

    async fn set(
        &self,
        clock: &mut CallClock,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u64>,
    ) -> Result<(), HostError> {
        let (store, key) = self.open(key)?;
        if value.len() > self.max_value {
            return Err(HostError::Invalid(format!(
                "a value of {} bytes is over the store's limit of {} bytes",
                value.len(),
                self.max_value
            )));
        }
        let ttl = ttl.map(Duration::from_millis);
        clock
            .wait(store.set(&key, Bytes::from(value), ttl))
            .await
            .map_err(unavailable)
    }

    async fn delete(&self, clock: &mut CallClock, key: &str) -> Result<(), HostError> {
        let (store, key) = self.open(key)?;
        clock.wait(store.delete(&key)).await.map_err(unavailable)
    }

    async fn increment(
        &self,
        clock: &mut CallClock,
        key: &str,
        delta: i64,
        ttl: Option<u64>,
    ) -> Result<i64, HostError> {
        let (store, key) = self.open(key)?;
        let ttl = ttl.map(Duration::from_millis);
        clock
            .wait(store.increment(&key, delta, ttl))
            .await
            .map_err(|e| match e {
                StoreError::WrongType(m) => HostError::Invalid(m),
                StoreError::Unavailable(m) => HostError::Unavailable(m),
            })
    }

    async fn take(
        &self,
        clock: &mut CallClock,
        key: &str,
        cost: u32,
        capacity: u32,
        window_millis: u64,
    ) -> Result<Bucket, HostError> {
        let (store, key) = self.open(key)?;
        let window = Duration::from_millis(window_millis);
        let admission = clock
            .wait(store.take(&key, cost, capacity, window))
            .await
            .map_err(unavailable)?;
        Ok(Bucket {
            allowed: admission.allowed,
            remaining: admission.remaining,
            retry_after_millis: admission.retry_after_millis,
        })
    }
}

fn unavailable(error: StoreError) -> HostError {
    HostError::Unavailable(error.to_string())
}

/// What a call into `kv` borrows from the instance's store data.
pub(crate) struct KvView<'a> {
    pub(crate) kv: &'a Kv,
    pub(crate) clock: &'a mut CallClock,
}

struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

/// Store data that can lend the key-value store its view.
pub(crate) trait KvHost {
    fn kv(&mut self) -> KvView<'_>;
}

pub(crate) fn link<T: KvHost + Send + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    v2::kv::add_to_linker::<_, KvData>(linker, T::kv)?;
    v1::kv::add_to_linker::<_, KvData>(linker, T::kv)
}

/// The one body of both versions' imports: they differ in their types only.
macro_rules! kv_host {
    ($v:ident, $error:ty, $bucket:path, $convert:expr) => {
        impl $v::kv::Host for KvView<'_> {
            async fn get(
                &mut self,
                key: String,
            ) -> wasmtime::Result<Result<Option<Vec<u8>>, $error>> {
                let value = self.kv.get(self.clock, &key).await;
                Ok(value.map(|v| v.map(|b| b.to_vec())).map_err($convert))
            }

            async fn set(
                &mut self,
                key: String,
                value: Vec<u8>,
                ttl_millis: Option<u64>,
            ) -> wasmtime::Result<Result<(), $error>> {
                Ok(self
                    .kv
                    .set(self.clock, &key, value, ttl_millis)
                    .await
                    .map_err($convert))
            }

            async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), $error>> {
                Ok(self.kv.delete(self.clock, &key).await.map_err($convert))
            }

            async fn increment(
                &mut self,
                key: String,
                delta: i64,
                ttl_millis: Option<u64>,
            ) -> wasmtime::Result<Result<i64, $error>> {
                let value = self.kv.increment(self.clock, &key, delta, ttl_millis).await;
                Ok(value.map_err($convert))
            }

            async fn take(
                &mut self,
                key: String,
                cost: u32,
                capacity: u32,
                window_millis: u64,
            ) -> wasmtime::Result<Result<$bucket, $error>> {
                let bucket = self
                    .kv
                    .take(self.clock, &key, cost, capacity, window_millis)
                    .await;
                Ok(bucket
                    .map(|b| {
                        use $bucket as State;
                        State {
                            allowed: b.allowed,
                            remaining: b.remaining,
                            retry_after_millis: b.retry_after_millis,
                        }
                    })
                    .map_err($convert))
            }
        }
    };
}

kv_host!(
    v2,
    v2::types::Error,
    v2::kv::BucketState,
    v2::types::Error::from
);
kv_host!(v1, String, v1::kv::BucketState, |e: HostError| e
    .to_string());
