//! The sample plugins and the chain that runs them, with the real components.

use sluice_tests::{Gateway, Upstream, get, plugin};

fn plugins() -> String {
    format!(
        "[plugins.auth]\npath = \"{}\"\n[plugins.headers]\npath = \"{}\"\n",
        plugin("api-key-auth"),
        plugin("headers")
    )
}

const KEYS: &str = r#"keys = [
    { key = "k-alice", owner = "alice", claims = { plan = "gold" } },
    { key = "k-bob", owner = "bob" },
]"#;

async fn gateway_with(up: &Upstream, filters: &str) -> Gateway {
    Gateway::start(&format!(
        "{}\n[upstreams.a]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"api\"\nupstream = \"a\"\nfilters = [\n{filters}\n]\n",
        plugins(),
        up.addr
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_auth_accepts_known_keys_and_rejects_others() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(
        &up,
        &format!(
            r#"{{ plugin = "auth", config = {{ {KEYS}, query = "api_key" }} }},
{{ plugin = "headers", config = {{ request = {{ set = {{ x-user = "{{identity}}", x-plan = "{{claim.plan}}" }} }} }} }},"#
        ),
    )
    .await;

    let missing = get(&gw.url("/orders"), &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        r#"ApiKey realm="sluice", header="x-api-key""#
    );
    assert_eq!(missing.json()["error"], "missing_api_key");

    let wrong = get(&gw.url("/orders"), &[("x-api-key", "nope")]).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_api_key");
    assert_eq!(up.hits(), 0, "denied requests never reach the upstream");

    let alice = get(&gw.url("/orders"), &[("x-api-key", "k-alice")]).await;
    assert_eq!(alice.status, 200);
    assert_eq!(alice.echoed("x-user"), ["alice"]);
    assert_eq!(alice.echoed("x-plan"), ["gold"]);
    assert!(
        alice.echoed("x-api-key").is_empty(),
        "the key is not passed upstream"
    );

    let bob = get(&gw.url("/orders?api_key=k-bob"), &[]).await;
    assert_eq!(bob.status, 200);
    assert_eq!(bob.echoed("x-user"), ["bob"]);
    assert!(
        bob.echoed("x-plan").is_empty(),
        "a template naming a missing claim is left out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_edited_both_ways() {
    let up = Upstream::start("a").await;
    let gw = gateway_with(
        &up,
        r#"{ plugin = "headers", config = {
    request = { set = { x-route = "{route}", x-replaced = "new", x-cookie-was = "{header.cookie}", x-none = "{header.x-absent}" }, add = { x-multi = "added" }, remove = ["cookie"] },
    response = { set = { x-served-by = "sluice", x-upstream-was = "by {header.x-upstream}" }, add = { x-path = "{method} {path}" }, remove = ["server"] },
} },"#,
    )
    .await;
    let reply = get(
        &gw.url("/things"),
        &[
            ("cookie", "secret=1"),
            ("x-replaced", "old"),
            ("x-multi", "original"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("x-route"), ["api"]);
    assert_eq!(reply.echoed("x-replaced"), ["new"]);
    assert_eq!(reply.echoed("x-multi"), ["original", "added"]);
    assert!(reply.echoed("cookie").is_empty());
    // Templates read the headers as they reached the filter, before its edits.
    assert_eq!(reply.echoed("x-cookie-was"), ["secret=1"]);
    assert!(
        reply.echoed("x-none").is_empty(),
        "a missing header is left out"
    );
    assert_eq!(reply.header("x-upstream-was"), "by a");
    assert_eq!(reply.header("x-served-by"), "sluice");
    assert_eq!(reply.header("x-path"), "GET /things");
    assert_eq!(
        reply.header("server"),
        "",
        "the upstream's `server` header was removed"
    );
    assert_eq!(reply.header("x-upstream"), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_run_in_kind_order_and_a_deny_short_circuits() {
    let up = Upstream::start("a").await;
    // Transforms listed before auth: auth still runs first (its identity is
    // visible to them), and the transforms keep their listed order.
    let gw = gateway_with(
        &up,
        &format!(
            r#"{{ plugin = "headers", config = {{ request = {{ add = {{ x-chain = "first", x-seen-user = "{{identity}}" }} }}, response = {{ add = {{ x-back = "first" }} }} }} }},
{{ plugin = "auth", config = {{ {KEYS} }} }},
{{ plugin = "headers", config = {{ request = {{ add = {{ x-chain = "second" }} }}, response = {{ add = {{ x-back = "second" }} }} }} }},"#
        ),
    )
    .await;

    let allowed = get(&gw.url("/"), &[("x-api-key", "k-bob")]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.echoed("x-chain"), ["first", "second"]);
    assert_eq!(
        allowed.echoed("x-seen-user"),
        ["bob"],
        "auth ran before the transform listed above it"
    );
    let back: Vec<_> = allowed
        .headers
        .get_all("x-back")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(back, ["second", "first"], "response phases run in reverse");

    let denied = get(&gw.url("/"), &[]).await;
    assert_eq!(denied.status, 401);
    assert!(
        denied.headers.get("x-back").is_none(),
        "filters after the deny did not run"
    );
    assert_eq!(
        up.hits(),
        1,
        "only the allowed request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rejecting_its_config_names_the_file_line_route_and_plugin() {
    let up = Upstream::start("a").await;
    let error = Gateway::start(&format!(
        "{}\n[upstreams.a]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"shop\"\nupstream = \"a\"\nfilters = [\n  {{ plugin = \"headers\", config = {{ request = {{ set = {{ x = \"{{nope}}\" }} }} }} }},\n]\n",
        plugins(),
        up.addr
    ))
    .await
    .err()
    .expect("the gateway refuses to start")
    .to_string();
    assert!(error.contains("sluice.toml:16:"), "{error}");
    assert!(error.contains("routes[0].filters[0]"), "{error}");
    assert!(error.contains("route `shop`"), "{error}");
    assert!(
        error.contains("plugin `headers` rejected its configuration"),
        "{error}"
    );
    assert!(error.contains("unknown variable `{nope}`"), "{error}");

    let typo = Gateway::start(&format!(
        "{}\n[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\nfilters = [{{ plugin = \"auth\", config = {{ keyz = [] }} }}]\n",
        plugins(),
        up.addr
    ))
    .await
    .err()
    .expect("unknown plugin config keys are refused")
    .to_string();
    assert!(typo.contains("unknown field `keyz`"), "{typo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_invalid_plugin_file_names_the_plugin_and_path() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not-a-plugin.wasm");
    std::fs::write(&not_wasm, b"definitely not wasm").unwrap();
    for (path, expected) in [
        ("/nonexistent/gone.wasm".to_owned(), "cannot read"),
        (not_wasm.display().to_string(), "not a valid component"),
    ] {
        let error = Gateway::start(&format!(
            "[plugins.broken]\npath = \"{path}\"\n[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\n",
            up.addr
        ))
        .await
        .err()
        .expect("refused")
        .to_string();
        assert!(error.contains("plugin `broken`"), "{error}");
        assert!(error.contains(&path), "{error}");
        assert!(error.contains(expected), "{error}");
        assert!(
            error.contains("sluice.toml:5: plugins.broken.path"),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configurations_load_and_the_api_gateway_one_works() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path().join("sluice.toml");
        let config = sluice_control::Config::load(&path).unwrap();
        sluice_control::check(&config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        loaded += 1;
    }
    assert!(loaded >= 2);

    // The API gateway example as its comments describe it, with a test
    // upstream behind every upstream and ports picked by the system.
    let up = Upstream::start("a").await;
    let target = up.addr.to_string();
    let hook = std::sync::Arc::new(move |config: &mut sluice_control::Config| {
        for upstream in config.upstreams.values_mut() {
            *upstream.targets.get_mut() = vec![target.clone().into()];
        }
        config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
        config.admin = None;
    });
    let config = sluice_control::Config::load(&examples.join("api-gateway/sluice.toml")).unwrap();
    let server = sluice_control::Server::bind_with_hook(config, Some(hook))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let _serving = tokio::spawn(server.serve());
    let text = std::fs::read_to_string(examples.join("api-gateway/sluice.toml")).unwrap();
    let token = |who: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("#   {who}=")))
            .expect("the demo token is in the comments");
        format!("Bearer {}", line.split_once('=').unwrap().1)
    };
    let url = format!("http://{addr}/api/orders");

    let alice = get(&url, &[("authorization", &token("ALICE"))]).await;
    assert_eq!(alice.status, 200, "{:?}", alice.body);
    assert_eq!(alice.echoed("x-user"), ["alice"]);
    assert_eq!(alice.header("x-served-by"), "sluice");
    assert_eq!(get(&url, &[]).await.status, 401);
    let bob = token("BOB");
    let bob = [("authorization", bob.as_str())];
    let statuses: Vec<u16> = futures_util::future::join_all((0..6).map(|_| get(&url, &bob)))
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    let dashboard = get(&format!("http://{addr}/dashboard"), &[]).await.json();
    assert_eq!(dashboard["profile"]["uri"], "/profile");
    assert_eq!(dashboard["orders"]["uri"], "/orders?recent=5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_without_a_response_phase_is_not_called_on_responses() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.noop]
path = "{}"
[plugins.stamp]
path = "{}"
[plugins.transform]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [
  {{ plugin = "noop" }},
  {{ plugin = "stamp", config = {{ label = "x" }} }},
  {{ plugin = "transform", config = {{ request_headers = {{ set = {{ x-t = "1" }} }} }} }},
]
"#,
        plugin("noop"),
        plugin("stamp-a"),
        plugin("transform"),
        up.addr
    ))
    .await
    .unwrap();
    for _ in 0..5 {
        let reply = get(&gw.url("/"), &[]).await;
        assert_eq!(reply.status, 200);
        // The filter that has a response phase still runs it every time.
        assert_eq!(reply.header("x-stamp"), "stamp-a:x");
        assert_eq!(reply.echoed("x-t"), ["1"]);
    }
    let metrics = gw.metrics().await;
    for (plugin, phase, calls) in [
        ("noop", "request", 5),
        // The first response tells the gateway that `noop` leaves it out.
        ("noop", "response", 1),
        ("stamp", "request", 5),
        ("stamp", "response", 5),
        // One whose configuration has nothing for responses says so too.
        ("transform", "request", 5),
        ("transform", "response", 1),
    ] {
        let line =
            format!(r#"sluice_filter_calls_total{{plugin="{plugin}",phase="{phase}"}} {calls}"#);
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}
