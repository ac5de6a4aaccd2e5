//! Metrics in Prometheus' text format: the registry every part of the
//! gateway registers in, the filter runtime's own metrics (calls, failures,
//! refused capabilities) and those plugins define, exported on the admin
//! listener's `/metrics`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Metric;

/// A metric's labels, as name/value pairs.
pub type Labels = Vec<(String, String)>;
/// Histograms by label set, each made with the same buckets.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Distinct metrics plugins may define, all together.
const MAX_PLUGIN_METRICS: usize = 256;
/// Distinct label sets one plugin metric may have.
const MAX_SERIES: usize = 1_000;

/// Why a plugin's metric was not recorded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricError {
    /// Names are `[a-z_][a-z0-9_]*`.
    #[error("invalid metric name `{0}`: use lowercase letters, digits and `_`")]
    Name(String),
    /// The name is taken by a metric of the other type.
    #[error("metric `{0}` is already a {1}")]
    Type(String, &'static str),
    /// A cap was reached.
    #[error("too many metrics or label sets ({0})")]
    Cardinality(String),
}

enum Kind {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    Histogram(HistogramFamily),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Counter(_) => "counter",
            Kind::Gauge(_) => "gauge",
            Kind::Histogram(_) => "histogram",
        }
    }
}

/// Which kind of metric a plugin asks for by name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    Counter,
    Gauge,
    Histogram,
}

struct PluginMetric {
    family: Kind,
    /// Label sets created so far.
    series: AtomicUsize,
}

impl PluginMetric {
    /// Whether one more label set fits (or `exists` already).
    fn room(&self, exists: bool, name: &str) -> Result<(), MetricError> {
        if exists || self.series.fetch_add(1, Ordering::Relaxed) < MAX_SERIES {
            Ok(())
        } else {
            Err(MetricError::Cardinality(name.into()))
        }
    }
}

/// The gateway's metrics, registered by each part of it (the filter
/// runtime, the proxy, the control plane) and rendered together on the
/// admin listener's `/metrics`. Plugins' own metrics are registered as
/// they first use them, hence the lock.
#[derive(Default)]
pub struct Registry(Mutex<prometheus_client::registry::Registry>);

impl Registry {
    /// An empty registry; every metric is named `sluice_*`.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry(Mutex::new(
            prometheus_client::registry::Registry::with_prefix("sluice"),
        )))
    }

    /// Register `metric` as `sluice_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Register `collector`, asked for its metrics at each scrape.
    pub fn register_collector(&self, collector: impl prometheus_client::collector::Collector) {
        self.lock().register_collector(Box::new(collector));
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.lock()).expect("writing to a String cannot fail");
        text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, prometheus_client::registry::Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A counter family registered under `name`.
pub fn counters(registry: &Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::default();
    registry.register(name, help, family.clone());
    family
}

/// A family of latency histograms in seconds registered under `name`:
/// buckets from 50 µs doubling to about 3.3 s, which covers a filter call
/// as well as a slow upstream.
pub fn latencies(registry: &Registry, name: &str, help: &str) -> HistogramFamily {
    let family: HistogramFamily =
        Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 17)));
    registry.register(name, help, family.clone());
    family
}

/// The filter runtime's metrics: calls, failures and refused capabilities
/// per plugin, and the metrics plugins define.
pub struct FilterMetrics {
    registry: Arc<Registry>,
    plugin_metrics: DashMap<String, PluginMetric>,
    /// Filter calls, by plugin and phase (`request`, `response`).
    pub(crate) calls: Family<Labels, Counter>,
    /// How long filter calls took, by plugin and phase.
    pub(crate) call_seconds: HistogramFamily,
    /// Failed filter calls, by plugin and reason.
    pub(crate) failures: Family<Labels, Counter>,
    /// Failures by plugin and what the failure policy made of them.
    pub(crate) outcomes: Family<Labels, Counter>,
    /// Capability calls refused for want of a grant, by plugin and grant.
    pub(crate) denied: Family<Labels, Counter>,
    /// Edits of headers the gateway keeps itself, refused, by plugin and header.
    pub(crate) refused_edits: Family<Labels, Counter>,
    /// Plugins looking for files or the environment, which they do not have.
    pub(crate) sandboxed: Family<Labels, Counter>,
}

impl FilterMetrics {
    /// The filter runtime's metrics, registered in `registry`.
    pub fn new(registry: Arc<Registry>) -> FilterMetrics {
        FilterMetrics {
            calls: counters(
                &registry,
                "filter_calls",
                "Calls into filters, by plugin and phase",
            ),
            call_seconds: latencies(
                &registry,
                "filter_call_seconds",
                "How long calls into filters took, by plugin and phase (failed calls too)",
            ),
            failures: counters(
                &registry,
                "filter_failures",
                "Filter calls that failed, by reason: trap, timeout, out_of_memory, stack_overflow, over_limit, invalid_answer",
            ),
            outcomes: counters(
                &registry,
                "filter_failure_outcomes",
                "Filter failures by the failure policy's outcome: failed_open (skipped) or failed_closed (the request failed)",
            ),
            denied: counters(
                &registry,
                "capability_denied",
                "Capability calls refused because the plugin lacks the grant",
            ),
            refused_edits: counters(
                &registry,
                "filter_refused_edits",
                "Edits of headers the gateway keeps itself (content-length, host, ...), refused",
            ),
            sandboxed: counters(
                &registry,
                "filter_sandbox_refusals",
                "Plugins that looked for the filesystem or the environment, by plugin and what",
            ),
            plugin_metrics: DashMap::new(),
            registry,
        }
    }

    /// Add to plugin `plugin`'s counter `name`.
    pub fn plugin_counter(
        &self,
        plugin: &str,
        name: &str,
        labels: Labels,
        value: u64,
    ) -> Result<(), MetricError> {
        let labels = with_plugin(plugin, labels);
        self.plugin_metric(name, Asked::Counter, |metric| match &metric.family {
            Kind::Counter(family) => {
                metric.room(family.get(&labels).is_some(), name)?;
                family.get_or_create(&labels).inc_by(value);
                Ok(())
            }
            other => Err(MetricError::Type(name.into(), other.name())),
        })
    }

    /// Set plugin `plugin`'s gauge `name` (proxy-wasm's gauges).
    pub fn plugin_gauge(
        &self,
        plugin: &str,
        name: &str,
        labels: Labels,
        value: i64,
    ) -> Result<(), MetricError> {
        let labels = with_plugin(plugin, labels);
        self.plugin_metric(name, Asked::Gauge, |metric| match &metric.family {
            Kind::Gauge(family) => {
                metric.room(family.get(&labels).is_some(), name)?;
                family.get_or_create(&labels).set(value);
                Ok(())
            }
            other => Err(MetricError::Type(name.into(), other.name())),
        })
    }

    /// Record `value` in plugin `plugin`'s histogram `name`.
    pub fn plugin_histogram(
        &self,
        plugin: &str,
        name: &str,
        labels: Labels,
        value: f64,
    ) -> Result<(), MetricError> {
        let labels = with_plugin(plugin, labels);
        self.plugin_metric(name, Asked::Histogram, |metric| match &metric.family {
            Kind::Histogram(family) => {
                metric.room(family.get(&labels).is_some(), name)?;
                family.get_or_create(&labels).observe(value);
                Ok(())
            }
            other => Err(MetricError::Type(name.into(), other.name())),
        })
    }

    /// Find or register plugin metric `name` (a counter, gauge or histogram) and use it.
    fn plugin_metric(
        &self,
        name: &str,
        asked: Asked,
        record: impl FnOnce(&PluginMetric) -> Result<(), MetricError>,
    ) -> Result<(), MetricError> {
        if let Some(metric) = self.plugin_metrics.get(name) {
            return record(&metric);
        }
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid || name.len() > 100 {
            return Err(MetricError::Name(name.into()));
        }
        if self.plugin_metrics.len() >= MAX_PLUGIN_METRICS {
            return Err(MetricError::Cardinality(name.into()));
        }
        let metric = self
            .plugin_metrics
            .entry(name.to_owned())
            .or_insert_with(|| {
                let full = format!("plugin_{name}");
                let help = "Defined by a plugin";
                let family = match asked {
                    Asked::Counter => {
                        let family = Family::default();
                        self.registry.register(&full, help, family.clone());
                        Kind::Counter(family)
                    }
                    Asked::Gauge => {
                        let family = Family::default();
                        self.registry.register(&full, help, family.clone());
                        Kind::Gauge(family)
                    }
                    Asked::Histogram => {
                        let family: HistogramFamily = Family::new_with_constructor(|| {
                            Histogram::new(exponential_buckets(0.001, 2.0, 16))
                        });
                        self.registry.register(&full, help, family.clone());
                        Kind::Histogram(family)
                    }
                };
                PluginMetric {
                    family,
                    series: AtomicUsize::new(0),
                }
            })
            .downgrade();
        record(&metric)
    }
}

fn with_plugin(plugin: &str, mut labels: Labels) -> Labels {
    labels.retain(|(k, _)| k != "plugin");
    labels.insert(0, ("plugin".into(), plugin.into()));
    labels
}

/// Labels from static pairs, for the gateway's own metrics.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_metrics_render_with_their_plugin() {
        let registry = Registry::new();
        let metrics = FilterMetrics::new(registry.clone());
        let l = labels([("result", "ok")]);
        metrics
            .plugin_counter("jwt", "checks", l.clone(), 2)
            .unwrap();
        metrics.plugin_histogram("jwt", "seconds", l, 0.5).unwrap();
        assert_eq!(
            metrics.plugin_histogram("jwt", "checks", vec![], 1.0),
            Err(MetricError::Type("checks".into(), "counter"))
        );
        assert!(
            metrics
                .plugin_counter("jwt", "Bad-Name", vec![], 1)
                .is_err()
        );
        let text = registry.render();
        assert!(
            text.contains(r#"sluice_plugin_checks_total{plugin="jwt",result="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("sluice_plugin_seconds_count"), "{text}");
    }
}
