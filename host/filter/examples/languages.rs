//! What a filter costs by the language it is written in: for each
//! `name=path.wasm`, its size, its first compile (no cache), the start of
//! an instance (instantiation and `init`), and the wall time of a request
//! call into a warm instance. Run it on the projects `sluice plugin new`
//! makes, which are the same filter in every language (`bench/languages.sh`).
//!
//! `cargo run --release -p sluice-filter --example languages -- 20000 rust=hello-rust.wasm …`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_filter::config::PluginConfig;
use sluice_filter::{Answer, Capabilities, Exchange, Filter, FilterEngine, Services};

const CONFIG: &str = r#"{"header":"x-api-version"}"#;
const STARTS: usize = 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().unwrap_or_else(|| "20000".into()).parse()?;
    let services = Services::standalone();
    println!("| language | size | first compile | instance start | request call |");
    println!("|---|---|---|---|---|");
    for spec in args {
        let (name, path) = spec.split_once('=').expect("name=path.wasm");
        let bytes = std::fs::read(path)?;
        // A fresh engine without a disk cache: what a first load costs.
        let engine = FilterEngine::new(None)?;
        let started = Instant::now();
        let compiled = engine.compile(&bytes).map_err(anyhow::Error::msg)?;
        let compile = started.elapsed();

        let config: PluginConfig = toml::from_str(&format!(
            "path = {path:?}\ndeny = [\"kv\", \"http\", \"metrics\", \"crypto\"]"
        ))?;
        let caps = Capabilities::bind(name, &config, &services);
        let plugin = Arc::new(engine.load(name, path.as_ref(), &compiled, &config, caps)?);

        // Each `Filter::new` starts one instance and calls `init` in it.
        let mut starts = Vec::with_capacity(STARTS);
        let mut filter = None;
        for _ in 0..STARTS {
            let started = Instant::now();
            filter = Some(Filter::new(plugin.clone(), CONFIG.into(), false).await?);
            starts.push(started.elapsed());
        }
        starts.sort();
        let filter = filter.expect("started");

        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            for id in 0..n {
                let (head, ()) = http::Request::get("/api/items")
                    .header("host", "example.com")
                    .header("x-api-version", "2")
                    .body(())?
                    .into_parts();
                let mut exchange = Box::new(Exchange::new(
                    u64::from(id),
                    head,
                    [127, 0, 0, 1].into(),
                    "r".into(),
                ));
                let (answer, _) = filter.on_request(&mut exchange).await?;
                assert_eq!(answer, Answer::Next, "{name} lets the request through");
            }
            best = best.min(started.elapsed() / n);
        }
        println!(
            "| {name} | {:.1} MB | {:.2} s | {:.0} µs | {:.1} µs |",
            bytes.len() as f64 / 1e6,
            compile.as_secs_f64(),
            starts[STARTS / 2].as_secs_f64() * 1e6,
            best.as_secs_f64() * 1e6,
        );
    }
    Ok(())
}
