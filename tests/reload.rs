//! Hot reload: plugins, their configuration, routes and listeners change
//! while traffic flows, and no request is lost or served half by one version
//! and half by another. The tests here run one at a time, since one of them
//! measures the process's memory.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use sluice_tests::{Gateway, Upstream, client, free_port, get, plugin};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn config(up: &Upstream, stamp: &str, label: &str, extra: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"
[reload]
watch = false
{extra}
[plugins.stamp]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "stamp", config = {{ label = "{label}" }} }}]
"#,
        plugin(stamp),
        up.addr
    )
}

/// The stamp on the response, checked against the one the upstream saw on the request.
fn stamp(reply: &sluice_tests::Reply) -> String {
    let seen = reply.echoed("x-stamp");
    let back = reply.header("x-stamp").to_owned();
    assert_eq!(
        seen,
        std::slice::from_ref(&back),
        "one version on the way in and out"
    );
    back
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_swaps_under_load_lose_no_request_and_mix_no_versions() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "stamp-a", "start", ""))
        .await
        .unwrap();
    let url = gw.url("/load");

    // The load: 8 clients on keep-alive connections, as fast as they go.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, url) = (stop.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let client = client();
            let (mut served, mut failures, mut stamps) = (0u64, Vec::new(), HashSet::new());
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url)
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap();
                match client.request(request).await {
                    Ok(response) => {
                        let (head, body) = response.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        match body {
                            Ok(body) if head.status == 200 => {
                                let reply = sluice_tests::Reply {
                                    status: head.status,
                                    headers: head.headers,
                                    body,
                                };
                                stamps.insert(stamp(&reply));
                                served += 1;
                            }
                            other => failures.push(format!("{}: {other:?}", head.status)),
                        }
                    }
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            (served, failures, stamps)
        }));
    }

    // 100 swaps, alternating the plugin's build and changing the route's
    // configuration each time; each is seen at once by the next request.
    let mut issued = HashSet::from(["stamp-a:start".to_owned()]);
    let mut baseline = 0;
    let mut first = None;
    for i in 0..100 {
        let build = if i % 2 == 0 { "stamp-b" } else { "stamp-a" };
        let label = format!("gen{i}");
        gw.write_config(&config(&up, build, &label, ""));
        let reload = gw.admin("POST", "/reload", "").await;
        assert_eq!(reload.status, 200, "{:?}", reload.body);
        let swapped = Instant::now();
        let expected = format!("{build}:{label}");
        issued.insert(expected.clone());
        let seen = stamp(&get(&url, &[]).await);
        assert_eq!(seen, expected);
        assert!(
            swapped.elapsed() < Duration::from_millis(100),
            "{:?}",
            swapped.elapsed()
        );
        if i == 0 {
            first = Some(Arc::downgrade(&gw.control.gateway()));
        }
        if i == 9 {
            baseline = rss();
        }
    }
    let after = rss();
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for task in load {
        let (served, failures, stamps) = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        assert!(stamps.is_subset(&issued), "{stamps:?}");
        total += served;
    }
    assert!(
        total > 200,
        "the load kept going through the swaps ({total})"
    );
    // Old versions are freed once their last request is done.
    assert!(
        first.unwrap().upgrade().is_none(),
        "an old gateway is still alive"
    );
    let growth = after as f64 / baseline as f64;
    eprintln!("100 swaps: {total} requests served, RSS {baseline} -> {after} bytes");
    assert!(
        growth < 1.10,
        "memory grew {:.1}% over 90 swaps ({baseline} -> {after} bytes)",
        (growth - 1.0) * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_and_uploads_roll_back() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "stamp-a", "x", ""))
        .await
        .unwrap();
    let url = gw.url("/");
    assert_eq!(stamp(&get(&url, &[]).await), "stamp-a:x");
    let read = |name: &str| std::fs::read(plugin(name)).unwrap();

    // Not a component; a component that rejects the route's configuration;
    // a plugin that is not configured: all refused, the old version serving.
    let garbage = gw.admin("PUT", "/plugins/stamp", "not wasm").await;
    assert_eq!(garbage.status, 422);
    assert!(
        garbage.json()["error"]
            .as_str()
            .unwrap()
            .contains("not a valid component")
    );
    let wrong = gw.admin("PUT", "/plugins/stamp", read("headers")).await;
    assert_eq!(wrong.status, 422);
    assert!(
        wrong.json()["error"]
            .as_str()
            .unwrap()
            .contains("rejected its configuration")
    );
    // Another kind of policy would move the plugin to another phase.
    let other_kind = gw.admin("PUT", "/plugins/stamp", read("fault")).await;
    assert_eq!(other_kind.status, 422);
    assert!(
        other_kind.json()["error"]
            .as_str()
            .unwrap()
            .contains("implements `http-filter`, but its routes use it as `transform`"),
        "{:?}",
        other_kind.json()
    );
    assert_eq!(
        gw.admin("PUT", "/plugins/nope", read("stamp-b"))
            .await
            .status,
        404
    );
    assert_eq!(stamp(&get(&url, &[]).await), "stamp-a:x");

    // An upload takes over, and stays when the file has not changed.
    let uploaded = gw.admin("PUT", "/plugins/stamp", read("stamp-b")).await;
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    assert_eq!(stamp(&get(&url, &[]).await), "stamp-b:x");
    assert_eq!(gw.admin("POST", "/reload", "").await.status, 200);
    assert_eq!(stamp(&get(&url, &[]).await), "stamp-b:x");
    let listed = gw.admin("GET", "/plugins", "").await.json();
    let info = &listed["plugins"][0];
    assert_eq!(info["name"], "stamp");
    assert_eq!(info["version"], 2);
    assert_eq!(info["previous"], 1);
    assert_eq!(info["origin"], "upload");
    assert_eq!(info["routes"], serde_json::json!(["route-0"]));
    let sha = sluice_control::versions::sha256(&read("stamp-b"));
    assert_eq!(info["sha256"], sha.as_str());

    // Rollback returns to the file's version; there is nothing before that.
    assert_eq!(
        gw.admin("POST", "/plugins/stamp/rollback", "").await.status,
        200
    );
    assert_eq!(stamp(&get(&url, &[]).await), "stamp-a:x");
    assert_eq!(
        gw.admin("POST", "/plugins/stamp/rollback", "").await.status,
        409
    );

    // A broken file, or a plugin file that is missing: refused, with where and why.
    std::fs::write(gw.config_path(), "[[routes]\n").unwrap();
    let broken = gw.admin("POST", "/reload", "").await;
    assert_eq!(broken.status, 422);
    assert!(
        broken.json()["error"]
            .as_str()
            .unwrap()
            .contains("sluice.toml:1")
    );
    gw.write_config(&config(&up, "no-such-plugin", "y", ""));
    let missing = gw.admin("POST", "/reload", "").await;
    assert_eq!(missing.status, 422);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("cannot read")
    );
    assert_eq!(stamp(&get(&url, &[]).await), "stamp-a:x");

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"sluice_reloads_total{result="ok"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_reloads_total{result="error"} 7"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_picked_up_by_the_watcher() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    // The plugin file lives next to the configuration, where a deploy would replace it.
    let gw = Gateway::start(&config(&up, "stamp-a", "one", ""))
        .await
        .unwrap();
    let dir = gw.config_path().parent().unwrap().to_owned();
    std::fs::copy(plugin("stamp-a"), dir.join("stamp.wasm")).unwrap();
    let watched = |label: &str| {
        config(&up, "stamp-a", label, "")
            .replace("watch = false", "watch = true")
            .replace(&plugin("stamp-a"), "stamp.wasm")
    };
    // Watching starts with a watched configuration: apply one through the admin API.
    gw.write_config(&watched("one"));
    assert_eq!(gw.admin("POST", "/reload", "").await.status, 200);
    let url = gw.url("/");

    async fn wait_for(url: &str, expected: &str) -> Duration {
        let started = Instant::now();
        loop {
            if stamp(&get(url, &[]).await) == expected {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never saw {expected}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    gw.write_config(&watched("two"));
    wait_for(&url, "stamp-a:two").await;
    // Replace the plugin file the way deploys do: write aside, rename over.
    std::fs::copy(plugin("stamp-b"), dir.join("stamp.wasm.new")).unwrap();
    std::fs::rename(dir.join("stamp.wasm.new"), dir.join("stamp.wasm")).unwrap();
    wait_for(&url, "stamp-b:two").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_open_and_drain_with_reloads() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "stamp-a", "x", ""))
        .await
        .unwrap();
    let old = gw.addr;

    // A client holding a keep-alive connection to the first listener.
    let stream = tokio::net::TcpStream::connect(old).await.unwrap();
    let (mut held, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = || {
        Request::get("/")
            .header("host", "gw")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(held.send_request(request()).await.unwrap().status(), 200);

    // Move the gateway to another port: the new one opens, the old one
    // stops accepting, and the held connection still works.
    let port = free_port();
    let moved = config(&up, "stamp-a", "x", "")
        + &format!("\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n");
    std::fs::write(gw.config_path(), moved).unwrap();
    let reload = gw.admin("POST", "/reload", "").await;
    assert_eq!(reload.status, 200, "{:?}", reload.body);
    assert_eq!(
        gw.control.local_addrs(),
        [format!("127.0.0.1:{port}").parse().unwrap()]
    );
    let moved_url = format!("http://127.0.0.1:{port}/");
    assert_eq!(stamp(&get(&moved_url, &[]).await), "stamp-a:x");
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "the old listener is closed"
    );
    let response = held.send_request(request()).await.unwrap();
    assert_eq!(response.status(), 200, "an open connection is not cut");

    // No listener at all (a file caught empty while an editor rewrites it)
    // is refused too: applying it would close every listener.
    std::fs::write(gw.config_path(), "").unwrap();
    let empty = gw.admin("POST", "/reload", "").await;
    assert_eq!(empty.status, 422);
    assert!(
        empty.json()["error"]
            .as_str()
            .unwrap()
            .contains("no [[listeners]] configured")
    );
    assert_eq!(stamp(&get(&moved_url, &[]).await), "stamp-a:x");

    // A listener that cannot open refuses the whole change.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let clash = config(&up, "stamp-b", "y", "")
        + &format!(
            "\n[[listeners]]\naddress = \"{}\"\n",
            taken.local_addr().unwrap()
        );
    std::fs::write(gw.config_path(), clash).unwrap();
    let refused = gw.admin("POST", "/reload", "").await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("cannot listen")
    );
    assert_eq!(stamp(&get(&moved_url, &[]).await), "stamp-a:x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_on_disk_and_reused() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let cache = tempfile::tempdir().unwrap();
    let engine = format!("[engine]\ncache_dir = {:?}\n", cache.path());
    let first = Gateway::start(&config(&up, "stamp-a", "x", &engine))
        .await
        .unwrap();
    assert_eq!(
        first.control.compile_cache_stats(),
        Some((0, 1)),
        "compiled once"
    );
    // A reload of an unchanged plugin does not compile at all.
    assert_eq!(first.admin("POST", "/reload", "").await.status, 200);
    assert_eq!(first.control.compile_cache_stats(), Some((0, 1)));
    // A restart finds it in the disk cache, keyed by the bytes' sha256.
    let second = Gateway::start(&config(&up, "stamp-a", "x", &engine))
        .await
        .unwrap();
    assert_eq!(second.control.compile_cache_stats(), Some((1, 0)));
    assert_eq!(stamp(&get(&second.url("/"), &[]).await), "stamp-a:x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_state_and_the_cache_survive_reloads() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let state = |label: &str| {
        format!(
            r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"
[reload]
watch = false

[plugins.limit]
path = "{limit}"
[plugins.probe]
path = "{probe}"
grants = ["kv"]
deny = ["http", "metrics"]
[plugins.policy]
path = "{policy}"
[plugins.stamp]
path = "{stamp}"

[upstreams.a]
targets = ["{up}"]

[[routes]]
match = {{ path_prefix = "/limited" }}
upstream = "a"
filters = [{{ plugin = "limit", config = {{ key = "route", capacity = 2, window_secs = 3600 }} }}]

[[routes]]
match = {{ path_prefix = "/count" }}
upstream = "a"
filters = [{{ plugin = "probe", config = {{ op = "count" }} }}]

[[routes]]
match = {{ path_prefix = "/cached" }}
upstream = "a"
filters = [{{ plugin = "policy", config = {{ ttl_secs = 3600 }} }}, {{ plugin = "stamp", config = {{ label = "{label}" }} }}]
"#,
            limit = plugin("rate-limit"),
            probe = plugin("probe"),
            policy = plugin("cache-policy"),
            stamp = plugin("stamp-a"),
            up = up.addr,
        )
    };
    let gw = Gateway::start(&state("before")).await.unwrap();
    let limited = gw.url("/limited");
    assert_eq!(get(&limited, &[]).await.status, 200);
    assert_eq!(get(&limited, &[]).await.status, 200);
    assert_eq!(get(&gw.url("/count"), &[]).await.json()["count"], 1);
    assert_eq!(get(&gw.url("/cached"), &[]).await.header("x-cache"), "MISS");

    // A reload that changes a route's configuration keeps the buckets, the
    // counters and the cache: they belong to the host, not to a version.
    gw.write_config(&state("after"));
    assert_eq!(gw.admin("POST", "/reload", "").await.status, 200);
    assert_eq!(get(&limited, &[]).await.status, 429);
    assert_eq!(get(&gw.url("/count"), &[]).await.json()["count"], 2);
    let cached = get(&gw.url("/cached"), &[]).await;
    assert_eq!(cached.header("x-cache"), "HIT");
    assert_eq!(
        cached.header("x-stamp"),
        "stamp-a:after",
        "the new version ran"
    );
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_only_its_token_its_host_names_and_json() {
    use sluice_tests::send_body;
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "stamp-a", "x", ""))
        .await
        .unwrap();
    let admin = gw.admin.unwrap();
    let url = |path: &str| format!("http://{admin}{path}");
    let token = ("authorization", "Bearer test-admin-token");
    let json = ("content-type", "application/json");

    // Health is for anyone; everything else needs the token.
    assert_eq!(get(&url("/healthz"), &[]).await.status, 200);
    for path in ["/plugins", "/metrics"] {
        let anonymous = get(&url(path), &[]).await;
        assert_eq!(anonymous.status, 401, "{path}");
        assert_eq!(
            anonymous.header("www-authenticate"),
            "Bearer realm=\"sluice-admin\""
        );
        let wrong = get(&url(path), &[("authorization", "Bearer test-admin-tokeN")]).await;
        assert_eq!(wrong.status, 401, "{path}");
    }
    let reload = |headers: Vec<(&'static str, &'static str)>| {
        let url = url("/reload");
        async move { send_body("POST", &url, &headers, "{}").await.status }
    };
    assert_eq!(reload(vec![json]).await, 401);
    // A page on another site can post a form to loopback, but not with JSON
    // or a token; and a rebound DNS name arrives with its own `Host`.
    for form in [
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
    ] {
        assert_eq!(
            reload(vec![token, ("content-type", form)]).await,
            415,
            "{form}"
        );
    }
    assert_eq!(reload(vec![token]).await, 415);
    assert_eq!(
        reload(vec![token, json, ("host", "attacker.test")]).await,
        421
    );
    assert_eq!(reload(vec![token, json]).await, 200);
    assert_eq!(
        reload(vec![token, json, ("host", "localhost:1")]).await,
        200
    );
    let upload = send_body(
        "PUT",
        &url("/plugins/stamp"),
        &[token, ("content-type", "application/octet-stream")],
        std::fs::read(plugin("stamp-b")).unwrap(),
    )
    .await;
    assert_eq!(upload.status, 415);
    assert_eq!(
        stamp(&get(&gw.url("/"), &[]).await),
        "stamp-a:x",
        "nothing changed"
    );

    // A head sent too slowly is cut off, as on the client listeners.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /plugins HTTP/1.1\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the admin listener waited on a half-sent head for 10 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metrics_can_be_public_for_scrapers() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let text = config(&up, "stamp-a", "x", "").replace(
        "token = \"test-admin-token\"",
        "token_file = \"admin.token\"\npublic_metrics = true\nhosts = [\"gateway.internal\"]",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "test-admin-token\n").unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n{text}"),
    )
    .unwrap();
    let server = sluice_control::Server::from_file(&path).await.unwrap();
    let admin = server.admin_addr().unwrap();
    let _serving = tokio::spawn(server.serve());
    let metrics = get(
        &format!("http://{admin}/metrics"),
        &[("host", "gateway.internal")],
    )
    .await;
    assert_eq!(metrics.status, 200);
    let plugins = format!("http://{admin}/plugins");
    assert_eq!(get(&plugins, &[]).await.status, 401);
    let token = [("authorization", "Bearer test-admin-token")];
    assert_eq!(
        get(&plugins, &token).await.status,
        200,
        "the token came from its file"
    );
}
