//! One proxy-wasm VM: a module instance serving many contexts (a root
//! context per route configuration, an HTTP context per request), its calls
//! one at a time, and the state its host functions read and write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Store, TypedFunc, WasmParams, WasmResults};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::Module;
use crate::answer::Reply;
use crate::cpu::CallClock;
use crate::exchange::Exchange;
use crate::state::MemoryLimit;

/// What the guest's stderr may hold for a failure's account.
const STDERR_CAPACITY: usize = 4096;

/// The request a callback runs for, lent for the call, and what the
/// callback did to its flow.
pub(crate) struct Lent {
    pub(crate) exchange: Box<Exchange>,
    /// A local response it sent.
    pub(crate) reply: Option<Reply>,
    /// It resumed its paused stream.
    pub(crate) continued: bool,
}

/// An outbound call a callback dispatched, made by the host after it.
pub(crate) struct Dispatch {
    pub(crate) token: u32,
    pub(crate) context: u32,
    pub(crate) upstream: String,
    pub(crate) request: http::Request<Bytes>,
    pub(crate) timeout: Duration,
}

/// An outbound call's answer, for `proxy_on_http_call_response`.
pub(crate) struct CallAnswer {
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) body: Bytes,
}

/// The host data of one VM's store.
pub(crate) struct VmState {
    pub(crate) module: Arc<Module>,
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) memory: MemoryLimit,
    pub(crate) clock: CallClock,
    pub(crate) stderr: MemoryOutputPipe,
    /// Each root context's configuration.
    pub(crate) roots: HashMap<u32, Bytes>,
    /// The context the running callback acts for.
    pub(crate) effective: u32,
    /// Contexts alive, and the root of each.
    pub(crate) contexts: HashMap<u32, u32>,
    pub(crate) lent: Option<Lent>,
    pub(crate) answer: Option<CallAnswer>,
    pub(crate) dispatched: Vec<Dispatch>,
    /// Tick periods by root context.
    pub(crate) ticks: HashMap<u32, Duration>,
    pub(crate) next_token: u32,
    /// The module's memory and allocator, looked up once (host functions
    /// use them on every read and every value handed back).
    pub(crate) exported: Option<(wasmtime::Memory, TypedFunc<i32, i32>)>,
}

/// A VM: its store and instance, and the root contexts made in it.
pub(crate) struct Vm {
    pub(crate) store: Store<VmState>,
    instance: wasmtime::Instance,
    /// Callbacks looked up by name once, each as the type it is called
    /// with (`None`: the module does not export it).
    callbacks: Vec<(&'static str, Box<dyn std::any::Any + Send + Sync>)>,
    /// Root context ids by configuration.
    roots: HashMap<String, u32>,
    next_id: u32,
}

impl Vm {
    /// Instantiate `module` and run its start function.
    pub(crate) async fn new(module: &Arc<Module>) -> wasmtime::Result<Vm> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No filesystem, environment, arguments or network: WASI is there
        // so standard libraries start.
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build_p1();
        let plugin = &module.plugin;
        let state = VmState {
            module: module.clone(),
            wasi,
            memory: MemoryLimit {
                limit: plugin.memory_limit,
                peak: 0,
                refused: false,
            },
            clock: CallClock::new(plugin.call_timeout, plugin.cpu.clone()),
            stderr,
            roots: HashMap::new(),
            effective: 0,
            contexts: HashMap::new(),
            lent: None,
            answer: None,
            dispatched: Vec::new(),
            ticks: HashMap::new(),
            next_token: 1,
            exported: None,
        };
        let mut store = Store::new(module.pre.module().engine(), state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut store| store.data_mut().clock.tick());
        store.set_epoch_deadline(1);
        store.data_mut().clock.start();
        let instance = module.pre.instantiate_async(&mut store).await?;
        let memory = instance.get_memory(&mut store, "memory");
        let allocate = ["proxy_on_memory_allocate", "malloc"]
            .into_iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok());
        store.data_mut().exported = memory.zip(allocate);
        let mut vm = Vm {
            store,
            instance,
            callbacks: Vec::new(),
            roots: HashMap::new(),
            next_id: 1,
        };
        for start in ["_initialize", "_start", "main"] {
            if vm.instance.get_func(&mut vm.store, start).is_some() {
                if start == "main" {
                    vm.call::<(i32, i32), i32>(start, (0, 0)).await?;
                } else {
                    vm.call::<(), ()>(start, ()).await?;
                }
                break;
            }
        }
        Ok(vm)
    }

    /// Call export `name`, if the module has it (`None` if not).
    pub(crate) async fn call<P, R>(
        &mut self,
        name: &'static str,
        params: P,
    ) -> wasmtime::Result<Option<R>>
    where
        P: WasmParams + Send + Sync + 'static,
        R: WasmResults + Send + Sync + 'static,
    {
        let Some(func) = self.callback::<P, R>(name)? else {
            return Ok(None);
        };
        self.store.data_mut().clock.start();
        self.store.set_epoch_deadline(1);
        func.call_async(&mut self.store, params).await.map(Some)
    }

    /// Export `name` as a function of `P` to `R`, looked up on first use.
    fn callback<P, R>(&mut self, name: &'static str) -> wasmtime::Result<Option<TypedFunc<P, R>>>
    where
        P: WasmParams + Send + Sync + 'static,
        R: WasmResults + Send + Sync + 'static,
    {
        let cached = self.callbacks.iter().find(|(n, _)| *n == name);
        if let Some(func) = cached.and_then(|(_, f)| f.downcast_ref::<Option<TypedFunc<P, R>>>()) {
            return Ok(func.clone());
        }
        let func = match self.instance.get_func(&mut self.store, name) {
            Some(func) => Some(func.typed::<P, R>(&self.store)?),
            None => None,
        };
        self.callbacks.push((name, Box::new(func.clone())));
        Ok(func)
    }

    /// The root context for `config`, made (and configured) if new here;
    /// `Err(Ok(()))`-like refusals come back as `Ok(None)`.
    pub(crate) async fn root(&mut self, config: &str) -> wasmtime::Result<Option<u32>> {
        if let Some(id) = self.roots.get(config) {
            return Ok(Some(*id));
        }
        let id = self.next_id;
        self.next_id += 1;
        let state = self.store.data_mut();
        state.roots.insert(id, Bytes::from(config.to_owned()));
        state.contexts.insert(id, id);
        state.effective = id;
        self.call::<(i32, i32), ()>("proxy_on_context_create", (id as i32, 0))
            .await?;
        let vm_config = self.store.data().module.vm_config.len() as i32;
        let started = self
            .call::<(i32, i32), i32>("proxy_on_vm_start", (id as i32, vm_config))
            .await?;
        let configured = self
            .call::<(i32, i32), i32>("proxy_on_configure", (id as i32, config.len() as i32))
            .await?;
        if started == Some(0) || configured == Some(0) {
            return Ok(None);
        }
        self.roots.insert(config.to_owned(), id);
        Ok(Some(id))
    }

    /// A new HTTP context under `root`.
    pub(crate) async fn context(&mut self, root: u32) -> wasmtime::Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let state = self.store.data_mut();
        state.contexts.insert(id, root);
        state.effective = id;
        self.call::<(i32, i32), ()>("proxy_on_context_create", (id as i32, root as i32))
            .await?;
        Ok(id)
    }

    /// Run a stream callback for context `id` with `lent` lent to it (and
    /// given back); the action it answered. Headers and bodies take their
    /// `end_of_stream`, trailers (`end` of `None`) do not.
    pub(crate) async fn stream_call(
        &mut self,
        name: &'static str,
        id: u32,
        size: i32,
        end: Option<bool>,
        lent: &mut Option<Lent>,
    ) -> wasmtime::Result<i32> {
        self.lend(id, lent);
        let id = id as i32;
        let action = match end {
            Some(end) => self.call(name, (id, size, i32::from(end))).await,
            None => self.call(name, (id, size)).await,
        };
        *lent = self.store.data_mut().lent.take();
        action.map(|a| a.unwrap_or(0))
    }

    /// Deliver an outbound call's answer to the context that made it.
    pub(crate) async fn call_response(
        &mut self,
        id: u32,
        token: u32,
        answer: Option<CallAnswer>,
        lent: &mut Option<Lent>,
    ) -> wasmtime::Result<()> {
        let (headers, body) = answer
            .as_ref()
            .map_or((0, 0), |a| (a.headers.len() as i32, a.body.len() as i32));
        self.lend(id, lent);
        self.store.data_mut().answer = answer;
        let done = self
            .call::<(i32, i32, i32, i32, i32), ()>(
                "proxy_on_http_call_response",
                (id as i32, token as i32, headers, body, 0),
            )
            .await;
        let state = self.store.data_mut();
        state.answer = None;
        *lent = state.lent.take();
        done.map(drop)
    }

    /// The end of context `id`: its log, done and delete callbacks, with
    /// `lent` lent to them (and given back).
    pub(crate) async fn finish(
        &mut self,
        id: u32,
        lent: &mut Option<Lent>,
    ) -> wasmtime::Result<()> {
        self.lend(id, lent);
        let ended = async {
            self.call::<(i32,), ()>("proxy_on_log", (id as i32,))
                .await?;
            self.call::<(i32,), i32>("proxy_on_done", (id as i32,))
                .await?;
            self.call::<(i32,), ()>("proxy_on_delete", (id as i32,))
                .await
        }
        .await;
        let state = self.store.data_mut();
        *lent = state.lent.take();
        state.contexts.remove(&id);
        ended.map(drop)
    }

    /// Make `id` the effective context, with `lent` (if any) lent to it.
    fn lend(&mut self, id: u32, lent: &mut Option<Lent>) {
        let state = self.store.data_mut();
        state.effective = id;
        state.lent = lent.take();
    }

    /// Tick root context `root`.
    pub(crate) async fn tick(&mut self, root: u32) -> wasmtime::Result<()> {
        self.store.data_mut().effective = root;
        self.call::<(i32,), ()>("proxy_on_tick", (root as i32,))
            .await
            .map(drop)
    }

    /// Tell root context `root` that queue `queue` has items.
    pub(crate) async fn queue_ready(&mut self, root: u32, queue: u32) -> wasmtime::Result<()> {
        self.store.data_mut().effective = root;
        self.call::<(i32, i32), ()>("proxy_on_queue_ready", (root as i32, queue as i32))
            .await
            .map(drop)
    }

    /// The outbound calls dispatched since last asked.
    pub(crate) fn dispatched(&mut self) -> Vec<Dispatch> {
        std::mem::take(&mut self.store.data_mut().dispatched)
    }
}
