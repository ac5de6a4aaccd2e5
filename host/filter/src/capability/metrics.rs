//! Metrics a plugin defines (grant `metrics`), exported on the admin
//! listener's `/metrics` as `sluice_plugin_<name>` with a `plugin` label.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::{Grant, Refusals};
use crate::bindings::{v1, v2};
use crate::error::HostError;
use crate::metrics::{FilterMetrics, Labels, MetricError};

/// One plugin's metrics, when granted.
pub(crate) struct PluginMetrics {
    metrics: Option<Arc<FilterMetrics>>,
    refusals: Refusals,
}

impl PluginMetrics {
    pub(crate) fn bind(
        grants: &[Grant],
        metrics: &Arc<FilterMetrics>,
        refusals: Refusals,
    ) -> PluginMetrics {
        PluginMetrics {
            metrics: grants.contains(&Grant::Metrics).then(|| metrics.clone()),
            refusals,
        }
    }

    /// Record through `record`, if granted.
    fn record(
        &self,
        record: impl FnOnce(&FilterMetrics, &str) -> Result<(), MetricError>,
    ) -> Result<(), HostError> {
        let Some(metrics) = &self.metrics else {
            return Err(self.refusals.refuse(&Grant::Metrics));
        };
        record(metrics, self.refusals.plugin()).map_err(|e| match e {
            MetricError::Cardinality(_) => HostError::Limit(e.to_string()),
            _ => HostError::Invalid(e.to_string()),
        })
    }

    pub(crate) fn counter(&self, name: &str, labels: Labels, value: u64) -> Result<(), HostError> {
        self.record(|m, plugin| m.plugin_counter(plugin, name, labels, value))
    }

    pub(crate) fn gauge(&self, name: &str, labels: Labels, value: i64) -> Result<(), HostError> {
        self.record(|m, plugin| m.plugin_gauge(plugin, name, labels, value))
    }

    pub(crate) fn histogram(
        &self,
        name: &str,
        labels: Labels,
        value: f64,
    ) -> Result<(), HostError> {
        self.record(|m, plugin| m.plugin_histogram(plugin, name, labels, value))
    }
}

struct MetricsData;

impl HasData for MetricsData {
    type Data<'a> = &'a PluginMetrics;
}

/// Store data that can lend the plugin's metrics.
pub(crate) trait MetricsHost {
    fn plugin_metrics(&mut self) -> &PluginMetrics;
}

pub(crate) fn link<T: MetricsHost + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    v2::metrics::add_to_linker::<_, MetricsData>(linker, T::plugin_metrics)?;
    v1::metrics::add_to_linker::<_, MetricsData>(linker, T::plugin_metrics)
}

impl v2::metrics::Host for &PluginMetrics {
    fn counter_add(
        &mut self,
        name: String,
        labels: Labels,
        value: u64,
    ) -> wasmtime::Result<Result<(), v2::types::Error>> {
        Ok(self.counter(&name, labels, value).map_err(Into::into))
    }

    fn histogram_record(
        &mut self,
        name: String,
        labels: Labels,
        value: f64,
    ) -> wasmtime::Result<Result<(), v2::types::Error>> {
        Ok(self.histogram(&name, labels, value).map_err(Into::into))
    }
}

impl v1::metrics::Host for &PluginMetrics {
    fn counter_add(
        &mut self,
        name: String,
        labels: Labels,
        value: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .counter(&name, labels, value)
            .map_err(|e| e.to_string()))
    }

    fn histogram_record(
        &mut self,
        name: String,
        labels: Labels,
        value: f64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .histogram(&name, labels, value)
            .map_err(|e| e.to_string()))
    }
}
