//! One request, from edge to client: admitted at the [edge](crate::edge),
//! routed, taken through its route's [phases](crate::phases) with one
//! [`RequestCtx`], sent upstream unless a phase answered, and back through
//! the phases in reverse.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use sluice_filter::metrics::Registry;
use sluice_filter::{Exchange, Filter, Plugin, PluginError};
use sluice_state::{ConnectError, RedisStore, Scope, StateConfig, StateMetrics, Stores};

use crate::access_log::{AccessLog, Record, Served};
use crate::body::{self, ClientBody, ClientBodyError, ProxyBody, Upload};
use crate::cache::ResponseCache;
use crate::compress::{Compression, Encoding};
use crate::config::{CacheConfig, FilterConfig, ListenerConfig, RouteConfig};
use crate::edge::{ConnectionInfo, request_id, strip_hop_by_hop};
use crate::metrics::{ProxyMetrics, RouteMetrics};
use crate::phases::{CachePhase, FilterChain, Flow, Phase, PhaseError, RequestCtx};
use crate::router::{Matcher, RouteTable};
use crate::tcp::policy::ConnectionFilters;
use crate::trace::{Trace, Tracing};
use crate::translate::{Transcoder, Translation};
use crate::upgrade::{self, Upgrade};
use crate::upstream::{
    self, Payload, Sending, TargetGauges, TargetRegistry, Upstream, UpstreamError,
};

/// Largest body buffered for filters that asked for bodies.
pub const MAX_BUFFERED_BODY: usize = 16 << 20;

/// A route, ready to serve.
pub struct Route {
    /// Its name, for logs and filters.
    pub name: Arc<str>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) filters: FilterChain,
    cache: CachePhase,
    /// The largest request body it takes.
    max_body: u64,
    compression: Option<Compression>,
    /// gRPC-Web or JSON/REST to the upstream's gRPC.
    translation: Option<Translation>,
    /// Its requests by method and status class, and their latency.
    pub(crate) metrics: RouteMetrics,
}

/// What outlives one configuration (and so a reload): the plugins' state
/// (key-value, counters, rate-limit buckets), the response cache, upstream
/// targets (their connections and health) and the metrics.
#[derive(Clone)]
pub struct Shared {
    /// Plugin state: this process's, and the fleet's when `[state]` names one.
    pub stores: Stores,
    /// The response cache; sized by the first configuration.
    pub cache: Arc<ResponseCache>,
    /// Every part's metrics, rendered together.
    pub registry: Arc<Registry>,
    /// The proxy's own metrics.
    pub metrics: Arc<ProxyMetrics>,
    /// Upstream targets, reused by a reload that keeps them.
    pub targets: Arc<TargetRegistry>,
    /// Where spans go, when `[tracing]` is configured (read at start).
    pub tracing: Option<Arc<Tracing>>,
}

impl Shared {
    /// In-process state, a cache sized by `cache`, and metrics registered in `registry`.
    pub fn new(cache: &CacheConfig, registry: Arc<Registry>) -> Shared {
        let metrics = Arc::new(ProxyMetrics::new(&registry));
        let targets = Arc::new(TargetRegistry::default());
        registry.register_collector(TargetGauges(targets.clone()));
        Shared {
            stores: Stores::local(),
            cache: Arc::new(ResponseCache::new(cache, metrics.cache_bytes.clone())),
            metrics,
            targets,
            tracing: None,
            registry,
        }
    }

    /// Keep plugin state (by default) and shared cache entries in
    /// `config`'s Redis, its metrics registered as `sluice_state_*`.
    pub async fn connect_state(&mut self, config: &StateConfig) -> Result<(), ConnectError> {
        let metrics = StateMetrics::default();
        let registry = &self.registry;
        registry.register(
            "state_up",
            "1 while Redis answers, 0 while its breaker is open",
            metrics.up.clone(),
        );
        registry.register(
            "state_round_trip_seconds",
            "Round trips to Redis",
            metrics.round_trip.clone(),
        );
        registry.register(
            "state_errors",
            "Round trips to Redis that failed, by reason",
            metrics.errors.clone(),
        );
        registry.register(
            "state_fallbacks",
            "Uses of shared state that fell back while Redis could not answer, by use and fallback",
            metrics.fallbacks.clone(),
        );
        let redis = RedisStore::connect(config, metrics).await?;
        self.stores.cluster = Some(Arc::new(redis));
        self.stores.default_scope = config.default;
        self.stores.fallback = config.fallback;
        self.stores.max_value = config.max_value.as_u64() as usize;
        Ok(())
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

/// One configured filter, initialised with its configuration: a connection
/// filter on a TCP listener (`connection`), any other kind on a route.
/// `whose` names the route or listener in errors.
async fn build_filter(
    plugins: &HashMap<String, Arc<Plugin>>,
    filter: &FilterConfig,
    connection: bool,
    key: String,
    whose: &str,
) -> Result<Filter, BuildError> {
    let at = filter.plugin.span().start;
    let plugin = plugins[filter.plugin.get_ref()].clone();
    if plugin.kind.on_connections() != connection {
        let message = match connection {
            true => format!(
                "{whose}: plugin `{}` is a `{}` filter; a TCP listener takes `connection` filters",
                plugin.name,
                plugin.kind.interface()
            ),
            false => format!(
                "{whose}: plugin `{}` is a `connection` filter; it goes in a TCP listener's `filters`",
                plugin.name
            ),
        };
        return Err(BuildError { at, key, message });
    }
    let json = serde_json::to_string(&filter.config).expect("TOML values are JSON-representable");
    Filter::new(plugin, json, filter.body).await.map_err(|e| {
        let message = match e {
            PluginError::Rejected { plugin, message } => {
                format!("{whose}: plugin `{plugin}` rejected its configuration: {message}")
            }
            other => format!("{whose}: {other}"),
        };
        BuildError { at, key, message }
    })
}

/// Everything needed to serve requests, built from one configuration.
pub struct Gateway {
    routes: RouteTable<Route>,
    /// Each TCP listener's connection filters, by its configured address.
    connection_filters: HashMap<SocketAddr, Arc<ConnectionFilters>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    shared: Shared,
    unrouted: RouteMetrics,
    /// Numbers requests (`request.id` for filters).
    next_id: AtomicU64,
    access_log: Option<AccessLog>,
}

impl Gateway {
    /// Initialise every route's filters with `plugins` (loaded for this
    /// configuration); files the routes name are relative to `dir`. Errors
    /// say where in the configuration, which route and which plugin.
    pub async fn build(
        configured: &[RouteConfig],
        listeners: &[ListenerConfig],
        dir: &Path,
        plugins: &HashMap<String, Arc<Plugin>>,
        upstreams: HashMap<String, Arc<Upstream>>,
        shared: &Shared,
        access_log: Option<AccessLog>,
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
                let key = format!("routes[{i}].filters[{j}]");
                let built =
                    build_filter(plugins, filter, false, key, &format!("route `{name}`")).await?;
                let scope = filter.state.as_ref().map(|s| *s.get_ref());
                if scope == Some(Scope::Cluster) && shared.stores.cluster.is_none() {
                    return Err(BuildError {
                        at: filter.state.as_ref().map_or(0, |s| s.span().start),
                        key: format!("routes[{i}].filters[{j}].state"),
                        message: "`cluster` needs a [state] store".into(),
                    });
                }
                filters.push((built, scope));
            }
            let filters = FilterChain::new(filters, &shared.stores, &shared.metrics);
            let shared_cache = match (route.shared_cache, &shared.stores.cluster) {
                (false, _) => None,
                (true, Some(redis)) => Some(redis.clone()),
                (true, None) => {
                    return Err(BuildError {
                        at: route.upstream.span().start,
                        key: format!("routes[{i}].shared_cache"),
                        message: "a shared cache needs a [state] store".into(),
                    });
                }
            };
            let compression = match &route.compression {
                Some(config) => Some(Compression::new(config).map_err(|message| BuildError {
                    at: route.upstream.span().start,
                    key: format!("routes[{i}].compression"),
                    message,
                })?),
                None => None,
            };
            let translation = translation(route, i, dir, &upstreams)?;
            let route = Route {
                metrics: RouteMetrics::new(&shared.metrics, &name),
                name,
                upstream: upstreams[route.upstream.get_ref()].clone(),
                cache: CachePhase::new(
                    shared.cache.clone(),
                    shared_cache,
                    &filters,
                    route.cache_private,
                    &shared.metrics,
                ),
                filters,
                max_body: route.max_body.as_u64(),
                compression,
                translation,
            };
            routes.push((matcher, route));
        }
        let mut connection_filters = HashMap::new();
        for (i, listener) in listeners.iter().enumerate() {
            let Some(tcp) = &listener.tcp else { continue };
            let mut filters = Vec::new();
            for (j, filter) in tcp.get_ref().filters.iter().enumerate() {
                let key = format!("listeners[{i}].tcp.filters[{j}]");
                let whose = format!("listener {}", listener.address);
                filters.push(build_filter(plugins, filter, true, key, &whose).await?);
            }
            if !filters.is_empty() {
                connection_filters
                    .insert(listener.address, Arc::new(ConnectionFilters::new(filters)));
            }
        }
        Ok(Gateway {
            connection_filters,
            routes: RouteTable::new(routes),
            upstreams,
            unrouted: RouteMetrics::new(&shared.metrics, ""),
            shared: shared.clone(),
            next_id: AtomicU64::new(1),
            access_log,
        })
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.shared.metrics
    }

    /// Where access log lines go, if anywhere.
    pub(crate) fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The proxy's metrics, shared.
    pub(crate) fn metrics_arc(&self) -> Arc<ProxyMetrics> {
        self.shared.metrics.clone()
    }

    /// A new number for a request or a connection, unique while it runs.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection filters of the TCP listener configured at `address`.
    pub(crate) fn connection_filters(
        &self,
        address: &SocketAddr,
    ) -> Option<&Arc<ConnectionFilters>> {
        self.connection_filters.get(address)
    }

    /// The upstream a TCP or UDP listener names.
    pub(crate) fn l4_upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.get(name).cloned()
    }

    /// Its routes, in match order.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Its transcoding routes, by name: what `sluice check` lists and a
    /// reload watches.
    pub fn transcoders(&self) -> impl Iterator<Item = (&str, &Transcoder)> {
        self.routes().filter_map(|route| match &route.translation {
            Some(Translation::Transcode(transcoder)) => Some((&*route.name, transcoder)),
            _ => None,
        })
    }

    /// Its upstreams.
    pub(crate) fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }

    /// Serve one request that came on `conn`.
    pub fn handle<'a>(
        &'a self,
        request: Request<Incoming>,
        conn: &'a ConnectionInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        // All that comes before the first wait is done here, at once, so
        // the request's head (hundreds of bytes) is no part of the future;
        // the job and its serving are boxed, as they are hundreds of bytes
        // too, and this future is moved several times on its way to hyper.
        let (at, job) = self.arrive(request, conn);
        async move {
            let mut response = match job {
                Ok(job) => Box::pin(self.serve(job, &at)).await,
                Err(response) => response,
            };
            if let Some(trace) = &at.trace {
                let status = response.status();
                trace.set("http.response.status_code", i64::from(status.as_u16()));
                if status.is_server_error() {
                    trace.fail(status.to_string());
                }
                trace.end();
            }
            response.headers_mut().insert(request_id::HEADER, at.id);
            match (&self.access_log, at.record) {
                (Some(log), Some(record)) => log.follow(record, response),
                _ => response,
            }
        }
    }

    /// What the request's arrival settles (its id, log record and span)
    /// and the job of serving it on its route, or the answer if it has none
    /// or the edge refuses it.
    fn arrive<'c>(
        &self,
        request: Request<Incoming>,
        conn: &'c ConnectionInfo,
    ) -> (Arrival<'c>, Result<Box<Job<'_>>, Response<ProxyBody>>) {
        let started = Instant::now();
        let (mut head, incoming) = request.into_parts();
        let upgrade = upgrade::requested(&mut head);
        let admitted = conn.edge.admit(&mut head);
        let id = request_id::settle(&mut head.headers, conn.edge.trust_request_id);
        let record =
            (self.access_log.as_ref()).map(|_| Record::begin(&head, started, conn.client_ip, &id));
        let trace = (self.shared.tracing.as_ref())
            .map(|tracing| Trace::request(tracing, &head, conn.client_ip, &id));
        let at = Arrival {
            id,
            conn,
            started,
            trace,
            record,
        };
        let job = match admitted {
            Err(refusal) => Err(self.refuse(refusal.status(), refusal.code(), &refusal, &at)),
            Ok(()) => self.route(head, incoming, upgrade, &at),
        };
        (at, job)
    }

    /// Find the request's route and ready it to be served there.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the response the client gets; rare, and boxing it would not make it cheaper"
    )]
    fn route(
        &self,
        head: http::request::Parts,
        incoming: Incoming,
        upgrade: Option<Upgrade>,
        at: &Arrival<'_>,
    ) -> Result<Box<Job<'_>>, Response<ProxyBody>> {
        let host = host_of(&head);
        let Some(route) = self.routes.find(
            host.as_deref(),
            head.uri.path(),
            &head.method,
            &head.headers,
        ) else {
            self.unrouted
                .record(&head.method, StatusCode::NOT_FOUND, at.started.elapsed());
            return Err(error_response(StatusCode::NOT_FOUND, "no_route"));
        };
        self.ready(route, head, incoming, upgrade, at)
    }

    /// What every response on `route` gets: counted, named in the span, and
    /// (refused before its phases began) the route in the access log.
    fn routed(
        &self,
        route: &Route,
        method: &http::Method,
        mut response: Response<ProxyBody>,
        at: &Arrival<'_>,
    ) -> Response<ProxyBody> {
        (route.metrics).record(method, response.status(), at.started.elapsed());
        if let Some(trace) = &at.trace {
            trace.rename(format!("{method} {}", route.name));
            trace.set("http.route", route.name.to_string());
        }
        if self.access_log.is_some() && response.extensions().get::<Served>().is_none() {
            // Refused before its phases began: the route is all there is to say.
            response.extensions_mut().insert(Served {
                route: route.name.clone(),
                upstream: Some(route.upstream.name.as_str().into()),
                identity: None,
                filters: Vec::new(),
                upload: None,
            });
        }
        response
    }

    /// Answer a request the gateway will not serve, counting and (at a
    /// bounded rate) logging why.
    fn refuse(
        &self,
        status: StatusCode,
        code: &'static str,
        why: &dyn std::fmt::Display,
        at: &Arrival<'_>,
    ) -> Response<ProxyBody> {
        self.shared.metrics.refused(code);
        sluice_filter::log_throttled!(
            info,
            ("refused", code),
            client = %at.conn.client_ip,
            request_id = log_id(&at.id),
            "request refused ({status}): {why}"
        );
        error_response(status, code)
    }

    /// The request as `route` will serve it: its exchange, its body on the
    /// way, and the encoding its response may take; or, refused, the
    /// response as the route gives it.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the response the client gets; rare, and boxing it would not make it cheaper"
    )]
    fn ready<'g>(
        &self,
        route: &'g Route,
        head: http::request::Parts,
        incoming: Incoming,
        upgrade: Option<Upgrade>,
        at: &Arrival<'_>,
    ) -> Result<Box<Job<'g>>, Response<ProxyBody>> {
        let declared = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > route.max_body) {
            let why = format!(
                "route `{}` takes at most {} bytes",
                route.name, route.max_body
            );
            let refused = self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &why, at);
            return Err(self.routed(route, &head.method, refused, at));
        }
        let encoding = route
            .compression
            .as_ref()
            .and_then(|c| c.negotiate(&head.headers));
        let method = head.method.clone();
        let mut exchange = Box::new(Exchange::new(
            self.next_id(),
            head,
            at.conn.client_ip,
            route.name.clone(),
        ));
        exchange.secure = at.conn.secure;
        exchange.client_port = at.conn.client_port;
        exchange.local = at.conn.local;
        let sent = match incoming.is_end_stream() {
            true => Outgoing {
                body: None,
                upload: None,
                upgrade,
            },
            false => {
                let (body, upload) =
                    ClientBody::new(incoming, route.max_body, at.conn.body_timeout);
                Outgoing {
                    body: Some(body::stream(body)),
                    upload: Some(upload),
                    upgrade,
                }
            }
        };
        let mut ctx = RequestCtx::new(exchange, route.filters.len());
        ctx.trace = at.trace.clone();
        Ok(Box::new(Job {
            route,
            method,
            ctx,
            sent,
            encoding,
        }))
    }

    /// Serve a request readied on its route.
    async fn serve(&self, mut job: Box<Job<'_>>, at: &Arrival<'_>) -> Response<ProxyBody> {
        let route = job.route;
        if route.filters.needs_bodies() {
            let whole = match job.sent.body.take() {
                Some(body) => body::collect_whole(body, MAX_BUFFERED_BODY).await,
                None => Ok((Bytes::new(), None)),
            };
            match whole {
                Ok((bytes, trailers)) => {
                    job.ctx.exchange.request_body = Some(bytes);
                    job.ctx.exchange.request_trailers = trailers;
                }
                Err(error) => {
                    let response = self.client_body_failed(&*error, at);
                    return self.routed(route, &job.method, response, at);
                }
            }
        }
        let upload = self
            .access_log
            .as_ref()
            .and_then(|_| job.sent.upload.clone());
        let ran = self.run(route, &mut job.ctx, job.sent, at).await;
        let ctx = job.ctx;
        let served = self.access_log.as_ref().map(|_| Served {
            route: route.name.clone(),
            upstream: Some(
                ctx.upstream
                    .as_deref()
                    .unwrap_or(&route.upstream.name)
                    .into(),
            ),
            identity: ctx.exchange.identity.as_ref().map(|i| i.subject.clone()),
            filters: route.filters.decisions(&ctx),
            upload,
        });
        let mut response = match ran {
            Ok(()) => respond(ctx),
            Err(response) => response,
        };
        if let Some(served) = served {
            response.extensions_mut().insert(served);
        }
        let response = match (&route.compression, job.encoding) {
            (Some(compression), Some(encoding)) => {
                compress(compression, encoding, &job.method, response)
            }
            _ => response,
        };
        self.routed(route, &job.method, response, at)
    }

    /// The phases on the way in, the upstream unless one answered, and the
    /// phases on the way out.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the response the client gets; rare, and boxing it would not make it cheaper"
    )]
    async fn run(
        &self,
        route: &Route,
        ctx: &mut RequestCtx,
        sent: Outgoing,
        at: &Arrival<'_>,
    ) -> Result<(), Response<ProxyBody>> {
        let failed = |error| phase_failed(route, error, &at.id);
        // The phases are boxed, and called only when they have something to
        // do: their state (kilobytes) stays out of the futures of requests
        // that do not use them, which every level above would move.
        let flow = match route.filters.is_empty() {
            true => Flow::Next,
            false => Box::pin(route.filters.request(ctx)).await.map_err(failed)?,
        };
        let cache_ran = match flow {
            Flow::Answered => false,
            Flow::Next => {
                let flow = match route.cache.applies(ctx) {
                    true => Box::pin(route.cache.request(ctx)).await.map_err(failed)?,
                    false => Flow::Next,
                };
                if let Flow::Next = flow {
                    self.fetch(route, ctx, sent, at).await?;
                }
                true
            }
        };
        if cache_ran && route.cache.applies(ctx) {
            Box::pin(route.cache.response(ctx)).await.map_err(failed)?;
        }
        if route.filters.has_response_phase(ctx) {
            if route.filters.needs_bodies()
                && let Some(stream) = ctx.stream.take()
            {
                let (bytes, trailers) = body::collect_whole(stream, MAX_BUFFERED_BODY)
                    .await
                    .map_err(|_| {
                        error_response(StatusCode::BAD_GATEWAY, "upstream_body_too_large")
                    })?;
                ctx.exchange.response_body = Some(bytes);
                ctx.exchange.response_trailers = trailers;
            }
            Box::pin(route.filters.response(ctx))
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Send the request upstream (the one a routing filter chose, or the
    /// route's) and put the response in the context.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the response the client gets; rare, and boxing it would not make it cheaper"
    )]
    async fn fetch(
        &self,
        route: &Route,
        ctx: &mut RequestCtx,
        sent: Outgoing,
        at: &Arrival<'_>,
    ) -> Result<(), Response<ProxyBody>> {
        let upstream = match &ctx.upstream {
            None => &route.upstream,
            Some(name) => self.upstreams.get(name).ok_or_else(|| {
                phase_failed(route, PhaseError::UnknownUpstream(name.clone()), &at.id)
            })?,
        };
        // The request is made and sent off in a scope of its own: it goes
        // boxed, and takes no room in this future once it left.
        let (sending, translated) = {
            let mut request = upstream_request(route, ctx, sent.body);
            let translated = match &route.translation {
                None => None,
                // Boxed, as the upstream's send is: a translation's state
                // stays out of every request's future.
                Some(translation) => {
                    Box::pin(self.translate(translation, &mut request, route, at)).await?
                }
            };
            // The edge took the client's hop-by-hop headers; a filter or a
            // translation may have added some.
            if !route.filters.is_empty() || translated.is_some() {
                strip_hop_by_hop(request.headers_mut());
            }
            let exchange = &ctx.exchange;
            upstream::prepare_request(&mut request, exchange.client_ip, exchange.secure);
            if let Some(upgrade) = &sent.upgrade {
                upgrade.restore(request.headers_mut());
            }
            let sending = Sending {
                client_ip: exchange.client_ip,
                upload: sent.upload.as_deref(),
                upgrade: sent.upgrade.is_some(),
                mark: self.access_log.is_some(),
                trace: at.trace.as_ref(),
                who: exchange.local.map(|local| {
                    (
                        SocketAddr::new(exchange.client_ip, exchange.client_port),
                        local,
                    )
                }),
            };
            // Boxed: the upstream's retries and connections are kilobytes
            // of future, which would otherwise be moved at every level above.
            (Box::pin(upstream.send(request, sending)), translated)
        };
        let (mut head, mut stream) =
            self.received(route, upstream, sending.await, sent.upgrade, at)?;
        if let Some(translated) = translated {
            let metrics = &self.shared.metrics;
            stream = Box::pin(translated.response(&mut head, stream, metrics)).await;
        }
        ctx.exchange.response = Some(head);
        ctx.stream = Some(stream);
        Ok(())
    }

    /// The upstream's answer, as the response's head and body on their way
    /// to the client, or the error response in its place.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the response the client gets; rare, and boxing it would not make it cheaper"
    )]
    fn received(
        &self,
        route: &Route,
        upstream: &Upstream,
        answer: Result<Response<upstream::UpstreamBody>, UpstreamError>,
        upgrade: Option<Upgrade>,
        at: &Arrival<'_>,
    ) -> Result<(http::response::Parts, ProxyBody), Response<ProxyBody>> {
        match answer {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                if switched && upgrade.is_none() {
                    // A switch the client never asked for: nothing could carry it on.
                    sluice_filter::log_throttled!(
                        warn,
                        ("unasked switch", &upstream.name),
                        route = &*route.name,
                        upstream = &*upstream.name,
                        "upstream `{}` switched protocols unasked",
                        upstream.name
                    );
                    return Err(error_response(
                        StatusCode::BAD_GATEWAY,
                        "upstream_invalid_response",
                    ));
                }
                if let Some(upgrade) = upgrade.filter(|_| switched) {
                    upgrade.restore(response.headers_mut());
                    upgrade.join(&mut response, at.conn.idle_timeout);
                }
                let (head, incoming) = response.into_parts();
                Ok((head, body::paced(incoming, upstream.body_timeout())))
            }
            Err(UpstreamError::ClientBody(error)) => Err(self.client_body_failed(&error, at)),
            Err(error) => {
                let (status, code) = upstream::failure_status(&error);
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

    /// Translate the request for the route's gRPC upstream, reading its
    /// whole body first if the translation needs it.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the response the client gets"
    )]
    async fn translate(
        &self,
        translation: &Translation,
        request: &mut Request<Payload>,
        route: &Route,
        at: &Arrival<'_>,
    ) -> Result<Option<crate::translate::Translated>, Response<ProxyBody>> {
        let whole = match translation.needs_whole_body() {
            false => Bytes::new(),
            true => match std::mem::replace(request.body_mut(), Payload::Bytes(Bytes::new())) {
                Payload::Bytes(bytes) => bytes,
                Payload::Stream(stream) => body::collect(stream, route.max_body as usize)
                    .await
                    .map_err(|error| self.client_body_failed(&*error, at))?,
            },
        };
        translation.request(request, whole).map_err(|refusal| {
            self.shared.metrics.refused(refusal.code());
            sluice_filter::log_throttled!(
                info,
                ("untranslatable", &*route.name, refusal.code()),
                route = &*route.name,
                request_id = log_id(&at.id),
                "request not translated: {refusal}"
            );
            refusal.response()
        })
    }

    /// The answer to a request whose body could not be read: too large,
    /// too slow, or the client went away.
    fn client_body_failed(
        &self,
        error: &(dyn std::error::Error + 'static),
        at: &Arrival<'_>,
    ) -> Response<ProxyBody> {
        let (status, code) = match ClientBodyError::find(error) {
            Some(ClientBodyError::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Some(ClientBodyError::Timeout) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Some(ClientBodyError::Malformed) => (StatusCode::BAD_REQUEST, "body_malformed"),
            Some(ClientBodyError::Aborted) => (CLIENT_CLOSED, "client_closed"),
            None => (StatusCode::BAD_REQUEST, "body_incomplete"),
        };
        self.refuse(status, code, &error, at)
    }
}

/// The request for the upstream, with the client's body or the one the
/// filters left. Its head is copied when the response phases will read it,
/// and moved otherwise.
fn upstream_request(
    route: &Route,
    ctx: &mut RequestCtx,
    sent: Option<ProxyBody>,
) -> Request<Payload> {
    let exchange = &mut ctx.exchange;
    let body = match (exchange.request_body.take(), sent) {
        // Trailers go on as a stream's end (such a request is not retried).
        (Some(bytes), _) if exchange.request_trailers.is_some() => {
            Payload::Stream(body::whole(bytes, exchange.request_trailers.take()))
        }
        (Some(bytes), _) => Payload::Bytes(bytes),
        (None, Some(stream)) => Payload::Stream(stream),
        (None, None) => Payload::Bytes(Bytes::new()),
    };
    let keep_head = route.filters.has_response_phase(ctx) || route.cache.applies(ctx);
    let exchange = &mut ctx.exchange;
    match keep_head {
        true => {
            let mut request = Request::new(body);
            *request.method_mut() = exchange.request.method.clone();
            *request.uri_mut() = exchange.request.uri.clone();
            *request.headers_mut() = exchange.request.headers.clone();
            request
        }
        false => {
            let (blank, ()) = Request::new(()).into_parts();
            Request::from_parts(std::mem::replace(&mut exchange.request, blank), body)
        }
    }
}

/// The route's translation, checked against its upstream (gRPC needs HTTP/2).
fn translation(
    route: &RouteConfig,
    i: usize,
    dir: &Path,
    upstreams: &HashMap<String, Arc<Upstream>>,
) -> Result<Option<Translation>, BuildError> {
    let translation = match (route.grpc_web, &route.transcode) {
        (false, None) => return Ok(None),
        (true, None) => Translation::GrpcWeb,
        (false, Some(config)) => {
            let transcoder =
                Transcoder::load(config.get_ref(), dir).map_err(|message| BuildError {
                    at: config.span().start,
                    key: format!("routes[{i}].transcode"),
                    message,
                })?;
            Translation::Transcode(transcoder)
        }
        (true, Some(config)) => {
            return Err(BuildError {
                at: config.span().start,
                key: format!("routes[{i}].transcode"),
                message: "a route takes gRPC-Web or transcodes JSON, not both".into(),
            });
        }
    };
    let upstream = &upstreams[route.upstream.get_ref()];
    if !upstream.speaks_h2() {
        return Err(BuildError {
            at: route.upstream.span().start,
            key: format!("routes[{i}].upstream"),
            message: format!(
                "upstream `{}` speaks HTTP/1.1; gRPC needs `protocol = \"h2\"`",
                upstream.name
            ),
        });
    }
    Ok(Some(translation))
}

/// The status logged for a client that hung up before its request was
/// done (nginx's 499): nobody is left to read it.
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => unreachable!(),
};

/// What the gateway knows of a request from its arrival on: its id, its
/// connection, when it came, its span when tracing and its access log
/// record when logging.
struct Arrival<'a> {
    id: HeaderValue,
    conn: &'a ConnectionInfo,
    started: Instant,
    trace: Option<Trace>,
    record: Option<Box<Record>>,
}

/// A request readied on its route, to be served there.
struct Job<'g> {
    route: &'g Route,
    /// For the route's counts and the response's compression.
    method: http::Method,
    ctx: RequestCtx,
    sent: Outgoing,
    encoding: Option<Encoding>,
}

/// The client's request body on its way upstream, and when its upload ended.
struct Outgoing {
    body: Option<ProxyBody>,
    upload: Option<Arc<Upload>>,
    /// A protocol switch the client asked for.
    upgrade: Option<Upgrade>,
}

/// `response`, compressed with `encoding` if it qualifies.
fn compress(
    compression: &Compression,
    encoding: Encoding,
    method: &http::Method,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let (mut head, body) = response.into_parts();
    let body = compression.apply(encoding, method, head.status, &mut head.headers, body);
    Response::from_parts(head, body)
}

/// The client's response, from the one in the context.
fn respond(mut ctx: RequestCtx) -> Response<ProxyBody> {
    let mut head = ctx
        .exchange
        .response
        .take()
        .expect("a request served has a response");
    crate::phases::rate_limit_headers(&ctx, &mut head.headers);
    let body = match (ctx.exchange.response_body.take(), ctx.stream.take()) {
        (Some(bytes), _) => body::whole(bytes, ctx.exchange.response_trailers.take()),
        (None, Some(stream)) => stream,
        (None, None) => body::full(Bytes::new()),
    };
    Response::from_parts(head, body)
}

/// The answer when a phase failed: its status and code, logged at a
/// bounded rate per plugin or cause.
fn phase_failed(route: &Route, error: PhaseError, id: &HeaderValue) -> Response<ProxyBody> {
    let (status, code) = error.status();
    match &error {
        PhaseError::Filter(failure) => sluice_filter::log_throttled!(
            error,
            ("filter failed", &*failure.plugin, failure.kind),
            route = &*route.name,
            plugin = &*failure.plugin,
            reason = failure.kind,
            request_id = log_id(id),
            "{}",
            failure.reason
        ),
        other => sluice_filter::log_throttled!(
            error,
            ("phase failed", &*route.name, code),
            route = &*route.name,
            request_id = log_id(id),
            "{other}"
        ),
    }
    error_response(status, code)
}

/// A request id as a log field (the edge let only printable ASCII through).
fn log_id(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
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
