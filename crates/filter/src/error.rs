//! What can go wrong with a plugin, at load time and per call.

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
    /// A trap, a timeout, a limit, or an instantiation error.
    pub reason: String,
    /// The plugin had its `max_concurrency` calls in flight for a whole
    /// `call_timeout`: an overload (503), not a fault.
    pub busy: bool,
}

impl FilterFailure {
    /// A failed call of `plugin`.
    pub fn new(plugin: Arc<str>, reason: impl Into<String>) -> FilterFailure {
        FilterFailure {
            plugin,
            reason: reason.into(),
            busy: false,
        }
    }

    /// A call of `plugin` that found no free slot.
    pub fn busy(plugin: Arc<str>) -> FilterFailure {
        FilterFailure {
            plugin,
            reason: "too many calls in flight (`max_concurrency`)".into(),
            busy: true,
        }
    }
}
