//! One instance of a plugin: its store (the host data every import borrows
//! a view of), its exports, and the calls into it with an exchange lent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::answer::{Answer, ResponseAnswer};
use crate::capability::Capabilities;
use crate::capability::basics::BasicsView;
use crate::capability::crypto::CryptoView;
use crate::capability::kv::KvView;
use crate::capability::outbound::OutboundView;
use crate::capability::sandbox::{PollView, SandboxView};
use crate::capability::types::{self, TypesView};
use crate::capability::wasi_http::WasiHttp;
use crate::cpu::{CallClock, WallLimit};
use crate::error::{OverLimit, PluginError};
use crate::exchange::Exchange;
use crate::kinds::Guest;
use crate::plugin::Plugin;

/// Calls whose handles a guest may still hold before its instance is replaced.
const MAX_LINGERING: usize = 1024;

/// The guest's panic messages land here; kept small, read when a call fails.
const STDERR_CAPACITY: usize = 16 << 10;

/// The host data of one instance's store. Each capability borrows a view
/// of what it needs (see `capability`).
pub(crate) struct FilterState {
    /// The request, response and headers handles, and WASI's.
    table: ResourceTable,
    wasi: WasiCtx,
    pub(crate) caps: Arc<Capabilities>,
    /// Only the guest's own time counts against `call_timeout`.
    clock: CallClock,
    memory: MemoryLimit,
    stderr: MemoryOutputPipe,
    started: Instant,
    /// Crypto keys the plugin holds in `table`.
    keys: usize,
    /// `wasi:http`, sending through the granted upstreams.
    http: WasiHttp,
}

impl FilterState {
    pub(crate) fn types(&mut self) -> TypesView<'_> {
        TypesView {
            table: &mut self.table,
            refusals: &self.caps.refusals,
            output: &self.caps.output,
        }
    }

    pub(crate) fn sandbox(&mut self) -> SandboxView<'_> {
        SandboxView {
            refusals: &self.caps.refusals,
        }
    }

    pub(crate) fn basics(&mut self) -> BasicsView<'_> {
        BasicsView {
            plugin: &self.caps.plugin,
            started: self.started,
        }
    }

    pub(crate) fn kv(&mut self) -> KvView<'_> {
        KvView {
            kv: &self.caps.kv,
            clock: &mut self.clock,
        }
    }

    pub(crate) fn crypto(&mut self) -> CryptoView<'_> {
        CryptoView {
            crypto: &self.caps.crypto,
            table: &mut self.table,
            keys: &mut self.keys,
        }
    }

    pub(crate) fn poll(&mut self) -> PollView<'_> {
        PollView {
            table: &mut self.table,
            clock: &mut self.clock,
        }
    }

    /// The resource table and `wasi:http`'s state, borrowed together.
    pub(crate) fn http_parts(&mut self) -> (&mut ResourceTable, &mut WasiHttp) {
        (&mut self.table, &mut self.http)
    }

    pub(crate) fn outbound(&mut self) -> OutboundView<'_> {
        OutboundView {
            outbound: &self.caps.outbound,
            clock: &mut self.clock,
        }
    }
}

impl WasiView for FilterState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers the peak, so a bloated instance can be
/// recycled, and whether the current call was refused memory.
struct MemoryLimit {
    limit: usize,
    peak: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit;
        match allowed {
            true => self.peak = self.peak.max(desired),
            false => self.refused = true,
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A live, initialised instance.
pub(crate) struct Instance {
    store: Store<FilterState>,
    guest: Guest,
    /// Holds the exchange's place while the exchange is lent to a call.
    spare: Option<Box<Exchange>>,
    pub(crate) uses: u32,
    /// Set when a call left it unfit for another: too many handles kept
    /// past their calls, or a call that never finished (its future was
    /// dropped, as when the client hangs up mid-call, leaving the guest
    /// halfway through).
    pub(crate) spoiled: bool,
    /// Earlier calls' entries the guest still holds handles under.
    lingering: VecDeque<types::Lingering>,
}

impl Instance {
    /// Instantiate `plugin` and initialise it with `config` (JSON).
    pub(crate) async fn new(plugin: &Plugin, config: &str) -> Result<Instance, PluginError> {
        let fail = |e: wasmtime::Error, stderr: &MemoryOutputPipe| PluginError::Instantiate {
            plugin: plugin.name.to_string(),
            reason: describe_failure(&e, &stderr.contents()),
        };
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No filesystem, environment, network or stdin: WASI is linked only so
        // that standard libraries start; their capabilities are all withheld.
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let state = FilterState {
            table: ResourceTable::new(),
            wasi,
            caps: plugin.caps.clone(),
            clock: CallClock::new(plugin.call_timeout, plugin.cpu.clone()),
            memory: MemoryLimit {
                limit: plugin.memory_limit,
                peak: 0,
                refused: false,
            },
            stderr: stderr.clone(),
            started: Instant::now(),
            keys: 0,
            http: WasiHttp::new(plugin.caps.clone()),
        };
        let mut store = Store::new(plugin.pre.engine(), state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut store| store.data_mut().clock.tick());
        store.data_mut().clock.start();
        store.set_epoch_deadline(1);

        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| fail(e, &stderr))?;
        let guest = plugin
            .exports
            .load(&mut store, &instance)
            .map_err(|e| fail(e, &stderr))?;
        let verdict = guest.init(&mut store, config).await;
        if let Err(message) = verdict.map_err(|e| fail(e, &stderr))? {
            return Err(PluginError::Rejected {
                plugin: plugin.name.to_string(),
                message,
            });
        }
        Ok(Instance {
            store,
            guest,
            spare: Some(Exchange::placeholder()),
            uses: 0,
            spoiled: false,
            lingering: VecDeque::new(),
        })
    }

    /// The kind's request call, with `exchange` lent to it; also answers
    /// whether the guest asked to keep this instance for the response call.
    pub(crate) async fn request(
        &mut self,
        exchange: &mut Box<Exchange>,
        body_access: bool,
    ) -> wasmtime::Result<(Answer, bool)> {
        let (request, _) = self.lend(exchange, body_access, false)?;
        let borrowed = wasmtime::component::Resource::new_borrow(request.rep());
        let answer = self.guest.request(&mut self.store, borrowed).await;
        let keep = self.take_back(exchange, request, None);
        let mut answer = answer?;
        if let Answer::Reply(reply) = &mut answer {
            let caps = &self.store.data().caps;
            caps.output.check_reply(reply, &caps.refusals)?;
        }
        Ok((answer, keep))
    }

    /// The kind's response call, with `exchange` (its response head set) lent to it.
    pub(crate) async fn response(
        &mut self,
        exchange: &mut Box<Exchange>,
        body_access: bool,
    ) -> wasmtime::Result<ResponseAnswer> {
        let (request, response) = self.lend(exchange, body_access, true)?;
        let response = response.expect("lent with a response");
        let req = wasmtime::component::Resource::new_borrow(request.rep());
        let resp = wasmtime::component::Resource::new_borrow(response.rep());
        let answer = self.guest.response(&mut self.store, req, resp).await;
        self.take_back(exchange, request, Some(response));
        answer
    }

    /// Move the exchange into the store's table for a call (a spare box
    /// holds its place) and start the call's clock.
    fn lend(
        &mut self,
        exchange: &mut Box<Exchange>,
        body_access: bool,
        response: bool,
    ) -> wasmtime::Result<(
        wasmtime::component::Resource<types::RequestEntry>,
        Option<wasmtime::component::Resource<types::ResponseEntry>>,
    )> {
        let table = &mut self.store.data_mut().table;
        let (request, response) = types::open(table, response)?;
        let spare = self.spare.take().expect("a spare between calls");
        // Until `take_back`: a call dropped before it returns spoils the instance.
        self.spoiled = true;
        let mut lent = std::mem::replace(exchange, spare);
        lent.body_access = body_access;
        types::fill(table, &request, lent);
        let state = self.store.data_mut();
        state.memory.refused = false;
        state.clock.start();
        self.store.set_epoch_deadline(1);
        Ok((request, response))
    }

    /// Put the exchange back where it was lent from; answers whether the
    /// guest asked to keep this instance for the response call.
    fn take_back(
        &mut self,
        exchange: &mut Box<Exchange>,
        request: wasmtime::component::Resource<types::RequestEntry>,
        response: Option<wasmtime::component::Resource<types::ResponseEntry>>,
    ) -> bool {
        let table = &mut self.store.data_mut().table;
        let mut back = types::take_back(table, request, response);
        back.exchange.body_access = false;
        self.spare = Some(std::mem::replace(exchange, back.exchange));
        // Handles a garbage-collected guest has not dropped yet keep their
        // entries; too many, and the instance is replaced rather than grow.
        // Oldest first, stopping at one still held: a call costs O(1) here.
        while self.lingering.front_mut().is_some_and(|l| l.clear(table)) {
            self.lingering.pop_front();
        }
        self.lingering.extend(back.lingering);
        self.spoiled = self.lingering.len() > MAX_LINGERING;
        back.keep
    }

    /// Whether its memory grew past half its limit (recycle it).
    pub(crate) fn bloated(&self) -> bool {
        let memory = &self.store.data().memory;
        memory.peak > memory.limit / 2
    }

    /// What went wrong in a failed call, in a line.
    /// Why a call failed: the `reason` label it is counted under, and a
    /// one-line account for the log.
    pub(crate) fn describe(&self, error: &wasmtime::Error) -> (&'static str, String) {
        let state = self.store.data();
        let reason = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => "timeout",
            Some(wasmtime::Trap::StackOverflow) => "stack_overflow",
            _ if error.is::<WallLimit>() => "timeout",
            _ if error.is::<OverLimit>() => "over_limit",
            _ if state.memory.refused => "out_of_memory",
            _ => "trap",
        };
        (reason, describe_failure(error, &state.stderr.contents()))
    }
}

/// A one-line reason: the trap kind, and the guest's last words on stderr if any.
fn describe_failure(error: &wasmtime::Error, stderr: &[u8]) -> String {
    let what = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "exceeded its call timeout".to_owned(),
        Some(trap) => format!("trapped: {trap}"),
        None => match (
            error.downcast_ref::<WallLimit>(),
            error.downcast_ref::<OverLimit>(),
        ) {
            (Some(limit), _) => limit.to_string(),
            (_, Some(limit)) => limit.to_string(),
            // One line: a log line per failure, not a backtrace.
            _ => format!("{error:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        },
    };
    let said = String::from_utf8_lossy(stderr);
    let said: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note:"))
        .collect();
    if said.is_empty() {
        return what;
    }
    let said = said.join(" ");
    let tail = said.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
    format!("{what}; it said: {}", &said[tail..])
}
