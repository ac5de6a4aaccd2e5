//! The contract, `sluice:filter@0.2.x`: state kept from a request to its
//! response, typed capability errors, headers a filter may not change; and
//! components built for 0.2.4, 0.2.3, 0.2.2 and 0.1.0, which still load and run.

use sluice_tests::{Gateway, Upstream, get, plugin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_keeps_state_from_a_request_to_its_response() {
    keeps_state(&plugin("server-timing"), sluice_filter::CONTRACT).await;
}

/// The same plugin as built for 0.2.2, before `header` and `edit-headers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_for_0_2_2_still_load_and_keep_state() {
    keeps_state(&built_for("0.2.2"), "0.2.2").await;
}

/// And as built for 0.2.3, before the `connection` kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_for_0_2_3_still_load_and_keep_state() {
    keeps_state(&built_for("0.2.3"), "0.2.3").await;
}

/// And as built for 0.2.4, before `request.subject`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_for_0_2_4_still_load_and_keep_state() {
    keeps_state(&built_for("0.2.4"), "0.2.4").await;
}

/// `plugins/server-timing` as built for an earlier contract (a fixture).
fn built_for(contract: &str) -> String {
    format!(
        "{}/fixtures/contract-{contract}/server_timing.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

async fn keeps_state(path: &str, contract: &str) {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.server-timing]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "server-timing" }}]
"#,
        path, up.addr
    ))
    .await
    .unwrap();
    let listed = gw.admin("GET", "/plugins", "").await.json();
    assert_eq!(listed["plugins"][0]["contract"], contract);
    // Slow and fast requests at once, so instances would mix them up if a
    // response could reach another request's instance.
    let requests = (0..40).map(|i| {
        let url = gw.url(&format!("/delay?ms={}", if i % 2 == 0 { 150 } else { 0 }));
        async move { (i, get(&url, &[]).await) }
    });
    let mut ids = std::collections::HashSet::new();
    for (i, reply) in futures_util::future::join_all(requests).await {
        assert_eq!(reply.status, 200);
        let timing = reply.header("server-timing");
        let millis: f64 = timing
            .split_once("dur=")
            .and_then(|(_, rest)| rest.split(';').next()?.parse().ok())
            .unwrap_or_else(|| panic!("request {i}: no duration in `{timing}`"));
        match i % 2 == 0 {
            true => assert!(millis >= 150.0, "slow request {i} measured {millis} ms"),
            false => assert!(millis < 150.0, "fast request {i} measured {millis} ms"),
        }
        let id = timing.split_once("desc=\"request ").unwrap().1;
        assert!(ids.insert(id.to_owned()), "request ids are unique: {id}");
    }
}

/// Only a filter that asks to keep its instance holds it while the upstream
/// answers: with one call allowed at a time, two slow requests pass a filter
/// that does not ask (headers), and the second waits for one that does
/// (server-timing) until it is refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_held_across_the_upstream_only_when_kept() {
    let up = Upstream::start("a").await;
    // Two slow requests at once through a filter allowed one call at a time.
    let statuses = |name: &'static str, config: &'static str| {
        let up = &up;
        async move {
            let gw = Gateway::start(&format!(
                r#"[plugins.{name}]
path = "{}"
max_concurrency = 1
call_timeout = "50ms"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "{name}", config = {config} }}]
"#,
                plugin(name),
                up.addr
            ))
            .await
            .unwrap();
            let url = gw.url("/delay?ms=300");
            let (a, b) = futures_util::future::join(get(&url, &[]), get(&url, &[])).await;
            let mut statuses = [a.status, b.status];
            statuses.sort();
            statuses
        }
    };
    let free = statuses("headers", "{ response = { set = { x-seen = \"yes\" } } }").await;
    assert_eq!(free, [200, 200], "headers does not keep its instance");
    let held = statuses("server-timing", "{}").await;
    assert_eq!(held, [200, 503], "server-timing holds its only instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_for_0_1_0_still_load_and_run() {
    let up = Upstream::start("a").await;
    let config = |settings: &str| {
        format!(
            r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.legacy]
path = "{}"
{settings}

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "legacy" }}]
"#,
            plugin("legacy-counter"),
            up.addr
        )
    };
    let gw = Gateway::start(&config("grants = [\"kv\"]")).await.unwrap();
    for n in 1..=3 {
        let reply = get(&gw.url("/"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.echoed("x-legacy-count"), [n.to_string()]);
        assert_eq!(reply.header("x-legacy"), "sluice:filter@0.1.0");
    }
    // Without the grant, 0.1.0's error is the text of 0.2.0's `not-granted`.
    let ungranted = Gateway::start(&config("deny = [\"kv\"]")).await.unwrap();
    let reply = get(&ungranted.url("/"), &[]).await;
    let error = reply.echoed("x-legacy-error");
    assert!(
        error[0].starts_with("capability refused: `kv` is not granted"),
        "{error:?}"
    );
    let listed = ungranted.admin("GET", "/plugins", "").await.json();
    let legacy = &listed["plugins"][0];
    assert_eq!(
        (&legacy["kind"], &legacy["contract"]),
        (&"transform".into(), &"0.1.0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_may_not_change_the_headers_the_gateway_keeps() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.headers]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "headers", config = {{ request = {{ set = {{ host = "evil.test", content-length = "1", transfer-encoding = "chunked", proxy-connection = "keep-alive", x-fine = "yes" }} }} }} }}]
"#,
        plugin("headers"),
        up.addr
    ))
    .await
    .unwrap();
    let reply = sluice_tests::send_body(
        "POST",
        &gw.url("/mirror-not"),
        &[("host", "shop.test")],
        "hello",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("host"), ["shop.test"]);
    assert_eq!(reply.echoed("content-length"), ["5"]);
    assert!(reply.echoed("transfer-encoding").is_empty());
    // Hop-by-hop too, though filters may set it: it goes before the upstream.
    assert!(reply.echoed("proxy-connection").is_empty());
    assert_eq!(reply.echoed("x-fine"), ["yes"]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"sluice_filter_refused_edits_total{plugin="headers",header="host"} 1"#),
        "{metrics}"
    );
}
