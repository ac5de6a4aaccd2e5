//! Time calls into plugins directly, without the proxy: for each
//! `name=path.wasm[:config-json]`, N request calls (and response calls,
//! where the plugin has a response phase), with the wall time per call.
//!
//! `cargo run --release -p sluice-filter --example calls -- 100000 noop=target/wasm/.../noop.wasm`

use std::sync::Arc;
use std::time::Instant;

use sluice_filter::config::PluginConfig;
use sluice_filter::{Capabilities, Exchange, Filter, FilterEngine, Services};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().unwrap_or_else(|| "100000".into()).parse()?;
    let engine = FilterEngine::new(None)?;
    let services = Services::standalone();
    for spec in args {
        let (name, rest) = spec.split_once('=').expect("name=path.wasm[:config]");
        let (path, config) = rest.split_once(':').unwrap_or((rest, "{}"));
        let bytes = std::fs::read(path)?;
        let compiled = engine.compile(&bytes).map_err(anyhow::Error::msg)?;
        let plugin_config: PluginConfig = toml::from_str(&format!("path = {path:?}"))?;
        let caps = Capabilities::bind(name, &plugin_config, &services);
        let plugin = engine.load(name, path.as_ref(), &compiled, &plugin_config, caps)?;
        let filter = Filter::new(Arc::new(plugin), config.into(), false).await?;
        let mut best = f64::MAX;
        for _round in 0..3 {
            let started = Instant::now();
            for id in 0..n {
                let (head, ()) = http::Request::get("/api/items?x=1")
                    .header("host", "example.com")
                    .header("user-agent", "calls")
                    .header("authorization", "Bearer abc")
                    .body(())?
                    .into_parts();
                let mut exchange = Box::new(Exchange::new(
                    u64::from(id),
                    head,
                    [127, 0, 0, 1].into(),
                    "r".into(),
                ));
                let (_answer, lease) = filter.on_request(&mut exchange).await?;
                if filter.has_response_phase() {
                    let (head, ()) = http::Response::new(()).into_parts();
                    exchange.response = Some(head);
                    filter.on_response(&mut exchange, lease).await?;
                }
            }
            best = best.min(started.elapsed().as_secs_f64() / f64::from(n) * 1e6);
        }
        println!("{name} ({}): {best:.2} µs per request", compiled.contract);
    }
    Ok(())
}
