//! A plugin configured for one route: warm instances, each initialised with
//! the route's configuration, checked out for a call and reused (a call
//! into a warm instance is about a microsecond, a fresh one ~25 µs). An
//! instance that fails is thrown away; one that served enough requests,
//! grew its memory too far or kept a handle past its call is recycled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::answer::{Answer, ResponseAnswer};
use crate::connection::{ConnectVerdict, Connection};
use crate::error::{BUSY, FilterFailure, PluginError};
use crate::exchange::Exchange;
use crate::instance::Instance;
use crate::kinds::Kind;
use crate::plugin::{Plugin, PluginCode};
use crate::proxy_wasm::{Context, RouteFilter};
use crate::slots::Slot;

/// Idle instances kept per filter; more are created under load and dropped after.
const MAX_IDLE: usize = 64;

/// A plugin with one route's configuration, ready to be called.
pub struct Filter {
    plugin: Arc<Plugin>,
    /// The route's configuration for it, as JSON.
    config: String,
    /// Whether calls may read and replace bodies.
    body_access: bool,
    /// Whether `on-response` is worth calling: cleared when the plugin says
    /// it does nothing, so a filter without a response phase costs one call.
    response_phase: AtomicBool,
    /// Calls made: request phase, response phase.
    calls: [Counter; 2],
    /// How long they took, likewise.
    call_seconds: [Histogram; 2],
    idle: Arc<Idle>,
    /// For a proxy-wasm plugin: its root context for this route (its VMs
    /// take the place of the idle instances).
    proxy: Option<RouteFilter>,
}

/// Idle instances, shared with the leases that return to them.
struct Idle {
    #[allow(
        clippy::vec_box,
        reason = "an instance moves out and back on every call: a pointer, not its whole size"
    )]
    instances: Mutex<Vec<Box<Instance>>>,
    max_uses: u32,
}

impl Idle {
    /// Keep a healthy instance for the next call.
    fn put(&self, instance: Box<Instance>) {
        if instance.uses >= self.max_uses || instance.bloated() || instance.spoiled {
            return;
        }
        let mut idle = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(instance);
        }
    }
}

/// What a request keeps of a filter from its request call to its response
/// call: the instance both reach (a component that asked to keep it), or
/// its HTTP context (a proxy-wasm filter).
pub struct Lease(Held);

enum Held {
    Instance(InstanceLease),
    Context(Context),
}

/// An instance checked out of a filter, which no other request uses in
/// between. Dropped, it goes back to its filter's idle instances.
struct InstanceLease {
    instance: Option<Box<Instance>>,
    /// The plugin's `max_concurrency` slot, held as long as the instance is.
    _slot: Slot,
    idle: Arc<Idle>,
}

impl Drop for InstanceLease {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.idle.put(instance);
        }
    }
}

impl Filter {
    /// `plugin` with a route's `config` (JSON); creates one instance now, so
    /// a plugin that rejects its configuration is reported at load time.
    pub async fn new(
        plugin: Arc<Plugin>,
        config: String,
        body_access: bool,
    ) -> Result<Filter, PluginError> {
        let (first, proxy) = match &plugin.code {
            PluginCode::ProxyWasm(module) => {
                let route = RouteFilter::new(module.clone(), config.clone(), body_access).await?;
                (Vec::new(), Some(route))
            }
            PluginCode::Component { .. } => {
                (vec![Box::new(Instance::new(&plugin, &config).await?)], None)
            }
        };
        let calls = ["request", "response"].map(|phase| plugin.caps.calls(phase));
        let call_seconds = ["request", "response"].map(|phase| plugin.caps.call_seconds(phase));
        Ok(Filter {
            response_phase: AtomicBool::new(plugin.kind.has_response_phase()),
            idle: Arc::new(Idle {
                instances: Mutex::new(first),
                max_uses: plugin.max_requests,
            }),
            plugin,
            config,
            body_access,
            calls,
            call_seconds,
            proxy,
        })
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Its kind, which decides its phase.
    pub fn kind(&self) -> Kind {
        self.plugin.kind
    }

    /// Whether it reads and replaces bodies, so the proxy must buffer them.
    pub fn body_access(&self) -> bool {
        self.body_access
    }

    /// Whether its response phase runs on a reply it made itself: a
    /// proxy-wasm filter's does, as in Envoy; a component's does not.
    pub fn sees_own_reply(&self) -> bool {
        self.proxy.is_some()
    }

    /// Whether it has a response phase that may act.
    pub fn has_response_phase(&self) -> bool {
        self.response_phase.load(Ordering::Relaxed)
    }

    /// The request call. A filter with a response phase whose call asked to
    /// keep its instance (or built for a contract that always kept it) hands
    /// it back as a [`Lease`], for [`Filter::on_response`] of the same request;
    /// otherwise the instance goes straight back to the idle ones.
    pub async fn on_request(
        &self,
        exchange: &mut Box<Exchange>,
    ) -> Result<(Answer, Option<Lease>), FilterFailure> {
        if let Some(proxy) = &self.proxy {
            self.calls[0].inc();
            let started = Instant::now();
            let called = proxy.on_request(exchange).await;
            self.call_seconds[0].observe(started.elapsed().as_secs_f64());
            let (answer, context) = called?;
            return Ok((answer, Some(Lease(Held::Context(context)))));
        }
        let mut lease = self.checkout().await?;
        self.calls[0].inc();
        let instance = lease.instance.as_mut().expect("a lease holds its instance");
        let called = instance.request(exchange, self.body_access).await;
        self.call_seconds[0].observe(instance.call_took().as_secs_f64());
        match called {
            Ok((answer, asked_to_keep)) => {
                instance.uses += 1;
                let keep = asked_to_keep || self.plugin.always_kept();
                let lease = Lease(Held::Instance(lease));
                Ok((answer, (keep && self.has_response_phase()).then_some(lease)))
            }
            Err(error) => Err(self.failed(lease, &error)),
        }
    }

    /// The response call, in the instance `lease` kept since the request
    /// call (or any instance, without one).
    pub async fn on_response(
        &self,
        exchange: &mut Box<Exchange>,
        lease: Option<Lease>,
    ) -> Result<ResponseAnswer, FilterFailure> {
        let mut lease = match (lease, &self.proxy) {
            (Some(Lease(Held::Context(context))), Some(proxy)) => {
                self.calls[1].inc();
                let started = Instant::now();
                let called = proxy.on_response(exchange, context).await;
                self.call_seconds[1].observe(started.elapsed().as_secs_f64());
                return called;
            }
            // A proxy-wasm filter whose request never reached it has no context.
            (_, Some(_)) => return Ok(ResponseAnswer::Done),
            (Some(Lease(Held::Instance(lease))), None) => lease,
            (_, None) => self.checkout().await?,
        };
        self.calls[1].inc();
        let instance = lease.instance.as_mut().expect("a lease holds its instance");
        let called = instance.response(exchange, self.body_access).await;
        self.call_seconds[1].observe(instance.call_took().as_secs_f64());
        match called {
            Ok(ResponseAnswer::Unused) => {
                if self.response_phase.swap(false, Ordering::Relaxed) {
                    tracing::debug!(
                        plugin = &*self.plugin.name,
                        "no response phase: no longer called"
                    );
                }
                Ok(ResponseAnswer::Unused)
            }
            Ok(answer) => Ok(answer),
            Err(error) => Err(self.failed(lease, &error)),
        }
    }

    /// The connection call (connection filters): the instance goes straight
    /// back to the idle ones.
    pub async fn on_connect(&self, conn: &Connection) -> Result<ConnectVerdict, FilterFailure> {
        let mut lease = self.checkout().await?;
        self.calls[0].inc();
        let instance = lease.instance.as_mut().expect("a lease holds its instance");
        let called = instance.connect(conn).await;
        self.call_seconds[0].observe(instance.call_took().as_secs_f64());
        match called {
            Ok(verdict) => {
                instance.uses += 1;
                Ok(verdict)
            }
            Err(error) => Err(self.failed(lease, &error)),
        }
    }

    /// An instance for a call, with the plugin's permit for a call in flight.
    async fn checkout(&self) -> Result<InstanceLease, FilterFailure> {
        let plugin = &self.plugin;
        let slot = match plugin.slots.try_take() {
            Some(slot) => slot,
            None => Box::pin(plugin.slots.take(plugin.call_timeout))
                .await
                .ok_or_else(|| plugin.failed("busy", BUSY))?,
        };
        let idle = self
            .idle
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let instance = match idle {
            Some(instance) => instance,
            // Boxed: instantiating takes a kilobyte of future that a call
            // finding a warm instance (nearly all) should not carry.
            None => Box::new(
                Box::pin(Instance::new(plugin, &self.config))
                    .await
                    .map_err(|e| plugin.failed("start_failed", e.to_string()))?,
            ),
        };
        Ok(InstanceLease {
            instance: Some(instance),
            _slot: slot,
            idle: self.idle.clone(),
        })
    }

    /// A failed call: its instance is thrown away, and the failure counted.
    fn failed(&self, mut lease: InstanceLease, error: &wasmtime::Error) -> FilterFailure {
        let instance = lease.instance.take().expect("a lease holds its instance");
        let (why, reason) = instance.describe(error);

        tracing::debug!(
            plugin = &*self.plugin.name,
            "filter failed, instance replaced: {reason}"
        );
        self.plugin.failed(why, reason)
    }
}
