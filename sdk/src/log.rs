//! Logging to the gateway's log (tagged with the plugin's name) and the clock.

use crate::bindings::imports::sluice::filter::{clock, log as raw};

/// Log at debug level.
pub fn debug(message: &str) {
    raw::write(raw::Level::Debug, message)
}

/// Log at info level.
pub fn info(message: &str) {
    raw::write(raw::Level::Info, message)
}

/// Log at warn level.
pub fn warn(message: &str) {
    raw::write(raw::Level::Warn, message)
}

/// Log at error level.
pub fn error(message: &str) {
    raw::write(raw::Level::Error, message)
}

/// Milliseconds since the Unix epoch, from the gateway's clock.
pub fn now_millis() -> u64 {
    clock::now_millis()
}

/// Nanoseconds from an arbitrary fixed point, for measuring durations.
pub fn monotonic_nanos() -> u64 {
    clock::monotonic_nanos()
}
