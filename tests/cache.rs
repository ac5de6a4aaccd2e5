//! The response cache, steered by the real `cache-policy` plugin.

use std::collections::HashMap;

use sluice_tests::{Gateway, Upstream, get, plugin, send};

async fn gateway(up: &Upstream) -> Gateway {
    Gateway::start(&format!(
        r#"[plugins.cache]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
match = {{ path_prefix = "/pinned" }}
upstream = "a"
filters = [{{ plugin = "cache", config = {{ ttl_secs = 60 }} }}]

[[routes]]
upstream = "a"
filters = [{{ plugin = "cache", config = {{ }} }}]
"#,
        plugin("cache-policy"),
        up.addr
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_fetch_and_later_requests_hit() {
    let up = Upstream::start("a").await;
    let gw = gateway(&up).await;
    // The upstream takes a while, so the 25 requests overlap.
    let url = gw.url("/item?cc=max-age%3D60&delay_ms=300");
    let replies = futures_util::future::join_all((0..25).map(|_| get(&url, &[]))).await;
    assert_eq!(
        up.hits(),
        1,
        "one upstream fetch for 25 concurrent requests"
    );
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, replies[0].body);
        *by_status.entry(reply.header("x-cache")).or_default() += 1;
    }
    assert_eq!((by_status["MISS"], by_status["HIT"]), (1, 24));

    let later = get(&url, &[]).await;
    assert_eq!(later.header("x-cache"), "HIT");
    assert_eq!(
        later.header("cache-control"),
        "max-age=60",
        "the stored headers are served"
    );
    assert_eq!(up.hits(), 1);
    // Another query string is another key.
    assert_eq!(
        get(&gw.url("/item?cc=max-age%3D60&v=2"), &[])
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cache_control_and_the_policy_decide_what_is_kept() {
    let up = Upstream::start("a").await;
    let gw = gateway(&up).await;
    let mut expected_hits = 0;
    // Not storable: private, no-store, no lifetime at all.
    for path in ["/p?cc=private%2C%20max-age%3D60", "/n?cc=no-store", "/none"] {
        for _ in 0..2 {
            assert_eq!(
                get(&gw.url(path), &[]).await.header("x-cache"),
                "MISS",
                "{path}"
            );
            expected_hits += 1;
        }
    }
    // s-maxage counts for a shared cache even when max-age is 0.
    for cache in ["MISS", "HIT"] {
        assert_eq!(
            get(&gw.url("/s?cc=max-age%3D0%2C%20s-maxage%3D60"), &[])
                .await
                .header("x-cache"),
            cache
        );
    }
    expected_hits += 1;
    // The policy's own TTL keeps a response the upstream said nothing about.
    for cache in ["MISS", "HIT"] {
        assert_eq!(
            get(&gw.url("/pinned/x"), &[]).await.header("x-cache"),
            cache
        );
    }
    expected_hits += 1;
    // Requests with credentials bypass the cache; so do methods other than GET.
    let url = gw.url("/s?cc=max-age%3D0%2C%20s-maxage%3D60");
    assert_eq!(
        get(&url, &[("authorization", "Bearer x")])
            .await
            .header("x-cache"),
        ""
    );
    assert_eq!(send("POST", &url, &[]).await.header("x-cache"), "");
    expected_hits += 2;
    assert_eq!(up.hits(), expected_hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let up = Upstream::start("a").await;
    let gw = gateway(&up).await;
    let url = gw.url("/v?cc=max-age%3D60&vary=accept-language");
    let english = get(&url, &[("accept-language", "en")]).await;
    assert_eq!(english.header("x-cache"), "MISS");
    let again = get(&url, &[("accept-language", "en")]).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.echoed("accept-language"), ["en"]);
    let french = get(&url, &[("accept-language", "fr")]).await;
    assert_eq!(
        french.header("x-cache"),
        "MISS",
        "a different variant is not served"
    );
    assert_eq!(french.echoed("accept-language"), ["fr"]);
    assert_eq!(up.hits(), 2);
}
