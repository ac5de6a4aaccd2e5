//! What can go wrong with a plugin: at load time, per call, and inside a
//! call to a host capability.

use std::path::PathBuf;
use std::sync::Arc;

/// A plugin could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is missing, not a component, or not a Sluice filter.
    #[error("plugin `{plugin}` ({path}): {reason}")]
    Load {
        /// The plugin's name in the configuration.
        plugin: String,
        /// The file it was loaded from.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The plugin's `init` refused its configuration.
    #[error("plugin `{plugin}` rejected its configuration: {message}")]
    Rejected {
        /// The plugin's name in the configuration.
        plugin: String,
        /// The plugin's own message.
        message: String,
    },
    /// Creating or initialising an instance failed (trap, limit).
    #[error("plugin `{plugin}` failed to start: {reason}")]
    Instantiate {
        /// The plugin's name in the configuration.
        plugin: String,
        /// The underlying error.
        reason: String,
    },
}

/// A call into a filter failed (the instance it ran in has been thrown
/// away), or could not be made.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` failed: {reason}")]
pub struct FilterFailure {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// What kind of failure, a metric label: `trap`, `timeout`,
    /// `out_of_memory`, `stack_overflow`, `over_limit`, `invalid_answer`,
    /// `start_failed`, or `busy`: the plugin had its `max_concurrency`
    /// calls in flight for a whole `call_timeout`, an overload (503).
    pub kind: &'static str,
    /// What happened, in a line.
    pub reason: String,
}

/// Why a call that found no free slot failed.
pub(crate) const BUSY: &str = "too many calls in flight (`max_concurrency`)";

impl FilterFailure {
    /// A failed call of `plugin`.
    pub fn new(plugin: Arc<str>, kind: &'static str, reason: impl Into<String>) -> FilterFailure {
        FilterFailure {
            plugin,
            kind,
            reason: reason.into(),
        }
    }

    /// An overload rather than a fault.
    pub fn is_busy(&self) -> bool {
        self.kind == "busy"
    }
}

/// A call stopped for producing more than its plugin may (`max_header_bytes`,
/// `max_body_bytes`): a failure of the call, as a trap is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OverLimit(pub String);

/// Why a host call made by a plugin failed: the WIT `error` variant, which
/// contract 0.1.0 plugins receive as its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The configuration does not grant the capability.
    #[error("{0}")]
    NotGranted(String),
    /// The service behind it could not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The arguments were refused.
    #[error("{0}")]
    Invalid(String),
    /// It took too long.
    #[error("{0}")]
    Timeout(String),
    /// A limit was reached.
    #[error("{0}")]
    Limit(String),
}

/// A one-line reason: the trap kind, and the guest's last words on stderr if any.
pub(crate) fn describe_failure(error: &wasmtime::Error, stderr: &[u8]) -> String {
    let what = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "exceeded its call timeout".to_owned(),
        Some(trap) => format!("trapped: {trap}"),
        None => match (
            error.downcast_ref::<crate::cpu::WallLimit>(),
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
