//! Host capabilities end to end: the key-value store, counters and token
//! buckets, plugin metrics and outbound HTTP, each granted or refused by
//! configuration; and the `aggregate` plugin built on outbound HTTP.

use futures_util::future::join_all;
use sluice_tests::{Gateway, Upstream, get, plugin, send_body};

/// A route at `/<name>` running the probe plugin `plugin` with `config`.
fn probe_route(name: &str, plugin: &str, config: &str) -> String {
    format!(
        r#"
[[routes]]
match = {{ path_prefix = "/{name}" }}
upstream = "a"
filters = [{{ plugin = "{plugin}", config = {config}, body = true }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_counters_and_buckets_are_exact_shared_and_namespaced() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.probe]
path = "{probe}"
grants = ["kv"]
deny = ["http", "metrics"]
[plugins.other]
path = "{probe}"
grants = ["kv"]
deny = ["http", "metrics"]

[upstreams.a]
targets = ["{up}"]
{count}{other}{kv}{take}"#,
        probe = plugin("probe"),
        up = up.addr,
        count = probe_route("count", "probe", r#"{ op = "count" }"#),
        other = probe_route("other", "other", r#"{ op = "count" }"#),
        kv = probe_route("kv", "probe", r#"{ op = "kv" }"#),
        take = probe_route("take", "probe", r#"{ op = "take" }"#),
    ))
    .await
    .unwrap();

    // 60 concurrent increments, spread over many instances: each sees a
    // different value, and none is lost.
    let url = gw.url("/count");
    let replies = join_all((0..60).map(|_| get(&url, &[]))).await;
    let mut seen: Vec<i64> = replies
        .iter()
        .map(|r| r.json()["count"].as_i64().expect("a count"))
        .collect();
    seen.sort();
    assert_eq!(seen, (1..=60).collect::<Vec<_>>());
    // Another plugin's counter of the same name is its own.
    assert_eq!(get(&gw.url("/other"), &[]).await.json()["count"], 1);

    // Values set through one instance are read through any other.
    let put = send_body("PUT", &gw.url("/kv/greeting"), &[], "hello").await;
    assert_eq!(put.json()["stored"], 5);
    let url = gw.url("/kv/greeting");
    let reads = join_all((0..10).map(|_| get(&url, &[]))).await;
    assert!(reads.iter().all(|r| r.json()["value"] == "hello"));
    assert_eq!(
        get(&gw.url("/kv/missing"), &[]).await.json()["value"],
        serde_json::Value::Null
    );

    // A 3-token bucket lets exactly 3 of 12 concurrent takes through.
    let url = gw.url("/take");
    let takes = join_all((0..12).map(|_| get(&url, &[]))).await;
    let allowed = takes.iter().filter(|r| r.json()["allowed"] == true).count();
    assert_eq!(allowed, 3);
    assert_eq!(up.hits(), 0, "the probe answers itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_capabilities_are_refused_and_reported() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.bare]
path = "{probe}"
# Imported but not granted: every call is refused.
deny = ["kv", "metrics", "http"]
[plugins.granted]
path = "{probe}"
grants = ["metrics", "http:a"]
deny = ["kv"]

[upstreams.a]
targets = ["{up}"]
[upstreams.b]
targets = ["{up}"]
{kv}{metric}{http}{other_upstream}{ok_metric}
[[routes]]
match = {{ path_prefix = "/plain" }}
upstream = "a"
"#,
        probe = plugin("probe"),
        up = up.addr,
        kv = probe_route("kv", "bare", r#"{ op = "count" }"#),
        metric = probe_route("metric", "bare", r#"{ op = "metric" }"#),
        http = probe_route(
            "http",
            "bare",
            r#"{ op = "http", upstream = "a", path = "/" }"#
        ),
        other_upstream = probe_route(
            "elsewhere",
            "granted",
            r#"{ op = "http", upstream = "b", path = "/" }"#
        ),
        ok_metric = probe_route("counted", "granted", r#"{ op = "metric" }"#),
    ))
    .await
    .unwrap();

    for (path, grant) in [
        ("/kv", "kv"),
        ("/metric", "metrics"),
        ("/http", "http:a"),
        ("/elsewhere", "http:b"),
    ] {
        let reply = get(&gw.url(path), &[]).await;
        assert_eq!(reply.status, 500, "{path}");
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains(&format!("`{grant}` is not granted")),
            "{path}: {error}"
        );
        // Typed: a plugin can tell a missing grant from a failing service.
        assert_eq!(reply.json()["kind"], "not-granted", "{path}");
    }
    assert_eq!(up.hits(), 0, "no refused call reached an upstream");
    // The gateway serves everything else as before.
    assert_eq!(get(&gw.url("/plain"), &[]).await.status, 200);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/counted"), &[]).await.status, 200);
    }

    let metrics = gw.metrics().await;
    for (plugin, grant) in [
        ("bare", "kv"),
        ("bare", "metrics"),
        ("bare", "http:a"),
        ("granted", "http:b"),
    ] {
        let line =
            format!(r#"sluice_capability_denied_total{{plugin="{plugin}",grant="{grant}"}} 1"#);
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"sluice_plugin_probe_hits_total{plugin="granted",route="route-4"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_requests_total{route="route-5",method="GET",class="2xx"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_waits_do_not_count_against_the_call_timeout() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.patient]
path = "{probe}"
grants = ["http:a"]
deny = ["kv", "metrics"]
call_timeout = "50ms"
outbound_timeout = "2s"
[plugins.hasty]
path = "{probe}"
grants = ["http:a"]
deny = ["kv", "metrics"]
outbound_timeout = "200ms"

[upstreams.a]
targets = ["{up}"]
{slow}{timeout}"#,
        probe = plugin("probe"),
        up = up.addr,
        slow = probe_route(
            "slow",
            "patient",
            r#"{ op = "http", upstream = "a", path = "/delay?ms=300" }"#
        ),
        timeout = probe_route(
            "late",
            "hasty",
            r#"{ op = "http", upstream = "a", path = "/slow" }"#
        ),
    ))
    .await
    .unwrap();

    // 300 ms spent waiting on the upstream is not 300 ms of guest time.
    let reply = get(&gw.url("/slow"), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["body"], "done");
    // The outbound timeout is the plugin's to handle.
    let reply = get(&gw.url("/late"), &[]).await;
    assert_eq!(reply.status, 500);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("timed out after 200ms"), "{error}");
    assert_eq!(reply.json()["kind"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_merges_the_json_of_two_upstreams() {
    let users = Upstream::start("users").await;
    let orders = Upstream::start("orders").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.aggregate]
path = "{aggregate}"
grants = ["http:users", "http:orders"]

[upstreams.users]
targets = ["{users}"]
[upstreams.orders]
targets = ["{orders}"]
[upstreams.dead]
targets = ["127.0.0.1:1"]

[[routes]]
match = {{ path_prefix = "/me" }}
upstream = "users"
filters = [{{ plugin = "aggregate", config = {{ forward_headers = ["authorization"], sources = [
  {{ name = "profile", upstream = "users", path = "/users{{path}}?{{query}}" }},
  {{ name = "orders", upstream = "orders", path = "/orders?customer=7" }},
] }} }}]

[[routes]]
match = {{ path_prefix = "/flat" }}
upstream = "users"
filters = [{{ plugin = "aggregate", config = {{ mode = "merge", sources = [
  {{ name = "a", upstream = "users", path = "/a" }},
  {{ name = "b", upstream = "orders", path = "/b" }},
] }} }}]

[[routes]]
match = {{ path_prefix = "/partial" }}
upstream = "users"
filters = [{{ plugin = "aggregate", config = {{ on_error = "null", sources = [
  {{ name = "profile", upstream = "users", path = "/users" }},
  {{ name = "gone", upstream = "dead", path = "/" }},
] }} }}]
"#,
        aggregate = plugin("aggregate"),
        users = users.addr,
        orders = orders.addr,
    ))
    .await
    .unwrap();

    let reply = get(&gw.url("/me?v=1"), &[("authorization", "Bearer t")]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    let merged = reply.json();
    assert_eq!(merged["profile"]["upstream"], "users");
    assert_eq!(merged["profile"]["uri"], "/users/me?v=1");
    assert_eq!(merged["profile"]["headers"]["authorization"][0], "Bearer t");
    assert_eq!(merged["orders"]["upstream"], "orders");
    assert_eq!(merged["orders"]["uri"], "/orders?customer=7");
    assert_eq!((users.hits(), orders.hits()), (1, 1));

    // Merge mode: one object, the later source winning on shared fields.
    let flat = get(&gw.url("/flat"), &[]).await.json();
    assert_eq!(flat["upstream"], "orders");
    assert_eq!(flat["uri"], "/b");

    // A source the plugin has no grant for fails like a dead one; with
    // `on_error = "null"` its part is null and the rest still answers.
    let partial = get(&gw.url("/partial"), &[]).await;
    assert_eq!(partial.status, 200);
    let partial = partial.json();
    assert_eq!(partial["profile"]["upstream"], "users");
    assert_eq!(partial["gone"], serde_json::Value::Null);
}
