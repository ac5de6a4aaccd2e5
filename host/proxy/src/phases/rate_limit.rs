//! Rate limiting, the host's half: a rate-limit filter names a token bucket
//! and its size; the host takes the tokens (exactly, under concurrency, in
//! this process or in the fleet's Redis), answers 429 with `Retry-After`
//! when there are none, and reports the last decision in `RateLimit-*`
//! response headers. While Redis cannot answer, the plugin's fallback
//! decides: count locally, let requests through, or refuse them (503).

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_filter::metrics::{Labels, labels};
use sluice_filter::{Filter, Limit, Reply};
use sluice_state::{Admission, Fallback, MemoryStore, Scope, StateMetrics, StateStore, Stores};

use crate::metrics::ProxyMetrics;

use super::reply::into_response;
use super::{Flow, PhaseError, RequestCtx};

/// One filter's buckets: where they are kept and, kept in Redis, what to do
/// without it; and its decisions, counted by plugin (made for every filter
/// of a chain, created in the registry only when first counted).
pub(super) struct Buckets {
    store: Arc<dyn StateStore>,
    /// For buckets in the cluster's store: the fallback, where it counts,
    /// and where falling back is counted.
    fallback: Option<(Fallback, Arc<MemoryStore>, StateMetrics)>,
    plugin: Arc<str>,
    allowed: OnceLock<Counter>,
    limited: OnceLock<Counter>,
    family: Family<Labels, Counter>,
}

impl Buckets {
    /// The buckets of `filter`, in the store its route (`scope`) or its
    /// plugin picks.
    pub(super) fn new(
        metrics: &ProxyMetrics,
        filter: &Filter,
        scope: Option<Scope>,
        stores: &Stores,
    ) -> Buckets {
        let plugin = filter.plugin();
        let scope = scope.or(plugin.state).unwrap_or(stores.default_scope);
        let fallback = match (scope, &stores.cluster) {
            (Scope::Cluster, Some(cluster)) => Some((
                plugin.fallback.unwrap_or(stores.fallback),
                stores.local.clone(),
                cluster.metrics().clone(),
            )),
            _ => None,
        };
        Buckets {
            store: stores.pick(Some(scope)),
            fallback,
            plugin: plugin.name.clone(),
            allowed: Default::default(),
            limited: Default::default(),
            family: metrics.rate_limit.clone(),
        }
    }

    /// Take `limit`'s tokens; `None` when the store cannot answer and the
    /// fallback lets the request through uncounted.
    async fn take(&self, key: &str, limit: &Limit) -> Result<Option<Admission>, PhaseError> {
        let (cost, capacity, window) = (limit.cost, limit.capacity, limit.window);
        let error = match self.store.take(key, cost, capacity, window).await {
            Ok(admission) => return Ok(Some(admission)),
            Err(error) => error,
        };
        let Some((fallback, local, metrics)) = &self.fallback else {
            return Err(PhaseError::Store(error.to_string()));
        };
        metrics.fell_back("rate_limit", fallback.as_str());
        match fallback {
            Fallback::Local => Ok(local.take(key, cost, capacity, window).await.ok()),
            Fallback::Open => Ok(None),
            Fallback::Closed => Err(PhaseError::Store(error.to_string())),
        }
    }

    fn count(&self, allowed: bool) {
        let (cell, decision) = match allowed {
            true => (&self.allowed, "allowed"),
            false => (&self.limited, "limited"),
        };
        cell.get_or_init(|| {
            let set = labels([("plugin", &*self.plugin), ("decision", decision)]);
            self.family.get_or_create(&set).clone()
        })
        .inc();
    }
}

/// Take `limit`'s tokens for this request; answer 429 if there are none.
pub(super) async fn admit(
    ctx: &mut RequestCtx,
    filter: &Filter,
    limit: Limit,
    buckets: &Buckets,
) -> Result<Flow, PhaseError> {
    // Buckets are namespaced by plugin, like its key-value entries (pushed,
    // not `format!`ted: the formatting machinery costs ~1,500 instructions).
    let plugin = &filter.plugin().name;
    let mut key = String::with_capacity(plugin.len() + 1 + limit.key.len());
    key.push_str(plugin);
    key.push('\0');
    key.push_str(&limit.key);
    let Some(admission) = buckets.take(&key, &limit).await? else {
        return Ok(Flow::Next);
    };
    ctx.rate_limit = Some(admission);
    buckets.count(admission.allowed);
    if admission.allowed {
        return Ok(Flow::Next);
    }
    let reply = Reply {
        status: 429,
        headers: vec![(
            "retry-after".into(),
            admission.retry_after_secs().to_string(),
        )],
        body: b"rate limit exceeded\n".to_vec(),
    };
    let (head, body) = into_response(reply, filter)?;
    ctx.set_response(head, body);
    Ok(Flow::Answered)
}

/// `RateLimit-*` headers for the last decision taken on this request.
pub(crate) fn annotate(ctx: &RequestCtx, headers: &mut HeaderMap) {
    if let Some(admission) = ctx.rate_limit {
        headers.insert("ratelimit-limit", HeaderValue::from(admission.limit));
        headers.insert(
            "ratelimit-remaining",
            HeaderValue::from(admission.remaining),
        );
        headers.insert("ratelimit-reset", HeaderValue::from(admission.reset_secs));
    }
}
