//! Time calls into plugins directly, without the proxy: for each
//! `name=path.wasm[:config-json]`, N request calls (and response calls,
//! where the plugin has a response phase), with the wall time per call.
//!
//! `cargo run --release -p sluice-filter --example calls -- 100000 noop=target/wasm/.../noop.wasm`
//!
//! Requests carry `Authorization: Bearer $CALLS_TOKEN` when that is set, and
//! `native-rs256=key.pem` times verifying that token natively (ring, as a
//! gateway with JWT checks built in does: decode, verify, parse the claims).
//!
//! Wall time on a shared machine moves by tens of percent between runs;
//! `INSTRUCTIONS=1 bench/plugin_calls.sh` counts instructions instead (valgrind).

use std::sync::Arc;
use std::time::Instant;

use sluice_filter::config::PluginConfig;
use sluice_filter::{Capabilities, Exchange, Filter, FilterEngine, Identity, Services};

/// Everything but outbound HTTP (no upstreams here), which is denied.
const GRANTS: &[&str] = &["kv", "metrics", "crypto"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().unwrap_or_else(|| "100000".into()).parse()?;
    // Under valgrind (`bench/plugin_calls.sh` with INSTRUCTIONS=1): compiled
    // components kept in `CALLS_CACHE` (compiling under it takes minutes),
    // and a pool small enough for its address space.
    let cache = std::env::var_os("CALLS_CACHE").map(std::path::PathBuf::from);
    let instances = std::env::var("CALLS_INSTANCES")
        .map_or(Ok(FilterEngine::DEFAULT_INSTANCES), |v| v.parse())?;
    let engine = FilterEngine::with_instances(cache.as_deref(), instances)?;
    let services = Services::standalone();
    let token = std::env::var("CALLS_TOKEN").unwrap_or_else(|_| "abc".into());
    let authorization = format!("Bearer {token}");
    let in_flight: usize = std::env::var("CALLS_IN_FLIGHT").map_or(Ok(1), |v| v.parse())?;
    for spec in args {
        let (name, rest) = spec.split_once('=').expect("name=path.wasm[:config]");
        if name == "native-rs256" {
            let verify = native_rs256(&std::fs::read_to_string(rest)?)?;
            let best = best_of(n, || assert!(verify(&token), "the token verifies"));
            println!("{name}: {best:.2} µs per request");
            continue;
        }
        let (path, config) = rest.split_once(':').unwrap_or((rest, "{}"));
        let bytes = std::fs::read(path)?;
        let compiled = engine.compile(&bytes).map_err(anyhow::Error::msg)?;
        // Every capability granted, as a realistic plugin would be.
        // Under valgrind everything runs ~50 times slower: `CALLS_TIMEOUT`.
        let timeout = std::env::var("CALLS_TIMEOUT")
            .map(|t| format!("call_timeout = {t:?}"))
            .unwrap_or_default();
        let plugin_config: PluginConfig = toml::from_str(&format!(
            "path = {path:?}\ngrants = {GRANTS:?}\ndeny = [\"http\"]\n{timeout}"
        ))?;
        let caps = Capabilities::bind(name, &plugin_config, &services);
        let plugin = engine.load(name, path.as_ref(), &compiled, &plugin_config, caps)?;
        let filter = Filter::new(Arc::new(plugin), config.into(), false).await?;
        let mut best = f64::MAX;
        for round in 0..3 {
            let started = Instant::now();
            // Requests in flight at once (`CALLS_IN_FLIGHT`, default 1): a
            // filter with a response phase holds an instance for each.
            let mut pending = Vec::with_capacity(in_flight);
            for id in 0..n {
                let (head, ()) = http::Request::get("/api/items?x=1")
                    .header("host", "example.com")
                    .header("user-agent", "calls")
                    .header("authorization", &authorization)
                    .body(())?
                    .into_parts();
                let mut exchange = Box::new(Exchange::new(
                    u64::from(id),
                    head,
                    [127, 0, 0, 1].into(),
                    "r".into(),
                ));
                // As an auth filter before it would have left it.
                exchange.identity = Some(Identity {
                    subject: format!("user-{}", id % 100),
                    claims: vec![("plan".into(), "gold".into())],
                });
                let (answer, lease) = filter.on_request(&mut exchange).await?;
                if id == 0 && round == 0 {
                    let said = format!("{answer:?}");
                    println!("{name} answers {}", &said[..said.len().min(100)]);
                }
                if filter.has_response_phase() {
                    pending.push((exchange, lease));
                }
                if pending.len() >= in_flight || id + 1 == n {
                    for (mut exchange, lease) in pending.drain(..) {
                        let (head, ()) = http::Response::new(()).into_parts();
                        exchange.response = Some(head);
                        filter.on_response(&mut exchange, lease).await?;
                    }
                }
            }
            best = best.min(started.elapsed().as_secs_f64() / f64::from(n) * 1e6);
        }
        println!("{name} ({}): {best:.2} µs per request", compiled.contract);
    }
    Ok(())
}

/// The best of three rounds of `n` calls of `f`, in µs per call.
fn best_of(n: u32, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                f();
            }
            started.elapsed().as_secs_f64() / f64::from(n) * 1e6
        })
        .fold(f64::MAX, f64::min)
}

/// A native RS256 check of a compact JWT against an SPKI PEM public key.
fn native_rs256(pem: &str) -> anyhow::Result<impl Fn(&str) -> bool + use<>> {
    use base64::Engine as _;
    use spki::der::Decode as _;
    let block = pem::parse(pem)?;
    let info = spki::SubjectPublicKeyInfoRef::from_der(block.contents())
        .map_err(|e| anyhow::anyhow!("not a public key: {e}"))?;
    let pkcs1 = info.subject_public_key.raw_bytes().to_vec();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(move |token: &str| {
        let mut parts = token.rsplitn(2, '.');
        let (Some(signature), Some(signed)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(signature) = b64.decode(signature) else {
            return false;
        };
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &pkcs1,
        );
        if key.verify(signed.as_bytes(), &signature).is_err() {
            return false;
        }
        let payload = signed.split('.').nth(1).unwrap_or("");
        b64.decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .is_some_and(|claims| claims.get("exp").is_some())
    })
}
