//! The data path's metrics: responses by route and status class, what the
//! edge and the listeners refused, and how upstreams' targets fare.

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sluice_filter::metrics::{Labels, Registry, counters, labels};

/// The proxy's metric families, registered once and kept across reloads.
pub struct ProxyMetrics {
    /// Responses by route and status class (`2xx`, ...).
    responses: Family<Labels, Counter>,
    /// Requests refused at the edge or for a route's limits, by reason.
    pub(crate) requests_refused: Family<Labels, Counter>,
    /// Connections closed on arrival for a listener's limits, by listener and limit.
    pub(crate) connections_refused: Family<Labels, Counter>,
    /// Tries after the first, by upstream and why.
    pub(crate) upstream_retries: Family<Labels, Counter>,
    /// Retries not made because the upstream's retry budget was spent.
    pub(crate) upstream_retries_refused: Family<Labels, Counter>,
    /// Targets ejected by outlier detection, by upstream and target.
    pub(crate) upstream_ejections: Family<Labels, Counter>,
    /// 1 while active health checks find a target healthy.
    pub(crate) upstream_healthy: Family<Labels, Gauge>,
}

impl ProxyMetrics {
    /// The proxy's metrics, registered in `registry`.
    pub fn new(registry: &Registry) -> ProxyMetrics {
        ProxyMetrics {
            responses: counters(registry, "responses", "Responses by route and status class"),
            requests_refused: counters(
                registry,
                "requests_refused",
                "Requests refused at the edge or for a route's limits, by reason",
            ),
            connections_refused: counters(
                registry,
                "connections_refused",
                "Connections closed on arrival for a listener's limits",
            ),
            upstream_retries: counters(
                registry,
                "upstream_retries",
                "Tries after a request's first, by upstream and reason",
            ),
            upstream_retries_refused: counters(
                registry,
                "upstream_retries_refused",
                "Retries not made because the upstream's retry budget was spent",
            ),
            upstream_ejections: counters(
                registry,
                "upstream_ejections",
                "Targets ejected by outlier detection",
            ),
            upstream_healthy: {
                let family = Family::<Labels, Gauge>::default();
                registry.register(
                    "upstream_healthy",
                    "1 while active health checks find the target healthy",
                    family.clone(),
                );
                family
            },
        }
    }

    /// Count a refusal with `code`.
    pub(crate) fn refused(&self, code: &str) {
        self.requests_refused
            .get_or_create(&labels([("reason", code)]))
            .inc();
    }
}

/// One response counter per status class of one route, so counting a
/// response needs no lookup.
pub(crate) struct StatusCounters([Counter; 5]);

impl StatusCounters {
    pub(crate) fn new(metrics: &ProxyMetrics, route: &str) -> StatusCounters {
        StatusCounters(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            metrics
                .responses
                .get_or_create(&labels([("route", route), ("class", class)]))
                .clone()
        }))
    }

    pub(crate) fn count(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0[class].inc();
    }
}
