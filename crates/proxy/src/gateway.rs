//! The data path of one request: route → request phases → upstream →
//! response phases → client.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::body::{self, ClientBody, ClientBodyError, ProxyBody, Upload};
use crate::cache::{self, Lookup, ResponseCache};
use sluice_filter::exchange::Exchange;
use sluice_filter::metrics::{Metrics, labels};
use sluice_filter::state::{MemoryStore, StateStore};
use sluice_filter::{FilterFailure, InstancePool, Plugin, PluginError};

use crate::chain::{FilterChain, Reply, RequestOutcome, StoreDecision};
use crate::config::{CacheConfig, RouteConfig};
use crate::edge::strip_hop_by_hop;
use crate::listener::ConnectionInfo;
use crate::router::{Matcher, RouteTable};
use crate::upstream::{self, Upstream, UpstreamError};

/// Largest body buffered for filters that asked for bodies.
pub const MAX_BUFFERED_BODY: usize = 16 << 20;

/// A route, ready to serve.
pub struct Route {
    /// Its name, for logs and filters.
    pub name: Arc<str>,
    upstream: Arc<Upstream>,
    chain: FilterChain,
    /// The largest request body it takes.
    max_body: u64,
    /// Responses by status class (1xx..5xx), counted without a lookup per request.
    responses: StatusCounters,
}

/// One counter per status class.
struct StatusCounters([Counter; 5]);

impl StatusCounters {
    fn new(metrics: &Metrics, route: &str) -> StatusCounters {
        StatusCounters(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            metrics
                .responses
                .get_or_create(&labels([("route", route), ("class", class)]))
                .clone()
        }))
    }

    fn count(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0[class].inc();
    }
}

/// What outlives one configuration (and so a reload): the plugins' state
/// (key-value, counters, rate-limit buckets), the response cache and the metrics.
#[derive(Clone)]
pub struct Shared {
    /// Plugin state.
    pub store: Arc<dyn StateStore>,
    /// The response cache; sized by the first configuration.
    pub cache: Arc<ResponseCache>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// In-process state, a cache sized by `cache`, and empty metrics.
    pub fn new(cache: &CacheConfig) -> Shared {
        Shared {
            store: Arc::new(MemoryStore::default()),
            cache: Arc::new(ResponseCache::new(cache)),
            metrics: Arc::new(Metrics::default()),
        }
    }
}

/// Why routes could not be built: a part of the configuration, at byte
/// offset `at` of its file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BuildError {
    /// Where in the configuration file.
    pub at: usize,
    /// The key at fault, dotted.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Everything needed to serve requests, built from one configuration.
pub struct Gateway {
    routes: RouteTable<Route>,
    upstreams: HashMap<String, Arc<Upstream>>,
    shared: Shared,
    unrouted: StatusCounters,
}

impl Gateway {
    /// Initialise every route's filters with `plugins` (loaded for this
    /// configuration). Errors name the configuration file and line, the
    /// route and the plugin.
    pub async fn build(
        configured: &[RouteConfig],
        plugins: &HashMap<String, Arc<Plugin>>,
        upstreams: HashMap<String, Arc<Upstream>>,
        shared: &Shared,
    ) -> Result<Gateway, BuildError> {
        let mut routes = Vec::with_capacity(configured.len());
        for (i, route) in configured.iter().enumerate() {
            let name: Arc<str> = route.name(i).into();
            let matcher = Matcher::new(&route.matcher).map_err(|e| BuildError {
                at: route.upstream.span().start,
                key: format!("routes[{i}].match"),
                message: e.to_string(),
            })?;
            let mut filters = Vec::with_capacity(route.filters.len());
            for (j, filter) in route.filters.iter().enumerate() {
                let plugin = plugins[filter.plugin.get_ref()].clone();
                let json = serde_json::to_string(&filter.config)
                    .expect("TOML values are JSON-representable");
                let pool = InstancePool::new(plugin, json, filter.body).await.map_err(|e| {
                    let message = match e {
                        PluginError::Rejected { plugin, message } => {
                            format!("route `{name}`: plugin `{plugin}` rejected its configuration: {message}")
                        }
                        other => format!("route `{name}`: {other}"),
                    };
                    BuildError {
                        at: filter.plugin.span().start,
                        key: format!("routes[{i}].filters[{j}]"),
                        message,
                    }
                })?;
                filters.push(pool);
            }
            let route = Route {
                responses: StatusCounters::new(&shared.metrics, &name),
                name,
                upstream: upstreams[route.upstream.get_ref()].clone(),
                chain: FilterChain::new(filters),
                max_body: route.max_body.as_u64(),
            };
            routes.push((matcher, route));
        }
        Ok(Gateway {
            routes: RouteTable::new(routes),
            upstreams,
            unrouted: StatusCounters::new(&shared.metrics, ""),
            shared: shared.clone(),
        })
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Serve one request that came on `conn`.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        conn: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        let (mut head, incoming) = request.into_parts();
        if let Err(refusal) = conn.edge.admit(&mut head) {
            return self.refuse(refusal.status(), refusal.code(), &refusal, conn);
        }
        let host = host_of(&head);
        let Some(route) = self.routes.find(
            host.as_deref(),
            head.uri.path(),
            &head.method,
            &head.headers,
        ) else {
            self.unrouted.count(StatusCode::NOT_FOUND);
            return error_response(StatusCode::NOT_FOUND, "no_route");
        };
        let response = self.serve(route, head, incoming, conn).await;
        route.responses.count(response.status());
        response
    }

    /// Answer a request the gateway will not serve, counting and (at a
    /// bounded rate) logging why.
    fn refuse(
        &self,
        status: StatusCode,
        code: &'static str,
        why: &dyn std::fmt::Display,
        conn: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        self.shared
            .metrics
            .requests_refused
            .get_or_create(&labels([("reason", code)]))
            .inc();
        sluice_filter::log_throttled!(
            info,
            ("refused", code),
            client = %conn.client_ip,
            "request refused ({status}): {why}"
        );
        error_response(status, code)
    }

    /// Serve one request on `route`.
    async fn serve(
        &self,
        route: &Route,
        head: http::request::Parts,
        incoming: Incoming,
        conn: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        let declared = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > route.max_body) {
            let why = format!(
                "route `{}` takes at most {} bytes",
                route.name, route.max_body
            );
            return self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &why, conn);
        }
        let mut ex = Box::new(Exchange::new(head, conn.client_ip, route.name.clone()));
        ex.secure = conn.secure;
        let (mut body, upload) = match incoming.is_end_stream() {
            true => (None, None),
            false => {
                let (body, upload) = ClientBody::new(incoming, route.max_body, conn.body_timeout);
                (Some(body::stream(body)), Some(upload))
            }
        };
        if route.chain.needs_bodies() {
            let whole = match body.take() {
                Some(body) => body::collect(body, MAX_BUFFERED_BODY).await,
                None => Ok(Bytes::new()),
            };
            match whole {
                Ok(bytes) => ex.request_body = Some(bytes),
                Err(error) => return self.client_body_failed(&*error, conn),
            }
        }

        let (ex, ran, outcome) = route.chain.on_request(ex, &*self.shared.store).await;
        match outcome {
            RequestOutcome::Failed(failure) => filter_failed(route, "request", &failure),
            RequestOutcome::Reply(Reply { head, body }) => {
                self.respond(route, ex, ran, head, Some(body), None).await
            }
            RequestOutcome::Forward {
                upstream,
                cache_key,
            } => {
                let sent = Outgoing { body, upload };
                self.forward(route, ex, ran, upstream, cache_key, sent, conn)
                    .await
            }
        }
    }

    /// The answer to a request whose body could not be read: too large,
    /// too slow, or the client went away.
    fn client_body_failed(
        &self,
        error: &(dyn std::error::Error + 'static),
        conn: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        match ClientBodyError::find(error) {
            Some(ClientBodyError::TooLarge) => self.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &error,
                conn,
            ),
            Some(ClientBodyError::Timeout) => {
                self.refuse(StatusCode::REQUEST_TIMEOUT, "body_timeout", &error, conn)
            }
            None => self.refuse(StatusCode::BAD_REQUEST, "body_incomplete", &error, conn),
        }
    }

    /// Answer from the cache or the upstream, and run the response back through the chain.
    #[allow(clippy::too_many_arguments)] // until one request context carries these
    async fn forward(
        &self,
        route: &Route,
        ex: Box<Exchange>,
        ran: usize,
        chosen: Option<String>,
        cache_key: Option<String>,
        sent: Outgoing,
        conn: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        let upstream = match chosen {
            None => &route.upstream,
            Some(name) => match self.upstreams.get(&name) {
                Some(upstream) => upstream,
                None => {
                    tracing::error!(
                        route = &*route.name,
                        "a routing filter chose unknown upstream `{name}`"
                    );
                    return error_response(StatusCode::INTERNAL_SERVER_ERROR, "unknown_upstream");
                }
            },
        };
        // Only GET is served from the cache: other methods change things or have no body.
        let cache_key = cache_key.filter(|_| ex.request.method == Method::GET);
        let mut _filling = None;
        if let Some(key) = &cache_key {
            match self.shared.cache.lookup(key, &ex.request.headers).await {
                Lookup::Hit(hit) => {
                    let (mut head, ()) = Response::new(()).into_parts();
                    head.status = hit.status;
                    head.headers = hit.headers.clone();
                    head.headers
                        .insert("x-cache", HeaderValue::from_static("HIT"));
                    head.headers
                        .insert(http::header::AGE, HeaderValue::from(hit.age()));
                    return self
                        .respond(route, ex, ran, head, Some(hit.body.clone()), None)
                        .await;
                }
                // Held until the response is stored, so concurrent misses wait for this fetch.
                Lookup::Miss(guard) => _filling = guard,
            }
        }
        let keep_head = route.chain.has_response_phase(ran) || cache_key.is_some();
        let (ex, head, streamed) =
            match self.fetch(route, upstream, ex, keep_head, sent, conn).await {
                Ok(fetched) => fetched,
                Err(response) => return response,
            };
        let (ex, head, buffered, streamed) = match cache_key {
            Some(key) => match self.fill_cache(route, ex, key, head, streamed).await {
                Ok(filled) => filled,
                Err(response) => return response,
            },
            None => (ex, head, None, Some(streamed)),
        };
        match (buffered, streamed) {
            (None, Some(streamed))
                if route.chain.has_response_phase(ran) && route.chain.needs_bodies() =>
            {
                match body::collect(streamed, MAX_BUFFERED_BODY).await {
                    Ok(bytes) => self.respond(route, ex, ran, head, Some(bytes), None).await,
                    Err(_) => error_response(StatusCode::BAD_GATEWAY, "upstream_body_too_large"),
                }
            }
            (buffered, streamed) => self.respond(route, ex, ran, head, buffered, streamed).await,
        }
    }

    /// Ask the cache policy about an upstream response and store it if it may
    /// be kept: only responses whose `Content-Length` fits an entry are
    /// buffered; others stream past the cache.
    async fn fill_cache(
        &self,
        route: &Route,
        mut ex: Box<Exchange>,
        key: String,
        head: http::response::Parts,
        streamed: ProxyBody,
    ) -> Result<
        (
            Box<Exchange>,
            http::response::Parts,
            Option<Bytes>,
            Option<ProxyBody>,
        ),
        Response<ProxyBody>,
    > {
        ex.response = Some(head);
        let (back, decision) = route.chain.cache_decision(ex).await;
        ex = back;
        let mut head = ex
            .response
            .take()
            .expect("the response head stays in the exchange");
        let ttl = match decision {
            Ok(StoreDecision::FollowUpstream) => cache::upstream_ttl(head.status, &head.headers),
            Ok(StoreDecision::Skip) => None,
            Ok(StoreDecision::Ttl(ttl)) => Some(ttl),
            Err(failure) => return Err(filter_failed(route, "cache policy", &failure)),
        };
        let length = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let stored = match (ttl, length) {
            (Some(ttl), Some(length)) if length <= self.shared.cache.max_entry() => {
                let bytes = body::collect(streamed, self.shared.cache.max_entry())
                    .await
                    .map_err(|_| error_response(StatusCode::BAD_GATEWAY, "upstream_body_failed"))?;
                self.shared.cache.store(
                    key,
                    &ex.request.headers,
                    head.status,
                    head.headers.clone(),
                    bytes.clone(),
                    ttl,
                );
                (Some(bytes), None)
            }
            _ => (None, Some(streamed)),
        };
        head.headers
            .insert("x-cache", HeaderValue::from_static("MISS"));
        Ok((ex, head, stored.0, stored.1))
    }

    /// Run the response phases, then build the client's response from either
    /// the buffered body or the stream.
    async fn respond(
        &self,
        route: &Route,
        mut ex: Box<Exchange>,
        ran: usize,
        head: http::response::Parts,
        buffered: Option<Bytes>,
        stream: Option<ProxyBody>,
    ) -> Response<ProxyBody> {
        ex.response = Some(head);
        ex.response_body = buffered;
        if route.chain.has_response_phase(ran) {
            let (back, result) = route.chain.on_response(ex, ran).await;
            ex = back;
            if let Err(failure) = result {
                return filter_failed(route, "response", &failure);
            }
        }
        let mut head = ex.response.take().expect("response head set above");
        if let Some(admission) = ex.rate_limit {
            let headers = &mut head.headers;
            headers.insert("ratelimit-limit", HeaderValue::from(admission.limit));
            headers.insert(
                "ratelimit-remaining",
                HeaderValue::from(admission.remaining),
            );
            headers.insert("ratelimit-reset", HeaderValue::from(admission.reset_secs));
        }
        let body = match (ex.response_body.take(), stream) {
            (Some(bytes), _) => body::full(bytes),
            (None, Some(stream)) => stream,
            (None, None) => body::full(Bytes::new()),
        };
        Response::from_parts(head, body)
    }
}

/// The client's request body on its way upstream, and when its upload ended.
struct Outgoing {
    body: Option<ProxyBody>,
    upload: Option<Arc<Upload>>,
}

impl Gateway {
    /// Send the request upstream. The request head is copied when it is still
    /// needed afterwards (`keep_head`), and moved out of the exchange otherwise.
    async fn fetch(
        &self,
        route: &Route,
        upstream: &Upstream,
        mut ex: Box<Exchange>,
        keep_head: bool,
        sent: Outgoing,
        conn: &ConnectionInfo,
    ) -> Result<(Box<Exchange>, http::response::Parts, ProxyBody), Response<ProxyBody>> {
        let body = match ex.request_body.take() {
            Some(bytes) => body::full(bytes),
            None => sent.body.unwrap_or_else(|| body::full(Bytes::new())),
        };
        let mut request = if keep_head {
            let mut request = Request::new(body);
            *request.method_mut() = ex.request.method.clone();
            *request.uri_mut() = ex.request.uri.clone();
            *request.headers_mut() = ex.request.headers.clone();
            request
        } else {
            let (blank, ()) = Request::new(()).into_parts();
            Request::from_parts(std::mem::replace(&mut ex.request, blank), body)
        };
        upstream::prepare_request(&mut request, ex.client_ip, ex.secure);
        match upstream.send(request, sent.upload.as_deref()).await {
            Ok(response) => {
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                Ok((ex, head, body::stream(incoming)))
            }
            Err(UpstreamError::ClientBody(error)) => Err(self.client_body_failed(&error, conn)),
            Err(error) => {
                let (status, code) = match error {
                    UpstreamError::Timeout { .. } => {
                        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                    }
                    _ => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
                };
                sluice_filter::log_throttled!(
                    warn,
                    ("upstream", &upstream.name, code),
                    route = &*route.name,
                    "{error}"
                );
                Err(error_response(status, code))
            }
        }
    }
}

/// The answer when a fail-closed filter failed in `phase`: 500, or 503
/// when the plugin had no free slot; logged at a bounded rate per plugin.
fn filter_failed(route: &Route, phase: &str, failure: &FilterFailure) -> Response<ProxyBody> {
    sluice_filter::log_throttled!(
        error,
        ("filter failed", &*failure.plugin, failure.busy),
        route = &*route.name,
        plugin = &*failure.plugin,
        "{phase} failed: {}",
        failure.reason
    );
    match failure.busy {
        true => error_response(StatusCode::SERVICE_UNAVAILABLE, "filter_busy"),
        false => error_response(StatusCode::INTERNAL_SERVER_ERROR, "filter_failed"),
    }
}

/// The request's host in lowercase, without a port (allocating only when
/// the client sent capitals). The edge has put it in `Host`.
fn host_of(head: &http::request::Parts) -> Option<Cow<'_, str>> {
    let raw = head.headers.get(http::header::HOST)?.to_str().ok()?;
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _port)| host)
    };
    Some(match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(host.to_ascii_lowercase()),
        false => Cow::Borrowed(host),
    })
}

/// A response the gateway makes itself, with a short machine-readable code.
pub fn error_response(status: StatusCode, code: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(format!("{code}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    headers.insert("x-sluice-error", HeaderValue::from_static(code));
    response
}
