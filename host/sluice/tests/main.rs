//! The `sluice` binary's suites, a module each, in one test binary.

mod cli;
mod fleet;
mod hostile;
mod instance;
mod languages;
mod pki;
mod plugin_command;
mod process;
mod registry;
mod state;
