//! The data path's metrics: responses by route and status class, and what
//! the edge and the listeners refused.

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_filter::metrics::{Labels, Registry, counters, labels};

/// The proxy's metric families, registered once and kept across reloads.
pub struct ProxyMetrics {
    /// Responses by route and status class (`2xx`, ...).
    responses: Family<Labels, Counter>,
    /// Requests refused at the edge or for a route's limits, by reason.
    pub(crate) requests_refused: Family<Labels, Counter>,
    /// Connections closed on arrival for a listener's limits, by listener and limit.
    pub(crate) connections_refused: Family<Labels, Counter>,
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
