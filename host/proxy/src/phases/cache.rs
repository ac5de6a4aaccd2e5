//! The response cache as a phase. On the way in, a `GET` with a key (from
//! a cache-policy filter) is answered from the cache when it can be, and of
//! concurrent misses only one goes upstream. On the way out, the
//! cache-policy filter says whether and how long to keep the upstream's
//! response, which is stored before the other filters see it. A route
//! with `shared_cache` looks in the fleet's tier on a local miss, and
//! stores there too.

use std::sync::Arc;

use http::{HeaderValue, Method};
use prometheus_client::metrics::counter::Counter;
use sluice_filter::metrics::labels;
use sluice_filter::{Filter, ResponseAnswer, StoreDecision};
use sluice_state::RedisStore;

use super::filters::failing_open;
use super::{FilterChain, Flow, Phase, PhaseError, RequestCtx};
use crate::body;
use crate::cache::shared::SharedCache;
use crate::cache::{self, Lookup, ResponseCache};
use crate::metrics::ProxyMetrics;

/// A route's use of the response cache.
pub struct CachePhase {
    cache: Arc<ResponseCache>,
    /// The fleet's tier, for a route with `shared_cache`.
    shared: Option<SharedCache>,
    /// The cache-policy filter that decides what to store, and its place in the chain.
    policy: Option<(usize, Arc<Filter>)>,
    /// Whether responses for one client alone (cookies, `private`,
    /// `no-store`) may be stored when the policy gives them a TTL.
    store_private: bool,
    /// Lookups that found a fresh response, and those that did not.
    hits: Counter,
    shared_hits: Counter,
    misses: Counter,
}

impl CachePhase {
    /// The cache phase of a route with `chain`.
    pub fn new(
        cache: Arc<ResponseCache>,
        shared: Option<Arc<RedisStore>>,
        chain: &FilterChain,
        store_private: bool,
        metrics: &ProxyMetrics,
    ) -> CachePhase {
        let lookups = |result| {
            let set = labels([("result", result)]);
            metrics.cache_lookups.get_or_create(&set).clone()
        };
        CachePhase {
            cache,
            shared: shared.map(SharedCache::new),
            policy: chain.cache_policy(),
            store_private,
            hits: lookups("hit"),
            shared_hits: lookups("shared_hit"),
            misses: lookups("miss"),
        }
    }

    /// Whether this request goes through the cache (and so whether the
    /// response half has anything to do).
    pub fn applies(&self, ctx: &RequestCtx) -> bool {
        ctx.cache_key.is_some()
    }

    /// What the cache-policy filter says about the response in `ctx`.
    async fn decide(&self, ctx: &mut RequestCtx) -> Result<StoreDecision, PhaseError> {
        let Some((i, filter)) = &self.policy else {
            return Ok(StoreDecision::FollowUpstream);
        };
        let lease = ctx.slots[*i].lease.take();
        match filter.on_response(&mut ctx.exchange, lease).await {
            Ok(ResponseAnswer::Store(decision)) => Ok(decision),
            Ok(_) => Ok(StoreDecision::FollowUpstream),
            Err(failure) if filter.plugin().fail_open => {
                failing_open(&failure, ctx);
                Ok(StoreDecision::Skip)
            }
            Err(failure) => Err(failure.into()),
        }
    }
}

impl Phase for CachePhase {
    async fn request(&self, ctx: &mut RequestCtx) -> Result<Flow, PhaseError> {
        // Only GET is served from the cache: other methods change things or have no body.
        if ctx.exchange.request.method != Method::GET {
            ctx.cache_key = None;
        }
        let Some(key) = &ctx.cache_key else {
            return Ok(Flow::Next);
        };
        let request = &ctx.exchange.request.headers;
        let found = match self.cache.lookup(key, request).await {
            Lookup::Hit(hit) => Some(hit),
            Lookup::Miss(guard) => {
                // Held until the response is stored, so concurrent misses wait for this fetch.
                ctx.filling = guard;
                let shared = match &self.shared {
                    Some(shared) => shared.lookup(&self.cache, key, request).await,
                    None => None,
                };
                if shared.is_some() {
                    self.shared_hits.inc();
                    // Those waiting find it locally now.
                    ctx.filling = None;
                }
                shared
            }
        };
        match found {
            Some(hit) => {
                self.hits.inc();
                let (mut head, ()) = http::Response::new(()).into_parts();
                head.status = hit.status;
                head.headers = hit.headers.clone();
                head.headers
                    .insert("x-cache", HeaderValue::from_static("HIT"));
                head.headers
                    .insert(http::header::AGE, HeaderValue::from(hit.age()));
                ctx.set_response(head, hit.body.clone());
                // Nothing to store on the way out.
                ctx.cache_key = None;
                Ok(Flow::Answered)
            }
            None => {
                self.misses.inc();
                Ok(Flow::Next)
            }
        }
    }

    async fn response(&self, ctx: &mut RequestCtx) -> Result<(), PhaseError> {
        let Some(key) = ctx.cache_key.take() else {
            return Ok(());
        };
        let decision = self.decide(ctx).await?;
        let head = ctx
            .exchange
            .response
            .as_mut()
            .expect("the response phases run with a response");
        let ttl = match decision {
            StoreDecision::FollowUpstream => cache::upstream_ttl(head.status, &head.headers),
            StoreDecision::Skip => None,
            StoreDecision::Ttl(_) if !self.store_private && cache::private(&head.headers) => None,
            StoreDecision::Ttl(ttl) => Some(ttl),
        };
        // Only a body whose length is known to fit is buffered; others stream past.
        let length = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let fits = length.is_some_and(|l| l <= self.cache.max_entry());
        // The stream is taken only to be stored: one left in place goes on to the client.
        if let Some(ttl) = ttl.filter(|_| fits)
            && let Some(stream) = ctx.stream.take()
        {
            let bytes = body::collect(stream, self.cache.max_entry())
                .await
                .map_err(|e| PhaseError::UpstreamBody(e.to_string()))?;
            let head = ctx.exchange.response.as_ref().expect("checked above");
            let stored = self.cache.store(
                key.clone(),
                &ctx.exchange.request.headers,
                head.status,
                head.headers.clone(),
                bytes.clone(),
                ttl,
            );
            if let (Some(shared), Some(entry)) = (&self.shared, stored) {
                shared.store(&key, &entry, ttl).await;
            }
            ctx.exchange.response_body = Some(bytes);
        }
        if let Some(head) = ctx.exchange.response.as_mut() {
            head.headers
                .insert("x-cache", HeaderValue::from_static("MISS"));
        }
        // Stored or not: those waiting for this fetch may go on.
        ctx.filling = None;
        Ok(())
    }
}
