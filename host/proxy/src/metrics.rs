//! The data path's metrics: requests by route, method and status class and
//! how long they took, what the edge and the listeners refused, how
//! upstreams' targets fare, rate-limit decisions and the response cache.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sluice_filter::metrics::{HistogramFamily, Labels, Registry, counters, labels, latencies};

/// The proxy's metric families, registered once and kept across reloads.
pub struct ProxyMetrics {
    /// Requests by route, method and status class (`2xx`, ...).
    requests: Family<Labels, Counter>,
    /// Time to the response head, by route.
    request_seconds: HistogramFamily,
    /// Time to a target's response head, by upstream and target.
    pub(crate) upstream_seconds: HistogramFamily,
    /// Rate-limit decisions, by plugin and `allowed`/`limited`.
    pub(crate) rate_limit: Family<Labels, Counter>,
    /// Cache lookups, by `hit`/`miss`.
    pub(crate) cache_lookups: Family<Labels, Counter>,
    /// Bytes of responses the cache holds.
    pub cache_bytes: Gauge,
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
    /// Access log records dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// gRPC answers that could not be translated for the client, by reason.
    translation_failures: Family<Labels, Counter>,
    /// TCP listeners' connections, by listener, upstream and how they ended.
    tcp_connections: Family<Labels, Counter>,
    /// Bytes through TCP listeners, by listener and direction.
    tcp_bytes: Family<Labels, Counter>,
    /// UDP sessions ended, by listener, upstream and why.
    udp_sessions: Family<Labels, Counter>,
    /// Datagrams through UDP listeners, by listener and direction.
    udp_datagrams: Family<Labels, Counter>,
    /// Datagrams UDP listeners dropped, by listener and reason.
    udp_dropped: Family<Labels, Counter>,
}

impl ProxyMetrics {
    /// The proxy's metrics, registered in `registry`.
    pub fn new(registry: &Registry) -> ProxyMetrics {
        ProxyMetrics {
            requests: counters(
                registry,
                "requests",
                "Requests by route, method and status class",
            ),
            request_seconds: latencies(
                registry,
                "request_duration_seconds",
                "Time from a request's head to its response's head, by route",
            ),
            upstream_seconds: latencies(
                registry,
                "upstream_response_seconds",
                "Time from sending to a target to its response head, by upstream and target",
            ),
            rate_limit: counters(
                registry,
                "rate_limit_decisions",
                "Rate-limit decisions, by plugin and decision (allowed, limited)",
            ),
            cache_lookups: counters(
                registry,
                "cache_lookups",
                "Response cache lookups, by result (hit, miss)",
            ),
            cache_bytes: {
                let gauge = Gauge::default();
                registry.register(
                    "cache_bytes",
                    "Bytes of responses in the cache",
                    gauge.clone(),
                );
                gauge
            },
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
            access_log_dropped: {
                let counter = Counter::default();
                registry.register(
                    "access_log_dropped",
                    "Access log records dropped because the writer fell behind",
                    counter.clone(),
                );
                counter
            },
            translation_failures: counters(
                registry,
                "translation_failures",
                "gRPC answers that could not be made the client's JSON or gRPC-Web, by reason",
            ),
            tcp_connections: counters(
                registry,
                "tcp_connections",
                "TCP listeners' connections, by listener, upstream and how they ended",
            ),
            tcp_bytes: counters(
                registry,
                "tcp_bytes",
                "Bytes through TCP listeners, by listener and direction (from_client, to_client)",
            ),
            udp_sessions: counters(
                registry,
                "udp_sessions",
                "UDP sessions ended, by listener, upstream and why",
            ),
            udp_datagrams: counters(
                registry,
                "udp_datagrams",
                "Datagrams through UDP listeners, by listener and direction (from_client, to_client)",
            ),
            udp_dropped: counters(
                registry,
                "udp_dropped",
                "Datagrams UDP listeners dropped, by listener and reason",
            ),
        }
    }

    /// Count a UDP session that ended.
    pub(crate) fn udp_session_ended(&self, listener: &str, upstream: &str, ended: &str) {
        let key = labels([
            ("listener", listener),
            ("upstream", upstream),
            ("ended", ended),
        ]);
        self.udp_sessions.get_or_create(&key).inc();
    }

    /// Count a datagram passed on.
    pub(crate) fn udp_datagram(&self, listener: &str, direction: &str) {
        let key = labels([("listener", listener), ("direction", direction)]);
        self.udp_datagrams.get_or_create(&key).inc();
    }

    /// Count a datagram dropped.
    pub(crate) fn udp_dropped(&self, listener: &str, reason: &str) {
        let key = labels([("listener", listener), ("reason", reason)]);
        self.udp_dropped.get_or_create(&key).inc();
    }

    /// Count a TCP connection that ended, and its bytes each way.
    pub(crate) fn tcp_connection(
        &self,
        listener: &str,
        upstream: &str,
        ended: &str,
        from_client: u64,
        to_client: u64,
    ) {
        let connection = [
            ("listener", listener),
            ("upstream", upstream),
            ("ended", ended),
        ];
        self.tcp_connections
            .get_or_create(&labels(connection))
            .inc();
        for (direction, bytes) in [("from_client", from_client), ("to_client", to_client)] {
            let key = labels([("listener", listener), ("direction", direction)]);
            self.tcp_bytes.get_or_create(&key).inc_by(bytes);
        }
    }

    /// Count an answer that could not be translated, for `reason`.
    pub(crate) fn translation_failed(&self, reason: &str) {
        self.translation_failures
            .get_or_create(&labels([("reason", reason)]))
            .inc();
    }

    /// Count a refusal with `code`.
    pub(crate) fn refused(&self, code: &str) {
        self.requests_refused
            .get_or_create(&labels([("reason", code)]))
            .inc();
    }
}

/// Methods with a label of their own; others count as `other`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's request counters and latency histogram. A counter is looked
/// up once, the first time its method and class occur, and kept, so
/// counting a request needs no lookup and no series appears before it is used.
pub(crate) struct RouteMetrics {
    route: String,
    requests: Family<Labels, Counter>,
    counters: [[OnceLock<Counter>; 5]; METHODS.len() + 1],
    seconds: Histogram,
}

impl RouteMetrics {
    pub(crate) fn new(metrics: &ProxyMetrics, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_owned(),
            requests: metrics.requests.clone(),
            counters: Default::default(),
            seconds: metrics
                .request_seconds
                .get_or_create(&labels([("route", route)]))
                .clone(),
        }
    }

    /// Requests answered so far, and how many of them with a 5xx.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let count = |cell: &OnceLock<Counter>| cell.get().map_or(0, Counter::get);
        let all = self.counters.iter().flatten().map(count).sum();
        let errors = self
            .counters
            .iter()
            .map(|by_class| count(&by_class[4]))
            .sum();
        (all, errors)
    }

    /// Count a `method` request answered with `status` after `took`.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, took: Duration) {
        let m = METHODS
            .iter()
            .position(|known| known == method)
            .unwrap_or(METHODS.len());
        let c = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.counters[m][c]
            .get_or_init(|| {
                let method = METHODS.get(m).map_or("other", Method::as_str);
                let set = [
                    ("route", &*self.route),
                    ("method", method),
                    ("class", CLASSES[c]),
                ];
                self.requests.get_or_create(&labels(set)).clone()
            })
            .inc();
        self.seconds.observe(took.as_secs_f64());
    }
}
