//! The `sluice` binary: `check` validates a configuration and says exactly where it is wrong.

use std::path::Path;
use std::process::{Command, Output};

fn check(dir: &Path, toml: &str) -> Output {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(
        dir.path(),
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"a\"\n",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("OK (1 routes, 0 plugins, 1 upstreams)")
    );
}

#[test]
fn check_rejects_bad_configs_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // An unknown key, on line 5.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[upstreams.a]\ntargetz = [\"127.0.0.1:9\"]\n",
            "gateway.toml:5:",
            "unknown field `targetz`",
        ),
        // A route pointing at an upstream that does not exist, on line 7.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n\n[[routes]]\nupstream = \"b\"\n",
            "gateway.toml:7: routes[0].upstream",
            "unknown upstream `b`",
        ),
        // A malformed value, on line 2.
        (
            "[[listeners]]\naddress = \"not an address\"\n",
            "gateway.toml:2:",
            "invalid socket address",
        ),
        // A plugin that is not there, on line 4.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[plugins.auth]\npath = \"missing.wasm\"\n",
            "gateway.toml:4: plugins.auth.path",
            "plugin `auth`",
        ),
        // No listeners: `run` would have nothing to serve on.
        (
            "[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n",
            "gateway.toml:1: no [[listeners]]",
            "",
        ),
        // A certificate file that is not there, on line 3.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = { cert = \"nope.pem\", key = \"nope.key\" }\n",
            "gateway.toml:3: listeners[0].tls",
            "nope.pem",
        ),
        // A route that can never be used, on line 8.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n\
             [[routes]]\nmatch = { path_prefix = \"/api\", methods = [\"get\", \"POST\"] }\nupstream = \"a\"\n\
             [[routes]]\nupstream = \"a\"\nmatch = { methods = [\"POST\", \"GET\"], path_prefix = \"/api/\" }\n",
            "gateway.toml:9: routes[1].match",
            "matches exactly what route `route-0` before it does",
        ),
        // A route path that no normalised request path can equal, on line 6.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n\
             [[routes]]\nupstream = \"a\"\nmatch = { path_prefix = \"/api//v1\" }\n",
            "gateway.toml:6: routes[0].match",
            "write `/api/v1`",
        ),
        // An admin API without a token, on line 4.
        (
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
            "gateway.toml:4: admin",
            "set `token` or `token_file`",
        ),
    ];
    for (toml, location, message) in cases {
        let output = check(dir.path(), toml);
        let err = stderr(&output);
        assert!(!output.status.success(), "accepted:\n{toml}");
        assert!(err.contains(location), "expected `{location}` in: {err}");
        assert!(err.contains(message), "expected `{message}` in: {err}");
    }
}

/// The status code of `GET /` on `port`, or `None` if nothing answers.
fn status_of(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

#[test]
fn run_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[reload]\nwatch = false\n[upstreams.dead]\ntargets = [\"127.0.0.1:1\"]\n"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, format!("{base}[[routes]]\nupstream = \"dead\"\n")).unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |want: u16| {
        for _ in 0..500 {
            if status_of(port) == Some(want) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("never answered {want}");
    };
    // The only route goes to a dead upstream: 502.
    wait_for(502);

    // Without the route, after SIGHUP: 404.
    std::fs::write(&path, &base).unwrap();
    assert_eq!(status_of(port), Some(502), "no reload before the signal");
    let pid = gateway.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(404);

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(gateway.wait().unwrap().success());
}

#[test]
fn check_names_both_digests_and_warns_of_a_grant_nothing_uses() {
    let dir = tempfile::tempdir().unwrap();
    let noop = sluice_tests::plugin("noop");
    let output = check(
        dir.path(),
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[plugins.noop]\npath = {}\ngrants = [\"kv\"]\n[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nupstream = \"a\"\nfilters = [{{ plugin = \"noop\" }}]\n",
            sluice_tests::toml_str(&noop)
        ),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let digest = sluice_control::versions::sha256(&std::fs::read(&noop).unwrap());
    assert!(
        stdout.contains(&format!("component sha256 (for `sha256 =`): {digest}")),
        "{stdout}"
    );
    assert!(
        stderr(&output).contains("is granted `kv` but imports nothing that uses it"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_lists_the_http_routes_a_transcoder_offers_and_names_bad_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/proto");
    let config = |transcode: &str, protocol: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.library]\ntargets = [\"127.0.0.1:9\"]\n\
             protocol = \"{protocol}\"\n[[routes]]\nname = \"rest\"\nupstream = \"library\"\n\
             [routes.transcode]\ninclude = [{:?}]\n{transcode}\n",
            protos.display()
        )
    };
    let output = check(
        dir.path(),
        &config("protos = [\"library/v1/library.proto\"]", "h2"),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = String::from_utf8_lossy(&output.stdout);
    for line in [
        "route `rest` transcodes JSON to gRPC:",
        "  GET /v1/shelves/{shelf}/books/{id} -> library.v1.Library/GetBook",
        "  GET /v1/books/{id} -> library.v1.Library/GetBook",
        "  POST /v1/shelves/{shelf}/books -> library.v1.Library/CreateBook",
        "  GET /v1/shelves/{shelf}/books -> library.v1.Library/ListBooks (server streaming)",
        "  POST /v1/shelves:count -> library.v1.Library/CountBooks",
        "  POST /library.v1.Library/CountBooks -> library.v1.Library/CountBooks",
    ] {
        assert!(listed.contains(line), "`{line}` not in:\n{listed}");
    }

    std::fs::write(
        dir.path().join("broken.proto"),
        "syntax = \"proto3\";\nimport \"missing.proto\";\n",
    )
    .unwrap();
    let cases = [
        (
            config("protos = [\"library/v1/library.proto\"]", "http1"),
            "gateway.toml:8: routes[0].upstream",
            "gRPC needs `protocol = \"h2\"`",
        ),
        (
            config("protos = [\"nowhere.proto\"]", "h2"),
            "gateway.toml:9: routes[0].transcode",
            "nowhere.proto",
        ),
        (
            config(
                "protos = [\"library/v1/library.proto\"]\nservices = [\"library.v1.Shop\"]",
                "h2",
            ),
            "routes[0].transcode",
            "no service `library.v1.Shop`",
        ),
        (
            format!(
                "{}\n[routes.transcode]\ninclude = [{:?}]\nprotos = [\"broken.proto\"]\n",
                config("protos = []", "h2")
                    .split("[routes.transcode]")
                    .next()
                    .unwrap(),
                dir.path().display()
            ),
            "broken.proto:2:",
            "missing.proto",
        ),
    ];
    for (toml, location, message) in cases {
        let output = check(dir.path(), &toml);
        let err = stderr(&output);
        assert!(!output.status.success(), "accepted:\n{toml}");
        assert!(err.contains(location), "expected `{location}` in: {err}");
        assert!(err.contains(message), "expected `{message}` in: {err}");
    }
}

#[test]
fn sigterm_lets_tcp_connections_go_on_until_their_drain_timeout() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // An echo server, the TCP listener's one target.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    let port = free();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\ntcp = {{ upstream = \"echo\", drain_timeout = \"1s\" }}\n\
             [upstreams.echo]\ntargets = [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut client = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("the gateway listens");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echoed = [0; 3];
    client.write_all(b"one").unwrap();
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"one");

    let pid = gateway.id().to_string();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Still served while it drains; new connections are not taken.
    std::thread::sleep(Duration::from_millis(200));
    client.write_all(b"two").unwrap();
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"two");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // Closed at the drain timeout, and the gateway exits.
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let closed = signalled.elapsed();
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
        "{closed:?}"
    );
    assert!(gateway.wait().unwrap().success());
}
