//! Edge faults, round two: what a sloppy upstream, a hostile or flaky
//! client and a cookie could do to everyone else. Each case sends the raw
//! bytes that trigger it over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_tests::{Gateway, Upstream, get, plugin, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers a POST with 401 as soon as it has the head,
/// without reading the body, and keeps the connection for the next
/// request; a GET gets 200. Many real servers do this for uploads they
/// refuse.
async fn answers_early() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buffer.drain(..end + 4).collect();
                        let reply: &[u8] = if head.starts_with(b"POST") {
                            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that answers every connection's first request with `reply`,
/// byte for byte, and keeps the connection open a while.
async fn answers_with(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = socket.read(&mut head).await;
                let _ = socket.write_all(reply).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

/// Send a request head and the first part of its body, and leave the
/// connection open; the response head, once it comes.
async fn start_upload(addr: SocketAddr, head: &str, part: &[u8]) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(part).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .expect("a response head within 5 s")
            .unwrap();
        assert!(read > 0, "closed without a response");
        got.extend_from_slice(&chunk[..read]);
    }
    (socket, String::from_utf8_lossy(&got).into_owned())
}

/// The value of the first metric line starting with `prefix` (0 when none).
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn config(target: SocketAddr, extra: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[upstreams.a]
targets = ["{target}"]
timeout = "3s"
outlier = {{ consecutive_failures = 2 }}

[[routes]]
upstream = "a"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_before_the_body_stalls_nobody_else() {
    let target = answers_early().await;
    let gw = Gateway::start(&config(target, "")).await.unwrap();
    // Six uploads the upstream refuses at once, whose clients then stall
    // with most of the body unsent.
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
        let (socket, reply) = start_upload(gw.addr, head, &[b'x'; 1000]).await;
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
        stalled.push(socket);
    }
    // Every other client is served at once, by the same healthy target.
    for i in 0..6 {
        let reply = tokio::time::timeout(Duration::from_secs(2), get(&gw.url("/"), &[]))
            .await
            .unwrap_or_else(|_| panic!("request {i} waited behind an unsent upload"));
        assert_eq!(reply.status, 200, "request {i}");
    }
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "sluice_upstream_ejections_total"), 0.0);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fault_in_its_body_is_never_the_upstream_s() {
    let up = Upstream::start("backend").await;
    let gw = Gateway::start(&config(up.addr, "")).await.unwrap();
    // Malformed chunked bodies are the client's error: 400, as nginx answers.
    let malformed: [&[u8]; 2] = [
        b"FFFFFFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n",
        &[
            b"5;".as_slice(),
            &[b'a'; 20 << 10],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat(),
    ];
    for body in malformed {
        let head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let reply = raw(gw.addr, &[head.as_slice(), body].concat()).await;
        assert_eq!(reply.status, 400, "{}", reply.head);
        assert_eq!(reply.header("x-sluice-error"), "body_malformed");
    }
    // Clients hanging up halfway through their uploads (to an upstream that
    // reads them whole), more of them than it takes to eject a target.
    for _ in 0..4 {
        let mut socket = TcpStream::connect(gw.addr).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&[b'x'; 5000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(socket);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "sluice_upstream_ejections_total"), 0.0);
    // Those whose requests were still in hand when they went are logged as
    // nginx logs them (499), not as the upstream's failure.
    assert!(
        metric(
            &metrics,
            r#"sluice_requests_refused_total{reason="client_closed"}"#
        ) >= 1.0,
        "{metrics}"
    );
    // The target was never blamed: it still takes every request.
    assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_for_one_client_is_never_cached_for_the_next() {
    let up = Upstream::start_with("backend", |parts| {
        let who = parts
            .headers
            .get("x-user")
            .map_or("nobody", |v| v.to_str().unwrap())
            .to_owned();
        let headers = match parts.uri.path() {
            "/cookie" => vec![("set-cookie", format!("session={who}"))],
            "/private" => vec![("cache-control", "private, max-age=60".to_owned())],
            "/no-store" => vec![("cache-control", "no-store".to_owned())],
            _ => vec![("cache-control", "max-age=60".to_owned())],
        };
        (200, headers, format!("for {who}"))
    })
    .await;
    let toml = |extra: &str| {
        format!(
            r#"[plugins.cache-policy]
path = "{}"
{}"#,
            plugin("cache-policy"),
            config(
                up.addr,
                &format!(
                    "{extra}\nfilters = [{{ plugin = \"cache-policy\", config = {{ ttl_secs = 60 }} }}]"
                )
            )
        )
    };
    let gw = Gateway::start(&toml("")).await.unwrap();
    for path in ["/cookie", "/private", "/no-store"] {
        let alice = get(&gw.url(path), &[("x-user", "alice")]).await;
        assert_eq!(alice.body, "for alice", "{path}: {alice:?}");
        let bob = get(&gw.url(path), &[("x-user", "bob")]).await;
        assert_eq!(
            bob.body, "for bob",
            "{path}: alice's response was served to bob"
        );
        assert!(bob.header("set-cookie") != "session=alice", "{path}");
    }
    // A public response is cached as before.
    get(&gw.url("/public"), &[("x-user", "alice")]).await;
    let bob = get(&gw.url("/public"), &[("x-user", "bob")]).await;
    assert_eq!(bob.body, "for alice");
    assert_eq!(bob.header("x-cache"), "HIT");

    // A route that says so stores them anyway (nginx's proxy_ignore_headers).
    let gw = Gateway::start(&toml("cache_private = true")).await.unwrap();
    get(&gw.url("/private"), &[("x-user", "alice")]).await;
    let bob = get(&gw.url("/private"), &[("x-user", "bob")]).await;
    assert_eq!(bob.body, "for alice");
}

/// One request, raw, closing the connection; the upstream's echo of it.
async fn echo_of(addr: SocketAddr, head: &str) -> serde_json::Value {
    let reply = raw(
        addr,
        format!("GET /x HTTP/1.1\r\n{head}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pose_as_another_host_identity_or_address() {
    let admin = Upstream::start("admin").await;
    let public = Upstream::start("public").await;
    let toml = |listener: &str| {
        format!(
            r#"[[listeners]]
address = "127.0.0.1:0"
{listener}

[upstreams.admin]
targets = ["{}"]

[upstreams.public]
targets = ["{}"]

[[routes]]
match = {{ host = "admin.example" }}
upstream = "admin"

[[routes]]
upstream = "public"
"#,
            admin.addr, public.addr
        )
    };
    let gw = Gateway::start_as_is(&toml("")).await.unwrap();

    // (request head after the request line, what the upstream must see)
    let cases: &[(&str, &str, &str)] = &[
        // A trailing dot names the same host: its route, not the catch-all.
        ("Host: admin.example.\r\n", "upstream", "admin"),
        ("Host: admin.example.:80\r\n", "upstream", "admin"),
        ("Host: shop.example\r\n", "upstream", "public"),
    ];
    for (head, key, want) in cases {
        assert_eq!(echo_of(gw.addr, head).await[key], *want, "{head}");
    }
    let headers = |head: &str| {
        let head = format!("Host: shop.example\r\n{head}");
        async move { echo_of(gw.addr, &head).await["headers"].clone() }
    };
    // `x_user` would reach CGI-style backends as `X_USER`, beside the real one.
    let echoed = headers("x_user: mallory\r\nx-user: alice\r\n").await;
    assert!(echoed.get("x_user").is_none(), "{echoed}");
    assert_eq!(echoed["x-user"][0], "alice");
    // A second X-Forwarded-For field is the same list, merged, then the client.
    let echoed = headers("X-Forwarded-For: 203.0.113.1\r\nX-Forwarded-For: 203.0.113.2\r\n").await;
    assert_eq!(
        echoed["x-forwarded-for"],
        serde_json::json!(["203.0.113.1, 203.0.113.2, 127.0.0.1"])
    );
    // X-Real-IP and Forwarded cannot carry a client's say-so alone.
    let echoed = headers("X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n").await;
    assert_eq!(echoed["x-real-ip"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        echoed["forwarded"],
        serde_json::json!(["for=6.6.6.6, for=127.0.0.1;proto=http"])
    );
    // Over HTTP/2 a browser splits cookies into fields; upstream gets one.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("http://shop.example/x")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));

    // A listener can refuse such names instead, or let them through.
    let strict = Gateway::start_as_is(&toml(r#"headers_with_underscores = "reject""#))
        .await
        .unwrap();
    let head = "GET /x HTTP/1.1\r\nHost: a\r\nx_user: mallory\r\nConnection: close\r\n\r\n";
    let reply = raw(strict.addr, head.as_bytes()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("x-sluice-error"), "invalid_header");
    let open = Gateway::start_as_is(&toml(r#"headers_with_underscores = "allow""#))
        .await
        .unwrap();
    let echoed = echo_of(open.addr, "Host: a\r\nx_user: mallory\r\n").await;
    assert_eq!(echoed["headers"]["x_user"][0], "mallory");
}

/// A plain GET through a gateway to an upstream that answers with `reply`.
async fn through(reply: &'static [u8]) -> sluice_tests::RawReply {
    let gw = Gateway::start(&config(answers_with(reply).await, ""))
        .await
        .unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    raw(gw.addr, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_a_stale_length_arrives_whole() {
    let reply = through(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_ne!(reply.header("content-length"), "3", "{}", reply.head);
    assert!(reply.body.contains("0123456789"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_schemes_are_case_insensitive_at_the_admin_api() {
    let up = Upstream::start("backend").await;
    let gw = Gateway::start(&config(up.addr, "")).await.unwrap();
    let admin = gw.admin.unwrap();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let head = format!(
            "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAuthorization: {scheme} test-admin-token\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw(admin, head.as_bytes()).await.status, 200, "{scheme}");
    }
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Basic test-admin-token\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(admin, head.as_bytes()).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_switch_nobody_asked_for_is_not_passed_on() {
    let reply = through(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 502, "{}", reply.head);
    assert_eq!(reply.header("x-sluice-error"), "upstream_invalid_response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stalls_either_way_is_given_up_on() {
    // An upstream that sends a head and a tenth of its body, then nothing.
    let stalls = answers_with(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let gw = Gateway::start(&config(stalls, "")).await.unwrap();
    // `config` sets no body_timeout: the upstream's is set here.
    let gw_strict = Gateway::start(&config(stalls, "").replace(
        "timeout = \"3s\"",
        "timeout = \"3s\"\nbody_timeout = \"300ms\"",
    ))
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let reply = raw(
        gw_strict.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.starts_with("0123456789"), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stalled body hung {:?}",
        started.elapsed()
    );
    // With the default (60 s) the same response is still open after a second.
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), socket.read_to_end(&mut sink)).await;
    assert!(read.is_err(), "still open under the default");

    // A client that never reads a large response: its connection is closed
    // after the listener's send_timeout, and the upstream's with it.
    let up = Upstream::start("backend").await;
    let gw = Gateway::start_as_is(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nsend_timeout = \"300ms\"\n{}",
        config(up.addr, "")
    ))
    .await
    .unwrap();
    let total = 64 << 20;
    let mut socket = TcpStream::connect(gw.addr).await.unwrap();
    let head =
        format!("GET /download?bytes={total} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let read_all = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = socket.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            got += n;
        }
    })
    .await;
    assert!(read_all.is_ok(), "the connection was left open");
    assert!(
        got < total,
        "the whole response was still sent ({got} bytes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_streams_are_bounded_and_the_rest_fall_back_to_gzip() {
    // Text that compresses to megabytes, so a stream left unread stays open.
    let up = Upstream::start_with("text", |_| {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let text: String = (0..(24 << 20))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect();
        (200, vec![("content-type", "text/plain".to_owned())], text)
    })
    .await;
    let gw = Gateway::start(&config(
        up.addr,
        r#"compression = { encodings = ["br", "gzip"], brotli_streams = 1 }"#,
    ))
    .await
    .unwrap();
    let head = "GET / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: br, gzip\r\n\r\n";
    let encoding_of = |reply: &str| {
        reply
            .lines()
            .find_map(|l| l.strip_prefix("content-encoding: "))
            .map(str::to_owned)
    };
    // One client takes the one brotli stream and leaves it unread.
    let (holder, reply) = start_upload(gw.addr, head, b"").await;
    assert_eq!(encoding_of(&reply).as_deref(), Some("br"), "{reply}");
    // The next gets its next choice while that stream runs.
    let (other, reply) = start_upload(gw.addr, head, b"").await;
    assert_eq!(encoding_of(&reply).as_deref(), Some("gzip"), "{reply}");
    drop((holder, other));
    // Once it is gone, brotli again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_again, reply) = start_upload(gw.addr, head, b"").await;
    assert_eq!(encoding_of(&reply).as_deref(), Some("br"), "{reply}");
}
