//! TCP and UDP listeners with real servers and clients on loopback: two
//! `redis-server` targets driven by `redis-cli`, one killed and brought
//! back; TLS passed through by SNI to TLS servers (curl with `--resolve`),
//! with a default route and a client that never says hello; TLS terminated
//! for TCP, with its connection's access log line; the PROXY protocol sent
//! to nginx, which reports the client it was told of, and taken from
//! HAProxy in front (`send-proxy-v2`) but refused from an untrusted
//! address, sent on HTTP routes per client connection, and before TLS; TLS
//! re-encrypted to targets; connection limits, timeouts, health checks that
//! send bytes, UDP sessions; and a Wasm connection filter.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{Gateway, Upstream, curl, free_port, toml_str, wait_until_listening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server process, killed when dropped.
struct Process(Child);

impl Process {
    fn spawn(program: &str, args: &[&str]) -> Process {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs (.ci/run installs it): {e}"));
        Process(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn redis(port: u16) -> Process {
    let port_text = port.to_string();
    let server = Process::spawn(
        "redis-server",
        &[
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    wait_until_listening(port).await;
    server
}

/// `redis-cli` against `port`: its answer.
async fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn tls_files() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A TLS HTTP server (the test upstream) with the fixture certificate.
async fn tls_upstream(id: &'static str) -> Upstream {
    let (cert, key) = tls_files();
    let acceptor = sluice_proxy::tls::acceptor(&cert, &key, &[b"http/1.1"]).unwrap();
    Upstream::start_tls(id, acceptor).await
}

/// TLS servers `a`, `b` and a default one, as upstreams `a`, `b` and `fallback`.
struct ThreeTls {
    a: Upstream,
    b: Upstream,
    fallback: Upstream,
}

impl ThreeTls {
    async fn start() -> ThreeTls {
        ThreeTls {
            a: tls_upstream("a").await,
            b: tls_upstream("b").await,
            fallback: tls_upstream("default").await,
        }
    }

    fn config(&self) -> String {
        format!(
            "[upstreams.a]\ntargets = [\"{}\"]\n[upstreams.b]\ntargets = [\"{}\"]\n\
             [upstreams.fallback]\ntargets = [\"{}\"]\n",
            self.a.addr, self.b.addr, self.fallback.addr
        )
    }
}

fn tcp_listener(extra: &str) -> String {
    format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n{extra}\n")
}

const ADMIN: &str = "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_servers_behind_a_tcp_listener_one_killed_and_back() {
    let (a, b) = (free_port(), free_port());
    let mut first = redis(a).await;
    let _second = redis(b).await;
    let config = format!(
        "{}{ADMIN}[upstreams.redis]\ntargets = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n\
         balance = \"round-robin\"\nhealth = {{ interval = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}\n",
        tcp_listener("tcp = { upstream = \"redis\" }")
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let port = gw.addr.port();
    for i in 0..4 {
        assert_eq!(redis_cli(port, &["SET", &format!("k{i}"), "v"]).await, "OK");
    }
    // Round robin: a connection each.
    assert_eq!(redis_cli(a, &["DBSIZE"]).await, "2");
    assert_eq!(redis_cli(b, &["DBSIZE"]).await, "2");
    let before: u32 = redis_cli(b, &["DBSIZE"]).await.parse().unwrap();

    first.kill();
    for i in 4..10 {
        assert_eq!(
            redis_cli(port, &["SET", &format!("k{i}"), "v"]).await,
            "OK",
            "k{i}"
        );
    }
    // Every one on the target left (a refused connection retried on it at once).
    assert_eq!(redis_cli(b, &["DBSIZE"]).await, (before + 6).to_string());
    let healthy = |up: u16| {
        format!("sluice_upstream_healthy{{upstream=\"redis\",target=\"127.0.0.1:{up}\"}} ")
    };
    // The health check ejects it.
    wait_for_metric(&gw, &format!("{}0", healthy(a))).await;

    // Back: the health check takes it in again, and round robin reaches it.
    let _first = redis(a).await;
    wait_for_metric(&gw, &format!("{}1", healthy(a))).await;
    for i in 10..14 {
        assert_eq!(redis_cli(port, &["SET", &format!("k{i}"), "v"]).await, "OK");
    }
    assert_eq!(redis_cli(a, &["DBSIZE"]).await, "2");
    let metrics = gw.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sluice_tcp_connections_total{") && l.contains("ended=\"closed\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.contains("upstream=\"redis\""), "{line}");
    assert!(metrics.contains("sluice_tcp_bytes_total{"), "{metrics}");
}

#[tokio::test]
async fn tls_passes_through_routed_by_sni_with_a_default_and_a_hello_timeout() {
    let upstreams = ThreeTls::start().await;
    let config = format!(
        "{}{ADMIN}{}",
        tcp_listener(
            "[listeners.tcp]\nupstream = \"fallback\"\nhello_timeout = \"300ms\"\n\
             routes = [{ sni = [\"a.example\"], upstream = \"a\" }, { sni = [\"*.b.example\"], upstream = \"b\" }]"
        ),
        upstreams.config(),
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let port = gw.addr.port();
    for (name, expected) in [
        ("a.example", "a"),
        ("api.b.example", "b"),
        ("c.example", "default"),
    ] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/");
        let (head, _) = curl(&["-k", "--resolve", &resolve, &url]).await;
        assert!(
            head.contains(&format!("x-upstream: {expected}")),
            "{name}: {head}"
        );
    }
    // No SNI at all (an address): the default route.
    let (head, _) = curl(&["-k", &format!("https://127.0.0.1:{port}/")]).await;
    assert!(head.contains("x-upstream: default"), "{head}");

    // A client that never sends its ClientHello is let go after the timeout.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        gw.metrics().await.contains("ended=\"hello_timeout\""),
        "counted"
    );
}

#[tokio::test]
async fn tls_terminated_for_tcp() {
    let plain = Upstream::start("plain").await;
    let (cert, key) = tls_files();
    let config = format!(
        "{}[access_log]\nto = \"access.log\"\n[upstreams.plain]\ntargets = [\"{}\"]\n",
        tcp_listener(&format!(
            "tls = {{ cert = {}, key = {} }}\ntcp = {{ upstream = \"plain\" }}",
            toml_str(&cert.to_string_lossy()),
            toml_str(&key.to_string_lossy())
        )),
        plain.addr
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let url = format!("https://localhost:{}/hello", gw.addr.port());
    let (head, body) = curl(&["--cacert", &cert.to_string_lossy(), &url]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-upstream: plain"), "{head}");
    assert!(body.contains("/hello"), "{body}");
    // The connection's access log line, once it closed.
    let log = gw.config_path().parent().unwrap().join("access.log");
    let started = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("\"kind\":\"tcp\"")) {
            break line.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no line in {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["upstream"], "plain");
    assert_eq!(line["target"], plain.addr.to_string());
    assert_eq!(line["ended"], "closed");
    assert!(line["bytes_in"].as_u64().unwrap() > 0 && line["bytes_out"].as_u64().unwrap() > 0);
}

/// nginx answering with the client its PROXY protocol header named.
fn nginx_reporting_the_client(dir: &Path, port: u16) -> Process {
    nginx_reporting_over(dir, port, None)
}

/// The same, with TLS (after the header) when given a certificate and key.
fn nginx_reporting_over(dir: &Path, port: u16, tls: Option<(PathBuf, PathBuf)>) -> Process {
    let conf = dir.join("nginx.conf");
    let (ssl, certificate) = match tls {
        None => ("", String::new()),
        Some((cert, key)) => (
            " ssl",
            format!(
                "ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
        ),
    };
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; error_log stderr warn; pid {}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {0}; proxy_temp_path {0}; fastcgi_temp_path {0}; uwsgi_temp_path {0}; scgi_temp_path {0};\n\
               server {{ listen 127.0.0.1:{port}{ssl} proxy_protocol; {certificate} location / {{ return 200 \"$proxy_protocol_addr:$proxy_protocol_port\"; }} }} }}\n",
            dir.display()
        ),
    )
    .unwrap();
    Process::spawn(
        "nginx",
        &["-c", &conf.to_string_lossy(), "-p", &dir.to_string_lossy()],
    )
}

#[tokio::test]
async fn the_client_address_survives_a_chain_of_balancers() {
    let dir = tempfile::tempdir().unwrap();
    let nginx_port = free_port();
    let _nginx = nginx_reporting_the_client(dir.path(), nginx_port);
    wait_until_listening(nginx_port).await;
    // Sluice takes a v1 header from a trusted balancer and sends v2 on.
    let config = format!(
        "{}{ADMIN}[upstreams.nginx]\ntargets = [\"127.0.0.1:{nginx_port}\"]\nproxy_protocol = \"v2\"\n",
        tcp_listener(
            "proxy_protocol = { trusted = [\"127.0.0.1/32\"] }\ntcp = { upstream = \"nginx\" }"
        )
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let answer = raw_exchange(
        gw.addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 80\r\nGET / HTTP/1.0\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("203.0.113.9:4444"), "{answer}");
    // Straight from a client (curl bound to 127.0.0.1, trusted, but with no header): refused.
    let refused = raw_exchange(gw.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(refused, "");
    // Without a header of its own, the client Sluice saw is what nginx hears.
    let direct = format!(
        "{}[upstreams.nginx]\ntargets = [\"127.0.0.1:{nginx_port}\"]\nproxy_protocol = \"v1\"\n",
        tcp_listener("tcp = { upstream = \"nginx\" }")
    );
    let gw2 = Gateway::start_as_is(&direct).await.unwrap();
    let (_, body) = curl(&["--interface", "127.0.0.7", &format!("http://{}/", gw2.addr)]).await;
    assert!(body.starts_with("127.0.0.7:"), "{body}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("reason=\"proxy_protocol_malformed\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_http_listener_takes_the_client_from_haproxy_and_refuses_others() {
    let up = Upstream::start("echo").await;
    let config = format!(
        "{}{ADMIN}[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\n",
        tcp_listener("proxy_protocol = { trusted = [\"127.0.0.1/32\"] }"),
        up.addr
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let haproxy_port = free_port();
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  log stderr format raw local0 warning\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend in\n  bind 127.0.0.1:{haproxy_port}\n  default_backend sluice\n\
             backend sluice\n  server s1 {} send-proxy-v2\n",
            gw.addr
        ),
    )
    .unwrap();
    let _haproxy = Process::spawn("haproxy", &["-f", &conf.to_string_lossy()]);
    wait_until_listening(haproxy_port).await;
    let url = format!("http://127.0.0.1:{haproxy_port}/");
    let (head, body) = curl(&["--interface", "127.0.0.7", &url]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echoed["headers"]["x-forwarded-for"][0], "127.0.0.7",
        "{echoed}"
    );
    // From an address it does not trust, a connection is closed unanswered.
    let direct = format!("http://{}/", gw.addr);
    let (head, _) = curl(&["--interface", "127.0.0.9", &direct]).await;
    assert_eq!(head, "");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("reason=\"proxy_protocol_untrusted\""),
        "{metrics}"
    );
}

/// Wait until the gateway's metrics hold `line` (10 s at most).
async fn wait_for_metric(gw: &Gateway, line: &str) {
    let started = Instant::now();
    while !gw.metrics().await.contains(line) {
        assert!(started.elapsed() < Duration::from_secs(10), "never {line}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write `request` on a fresh connection to `addr`, read until it closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn idle_and_maximum_duration_close_connections_as_configured() {
    let port = free_port();
    let _redis = redis(port).await;
    // Two listeners: each configured address is one socket, so not both on port 0.
    let (idle_port, max_port) = (free_port(), free_port());
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{idle_port}\"\ntcp = {{ upstream = \"redis\", idle_timeout = \"300ms\" }}\n\
         [[listeners]]\naddress = \"127.0.0.1:{max_port}\"\ntcp = {{ upstream = \"redis\", max_duration = \"600ms\" }}\n\
         {ADMIN}[upstreams.redis]\ntargets = [\"127.0.0.1:{port}\"]\n",
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let addrs = gw.control.local_addrs();
    async fn ping(stream: &mut TcpStream) -> String {
        stream.write_all(b"PING\r\n").await.unwrap();
        let mut answer = [0; 7];
        let n = stream.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }
    // Quiet both ways past the idle timeout: closed.
    let mut quiet = TcpStream::connect(addrs[0]).await.unwrap();
    assert_eq!(ping(&mut quiet).await, "+PONG\r\n");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut byte = [0; 1];
    assert_eq!(quiet.read(&mut byte).await.unwrap_or(0), 0);
    // Busy, but open past the maximum duration: closed too.
    let mut busy = TcpStream::connect(addrs[1]).await.unwrap();
    let started = Instant::now();
    let mut answers = 0;
    while started.elapsed() < Duration::from_secs(3) {
        if busy.write_all(b"PING\r\n").await.is_err() {
            break;
        }
        let mut answer = [0; 7];
        match tokio::time::timeout(Duration::from_secs(1), busy.read(&mut answer)).await {
            Ok(Ok(n)) if n > 0 => answers += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lasted = started.elapsed();
    assert!(answers >= 3, "{answers}");
    assert!(
        lasted >= Duration::from_millis(500) && lasted < Duration::from_secs(2),
        "{lasted:?}"
    );
    let metrics = gw.metrics().await;
    for ended in ["idle_timeout", "max_duration"] {
        assert!(
            metrics.contains(&format!("ended=\"{ended}\"")),
            "{ended}: {metrics}"
        );
    }
}

/// A UDP server answering each datagram with `<id>:<datagram>`.
async fn udp_echo(id: &'static str) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
            let reply = format!("{id}:{}", String::from_utf8_lossy(&buffer[..n]));
            let _ = socket.send_to(reply.as_bytes(), from).await;
        }
    });
    addr
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send `datagram` from `client` to `to`; the answer, if one comes within half a second.
async fn ask(client: &tokio::net::UdpSocket, to: SocketAddr, datagram: &str) -> Option<String> {
    client.send_to(datagram.as_bytes(), to).await.unwrap();
    let mut buffer = [0; 1500];
    let answer = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buffer)).await;
    Some(String::from_utf8_lossy(&buffer[..answer.ok()?.ok()?]).into_owned())
}

#[tokio::test]
async fn udp_sessions_keep_their_target_and_per_packet_balancing_spreads() {
    let (a, b) = (udp_echo("a").await, udp_echo("b").await);
    // The sessions' port serves TCP too, as DNS does (a TCP echo behind it).
    let sessions = free_port();
    let (per_packet, capped) = (free_udp_port(), free_udp_port());
    let tcp_echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_echo_addr = tcp_echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp_echo.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    let listener = |port: u16, udp: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\nudp = {{ upstream = \"echo\", {udp} }}\n"
        )
    };
    let config = format!(
        "{}[[listeners]]\naddress = \"127.0.0.1:{sessions}\"\ntcp = {{ upstream = \"tcp-echo\" }}\n{}{}{ADMIN}\
         [upstreams.echo]\ntargets = [\"{a}\", \"{b}\"]\nbalance = \"round-robin\"\n\
         [upstreams.tcp-echo]\ntargets = [\"{tcp_echo_addr}\"]\n",
        listener(sessions, "idle_timeout = \"300ms\""),
        listener(per_packet, "per_packet = true"),
        listener(capped, "max_sessions = 1"),
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let client = || async { tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap() };

    // Two clients: each keeps its target; round robin gave them one each.
    let (one, two) = (client().await, client().await);
    let mut seen = Vec::new();
    for socket in [&one, &two] {
        let answers: Vec<String> = futures_util::future::join_all(
            (0..3).map(|i| async move { ask(socket, at(sessions), &format!("m{i}")).await }),
        )
        .await
        .into_iter()
        .map(|a| a.expect("answered"))
        .collect();
        let target = &answers[0][..1];
        assert!(answers.iter().all(|a| a.starts_with(target)), "{answers:?}");
        seen.push(target.to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["a", "b"]);

    // TCP on the same port.
    let mut stream = TcpStream::connect(at(sessions)).await.unwrap();
    stream.write_all(b"over tcp").await.unwrap();
    let mut echoed = [0; 8];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"over tcp");

    // Per packet: one client's datagrams alternate between the targets.
    let three = client().await;
    let mut targets = Vec::new();
    for i in 0..4 {
        let answer = ask(&three, at(per_packet), &format!("p{i}"))
            .await
            .expect("answered");
        targets.push(answer[..1].to_owned());
    }
    assert!(
        targets.contains(&"a".into()) && targets.contains(&"b".into()),
        "{targets:?}"
    );

    // One session at most: a second client's datagrams are dropped.
    let (four, five) = (client().await, client().await);
    assert!(ask(&four, at(capped), "hi").await.is_some());
    assert_eq!(ask(&five, at(capped), "hi").await, None);

    // Quiet sessions are forgotten.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let metrics = gw.metrics().await;
    for line in [
        "sluice_udp_sessions_total{listener=\"127.0.0.1:",
        "ended=\"idle_timeout\"",
        "sluice_udp_dropped_total{",
        "reason=\"max_sessions\"",
        "direction=\"to_client\"",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn health_checks_that_send_and_expect_bytes() {
    let port = free_port();
    let _redis = redis(port).await;
    // Takes connections and says nothing: a connect alone would pass it.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            held.push(stream);
        }
    });
    let config = format!(
        "{}{ADMIN}[upstreams.redis]\ntargets = [\"127.0.0.1:{port}\", \"{mute_addr}\"]\n\
         health = {{ interval = \"100ms\", timeout = \"200ms\", send = \"PING\\r\\n\", receive = \"+PONG\", healthy_threshold = 1, unhealthy_threshold = 1 }}\n",
        tcp_listener("tcp = { upstream = \"redis\" }")
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let healthy = |addr: String, verdict: u8| {
        format!("sluice_upstream_healthy{{upstream=\"redis\",target=\"{addr}\"}} {verdict}")
    };
    wait_for_metric(&gw, &healthy(mute_addr.to_string(), 0)).await;
    wait_for_metric(&gw, &healthy(format!("127.0.0.1:{port}"), 1)).await;
    // Every connection now goes to the one that answers.
    for _ in 0..4 {
        assert_eq!(redis_cli(gw.addr.port(), &["PING"]).await, "PONG");
    }
}

#[tokio::test]
async fn tls_re_encrypted_to_targets() {
    // A CA of the test's own, and a TLS server with a certificate it signed.
    let pki = crate::protocols::Pki::new();
    let secure = Upstream::start_tls("secure", pki.acceptor(&[b"http/1.1"], false)).await;
    let config = format!(
        "{}[upstreams.secure]\ntargets = [\"localhost:{}\"]\ntls = {{ ca = {} }}\n",
        tcp_listener("tcp = { upstream = \"secure\" }"),
        secure.addr.port(),
        toml_str(&pki.path("ca.pem").to_string_lossy())
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    // Plain HTTP in; TLS, verified against the CA, to the target.
    let (head, _) = curl(&[&format!("http://{}/", gw.addr)]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-upstream: secure"), "{head}");
}

#[tokio::test]
async fn a_tcp_listener_holds_clients_to_its_connection_limits() {
    let port = free_port();
    let _redis = redis(port).await;
    let config = format!(
        "{}{ADMIN}[upstreams.redis]\ntargets = [\"127.0.0.1:{port}\"]\n",
        tcp_listener("max_connections_per_client = 1\ntcp = { upstream = \"redis\" }")
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first.write_all(b"PING\r\n").await.unwrap();
    let mut answer = [0; 7];
    first.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"+PONG\r\n");
    // A second from the same address is closed at once; the first goes on.
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    let _ = second.write_all(b"PING\r\n").await;
    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    first.write_all(b"PING\r\n").await.unwrap();
    first.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"+PONG\r\n");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("reason=\"max_connections_per_client\""),
        "{metrics}"
    );
}

/// The sample connection-policy plugin on a TLS-passthrough listener: it
/// routes tenants by the ClientHello's server name, denies an address
/// outside its allow list, caps a client's open connections, and a route
/// to an upstream that does not exist is its failure, not the client's.
#[tokio::test]
async fn a_connection_filter_denies_by_address_and_routes_by_sni() {
    let upstreams = ThreeTls::start().await;
    let config = format!(
        "{}{ADMIN}{}[plugins.policy]\npath = {}\n",
        tcp_listener(
            "[listeners.tcp]\nupstream = \"fallback\"\nread_hello = true\nhello_timeout = \"5s\"\n\
             [[listeners.tcp.filters]]\nplugin = \"policy\"\n\
             config = { allow = [\"127.0.0.1\"], max_per_client = 2, tenants = \
             { \"a.example\" = \"a\", \"*.b.example\" = \"b\", \"gone.example\" = \"nowhere\" } }"
        ),
        upstreams.config(),
        toml_str(&sluice_tests::plugin("connection-policy")),
    );
    let gw = Gateway::start_as_is(&config).await.unwrap();
    let port = gw.addr.port();
    let fetch = |name: &'static str, from: &'static str| async move {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/");
        curl(&["-k", "--interface", from, "--resolve", &resolve, &url]).await
    };
    for (name, expected) in [
        ("a.example", "a"),
        ("API.b.example", "b"),
        ("c.example", "default"),
    ] {
        let (head, _) = fetch(name, "127.0.0.1").await;
        assert!(
            head.contains(&format!("x-upstream: {expected}")),
            "{name}: {head}"
        );
    }
    // Another address: closed before a byte reaches any target.
    let (head, _) = fetch("a.example", "127.0.0.7").await;
    assert!(head.is_empty(), "{head}");
    assert_eq!(upstreams.a.hits(), 1);

    // Two connections held open (waiting to say hello): a third is one too many.
    let held = [
        TcpStream::connect(gw.addr).await.unwrap(),
        TcpStream::connect(gw.addr).await.unwrap(),
    ];
    let (head, _) = fetch("a.example", "127.0.0.1").await;
    assert!(head.is_empty(), "{head}");
    drop(held);
    let arrived = Instant::now();
    loop {
        let (head, _) = fetch("a.example", "127.0.0.1").await;
        if head.contains("x-upstream: a") {
            break;
        }
        assert!(arrived.elapsed() < Duration::from_secs(5), "{head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A tenant routed to an upstream the gateway lacks: the filter failed.
    let (head, _) = fetch("gone.example", "127.0.0.1").await;
    assert!(head.is_empty(), "{head}");
    let metrics = gw.metrics().await;
    for wanted in [
        "ended=\"denied\"",
        "ended=\"filter_failed\"",
        "reason=\"invalid_answer\"",
    ] {
        assert!(metrics.contains(wanted), "{wanted}: {metrics}");
    }
    let counted = |ended: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("sluice_tcp_connections_total{") && l.contains(ended))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
    };
    assert_eq!(counted("ended=\"denied\""), Some(2), "{metrics}");
}

/// A connection filter belongs on a TCP listener, and other kinds on routes:
/// each mistake is refused with its place in the file.
#[tokio::test]
async fn filters_of_the_wrong_kind_are_refused_where_they_stand() {
    // Never reached: each configuration is refused at load.
    let unused = free_port();
    let plugins = format!(
        "[plugins.policy]\npath = {}\n[plugins.noop]\npath = {}\n[upstreams.u]\ntargets = [\"127.0.0.1:{unused}\"]\n",
        toml_str(&sluice_tests::plugin("connection-policy")),
        toml_str(&sluice_tests::plugin("noop")),
    );
    let on_tcp =
        tcp_listener("[listeners.tcp]\nupstream = \"u\"\nfilters = [{ plugin = \"noop\" }]");
    let on_route = tcp_listener("")
        + "[[routes]]\nmatch = { path_prefix = \"/\" }\nupstream = \"u\"\n\
           filters = [{ plugin = \"policy\" }]\n";
    let bad_config = tcp_listener(
        "[listeners.tcp]\nupstream = \"u\"\nfilters = [{ plugin = \"policy\", config = { allow = [\"nope\"] } }]",
    );
    for (config, key, message) in [
        (
            on_tcp,
            "listeners[0].tcp.filters[0]",
            "a TCP listener takes `connection` filters",
        ),
        (
            on_route,
            "routes[0].filters[0]",
            "goes in a TCP listener's `filters`",
        ),
        (
            bad_config,
            "listeners[0].tcp.filters[0]",
            "`nope` is not a network",
        ),
    ] {
        let refused = Gateway::start_as_is(&format!("{config}{plugins}")).await;
        let text = format!("{:#}", refused.err().expect("refused"));
        assert!(text.contains(key) && text.contains(message), "{text}");
    }
}

/// A keep-alive HTTP/1.1 connection from `from` (a loopback address).
struct Client {
    stream: TcpStream,
    port: u16,
}

impl Client {
    async fn connect(from: &str, to: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(to).await.unwrap();
        let port = stream.local_addr().unwrap().port();
        Client { stream, port }
    }

    /// `GET path`: the body of its answer (which gives its length).
    async fn get(&mut self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            self.stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .split_once("content-length: ")
            .and_then(|(_, rest)| rest.split("\r\n").next()?.parse().ok())
            .unwrap_or_else(|| panic!("{head}"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    }
}

/// An HTTP route to an upstream that takes the PROXY protocol: each client
/// connection's requests go on connections whose header names that client
/// connection (the port nginx reports is the client's own), never another's;
/// health checks send a `LOCAL` header, which nginx takes.
#[tokio::test]
async fn http_routes_send_the_proxy_protocol_per_client_connection() {
    let dir = tempfile::tempdir().unwrap();
    let nginx_port = free_port();
    let _nginx = nginx_reporting_the_client(dir.path(), nginx_port);
    wait_until_listening(nginx_port).await;
    for version in ["v1", "v2"] {
        let config = format!(
            "{}{ADMIN}[upstreams.nginx]\ntargets = [\"127.0.0.1:{nginx_port}\"]\nproxy_protocol = \"{version}\"\n\
             health = {{ path = \"/\", interval = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}\n\
             [[routes]]\nupstream = \"nginx\"\n",
            tcp_listener("")
        );
        let gw = Gateway::start_as_is(&config).await.unwrap();
        // Checked a few times over: a refused `LOCAL` header would eject it.
        tokio::time::sleep(Duration::from_millis(350)).await;
        wait_for_metric(
            &gw,
            &format!(
                "sluice_upstream_healthy{{upstream=\"nginx\",target=\"127.0.0.1:{nginx_port}\"}} 1"
            ),
        )
        .await;
        let mut a = Client::connect("127.0.0.7", gw.addr).await;
        let mut b = Client::connect("127.0.0.8", gw.addr).await;
        for _ in 0..3 {
            assert_eq!(
                a.get("/").await,
                format!("127.0.0.7:{}", a.port),
                "{version}"
            );
            assert_eq!(
                b.get("/").await,
                format!("127.0.0.8:{}", b.port),
                "{version}"
            );
        }
        // Another connection from the same address is another client connection.
        let mut again = Client::connect("127.0.0.7", gw.addr).await;
        assert_eq!(again.get("/").await, format!("127.0.0.7:{}", again.port));
        assert_eq!(a.get("/").await, format!("127.0.0.7:{}", a.port));
    }
}

/// To a TLS target, the PROXY header is the TCP connection's: it goes
/// before the handshake (nginx's `listen ssl proxy_protocol`), from TCP
/// listeners and HTTP routes alike.
#[tokio::test]
async fn the_proxy_header_goes_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::protocols::Pki::new();
    let nginx_port = free_port();
    let _nginx = nginx_reporting_over(
        dir.path(),
        nginx_port,
        Some(pki.issue("localhost", "nginx")),
    );
    wait_until_listening(nginx_port).await;
    let upstream = format!(
        "[upstreams.nginx]\ntargets = [\"localhost:{nginx_port}\"]\nproxy_protocol = \"v2\"\ntls = {{ ca = {} }}\n",
        toml_str(&pki.path("ca.pem").to_string_lossy())
    );
    let tcp = format!(
        "{}{upstream}",
        tcp_listener("tcp = { upstream = \"nginx\" }")
    );
    let gw = Gateway::start_as_is(&tcp).await.unwrap();
    let (_, body) = curl(&["--interface", "127.0.0.7", &format!("http://{}/", gw.addr)]).await;
    assert!(body.starts_with("127.0.0.7:"), "{body}");

    let http = format!(
        "{}{upstream}[[routes]]\nupstream = \"nginx\"\n",
        tcp_listener("")
    );
    let gw = Gateway::start_as_is(&http).await.unwrap();
    let mut client = Client::connect("127.0.0.7", gw.addr).await;
    assert_eq!(client.get("/").await, format!("127.0.0.7:{}", client.port));
}
