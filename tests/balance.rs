//! The load balancer: algorithms, stickiness, failover (retries, outlier
//! ejection, active health checks), timeouts, names, and reloads that keep
//! the targets they do not change. Real upstream servers on loopback, some
//! killed or hung mid-test.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_tests::{Gateway, Reply, Upstream, by_upstream, get};

const ADMIN: &str = "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n";

/// A gateway with one route to upstream `u`, configured by `settings`
/// (TOML lines of `[upstreams.u]`, `targets` included).
async fn gateway(settings: &str) -> Gateway {
    Gateway::start(&format!(
        "{ADMIN}[upstreams.u]\n{settings}\n[[routes]]\nupstream = \"u\"\n"
    ))
    .await
    .expect("gateway starts")
}

fn targets(ups: &[&Upstream]) -> String {
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!("targets = [{}]", list.join(", "))
}

async fn spread(gw: &Gateway, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(get(&gw.url("/"), headers).await);
    }
    by_upstream(&replies)
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights_smoothly() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let gw = gateway(&format!(
        "balance = \"round-robin\"\ntargets = [\"{}\", {{ address = \"{}\", weight = 2 }}, {{ address = \"{}\", weight = 3 }}]",
        a.addr, b.addr, c.addr
    ))
    .await;
    let mut order = Vec::new();
    for _ in 0..12 {
        order.push(get(&gw.url("/"), &[]).await.header("x-upstream").to_owned());
    }
    let count = |id: &str| order.iter().filter(|o| *o == id).count();
    assert_eq!((count("a"), count("b"), count("c")), (2, 4, 6), "{order:?}");
    // Smooth: the heaviest never gets more than two in a row.
    assert!(
        !order.windows(3).any(|w| w.iter().all(|o| o == "c")),
        "{order:?}"
    );
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(&format!(
        "balance = \"random\"\ntargets = [\"{}\", {{ address = \"{}\", weight = 3 }}]",
        a.addr, b.addr
    ))
    .await;
    let seen = spread(&gw, 400, &[]).await;
    let b_share = seen["b"] as f64 / 400.0;
    assert!((0.65..0.85).contains(&b_share), "{seen:?}");
}

/// Requests in flight at once, each `delay_ms` long, through the gateway.
async fn concurrent(gw: &Gateway, clients: usize, each: usize, path: &str) -> Vec<Reply> {
    let url = gw.url(path);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for _ in 0..each {
                    replies.push(get(&url, &[]).await);
                }
                replies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test]
async fn least_connections_and_least_time_avoid_a_slow_target() {
    for balance in ["least-connections", "least-time"] {
        let fast = Upstream::start("fast").await;
        // Everything the slow one answers takes 40 ms more.
        let slow = Upstream::start("slow").await;
        slow.delay(Duration::from_millis(40));
        let gw = gateway(&format!(
            "balance = \"{balance}\"\n{}",
            targets(&[&fast, &slow])
        ))
        .await;
        let replies = concurrent(&gw, 8, 25, "/").await;
        let seen = by_upstream(&replies);
        let slow_share = seen.get("slow").copied().unwrap_or(0) as f64 / replies.len() as f64;
        assert!(slow_share < 0.25, "{balance}: {seen:?}");
        assert!(replies.iter().all(|r| r.status == 200));
    }
}

#[tokio::test]
async fn hashing_keeps_a_key_on_its_target() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gw = gateway(&format!(
        "balance = \"hash\"\nhash_on = \"header:x-user\"\n{}",
        targets(&refs)
    ))
    .await;
    let mut homes = HashMap::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let first = get(&gw.url("/"), &[("x-user", &user)]).await;
        for _ in 0..3 {
            let again = get(&gw.url("/"), &[("x-user", &user)]).await;
            assert_eq!(again.header("x-upstream"), first.header("x-upstream"));
        }
        *homes
            .entry(first.header("x-upstream").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(homes.len(), 3, "30 keys land on every target: {homes:?}");

    // By client IP: every request from here lands on one target.
    let gw = gateway(&format!("balance = \"ip-hash\"\n{}", targets(&refs))).await;
    let seen = spread(&gw, 20, &[]).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test]
async fn sticky_sessions_follow_the_cookie_the_gateway_sets() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = gateway(&format!("balance = \"sticky\"\n{}", targets(&[&a, &b]))).await;
    let first = get(&gw.url("/"), &[]).await;
    let cookie = first.header("set-cookie").to_owned();
    assert!(cookie.starts_with("sluice-target="), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..10 {
        let again = get(&gw.url("/"), &[("cookie", &pair)]).await;
        assert_eq!(again.header("x-upstream"), first.header("x-upstream"));
        assert_eq!(
            again.header("set-cookie"),
            "",
            "no new cookie while it holds"
        );
    }
    // Without the cookie, clients are spread.
    assert_eq!(spread(&gw, 10, &[]).await.len(), 2);
}

/// Keep GETs going from `clients` tasks until `stop`; count failures.
fn load(
    gw: &Gateway,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..clients)
        .map(|_| {
            let (url, stop, ok, failed) = (gw.url("/"), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match get(&url, &[]).await.status.as_u16() {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    (ok, failed, tasks)
}

#[tokio::test]
async fn a_killed_target_costs_no_get_is_ejected_and_comes_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let b_addr = b.addr;
    let gw = gateway(&format!(
        "{}\n[upstreams.u.outlier]\nconsecutive_failures = 3\nbase_ejection = \"1s\"",
        targets(&[&a, &b])
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = load(&gw, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let hits_a = a.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.hits() > hits_a, "a keeps serving");
    // Back on the same port: after its ejection ends, it gets requests again.
    let b = Upstream::start_at("b", b_addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "GETs are retried on the other target"
    );
    assert!(ok.load(Ordering::SeqCst) > 100);
    assert!(b.hits() > 0, "the restarted target is used again");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "upstream_ejections_total{{upstream=\"u\",target=\"{b_addr}\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("upstream_retries_total{upstream=\"u\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_hung_target_costs_one_per_try_timeout_then_is_ejected() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&format!(
        "{}\ntimeout = \"300ms\"\n[upstreams.u.outlier]\nconsecutive_failures = 2",
        targets(&[&a, &b])
    ))
    .await;
    b.hang(true);
    // The first requests to b wait out one per-try timeout and are retried on a.
    let started = Instant::now();
    let replies = concurrent(&gw, 4, 1, "/").await;
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.header("x-upstream") == "a")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Ejected now: the next requests do not wait at all.
    let started = Instant::now();
    let replies = concurrent(&gw, 4, 10, "/").await;
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.header("x-upstream") == "a")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    // A POST that reached the hung target is not retried: 504.
    let post = sluice_tests::send("POST", &gw.url("/"), &[]).await;
    assert!([200, 504].contains(&post.status.as_u16()));
}

#[tokio::test]
async fn active_checks_take_targets_out_and_all_down_is_a_fast_503() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let a = Upstream::start_with("a", move |head| match head.uri.path() {
        "/healthz" if !flag.load(Ordering::SeqCst) => (500, vec![], "sick".into()),
        _ => (200, vec![], "ok".into()),
    })
    .await;
    let gw = gateway(&format!(
        "{}\n[upstreams.u.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2",
        targets(&[&a])
    ))
    .await;
    assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
    healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let down = get(&gw.url("/"), &[]).await;
    assert_eq!(down.status, 503);
    assert_eq!(down.header("x-sluice-error"), "no_healthy_upstream");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no waiting on a timeout"
    );
    assert!(gw.metrics().await.contains(&format!(
        "upstream_healthy{{upstream=\"u\",target=\"{}\"}} 0",
        a.addr
    )));
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
}

#[tokio::test]
async fn retry_on_statuses_for_idempotent_requests_only() {
    let bad = Upstream::start_with("bad", |_| (503, vec![], "busy".into())).await;
    let good = Upstream::start("good").await;
    let gw = gateway(&format!(
        "balance = \"round-robin\"\n{}\n[upstreams.u.outlier]\nconsecutive_failures = 0",
        targets(&[&bad, &good])
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/"), &[]).await.header("x-upstream"), "good");
    }
    let posts: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(
                sluice_tests::send("POST", &gw.url("/"), &[])
                    .await
                    .status
                    .as_u16(),
            );
        }
        statuses
    };
    assert!(posts.contains(&503), "a POST is not sent twice: {posts:?}");
}

#[tokio::test]
async fn names_resolve_and_overall_timeout_holds() {
    let a = Upstream::start("a").await;
    let gw = gateway(&format!(
        "targets = [\"localhost:{}\"]\ntimeout = \"200ms\"\noverall_timeout = \"300ms\"\nretries = 5",
        a.addr.port()
    ))
    .await;
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-upstream"), "a");
    let started = Instant::now();
    let slow = get(&gw.url("/slow"), &[]).await;
    assert_eq!(slow.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_reload_keeps_connections_to_targets_it_keeps() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&targets(&[&a])).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
    }
    let before = a.connections();
    gw.write_config(&format!(
        "{ADMIN}[upstreams.u]\nbalance = \"round-robin\"\ntargets = [\"{}\", {{ address = \"{}\", weight = 2 }}]\n[[routes]]\nupstream = \"u\"\n",
        a.addr, b.addr
    ));
    assert_eq!(gw.admin("POST", "/reload", "").await.status, 200);
    let seen = spread(&gw, 9, &[]).await;
    assert_eq!((seen["a"], seen["b"]), (3, 6), "{seen:?}");
    assert_eq!(
        a.connections(),
        before,
        "the kept target's connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_target_costs_only_the_requests_already_sent_to_it() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    // An untouched configuration: the default balancer and timeouts.
    let gw = gateway(&targets(&[&a, &b])).await;
    let url = gw.url("/");
    let client = sluice_tests::client();
    type Client = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>,
    >;
    let send = |client: Client, url: String| async move {
        let body = http_body_util::Full::new(bytes::Bytes::new());
        let request = http::Request::get(url)
            .body(http_body_util::BodyExt::boxed(body))
            .unwrap();
        client.request(request).await.map(|r| r.status())
    };
    // Eight keep-alive clients keep sending; half a second in, one target
    // stops answering (as a process stopped with SIGSTOP).
    let hung_at = Instant::now() + Duration::from_millis(500);
    let stop = hung_at + Duration::from_secs(3);
    let done = Arc::new(AtomicUsize::new(0));
    let progressed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, url, done, progressed) = (
            client.clone(),
            url.clone(),
            done.clone(),
            progressed.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut after = 0;
            while Instant::now() < stop {
                let left = stop.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, send(client.clone(), url.clone())).await {
                    Ok(Ok(status)) if status == 200 => {
                        after += usize::from(Instant::now() > hung_at);
                    }
                    _ => break,
                }
            }
            done.fetch_add(after, Ordering::SeqCst);
            if after > 10 {
                progressed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep_until(hung_at.into()).await;
    b.hang(true);
    for client in clients {
        client.await.unwrap();
    }
    let (done, progressed) = (
        done.load(Ordering::SeqCst),
        progressed.load(Ordering::SeqCst),
    );
    // The clients whose requests were on the hung target when it stopped
    // wait for them; every other one goes on being served by the live target
    // (round robin, which sends every client there within a few requests,
    // left none).
    assert!(
        progressed >= 3,
        "{progressed} of 8 clients kept being served ({done} requests)"
    );
    assert!(done >= 200, "{done} requests in 3 s");
    b.hang(false);
}
