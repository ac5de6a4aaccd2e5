//! Metrics this plugin defines, exported on the gateway's admin `/metrics`
//! as `sluice_plugin_<name>` with a `plugin` label. Needs
//! `grants = ["metrics"]`. Names are `[a-z_][a-z0-9_]*`.

use crate::Error;
use crate::bindings::imports::sluice::filter::metrics as raw;

/// Add `value` to counter `name` (exported as `sluice_plugin_<name>_total`).
pub fn counter(name: &str, labels: &[(&str, &str)], value: u64) -> Result<(), Error> {
    Ok(raw::counter_add(name, labels, value)?)
}

/// Record one observation in histogram `name` (seconds, bytes, ...).
pub fn histogram(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), Error> {
    Ok(raw::histogram_record(name, labels, value)?)
}
