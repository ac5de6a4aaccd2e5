//! What WASI gives a plugin in place of the machine: no directories and
//! an empty environment. Standard libraries ask for them when a plugin
//! reaches for a file or a variable; the asking is noted (metric and log,
//! naming the plugin), and the answer is nothing. And a guest blocked in
//! `wasi:io/poll` (waiting for a `wasi:http` response) is waiting on the
//! host: that time does not count against its `call_timeout`.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll;
use wasmtime_wasi::p2::bindings::{cli::environment, filesystem::preopens};

use super::Refusals;
use crate::cpu::CallClock;

/// What the sandbox borrows from the instance's store data.
pub(crate) struct SandboxView<'a> {
    pub(crate) refusals: &'a Refusals,
}

struct SandboxData;

impl HasData for SandboxData {
    type Data<'a> = SandboxView<'a>;
}

/// What `wasi:io/poll` borrows: WASI's table, and the call's clock.
pub(crate) struct PollView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) clock: &'a mut CallClock,
}

struct PollData;

impl HasData for PollData {
    type Data<'a> = PollView<'a>;
}

/// Link over WASI's own `preopens`, `environment` and `poll` (linked first).
/// Store data that can lend the sandbox and `wasi:io/poll` their views.
pub(crate) trait SandboxHost {
    fn sandbox(&mut self) -> SandboxView<'_>;
    fn poll(&mut self) -> PollView<'_>;
}

pub(crate) fn link<T: SandboxHost + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    preopens::add_to_linker::<_, SandboxData>(linker, T::sandbox)?;
    environment::add_to_linker::<_, SandboxData>(linker, T::sandbox)?;
    poll::add_to_linker::<_, PollData>(linker, T::poll)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI's own polling, timed as host waits.
impl poll::Host for PollView<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        self.clock
            .wait(poll::Host::poll(&mut *self.table, pollables))
            .await
    }
}

impl poll::HostPollable for PollView<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        self.clock
            .wait(poll::HostPollable::block(&mut *self.table, pollable))
            .await
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(&mut *self.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

impl preopens::Host for SandboxView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        self.refusals.refuse_sandbox("filesystem");
        Ok(Vec::new())
    }
}

impl environment::Host for SandboxView<'_> {
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.refusals.refuse_sandbox("environment");
        Ok(Vec::new())
    }

    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
}
