//! The hostile-plugin suite: the real `sluice` binary runs `plugins/fault`,
//! which on each path does one bad thing. For each: the outcome it is
//! configured to get, in bounded time, nothing of it reaching the client,
//! another route serving throughout (counted), and a metric and a log line
//! naming the plugin and the reason.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_tests::{Reply, Upstream, free_port, get, plugin};

struct Sluice {
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sluice run` on `toml` (with `{port}` and `{admin}` filled in), logging to `log`.
async fn run(dir: &Path, toml: &str, log: &Path) -> Sluice {
    let (port, admin) = (free_port(), free_port());
    let toml = toml
        .replace("{port}", &port.to_string())
        .replace("{admin}", &admin.to_string());
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    // Killed and waited for when the `Sluice` drops.
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--workers", "2", "run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let sluice = Sluice { child, port, admin };
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return sluice;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sluice);
    panic!(
        "the gateway never listened:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Requests to another route, one after another until `stop`: how many
/// succeeded and how many did not.
fn other_route(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let failed = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut served = 0;
        while !stop.load(Ordering::Relaxed) {
            match get(&url, &[]).await.status.as_u16() {
                200 => served += 1,
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        (served, failed.load(Ordering::Relaxed))
    })
}

/// One hostile act: where, and what the client must get.
struct Case {
    path: &'static str,
    check: fn(&Reply),
}

fn failed(reply: &Reply) {
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("x-sluice-error"), "filter_failed");
    // Nothing of the plugin (its panic message, its output) reaches the client.
    assert_eq!(&reply.body[..], b"filter_failed\n");
}

const CASES: [Case; 11] = [
    Case {
        path: "/h/loop",
        check: failed,
    },
    Case {
        path: "/h/bomb",
        check: failed,
    },
    Case {
        path: "/h/deep",
        check: failed,
    },
    Case {
        path: "/h/panic",
        check: failed,
    },
    Case {
        path: "/h/headers",
        check: failed,
    },
    Case {
        path: "/h/body",
        check: failed,
    },
    Case {
        path: "/h/files",
        check: |reply| {
            assert_eq!(reply.status, 200);
            let said = String::from_utf8_lossy(&reply.body);
            assert!(!said.contains("READ"), "a file was read: {said}");
            assert_eq!(said.lines().count(), 4, "{said}");
        },
    },
    Case {
        path: "/h/env",
        check: |reply| {
            assert_eq!(reply.status, 200);
            let said = String::from_utf8_lossy(&reply.body);
            assert!(
                said.starts_with("0 variables: []; HOME: environment variable not found"),
                "{said}"
            );
        },
    },
    Case {
        path: "/h/fetch",
        check: |reply| {
            // The plugin's own answer to being refused.
            assert_eq!(reply.status, 502);
            assert_eq!(&reply.body[..], b"refused: not-granted");
        },
    },
    Case {
        path: "/h/forbidden",
        check: |reply| {
            assert_eq!(reply.status, 200);
            // The upstream saw the request as the client sent it...
            assert_eq!(reply.echoed("host").len(), 1);
            assert_ne!(reply.echoed("host")[0], "evil.example");
            assert!(reply.echoed("transfer-encoding").is_empty());
            assert!(reply.echoed("content-length").is_empty());
            // ...and the client got a response framed by the gateway.
            assert_eq!(reply.header("content-length"), reply.body.len().to_string());
            assert_eq!(reply.header("transfer-encoding"), "");
        },
    },
    Case {
        path: "/h/forbidden-reply",
        check: |reply| {
            assert_eq!(reply.status, 200);
            assert_eq!(&reply.body[..], b"hello");
            assert_eq!(reply.header("content-length"), "5");
            assert_eq!(reply.header("transfer-encoding"), "");
            assert_eq!(reply.header("host"), "");
        },
    },
];

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:{port}"

[admin]
address = "127.0.0.1:{admin}"
token = "hostile-suite-admin-token"

[reload]
watch = false

[plugins.fault]
path = "{plugin}"
call_timeout = "300ms"
cpu_share = 0.5
memory_limit_mib = 48
grants = ["http:a"]
max_body_bytes = "1MiB"

[upstreams.a]
targets = ["{a}"]

[upstreams.secret]
targets = ["{secret}"]

[[routes]]
name = "hostile"
match = { path_prefix = "/h" }
upstream = "a"
filters = [{ plugin = "fault", config = { fetch_upstream = "secret", on = { "/h/loop" = "spin", "/h/bomb" = "hog", "/h/deep" = "overflow", "/h/panic" = "panic", "/h/headers" = "header-flood", "/h/body" = "body-flood", "/h/files" = "read-files", "/h/env" = "read-env", "/h/fetch" = "fetch", "/h/forbidden" = "forbidden", "/h/forbidden-reply" = "forbidden-reply" } } }]

[[routes]]
name = "other"
upstream = "a"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hostile_plugin_is_contained_while_other_routes_serve() {
    let (a, secret) = (Upstream::start("a").await, Upstream::start("secret").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let config = CONFIG
        .replace("{plugin}", &plugin("fault"))
        .replace("{a}", &a.addr.to_string())
        .replace("{secret}", &secret.addr.to_string());
    let sluice = run(dir.path(), &config, &log).await;
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", sluice.port);
    assert_eq!(get(&url("/other"), &[]).await.status, 200);

    for case in &CASES {
        let stop = Arc::new(AtomicBool::new(false));
        let others = other_route(url("/other"), stop.clone());
        // Let the other route's traffic get going before the act.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let reply = get(&url(case.path), &[]).await;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        let (served, refused) = others.await.unwrap();
        (case.check)(&reply);
        assert!(
            took < Duration::from_secs(3),
            "{}: took {took:?}",
            case.path
        );
        assert_eq!(refused, 0, "{}: the other route failed", case.path);
        assert!(
            served >= 2,
            "{}: the other route served {served}",
            case.path
        );
        // The plugin still serves.
        assert_eq!(get(&url("/h/fine"), &[]).await.status, 200, "{}", case.path);
    }
    assert_eq!(secret.hits(), 0, "the ungranted upstream was reached");

    let metrics = sluice_tests::send(
        "GET",
        &format!("http://127.0.0.1:{}/metrics", sluice.admin),
        &[("authorization", "Bearer hostile-suite-admin-token")],
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let expected = [
        r#"sluice_filter_failures_total{plugin="fault",reason="timeout"} 1"#,
        r#"sluice_filter_failures_total{plugin="fault",reason="out_of_memory"} 1"#,
        r#"sluice_filter_failures_total{plugin="fault",reason="stack_overflow"} 1"#,
        r#"sluice_filter_failures_total{plugin="fault",reason="trap"} 1"#,
        r#"sluice_filter_failures_total{plugin="fault",reason="over_limit"} 2"#,
        r#"sluice_capability_denied_total{plugin="fault",grant="http:secret"} 1"#,
        r#"sluice_filter_refused_edits_total{plugin="fault",header="host"} 5"#,
        r#"sluice_filter_refused_edits_total{plugin="fault",header="transfer-encoding"} 5"#,
        r#"sluice_filter_refused_edits_total{plugin="fault",header="content-length"} 5"#,
        r#"sluice_filter_sandbox_refusals_total{plugin="fault",what="filesystem"} 1"#,
        // Panicking asks for the environment too.
        r#"sluice_filter_sandbox_refusals_total{plugin="fault",what="environment"} "#,
    ];
    for series in expected {
        assert!(
            metrics.contains(series),
            "{series}\n{metrics}\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
    }

    drop(sluice);
    let text = std::fs::read_to_string(&log).unwrap();
    let logged = |words: &[&str]| {
        text.lines()
            .any(|line| words.iter().all(|word| line.contains(word)))
    };
    for reason in [
        "timeout",
        "out_of_memory",
        "stack_overflow",
        "trap",
        "over_limit",
    ] {
        assert!(
            logged(&[
                "plugin=\"fault\"",
                &format!("reason=\"{reason}\""),
                "request_id=",
            ]),
            "no line for {reason}:\n{text}"
        );
    }
    for words in [
        ["fault", "max_header_bytes"],
        ["fault", "max_body_bytes"],
        ["fault", "`http:secret`"],
        ["fault", "`host`"],
        ["fault", "`transfer-encoding`"],
        ["fault", "asked for its filesystem"],
        ["fault", "asked for its environment"],
    ] {
        assert!(logged(&words), "no line with {words:?}:\n{text}");
    }
}
