//! Metrics in Prometheus' text format: the gateway's own (requests, filter
//! failures, refused capabilities) and those plugins define, exported on the
//! admin listener's `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A metric's labels, as name/value pairs.
pub type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

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
    Histogram(HistogramFamily),
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

/// The gateway's metrics registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    plugin_metrics: DashMap<String, PluginMetric>,
    /// Responses by route and status class (`2xx`, ...).
    pub responses: Family<Labels, Counter>,
    /// Filter calls, by plugin and phase (`request`, `response`).
    pub filter_calls: Family<Labels, Counter>,
    /// Failed filter calls, by plugin.
    pub filter_failures: Family<Labels, Counter>,
    /// Capability calls refused for want of a grant, by plugin and grant.
    pub capability_denied: Family<Labels, Counter>,
    /// Configuration changes (reloads, uploads, rollbacks), by result.
    pub reloads: Family<Labels, Counter>,
    /// Requests refused before routing or by a route's limits, by reason.
    pub requests_refused: Family<Labels, Counter>,
    /// Connections closed at once for a listener's limits, by listener and limit.
    pub connections_refused: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let responses = Family::default();
        let filter_calls = Family::default();
        let filter_failures = Family::default();
        let capability_denied = Family::default();
        let reloads = Family::default();
        let requests_refused = Family::default();
        let connections_refused = Family::default();
        registry.register(
            "requests_refused",
            "Requests refused at the edge or for a route's limits, by reason",
            requests_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed on arrival for a listener's limits",
            connections_refused.clone(),
        );
        registry.register(
            "responses",
            "Responses by route and status class",
            responses.clone(),
        );
        registry.register(
            "filter_calls",
            "Calls into filters, by plugin and phase",
            filter_calls.clone(),
        );
        registry.register(
            "filter_failures",
            "Filter calls that trapped, timed out or hit a limit",
            filter_failures.clone(),
        );
        registry.register(
            "capability_denied",
            "Capability calls refused because the plugin lacks the grant",
            capability_denied.clone(),
        );
        registry.register(
            "reloads",
            "Configuration changes applied or refused",
            reloads.clone(),
        );
        Metrics {
            reloads,
            requests_refused,
            connections_refused,
            registry: Mutex::new(registry),
            plugin_metrics: DashMap::new(),
            responses,
            filter_calls,
            filter_failures,
            capability_denied,
        }
    }
}

impl Metrics {
    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry.lock().expect("registry lock"))
            .expect("writing to a String cannot fail");
        text
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
        self.plugin_metric(name, true, |metric| match &metric.family {
            Kind::Counter(family) => {
                metric.room(family.get(&labels).is_some(), name)?;
                family.get_or_create(&labels).inc_by(value);
                Ok(())
            }
            Kind::Histogram(_) => Err(MetricError::Type(name.into(), "histogram")),
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
        self.plugin_metric(name, false, |metric| match &metric.family {
            Kind::Histogram(family) => {
                metric.room(family.get(&labels).is_some(), name)?;
                family.get_or_create(&labels).observe(value);
                Ok(())
            }
            Kind::Counter(_) => Err(MetricError::Type(name.into(), "counter")),
        })
    }

    /// Find or register plugin metric `name` (a counter or a histogram) and use it.
    fn plugin_metric(
        &self,
        name: &str,
        counter: bool,
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
                let mut registry = self.registry.lock().expect("registry lock");
                let full = format!("plugin_{name}");
                let help = "Defined by a plugin";
                let family = if counter {
                    let family = Family::default();
                    registry.register(full, help, family.clone());
                    Kind::Counter(family)
                } else {
                    let family: HistogramFamily = Family::new_with_constructor(|| {
                        Histogram::new(exponential_buckets(0.001, 2.0, 16))
                    });
                    registry.register(full, help, family.clone());
                    Kind::Histogram(family)
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
        let metrics = Metrics::default();
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
        let text = metrics.render();
        assert!(
            text.contains(r#"sluice_plugin_checks_total{plugin="jwt",result="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("sluice_plugin_seconds_count"), "{text}");
    }
}
