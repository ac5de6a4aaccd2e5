//! Unmodified proxy-wasm filters (ABI 0.2.1 and 0.2.0, as Envoy, Istio and
//! Kong run them), beside components, under the same sandbox and limits.
//!
//! A proxy-wasm VM serves many requests' contexts, so the mapping is
//! Envoy's: each plugin has one VM per worker thread, made on first use; a
//! request takes one (in turn) for its whole life, and the VM's callbacks
//! run one at a time, a request's between another's. A root context is made
//! per route configuration (`proxy_on_configure` gets the route's `config`
//! as JSON, or as it is when it is a string). A VM that traps is thrown
//! away with the requests it was serving, and made again on next use.
//! Shared data and queues are kept by the host, so every VM of a plugin
//! (and the next configuration's) sees them. A paused request waits for
//! its outbound calls without holding a thread, and without its VM.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::InstancePre;

pub(crate) mod abi;
mod host;
pub(crate) mod shared;
mod vm;

pub use shared::{ProxyData, SharedData};

pub(crate) use host::link;
pub(crate) use vm::VmState;
use vm::{CallAnswer, Dispatch, Lent, Vm};

use crate::answer::{Answer, Reply, ResponseAnswer};
use crate::capability::Capabilities;
use crate::cpu::CpuShare;
use crate::error::{BUSY, FilterFailure, PluginError};
use crate::exchange::Exchange;
use crate::slots::{Slot, Slots};

/// The ABI version a core module declares, if it is a proxy-wasm filter.
pub(crate) fn abi_of(module: &wasmtime::Module) -> Option<&'static str> {
    abi::VERSIONS
        .into_iter()
        .find(|(marker, _)| module.exports().any(|e| e.name() == *marker))
        .map(|(_, version)| version)
}

/// Metrics a filter defined: kept here (for `proxy_get_metric`) and, when
/// granted `metrics`, exported as the plugin's own.
#[derive(Default)]
struct Metrics(Mutex<Vec<(i32, String, Arc<AtomicI64>)>>);

impl Metrics {
    fn define(&self, kind: i32, name: &str) -> Option<u32> {
        if !(0..=2).contains(&kind) {
            return None;
        }
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = all.iter().position(|(_, n, _)| n == name) {
            return Some(i as u32 + 1);
        }
        all.push((kind, name.to_owned(), Arc::default()));
        Some(all.len() as u32)
    }

    fn find(&self, id: u32) -> Option<(i32, String, Arc<AtomicI64>)> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.get((id as usize).checked_sub(1)?).cloned()
    }

    fn increment(&self, plugin: &Limits, id: u32, offset: i64) -> i32 {
        let Some((kind, name, value)) = self.find(id) else {
            return abi::status::NOT_FOUND;
        };
        let now = value.fetch_add(offset, Ordering::Relaxed) + offset;
        plugin.export(kind, &name, offset, now);
        abi::status::OK
    }

    fn record(&self, plugin: &Limits, id: u32, recorded: u64) -> i32 {
        let Some((kind, name, value)) = self.find(id) else {
            return abi::status::NOT_FOUND;
        };
        value.store(recorded as i64, Ordering::Relaxed);
        plugin.export(kind, &name, 0, recorded as i64);
        abi::status::OK
    }

    fn get(&self, id: u32) -> Option<u64> {
        self.find(id)
            .map(|(_, _, v)| v.load(Ordering::Relaxed) as u64)
    }
}

/// A proxy-wasm metric's name as a Prometheus one (`a.b-c` → `a_b_c`).
fn exported(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// What a plugin's VMs run under.
pub(crate) struct Limits {
    pub(crate) name: Arc<str>,
    pub(crate) fail_open: bool,
    pub(crate) slots: Arc<Slots>,
    pub(crate) memory_limit: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) cpu: Arc<CpuShare>,
    pub(crate) caps: Arc<Capabilities>,
}

impl Limits {
    /// Export a metric's change as the plugin's own (with `metrics`
    /// granted): a counter by what it grew, a gauge as it is now, a
    /// histogram's recorded value.
    fn export(&self, kind: i32, name: &str, grew: i64, now: i64) {
        let metrics = &self.caps.metrics;
        let name = exported(name);
        let _ = match kind {
            0 if grew > 0 => metrics.counter(&name, Vec::new(), grew as u64),
            1 => metrics.gauge(&name, Vec::new(), now),
            2 => metrics.histogram(&name, Vec::new(), now as f64),
            _ => Ok(()),
        };
    }
}

/// A loaded proxy-wasm plugin: its code, its VMs, its host-kept state.
pub(crate) struct Module {
    pub(crate) plugin: Limits,
    pub(crate) pre: InstancePre<VmState>,
    pub(crate) vm_config: Bytes,
    pub(crate) data: Arc<SharedData>,
    metrics: Metrics,
    vms: Vec<tokio::sync::Mutex<Option<Vm>>>,
    next: AtomicUsize,
}

/// How often the driver looks for ticks due and queues with items.
const DRIVE_EVERY: Duration = Duration::from_millis(10);

impl Module {
    /// A plugin of `pre`, with one VM slot per worker thread.
    pub(crate) fn new(
        plugin: Limits,
        pre: InstancePre<VmState>,
        vm_config: Bytes,
        data: Arc<SharedData>,
    ) -> Arc<Module> {
        let workers =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        let module = Arc::new(Module {
            plugin,
            pre,
            vm_config,
            data,
            metrics: Metrics::default(),
            vms: (0..workers.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(drive(Arc::downgrade(&module)));
        }
        module
    }

    /// Shared data `key`: in the `[state]` Redis when the plugin's state is
    /// the cluster's (this process's while Redis cannot answer), else here.
    async fn shared_get(&self, key: &str) -> Option<(Bytes, u32)> {
        if let Some(redis) = &self.plugin.caps.shared_store {
            match redis
                .shared_get(&format!("{}\0{key}", self.plugin.name))
                .await
            {
                Ok(found) => return found,
                Err(_) => redis.metrics().fell_back("shared_data", "local"),
            }
        }
        self.data.get(key)
    }

    /// Set shared data `key` if `cas` is 0 or its version; false on a mismatch.
    async fn shared_set(&self, key: String, value: Bytes, cas: u32) -> bool {
        if let Some(redis) = &self.plugin.caps.shared_store {
            let namespaced = format!("{}\0{key}", self.plugin.name);
            match redis.shared_set(&namespaced, value.clone(), cas).await {
                Ok(set) => return set,
                Err(_) => redis.metrics().fell_back("shared_data", "local"),
            }
        }
        self.data.set(key, value, cas)
    }

    /// Lock VM `i`, making it if it is not there (or was thrown away).
    async fn vm(
        self: &Arc<Self>,
        i: usize,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Vm>>, wasmtime::Error> {
        let mut slot = self.vms[i].lock().await;
        if slot.is_none() {
            *slot = Some(Box::pin(Vm::new(self)).await?);
        }
        Ok(slot)
    }

    /// Make the root context for `config` in VM 0: at load, so a filter
    /// refusing its configuration is reported then, and a plugin with a
    /// root context alone (timers and logs) runs without a request.
    pub(crate) async fn configure(self: &Arc<Self>, config: &str) -> Result<(), PluginError> {
        let fail = |reason: String| PluginError::Instantiate {
            plugin: self.plugin.name.to_string(),
            reason,
        };
        let mut slot = self.vm(0).await.map_err(|e| fail(format!("{e:#}")))?;
        let vm = slot.as_mut().expect("made");
        match vm.root(config).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(PluginError::Rejected {
                plugin: self.plugin.name.to_string(),
                message: "proxy_on_configure (or proxy_on_vm_start) returned false".into(),
            }),
            Err(e) => {
                let reason = describe(vm, &e).1;
                *slot = None;
                Err(fail(reason))
            }
        }
    }
}

/// The reason label and account of a failure in `vm`.
fn describe(vm: &Vm, error: &wasmtime::Error) -> (&'static str, String) {
    let state = vm.store.data();
    let reason = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "timeout",
        Some(wasmtime::Trap::StackOverflow) => "stack_overflow",
        _ if error.is::<crate::cpu::WallLimit>() => "timeout",
        _ if state.memory.refused => "out_of_memory",
        _ => "trap",
    };
    (
        reason,
        crate::error::describe_failure(error, &state.stderr.contents()),
    )
}

/// Ticks and queue notices, for as long as the plugin lives.
async fn drive(module: Weak<Module>) {
    let started = Instant::now();
    let mut due: std::collections::HashMap<(usize, u32), Duration> = Default::default();
    loop {
        tokio::time::sleep(DRIVE_EVERY).await;
        let Some(module) = module.upgrade() else {
            return;
        };
        let ready = module.data.take_ready();
        for i in 0..module.vms.len() {
            let mut slot = module.vms[i].lock().await;
            let Some(vm) = slot.as_mut() else {
                continue;
            };
            let now = started.elapsed();
            let ticks: Vec<(u32, Duration)> = vm
                .store
                .data()
                .ticks
                .iter()
                .filter(|(_, p)| !p.is_zero())
                .map(|(r, p)| (*r, *p))
                .collect();
            let mut failed = None;
            for (root, period) in ticks {
                let next = due.entry((i, root)).or_insert(now + period);
                if now >= *next {
                    *next = now + period;
                    if let Err(e) = vm.tick(root).await {
                        failed = Some(e);
                        break;
                    }
                }
            }
            for (root, queue) in &ready {
                if failed.is_none() && vm.store.data().roots.contains_key(root) {
                    failed = vm.queue_ready(*root, *queue).await.err();
                }
            }
            let calls = vm.dispatched();
            if let Some(e) = failed {
                let (why, reason) = describe(vm, &e);
                module.plugin.caps.count_failure(why, true);
                tracing::warn!(
                    plugin = &*module.plugin.name,
                    "a root context failed, VM replaced: {reason}"
                );
                *slot = None;
                continue;
            }
            drop(slot);
            // A root context's outbound calls answer it in its VM.
            for call in calls {
                tokio::spawn(answer_later(module.clone(), i, call));
            }
        }
    }
}

/// Make `call` and give its answer to the context that made it in VM `vm`,
/// if that context is still there.
async fn answer_later(module: Arc<Module>, vm: usize, call: Dispatch) {
    let (token, id) = (call.token, call.context);
    let answer = send(&module, call).await;
    if let Ok(mut slot) = module.vm(vm).await
        && let Some(v) = slot.as_mut()
        && v.store.data().contexts.contains_key(&id)
        && v.call_response(id, token, answer, &mut None).await.is_err()
    {
        *slot = None;
    }
}

/// Make an outbound call a filter dispatched: its answer, or `None` if it failed.
async fn send(module: &Module, call: Dispatch) -> Option<CallAnswer> {
    let (upstream, _) = module.plugin.caps.outbound.upstream(&call.upstream).ok()?;
    let sent = tokio::time::timeout(call.timeout, upstream.send(call.request, 1 << 20)).await;
    let response = sent.ok()?.ok()?;
    let (head, body) = response.into_parts();
    let mut headers = vec![(
        b":status".to_vec(),
        head.status.as_str().as_bytes().to_vec(),
    )];
    headers.extend(
        head.headers
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    Some(CallAnswer { headers, body })
}

/// A route's use of a proxy-wasm plugin: its root context's configuration.
pub(crate) struct RouteFilter {
    pub(crate) module: Arc<Module>,
    config: String,
    body_access: bool,
}

/// Which way a request's callbacks go.
#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

/// The request, moved out of `exchange` to be lent to a call.
fn lend(exchange: &mut Box<Exchange>) -> Lent {
    Lent {
        exchange: std::mem::replace(exchange, Exchange::placeholder()),
        reply: None,
        continued: false,
    }
}

/// One request's HTTP context, from its request headers to its end.
pub struct Context {
    module: Arc<Module>,
    vm: usize,
    id: u32,
    ended: bool,
    _slot: Slot,
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // A request that ended early (another filter answered, the client
        // left): its context still gets its last callbacks.
        let (module, vm, id) = (self.module.clone(), self.vm, self.id);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                if let Ok(mut slot) = module.vm(vm).await
                    && let Some(v) = slot.as_mut()
                    && v.finish(id, &mut None).await.is_err()
                {
                    *slot = None;
                }
            });
        }
    }
}

impl RouteFilter {
    /// `module` with a route's `config`; configured now, in VM 0.
    pub(crate) async fn new(
        module: Arc<Module>,
        config: String,
        body_access: bool,
    ) -> Result<RouteFilter, PluginError> {
        // A TOML string is given as it is; anything else as JSON.
        let config = match serde_json::from_str::<serde_json::Value>(&config) {
            Ok(serde_json::Value::String(text)) => text,
            _ => config,
        };
        module.configure(&config).await?;
        Ok(RouteFilter {
            module,
            config,
            body_access,
        })
    }

    fn failed(&self, why: &'static str, reason: String) -> FilterFailure {
        let plugin = &self.module.plugin;
        plugin.caps.count_failure(why, plugin.fail_open);
        FilterFailure::new(plugin.name.clone(), why, reason)
    }

    /// The request's callbacks: headers, then the body when the route buffers
    /// it. The context is kept for the response.
    pub(crate) async fn on_request(
        &self,
        exchange: &mut Box<Exchange>,
    ) -> Result<(Answer, Context), FilterFailure> {
        let module = &self.module;
        let slot =
            (module.plugin.slots.try_take()).ok_or_else(|| self.failed("busy", BUSY.into()))?;
        let vm = module.next.fetch_add(1, Ordering::Relaxed) % module.vms.len();
        let config = &self.config;
        let id = self
            .on_vm(vm, async |v: &mut Vm| {
                let root = (v.root(config).await?)
                    .ok_or_else(|| wasmtime::Error::msg("its configuration was refused"))?;
                v.context(root).await
            })
            .await?;
        let context = Context {
            module: module.clone(),
            vm,
            id,
            ended: false,
            _slot: slot,
        };
        let headers = exchange.request.headers.len() as i32 + 4;
        let reply = self
            .callbacks(&context, exchange, Direction::Request, headers)
            .await?;
        Ok((reply.map_or(Answer::Next, Answer::Reply), context))
    }

    /// The response's callbacks, then the context's end.
    pub(crate) async fn on_response(
        &self,
        exchange: &mut Box<Exchange>,
        mut context: Context,
    ) -> Result<ResponseAnswer, FilterFailure> {
        let headers = (exchange.response.as_ref()).map_or(0, |r| r.headers.len() as i32 + 1);
        let reply = self
            .callbacks(&context, exchange, Direction::Response, headers)
            .await?;
        if let Some(reply) = reply {
            // A local response in the response phase replaces the upstream's.
            if let Some(head) = exchange.response.as_mut() {
                head.status = http::StatusCode::from_u16(reply.status)
                    .unwrap_or(http::StatusCode::BAD_GATEWAY);
                head.headers.clear();
                for (k, v) in &reply.headers {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::try_from(k.as_str()),
                        http::HeaderValue::try_from(v.as_str()),
                    ) {
                        head.headers.append(k, v);
                    }
                }
            }
            exchange.response_body = Some(Bytes::from(reply.body));
            exchange.response_trailers = None;
        }
        let (id, mut lent) = (context.id, Some(lend(exchange)));
        let ended = self
            .on_vm(context.vm, async |vm: &mut Vm| {
                vm.finish(id, &mut lent).await
            })
            .await;
        if let Some(back) = lent {
            *exchange = back.exchange;
        }
        context.ended = true;
        if let Err(failure) = ended {
            tracing::debug!(
                plugin = &*self.module.plugin.name,
                "on_log/on_done failed: {failure}"
            );
        }
        Ok(ResponseAnswer::Done)
    }

    /// A direction's callbacks: its headers', then its body's when the route
    /// buffers bodies; the local response one of them sent, if any.
    async fn callbacks(
        &self,
        context: &Context,
        exchange: &mut Box<Exchange>,
        direction: Direction,
        headers: i32,
    ) -> Result<Option<Reply>, FilterFailure> {
        let (names, body, trailers) = match direction {
            Direction::Request => (
                [
                    "proxy_on_request_headers",
                    "proxy_on_request_body",
                    "proxy_on_request_trailers",
                ],
                &exchange.request_body,
                &exchange.request_trailers,
            ),
            Direction::Response => (
                [
                    "proxy_on_response_headers",
                    "proxy_on_response_body",
                    "proxy_on_response_trailers",
                ],
                &exchange.response_body,
                &exchange.response_trailers,
            ),
        };
        let body = body
            .as_ref()
            .filter(|b| self.body_access && !b.is_empty())
            .map(|b| b.len() as i32);
        let trailers = trailers.as_ref().map(|t| t.len() as i32);
        // Each part is the stream's end when none of the later ones follow.
        let parts = [
            (Some(headers), body.is_none() && trailers.is_none()),
            (body, trailers.is_none()),
            (trailers, true),
        ];
        for (i, (name, (size, end))) in names.into_iter().zip(parts).enumerate() {
            let Some(size) = size else { continue };
            let end = (i < 2).then_some(end);
            if let Some(reply) = self.stream(context, name, size, end, exchange).await? {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    /// Run `work` on VM `i`; a failure throws the VM away and is counted.
    async fn on_vm<T>(
        &self,
        i: usize,
        work: impl AsyncFnOnce(&mut Vm) -> wasmtime::Result<T>,
    ) -> Result<T, FilterFailure> {
        let mut slot =
            (self.module.vm(i).await).map_err(|e| self.failed("start_failed", format!("{e:#}")))?;
        let vm = slot.as_mut().expect("made");
        match work(vm).await {
            Ok(done) => Ok(done),
            Err(e) => {
                let (why, reason) = describe(vm, &e);
                *slot = None;
                Err(self.failed(why, reason))
            }
        }
    }

    /// One stream callback, and what it leads to while it pauses: its
    /// outbound calls made and answered, until it resumes or replies. `end`
    /// is its `end_of_stream` (trailers have none: they are the end).
    async fn stream(
        &self,
        context: &Context,
        name: &'static str,
        size: i32,
        end: Option<bool>,
        exchange: &mut Box<Exchange>,
    ) -> Result<Option<Reply>, FilterFailure> {
        let mut lent = Some(lend(exchange));
        let paused = self.paused(context, name, size, end, &mut lent).await;
        let lent = lent.expect("every call gives the request back");
        *exchange = lent.exchange;
        paused.map(|()| lent.reply)
    }

    /// `stream`'s work, with the request lent to each call in turn.
    async fn paused(
        &self,
        context: &Context,
        name: &'static str,
        size: i32,
        end: Option<bool>,
        lent: &mut Option<Lent>,
    ) -> Result<(), FilterFailure> {
        let limit = self
            .module
            .plugin
            .call_timeout
            .max(Duration::from_millis(100))
            * 10;
        let deadline = Instant::now() + limit;
        let id = context.id;
        let (action, mut pending) = self
            .on_vm(context.vm, async |vm: &mut Vm| {
                let action = vm.stream_call(name, id, size, end, lent).await?;
                Ok((action, vm.dispatched()))
            })
            .await?;
        let replied = |lent: &Option<Lent>| lent.as_ref().is_some_and(|l| l.reply.is_some());
        let mut paused = action == abi::ACTION_PAUSE;
        while paused && !replied(lent) {
            let Some(call) = pending.pop() else {
                if end == Some(false) {
                    // Paused for the rest of the stream, which is here already.
                    break;
                }
                return Err(self.failed(
                    "invalid_answer",
                    format!("{name} paused with nothing to resume it (no outbound call in flight)"),
                ));
            };
            let (token, caller) = (call.token, call.context);
            // Waits without the VM: other requests' callbacks run meanwhile.
            let answer = tokio::time::timeout_at(deadline.into(), send(&self.module, call))
                .await
                .unwrap_or_default();
            if let Some(lent) = lent.as_mut() {
                lent.continued = false;
            }
            let more = self
                .on_vm(context.vm, async |vm: &mut Vm| {
                    vm.call_response(caller, token, answer, lent).await?;
                    Ok(vm.dispatched())
                })
                .await?;
            pending.extend(more);
            paused = !lent.as_ref().is_some_and(|l| l.continued);
        }
        // Calls dispatched without pausing: made and answered in the background.
        for call in pending {
            tokio::spawn(answer_later(self.module.clone(), context.vm, call));
        }
        Ok(())
    }
}
