//! proxy-wasm filters, built with the published Rust SDK (crates.io
//! `proxy-wasm`) for wasm32-wasip1 as one builds them for Envoy, run
//! unchanged beside components: `plugins/proxy-wasm/`.

use std::time::{Duration, Instant};

use sluice_tests::{Gateway, Upstream, get, proxy_wasm_plugin, send_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route(up: &Upstream, plugin: &str, filter: &str) -> String {
    format!(
        "[upstreams.up]\ntargets = [\"{}\"]\n\
         [plugins.{plugin}]\npath = \"{}\"\n\
         [[routes]]\nupstream = \"up\"\nfilters = [{{ plugin = \"{plugin}\", {filter} }}]\n",
        up.addr,
        proxy_wasm_plugin(plugin)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_both_ways_a_local_reply_and_configuration_at_on_configure() {
    let up = Upstream::start("a").await;
    let config = r#"config = { header = "x-added", value = "by-proxy-wasm", deny = "/private", trace = true }"#;
    let gw = Gateway::start(&route(&up, "pw-headers", config))
        .await
        .unwrap();
    let reply = get(&gw.url("/hello?x=1"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("x-added"), ["by-proxy-wasm"]);
    assert_eq!(
        reply.echoed("x-pw-path"),
        ["/hello?x=1"],
        "`:path` as Envoy gives it"
    );
    assert_eq!(reply.echoed("x-pw-method"), ["GET"]);
    let source = reply.echoed("x-pw-source").join("");
    assert!(
        source.starts_with("127.0.0.1:") && !source.ends_with(":0"),
        "{source}"
    );
    assert_eq!(
        reply.echoed("x-pw-destination-port"),
        [gw.addr.port().to_string()]
    );
    assert_eq!(reply.header("x-pw-response"), "seen");

    let denied = get(&gw.url("/private"), &[]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-denied-by"), "pw-headers");
    assert_eq!(&denied.body[..], b"denied\n");
    assert_eq!(
        denied.header("x-pw-response"),
        "seen",
        "its response callback ran on its own reply"
    );
    assert_eq!(up.hits(), 1, "the local reply never reached the upstream");

    // A configuration the filter refuses is refused at load, naming it.
    let bad = route(&up, "pw-headers", r#"config = { nope = 1 }"#);
    let refused = Gateway::start(&bad)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("pw-headers") && refused.contains("proxy_on_configure"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_rewritten_by_a_filter_that_drops_content_length_goes_out_framed() {
    let up = Upstream::start("a").await;
    let config = r#"config = { header = "x-a", value = "1", shout = true }, body = true"#;
    let gw = Gateway::start(&route(&up, "pw-headers", config))
        .await
        .unwrap();
    let reply = send_body("POST", &gw.url("/mirror"), &[], "quiet words").await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.contains("QUIET WORDS"), "{text}");
    assert_eq!(text, text.to_uppercase());
    let length: usize = reply
        .header("content-length")
        .parse()
        .unwrap_or(reply.body.len());
    assert_eq!(length, reply.body.len(), "the framing follows the new body");
}

/// An authorization server: 200 with the user for token `good`, else 401.
async fn auth_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let reply = match head.starts_with("GET /check?token=good ") {
                    true => {
                        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nalice"
                    }
                    false => {
                        "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    }
                };
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// `count` GETs of `/x` at once, the `i`th with `x-token: token(i)`; their statuses.
async fn at_once(gw: &Gateway, count: usize, token: fn(usize) -> &'static str) -> Vec<u16> {
    let tasks = (0..count).map(|i| {
        let url = gw.url("/x");
        tokio::spawn(async move { get(&url, &[("x-token", token(i))]).await.status.as_u16() })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_filter_pauses_for_its_http_call_and_continues_or_answers_403() {
    let up = Upstream::start("a").await;
    let auth = auth_server().await;
    let toml = format!(
        "{}[upstreams.auth]\ntargets = [\"{auth}\"]\n",
        route(&up, "pw-auth", "config = {}")
    )
    .replace(
        &format!(
            "[plugins.pw-auth]\npath = \"{}\"\n",
            proxy_wasm_plugin("pw-auth")
        ),
        &format!(
            "[plugins.pw-auth]\npath = \"{}\"\ngrants = [\"http:auth\"]\n",
            proxy_wasm_plugin("pw-auth")
        ),
    );
    let gw = Gateway::start(&toml).await.unwrap();
    let allowed = get(&gw.url("/x"), &[("x-token", "good")]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.echoed("x-auth"), ["alice"]);
    let refused = get(&gw.url("/x"), &[("x-token", "bad")]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("x-auth-status"), "401");
    // Many at once: each waits for its own call, none holds its VM meanwhile.
    let statuses = at_once(&gw, 20, |i| if i % 2 == 0 { "good" } else { "bad" }).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        10,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limiter_on_shared_data_with_cas_counts_exactly_under_concurrency() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&route(&up, "pw-limit", "config = { limit = 25 }"))
        .await
        .unwrap();
    let statuses = at_once(&gw, 60, |_| "").await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        25,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        35,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_context_alone_ticks_from_load_and_its_metric_is_exported() {
    let up = Upstream::start("a").await;
    let toml = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n\
         [upstreams.up]\ntargets = [\"{}\"]\n\
         [plugins.ticker]\npath = \"{}\"\nconfiguration = \"{{}}\"\ngrants = [\"metrics\"]\n\
         [[routes]]\nupstream = \"up\"\n",
        up.addr,
        proxy_wasm_plugin("pw-ticker")
    );
    let gw = Gateway::start(&toml).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let ticks = loop {
        let metrics = gw.metrics().await;
        let ticks = metrics
            .lines()
            .find(|l| l.starts_with("sluice_plugin_ticks_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if ticks >= 5.0 || Instant::now() > deadline {
            break ticks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ticks >= 5.0, "ticked {ticks} times with no request at all");
    let metrics = gw.metrics().await;
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("sluice_plugin_last_tick{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        gauge.is_some_and(|g| g >= 5.0),
        "a gauge too: {gauge:?}\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("plugin_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_loops_traps_or_eats_memory_fails_alone() {
    let up = Upstream::start("a").await;
    let toml = route(&up, "pw-fault", "config = {}").replace(
        &format!(
            "[plugins.pw-fault]\npath = \"{}\"\n",
            proxy_wasm_plugin("pw-fault")
        ),
        &format!(
            "[plugins.pw-fault]\npath = \"{}\"\ncall_timeout = \"50ms\"\nmemory_limit_mib = 16\n",
            proxy_wasm_plugin("pw-fault")
        ),
    );
    let gw = Gateway::start(&toml).await.unwrap();
    for path in ["/loop", "/trap", "/memory"] {
        let started = Instant::now();
        let reply = get(&gw.url(path), &[]).await;
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(reply.header("x-sluice-error"), "filter_failed", "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} took {:?}",
            started.elapsed()
        );
        // The VM is made again: the next request is served.
        assert_eq!(get(&gw.url("/fine"), &[]).await.status, 200, "after {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_a_proxy_wasm_filters_configuration_without_dropping_a_request() {
    let up = Upstream::start("a").await;
    let config = |value: &str| {
        route(
            &up,
            "pw-headers",
            &format!(r#"config = {{ header = "x-version", value = "{value}" }}"#),
        )
    };
    let gw = Gateway::start(&config("one")).await.unwrap();
    let url = gw.url("/x");
    let load = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let reply = get(&url, &[]).await;
            assert_eq!(reply.status, 200, "no request dropped during the swap");
            seen.push(reply.echoed("x-version").join(","));
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    gw.write_config(&config("two"));
    gw.control.reload().await.unwrap();
    let seen = load.await.unwrap();
    assert_eq!(seen.first().map(String::as_str), Some("one"));
    assert_eq!(get(&gw.url("/x"), &[]).await.echoed("x-version"), ["two"]);
    assert!(seen.iter().all(|v| v == "one" || v == "two"), "{seen:?}");
}
