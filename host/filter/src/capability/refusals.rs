//! How a capability says no: a typed error the plugin can act on, a
//! metric and a log line (at a bounded rate) naming the plugin and what it
//! reached for.

use std::sync::Arc;

use crate::error::HostError;
use crate::metrics::{FilterMetrics, labels};

use super::grant::Grant;

/// How a unit refuses a call for want of a grant.
#[derive(Clone)]
pub(crate) struct Refusals {
    pub(super) plugin: Arc<str>,
    pub(super) metrics: Arc<FilterMetrics>,
}

impl Refusals {
    /// Refuse a call for want of `grant`, saying so in the log (at a bounded
    /// rate) and the metrics.
    pub(crate) fn refuse(&self, grant: &Grant) -> HostError {
        let plugin = &*self.plugin;
        crate::log_throttled!(
            warn,
            ("capability refused", plugin, grant),
            plugin,
            %grant,
            "capability refused: plugin `{plugin}` has no `{grant}` grant"
        );
        self.metrics
            .denied
            .get_or_create(&labels([("plugin", plugin), ("grant", &grant.to_string())]))
            .inc();
        HostError::NotGranted(format!(
            "capability refused: `{grant}` is not granted (add it to `plugins.{plugin}.grants`)"
        ))
    }

    /// Refuse an edit of a header the gateway keeps itself, saying so in
    /// the log (at a bounded rate) and the metrics.
    pub(crate) fn refuse_edit(&self, header: &http::HeaderName) -> HostError {
        let plugin = &*self.plugin;
        crate::log_throttled!(
            warn,
            ("edit refused", plugin, header.as_str()),
            plugin,
            %header,
            "plugin `{plugin}` may not change `{header}`: the gateway keeps it right"
        );
        self.metrics
            .refused_edits
            .get_or_create(&labels([("plugin", plugin), ("header", header.as_str())]))
            .inc();
        HostError::Invalid(format!(
            "a filter may not change `{header}`: the gateway keeps it right"
        ))
    }

    /// Note that the plugin looked for what the sandbox does not have
    /// (`filesystem`, `environment`), in the log (at a bounded rate) and
    /// the metrics.
    pub(crate) fn refuse_sandbox(&self, what: &'static str) {
        let plugin = &*self.plugin;
        // Info, not a warning: standard libraries ask on their own too (Rust's
        // panic handler reads the environment).
        crate::log_throttled!(
            info,
            ("sandbox", plugin, what),
            plugin,
            what,
            "plugin `{plugin}` asked for its {what}: a plugin has none"
        );
        self.metrics
            .sandboxed
            .get_or_create(&labels([("plugin", plugin), ("what", what)]))
            .inc();
    }

    /// The plugin these refusals are for.
    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }
}
