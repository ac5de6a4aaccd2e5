//! The `sluice` binary's suites, a module each, in one test binary.

mod cli;
mod hostile;
mod languages;
mod plugin_command;
mod process;
mod registry;
mod state;
