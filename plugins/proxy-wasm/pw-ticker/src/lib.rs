//! A root context alone, as Envoy's bootstrap services run: it ticks every
//! 50 ms from load, counts its ticks in a counter and a gauge, and keeps the count in
//! shared data, without any request reaching it.

use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Ticker { ticks: 0, metric: 0, gauge: 0 }) });
}}

struct Ticker {
    ticks: u64,
    metric: u32,
    gauge: u32,
}

impl Context for Ticker {}

impl RootContext for Ticker {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.metric = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "ticks").unwrap();
        self.gauge = proxy_wasm::hostcalls::define_metric(MetricType::Gauge, "last_tick").unwrap();
        self.set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        proxy_wasm::hostcalls::increment_metric(self.metric, 1).unwrap();
        proxy_wasm::hostcalls::record_metric(self.gauge, self.ticks).unwrap();
        let _ = self.set_shared_data("ticks", Some(self.ticks.to_string().as_bytes()), None);
        if self.ticks == 1 {
            proxy_wasm::hostcalls::log(LogLevel::Info, "ticking").unwrap();
        }
    }
}
