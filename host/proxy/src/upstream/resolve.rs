//! From configured targets to resolved ones: host names are looked up (and
//! again every `resolve_every`), and a target that stays, across lookups
//! and reloads, keeps its connections and its record.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use http::uri::Authority;
use sluice_filter::metrics::{HistogramFamily, labels};

use super::connect::Connector;
use super::pool::Pool;
use super::target::Target;
use crate::config::{TargetConfig, UpstreamConfig};

/// Every live target by upstream, connection settings and address, so a
/// reload reuses what did not change.
#[derive(Default)]
pub struct TargetRegistry(Mutex<HashMap<String, Weak<Target>>>);

impl TargetRegistry {
    fn get_or_insert(&self, key: String, make: impl FnOnce() -> Target) -> Arc<Target> {
        let mut known = self.0.lock().expect("registry lock");
        if let Some(target) = known.get(&key).and_then(Weak::upgrade) {
            return target;
        }
        known.retain(|_, t| t.strong_count() > 0);
        let target = Arc::new(make());
        known.insert(key, Arc::downgrade(&target));
        target
    }
}

impl TargetRegistry {
    /// Call `f` with each live target and its upstream's name.
    pub(crate) fn each(&self, mut f: impl FnMut(&str, &Target)) {
        let known = self.0.lock().expect("registry lock");
        for (key, target) in known.iter() {
            if let Some(target) = target.upgrade() {
                let upstream = key.split('|').next().unwrap_or("");
                f(upstream, &target);
            }
        }
    }
}

impl std::fmt::Debug for TargetRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetRegistry")
    }
}

/// What makes two targets' connections interchangeable.
pub(super) fn fingerprint(name: &str, config: &UpstreamConfig) -> String {
    format!(
        "{name}|{:?}|{:?}|{:?}|{:?}",
        config.protocol, config.tls, config.connect_timeout, config.idle_timeout
    )
}

/// Whether any target is a name (and so worth looking up again).
pub(super) fn has_names(targets: &[TargetConfig]) -> bool {
    targets.iter().any(|t| literal(t.address()).is_none())
}

/// `address`'s IP address and port, if it is written as one.
fn literal(address: &str) -> Option<SocketAddr> {
    address.parse().ok()
}

/// How to turn configured targets into resolved ones.
pub(super) struct Resolver {
    pub(super) registry: Arc<TargetRegistry>,
    pub(super) fingerprint: String,
    pub(super) connector: Arc<Connector>,
    pub(super) idle_timeout: std::time::Duration,
    /// The upstream's name and where its targets' latencies go.
    pub(super) upstream: String,
    pub(super) seconds: HistogramFamily,
}

impl Resolver {
    /// Every address of every target, with its weight.
    pub(super) async fn resolve(
        &self,
        targets: &[TargetConfig],
    ) -> Result<Vec<(Arc<Target>, u32)>, String> {
        let mut resolved = Vec::new();
        for configured in targets {
            let address = configured.address();
            let authority: Authority = address
                .parse()
                .map_err(|_| format!("`{address}` is not a `host:port`"))?;
            let addrs: Vec<SocketAddr> = match literal(address) {
                Some(addr) => vec![addr],
                None => {
                    let mut found: Vec<SocketAddr> = tokio::net::lookup_host(address)
                        .await
                        .map_err(|e| format!("cannot resolve `{address}`: {e}"))?
                        .collect();
                    found.sort();
                    found.dedup();
                    found
                }
            };
            for addr in addrs {
                let key = format!("{}|{authority}|{addr}", self.fingerprint);
                let target = self.registry.get_or_insert(key, || {
                    let host = authority.host().trim_matches(['[', ']']);
                    let pool = Pool::new(addr, host, self.connector.clone(), self.idle_timeout);
                    let addr_text = addr.to_string();
                    let set = [("upstream", &*self.upstream), ("target", &addr_text)];
                    let seconds = self.seconds.get_or_create(&labels(set)).clone();
                    Target::new(addr, authority.clone(), pool, seconds)
                });
                resolved.push((target, configured.weight()));
            }
        }
        if resolved.is_empty() {
            return Err("no target resolved to an address".into());
        }
        Ok(resolved)
    }
}

/// Whether two resolutions name the same addresses with the same weights.
pub(super) fn same(a: &[(Arc<Target>, u32)], b: &[(Arc<Target>, u32)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((x, wx), (y, wy))| Arc::ptr_eq(x, y) && wx == wy)
}
