//! A route's filters, as one phase: ordered by kind (auth → rate limit →
//! transform → general filter → routing → cache policy) and, within a kind,
//! in configuration order. A filter that answers ends the way in; the
//! response then runs back through the filters that saw the request, the
//! last first. A fail-open filter that fails is skipped.

use std::sync::Arc;

use http::StatusCode;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use sluice_filter::{Answer, Filter, FilterFailure, Kind};
use sluice_state::{Scope, Stores};

use super::reply::into_response;
use super::{Decision, Flow, Phase, PhaseError, RequestCtx, rate_limit};
use crate::edge::path::{self, EscapedSlashes, PathRules};
use crate::edge::request_id;
use crate::metrics::ProxyMetrics;
use crate::trace::Trace;

/// The filters of one route.
pub struct FilterChain {
    filters: Vec<Arc<Filter>>,
    /// Per filter, in chain order: where its rate-limit buckets are kept,
    /// and its decisions' counters.
    limits: Vec<rate_limit::Buckets>,
}

impl FilterChain {
    /// A chain of `filters`, given in configuration order, each with where
    /// the route keeps its buckets if it says; put in phase order here.
    pub fn new(
        filters: Vec<(Filter, Option<Scope>)>,
        stores: &Stores,
        metrics: &ProxyMetrics,
    ) -> FilterChain {
        let mut filters: Vec<(Arc<Filter>, Option<Scope>)> =
            filters.into_iter().map(|(f, s)| (Arc::new(f), s)).collect();
        in_phase_order(&mut filters, |(f, _)| f.kind());
        let limits = filters
            .iter()
            .map(|(f, scope)| rate_limit::Buckets::new(metrics, f, *scope, stores))
            .collect();
        FilterChain {
            filters: filters.into_iter().map(|(f, _)| f).collect(),
            limits,
        }
    }

    /// How many filters it has.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether any filter reads or replaces bodies, so the proxy must buffer them.
    pub fn needs_bodies(&self) -> bool {
        self.filters.iter().any(|f| f.body_access())
    }

    /// Whether any filter that saw this request will be called on its response.
    pub fn has_response_phase(&self, ctx: &RequestCtx) -> bool {
        self.filters[..ctx.ran].iter().any(|f| edits_responses(f))
    }

    /// The cache-policy filter whose response call decides what the cache
    /// stores (the last, if several), and its place in the chain.
    pub(super) fn cache_policy(&self) -> Option<(usize, Arc<Filter>)> {
        self.filters
            .iter()
            .enumerate()
            .rev()
            .find(|(_, f)| f.kind() == Kind::CachePolicy)
            .map(|(i, f)| (i, f.clone()))
    }
}

/// Put `items` in phase order by their kind; within a kind, configuration
/// order holds (the sort is stable).
fn in_phase_order<T>(items: &mut [T], kind: impl Fn(&T) -> Kind) {
    items.sort_by_key(kind);
}

/// Whether `filter`'s response call is the chain's to make (a cache
/// policy's belongs to the cache phase).
fn edits_responses(filter: &Filter) -> bool {
    filter.kind() != Kind::CachePolicy && filter.has_response_phase()
}

impl Phase for FilterChain {
    async fn request(&self, ctx: &mut RequestCtx) -> Result<Flow, PhaseError> {
        for (i, filter) in self.filters.iter().enumerate() {
            ctx.ran = i;
            let span = filter_span(ctx, filter, "request");
            let answered = match filter.on_request(&mut ctx.exchange).await {
                Ok((answer, lease)) => {
                    ctx.slots[i].lease = lease;
                    let decision = decision(&answer);
                    let flow = self.apply(ctx, i, answer).await;
                    ctx.slots[i].decision = match (&flow, decision) {
                        (Ok(Flow::Answered), Decision::Admitted) => Decision::Limited,
                        _ => decision,
                    };
                    flow
                }
                Err(failure) => Err(failure.into()),
            };
            if let Some(span) = span {
                let decision = match &answered {
                    Ok(_) => ctx.slots[i].decision,
                    Err(PhaseError::Filter(failure)) => Decision::Failed(failure.kind),
                    Err(_) => Decision::Failed("store"),
                };
                span_ends(span, decision);
            }
            match answered {
                Ok(Flow::Next) => {}
                // The answering filter's own response phase does not run,
                // but a proxy-wasm filter's does, as in Envoy.
                Ok(Flow::Answered) => {
                    if filter.sees_own_reply() {
                        ctx.ran = i + 1;
                    }
                    return Ok(Flow::Answered);
                }
                Err(PhaseError::Filter(failure)) if filter.plugin().fail_open => {
                    ctx.slots[i].decision = Decision::FailedOpen(failure.kind);
                    failing_open(&failure, ctx);
                }
                Err(error) => {
                    ctx.slots[i].decision = Decision::Failed(match &error {
                        PhaseError::Filter(failure) => failure.kind,
                        _ => "store",
                    });
                    return Err(error);
                }
            }
        }
        ctx.ran = self.filters.len();
        Ok(Flow::Next)
    }

    async fn response(&self, ctx: &mut RequestCtx) -> Result<(), PhaseError> {
        for i in (0..ctx.ran).rev() {
            let filter = &self.filters[i];
            let lease = ctx.slots[i].lease.take();
            if !edits_responses(filter) {
                continue;
            }
            let span = filter_span(ctx, filter, "response");
            let called = filter.on_response(&mut ctx.exchange, lease).await;
            if let Some(span) = span {
                let failed = called.as_ref().err().map(|f| Decision::Failed(f.kind));
                span_ends(span, failed.unwrap_or(Decision::Next));
            }
            match called {
                Ok(_) => {}
                Err(failure) if filter.plugin().fail_open => {
                    ctx.slots[i].decision = Decision::FailedOpen(failure.kind);
                    failing_open(&failure, ctx);
                }
                Err(failure) => {
                    ctx.slots[i].decision = Decision::Failed(failure.kind);
                    return Err(failure.into());
                }
            }
        }
        Ok(())
    }
}

impl FilterChain {
    /// Its filters' plugin names, in chain order.
    pub fn plugin_names(&self) -> impl Iterator<Item = &str> {
        self.filters.iter().map(|f| &*f.plugin().name)
    }

    /// Each filter's name and what it decided on this request, in chain order.
    pub fn decisions(&self, ctx: &RequestCtx) -> Vec<(Arc<str>, Decision)> {
        let named = self.filters.iter().map(|f| f.plugin().name.clone());
        named.zip(ctx.slots.iter().map(|s| s.decision)).collect()
    }

    /// Act on what `filter` answered.
    async fn apply(
        &self,
        ctx: &mut RequestCtx,
        i: usize,
        answer: Answer,
    ) -> Result<Flow, PhaseError> {
        let filter = &self.filters[i];
        match answer {
            Answer::Next => {}
            Answer::Allow(identity) => ctx.exchange.identity = Some(identity),
            Answer::Reply(reply) => {
                let (head, body) = into_response(reply, filter)?;
                ctx.set_response(head, body);
                return Ok(Flow::Answered);
            }
            Answer::Limit(limit) => {
                return rate_limit::admit(ctx, filter, limit, &self.limits[i]).await;
            }
            Answer::Rewrite(target) => rewrite(ctx, &target, filter)?,
            Answer::Route {
                upstream,
                rewrite: target,
            } => {
                ctx.upstream = Some(upstream);
                if let Some(target) = target {
                    rewrite(ctx, &target, filter)?;
                }
            }
            Answer::CacheKey(key) => ctx.cache_key = key,
        }
        Ok(Flow::Next)
    }
}

/// A span for `filter`'s call in `phase`, when the request is traced.
fn filter_span(ctx: &RequestCtx, filter: &Filter, phase: &'static str) -> Option<Trace> {
    ctx.trace.as_ref().map(|trace| {
        let plugin = filter.plugin().name.to_string();
        let attributes = vec![
            KeyValue::new("sluice.plugin", plugin.clone()),
            KeyValue::new("sluice.phase", phase),
        ];
        trace.child(format!("filter {plugin}"), SpanKind::Internal, attributes)
    })
}

/// End a filter call's span with what the filter decided.
fn span_ends(span: Trace, decision: Decision) {
    span.set("sluice.decision", decision.name());
    if let Decision::Failed(reason) | Decision::FailedOpen(reason) = decision {
        span.fail(reason);
    }
    span.end();
}

/// What `answer` decides (a rate limit's, before the bucket is asked).
fn decision(answer: &Answer) -> Decision {
    match answer {
        Answer::Next => Decision::Next,
        Answer::Allow(_) => Decision::Allow,
        Answer::Reply(reply) => StatusCode::from_u16(reply.status)
            .map_or(Decision::Failed("invalid_answer"), Decision::Reply),
        Answer::Limit(_) => Decision::Admitted,
        Answer::Rewrite(_) => Decision::Rewrite,
        Answer::Route { .. } => Decision::Route,
        Answer::CacheKey(_) => Decision::CacheKey,
    }
}

/// A fail-open filter failed and is skipped; logged at a bounded rate.
pub(super) fn failing_open(failure: &FilterFailure, ctx: &RequestCtx) {
    let headers = &ctx.exchange.request.headers;
    let id = headers
        .get(&request_id::HEADER)
        .and_then(|v| v.to_str().ok());
    sluice_filter::log_throttled!(
        warn,
        ("failing open", &*failure.plugin, failure.kind),
        plugin = &*failure.plugin,
        reason = failure.kind,
        request_id = id.unwrap_or("-"),
        "failing open: {}",
        failure.reason
    );
}

/// Apply a filter's new path (and query, after `?`) to the request,
/// normalised as the client's was (escaped slashes the filter wrote are its own).
fn rewrite(ctx: &mut RequestCtx, target: &str, filter: &Filter) -> Result<(), FilterFailure> {
    let invalid = || {
        let why = format!("rewrote the path to an invalid one: `{target}`");
        filter.plugin().failed("invalid_answer", why)
    };
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let rules = PathRules {
        escaped_slashes: EscapedSlashes::Keep,
        ..PathRules::default()
    };
    let target = match path::normalize(path, rules).map_err(|_| invalid())? {
        None => target.to_owned(),
        Some(normal) => match query {
            Some(query) => format!("{normal}?{query}"),
            None => normal,
        },
    };
    let path = http::uri::PathAndQuery::try_from(target.as_str()).map_err(|_| invalid())?;
    let request = &mut ctx.exchange.request;
    let mut parts = std::mem::take(&mut request.uri).into_parts();
    parts.path_and_query = Some(path);
    request.uri = http::Uri::from_parts(parts).map_err(|_| invalid())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_run_in_phase_order_and_keep_configuration_order_within_a_phase() {
        let mut chain = [
            (Kind::Transform, "t1"),
            (Kind::CachePolicy, "c"),
            (Kind::Auth, "a1"),
            (Kind::Routing, "r"),
            (Kind::Transform, "t2"),
            (Kind::HttpFilter, "h"),
            (Kind::RateLimit, "l"),
            (Kind::Auth, "a2"),
        ];
        in_phase_order(&mut chain, |(kind, _)| *kind);
        let names: Vec<&str> = chain.iter().map(|(_, name)| *name).collect();
        assert_eq!(names, ["a1", "a2", "l", "t1", "t2", "h", "r", "c"]);
    }
}
