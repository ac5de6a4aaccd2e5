//! A route's filters, as one phase: ordered by kind (auth → rate limit →
//! transform → general filter → routing → cache policy) and, within a kind,
//! in configuration order. A filter that answers ends the way in; the
//! response then runs back through the filters that saw the request, the
//! last first. A fail-open filter that fails is skipped.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use sluice_filter::store::StateStore;
use sluice_filter::{Answer, Filter, FilterFailure, Kind, Reply};

use super::{Flow, Phase, PhaseError, RequestCtx, rate_limit};
use crate::edge::path::{self, EscapedSlashes, PathRules};
use crate::edge::request_id;

/// The filters of one route.
pub struct FilterChain {
    filters: Vec<Arc<Filter>>,
    /// Where rate-limit filters' buckets are kept.
    store: Arc<dyn StateStore>,
}

impl FilterChain {
    /// A chain of `filters`, given in configuration order; put in phase order here.
    pub fn new(filters: Vec<Filter>, store: Arc<dyn StateStore>) -> FilterChain {
        let mut filters: Vec<Arc<Filter>> = filters.into_iter().map(Arc::new).collect();
        in_phase_order(&mut filters, |f| f.kind());
        FilterChain { filters, store }
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
            let answered = match filter.on_request(&mut ctx.exchange).await {
                Ok((answer, lease)) => {
                    ctx.leases[i] = lease;
                    self.apply(ctx, filter, answer).await
                }
                Err(failure) => Err(failure.into()),
            };
            match answered {
                Ok(Flow::Next) => {}
                // The answering filter's own response phase does not run.
                Ok(Flow::Answered) => return Ok(Flow::Answered),
                Err(PhaseError::Filter(failure)) if filter.plugin().fail_open => {
                    failing_open(&failure, ctx);
                }
                Err(error) => return Err(error),
            }
        }
        ctx.ran = self.filters.len();
        Ok(Flow::Next)
    }

    async fn response(&self, ctx: &mut RequestCtx) -> Result<(), PhaseError> {
        for i in (0..ctx.ran).rev() {
            let filter = &self.filters[i];
            let lease = ctx.leases[i].take();
            if !edits_responses(filter) {
                continue;
            }
            match filter.on_response(&mut ctx.exchange, lease).await {
                Ok(_) => {}
                Err(failure) if filter.plugin().fail_open => failing_open(&failure, ctx),
                Err(failure) => return Err(failure.into()),
            }
        }
        Ok(())
    }
}

impl FilterChain {
    /// Act on what `filter` answered.
    async fn apply(
        &self,
        ctx: &mut RequestCtx,
        filter: &Filter,
        answer: Answer,
    ) -> Result<Flow, PhaseError> {
        match answer {
            Answer::Next => {}
            Answer::Allow(identity) => ctx.exchange.identity = Some(identity),
            Answer::Reply(reply) => {
                let (head, body) = into_response(reply, filter)?;
                ctx.set_response(head, body);
                return Ok(Flow::Answered);
            }
            Answer::Limit(limit) => {
                return rate_limit::admit(ctx, filter, limit, &*self.store).await;
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

/// Turn a filter's reply into a response, refusing invalid parts.
pub(super) fn into_response(
    reply: Reply,
    filter: &Filter,
) -> Result<(http::response::Parts, Bytes), FilterFailure> {
    let fail = |reason: String| filter.plugin().failed("invalid_answer", reason);
    let status = StatusCode::from_u16(reply.status)
        .map_err(|_| fail(format!("replied with invalid status {}", reply.status)))?;
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = status;
    for (name, value) in reply.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| fail(format!("replied with invalid header `{name}`")))?;
        let value = HeaderValue::try_from(value)
            .map_err(|_| fail(format!("replied with an invalid value for `{name}`")))?;
        head.headers.append(name, value);
    }
    head.headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(reply.body.len()),
    );
    Ok((head, Bytes::from(reply.body)))
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
