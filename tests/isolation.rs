//! A misbehaving plugin (trap, endless loop, memory hog) fails its own
//! requests with a clear 5xx, is replaced, and nothing else is disturbed.

use sluice_tests::{Gateway, Upstream, get, plugin};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn gateway(up: &Upstream, on_failure: &str) -> Gateway {
    Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.fault]
path = "{}"
deny = ["http"]
call_timeout = "100ms"
memory_limit_mib = 16
on_failure = "{on_failure}"

[upstreams.a]
targets = ["{}"]

[[routes]]
name = "faulty"
match = {{ path_prefix = "/f" }}
upstream = "a"
filters = [{{ plugin = "fault", config = {{ on = {{ "/f/boom" = "panic", "/f/spin" = "spin", "/f/hog" = "hog" }} }} }}]

[[routes]]
name = "healthy"
upstream = "a"
"#,
        plugin("fault"),
        up.addr
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_filters_answer_500_while_everything_else_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = gateway(&up, "closed").await;
    for fault in ["/f/boom", "/f/spin", "/f/hog"] {
        // Each failure happens while other requests, on the same plugin and on
        // another route, are in flight.
        let (fault_url, other_url) = (gw.url(fault), gw.url("/elsewhere"));
        let failing = get(&fault_url, &[]);
        let same_plugin = async {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(get(&gw.url("/f/fine"), &[]).await.status);
            }
            statuses
        };
        let other_route = get(&other_url, &[]);
        let (failed, same_plugin, other_route) = tokio::join!(failing, same_plugin, other_route);
        assert_eq!(failed.status, 500, "{fault}");
        assert_eq!(failed.header("x-sluice-error"), "filter_failed", "{fault}");
        assert!(
            same_plugin.iter().all(|s| *s == 200),
            "{fault}: {same_plugin:?}"
        );
        assert_eq!(other_route.status, 200, "{fault}");
        // The failed instance was replaced: the plugin keeps working.
        assert_eq!(get(&gw.url("/f/after"), &[]).await.status, 200, "{fault}");
    }
    // Repeated failures do not wear the gateway down.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/f/boom"), &[]).await.status, 500);
    }
    assert_eq!(get(&gw.url("/f/fine"), &[]).await.status, 200);
    // 3 kinds of failure, then 20 panics: each counted against the plugin, by why.
    let metrics = gw.metrics().await;
    for (reason, count) in [("trap", 21), ("timeout", 1), ("out_of_memory", 1)] {
        let series =
            format!(r#"sluice_filter_failures_total{{plugin="fault",reason="{reason}"}} {count}"#);
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    assert!(
        metrics.contains(r#"sluice_requests_total{route="faulty",method="GET",class="5xx"} 23"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"sluice_filter_failure_outcomes_total{plugin="fault",outcome="failed_closed"} 23"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_plugin_is_skipped_when_it_fails() {
    let up = Upstream::start("a").await;
    let gw = gateway(&up, "open").await;
    for fault in ["/f/boom", "/f/spin"] {
        let reply = get(&gw.url(fault), &[]).await;
        assert_eq!(reply.status, 200, "{fault}");
        assert_eq!(reply.header("x-upstream"), "a");
    }
    let metrics = gw.metrics().await;
    let skipped = r#"sluice_filter_failure_outcomes_total{plugin="fault",outcome="failed_open"} 2"#;
    assert!(metrics.contains(skipped), "{metrics}");
}

/// One thread serves everything here, as with `--workers 1`: a call that
/// held its thread would hold every other request with it.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_plugin_yields_its_thread_to_other_routes() {
    // Timing matters here: not alongside the other tests that spin plugins.
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.fault]
path = "{}"
deny = ["http"]
call_timeout = "500ms"
cpu_share = 1.0

[upstreams.a]
targets = ["{}"]

[[routes]]
match = {{ path_prefix = "/f" }}
upstream = "a"
filters = [{{ plugin = "fault", config = {{ on = {{ "/f/spin" = "spin" }} }} }}]

[[routes]]
upstream = "a"
"#,
        plugin("fault"),
        up.addr
    ))
    .await
    .unwrap();
    let mut spinners = Vec::new();
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..40 {
        if i == 5 {
            for _ in 0..3 {
                spinners.push(tokio::spawn(get_owned(gw.url("/f/spin"))));
            }
        }
        let started = std::time::Instant::now();
        assert_eq!(get(&gw.url("/elsewhere"), &[]).await.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    for spinner in spinners {
        let reply = spinner.await.unwrap();
        assert_eq!(reply.status, 500);
        assert_eq!(reply.header("x-sluice-error"), "filter_failed");
    }
    // Held behind a spinning call, a request would wait its whole 500 ms.
    assert!(
        slowest < std::time::Duration::from_millis(250),
        "another route waited {slowest:?} behind a looping plugin"
    );
}

async fn get_owned(url: String) -> sluice_tests::Reply {
    get(&url, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_holds_at_most_its_max_concurrency_of_calls() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"[plugins.fault]
path = "{}"
deny = ["http"]
call_timeout = "200ms"
max_concurrency = 2

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "fault", config = {{ on = {{ "/spin" = "spin" }} }} }}]
"#,
        plugin("fault"),
        up.addr
    ))
    .await
    .unwrap();
    let replies = futures_util::future::join_all((0..5).map(|_| get_owned(gw.url("/spin")))).await;
    let busy = replies
        .iter()
        .filter(|r| r.status == 503 && r.header("x-sluice-error") == "filter_busy")
        .count();
    let failed = replies.iter().filter(|r| r.status == 500).count();
    assert!(
        busy >= 1 && busy + failed == 5,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // Slots come back: the plugin serves again.
    assert_eq!(get(&gw.url("/fine"), &[]).await.status, 200);
}

/// A client that hangs up while its request is inside a plugin cancels the
/// call halfway: that instance must never serve again, and the gateway must
/// not notice anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_call_leaves_the_plugin_sound() {
    use tokio::io::AsyncWriteExt;
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("a").await;
    let gw = gateway(&up, "closed").await;
    // Warm: the spinning call would otherwise take the only instance.
    assert_eq!(get(&gw.url("/f/fine"), &[]).await.status, 200);
    for _ in 0..3 {
        let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        client
            .write_all(b"GET /f/spin HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        for _ in 0..10 {
            assert_eq!(get(&gw.url("/f/fine"), &[]).await.status, 200);
        }
    }
    assert_eq!(get(&gw.url("/elsewhere"), &[]).await.status, 200);
}

/// `[engine] max_instances` caps the plugin instances live at once: a
/// configuration whose routes need more is refused, naming the filter that
/// could not start, and one within it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_keeps_no_more_instances_than_allowed() {
    let up = Upstream::start("a").await;
    let config = |max: u32| {
        format!(
            r#"[engine]
max_instances = {max}

[plugins.noop]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "noop" }}, {{ plugin = "noop" }}, {{ plugin = "noop" }}]
"#,
            plugin("noop"),
            up.addr
        )
    };
    let refused = Gateway::start(&config(2)).await.err();
    let message = format!("{:#}", refused.expect("three filters need three instances"));
    assert!(
        message.contains("filters[2]") && message.contains("failed to start"),
        "{message}"
    );
    let gw = Gateway::start(&config(3)).await.unwrap();
    assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
}
