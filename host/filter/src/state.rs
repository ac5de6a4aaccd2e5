//! The host data of one instance's store, and the view of it each
//! capability borrows (as wasmtime-wasi's `WasiView` lends WASI its own).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::capability::basics::{BasicsHost, BasicsView};
use crate::capability::crypto::{CryptoHost, CryptoView};
use crate::capability::kv::{KvHost, KvView};
use crate::capability::metrics::{MetricsHost, PluginMetrics};
use crate::capability::outbound::{OutboundHost, OutboundView};
use crate::capability::sandbox::{PollView, SandboxHost, SandboxView};
use crate::capability::types::{TypesHost, TypesView};
use crate::capability::wasi_http::WasiHttp;
use crate::capability::{Capabilities, Host};
use crate::cpu::CallClock;

/// The guest's panic messages land here; kept small, read when a call fails.
const STDERR_CAPACITY: usize = 16 << 10;

/// The host data of one instance's store. Each capability borrows a view
/// of what it needs (see `capability`).
pub(crate) struct FilterState {
    /// The request, response and headers handles, and WASI's.
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    pub(crate) caps: Arc<Capabilities>,
    /// Only the guest's own time counts against `call_timeout`.
    pub(crate) clock: CallClock,
    pub(crate) memory: MemoryLimit,
    pub(crate) stderr: MemoryOutputPipe,
    started: Instant,
    /// Crypto keys the plugin holds in `table`.
    keys: usize,
    /// `wasi:http`, sending through the granted upstreams.
    http: WasiHttp,
}

impl FilterState {
    /// The store data of a new instance whose plugin has `caps`, under
    /// `clock` and a memory `limit`; the guest's stderr is the pipe returned.
    pub(crate) fn new(
        caps: Arc<Capabilities>,
        clock: CallClock,
        limit: usize,
    ) -> (FilterState, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No filesystem, environment, network or stdin: WASI is linked only so
        // that standard libraries start; their capabilities are all withheld.
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let state = FilterState {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttp::new(caps.outbound.clone()),
            caps,
            clock,
            memory: MemoryLimit {
                limit,
                peak: 0,
                refused: false,
            },
            stderr: stderr.clone(),
            started: Instant::now(),
            keys: 0,
        };
        (state, stderr)
    }
}

impl Host for FilterState {}

impl TypesHost for FilterState {
    fn types(&mut self) -> TypesView<'_> {
        TypesView {
            table: &mut self.table,
            refusals: &self.caps.refusals,
            output: &self.caps.output,
        }
    }
}

impl SandboxHost for FilterState {
    fn sandbox(&mut self) -> SandboxView<'_> {
        SandboxView {
            refusals: &self.caps.refusals,
        }
    }

    fn poll(&mut self) -> PollView<'_> {
        PollView {
            table: &mut self.table,
            clock: &mut self.clock,
        }
    }
}

impl BasicsHost for FilterState {
    fn basics(&mut self) -> BasicsView<'_> {
        BasicsView {
            plugin: &self.caps.plugin,
            started: self.started,
        }
    }
}

impl KvHost for FilterState {
    fn kv(&mut self) -> KvView<'_> {
        KvView {
            kv: &self.caps.kv,
            clock: &mut self.clock,
        }
    }
}

impl CryptoHost for FilterState {
    fn crypto(&mut self) -> CryptoView<'_> {
        CryptoView {
            crypto: &self.caps.crypto,
            table: &mut self.table,
            keys: &mut self.keys,
        }
    }
}

impl OutboundHost for FilterState {
    fn outbound(&mut self) -> OutboundView<'_> {
        OutboundView {
            outbound: &self.caps.outbound,
            clock: &mut self.clock,
        }
    }
}

impl MetricsHost for FilterState {
    fn plugin_metrics(&mut self) -> &PluginMetrics {
        &self.caps.metrics
    }
}

impl WasiHttpView for FilterState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.http.view(&mut self.table)
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
pub(crate) struct MemoryLimit {
    pub(crate) limit: usize,
    pub(crate) peak: usize,
    pub(crate) refused: bool,
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
