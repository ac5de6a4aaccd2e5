//! What filters answer, in the host's own terms: every kind of policy, in
//! either version of the contract, comes down to one of these, and the
//! proxy acts on them without knowing which kind spoke.

use std::time::Duration;

use crate::bindings::{v1, v2};
use crate::exchange::Identity;

/// What a filter said about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Carry on, with whatever edits it made through the handles.
    Next,
    /// Carry on as this identity (auth).
    Allow(Identity),
    /// Answer the client with this instead of going upstream.
    Reply(Reply),
    /// Take tokens from this bucket before going on (rate limit).
    Limit(Limit),
    /// Carry on with this path (and `?query`).
    Rewrite(String),
    /// Go to this named upstream, maybe with a new path (routing).
    Route {
        /// A named upstream from the configuration.
        upstream: String,
        /// A new path (and `?query`), if any.
        rewrite: Option<String>,
    },
    /// Look up and store the response under this key, or bypass the cache (cache policy).
    CacheKey(Option<String>),
}

/// A response a filter answers with, as it gave it (the proxy checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A token bucket: `capacity` tokens, refilled completely over `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Requests with the same key share a bucket.
    pub key: String,
    /// Tokens this request takes.
    pub cost: u32,
    /// The bucket's size.
    pub capacity: u32,
    /// Time to refill a whole bucket.
    pub window: Duration,
}

/// What a filter said about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAnswer {
    /// It may have edited the response through the handles.
    Done,
    /// It does nothing with responses and need not be called on them again.
    Unused,
    /// Whether and how long to keep the response (cache policy).
    Store(StoreDecision),
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

/// The same conversions for both versions of the contract, whose exports
/// have the same shapes.
macro_rules! answers_from {
    ($v:ident) => {
        impl From<$v::types::Reply> for Reply {
            fn from(reply: $v::types::Reply) -> Reply {
                Reply {
                    status: reply.status,
                    headers: reply.headers,
                    body: reply.body,
                }
            }
        }

        impl From<$v::policies::auth::AuthDecision> for Answer {
            fn from(decision: $v::policies::auth::AuthDecision) -> Answer {
                use $v::policies::auth::AuthDecision;
                match decision {
                    AuthDecision::Allow($v::types::Identity { subject, claims }) => {
                        Answer::Allow(Identity { subject, claims })
                    }
                    AuthDecision::Pass => Answer::Next,
                    AuthDecision::Deny(reply) => Answer::Reply(reply.into()),
                }
            }
        }

        impl From<Option<$v::policies::rate_limit::Limit>> for Answer {
            fn from(limit: Option<$v::policies::rate_limit::Limit>) -> Answer {
                match limit {
                    None => Answer::Next,
                    Some(limit) => Answer::Limit(Limit {
                        key: limit.key,
                        cost: limit.cost,
                        capacity: limit.capacity,
                        window: Duration::from_millis(limit.window_millis),
                    }),
                }
            }
        }

        impl From<$v::policies::transform::RequestAction> for Answer {
            fn from(action: $v::policies::transform::RequestAction) -> Answer {
                use $v::policies::transform::RequestAction;
                match action {
                    RequestAction::Forward => Answer::Next,
                    RequestAction::Rewrite(path) => Answer::Rewrite(path),
                    RequestAction::Respond(reply) => Answer::Reply(reply.into()),
                }
            }
        }

        impl From<$v::policies::http_filter::Verdict> for Answer {
            fn from(verdict: $v::policies::http_filter::Verdict) -> Answer {
                use $v::policies::http_filter::Verdict;
                match verdict {
                    Verdict::Forward => Answer::Next,
                    Verdict::Respond(reply) => Answer::Reply(reply.into()),
                }
            }
        }

        impl From<Option<$v::policies::routing::RouteDecision>> for Answer {
            fn from(decision: Option<$v::policies::routing::RouteDecision>) -> Answer {
                match decision {
                    None => Answer::Next,
                    Some(to) => Answer::Route {
                        upstream: to.upstream,
                        rewrite: to.rewrite,
                    },
                }
            }
        }

        impl From<$v::policies::cache_policy::Lookup> for Answer {
            fn from(lookup: $v::policies::cache_policy::Lookup) -> Answer {
                use $v::policies::cache_policy::Lookup;
                Answer::CacheKey(match lookup {
                    Lookup::Key(key) => Some(key),
                    Lookup::Bypass => None,
                })
            }
        }

        impl From<$v::types::ResponsePhase> for ResponseAnswer {
            fn from(phase: $v::types::ResponsePhase) -> ResponseAnswer {
                match phase {
                    $v::types::ResponsePhase::Used => ResponseAnswer::Done,
                    $v::types::ResponsePhase::Unused => ResponseAnswer::Unused,
                }
            }
        }

        impl From<$v::policies::cache_policy::Store> for ResponseAnswer {
            fn from(store: $v::policies::cache_policy::Store) -> ResponseAnswer {
                use $v::policies::cache_policy::Store;
                ResponseAnswer::Store(match store {
                    Store::FollowUpstream => StoreDecision::FollowUpstream,
                    Store::Skip => StoreDecision::Skip,
                    Store::Ttl(secs) => StoreDecision::Ttl(Duration::from_secs(secs.into())),
                })
            }
        }
    };
}

answers_from!(v2);
answers_from!(v1);
