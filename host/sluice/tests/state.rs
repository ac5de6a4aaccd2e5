//! Many gateways, one policy: two `sluice run` processes sharing rate
//! limits, key-value entries and cached responses through a real
//! `redis-server` (Debian's), and what each does while Redis is killed,
//! slowed or restarted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{Upstream, free_port, get, plugin, send_body, wait_until_listening};

use crate::instance::Sluice;
use crate::pki::Pki;

/// A `redis-server` on a free port, in a folder of its own.
struct Redis {
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    async fn start(args: &[&str]) -> Redis {
        Self::start_on(&["--port"], args).await
    }

    /// Its port is the one `port_flags` name (the TLS port, say).
    async fn start_on(port_flags: &[&str], args: &[&str]) -> Redis {
        let port = free_port();
        let mut all: Vec<String> = Vec::new();
        for flag in port_flags {
            all.extend([flag.to_string(), port.to_string()]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let mut redis = Redis {
            port,
            args: all,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// Start it again on the same port, empty (no data, no scripts).
    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        wait_until_listening(self.port).await;
    }

    /// SIGKILL: no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// `redis-cli` against it, with `auth` when ACLs are on.
    fn cli(&self, auth: &[&str], command: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(auth)
            .args(command)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The keys matching `pattern`, the NUL between plugin and key shown as `|`.
    fn keys(&self, pattern: &str) -> Vec<String> {
        let script = "local t = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                      t[#t + 1] = (k:gsub('%z', '|')) end return t";
        let out = self.cli(&[], &["EVAL", script, "0", pattern]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The milliseconds each key matching `pattern` has left (keys hold a
    /// NUL between plugin and key, which a shell argument cannot).
    fn ttls(&self, pattern: &str) -> Vec<i64> {
        let script = "local t = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                      t[#t + 1] = redis.call('PTTL', k) end return t";
        let out = self.cli(&[], &["EVAL", script, "0", pattern]);
        out.lines().map(|l| l.trim().parse().unwrap()).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `[state]` on `redis`, with a breaker quick enough for tests.
fn state(redis: &Redis, extra: &str) -> String {
    format!(
        "[state]\nurl = \"{}\"\nbreaker_open = \"200ms\"\n{extra}\n",
        redis.url()
    )
}

/// One plugin: its name (and its route's path), its file in `plugins/`,
/// the keys of its entry in the route's chain, and more keys of its own.
type Use<'a> = (&'a str, &'a str, &'a str, &'a str);

/// A route per plugin, each at `/<name>`, with `route` keys added to each.
fn routes(up: &Upstream, plugins: &[Use], route: &str) -> String {
    let mut toml = format!("[upstreams.up]\ntargets = [\"{}\"]\n", up.addr);
    for (name, file, _, keys) in plugins {
        toml += &format!("[plugins.{name}]\npath = \"{}\"\n{keys}\n", plugin(file));
    }
    for (name, _, config, _) in plugins {
        toml += &format!(
            "[[routes]]\nupstream = \"up\"\nmatch.path_prefix = \"/{name}\"\n{route}\n\
             [[routes.filters]]\nplugin = \"{name}\"\n{config}\n"
        );
    }
    toml
}

/// `count` GETs spread over `gateways` at once; their statuses.
async fn burst(
    gateways: &[&Sluice],
    path: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> Vec<u16> {
    let urls: Vec<String> = (0..count)
        .map(|i| gateways[i % gateways.len()].url(path))
        .collect();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tasks = urls.into_iter().map(|url| {
        let headers = headers.clone();
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            get(&url, &headers).await.status.as_u16()
        })
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

const LIMIT: &str = "config = { key = \"header:x-tenant\", capacity = 40, window_secs = 3600 }";

/// Redis, an upstream, a folder for compiled plugins, and a configuration
/// limiting `/limit` by `x-tenant` to 40 requests, counted in that Redis.
struct Limited {
    redis: Redis,
    up: Upstream,
    cache: tempfile::TempDir,
    body: String,
}

impl Limited {
    async fn start() -> Limited {
        let redis = Redis::start(&[]).await;
        let up = Upstream::start("up").await;
        let body = state(&redis, "") + &routes(&up, &[("limit", "rate-limit", LIMIT, "")], "");
        Limited {
            redis,
            up,
            cache: tempfile::tempdir().unwrap(),
            body,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_one_limit_exactly_under_concurrent_load() {
    let Limited {
        redis,
        up: _up,
        cache,
        body,
    } = Limited::start().await;
    let a = Sluice::start(&body, cache.path()).await;
    let b = Sluice::start(&body, cache.path()).await;
    for round in 0..3 {
        let tenant = format!("tenant-{round}");
        let statuses = burst(&[&a, &b], "/limit", &[("x-tenant", &tenant)], 100).await;
        assert_eq!(count(&statuses, 200), 40, "round {round}: {statuses:?}");
        assert_eq!(count(&statuses, 429), 60, "round {round}: {statuses:?}");
    }
    // The headers speak for the shared bucket, whichever gateway answers.
    let refused = b.get("/limit", &[("x-tenant", "tenant-0")]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("ratelimit-limit"), "40");
    assert_eq!(refused.header("ratelimit-remaining"), "0");
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=90).contains(&retry), "Retry-After {retry}");
    let fresh = a.get("/limit", &[("x-tenant", "new")]).await;
    assert_eq!(fresh.header("ratelimit-remaining"), "39");
    let fresh = b.get("/limit", &[("x-tenant", "new")]).await;
    assert_eq!(fresh.header("ratelimit-remaining"), "38");
    // One bucket per key in Redis, expiring when it would be full again.
    let keys = redis.keys("sluice:b:*");
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(
        keys.contains(&"sluice:b:limit|h:tenant-0".to_owned()),
        "{keys:?}"
    );
    let ttls = redis.ttls("sluice:b:*");
    assert!(
        ttls.iter().all(|t| (1..=3_601_000).contains(t)),
        "buckets expire: {ttls:?}"
    );
    assert!(a.metric("sluice_state_round_trip_seconds_count").await >= 50.0);
    assert_eq!(a.metric("sluice_state_up").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_through_one_gateway_is_read_through_the_other() {
    let mut redis = Redis::start(&[]).await;
    let up = Upstream::start("up").await;
    let cache = tempfile::tempdir().unwrap();
    let kv = "grants = [\"kv\"]\ndeny = [\"http\", \"metrics\"]";
    let plugins = [
        ("kv", "probe", "config = { op = \"kv\" }\nbody = true", kv),
        ("count", "probe", "config = { op = \"count\" }", kv),
    ];
    let body = state(&redis, "max_value = \"64B\"") + &routes(&up, &plugins, "");
    let a = Sluice::start(&body, cache.path()).await;
    let b = Sluice::start(&body, cache.path()).await;
    let put = send_body("PUT", &a.url("/kv/greeting"), &[], "hello").await;
    assert_eq!(put.json()["stored"], 5, "{:?}", put.body);
    let read = b.get("/kv/greeting", &[]).await;
    assert_eq!(read.json()["value"], "hello");
    // Private to the plugin: the other plugin's namespace does not see it.
    assert_eq!(redis.keys("sluice:k:*"), ["sluice:k:kv|/kv/greeting"]);
    // Atomic increments, from both sides.
    let mut seen = Vec::new();
    for i in 0..6 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        seen.push(
            gateway.get("/count", &[]).await.json()["count"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    // Size limits hold in Redis too.
    let big = send_body("PUT", &b.url("/kv/big"), &[], vec![b'x'; 65]).await;
    assert_eq!(big.json()["kind"], "invalid", "{:?}", big.body);
    // Without Redis the plugin hears `unavailable`, and can act on it.
    redis.kill();
    let gone = b.get("/kv/greeting", &[]).await;
    assert_eq!(gone.json()["kind"], "unavailable", "{:?}", gone.body);
    let series = "sluice_state_fallbacks_total{use=\"kv\",fallback=\"unavailable\"}";
    assert!(b.metric(series).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cached_through_one_gateway_is_a_hit_through_the_other() {
    let redis = Redis::start(&[]).await;
    let up = Upstream::start("up").await;
    let cache = tempfile::tempdir().unwrap();
    let plugins = [("cache", "cache-policy", "", "")];
    let body = state(&redis, "") + &routes(&up, &plugins, "shared_cache = true");
    let a = Sluice::start(&body, cache.path()).await;
    let b = Sluice::start(&body, cache.path()).await;
    let path = "/cache/item?cc=max-age%3D60";
    // Behind a load balancer, both see the same Host.
    let host = [("host", "api.example")];
    let first = a.get(path, &host).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), "MISS");
    let other = b.get(path, &host).await;
    assert_eq!(
        other.header("x-cache"),
        "HIT",
        "fetched by the other gateway"
    );
    assert_eq!(other.body, first.body);
    assert_eq!(up.hits(), 1, "one upstream fetch for the fleet");
    let again = b.get(path, &host).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(
        b.metric("sluice_cache_lookups_total{result=\"shared_hit\"}")
            .await,
        1.0
    );
    // Kept with its TTL.
    let ttls = redis.ttls("sluice:c:*");
    assert!(
        ttls.len() == 1 && (50_000..=60_000).contains(&ttls[0]),
        "{ttls:?}"
    );
    // A response for one client alone stays out of it.
    let private = a
        .get("/cache/private?cc=private%2C%20max-age%3D60", &host)
        .await;
    assert_eq!(private.status, 200);
    assert!(redis.keys("sluice:c:*private*").is_empty());
}

/// Each fallback while Redis is killed mid-load: `local` counts here,
/// `open` lets through, `closed` refuses; no request waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_load_applies_each_fallback_without_hanging_a_request() {
    let mut redis = Redis::start(&[]).await;
    let up = Upstream::start("up").await;
    let cache = tempfile::tempdir().unwrap();
    let limit = "config = { key = \"route\", capacity = 100000, window_secs = 3600 }";
    let plugins = [
        ("local", "rate-limit", limit, ""),
        ("open", "rate-limit", limit, "fallback = \"open\""),
        ("closed", "rate-limit", limit, "fallback = \"closed\""),
    ];
    let body = state(&redis, "") + &routes(&up, &plugins, "");
    let gw = Sluice::start(&body, cache.path()).await;
    for route in ["/local", "/open", "/closed"] {
        assert_eq!(gw.get(route, &[]).await.status, 200);
    }
    // Load on every route while Redis dies.
    let load = {
        let urls: Vec<String> = ["/local", "/open", "/closed"]
            .iter()
            .map(|r| gw.url(r))
            .collect();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1500) {
                for url in &urls {
                    let sent = Instant::now();
                    let reply = tokio::time::timeout(Duration::from_secs(5), get(url, &[]))
                        .await
                        .expect("no request hangs");
                    assert!(
                        matches!(reply.status.as_u16(), 200 | 503),
                        "{}",
                        reply.status
                    );
                    slowest = slowest.max(sent.elapsed());
                    answered += 1;
                }
            }
            (slowest, answered)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let (slowest, answered) = load.await.unwrap();
    assert!(answered > 30, "{answered}");
    // The default timeout is 50 ms; nothing waits much past it.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest request: {slowest:?}"
    );
    let local = gw.get("/local", &[]).await;
    assert_eq!(local.status, 200, "counted locally");
    assert_eq!(local.header("ratelimit-limit"), "100000");
    let open = gw.get("/open", &[]).await;
    assert_eq!(open.status, 200);
    assert_eq!(open.header("ratelimit-limit"), "", "uncounted, so no claim");
    let closed = gw.get("/closed", &[]).await;
    assert_eq!(closed.status, 503);
    assert_eq!(closed.header("x-sluice-error"), "rate_limit_unavailable");
    assert_eq!(gw.metric("sluice_state_up").await, 0.0);
    for fallback in ["local", "open", "closed"] {
        let series =
            format!("sluice_state_fallbacks_total{{use=\"rate_limit\",fallback=\"{fallback}\"}}");
        assert!(gw.metric(&series).await >= 1.0, "{series}");
    }
    // The mode change is said once, not per request.
    let log = gw.log();
    assert_eq!(log.matches("shared state falls back").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_trips_the_breaker_and_a_probe_closes_it() {
    let Limited {
        redis,
        up,
        cache,
        body,
    } = Limited::start().await;
    // A breaker that stays open past Redis's nap, so no probe lands in it.
    let body = body.replace("breaker_open = \"200ms\"", "breaker_open = \"2s\"");
    let gw = Sluice::start(&body, cache.path()).await;
    assert_eq!(gw.get("/limit", &[("x-tenant", "t")]).await.status, 200);
    let sent_before = gw.metric("sluice_state_round_trip_seconds_count").await;
    // Redis stops answering for 1.5 s.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "1.5"])
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..10 {
        let reply = gw.get("/limit", &[("x-tenant", "t")]).await;
        assert_eq!(reply.status, 200, "falls back to counting locally");
    }
    // Three round trips timed out (50 ms each); the breaker opened and the
    // other seven requests did not wait for Redis at all.
    assert!(started.elapsed() < Duration::from_millis(1400));
    let sent = gw.metric("sluice_state_round_trip_seconds_count").await - sent_before;
    assert_eq!(sent, 3.0);
    assert_eq!(
        gw.metric("sluice_state_errors_total{reason=\"timeout\"}")
            .await,
        3.0
    );
    assert_eq!(gw.metric("sluice_state_up").await, 0.0);
    assert_eq!(up.hits(), 11, "every request went through");
    sleeper.join().unwrap();
    // Back: a request after the breaker's wait probes, and closes it.
    until_up(&gw).await;
    assert!(gw.log().contains("Redis answers again"), "{}", gw.log());
}

/// Send requests until one probes a Redis that is back (at most 5 s).
async fn until_up(gw: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric("sluice_state_up").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the breaker never closed:\n{}",
            gw.log()
        );
        gw.get("/limit", &[("x-tenant", "probe")]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_redis_restores_shared_counting_without_restarting_a_gateway() {
    let Limited {
        mut redis,
        up: _up,
        cache,
        body,
    } = Limited::start().await;
    let a = Sluice::start(&body, cache.path()).await;
    let b = Sluice::start(&body, cache.path()).await;
    assert_eq!(a.get("/limit", &[("x-tenant", "before")]).await.status, 200);
    redis.kill();
    for gw in [&a, &b] {
        for _ in 0..4 {
            gw.get("/limit", &[("x-tenant", "during")]).await;
        }
        assert_eq!(gw.metric("sluice_state_up").await, 0.0);
    }
    // Back empty: no buckets, and none of the scripts the gateways loaded.
    redis.restart().await;
    for gw in [&a, &b] {
        until_up(gw).await;
    }
    let statuses = burst(&[&a, &b], "/limit", &[("x-tenant", "after")], 100).await;
    assert_eq!(count(&statuses, 200), 40, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_credentials_from_a_file_work_and_a_wrong_password_stops_the_start() {
    let secrets = tempfile::tempdir().unwrap();
    let acl = secrets.path().join("users.acl");
    std::fs::write(
        &acl,
        "user default off\nuser sluice on >s3cret ~sluice:* +@all\n",
    )
    .unwrap();
    let redis = Redis::start(&["--aclfile", acl.to_str().unwrap()]).await;
    let up = Upstream::start("up").await;
    let cache = tempfile::tempdir().unwrap();
    let good = secrets.path().join("good");
    std::fs::write(&good, "s3cret\n").unwrap();
    let bad = secrets.path().join("bad");
    std::fs::write(&bad, "guess\n").unwrap();
    let with = |file: &Path| {
        state(
            &redis,
            &format!(
                "username = \"sluice\"\npassword_file = \"{}\"",
                file.display()
            ),
        ) + &routes(&up, &[("limit", "rate-limit", LIMIT, "")], "")
    };
    let gw = Sluice::start(&with(&good), cache.path()).await;
    assert_eq!(gw.get("/limit", &[("x-tenant", "acl")]).await.status, 200);
    let auth = ["--user", "sluice", "--pass", "s3cret", "--no-auth-warning"];
    assert_eq!(
        redis
            .cli(&auth, &["--scan", "--pattern", "sluice:b:*"])
            .lines()
            .count(),
        1
    );

    let mut refused = Sluice::spawn(&with(&bad), cache.path());
    assert!(!refused.exited());
    let text = refused.log();
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(
        text.contains("state.password_file"),
        "names the key: {text}"
    );
    assert!(
        text.contains("gateway.toml:"),
        "names the file and line: {text}"
    );

    // A password in the URL is refused before anything is tried.
    let leaky = with(&good).replace("redis://", "redis://sluice:s3cret@");
    let mut leaky = Sluice::spawn(&leaky, cache.path());
    assert!(!leaky.exited());
    let text = leaky.log();
    assert!(
        text.contains("state.url") && text.contains("password_file"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_client_certificate_carries_shared_limits() {
    let pki = Pki::new();
    let ca_file = pki.ca();
    let (server_cert, server_key) = pki.issue("localhost", true);
    let (client_cert, client_key) = pki.issue("sluice", true);
    let redis = Redis::start_on(
        &["--tls-port"],
        &[
            "--port",
            "0",
            "--tls-cert-file",
            &server_cert,
            "--tls-key-file",
            &server_key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "yes",
        ],
    )
    .await;
    let up = Upstream::start("up").await;
    let cache = tempfile::tempdir().unwrap();
    let tls = format!(
        "[state]\nurl = \"rediss://localhost:{}/0\"\nca = \"{ca_file}\"\n\
         cert = \"{client_cert}\"\nkey = \"{client_key}\"\ntimeout = \"500ms\"\n",
        redis.port
    );
    let body = tls.clone() + &routes(&up, &[("limit", "rate-limit", LIMIT, "")], "");
    let a = Sluice::start(&body, cache.path()).await;
    let b = Sluice::start(&body, cache.path()).await;
    let statuses = burst(&[&a, &b], "/limit", &[("x-tenant", "tls")], 60).await;
    assert_eq!(count(&statuses, 200), 40, "{statuses:?}\n{}", a.log());
    assert_eq!(a.metric("sluice_state_up").await, 1.0);

    // Without the client certificate Redis hangs up: the gateway starts,
    // falls back, and says why.
    let anonymous = format!(
        "[state]\nurl = \"rediss://localhost:{}/0\"\nca = \"{ca_file}\"\n",
        redis.port
    ) + &routes(&up, &[("limit", "rate-limit", LIMIT, "")], "");
    let c = Sluice::start(&anonymous, cache.path()).await;
    assert_eq!(
        c.get("/limit", &[("x-tenant", "tls")]).await.status,
        200,
        "counted locally"
    );
    assert_eq!(c.metric("sluice_state_up").await, 0.0);
    assert!(c.log().contains("is not reachable"), "{}", c.log());
}

/// A proxy-wasm filter's shared data lives in Redis with `[state]`: a
/// CAS-counted limit of 25 holds across two gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_wasm_shared_data_is_shared_by_two_gateways_through_redis() {
    let redis = Redis::start(&[]).await;
    let up = Upstream::start("up").await;
    let cache = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[upstreams.up]\ntargets = [\"{}\"]\n[plugins.limit]\npath = \"{}\"\n\
         [[routes]]\nupstream = \"up\"\nmatch.path_prefix = \"/limit\"\n\
         [[routes.filters]]\nplugin = \"limit\"\nconfig = {{ limit = 25 }}\n",
        state(&redis, ""),
        up.addr,
        sluice_tests::proxy_wasm_plugin("pw-limit")
    );
    let a = Sluice::start(&body, cache.path()).await;
    let b = Sluice::start(&body, cache.path()).await;
    let statuses = burst(&[&a, &b], "/limit", &[], 60).await;
    assert_eq!(count(&statuses, 200), 25, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 35, "{statuses:?}");
    assert_eq!(redis.keys("sluice:s:*"), ["sluice:s:limit|count"]);
}
