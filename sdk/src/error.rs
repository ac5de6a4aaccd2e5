//! Why a call to the gateway failed.

use crate::bindings::imports::sluice::filter::types as raw;

/// Why a call to the gateway failed: capability calls ([`kv`](crate::kv),
/// [`outbound`](crate::outbound), [`metrics`](crate::metrics), [`crypto`](crate::crypto)) and edits
/// answer with one, so a plugin can tell "not granted" from "the store is
/// down". Its `Display` is the gateway's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The plugin's configuration does not grant this; the message names the grant to add.
    NotGranted(String),
    /// The service behind it could not answer (a store that is down, an
    /// upstream that is unreachable or failing).
    Unavailable(String),
    /// The arguments were refused (an invalid header, a header a filter may
    /// not set, a key that holds something else).
    Invalid(String),
    /// It took longer than allowed.
    Timeout(String),
    /// A limit was reached (a body, a batch or a number of metrics too large).
    Limit(String),
}

impl Error {
    /// Its case as the WIT names it: `not-granted`, `unavailable`, `invalid`, `timeout` or `limit`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotGranted(_) => "not-granted",
            Error::Unavailable(_) => "unavailable",
            Error::Invalid(_) => "invalid",
            Error::Timeout(_) => "timeout",
            Error::Limit(_) => "limit",
        }
    }
}

impl From<raw::Error> for Error {
    fn from(error: raw::Error) -> Error {
        match error {
            raw::Error::NotGranted(m) => Error::NotGranted(m),
            raw::Error::Unavailable(m) => Error::Unavailable(m),
            raw::Error::Invalid(m) => Error::Invalid(m),
            raw::Error::Timeout(m) => Error::Timeout(m),
            raw::Error::Limit(m) => Error::Limit(m),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotGranted(m)
            | Error::Unavailable(m)
            | Error::Invalid(m)
            | Error::Timeout(m)
            | Error::Limit(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}
