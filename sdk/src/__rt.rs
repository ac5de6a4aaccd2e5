//! Glue between the generated bindings and the SDK's traits, used by
//! [`export!`](crate::export). Not part of the public API.
//!
//! [`Export<P>`] implements each kind's generated `Guest` trait for a
//! plugin type `P` of that kind; `export!` hands it to the kind's
//! generated export macro. The plugin itself lives in a slot of this
//! (single-threaded) instance, created by `init`.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use crate::bindings::imports::sluice::filter::types as raw;
use crate::{
    Action, Auth, AuthDecision, CacheLookup, CachePolicy, CacheStore, Connection, ConnectionInfo,
    ConnectionVerdict, HttpFilter, Plugin, RateLimit, Request, Response, Routing, Transform,
    Verdict,
};

use crate::bindings::auth::exports::sluice::filter::auth as wit_auth;
use crate::bindings::cache_policy::exports::sluice::filter::cache_policy as wit_cache;
use crate::bindings::connection::exports::sluice::filter::connection as wit_connection;
use crate::bindings::http_filter::exports::sluice::filter::http_filter as wit_filter;
use crate::bindings::rate_limit::exports::sluice::filter::rate_limit as wit_rate;
use crate::bindings::routing::exports::sluice::filter::routing as wit_routing;
use crate::bindings::transform::exports::sluice::filter::transform as wit_transform;

/// A plugin of type `P`, as the component's exports.
pub struct Export<P>(PhantomData<P>);

thread_local! {
    /// The plugin, once `init` built it.
    static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    /// Set by the default `on_response`: the plugin left it out.
    static RESPONSE_PHASE_UNUSED: Cell<bool> = const { Cell::new(false) };
}

/// Deserialize the JSON configuration, build the plugin and keep it.
fn init<P: Plugin>(config: &str) -> Result<(), String> {
    let config: P::Config =
        serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))?;
    let plugin = P::new(config)?;
    PLUGIN.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
    Ok(())
}

/// Call `f` with the plugin.
fn with<P: 'static, R>(f: impl FnOnce(&P) -> R) -> R {
    PLUGIN.with(|slot| {
        let slot = slot.borrow();
        let plugin = slot
            .as_ref()
            .and_then(|p| p.downcast_ref::<P>())
            .expect("sluice calls init before anything else");
        f(plugin)
    })
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

impl<P: Auth> wit_auth::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn authenticate(req: &raw::Request) -> wit_auth::AuthDecision {
        match with(|p: &P| p.authenticate(&Request::from_raw(req))) {
            AuthDecision::Allow(identity) => wit_auth::AuthDecision::Allow(raw::Identity {
                subject: identity.subject,
                claims: identity.claims,
            }),
            AuthDecision::Pass => wit_auth::AuthDecision::Pass,
            AuthDecision::Deny(reply) => wit_auth::AuthDecision::Deny(reply.into_raw()),
        }
    }
}

impl<P: RateLimit> wit_rate::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn check(req: &raw::Request) -> Option<wit_rate::Limit> {
        with(|p: &P| p.check(&Request::from_raw(req))).map(|limit| wit_rate::Limit {
            key: limit.key,
            cost: limit.cost,
            capacity: limit.capacity,
            window_millis: limit.window.as_millis() as u64,
        })
    }
}

impl<P: Transform> wit_transform::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn on_request(req: &raw::Request) -> wit_transform::RequestAction {
        match with(|p: &P| p.on_request(&Request::from_raw(req))) {
            Action::Forward => wit_transform::RequestAction::Forward,
            Action::Rewrite(path) => wit_transform::RequestAction::Rewrite(path),
            Action::Respond(reply) => wit_transform::RequestAction::Respond(reply.into_raw()),
        }
    }

    fn on_response(req: &raw::Request, resp: &raw::Response) -> raw::ResponsePhase {
        observe_response_phase(|| {
            with(|p: &P| p.on_response(&Request::from_raw(req), &Response::from_raw(resp)))
        })
    }
}

impl<P: Routing> wit_routing::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn select(req: &raw::Request) -> Option<wit_routing::RouteDecision> {
        with(|p: &P| p.select(&Request::from_raw(req))).map(|to| wit_routing::RouteDecision {
            upstream: to.upstream,
            rewrite: to.rewrite,
        })
    }
}

impl<P: CachePolicy> wit_cache::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn on_request(req: &raw::Request) -> wit_cache::Lookup {
        match with(|p: &P| p.lookup(&Request::from_raw(req))) {
            CacheLookup::Bypass => wit_cache::Lookup::Bypass,
            CacheLookup::Key(key) => wit_cache::Lookup::Key(key),
        }
    }

    fn on_response(req: &raw::Request, resp: &raw::Response) -> wit_cache::Store {
        match with(|p: &P| p.store(&Request::from_raw(req), &Response::from_raw(resp))) {
            CacheStore::FollowUpstream => wit_cache::Store::FollowUpstream,
            CacheStore::Skip => wit_cache::Store::Skip,
            CacheStore::Ttl(ttl) => {
                wit_cache::Store::Ttl(ttl.as_secs().min(u64::from(u32::MAX)) as u32)
            }
        }
    }
}

impl<P: HttpFilter> wit_filter::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn on_request(req: &raw::Request) -> wit_filter::Verdict {
        match with(|p: &P| p.on_request(&Request::from_raw(req))) {
            Verdict::Forward => wit_filter::Verdict::Forward,
            Verdict::Respond(reply) => wit_filter::Verdict::Respond(reply.into_raw()),
        }
    }

    fn on_response(req: &raw::Request, resp: &raw::Response) -> raw::ResponsePhase {
        observe_response_phase(|| {
            with(|p: &P| p.on_response(&Request::from_raw(req), &Response::from_raw(resp)))
        })
    }
}

impl<P: Connection> wit_connection::Guest for Export<P> {
    fn init(config: String) -> Result<(), String> {
        init::<P>(&config)
    }

    fn on_connect(conn: wit_connection::ConnectionInfo) -> wit_connection::ConnectionVerdict {
        let conn = ConnectionInfo {
            id: conn.id,
            // The host writes addresses it parsed; unspecified never reaches a plugin.
            client_ip: conn
                .client_ip
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            client_port: conn.client_port,
            listener: conn.listener,
            server_name: conn.server_name,
            alpn: conn.alpn,
            open_from_client: conn.open_from_client,
            upstream: conn.upstream,
        };
        match with(|p: &P| p.on_connect(&conn)) {
            ConnectionVerdict::Allow => wit_connection::ConnectionVerdict::Allow,
            ConnectionVerdict::Deny(why) => wit_connection::ConnectionVerdict::Deny(why),
            ConnectionVerdict::Route(to) => wit_connection::ConnectionVerdict::Route(to),
        }
    }
}
