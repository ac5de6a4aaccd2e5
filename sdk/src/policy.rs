//! One trait per policy kind. Implement [`Plugin`] and the trait of your kind,
//! then name both in [`export!`](crate::export).

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::http::{Identity, Reply, Request, Response};

/// What every plugin has: a typed configuration, read once per instance.
pub trait Plugin: Sized + 'static {
    /// The per-route configuration, deserialized from the route's `config` table.
    /// Use `serde_json::Value` to take anything, `()`-like empty structs for none.
    type Config: DeserializeOwned;

    /// Build the plugin from its configuration, or reject it with a message the
    /// gateway reports against the configuration file.
    fn new(config: Self::Config) -> Result<Self, String>;
}

/// Connection: let a TCP connection through, close it, or send it to another
/// upstream, when it is accepted and before a byte of it is proxied. Runs on
/// TCP listeners (`[listeners.tcp] filters`), not on HTTP requests.
pub trait Connection: Plugin {
    /// Decide on one connection.
    fn on_connect(&self, conn: &ConnectionInfo) -> ConnectionVerdict;
}

/// What the gateway knows of a connection when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Its number, unique in the gateway while it is open.
    pub id: u64,
    /// The client's address (as a trusted PROXY protocol header named it, if one did).
    pub client_ip: std::net::IpAddr,
    /// The client's port.
    pub client_port: u16,
    /// The listener's address, as configured (`0.0.0.0:443`).
    pub listener: String,
    /// The server name its TLS ClientHello asked for, when the listener read one.
    pub server_name: Option<String>,
    /// The ALPN protocols the ClientHello offered, in its order.
    pub alpn: Vec<String>,
    /// Connections open on the listener from the same socket address, this one included.
    pub open_from_client: u32,
    /// The upstream the listener's routes picked.
    pub upstream: String,
}

/// The answer of a [`Connection`] filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionVerdict {
    /// Go on to the upstream picked so far.
    Allow,
    /// Close the connection; the text says why, in the gateway's log.
    Deny(String),
    /// Go on to this upstream instead, by its name in the configuration.
    Route(String),
}

/// Auth: say who the request is from, or turn it away. Runs first.
pub trait Auth: Plugin {
    /// Decide on one request.
    fn authenticate(&self, req: &Request) -> AuthDecision;
}

/// The answer of an [`Auth`] filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the request through as this identity; later filters and logs see it.
    Allow(Identity),
    /// Let it through without an identity.
    Pass,
    /// Answer with this response (401, 403, ...); the rest of the chain is skipped.
    Deny(Reply),
}

/// Rate limit: name the bucket a request draws from; the gateway does the counting.
pub trait RateLimit: Plugin {
    /// The limit for this request, or `None` to let it through uncounted.
    fn check(&self, req: &Request) -> Option<Limit>;
}

/// A token bucket: `capacity` tokens, refilled completely every `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Requests with the same key share a bucket.
    pub key: String,
    /// Tokens this request takes.
    pub cost: u32,
    /// The bucket's size.
    pub capacity: u32,
    /// How long a full refill takes.
    pub window: Duration,
}

/// Transform: edit requests on the way in and responses on the way out.
pub trait Transform: Plugin {
    /// Edit the request (through its handles) and say how to go on.
    fn on_request(&self, req: &Request) -> Action {
        let _ = req;
        Action::Forward
    }

    /// Edit the response through its handles.
    ///
    /// Left out, it costs nothing: the gateway learns on the first response
    /// that there is nothing to call and stops calling it.
    fn on_response(&self, req: &Request, resp: &Response) {
        let _ = (req, resp);
        crate::__rt::response_phase_unused();
    }
}

/// What a [`Transform`] filter wants after `on_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Carry on.
    Forward,
    /// Carry on with this path (and `?query`).
    Rewrite(String),
    /// Answer with this response.
    Respond(Reply),
}

/// Routing: pick the upstream by name; the gateway balances inside it.
pub trait Routing: Plugin {
    /// The upstream for this request, or `None` for the route's own.
    fn select(&self, req: &Request) -> Option<RouteTo>;
}

/// A [`Routing`] decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    /// A named upstream from the gateway's configuration.
    pub upstream: String,
    /// A new path (and `?query`) to send, if any.
    pub rewrite: Option<String>,
}

/// Cache policy: steer the gateway's response cache.
pub trait CachePolicy: Plugin {
    /// The cache key for this request, or [`CacheLookup::Bypass`].
    fn lookup(&self, req: &Request) -> CacheLookup;

    /// Whether and how long to keep this response.
    fn store(&self, req: &Request, resp: &Response) -> CacheStore {
        let _ = (req, resp);
        CacheStore::FollowUpstream
    }
}

/// How a [`CachePolicy`] treats a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// Don't use the cache.
    Bypass,
    /// Look up, and later store, under this key.
    Key(String),
}

/// How a [`CachePolicy`] treats a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStore {
    /// Follow the upstream's `Cache-Control`.
    FollowUpstream,
    /// Don't store it.
    Skip,
    /// Store it this long.
    Ttl(Duration),
}

/// A general filter, for what the typed kinds don't cover.
pub trait HttpFilter: Plugin {
    /// Look at or edit the request; forward it or answer it.
    fn on_request(&self, req: &Request) -> Verdict {
        let _ = req;
        Verdict::Forward
    }

    /// Look at or edit the response.
    ///
    /// Left out, it costs nothing: the gateway learns on the first response
    /// that there is nothing to call and stops calling it.
    fn on_response(&self, req: &Request, resp: &Response) {
        let _ = (req, resp);
        crate::__rt::response_phase_unused();
    }
}

/// What an [`HttpFilter`] wants after `on_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on.
    Forward,
    /// Answer with this response.
    Respond(Reply),
}
