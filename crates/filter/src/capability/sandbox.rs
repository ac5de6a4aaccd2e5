//! What WASI gives a plugin in place of the machine: no directories and
//! an empty environment. Standard libraries ask for them when a plugin
//! reaches for a file or a variable; the asking is noted (metric and log,
//! naming the plugin), and the answer is nothing.

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::bindings::{cli::environment, filesystem::preopens};

use crate::instance::FilterState;

/// What the sandbox borrows from the instance's store data.
pub(crate) struct SandboxView<'a> {
    pub(crate) refusals: &'a super::Refusals,
}

struct SandboxData;

impl HasData for SandboxData {
    type Data<'a> = SandboxView<'a>;
}

/// Link over WASI's own `preopens` and `environment` (linked first).
pub(crate) fn link(linker: &mut Linker<FilterState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    preopens::add_to_linker::<_, SandboxData>(linker, FilterState::sandbox)?;
    environment::add_to_linker::<_, SandboxData>(linker, FilterState::sandbox)?;
    linker.allow_shadowing(false);
    Ok(())
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
