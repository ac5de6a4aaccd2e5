//! Glue between the generated bindings and the SDK's traits, called by
//! [`export!`](crate::export). Not part of the public API.

use std::cell::Cell;

use crate::bindings::imports::sluice::filter::types as raw;
use crate::bindings::{
    auth_world, cache_policy_world, general_world, rate_limit_world, routing_world, transform_world,
};
use crate::{
    Action, Auth, AuthDecision, CacheLookup, CachePolicy, CacheStore, HttpFilter, Plugin,
    RateLimit, Request, Response, Routing, Transform, Verdict,
};

use auth_world::exports::sluice::filter::auth as wit_auth;
use cache_policy_world::exports::sluice::filter::cache_policy as wit_cache;
use general_world::exports::sluice::filter::http_filter as wit_filter;
use rate_limit_world::exports::sluice::filter::rate_limit as wit_rate;
use routing_world::exports::sluice::filter::routing as wit_routing;
use transform_world::exports::sluice::filter::transform as wit_transform;

/// Deserialize the JSON configuration and build the plugin.
pub fn init<P: Plugin>(config: &str) -> Result<P, String> {
    let config: P::Config =
        serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))?;
    P::new(config)
}

pub fn authenticate<P: Auth>(plugin: &P, req: &raw::Request) -> wit_auth::AuthDecision {
    match plugin.authenticate(&Request::from_raw(req)) {
        AuthDecision::Allow(identity) => wit_auth::AuthDecision::Allow(raw::Identity {
            subject: identity.subject,
            claims: identity.claims,
        }),
        AuthDecision::Pass => wit_auth::AuthDecision::Pass,
        AuthDecision::Deny(reply) => wit_auth::AuthDecision::Deny(reply.into_raw()),
    }
}

pub fn check<P: RateLimit>(plugin: &P, req: &raw::Request) -> Option<wit_rate::Limit> {
    plugin
        .check(&Request::from_raw(req))
        .map(|limit| wit_rate::Limit {
            key: limit.key,
            cost: limit.cost,
            capacity: limit.capacity,
            window_millis: limit.window.as_millis() as u64,
        })
}

pub fn transform_request<P: Transform>(
    plugin: &P,
    req: &raw::Request,
) -> wit_transform::RequestAction {
    match plugin.on_request(&Request::from_raw(req)) {
        Action::Forward => wit_transform::RequestAction::Forward,
        Action::Rewrite(path) => wit_transform::RequestAction::Rewrite(path),
        Action::Respond(reply) => wit_transform::RequestAction::Respond(reply.into_raw()),
    }
}

pub fn transform_response<P: Transform>(
    plugin: &P,
    req: &raw::Request,
    resp: &raw::Response,
) -> raw::ResponsePhase {
    observe_response_phase(|| {
        plugin.on_response(&Request::from_raw(req), &Response::from_raw(resp))
    })
}

pub fn select<P: Routing>(plugin: &P, req: &raw::Request) -> Option<wit_routing::RouteDecision> {
    plugin
        .select(&Request::from_raw(req))
        .map(|to| wit_routing::RouteDecision {
            upstream: to.upstream,
            rewrite: to.rewrite,
        })
}

pub fn cache_lookup<P: CachePolicy>(plugin: &P, req: &raw::Request) -> wit_cache::Lookup {
    match plugin.lookup(&Request::from_raw(req)) {
        CacheLookup::Bypass => wit_cache::Lookup::Bypass,
        CacheLookup::Key(key) => wit_cache::Lookup::Key(key),
    }
}

pub fn cache_store<P: CachePolicy>(
    plugin: &P,
    req: &raw::Request,
    resp: &raw::Response,
) -> wit_cache::Store {
    match plugin.store(&Request::from_raw(req), &Response::from_raw(resp)) {
        CacheStore::FollowUpstream => wit_cache::Store::FollowUpstream,
        CacheStore::Skip => wit_cache::Store::Skip,
        CacheStore::Ttl(ttl) => {
            wit_cache::Store::Ttl(ttl.as_secs().min(u64::from(u32::MAX)) as u32)
        }
    }
}

pub fn filter_request<P: HttpFilter>(plugin: &P, req: &raw::Request) -> wit_filter::Verdict {
    match plugin.on_request(&Request::from_raw(req)) {
        Verdict::Forward => wit_filter::Verdict::Forward,
        Verdict::Respond(reply) => wit_filter::Verdict::Respond(reply.into_raw()),
    }
}

pub fn filter_response<P: HttpFilter>(
    plugin: &P,
    req: &raw::Request,
    resp: &raw::Response,
) -> raw::ResponsePhase {
    observe_response_phase(|| {
        plugin.on_response(&Request::from_raw(req), &Response::from_raw(resp))
    })
}

thread_local! {
    /// Set by the default `on_response`: the plugin left it out.
    static RESPONSE_PHASE_UNUSED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the traits' default `on_response`.
pub fn response_phase_unused() {
    RESPONSE_PHASE_UNUSED.set(true);
}

/// Run an `on_response` and tell the host whether it was the default one.
fn observe_response_phase(call: impl FnOnce()) -> raw::ResponsePhase {
    RESPONSE_PHASE_UNUSED.set(false);
    call();
    match RESPONSE_PHASE_UNUSED.replace(false) {
        true => raw::ResponsePhase::Unused,
        false => raw::ResponsePhase::Used,
    }
}
