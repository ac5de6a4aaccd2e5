//! The proxy itself: routing, balancing, standard proxy behaviour, HTTP/2.

use std::process::Command;

use sluice_tests::{Gateway, Upstream, by_upstream, get, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_route_wins() {
    let ups = [
        Upstream::start("catch-all").await,
        Upstream::start("prefix").await,
        Upstream::start("longer-prefix").await,
        Upstream::start("exact").await,
        Upstream::start("host").await,
        Upstream::start("post").await,
        Upstream::start("header").await,
        Upstream::start("first-of-equals").await,
        Upstream::start("second-of-equals").await,
    ];
    let upstreams: String = ups
        .iter()
        .enumerate()
        .map(|(i, u)| format!("[upstreams.u{i}]\ntargets = [\"{}\"]\n", u.addr))
        .collect();
    // Listed least specific first, so order alone cannot explain the results.
    let gw = Gateway::start(&format!(
        r#"{upstreams}
[[routes]]
upstream = "u0"

[[routes]]
match = {{ path_prefix = "/api" }}
upstream = "u1"

[[routes]]
match = {{ path_prefix = "/api/v2" }}
upstream = "u2"

[[routes]]
match = {{ path = "/api/v2/special" }}
upstream = "u3"

[[routes]]
match = {{ host = "example.test", path_prefix = "/api" }}
upstream = "u4"

[[routes]]
match = {{ path_prefix = "/api", methods = ["POST"] }}
upstream = "u5"

[[routes]]
match = {{ path_prefix = "/api", methods = ["POST"], headers = {{ x-tenant = "blue" }} }}
upstream = "u6"

[[routes]]
match = {{ path_prefix = "/even/a" }}
upstream = "u7"

[[routes]]
match = {{ path_prefix = "/even" }}
upstream = "u8"

[[routes]]
match = {{ path_prefix = "/even/b" }}
upstream = "u8"
"#
    ))
    .await
    .unwrap();

    // (method, path, request headers, the upstream that must answer)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 10] = [
        ("GET", "/", &[], "catch-all"),
        ("GET", "/apix", &[], "catch-all"),
        ("GET", "/api", &[], "prefix"),
        ("GET", "/api/v1/users", &[], "prefix"),
        ("GET", "/api/v2/users", &[], "longer-prefix"),
        ("GET", "/api/v2/special", &[], "exact"),
        (
            "GET",
            "/api/v2/special",
            &[("host", "example.test")],
            "host",
        ),
        ("POST", "/api/orders", &[], "post"),
        ("POST", "/api/orders", &[("x-tenant", "blue")], "header"),
        ("GET", "/even/a/x", &[], "first-of-equals"),
    ];
    for (method, path, headers, expected) in cases {
        let reply = send(method, &gw.url(path), headers).await;
        assert_eq!(reply.status, 200, "{method} {path}");
        assert_eq!(
            reply.header("x-upstream"),
            expected,
            "{method} {path} {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        "[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nmatch = {{ path_prefix = \"/only\" }}\nupstream = \"a\"\n",
        up.addr
    ))
    .await
    .unwrap();
    let reply = get(&gw.url("/elsewhere"), &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-sluice-error"), "no_route");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_across_targets() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = Gateway::start(&format!(
        "[upstreams.pair]\nbalance = \"round-robin\"\ntargets = [\"{}\", \"{}\"]\n[[routes]]\nupstream = \"pair\"\n",
        a.addr, b.addr
    ))
    .await
    .unwrap();
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(get(&gw.url("/"), &[]).await);
    }
    let order: Vec<&str> = replies.iter().map(|r| r.header("x-upstream")).collect();
    for pair in order.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin alternates: {order:?}");
    }
    let counts = by_upstream(&replies);
    assert_eq!((counts["a"], counts["b"]), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_is_502_and_slow_upstream_is_504() {
    let slow = Upstream::start("slow").await;
    // Port 1 on loopback: nothing listens there, so connecting is refused.
    let gw = Gateway::start(&format!(
        r#"[upstreams.dead]
targets = ["127.0.0.1:1"]

[upstreams.slow]
targets = ["{}"]
timeout = "300ms"

[[routes]]
match = {{ path_prefix = "/dead" }}
upstream = "dead"

[[routes]]
upstream = "slow"
"#,
        slow.addr
    ))
    .await
    .unwrap();
    let dead = get(&gw.url("/dead"), &[]).await;
    assert_eq!(dead.status, 502);
    assert_eq!(dead.header("x-sluice-error"), "upstream_unreachable");
    let late = get(&gw.url("/slow"), &[]).await;
    assert_eq!(late.status, 504);
    assert_eq!(late.header("x-sluice-error"), "upstream_timeout");
    // The gateway keeps serving.
    assert_eq!(get(&gw.url("/fine"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        "[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\n",
        up.addr
    ))
    .await
    .unwrap();
    // A raw request, so the client library cannot tidy the headers first.
    let mut socket = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = "GET /echo HTTP/1.1\r\nHost: shop.test\r\nConnection: close, x-secret\r\nx-secret: 1\r\n\
                   Keep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\n\
                   X-Forwarded-For: 203.0.113.9\r\nx-kept: yes\r\n\r\n";
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    socket.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: serde_json::Value = serde_json::from_str(body).expect("JSON echo");
    let headers = &echo["headers"];
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} must not reach the upstream: {headers}"
        );
    }
    assert_eq!(headers["x-kept"][0], "yes");
    assert_eq!(headers["host"][0], "shop.test");
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["x-forwarded-host"][0], "shop.test");
}

/// Run curl with `args`: its `<HTTP version> <status>` line, and the body as JSON.
async fn curl(args: &[&str]) -> (String, serde_json::Value) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "-w", "\n%{http_version} %{http_code}"])
            .args(&args)
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (body, status_line) = text.rsplit_once('\n').expect("curl output");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text} {stderr}"));
    (status_line.to_owned(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_requests_are_proxied() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        "[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\n",
        up.addr
    ))
    .await
    .unwrap();
    let url = gw.url("/over-h2?x=1");
    let (status_line, echo) = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!(status_line, "2 200");
    assert_eq!(echo["uri"], "/over-h2?x=1");
    assert_eq!(
        echo["headers"]["host"][0],
        gw.addr.to_string(),
        "the :authority becomes Host upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_refuses_new_connections() {
    let up = Upstream::start("a").await;
    let (_dir, server) = Gateway::bind(&format!(
        "[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\n",
        up.addr
    ))
    .await
    .unwrap();
    let addr = server.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_until(
        async {
            let _ = stopped.await;
        },
        std::time::Duration::from_secs(30),
    ));
    let in_flight =
        tokio::spawn(async move { get(&format!("http://{addr}/delay?ms=700"), &[]).await });
    while up.hits() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"done", "the request in flight finished");
    serving.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_with_http2_or_http1_by_alpn() {
    let up = Upstream::start("a").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls");
    let config = |cert: &str| {
        format!(
            r#"[[listeners]]
address = "127.0.0.1:{port}"
tls = {{ cert = "{certs}/{cert}", key = "{certs}/key.pem" }}

[upstreams.a]
targets = ["{}"]
[[routes]]
upstream = "a"
"#,
            up.addr
        )
    };
    let gw = Gateway::start(&config("cert.pem")).await.unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (status_line, echo) = curl(&[
            flag,
            "--cacert",
            &format!("{certs}/cert.pem"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/secure"),
        ])
        .await;
        assert_eq!(status_line, format!("{version} 200"));
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    }
    // The plaintext listener next to it still speaks plain HTTP.
    let plain = get(&gw.url("/plain"), &[]).await;
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"][0], "http");

    // A certificate that is not one is a configuration error, with its line.
    let error = Gateway::start(&config("README.md"))
        .await
        .err()
        .expect("a bad certificate is refused")
        .to_string();
    assert!(error.contains("sluice.toml:6: listeners[1].tls"), "{error}");
    assert!(error.contains("no certificate"), "{error}");
}

fn one_route_to(up: &Upstream) -> String {
    format!(
        "[upstreams.a]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"a\"\n",
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&one_route_to(&up)).await.unwrap();
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(up.hits(), 20);
    assert_eq!(up.connections(), 1, "one keep-alive connection serves all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_its_connections_gets_a_new_one_each_time() {
    let up = Upstream::start_with("a", |_| {
        (200, vec![("connection", "close".to_owned())], "bye".into())
    })
    .await;
    let gw = Gateway::start(&one_route_to(&up)).await.unwrap();
    for _ in 0..5 {
        let reply = get(&gw.url("/"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "bye");
    }
    assert_eq!(up.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_abandoned_halfway_does_not_return_its_connection() {
    let up = Upstream::start("a").await;
    let gw = Gateway::start(&one_route_to(&up)).await.unwrap();
    // Read only the head of a large download, then hang up.
    let mut socket = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    socket
        .write_all(b"GET /download?bytes=50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    socket.read_exact(&mut head).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"));
    drop(socket);
    // The half-read connection cannot carry another exchange: a fresh one does.
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(up.connections(), 2);
}
