//! Upstreams: a named group of targets, one picked per try by the
//! upstream's algorithm among those healthy and not ejected; failed tries
//! retried on another target within a budget; and the proxy's rules for
//! headers on the way.
//!
//! ```text
//! send ─► balance (pick a target) ─► pool (a connection) ─► connect (TCP, TLS, h1/h2)
//!            ▲                                       │
//!            └── retry, another target ◄── failure ──┘  (target: outlier record)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, Entry, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use smallvec::SmallVec;

use crate::body::{BoxError, ClientBodyError, ProxyBody, Upload};
use crate::config::{Balance, HashOn, OutlierConfig, TargetConfig, UpstreamConfig};
use crate::metrics::ProxyMetrics;
use crate::trace::Trace;
use sluice_filter::metrics::labels;

mod balance;
mod connect;
mod deadline;
mod gauges;
mod health;
mod inline;
mod pool;
mod proxy_header;
mod resolve;
mod retry;
mod stream;
mod target;

use balance::{Key, Members};
pub use connect::ByteStream;
use connect::Connector;
pub(crate) use connect::keepalive;
use deadline::within;
pub use gauges::TargetGauges;
pub use pool::UpstreamBody;
pub use proxy_header::Who;
use resolve::Resolver;
pub use resolve::TargetRegistry;
use retry::RetryBudget;
pub use stream::Joined;
pub use target::Target;
pub(crate) use target::now_ms;

/// Why an upstream exchange failed, and so which status the client sees.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or it broke before a response: 502.
    #[error("upstream `{upstream}` ({target}) unreachable: {source}")]
    Unreachable {
        /// The upstream's name.
        upstream: String,
        /// The server tried last.
        target: Authority,
        /// What went wrong: connecting, or the exchange.
        source: BoxError,
    },
    /// The client's request body failed on the way (too large, too slow).
    #[error("{0}")]
    ClientBody(ClientBodyError),
    /// No response head in time: 504.
    #[error("upstream `{upstream}` ({target}) timed out after {timeout:?}")]
    Timeout {
        /// The upstream's name.
        upstream: String,
        /// The server tried last.
        target: Authority,
        /// The limit that ran out.
        timeout: Duration,
    },
    /// Every target is unhealthy or ejected: 503, at once.
    #[error("upstream `{upstream}` has no healthy target")]
    NoHealthy {
        /// The upstream's name.
        upstream: String,
    },
}

/// A request body as the upstream gets it: bytes in hand can be sent again
/// to another target; a stream only if it never left.
pub enum Payload {
    /// Bytes in hand (empty for no body).
    Bytes(Bytes),
    /// The client's body, streamed.
    Stream(ProxyBody),
}

/// What an upstream needs to know of the request besides itself.
pub struct Sending<'a> {
    /// The client's address (for `balance = "ip-hash"`).
    pub client_ip: IpAddr,
    /// When the client's body upload ended; per-try timeouts start there.
    pub upload: Option<&'a Upload>,
    /// The request switches protocols (WebSocket): a connection of its own.
    pub upgrade: bool,
    /// Mark the response with the target that gave it ([`AnsweredBy`]).
    pub mark: bool,
    /// The request's span, when tracing: each try is a child span, whose
    /// `traceparent` the target gets.
    pub trace: Option<&'a Trace>,
    /// The client's connection, for the PROXY protocol header of an
    /// upstream that takes one (its connections then carry only this
    /// client connection's requests).
    pub who: Option<Who>,
}

/// The target that answered, in the response's extensions when
/// [`Sending::mark`] asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredBy(pub SocketAddr);

/// When to try again, and how long to wait.
struct Policy {
    per_try: Duration,
    /// The longest pause in a response body.
    body: Duration,
    overall: Option<Duration>,
    retries: u32,
    retry_on: Vec<u16>,
    outlier: OutlierConfig,
}

/// A named group of interchangeable servers.
pub struct Upstream {
    /// The name from the configuration.
    pub name: String,
    balance: Balance,
    hash_on: Option<HashOn>,
    sticky_cookie: String,
    members: ArcSwap<Members>,
    connector: Arc<Connector>,
    policy: Policy,
    budget: RetryBudget,
    metrics: Arc<ProxyMetrics>,
}

impl Upstream {
    /// The longest pause allowed in a response body once its head came.
    pub fn body_timeout(&self) -> Duration {
        self.policy.body
    }

    /// Whether its targets expect a PROXY protocol header.
    pub fn sends_proxy_protocol(&self) -> bool {
        self.connector.sends_proxy_protocol()
    }

    /// Whether it speaks HTTP/2, as gRPC needs (always, or by ALPN).
    pub fn speaks_h2(&self) -> bool {
        self.connector.protocol() != crate::config::UpstreamProtocol::Http1
    }

    /// Build from configuration: names resolved, targets that stay taken
    /// from `registry` with their connections, health checks and name
    /// lookups started on tasks that end with the upstream.
    pub async fn build(
        name: &str,
        config: &UpstreamConfig,
        registry: &Arc<TargetRegistry>,
        metrics: &Arc<ProxyMetrics>,
    ) -> Result<Arc<Upstream>, String> {
        let connector = Arc::new(Connector::new(config)?);
        let resolver = Resolver {
            registry: registry.clone(),
            fingerprint: resolve::fingerprint(name, config),
            connector: connector.clone(),
            idle_timeout: config.idle_timeout,
            upstream: name.to_owned(),
            seconds: metrics.upstream_seconds.clone(),
        };
        let configured = config.targets.get_ref().clone();
        let targets = resolver.resolve(&configured).await?;
        let upstream = Arc::new(Upstream {
            name: name.to_owned(),
            balance: config.balance,
            hash_on: config
                .hash_on
                .as_deref()
                .and_then(|h| HashOn::parse(h).ok()),
            sticky_cookie: config.sticky_cookie.clone(),
            members: ArcSwap::from_pointee(Members::new(targets, config.balance)),
            connector,
            policy: Policy {
                per_try: config.timeout,
                body: config.body_timeout,
                overall: config.overall_timeout,
                retries: config.retries,
                retry_on: config.retry_on.clone(),
                outlier: config.outlier.clone(),
            },
            budget: RetryBudget::new(config.retry_budget),
            metrics: metrics.clone(),
        });
        for (target, _) in upstream.members.load().targets.iter() {
            upstream.metrics_health(target);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if let Some(health) = &config.health {
                runtime.spawn(health::run(Arc::downgrade(&upstream), health.clone()));
            }
            if resolve::has_names(&configured) {
                let every = config.resolve_every;
                let weak = Arc::downgrade(&upstream);
                runtime.spawn(re_resolve(weak, resolver, configured, every));
            }
        }
        Ok(upstream)
    }

    /// Its targets as now resolved.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        let members = self.members.load();
        members.targets.iter().map(|(t, _)| t.clone()).collect()
    }

    /// Send `request` (already prepared by [`prepare_request`]) to a target
    /// picked by the upstream's algorithm; a try that fails is tried again
    /// on another target when it never reached one, or when the request is
    /// idempotent and its body is in hand, within the retries and the budget.
    ///
    /// What comes before the first try is done at the call, so the request
    /// (hundreds of bytes) is no part of the future: it is boxed, and so is
    /// its copy for a retry.
    pub fn send<'a>(
        &'a self,
        request: Request<Payload>,
        sending: Sending<'a>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a {
        let key = self.key(request.headers(), request.uri(), sending.client_ip);
        let members = self.members.load_full();
        // What a retry after the request left needs: a copy of it (none
        // when there is no other target to retry on).
        let replay = match request.body() {
            Payload::Bytes(bytes)
                if self.policy.retries > 0
                    && members.targets.len() > 1
                    && !sending.upgrade
                    && idempotent(request.method()) =>
            {
                Some(Box::new(Copy::of(&request, bytes.clone())))
            }
            _ => None,
        };
        // Boxed from here to the connection: each level below would move
        // it otherwise, and keep room for it in its future.
        let mut next = Some(Box::new(request.map(|payload| match payload {
            Payload::Bytes(bytes) => crate::body::full(bytes),
            Payload::Stream(stream) => stream,
        })));
        self.budget.deposit();
        let started = Instant::now();
        async move {
            let sending = &sending;
            // The targets tried, inline: most requests take one try, a few two.
            let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
            let mut last: Option<UpstreamError> = None;
            loop {
                // The first try starts with the request's clock reading.
                let try_started = match tried.is_empty() {
                    true => started,
                    false => Instant::now(),
                };
                let Some(i) = members.pick(self.balance, &key, &tried) else {
                    return Err(last.unwrap_or_else(|| UpstreamError::NoHealthy {
                        upstream: self.name.clone(),
                    }));
                };
                tried.push(i);
                let target = &members.targets[i].0;
                let mut request = match next.take() {
                    Some(request) => request,
                    None => replay.as_ref().expect("retried only with a copy").request(),
                };
                let span = sending.trace.map(|trace| {
                    let attributes = vec![
                        KeyValue::new("sluice.upstream", self.name.clone()),
                        KeyValue::new("server.address", target.addr.to_string()),
                        KeyValue::new("sluice.try", tried.len() as i64),
                    ];
                    let span = trace.child(
                        format!("upstream {}", self.name),
                        SpanKind::Client,
                        attributes,
                    );
                    span.inject(request.headers_mut());
                    span
                });
                let outcome = self
                    .try_once(target, request, sending, started, try_started)
                    .await;
                if let Some(span) = span {
                    match &outcome {
                        Ok(response) => {
                            let status = response.status();
                            span.set("http.response.status_code", i64::from(status.as_u16()));
                            if status.is_server_error() {
                                span.fail(status.to_string());
                            }
                        }
                        Err(Failure::ClientBody(error)) => span.fail(error.to_string()),
                        Err(Failure::Failed { error, .. }) => span.fail(error.to_string()),
                    }
                    span.end();
                }
                // Another try: retries left, another target, the budget allows.
                let may_retry = |why: &str| {
                    if !self.another_target(&members, &tried) {
                        return false;
                    }
                    if !self.budget.withdraw() {
                        self.metrics
                            .upstream_retries_refused
                            .get_or_create(&labels([("upstream", &*self.name)]))
                            .inc();
                        return false;
                    }
                    self.count_retry(why);
                    true
                };
                match outcome {
                    Ok(mut response) => {
                        let status = response.status();
                        target.answered(try_started.elapsed());
                        match status.is_server_error() {
                            true => self.failed(target),
                            false => target.succeeded(),
                        }
                        if replay.is_some()
                            && self.policy.retry_on.contains(&status.as_u16())
                            && may_retry(status.as_str())
                        {
                            last =
                                Some(self.unreachable(target, format!("answered {status}").into()));
                            continue;
                        }
                        self.stick(&key, target, response.headers_mut());
                        if sending.mark {
                            response.extensions_mut().insert(AnsweredBy(target.addr));
                        }
                        return Ok(response);
                    }
                    Err(Failure::ClientBody(error)) => {
                        return Err(UpstreamError::ClientBody(error));
                    }
                    Err(Failure::Failed { error, unsent }) => {
                        self.failed(target);
                        let why = match &error {
                            UpstreamError::Timeout { .. } => "timeout",
                            _ if unsent.is_some() => "connect",
                            _ => "reset",
                        };
                        let again = unsent.is_some() || replay.is_some();
                        let out_of_time =
                            self.policy.overall.is_some_and(|o| started.elapsed() >= o);
                        last = Some(error);
                        if again && !out_of_time && may_retry(why) {
                            next = unsent;
                            continue;
                        }
                        return Err(last.expect("just set"));
                    }
                }
            }
        }
    }

    /// One try on `target`, within the per-try timeout (which starts when the
    /// client's upload ends) and what is left of the overall one.
    async fn try_once(
        &self,
        target: &Arc<Target>,
        mut request: Box<Request<ProxyBody>>,
        sending: &Sending<'_>,
        started: Instant,
        mut try_started: Instant,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let _in_flight = target.start(target::ms_at(try_started));
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(target.authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        let who = sending.who.filter(|_| self.sends_proxy_protocol());
        let exchange = exchange(target, request, sending.upgrade, who);
        tokio::pin!(exchange);
        let overall = self.policy.overall.map(|o| started + o);
        let (answered, limit) = loop {
            // With an upload, the try's time starts when the client is done.
            if let Some(upload) = sending.upload {
                try_started = upload.finished_at().unwrap_or_else(Instant::now);
            }
            let mut deadline = try_started + self.policy.per_try;
            let mut limit = self.policy.per_try;
            if let Some(overall) = overall.filter(|o| *o < deadline) {
                deadline = overall;
                limit = self.policy.overall.expect("set");
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            match within(deadline, exchange.as_mut()).await {
                // The client is still uploading: its time is the body timeout's business.
                None if overall.is_none_or(|o| Instant::now() < o)
                    && sending
                        .upload
                        .is_some_and(|u| u.finished_at().is_none_or(|t| t > try_started)) =>
                {
                    continue;
                }
                answered => break (answered, limit),
            }
        };
        match answered {
            Some(Ok(response)) => Ok(response),
            Some(Err((source, unsent))) => match ClientBodyError::find(&*source) {
                Some(error) => Err(Failure::ClientBody(error)),
                None => Err(Failure::Failed {
                    error: self.unreachable(target, source),
                    unsent,
                }),
            },
            None => Err(Failure::Failed {
                error: UpstreamError::Timeout {
                    upstream: self.name.clone(),
                    target: target.authority.clone(),
                    timeout: limit,
                },
                unsent: None,
            }),
        }
    }

    /// Whether another try is allowed after `tried`: retries are left and
    /// an untried target is available.
    fn another_target(&self, members: &Members, tried: &[usize]) -> bool {
        tried.len() <= self.policy.retries as usize
            && (0..members.targets.len())
                .any(|j| !tried.contains(&j) && members.targets[j].0.available())
    }

    /// Count a try after the first, and why.
    fn count_retry(&self, why: &str) {
        self.metrics
            .upstream_retries
            .get_or_create(&labels([("upstream", &*self.name), ("reason", why)]))
            .inc();
    }

    fn unreachable(&self, target: &Target, source: BoxError) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            target: target.authority.clone(),
            source,
        }
    }

    /// Record a failed try; outlier detection may eject the target, as long
    /// as no more than `max_ejected_percent` of the targets are out.
    fn failed(&self, target: &Target) {
        let members = self.members.load();
        let may_eject = || {
            let ejected = members.targets.iter().filter(|(t, _)| t.ejected()).count();
            let cap =
                members.targets.len() * self.policy.outlier.max_ejected_percent as usize / 100;
            ejected < cap
        };
        if target.failed(&self.policy.outlier, may_eject) {
            let addr = target.addr.to_string();
            self.metrics
                .upstream_ejections
                .get_or_create(&labels([("upstream", &*self.name), ("target", &addr)]))
                .inc();
            sluice_filter::log_throttled!(
                warn,
                ("ejected", &self.name, &addr),
                upstream = &*self.name,
                target = &*addr,
                "target ejected after repeated failures"
            );
        }
    }

    /// Export a target's health verdict.
    fn metrics_health(&self, target: &Target) {
        let addr = target.addr.to_string();
        self.metrics
            .upstream_healthy
            .get_or_create(&labels([("upstream", &*self.name), ("target", &addr)]))
            .set(i64::from(target.available()));
    }

    /// What the algorithm may look at: the client, `hash_on`'s value, the sticky cookie.
    fn key(&self, headers: &HeaderMap, uri: &Uri, client_ip: IpAddr) -> Key {
        let hashed = match &self.hash_on {
            Some(HashOn::Header(name)) => headers.get(name).map(|v| balance::hash(&v.as_bytes())),
            Some(HashOn::Cookie(name)) => cookie(headers, name).map(|v| balance::hash(&v)),
            Some(HashOn::Path) => Some(balance::hash(&uri.path())),
            None => None,
        };
        let sticky = match self.balance {
            Balance::Sticky => {
                cookie(headers, &self.sticky_cookie).and_then(|v| u64::from_str_radix(v, 16).ok())
            }
            _ => None,
        };
        Key {
            client_ip,
            hashed,
            sticky,
        }
    }

    /// With sticky sessions, a client not yet on `target` gets the cookie that keeps it there.
    fn stick(&self, key: &Key, target: &Target, headers: &mut HeaderMap) {
        if self.balance != Balance::Sticky {
            return;
        }
        let id = balance::sticky_id(target);
        if key.sticky == Some(id) {
            return;
        }
        let cookie = format!("{}={id:x}; Path=/; HttpOnly", self.sticky_cookie);
        if let Ok(value) = HeaderValue::try_from(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// Look up names again every `every`, while the upstream lives; a new set
/// of addresses replaces the old, and targets that stay keep their connections.
async fn re_resolve(
    upstream: Weak<Upstream>,
    resolver: Resolver,
    configured: Vec<TargetConfig>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        match resolver.resolve(&configured).await {
            Ok(targets) if !resolve::same(&upstream.members.load().targets, &targets) => {
                tracing::info!(upstream = %upstream.name, targets = targets.len(), "targets re-resolved");
                upstream
                    .members
                    .store(Arc::new(Members::new(targets, upstream.balance)));
            }
            Ok(_) => {}
            Err(error) => sluice_filter::log_throttled!(
                warn,
                ("resolve", &upstream.name),
                upstream = &*upstream.name,
                "keeping the last addresses: {error}"
            ),
        }
    }
}

/// Why a try failed.
enum Failure {
    /// The client's body: no other target would do better.
    ClientBody(ClientBodyError),
    /// The target's fault; the request, if it never left.
    Failed {
        error: UpstreamError,
        unsent: Option<Box<Request<ProxyBody>>>,
    },
}

/// A copy of a request, for sending again.
struct Copy {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Copy {
    fn of<B>(request: &Request<B>, body: Bytes) -> Copy {
        Copy {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
            body,
        }
    }

    fn request(&self) -> Box<Request<ProxyBody>> {
        let mut request = Box::new(Request::new(crate::body::full(self.body.clone())));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Methods a retry cannot make worse (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// One exchange with `target`. A pooled connection the server closed while
/// idle hands the request back unsent; it is tried once more on a new one.
/// A request that never left comes back with the error.
async fn exchange(
    target: &Arc<Target>,
    request: Box<Request<ProxyBody>>,
    upgrade: bool,
    who: Option<Who>,
) -> Result<Response<UpstreamBody>, pool::SendError> {
    // The rarer paths are boxed, their state out of every request's future.
    let conn = match upgrade {
        true => Box::pin(target.pool.connect_upgradable(who)).await,
        false => target.pool.checkout(who).await,
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(error) => return Err((error, Some(request))),
    };
    let reused = conn.reused;
    match conn.send(request).await {
        // A reused connection the server had closed: once more on a new one.
        Err((_, Some(unsent))) if reused => {
            Box::pin(async move {
                match target.pool.connect(who).await {
                    Ok(conn) => conn.send(unsent).await,
                    Err(error) => Err((error, Some(unsent))),
                }
            })
            .await
        }
        sent => sent,
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Make a client's request fit to send upstream: `X-Forwarded-*` set, the
/// original host kept, origin form, HTTP/1.1 on the wire (HTTP/2 where the
/// upstream speaks it). The client's hop-by-hop headers went at the edge;
/// the caller strips any a filter or a translation added.
pub fn prepare_request<B>(request: &mut Request<B>, client_ip: IpAddr, secure: bool) {
    let headers = request.headers_mut();
    // Every field of the chain the client sent (a second one is the same
    // list, RFC 9110 §5.3), then the client. An entry each: one probe to
    // read and replace.
    let client = sluice_filter::ip_text(client_ip);
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            if let Ok(value) = HeaderValue::try_from(client) {
                slot.insert(value);
            }
        }
        Entry::Occupied(mut sent) => {
            if let Ok(value) = HeaderValue::try_from(chain(sent.iter(), client)) {
                sent.insert(value);
            }
        }
    }
    let proto = if secure { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // The other names for the same thing, when a client sent them: its
    // `X-Real-IP` cannot stand (it is one address, the client's), and
    // `Forwarded` (RFC 7239) gets the client appended as `X-Forwarded-For` does.
    // (Looked up before an entry is taken: taking one costs more, and most
    // requests have neither.)
    if headers.contains_key(X_REAL_IP)
        && let Ok(value) = HeaderValue::try_from(sluice_filter::ip_text(client_ip))
    {
        headers.insert(X_REAL_IP, value);
    }
    if headers.contains_key(header::FORWARDED)
        && let Entry::Occupied(mut sent) = headers.entry(header::FORWARDED)
    {
        let node = match client_ip {
            IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        if let Ok(value) = HeaderValue::try_from(chain(sent.iter(), node)) {
            sent.insert(value);
        }
    }
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    // Origin form on the wire; the host travels in its header.
    if request.uri().authority().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
    }
    *request.version_mut() = Version::HTTP_11;
}

/// The list in `earlier`'s fields (one list however many fields carry it),
/// with `node` appended.
fn chain<'a>(earlier: impl Iterator<Item = &'a HeaderValue>, node: String) -> String {
    let mut fields = earlier.filter_map(|v| v.to_str().ok()).peekable();
    if fields.peek().is_none() {
        return node;
    }
    let mut list = String::new();
    for field in fields {
        list.push_str(field);
        list.push_str(", ");
    }
    list.push_str(&node);
    list
}

/// The status a failed upstream exchange answers with, and its code.
pub fn failure_status(error: &UpstreamError) -> (StatusCode, &'static str) {
    match error {
        UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        UpstreamError::NoHealthy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_healthy_upstream"),
        UpstreamError::ClientBody(_) => (StatusCode::BAD_REQUEST, "body_incomplete"),
        UpstreamError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
    }
}

/// Plugins granted `http:<name>` call upstreams through the same targets and pools.
#[async_trait::async_trait]
impl sluice_filter::HttpUpstream for Upstream {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, request: Request<Bytes>, limit: usize) -> Result<Response<Bytes>, String> {
        let sending = Sending {
            client_ip: IpAddr::from([127, 0, 0, 1]),
            upload: None,
            upgrade: false,
            mark: false,
            trace: None,
            who: None,
        };
        let response = Upstream::send(self, request.map(Payload::Bytes), sending)
            .await
            .map_err(|e| e.to_string())?;
        let (head, incoming) = response.into_parts();
        let body = crate::body::collect(crate::body::stream(incoming), limit)
            .await
            .map_err(|e| format!("upstream `{}`: reading the body: {e}", self.name))?;
        Ok(Response::from_parts(head, body))
    }
}
