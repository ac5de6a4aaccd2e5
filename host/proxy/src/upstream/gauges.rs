//! Each live target's idle connections and requests in flight, as gauges
//! read from the target registry at each scrape.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use sluice_filter::metrics::labels;

use super::TargetRegistry;

/// Each live target's idle connections and requests in flight, read at
/// each scrape (`sluice_upstream_idle_connections`, `sluice_upstream_in_flight`).
#[derive(Debug)]
pub struct TargetGauges(pub Arc<TargetRegistry>);

impl Collector for TargetGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut idle = Vec::new();
        let mut in_flight = Vec::new();
        self.0.each(|upstream, target| {
            let set = labels([("upstream", upstream), ("target", &target.addr.to_string())]);
            idle.push((set.clone(), target.idle_connections() as i64));
            in_flight.push((set, i64::from(target.in_flight())));
        });
        let gauges = [
            (
                "upstream_idle_connections",
                "Connections to a target open and waiting for a request",
                idle,
            ),
            (
                "upstream_in_flight",
                "Requests in flight to a target",
                in_flight,
            ),
        ];
        for (name, help, values) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (set, value) in values {
                ConstGauge::new(value).encode(family.encode_family(&set)?)?;
            }
        }
        Ok(())
    }
}
