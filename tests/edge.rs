//! The edge: one view of each request for the router, the filters and the
//! upstream, and the limits every client meets.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::{Gateway, RawReply, Upstream, get, raw};

/// The quickstart as shipped (`/api` behind API-key auth, everything else
/// public), with a test upstream behind it and a port picked by the system.
async fn quickstart(up: &Upstream) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/sluice.toml");
    let target = up.addr.to_string();
    let hook = std::sync::Arc::new(move |config: &mut sluice_control::Config| {
        for upstream in config.upstreams.values_mut() {
            *upstream.targets.get_mut() = vec![target.clone().into()];
        }
        config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    });
    let config = sluice_control::Config::load(&path).unwrap();
    let server = sluice_control::Server::bind_with_hook(config, Some(hook))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    (addr, tokio::spawn(server.serve()))
}

async fn request(addr: SocketAddr, target: &str, headers: &str) -> RawReply {
    let text = format!("GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    raw(addr, text.as_bytes()).await
}

/// What the upstream was asked for, from its JSON echo.
fn upstream_uri(reply: &RawReply) -> String {
    let echo: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("not the upstream's echo ({e}): {}", reply.head));
    echo["uri"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_trick_reaches_the_protected_route_without_its_key() {
    let up = Upstream::start("backend").await;
    let (addr, _serving) = quickstart(&up).await;
    let host = "Host: shop.test\r\n";
    let key = "Host: shop.test\r\nx-api-key: demo-key-alice\r\n";

    // (request target, what must happen): each is refused at the edge (400),
    // or lands on the route its normalised path names: `/api`, whose auth
    // turns it away without a key and sends the normalised path upstream
    // with one.
    let api = Some("/api/orders");
    let vectors: &[(&str, Option<&str>)] = &[
        ("//api/orders", api),
        ("/%61pi/orders", api),
        ("/%61%70%69/orders", api),
        ("/public/../api/orders", api),
        ("/./api/orders", api),
        ("/x/%2e%2e/api/orders", api),
        ("/x/%2E%2E/api/orders", api),
        ("/x/./../api/./orders", api),
        ("///api//orders", api),
        ("/api/orders/x/..", Some("/api/orders/")),
        ("http://shop.test//api/orders", api),
        ("/api%2forders", None),
        ("/api%2Forders", None),
        ("/api%5corders", None),
        ("/api\\orders", None),
        ("/x/..%2fapi/orders", None),
        ("/../api/orders", None),
        ("/%2e%2e/api/orders", None),
        ("/public/../../api/orders", None),
        ("/api/orders%00", None),
        ("/api/orders%zz", None),
    ];
    for (target, normal) in vectors {
        let anonymous = request(addr, target, host).await;
        match normal {
            None => {
                assert_eq!(anonymous.status, 400, "{target}: {}", anonymous.head);
                assert_eq!(
                    anonymous.header("x-sluice-error"),
                    "invalid_path",
                    "{target}"
                );
                assert_eq!(request(addr, target, key).await.status, 400, "{target}");
            }
            Some(normal) => {
                assert_eq!(
                    anonymous.status, 401,
                    "{target} is the API: {}",
                    anonymous.head
                );
                let keyed = request(addr, target, key).await;
                assert_eq!(keyed.status, 200, "{target}: {}", keyed.head);
                assert_eq!(upstream_uri(&keyed), *normal, "{target}");
            }
        }
    }
    // The query is the client's business and is passed on as sent.
    let keyed = request(addr, "/x/%2e%2e/api/orders?next=%2F..%2F", key).await;
    assert_eq!(upstream_uri(&keyed), "/api/orders?next=%2F..%2F");
    // The public route gets normalised paths too.
    let public = request(addr, "/public/%7ehello/./x", host).await;
    assert_eq!(public.status, 200);
    assert_eq!(upstream_uri(&public), "/public/~hello/x");
    assert_eq!(
        up.hits(),
        13,
        "only the keyed API requests and the public one got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_one_host_and_hop_by_hop_headers_cannot_undo_filters() {
    let up = Upstream::start("backend").await;
    let (addr, _serving) = quickstart(&up).await;

    // (request head after the request line, status)
    let cases: &[(&str, u16)] = &[
        ("Host: shop.test\r\n", 200),
        ("", 400),
        ("Host: shop.test\r\nHost: other.test\r\n", 400),
        ("Host: alice@shop.test\r\n", 400),
        ("Host: shop test\r\n", 400),
    ];
    for (headers, status) in cases {
        let reply = request(addr, "/public/x", headers).await;
        assert_eq!(reply.status, *status, "{headers:?}: {}", reply.head);
        if *status == 400 {
            assert_eq!(reply.header("x-sluice-error"), "invalid_host");
        }
    }
    // HTTP/1.0 may leave `Host` out.
    let old = raw(addr, b"GET /public/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.status, 200, "{}", old.head);

    // The absolute form's authority wins over `Host` (RFC 9112 §3.2.2), for
    // routing and upstream alike.
    let absolute = request(
        addr,
        "http://shop.test/public/x",
        "Host: elsewhere.test\r\n",
    )
    .await;
    let echo: serde_json::Value = serde_json::from_str(&absolute.body).unwrap();
    assert_eq!(echo["headers"]["host"][0], "shop.test");

    // A client naming a header in `Connection` cannot strip what a filter
    // adds: hop-by-hop headers go before any filter runs.
    let forged = request(
        addr,
        "/api/orders",
        "Host: shop.test\r\nx-api-key: demo-key-bob\r\nConnection: x-user, x-plan\r\nx-user: mallory\r\n",
    )
    .await;
    assert_eq!(forged.status, 200, "{}", forged.head);
    let echo: serde_json::Value = serde_json::from_str(&forged.body).unwrap();
    assert_eq!(echo["headers"]["x-user"], serde_json::json!(["bob"]));
    assert_eq!(echo["headers"]["x-plan"], serde_json::json!(["free"]));
    assert!(echo["headers"].get("connection").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_authority_that_disagrees_with_host_is_refused() {
    use http_body_util::{BodyExt, Empty};
    let up = Upstream::start("backend").await;
    let (addr, _serving) = quickstart(&up).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for (host, status) in [
        (None, 200),
        (Some("shop.test"), 200),
        (Some("evil.test"), 400),
    ] {
        let mut request = http::Request::get("http://shop.test/public/x");
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let response = sender
            .send_request(request.body(Empty::<bytes::Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status, "Host: {host:?}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status == 200 {
            let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(echo["headers"]["host"][0], "shop.test");
        }
    }
}

async fn limited(up: &Upstream, listener: &str, route: &str) -> Gateway {
    Gateway::start_as_is(&format!(
        r#"[[listeners]]
address = "127.0.0.1:0"
{listener}

[upstreams.a]
targets = ["{}"]
timeout = "500ms"

[[routes]]
upstream = "a"
{route}
"#,
        up.addr
    ))
    .await
    .unwrap()
}

/// The listener with the limits under test.
fn second(gw: &Gateway) -> SocketAddr {
    gw.addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_with_431_and_414() {
    let up = Upstream::start("a").await;
    let gw = limited(&up, "", "").await;
    let addr = second(&gw);
    let fine = format!("x-fill: {}\r\n", "v".repeat(20 << 10));
    assert_eq!(
        request(addr, "/", &format!("Host: a\r\n{fine}"))
            .await
            .status,
        200
    );
    // Past the default 32 KiB, whether the head fits hyper's buffer or not.
    for size in [40 << 10, 400 << 10] {
        let big = format!("x-big: {}\r\n", "v".repeat(size));
        let reply = request(addr, "/", &format!("Host: a\r\n{big}")).await;
        assert_eq!(reply.status, 431, "{size} bytes");
    }
    let many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    assert_eq!(
        request(addr, "/", &format!("Host: a\r\n{many}"))
            .await
            .status,
        431
    );
    let long = format!("/{}", "a".repeat(9 << 10));
    let reply = request(addr, &long, "Host: a\r\n").await;
    assert_eq!(reply.status, 414);
    assert_eq!(reply.header("x-sluice-error"), "uri_too_long");
    assert_eq!(up.hits(), 1);

    // Configured otherwise, the limits move; and HTTP/2 meets the same ones.
    let roomy = limited(
        &up,
        "max_header_bytes = \"512KiB\"\nmax_headers = 20\nmax_uri_bytes = 16384",
        "",
    )
    .await;
    let addr = second(&roomy);
    let big = format!("x-big: {}\r\n", "v".repeat(400 << 10));
    assert_eq!(
        request(addr, "/", &format!("Host: a\r\n{big}"))
            .await
            .status,
        200
    );
    assert_eq!(request(addr, &long, "Host: a\r\n").await.status, 200);
    let some: String = (0..15).map(|i| format!("x-h{i}: 1\r\n")).collect();
    assert_eq!(
        request(addr, "/", &format!("Host: a\r\n{some}"))
            .await
            .status,
        200
    );
    let more: String = (0..25).map(|i| format!("x-h{i}: 1\r\n")).collect();
    assert_eq!(
        request(addr, "/", &format!("Host: a\r\n{more}"))
            .await
            .status,
        431
    );
    let h2 = curl_status(&[
        "--http2-prior-knowledge",
        "-H",
        &format!("x-big: {}", "v".repeat(40 << 10)),
        &format!("http://{}/", second(&gw)),
    ]);
    assert_eq!(h2, "431");
    metric_counted(
        &gw,
        r#"sluice_requests_refused_total{reason="uri_too_long"} 1"#,
    )
    .await;
}

fn curl_status(args: &[&str]) -> String {
    let output = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn metric_counted(gw: &Gateway, line: &str) {
    let text = gw.control.metrics().render();
    assert!(text.contains(line), "{line} not in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_held_to_the_route_limit_and_the_body_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("a").await;
    let gw = limited(&up, "body_timeout = \"300ms\"", "max_body = \"1KiB\"").await;
    let addr = second(&gw);
    let post = |length: usize| {
        format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{}",
            "b".repeat(length)
        )
    };
    let fits = raw(addr, post(1024).as_bytes()).await;
    assert_eq!((fits.status, fits.body.as_str()), (200, "1024"));
    // Declared too large: refused before the upstream hears of it.
    let declared = raw(addr, post(1025).as_bytes()).await;
    assert_eq!(declared.status, 413);
    assert_eq!(declared.header("x-sluice-error"), "body_too_large");
    // Chunked, found too large on the way.
    let chunk = "b".repeat(600);
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert_eq!(raw(addr, chunked.as_bytes()).await.status, 413);

    // A client that stops sending its body gets 408 after the body timeout.
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut socket, &mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_count_against_the_response_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("a").await;
    // The upstream must answer within 500 ms of the request; the upload
    // takes 1.5 s in pieces 150 ms apart, well within the body timeout.
    let gw = limited(&up, "body_timeout = \"1s\"", "").await;
    let mut socket = tokio::net::TcpStream::connect(second(&gw)).await.unwrap();
    socket
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        socket.write_all(&[b'u'; 1000]).await.unwrap();
    }
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("10000"), "{answer}");
    // And a slow upstream still times out once the upload is done.
    let late = get(&format!("http://{}/delay?ms=2000", second(&gw)), &[]).await;
    assert_eq!(late.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_listener_and_per_client() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start("a").await;
    let gw = limited(
        &up,
        "max_connections = 4\nmax_connections_per_client = 2",
        "",
    )
    .await;
    let addr = second(&gw);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A third from the same address is closed at once; the first two serve.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let served = request(addr, "/", "Host: a\r\n").await;
    assert_eq!(served.status, 0, "still at the per-client limit");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        request(addr, "/", "Host: a\r\n").await.status,
        200,
        "a place came back"
    );
    metric_counted(
        &gw,
        &format!(
            r#"sluice_connections_refused_total{{listener="{addr}",reason="max_connections_per_client"}} 2"#
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_head_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("a").await;
    let gw = limited(
        &up,
        "idle_timeout = \"400ms\"\nheader_timeout = \"300ms\"",
        "",
    )
    .await;
    let addr = second(&gw);

    // Keep-alive: one request, then nothing; closed after the idle timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "an idle connection must be closed");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");

    // A head trickled in a byte at a time is cut off after the header timeout,
    // although bytes keep coming (so the idle timeout alone would not).
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: a\r\nx-slow: "
        .iter()
        .cycle()
        .take(60)
    {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "a trickled head was not cut off");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A connection busy with a slow response is not idle.
    let slow_response = get(&format!("http://{addr}/delay?ms=450"), &[]).await;
    assert_eq!(slow_response.status, 200);
}

/// Every request has one id: the client's if the listener trusts it and it
/// is well formed, a fresh UUID otherwise; the upstream gets it, and the
/// client gets it back on every answer, refusals and errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_one_id_to_the_upstream_and_back() {
    let up = Upstream::start("a").await;
    let route = r#"match = { path_prefix = "/" }"#;
    let trusting = limited(&up, "", route).await;
    let url = trusting.url("/x");

    let fresh = get(&url, &[]).await;
    let id = fresh.header("x-request-id").to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(fresh.echoed("x-request-id"), [id.as_str()]);
    let again = get(&url, &[]).await;
    assert_ne!(again.header("x-request-id"), id, "each request its own");

    let kept = get(&url, &[("x-request-id", "edge-lb-7f3a")]).await;
    assert_eq!(kept.header("x-request-id"), "edge-lb-7f3a");
    assert_eq!(kept.echoed("x-request-id"), ["edge-lb-7f3a"]);

    let long = "x".repeat(300);
    let replaced = get(&url, &[("x-request-id", &long)]).await;
    assert_eq!(replaced.header("x-request-id").len(), 36);
    assert_eq!(
        replaced.echoed("x-request-id"),
        [replaced.header("x-request-id").to_owned()]
    );

    // Refused at the edge, and an unknown route: still an id.
    let refused = request(trusting.addr, "/a/%2f/b", "Host: t\r\n").await;
    assert!(refused.head.starts_with("HTTP/1.1 400"), "{}", refused.head);
    assert_eq!(refused.header("x-request-id").len(), 36, "{}", refused.head);

    // A listener that does not trust clients' ids gives its own.
    let edge = limited(&up, "trust_request_id = false", route).await;
    let own = get(&edge.url("/x"), &[("x-request-id", "forged")]).await;
    assert_ne!(own.header("x-request-id"), "forged");
    assert_eq!(
        own.echoed("x-request-id"),
        [own.header("x-request-id").to_owned()]
    );
}
