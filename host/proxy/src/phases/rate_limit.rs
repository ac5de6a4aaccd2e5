//! Rate limiting, the host's half: a rate-limit filter names a token bucket
//! and its size; the host takes the tokens (exactly, under concurrency, in
//! the shared store), answers 429 with `Retry-After` when there are none,
//! and reports the last decision in `RateLimit-*` response headers.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_filter::metrics::{Labels, labels};
use sluice_filter::store::StateStore;
use sluice_filter::{Filter, Limit, Reply};

use crate::metrics::ProxyMetrics;

use super::reply::into_response;
use super::{Flow, PhaseError, RequestCtx};

/// One filter's rate-limit decisions, counted by plugin; made for every
/// filter of a chain, and created in the registry only when first counted.
pub(super) struct Decisions {
    plugin: Arc<str>,
    allowed: OnceLock<Counter>,
    limited: OnceLock<Counter>,
    family: Family<Labels, Counter>,
}

impl Decisions {
    pub(super) fn new(metrics: &ProxyMetrics, plugin: &Arc<str>) -> Decisions {
        Decisions {
            plugin: plugin.clone(),
            allowed: Default::default(),
            limited: Default::default(),
            family: metrics.rate_limit.clone(),
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
    store: &dyn StateStore,
    decisions: &Decisions,
) -> Result<Flow, PhaseError> {
    // Buckets are namespaced by plugin, like its key-value entries.
    let key = format!("{}\0{}", filter.plugin().name, limit.key);
    let admission = store
        .take(&key, limit.cost, limit.capacity, limit.window)
        .await
        .map_err(|e| PhaseError::Store(e.to_string()))?;
    ctx.rate_limit = Some(admission);
    decisions.count(admission.allowed);
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
