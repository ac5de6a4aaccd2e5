//! The phases a request goes through on its route, and the one context
//! they are all lent (as Pingora's `ProxyHttp` lends its session and `CTX`).
//!
//! On the way in, in order: the route's [filters](FilterChain) (auth,
//! rate limits, transforms, general filters, routing, cache policy; each
//! kind in its phase), then the [cache](CachePhase) lookup. Either may
//! answer instead of the upstream. On the way out, in reverse: the cache
//! stores what the upstream sent, then the filters that saw the request
//! see the response.

mod cache;
mod filters;
mod rate_limit;
mod reply;

pub use cache::CachePhase;
pub use filters::FilterChain;
pub(crate) use rate_limit::annotate as rate_limit_headers;

use bytes::Bytes;
use http::StatusCode;
use sluice_filter::{Exchange, FilterFailure, Lease};
use sluice_state::Admission;

use crate::body::ProxyBody;
use crate::cache::FillGuard;
use crate::trace::Trace;

/// What one request carries through its route's phases.
pub struct RequestCtx {
    /// What filters see and edit; lent to each call into a filter.
    pub exchange: Box<Exchange>,
    /// The upstream a routing filter chose, if any.
    pub upstream: Option<String>,
    /// The key a cache-policy filter chose, if any.
    pub cache_key: Option<String>,
    /// The last rate-limit decision, reported in `RateLimit-*` headers.
    pub rate_limit: Option<Admission>,
    /// The response body as it streams from the upstream, when it is not
    /// buffered in the exchange.
    pub stream: Option<ProxyBody>,
    /// Per filter, in chain order: the instance it keeps for its response
    /// call, and what it decided (for the access log).
    slots: Vec<Slot>,
    /// Held while this request fetches what other requests wait on for the cache.
    filling: Option<FillGuard>,
    /// How many filters saw the request (their response phases run later).
    ran: usize,
    /// The request's span, when tracing: filter calls are its children.
    pub trace: Option<Trace>,
}

impl RequestCtx {
    /// A context for `exchange` on a route with `filters` filters.
    pub fn new(exchange: Box<Exchange>, filters: usize) -> RequestCtx {
        RequestCtx {
            exchange,
            upstream: None,
            cache_key: None,
            rate_limit: None,
            stream: None,
            slots: std::iter::repeat_with(Slot::default)
                .take(filters)
                .collect(),
            filling: None,
            ran: 0,
            trace: None,
        }
    }

    /// Put a response head (and a whole body) in place of the upstream's.
    pub fn set_response(&mut self, head: http::response::Parts, body: Bytes) {
        self.exchange.response = Some(head);
        self.exchange.response_body = Some(body);
        self.exchange.response_trailers = None;
        self.stream = None;
    }
}

/// One filter's part in a request.
#[derive(Default)]
struct Slot {
    lease: Option<Lease>,
    decision: Decision,
}

/// What a filter made of a request, as the access log reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Decision {
    /// It was not called (an earlier filter answered or failed).
    #[default]
    Skipped,
    /// It let the request go on unchanged.
    Next,
    /// It authenticated the request.
    Allow,
    /// It answered instead of the upstream, with this status.
    Reply(StatusCode),
    /// Its rate limit had tokens for the request.
    Admitted,
    /// Its rate limit had none: 429.
    Limited,
    /// It rewrote the path.
    Rewrite,
    /// It chose the upstream.
    Route,
    /// It chose the cache key (or bypass).
    CacheKey,
    /// It failed and was skipped (fail-open), for this reason.
    FailedOpen(&'static str),
    /// It failed and so did the request, for this reason.
    Failed(&'static str),
}

impl Decision {
    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Skipped => "skipped",
            Decision::Next => "next",
            Decision::Allow => "allow",
            Decision::Reply(_) => "reply",
            Decision::Admitted => "admitted",
            Decision::Limited => "limited",
            Decision::Rewrite => "rewrite",
            Decision::Route => "route",
            Decision::CacheKey => "cache_key",
            Decision::FailedOpen(_) => "failed_open",
            Decision::Failed(_) => "failed",
        }
    }
}

/// How a request phase ended.
pub enum Flow {
    /// Go on to the next phase (and then the upstream).
    Next,
    /// An answer is in the context's response: skip the rest of the way in
    /// (and the upstream) and run the response phases.
    Answered,
}

/// Why a phase could not finish; the request ends with the error's response.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A fail-closed filter failed, or answered with something invalid.
    #[error("{0}")]
    Filter(#[from] FilterFailure),
    /// The rate-limit store could not answer.
    #[error("rate limiting: {0}")]
    Store(String),
    /// A routing filter named an upstream that does not exist.
    #[error("a routing filter chose unknown upstream `{0}`")]
    UnknownUpstream(String),
    /// The upstream's body could not be read for the cache or the filters.
    #[error("reading the upstream's body: {0}")]
    UpstreamBody(String),
}

impl PhaseError {
    /// The status and `x-sluice-error` code the client gets.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            PhaseError::Filter(f) if f.is_busy() => {
                (StatusCode::SERVICE_UNAVAILABLE, "filter_busy")
            }
            PhaseError::Filter(_) => (StatusCode::INTERNAL_SERVER_ERROR, "filter_failed"),
            PhaseError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable"),
            PhaseError::UnknownUpstream(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "unknown_upstream")
            }
            PhaseError::UpstreamBody(_) => (StatusCode::BAD_GATEWAY, "upstream_body_failed"),
        }
    }
}

/// One phase of a route's handling. Both halves default to doing nothing.
///
/// - [`Phase::request`] runs on the way in, in route order, until one answers
///   (with the answer put in the context's response). It may edit the
///   request, decide things for later phases (the identity, the upstream,
///   the cache key) and keep what its response half needs in the context.
/// - [`Phase::response`] runs on the way out, in reverse route order, for
///   the phases whose request half ran, on the response in the context
///   (from the upstream, the cache, or an answer). It may edit it.
///
/// An error ends the request with the error's response; the phases after
/// it do not run.
pub trait Phase: Sync {
    /// The way in.
    fn request(
        &self,
        ctx: &mut RequestCtx,
    ) -> impl Future<Output = Result<Flow, PhaseError>> + Send {
        let _ = ctx;
        async { Ok(Flow::Next) }
    }

    /// The way out.
    fn response(
        &self,
        ctx: &mut RequestCtx,
    ) -> impl Future<Output = Result<(), PhaseError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}
