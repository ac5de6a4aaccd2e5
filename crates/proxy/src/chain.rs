//! A route's filter chain: its filters ordered by phase (auth → rate-limit →
//! transform → http-filter → routing) and, within a phase, by configuration
//! order. A filter that answers ends the request phases; the response then
//! runs back through the filters that saw the request, in reverse.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use sluice_filter::exchange::{Exchange, Identity};
use sluice_filter::state::StateStore;
use sluice_filter::{
    FilterFailure, InstancePool, Kind, auth, cache_policy, http_filter, rate_limit, transform,
    types,
};

use crate::edge::path::{self, EscapedSlashes, PathRules};

/// A short-circuit answer from a filter.
#[derive(Debug)]
pub struct Reply {
    /// The response head.
    pub head: http::response::Parts,
    /// The whole body.
    pub body: Bytes,
}

/// How the request phases ended.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Send the request upstream; a routing filter may have named the upstream.
    Forward {
        /// The upstream a routing filter chose, if any.
        upstream: Option<String>,
        /// The cache key a cache-policy filter chose, if any.
        cache_key: Option<String>,
    },
    /// A filter answered; the response goes back through the earlier filters.
    Reply(Reply),
    /// A fail-closed filter failed.
    Failed(FilterFailure),
}

/// What a cache-policy filter says about storing a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDecision {
    /// Follow the upstream's `Cache-Control`.
    FollowUpstream,
    /// Don't store it.
    Skip,
    /// Store it this long.
    Ttl(Duration),
}

/// The ordered filters of one route.
pub struct FilterChain {
    filters: Vec<InstancePool>,
}

impl FilterChain {
    /// A chain from filters in configuration order; they are put in phase order here.
    pub fn new(mut filters: Vec<InstancePool>) -> FilterChain {
        // Stable: within a phase, configuration order holds.
        filters.sort_by_key(|f| f.plugin.kind);
        FilterChain { filters }
    }

    /// Whether any filter reads or replaces bodies, so the proxy must buffer them.
    pub fn needs_bodies(&self) -> bool {
        self.filters.iter().any(|f| f.body_access)
    }

    /// Whether any of the first `ran` filters has a response phase.
    pub fn has_response_phase(&self, ran: usize) -> bool {
        self.filters[..ran].iter().any(|f| f.has_response_phase())
    }

    /// Run the request phases. Returns the exchange, how many filters saw the
    /// request (their response phases run later), and the outcome.
    pub async fn on_request(
        &self,
        mut ex: Box<Exchange>,
        store: &dyn StateStore,
    ) -> (Box<Exchange>, usize, RequestOutcome) {
        let mut upstream = None;
        let mut cache_key = None;
        for (index, filter) in self.filters.iter().enumerate() {
            let step = match filter.plugin.kind {
                Kind::Auth => {
                    let (back, result) = filter.authenticate(ex).await;
                    ex = back;
                    result.map(|decision| match decision {
                        auth::AuthDecision::Allow(types::Identity { subject, claims }) => {
                            ex.identity = Some(Identity { subject, claims });
                            Step::Next
                        }
                        auth::AuthDecision::Pass => Step::Next,
                        auth::AuthDecision::Deny(reply) => Step::Answer(reply),
                    })
                }
                Kind::RateLimit => {
                    let (back, result) = filter.rate_limit(ex).await;
                    ex = back;
                    match result {
                        Ok(None) => Ok(Step::Next),
                        Ok(Some(limit)) => admit(&mut ex, filter, store, limit).await,
                        Err(e) => Err(e),
                    }
                }
                Kind::Transform => {
                    let (back, result) = filter.transform_request(ex).await;
                    ex = back;
                    match result {
                        Ok(transform::RequestAction::Forward) => Ok(Step::Next),
                        Ok(transform::RequestAction::Rewrite(target)) => {
                            rewrite(&mut ex, &target, filter)
                        }
                        Ok(transform::RequestAction::Respond(reply)) => Ok(Step::Answer(reply)),
                        Err(e) => Err(e),
                    }
                }
                Kind::HttpFilter => {
                    let (back, result) = filter.http_request(ex).await;
                    ex = back;
                    result.map(|verdict| match verdict {
                        http_filter::Verdict::Forward => Step::Next,
                        http_filter::Verdict::Respond(reply) => Step::Answer(reply),
                    })
                }
                Kind::Routing => {
                    let (back, result) = filter.select_route(ex).await;
                    ex = back;
                    match result {
                        Ok(None) => Ok(Step::Next),
                        Ok(Some(decision)) => {
                            upstream = Some(decision.upstream);
                            match decision.rewrite {
                                Some(target) => rewrite(&mut ex, &target, filter),
                                None => Ok(Step::Next),
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                Kind::CachePolicy => {
                    let (back, result) = filter.cache_lookup(ex).await;
                    ex = back;
                    result.map(|lookup| {
                        cache_key = match lookup {
                            cache_policy::Lookup::Key(key) => Some(key),
                            cache_policy::Lookup::Bypass => None,
                        };
                        Step::Next
                    })
                }
            };
            match step {
                Ok(Step::Next) => {}
                Ok(Step::Answer(reply)) => {
                    return match into_reply(reply, filter) {
                        Ok(reply) => (ex, index, RequestOutcome::Reply(reply)),
                        Err(failure) => (ex, index, RequestOutcome::Failed(failure)),
                    };
                }
                Err(failure) if filter.plugin.fail_open => {
                    failing_open(&failure);
                }
                Err(failure) => return (ex, index, RequestOutcome::Failed(failure)),
            }
        }
        let outcome = RequestOutcome::Forward {
            upstream,
            cache_key,
        };
        (ex, self.filters.len(), outcome)
    }

    /// Ask the route's cache-policy filter (the last, if several) whether and
    /// how long to store the response now in the exchange.
    pub async fn cache_decision(
        &self,
        ex: Box<Exchange>,
    ) -> (Box<Exchange>, Result<StoreDecision, FilterFailure>) {
        let Some(filter) = self
            .filters
            .iter()
            .rev()
            .find(|f| f.plugin.kind == Kind::CachePolicy)
        else {
            return (ex, Ok(StoreDecision::FollowUpstream));
        };
        let (ex, result) = filter.cache_store(ex).await;
        let decision = result.map(|store| match store {
            cache_policy::Store::FollowUpstream => StoreDecision::FollowUpstream,
            cache_policy::Store::Skip => StoreDecision::Skip,
            cache_policy::Store::Ttl(secs) => StoreDecision::Ttl(Duration::from_secs(secs.into())),
        });
        match decision {
            Err(failure) if filter.plugin.fail_open => {
                failing_open(&failure);
                (ex, Ok(StoreDecision::Skip))
            }
            other => (ex, other),
        }
    }

    /// Run the response phases of the first `ran` filters, last first. The
    /// response head (and body, if buffered) are in the exchange.
    pub async fn on_response(
        &self,
        mut ex: Box<Exchange>,
        ran: usize,
    ) -> (Box<Exchange>, Result<(), FilterFailure>) {
        for filter in self.filters[..ran].iter().rev() {
            if !filter.has_response_phase() {
                continue;
            }
            let (back, result) = match filter.plugin.kind {
                Kind::Transform => filter.transform_response(ex).await,
                Kind::HttpFilter => filter.http_response(ex).await,
                _ => continue,
            };
            ex = back;
            match result {
                Ok(()) => {}
                Err(failure) if filter.plugin.fail_open => {
                    failing_open(&failure);
                }
                Err(failure) => return (ex, Err(failure)),
            }
        }
        (ex, Ok(()))
    }
}

/// A fail-open filter failed and is skipped; logged at a bounded rate.
fn failing_open(failure: &FilterFailure) {
    sluice_filter::log_throttled!(
        warn,
        ("failing open", &*failure.plugin),
        plugin = &*failure.plugin,
        "failing open: {}",
        failure.reason
    );
}

enum Step {
    Next,
    Answer(types::Reply),
}

/// Take a rate-limit filter's tokens from the store; 429 when there are none.
async fn admit(
    ex: &mut Exchange,
    filter: &InstancePool,
    store: &dyn StateStore,
    limit: rate_limit::Limit,
) -> Result<Step, FilterFailure> {
    let key = format!("{}\0{}", filter.plugin.name, limit.key);
    let window = Duration::from_millis(limit.window_millis);
    let admission = store
        .take(&key, limit.cost, limit.capacity, window)
        .await
        .map_err(|e| FilterFailure::new(filter.plugin.name.clone(), e.to_string()))?;
    ex.rate_limit = Some(admission);
    if admission.allowed {
        return Ok(Step::Next);
    }
    Ok(Step::Answer(types::Reply {
        status: 429,
        headers: vec![(
            "retry-after".into(),
            admission.retry_after_secs().to_string(),
        )],
        body: b"rate limit exceeded\n".to_vec(),
    }))
}

/// Apply a filter's new path (and query, after `?`) to the request,
/// normalised as the client's was (escaped slashes the filter wrote are its own).
fn rewrite(ex: &mut Exchange, target: &str, filter: &InstancePool) -> Result<Step, FilterFailure> {
    let invalid = || {
        FilterFailure::new(
            filter.plugin.name.clone(),
            format!("rewrote the path to an invalid one: `{target}`"),
        )
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
    let mut parts = std::mem::take(&mut ex.request.uri).into_parts();
    parts.path_and_query = Some(path);
    ex.request.uri = http::Uri::from_parts(parts).map_err(|_| invalid())?;
    Ok(Step::Next)
}

/// Turn a filter's reply record into a response, rejecting invalid parts.
fn into_reply(reply: types::Reply, filter: &InstancePool) -> Result<Reply, FilterFailure> {
    let fail = |reason: String| FilterFailure::new(filter.plugin.name.clone(), reason);
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
    Ok(Reply {
        head,
        body: Bytes::from(reply.body),
    })
}
