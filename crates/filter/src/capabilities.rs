//! Host capabilities beyond logging and the clock: the key-value store,
//! outbound HTTP and metrics. Each is refused unless the plugin's
//! configuration grants it; a refusal is an error the plugin can handle, and
//! the log and `sluice_capability_denied_total` name the plugin and the grant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderName, HeaderValue, Method, Request, Uri};

use super::bindings::{kv, metrics, outbound};
use super::instance::FilterState;
use crate::config::{Grant, PluginConfig};
use crate::metrics::{MetricError, Metrics, labels};
use crate::state::StateStore;
use prometheus_client::metrics::counter::Counter;

/// Largest outbound response body handed to a plugin.
const MAX_OUTBOUND_BODY: usize = 8 << 20;
/// Most requests in one `send-all`.
const MAX_BATCH: usize = 16;

/// A named upstream a plugin may call, as the gateway offers it: the host
/// picks the server and reuses connections.
#[async_trait::async_trait]
pub trait HttpUpstream: Send + Sync {
    /// Its name in the configuration.
    fn name(&self) -> &str;
    /// Send `request` and read the whole response, refusing a body over `limit` bytes.
    async fn send(
        &self,
        request: Request<Bytes>,
        limit: usize,
    ) -> Result<http::Response<Bytes>, String>;
}

/// What one plugin may use, and the host parts behind it.
pub struct Capabilities {
    plugin: Arc<str>,
    kv: bool,
    metrics: bool,
    /// Only the upstreams granted, by name.
    http: HashMap<String, Arc<dyn HttpUpstream>>,
    outbound_timeout: Duration,
    store: Arc<dyn StateStore>,
    registry: Arc<Metrics>,
}

impl Capabilities {
    /// The grants of plugin `name`, bound to the gateway's upstreams, store and metrics.
    pub fn new(
        name: &str,
        config: &PluginConfig,
        upstreams: &HashMap<String, Arc<dyn HttpUpstream>>,
        store: Arc<dyn StateStore>,
        registry: Arc<Metrics>,
    ) -> Capabilities {
        let mut caps = Capabilities {
            plugin: name.into(),
            kv: false,
            metrics: false,
            http: HashMap::new(),
            outbound_timeout: config.outbound_timeout,
            store,
            registry,
        };
        for grant in config.grants() {
            match grant {
                Grant::Kv => caps.kv = true,
                Grant::Metrics => caps.metrics = true,
                Grant::Http(upstream) => {
                    if let Some(u) = upstreams.get(&upstream) {
                        caps.http.insert(upstream, u.clone());
                    }
                }
            }
        }
        caps
    }

    /// The counter of this plugin's calls in `phase`.
    pub(crate) fn calls(&self, phase: &str) -> Counter {
        self.registry
            .filter_calls
            .get_or_create(&labels([("plugin", &self.plugin), ("phase", phase)]))
            .clone()
    }

    /// Count a failed call (trap, timeout, limit) of this plugin.
    pub(crate) fn count_failure(&self) {
        self.registry
            .filter_failures
            .get_or_create(&labels([("plugin", &self.plugin)]))
            .inc();
    }

    /// Refuse a call for want of `grant`, saying so in the log and the metrics.
    fn denied(&self, grant: &Grant) -> String {
        tracing::warn!(
            plugin = &*self.plugin,
            %grant,
            "capability refused: plugin `{}` has no `{grant}` grant",
            self.plugin
        );
        self.registry
            .capability_denied
            .get_or_create(&labels([
                ("plugin", &self.plugin),
                ("grant", &grant.to_string()),
            ]))
            .inc();
        format!(
            "capability refused: `{grant}` is not granted (add it to `plugins.{}.grants`)",
            self.plugin
        )
    }

    /// The store, namespaced key in hand, if `kv` is granted.
    fn kv(&self, key: &str) -> Result<(Arc<dyn StateStore>, String), String> {
        if !self.kv {
            return Err(self.denied(&Grant::Kv));
        }
        Ok((self.store.clone(), format!("{}\0{key}", self.plugin)))
    }

    async fn send(
        &self,
        mut req: outbound::OutboundRequest,
    ) -> Result<outbound::OutboundResponse, String> {
        let Some(upstream) = self.http.get(&req.upstream) else {
            return Err(self.denied(&Grant::Http(req.upstream)));
        };
        let request = build_request(&mut req)?;
        let limit = req
            .timeout_millis
            .map_or(self.outbound_timeout, |ms| Duration::from_millis(ms.into()))
            .min(self.outbound_timeout);
        let exchange = async {
            let response = upstream.send(request, MAX_OUTBOUND_BODY).await?;
            let (head, body) = response.into_parts();
            Ok(outbound::OutboundResponse {
                status: head.status.as_u16(),
                headers: head
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "upstream `{}` timed out after {limit:?}",
                    upstream.name()
                ))
            })
    }
}

fn build_request(req: &mut outbound::OutboundRequest) -> Result<Request<Bytes>, String> {
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("invalid method `{}`", req.method))?;
    let uri: Uri = match req.path.starts_with('/') {
        true => req
            .path
            .parse()
            .map_err(|_| format!("invalid path `{}`", req.path))?,
        false => return Err(format!("the path must start with `/`: `{}`", req.path)),
    };
    let mut request = Request::new(Bytes::from(std::mem::take(&mut req.body)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    for (name, value) in &req.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("invalid value for header `{name}`"))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

impl FilterState {
    /// Run a host-side wait, counting it out of the guest's call deadline.
    async fn waiting<T>(&mut self, wait: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = wait.await;
        self.clock.waited(started.elapsed());
        result
    }
}

fn millis(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl kv::Host for FilterState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        let (store, key) = match self.caps.kv(&key) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        let value = self.waiting(store.get(&key)).await;
        Ok(value
            .map(|v| v.map(|b| b.to_vec()))
            .map_err(|e| e.to_string()))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_millis: Option<u64>,
    ) -> wasmtime::Result<Result<(), String>> {
        let (store, key) = match self.caps.kv(&key) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        let done = self
            .waiting(store.set(&key, Bytes::from(value), millis(ttl_millis)))
            .await;
        Ok(done.map_err(|e| e.to_string()))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        let (store, key) = match self.caps.kv(&key) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .waiting(store.delete(&key))
            .await
            .map_err(|e| e.to_string()))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_millis: Option<u64>,
    ) -> wasmtime::Result<Result<i64, String>> {
        let (store, key) = match self.caps.kv(&key) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        let value = self
            .waiting(store.increment(&key, delta, millis(ttl_millis)))
            .await;
        Ok(value.map_err(|e| e.to_string()))
    }

    async fn take(
        &mut self,
        key: String,
        cost: u32,
        capacity: u32,
        window_millis: u64,
    ) -> wasmtime::Result<Result<kv::BucketState, String>> {
        let (store, key) = match self.caps.kv(&key) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        let window = Duration::from_millis(window_millis);
        let admission = self.waiting(store.take(&key, cost, capacity, window)).await;
        Ok(admission
            .map(|a| kv::BucketState {
                allowed: a.allowed,
                remaining: a.remaining,
                retry_after_millis: a.retry_after_millis,
            })
            .map_err(|e| e.to_string()))
    }
}

impl outbound::Host for FilterState {
    async fn send(
        &mut self,
        request: outbound::OutboundRequest,
    ) -> wasmtime::Result<Result<outbound::OutboundResponse, String>> {
        let caps = self.caps.clone();
        Ok(self.waiting(caps.send(request)).await)
    }

    async fn send_all(
        &mut self,
        requests: Vec<outbound::OutboundRequest>,
    ) -> wasmtime::Result<Vec<Result<outbound::OutboundResponse, String>>> {
        if requests.len() > MAX_BATCH {
            let refusal = format!("at most {MAX_BATCH} requests in one send-all");
            return Ok(requests.iter().map(|_| Err(refusal.clone())).collect());
        }
        let caps = self.caps.clone();
        let all = join_all(requests.into_iter().map(|r| caps.send(r)));
        Ok(self.waiting(all).await)
    }
}

impl Capabilities {
    /// Record a plugin metric through `record`, if `metrics` is granted.
    fn metric(
        &self,
        record: impl FnOnce(&Metrics, &str) -> Result<(), MetricError>,
    ) -> wasmtime::Result<Result<(), String>> {
        if !self.metrics {
            return Ok(Err(self.denied(&Grant::Metrics)));
        }
        Ok(record(&self.registry, &self.plugin).map_err(|e| e.to_string()))
    }
}

impl metrics::Host for FilterState {
    fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        self.caps
            .metric(|m, plugin| m.plugin_counter(plugin, &name, labels, value))
    }

    fn histogram_record(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<Result<(), String>> {
        self.caps
            .metric(|m, plugin| m.plugin_histogram(plugin, &name, labels, value))
    }
}
