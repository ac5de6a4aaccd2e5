//! One instance of a plugin: its store (the host data every import borrows
//! a view of), its exports, and the calls into it with an exchange lent.

use std::collections::VecDeque;

use wasmtime::Store;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::answer::{Answer, ResponseAnswer};
use crate::connection::{ConnectVerdict, Connection};
use crate::cpu::{CallClock, WallLimit};
use crate::error::{OverLimit, PluginError, describe_failure};
use crate::exchange::Exchange;
use crate::handles::{self, Lingering, RequestEntry, ResponseEntry};
use crate::kinds::Guest;
use crate::plugin::Plugin;
use crate::state::FilterState;

/// Calls whose handles a guest may still hold before its instance is replaced.
const MAX_LINGERING: usize = 1024;

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
    lingering: VecDeque<Lingering>,
    /// The last call's entries, when the guest held none of them.
    entries: handles::Spare,
}

impl Instance {
    /// Instantiate `plugin` and initialise it with `config` (JSON).
    pub(crate) async fn new(plugin: &Plugin, config: &str) -> Result<Instance, PluginError> {
        let fail = |e: wasmtime::Error, stderr: &MemoryOutputPipe| PluginError::Instantiate {
            plugin: plugin.name.to_string(),
            reason: describe_failure(&e, &stderr.contents()),
        };
        let (state, stderr) = FilterState::new(
            plugin.caps.clone(),
            CallClock::new(plugin.call_timeout, plugin.cpu.clone()),
            plugin.memory_limit,
        );
        let Some((pre, exports)) = plugin.component() else {
            return Err(PluginError::Instantiate {
                plugin: plugin.name.to_string(),
                reason: "a proxy-wasm module runs in VMs, not instances".into(),
            });
        };
        let mut store = Store::new(pre.engine(), state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut store| store.data_mut().clock.tick());
        store.data_mut().clock.start();
        store.set_epoch_deadline(1);

        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| fail(e, &stderr))?;
        let guest = exports
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
            entries: handles::Spare::default(),
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

    /// The kind's connection call (connection filters).
    pub(crate) async fn connect(&mut self, conn: &Connection) -> wasmtime::Result<ConnectVerdict> {
        // Until it returns: a call dropped halfway spoils the instance.
        self.spoiled = true;
        let state = self.store.data_mut();
        state.memory.refused = false;
        state.clock.start();
        self.store.set_epoch_deadline(1);
        let verdict = self.guest.connect(&mut self.store, conn).await;
        self.spoiled = false;
        verdict
    }

    /// Move the exchange into the store's table for a call (a spare box
    /// holds its place) and start the call's clock.
    fn lend(
        &mut self,
        exchange: &mut Box<Exchange>,
        body_access: bool,
        response: bool,
    ) -> wasmtime::Result<(
        wasmtime::component::Resource<RequestEntry>,
        Option<wasmtime::component::Resource<ResponseEntry>>,
    )> {
        let table = &mut self.store.data_mut().table;
        let (request, response) = handles::open(table, &mut self.entries, response)?;
        let spare = self.spare.take().expect("a spare between calls");
        // Until `take_back`: a call dropped before it returns spoils the instance.
        self.spoiled = true;
        let mut lent = std::mem::replace(exchange, spare);
        lent.body_access = body_access;
        handles::fill(table, &request, lent);
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
        request: wasmtime::component::Resource<RequestEntry>,
        response: Option<wasmtime::component::Resource<ResponseEntry>>,
    ) -> bool {
        let table = &mut self.store.data_mut().table;
        let mut back = handles::take_back(table, &mut self.entries, request, response);
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

    /// How long its last call took, from its start (the clock the call's
    /// deadline reads, so a call reads the time once at each end).
    pub(crate) fn call_took(&self) -> std::time::Duration {
        self.store.data().clock.since_start()
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
