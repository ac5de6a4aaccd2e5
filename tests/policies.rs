//! Rate limiting (host-kept token buckets) and routing decisions, with the
//! real `rate-limit`, `router` and `api-key-auth` plugins.

use std::time::Duration;

use sluice_tests::{Gateway, Upstream, by_upstream, get, plugin, send_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_exactly_under_concurrency_and_refill() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.limit]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
match = {{ path_prefix = "/burst" }}
upstream = "a"
filters = [{{ plugin = "limit", config = {{ key = "header:x-client", capacity = 5, window_secs = 3600 }} }}]

[[routes]]
match = {{ path_prefix = "/refill" }}
upstream = "a"
filters = [{{ plugin = "limit", config = {{ key = "route", capacity = 1, window_secs = 2 }} }}]
"#,
        plugin("rate-limit"),
        up.addr
    ))
    .await
    .unwrap();

    // 40 concurrent requests from one client: exactly 5 get through.
    let url = gw.url("/burst");
    let replies =
        futures_util::future::join_all((0..40).map(|_| get(&url, &[("x-client", "one")]))).await;
    let allowed: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((allowed.len(), refused.len()), (5, 35));
    assert_eq!(up.hits(), 5);
    let mut remaining: Vec<_> = allowed
        .iter()
        .map(|r| r.header("ratelimit-remaining").to_owned())
        .collect();
    remaining.sort();
    assert_eq!(remaining, ["0", "1", "2", "3", "4"]);
    for reply in &refused {
        assert_eq!(reply.header("ratelimit-limit"), "5");
        assert_eq!(reply.header("ratelimit-remaining"), "0");
        assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
    }
    // Another client has its own bucket.
    assert_eq!(get(&url, &[("x-client", "two")]).await.status, 200);

    // A bucket refills: after Retry-After, the request goes through again.
    let refill = gw.url("/refill");
    assert_eq!(get(&refill, &[]).await.status, 200);
    let refused = get(&refill, &[]).await;
    assert_eq!(refused.status, 429);
    let wait: u64 = refused.header("retry-after").parse().unwrap();
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    assert_eq!(get(&refill, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_follow_the_authenticated_identity_and_its_tier() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.auth]
path = "{}"
[plugins.limit]
path = "{}"
# The same limiter without tiers (buckets are the plugin's own).
[plugins.plain-limit]
path = "{}"

[upstreams.a]
targets = ["{}"]

# No tier: the limiter reads the subject alone (`request.subject`, 0.2.5).
[[routes]]
match = {{ path_prefix = "/plain" }}
upstream = "a"
filters = [
  {{ plugin = "plain-limit", config = {{ key = "identity", capacity = 1, window_secs = 3600 }} }},
  {{ plugin = "auth", config = {{ keys = [
      {{ key = "k-alice", owner = "alice", claims = {{ plan = "gold" }} }},
      {{ key = "k-bob", owner = "bob", claims = {{ plan = "free" }} }},
  ] }} }},
]

[[routes]]
upstream = "a"
filters = [
  {{ plugin = "limit", config = {{ key = "identity", capacity = 1, window_secs = 3600, tier_claim = "plan", tiers = {{ gold = 3 }} }} }},
  {{ plugin = "auth", config = {{ keys = [
      {{ key = "k-alice", owner = "alice", claims = {{ plan = "gold" }} }},
      {{ key = "k-bob", owner = "bob", claims = {{ plan = "free" }} }},
  ] }} }},
]
"#,
        plugin("api-key-auth"),
        plugin("rate-limit"),
        plugin("rate-limit"),
        up.addr
    ))
    .await
    .unwrap();
    let count = |path: &'static str, key: &'static str| {
        let url = gw.url(path);
        async move {
            let mut allowed = 0;
            for _ in 0..6 {
                if get(&url, &[("x-api-key", key)]).await.status == 200 {
                    allowed += 1;
                }
            }
            allowed
        }
    };
    assert_eq!(count("/", "k-alice").await, 3, "gold tier");
    assert_eq!(count("/", "k-bob").await, 1, "default capacity");
    // A bucket per subject, though both come from one address.
    assert_eq!(count("/plain", "k-alice").await, 1);
    assert_eq!(count("/plain", "k-bob").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_picks_named_upstreams_by_header_cookie_and_path() {
    let (stable, stable_b) = (
        Upstream::start("stable").await,
        Upstream::start("stable-b").await,
    );
    let (canary, v2) = (Upstream::start("canary").await, Upstream::start("v2").await);
    let gw = Gateway::start(&format!(
        r#"[plugins.router]
path = "{}"

[upstreams.stable]
targets = ["{}", "{}"]
balance = "round-robin"
[upstreams.canary]
targets = ["{}"]
[upstreams.v2]
targets = ["{}"]

[[routes]]
upstream = "stable"
filters = [{{ plugin = "router", config = {{ rules = [
  {{ upstream = "canary", header = {{ name = "x-canary", value = "1" }} }},
  {{ upstream = "canary", cookie = {{ name = "beta", value = "yes" }} }},
  {{ upstream = "v2", path_prefix = "/v2", strip_prefix = true }},
  {{ upstream = "nowhere", path_prefix = "/broken" }},
] }} }}]
"#,
        plugin("router"),
        stable.addr,
        stable_b.addr,
        canary.addr,
        v2.addr
    ))
    .await
    .unwrap();

    let plain = get(&gw.url("/items"), &[]).await;
    assert!(plain.header("x-upstream").starts_with("stable"));
    let flagged = get(&gw.url("/items"), &[("x-canary", "1")]).await;
    assert_eq!(flagged.header("x-upstream"), "canary");
    let other_flag = get(&gw.url("/items"), &[("x-canary", "0")]).await;
    assert!(other_flag.header("x-upstream").starts_with("stable"));
    let cookie = get(&gw.url("/items"), &[("cookie", "theme=dark; beta=yes")]).await;
    assert_eq!(cookie.header("x-upstream"), "canary");
    let versioned = get(&gw.url("/v2/items?page=2"), &[]).await;
    assert_eq!(versioned.header("x-upstream"), "v2");
    assert_eq!(
        versioned.json()["uri"],
        "/items?page=2",
        "prefix stripped, query kept"
    );

    // A routing decision naming an upstream that does not exist is a clear 500.
    let broken = get(&gw.url("/broken"), &[]).await;
    assert_eq!(broken.status, 500);
    assert_eq!(broken.header("x-sluice-error"), "unknown_upstream");

    // The router picks the upstream; the host still balances inside it.
    let url = gw.url("/x");
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(get(&url, &[]).await);
    }
    let counts = by_upstream(&replies);
    assert_eq!((counts["stable"], counts["stable-b"]), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_splits_canary_traffic_by_weight_and_sticks_clients() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.router]
path = "{}"

[upstreams.stable]
targets = ["{}"]
[upstreams.canary]
targets = ["{}"]

[[routes]]
match = {{ path_prefix = "/random" }}
upstream = "stable"
filters = [{{ plugin = "router", config = {{ split = [{{ upstream = "stable", weight = 90 }}, {{ upstream = "canary", weight = 10 }}] }} }}]

[[routes]]
match = {{ path_prefix = "/sticky" }}
upstream = "stable"
filters = [{{ plugin = "router", config = {{ sticky = "header:x-user", split = [{{ upstream = "stable", weight = 50 }}, {{ upstream = "canary", weight = 50 }}] }} }}]
"#,
        plugin("router"),
        stable.addr,
        canary.addr
    ))
    .await
    .unwrap();

    // 2,000 requests split 90/10: the canary's share is 200 expected, with a
    // standard deviation of ~13; 5 of those either way is the tolerance.
    let url = gw.url("/random");
    let mut replies = Vec::new();
    for _ in 0..40 {
        replies.extend(futures_util::future::join_all((0..50).map(|_| get(&url, &[]))).await);
    }
    let counts = by_upstream(&replies);
    let to_canary = counts.get("canary").copied().unwrap_or(0);
    assert_eq!(counts.get("stable").copied().unwrap_or(0) + to_canary, 2000);
    assert!(
        (134..=266).contains(&to_canary),
        "canary got {to_canary} of 2000"
    );

    // Sticky by header: each user always lands on the same side, and users spread over both.
    let url = gw.url("/sticky");
    let mut sides = std::collections::HashSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let headers = [("x-user", user.as_str())];
        let replies = futures_util::future::join_all((0..5).map(|_| get(&url, &headers))).await;
        let counts = by_upstream(&replies);
        assert_eq!(counts.len(), 1, "{user} was split: {counts:?}");
        sides.extend(counts.into_keys());
    }
    assert_eq!(sides.len(), 2, "20 users all landed on one side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_edits_headers_paths_queries_versions_and_json_bodies() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.transform]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "transform", body = true, config = {{
  rewrite = [
    {{ pattern = "^/old/(?P<rest>.*)$", replacement = "/new/${{rest}}" }},
    {{ pattern = "^/escape$", replacement = "/../../etc/passwd" }},
  ],
  version = {{ header = "accept-version", prefixes = {{ "2" = "/v2" }} }},
  query = {{ set = {{ source = "gw" }}, remove = ["debug"] }},
  request_headers = {{ set = {{ x-env = "prod" }}, add = {{ x-via = "sluice" }}, remove = ["x-debug"] }},
  response_headers = {{ set = {{ x-served-by = "sluice" }}, remove = ["server"] }},
  request_json = {{ set = {{ "/meta/via" = "sluice" }}, remove = ["/password"] }},
  response_json = {{ set = {{ "/served" = true }}, remove = ["/internal"] }},
  max_body_bytes = 1000,
}} }}]
"#,
        plugin("transform"),
        up.addr
    ))
    .await
    .unwrap();

    let moved = get(
        &gw.url("/old/thing?debug=1&a=b"),
        &[("x-debug", "1"), ("x-via", "client")],
    )
    .await;
    assert_eq!(moved.json()["uri"], "/new/thing?a=b&source=gw");
    // Header edits both ways: the upstream's `server` never reaches the client.
    assert_eq!(moved.echoed("x-env"), ["prod"]);
    assert_eq!(moved.echoed("x-via"), ["client", "sluice"]);
    assert!(moved.echoed("x-debug").is_empty());
    assert_eq!(moved.header("x-served-by"), "sluice");
    assert_eq!(moved.header("server"), "");
    let versioned = get(&gw.url("/items"), &[("accept-version", "2")]).await;
    assert_eq!(versioned.json()["uri"], "/v2/items?source=gw");
    // A rewrite that would climb above the root is the filter's failure.
    let escaped = get(&gw.url("/escape"), &[]).await;
    assert_eq!(escaped.status, 500);
    assert_eq!(escaped.header("x-sluice-error"), "filter_failed");
    let metrics = gw.metrics().await;
    let counted = r#"sluice_filter_failures_total{plugin="transform",reason="invalid_answer"} 1"#;
    assert!(metrics.contains(counted), "{metrics}");

    let body = r#"{"user":"ann","password":"hunter2","internal":{"cost":3}}"#;
    let mirrored = send_body(
        "POST",
        &gw.url("/mirror"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(mirrored.status, 200);
    assert_eq!(
        mirrored.json(),
        serde_json::json!({ "user": "ann", "meta": { "via": "sluice" }, "served": true }),
        "request edits reached the upstream, response edits reached the client"
    );
    assert_eq!(
        mirrored.header("content-length"),
        mirrored.body.len().to_string()
    );

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let refused = send_body("POST", &gw.url("/mirror"), &[], big).await;
    assert_eq!(refused.status, 413);
    assert_eq!(
        up.hits(),
        3,
        "the oversized body never reached the upstream"
    );
}
