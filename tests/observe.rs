//! What operators see: access logs (JSON and the common log format), and
//! the metrics as a real Prometheus server scrapes them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sluice_tests::{Gateway, Upstream, free_port, get, plugin, send_body};

/// The access log's lines in `file`, once it has at least `count` (the
/// writer is off the request path, so lines land a moment after replies).
async fn read_lines(file: &Path, count: usize) -> Vec<String> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never had {count} lines", file.display());
}

/// The JSON line of the request with id `id`.
fn line_of(lines: &[String], id: &str) -> serde_json::Value {
    lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id} in {lines:#?}"))
}

fn config(up: &Upstream, log: &str) -> String {
    format!(
        r#"{log}

[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.auth]
path = "{}"
[plugins.limit]
path = "{}"

[upstreams.a]
targets = ["{}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "a"
filters = [
  {{ plugin = "auth", config = {{ keys = [{{ key = "k-alice", owner = "alice" }}] }} }},
  {{ plugin = "limit", config = {{ key = "identity", capacity = 1, window_secs = 3600 }} }},
]

[[routes]]
name = "public"
match = {{ path_prefix = "/public" }}
upstream = "a"
"#,
        plugin("api-key-auth"),
        plugin("rate-limit"),
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_an_access_log_line_with_what_each_filter_decided() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "[access_log]\nto = \"access.log\""))
        .await
        .unwrap();
    let file = gw.config_path().with_file_name("access.log");

    let id = |id: &'static str| ("x-request-id", id);
    let allowed = get(
        &gw.url("/api/orders?x=1"),
        &[id("r-allowed"), ("x-api-key", "k-alice")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    let denied = get(&gw.url("/api/orders"), &[id("r-denied")]).await;
    assert_eq!(denied.status, 401);
    let limited = get(
        &gw.url("/api/orders"),
        &[id("r-limited"), ("x-api-key", "k-alice")],
    )
    .await;
    assert_eq!(limited.status, 429);
    let body = Bytes::from(vec![b'x'; 1000]);
    let posted = send_body("POST", &gw.url("/public/form"), &[id("r-posted")], body).await;
    assert_eq!(posted.status, 200);
    let lost = get(
        &gw.url("/nowhere"),
        &[id("r-lost"), ("user-agent", "probe/1")],
    )
    .await;
    assert_eq!(lost.status, 404);

    let lines = read_lines(&file, 5).await;
    let line = line_of(&lines, "r-allowed");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/orders?x=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["route"], "api");
    assert_eq!(line["upstream"], "a");
    assert_eq!(line["target"], up.addr.to_string());
    assert_eq!(line["identity"], "alice");
    assert_eq!(line["bytes_out"], allowed.body.len());
    assert_eq!(line["error"], serde_json::Value::Null);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    assert_eq!(
        line["filters"],
        serde_json::json!([
            { "plugin": "auth", "decision": "allow" },
            { "plugin": "limit", "decision": "admitted" },
        ])
    );

    let line = line_of(&lines, "r-denied");
    assert_eq!(line["status"], 401);
    assert_eq!(
        line["target"],
        serde_json::Value::Null,
        "the upstream never saw it"
    );
    assert_eq!(line["identity"], serde_json::Value::Null);
    assert_eq!(
        line["filters"],
        serde_json::json!([
            { "plugin": "auth", "decision": "reply", "status": 401 },
            { "plugin": "limit", "decision": "skipped" },
        ])
    );

    let line = line_of(&lines, "r-limited");
    assert_eq!(line["status"], 429);
    assert_eq!(line["filters"][1]["decision"], "limited");

    let line = line_of(&lines, "r-posted");
    assert_eq!(
        (line["route"].as_str(), line["bytes_in"].as_u64()),
        (Some("public"), Some(1000))
    );
    assert_eq!(line["filters"], serde_json::json!([]));

    let line = line_of(&lines, "r-lost");
    assert_eq!(line["status"], 404);
    assert_eq!(line["error"], "no_route");
    assert_eq!(line["route"], serde_json::Value::Null);
    assert_eq!(line["user_agent"], "probe/1");

    // A reload takes a new format and file (how a rotated log is let go).
    gw.write_config(&config(
        &up,
        "[access_log]\nto = \"common.log\"\nformat = \"common\"",
    ));
    assert_eq!(gw.admin("POST", "/reload", "").await.status, 200);
    let reply = get(&gw.url("/api/x%20y"), &[("x-api-key", "k-alice")]).await;
    assert_eq!(reply.status, 429, "the bucket outlives the reload");
    let common = read_lines(&gw.config_path().with_file_name("common.log"), 1).await;
    let pattern = regex_lite(&common[0]);
    assert_eq!(
        pattern,
        (
            "127.0.0.1 - alice".to_owned(),
            "\"GET /api/x%20y HTTP/1.1\" 429".to_owned()
        ),
        "{}",
        common[0]
    );
}

/// A common log line's `client - identity` and `"request" status`, around its time.
fn regex_lite(line: &str) -> (String, String) {
    let (who, rest) = line.split_once(" [").expect("a time in brackets");
    let (time, rest) = rest.split_once("] ").expect("a time in brackets");
    assert_eq!(time.len(), "02/Dec/2026:10:43:13 +0000".len(), "{time}");
    let (request, _bytes) = rest.rsplit_once(' ').expect("bytes last");
    (who.to_owned(), request.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_only_the_fields_asked_for_and_a_bad_field_is_an_error() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(
        &up,
        "[access_log]\nto = \"access.log\"\nfields = [\"status\", \"route\", \"request_id\"]",
    ))
    .await
    .unwrap();
    assert_eq!(
        get(&gw.url("/public"), &[("x-request-id", "only")])
            .await
            .status,
        200
    );
    let lines = read_lines(&gw.config_path().with_file_name("access.log"), 1).await;
    assert_eq!(
        lines[0],
        r#"{"status":200,"route":"public","request_id":"only"}"#
    );

    let error = Gateway::start(&config(
        &up,
        "[access_log]\nfields = [\"status\", \"colour\"]",
    ))
    .await
    .err()
    .expect("an unknown field is refused")
    .to_string();
    assert!(
        error.contains("sluice.toml") && error.contains("colour"),
        "{error}"
    );
}

/// Debian's Prometheus server, scraping the admin listener every second
/// with the admin token; stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(admin: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    \
                 authorization:\n      credentials: test-admin-token\n    \
                 static_configs:\n      - targets: ['{admin}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (Debian's `prometheus` package; .ci/run installs it)");
        let prometheus = Prometheus { child, port, dir };
        listening(port).await;
        for _ in 0..100 {
            if get(&prometheus.url("/-/ready"), &[]).await.status == 200 {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus never got ready: {}", prometheus.log());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The value of the instant query `query`, once Prometheus has scraped
    /// it as `want` (a scrape a second: waits up to 20 s).
    async fn expect(&self, query: &str, want: f64) {
        let mut got = None;
        for _ in 0..80 {
            let reply = get(
                &self.url(&format!("/api/v1/query?query={}", encode(query))),
                &[],
            )
            .await;
            let answer = reply.json();
            assert_eq!(answer["status"], "success", "{query}: {answer}");
            got = answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if got == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "{query}: want {want}, Prometheus has {got:?}\n{}",
            self.log()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (up to 10 s) until something accepts connections on `port`.
async fn listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_requests_latencies_plugins_and_limits() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "")).await.unwrap();
    let prometheus = Prometheus::start(gw.admin.unwrap()).await;

    for _ in 0..4 {
        assert_eq!(get(&gw.url("/public/a"), &[]).await.status, 200);
    }
    let posted = send_body("POST", &gw.url("/public/b"), &[], "x").await;
    assert_eq!(posted.status, 200);
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/api/a"), &[]).await.status, 401);
    }
    let api = gw.url("/api/a");
    let statuses: Vec<http::StatusCode> =
        futures_util::future::join_all((0..3).map(|_| get(&api, &[("x-api-key", "k-alice")])))
            .await
            .iter()
            .map(|r| r.status)
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );

    let expected = [
        (
            r#"sluice_requests_total{route="public",method="GET",class="2xx"}"#,
            4.0,
        ),
        (
            r#"sluice_requests_total{route="public",method="POST",class="2xx"}"#,
            1.0,
        ),
        (
            r#"sum(sluice_requests_total{route="api",class="4xx"})"#,
            4.0,
        ),
        (
            r#"sluice_request_duration_seconds_count{route="public"}"#,
            5.0,
        ),
        (
            &format!(
                r#"sluice_upstream_response_seconds_count{{upstream="a",target="{}"}}"#,
                up.addr
            ),
            6.0,
        ),
        (
            r#"sluice_filter_call_seconds_count{plugin="auth",phase="request"}"#,
            5.0,
        ),
        (
            r#"sluice_rate_limit_decisions_total{plugin="limit",decision="limited"}"#,
            2.0,
        ),
        (
            r#"sluice_rate_limit_decisions_total{plugin="limit",decision="allowed"}"#,
            1.0,
        ),
        (
            r#"count(sluice_plugin_info{plugin="auth",version="1"})"#,
            1.0,
        ),
        (r#"sum(sluice_plugin_info)"#, 2.0),
        (r#"up{job="sluice"}"#, 1.0),
        // Requests came one at a time: one kept-alive connection, idle now.
        (
            r#"sum(sluice_upstream_idle_connections{upstream="a"})"#,
            1.0,
        ),
        (r#"sum(sluice_upstream_in_flight)"#, 0.0),
    ];
    for (query, want) in expected {
        prometheus.expect(query, want).await;
    }
    // Latencies are real durations: every request took more than the first
    // bucket's 50 µs, and less than the last one's seconds.
    let buckets = r#"sluice_request_duration_seconds_bucket{route="public"}"#;
    prometheus.expect(&format!("min({buckets})"), 0.0).await;
    prometheus.expect(&format!("max({buckets})"), 5.0).await;
}

/// Debian's chromium, headless, driven over WebDriver by its chromedriver.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's `chromium-driver`; .ci/run installs it)");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            profile: tempfile::tempdir().unwrap(),
        };
        let base = &browser.base;
        listening(port).await;
        for _ in 0..100 {
            let status = get(&format!("{base}/status"), &[]).await;
            if status.status == 200 && status.json()["value"]["ready"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1200,1400".to_owned(),
            format!("--user-data-dir={}", browser.profile.path().display()),
        ];
        let capabilities = serde_json::json!({
            "capabilities": { "alwaysMatch": { "goog:chromeOptions": { "args": args } } }
        });
        let created = webdriver("POST", &format!("{base}/session"), capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    async fn open(&self, url: &str) {
        let at = format!("{}/session/{}/url", self.base, self.session);
        webdriver("POST", &at, serde_json::json!({ "url": url })).await;
    }

    /// What `script` (a function body) returns in the page.
    async fn run(&self, script: &str) -> serde_json::Value {
        let at = format!("{}/session/{}/execute/sync", self.base, self.session);
        webdriver(
            "POST",
            &at,
            serde_json::json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Wait (up to 20 s) until `script` returns `want`.
    async fn wait_for(&self, script: &str, want: impl Into<serde_json::Value>) {
        let want = want.into();
        let mut got = serde_json::Value::Null;
        for _ in 0..80 {
            got = self.run(script).await;
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let page = self.run("return document.body.innerText").await;
        panic!("{script}\nwant {want}, the page has {got}\n{page}");
    }

    /// A PNG of the page, kept as `target/test-artifacts/<name>`.
    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let at = format!("{}/session/{}/screenshot", self.base, self.session);
        let shot = webdriver("GET", &at, serde_json::json!({})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("a screenshot"))
            .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    async fn quit(mut self) {
        let at = format!("{}/session/{}", self.base, self.session);
        webdriver("DELETE", &at, serde_json::json!({})).await;
        let _ = self.driver.kill();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A browser left behind by a failed test goes too.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.profile.path())
            .status();
    }
}

/// A WebDriver command's `value`.
async fn webdriver(method: &str, url: &str, body: serde_json::Value) -> serde_json::Value {
    let headers = [("content-type", "application/json")];
    let reply = send_body(method, url, &headers, body.to_string()).await;
    assert_eq!(reply.status, 200, "{method} {url}: {:?}", reply.body);
    reply.json()["value"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_routes_upstreams_plugins_and_redacted_configuration() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "")).await.unwrap();
    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);

    let routes = gw.admin("GET", "/routes", "").await.json();
    let public = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "public")
        .expect("the public route is listed");
    assert_eq!(
        (public["upstream"].as_str(), public["requests"].as_u64()),
        (Some("a"), Some(1))
    );
    let api = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "api");
    assert_eq!(
        api.unwrap()["filters"],
        serde_json::json!(["auth", "limit"])
    );

    let upstreams = gw.admin("GET", "/upstreams", "").await.json();
    assert_eq!(upstreams[0]["name"], "a");
    assert_eq!(upstreams[0]["targets"][0]["address"], up.addr.to_string());
    assert_eq!(upstreams[0]["targets"][0]["state"], "healthy");

    let config = gw.admin("GET", "/config", "").await.json();
    assert_eq!(config["admin"]["token"], "<redacted>");
    let auth = &config["routes"][0]["filters"][0]["config"]["keys"][0];
    assert_eq!(
        (auth["key"].as_str(), auth["owner"].as_str()),
        (Some("<redacted>"), Some("alice"))
    );
    assert_eq!(config["upstreams"]["a"]["targets"][0], up.addr.to_string());

    let admin = gw.admin.unwrap();
    let anonymous = get(&format!("http://{admin}/routes"), &[]).await;
    assert_eq!(anonymous.status, 401, "data needs the token");
    let page = get(&format!("http://{admin}/dashboard"), &[]).await;
    assert_eq!(page.status, 200, "the page itself holds no data");
    assert!(
        page.header("content-security-policy")
            .contains("frame-ancestors 'none'")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_a_real_browser_and_follows_traffic() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&config(&up, "")).await.unwrap();
    let admin = gw.admin.unwrap();
    let browser = Browser::start().await;
    browser
        .open(&format!("http://{admin}/dashboard#token=test-admin-token"))
        .await;

    let keys = |table: &str| {
        format!(
            "return [...document.querySelectorAll('#{table} tbody tr')].map(r => r.dataset.key).sort().join(',')"
        )
    };
    browser.wait_for(&keys("routes"), "api,public").await;
    browser.wait_for(&keys("plugins"), "auth,limit").await;
    browser
        .wait_for(
            "return document.querySelector('#upstreams tbody tr td.healthy')?.textContent ?? null",
            "healthy",
        )
        .await;
    browser.wait_for("return location.hash", "").await;

    // Traffic shows up without reloading the page.
    for _ in 0..7 {
        assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
    }
    let public =
        "return document.querySelector('#routes tr[data-key=\"public\"] td.requests').textContent";
    browser.wait_for(public, "7").await;
    browser.quit().await;
}

/// The dashboard of a fleet member: the fleet's instances and revision,
/// charts that move with traffic, targets coloured by health, plugins with
/// their failures. Its screenshot is kept in `target/test-artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_and_charts_traffic() {
    use sluice_control::fleet::push::{self, Push};
    let etcd = sluice_tests::Etcd::start().await;
    let up = Upstream::start("a").await;
    let own = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n\
         [fleet]\nendpoints = [\"{}\"]\nid = \"gw-dash\"\nsnapshot_dir = \"snapshot\"\nlease = \"3s\"\n",
        etcd.url()
    );
    let gw = Gateway::start(&own).await.unwrap();
    // What the fleet serves: `config()`'s routes, without its admin table.
    let fleet_doc = config(&up, "").replace(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n",
        "",
    );
    let loaded = sluice_control::Config::load(&gw.config_path()).unwrap();
    let fleet = loaded.fleet.as_ref().unwrap().get_ref().clone();
    let client = fleet.client(&loaded.source).unwrap();
    let new = Push {
        text: &fleet_doc,
        name: "fleet.toml",
        expect: None,
        force: false,
        note: "",
    };
    let revision = push::push(&client, &fleet, &gw.config_path(), new)
        .await
        .unwrap();

    let admin = gw.admin.unwrap();
    let browser = Browser::start().await;
    browser
        .open(&format!("http://{admin}/dashboard#token=test-admin-token"))
        .await;
    let rows = "return [...document.querySelectorAll('#fleet tbody tr')].map(r => r.dataset.key).join(',')";
    browser.wait_for(rows, "gw-dash").await;
    let revision_cell =
        "return document.querySelector('#fleet tr[data-key=\"gw-dash\"] td.revision').textContent";
    browser.wait_for(revision_cell, revision.to_string()).await;
    let state =
        "return document.querySelector('#fleet tr[data-key=\"gw-dash\"] td.state').textContent";
    browser.wait_for(state, "up to date").await;
    // Health is a colour, from the page's own stylesheet (the CSP allows no inline style).
    let chip = "return getComputedStyle(document.querySelector('#upstreams td.chip.healthy span')).backgroundColor";
    browser.wait_for(chip, "rgb(31, 138, 59)").await;

    // Traffic moves the route's chart.
    let drawn = "return Number(document.querySelector('#charts figure[data-key=\"public\"] svg.rates')?.dataset.max ?? 0) > 0";
    assert_eq!(browser.run(drawn).await, false);
    for _ in 0..40 {
        assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.wait_for(drawn, true).await;
    let p99 = "return document.querySelector('#routes tr[data-key=\"public\"] td.p99').textContent !== '–'";
    browser.wait_for(p99, true).await;
    browser.screenshot("dashboard-fleet.png").await;
    browser.quit().await;
}

/// An OTLP/HTTP receiver: keeps every span posted to it (JSON-encoded).
struct Collector {
    addr: std::net::SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Collector {
    async fn start() -> Collector {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = request.into_body().collect().await?.to_bytes();
                        let export: serde_json::Value =
                            serde_json::from_slice(&body).expect("OTLP JSON");
                        let spans = export["resourceSpans"].as_array().into_iter().flatten();
                        let spans = spans
                            .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
                            .flat_map(|s| s["spans"].as_array().into_iter().flatten());
                        kept.lock().unwrap().extend(spans.cloned());
                        let ok = http::Response::new(http_body_util::Full::new(Bytes::from("{}")));
                        Ok::<_, hyper::Error>(ok)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        Collector { addr, spans }
    }

    /// The spans of trace `trace_id`, once there are `count` of them.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let spans: Vec<_> = (self.spans.lock().unwrap().iter())
                .filter(|s| s["traceId"] == trace_id)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "trace {trace_id} never had {count} spans: {:#?}",
            self.spans.lock().unwrap()
        );
    }
}

/// A span's attribute, as text (OTLP JSON gives integers as strings or numbers).
fn attribute(span: &serde_json::Value, key: &str) -> String {
    let found = span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key);
    let value = &found.unwrap_or_else(|| panic!("no {key} in {span}"))["value"];
    match value.as_object().and_then(|v| v.values().next()) {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => panic!("{key} has no value in {span}"),
    }
}

/// `SPAN_KIND_SERVER` is 2, `SPAN_KIND_CLIENT` 3, `SPAN_KIND_INTERNAL` 1.
fn kind(span: &serde_json::Value) -> i64 {
    span["kind"]
        .as_i64()
        .unwrap_or_else(|| panic!("kind in {span}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_follow_the_client_through_filters_and_upstream_tries_to_a_collector() {
    let collector = Collector::start().await;
    let up = Upstream::start("a").await;
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nexport_every = \"100ms\"",
        collector.addr
    );
    let gw = Gateway::start(&config(&up, &tracing)).await.unwrap();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let parent = format!("00-{trace_id}-{client_span}-01");
    let headers = [("traceparent", parent.as_str()), ("x-api-key", "k-alice")];
    let reply = get(&gw.url("/api/orders"), &headers).await;
    assert_eq!(reply.status, 200);

    let spans = collector.trace(trace_id, 4).await;
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
    };
    let server = named("GET api");
    assert_eq!(
        (kind(server), server["parentSpanId"].as_str()),
        (2, Some(client_span))
    );
    assert_eq!(attribute(server, "http.route"), "api");
    assert_eq!(attribute(server, "http.response.status_code"), "200");
    assert_eq!(
        attribute(server, "sluice.request_id"),
        reply.header("x-request-id")
    );
    let server_id = server["spanId"].as_str().unwrap();

    for (plugin, decision) in [("auth", "allow"), ("limit", "admitted")] {
        let span = named(&format!("filter {plugin}"));
        assert_eq!(span["parentSpanId"], server_id, "{span}");
        assert_eq!(attribute(span, "sluice.decision"), decision);
    }

    // The upstream got the try's span as its parent.
    let tried = named("upstream a");
    assert_eq!(
        (kind(tried), tried["parentSpanId"].as_str()),
        (3, Some(server_id))
    );
    assert_eq!(attribute(tried, "server.address"), up.addr.to_string());
    let sent = reply.echoed("traceparent");
    let tried_id = tried["spanId"].as_str().unwrap();
    assert_eq!(sent, [format!("00-{trace_id}-{tried_id}-01")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_sample_plugins_configurations_are_redacted() {
    let up = Upstream::start("a").await;
    let jwk = r#"{ kty = "oct", kid = "h1", alg = "HS256", k = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ" }"#;
    let jwks_text = r#"{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h2\",\"alg\":\"HS256\",\"k\":\"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ\"}]}"#;
    let gw = Gateway::start(&format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[plugins.headers]
path = "{}"
[plugins.jwt]
path = "{}"
grants = ["crypto"]
deny = ["http", "metrics"]

[upstreams.a]
targets = ["{}"]
sticky_cookie = "sluice-target"

[[routes]]
name = "headers"
upstream = "a"
filters = [{{ plugin = "headers", config = {{ request = {{ set = {{ authorization = "Bearer upstream-credential", x-api-key = "k-123", cookie = "session=abc", x-trace = "kept" }} }} }} }}]

[[routes]]
name = "table"
match = {{ path_prefix = "/table" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ jwks = {{ keys = [{jwk}] }} }} }}]

[[routes]]
name = "text"
match = {{ path_prefix = "/text" }}
upstream = "a"
filters = [{{ plugin = "jwt", config = {{ jwks = "{jwks_text}" }} }}]
"#,
        plugin("headers"),
        plugin("jwt-auth"),
        up.addr
    ))
    .await
    .unwrap();
    let config = gw.admin("GET", "/config", "").await.json();
    let text = config.to_string();
    for secret in ["upstream-credential", "k-123", "session=abc", "c2VjcmV0"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    let set = &config["routes"][0]["filters"][0]["config"]["request"]["set"];
    assert_eq!(set["authorization"], "<redacted>");
    assert_eq!(set["x-api-key"], "<redacted>");
    assert_eq!(set["cookie"], "<redacted>");
    assert_eq!(set["x-trace"], "kept", "what is not secret stays readable");
    let key = &config["routes"][1]["filters"][0]["config"]["jwks"]["keys"][0];
    assert_eq!(
        (key["k"].as_str(), key["kid"].as_str()),
        (Some("<redacted>"), Some("h1"))
    );
    assert_eq!(
        config["routes"][2]["filters"][0]["config"]["jwks"],
        "<redacted>"
    );
    assert_eq!(config["upstreams"]["a"]["sticky_cookie"], "sluice-target");
}
