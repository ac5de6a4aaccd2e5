//! What the admin API shows of a gateway as it runs: its routes with their
//! request counts, and its upstreams with each target's health and load.

use serde::Serialize;

use crate::gateway::Gateway;

/// A route, in match order.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// Its name.
    pub name: String,
    /// Its upstream.
    pub upstream: String,
    /// Its filters' plugins, in chain order.
    pub filters: Vec<String>,
    /// Requests answered since the gateway started.
    pub requests: u64,
    /// Of those, answered with a 5xx.
    pub errors: u64,
}

/// An upstream and its targets.
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    /// Its name.
    pub name: String,
    /// Its targets, as resolved.
    pub targets: Vec<TargetView>,
}

/// One target of an upstream.
#[derive(Debug, Serialize)]
pub struct TargetView {
    /// `ip:port`.
    pub address: String,
    /// `healthy`, `unhealthy` (active checks) or `ejected` (outlier detection).
    pub state: &'static str,
    /// Requests in flight to it.
    pub in_flight: u32,
}

impl Gateway {
    /// Its routes, most specific first (the order they are matched in).
    pub fn route_views(&self) -> Vec<RouteView> {
        self.routes()
            .map(|route| {
                let (requests, errors) = route.metrics.totals();
                RouteView {
                    name: route.name.to_string(),
                    upstream: route.upstream.name.clone(),
                    filters: route.filters.plugin_names().map(str::to_owned).collect(),
                    requests,
                    errors,
                }
            })
            .collect()
    }

    /// Its upstreams, by name.
    pub fn upstream_views(&self) -> Vec<UpstreamView> {
        let mut views: Vec<UpstreamView> = self
            .upstreams()
            .map(|upstream| UpstreamView {
                name: upstream.name.clone(),
                targets: upstream
                    .targets()
                    .iter()
                    .map(|target| TargetView {
                        address: target.addr.to_string(),
                        state: target.state(),
                        in_flight: target.in_flight(),
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }
}
