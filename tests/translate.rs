//! Protocol translation in front of a real gRPC service (grpcio; its code
//! generated from `tests/fixtures/proto`, whose files import each other and
//! `google/api/annotations.proto`): curl's JSON/REST calls through the
//! transcoder, gRPC-Web calls written against the spec over HTTP/1.1 and
//! HTTP/2, filters reading the JSON both ways, definitions that reload, a
//! descriptor set from protoc, and an upstream that is not gRPC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_tests::{Gateway, Python, Upstream, curl, plugin, toml_str};

fn protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/proto")
}

/// A gateway whose one route transcodes to the library at `port`: `top`
/// goes before its tables, `route` in the route and `transcode` in its
/// `[routes.transcode]`.
async fn transcoding(
    port: u16,
    include: &Path,
    top: &str,
    route: &str,
    transcode: &str,
) -> Gateway {
    let config = format!(
        "{top}\n[upstreams.library]\ntargets = [\"127.0.0.1:{port}\"]\nprotocol = \"h2\"\n\
         [[routes]]\nname = \"rest\"\nupstream = \"library\"\n{route}\n\
         [routes.transcode]\nprotos = [\"library/v1/library.proto\"]\ninclude = [{}]\n{transcode}\n",
        toml_str(&include.to_string_lossy())
    );
    Gateway::start(&config).await.expect("gateway starts")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn json_calls_reach_grpc_through_the_transcoder() {
    let (_server, port) = Python::serve("grpc_library.py");
    let gw = transcoding(port, &protos(), "", "", "").await;
    let url = |path: &str| gw.url(path);

    // Path variables, typed by the message (id is an int64: a string in proto3 JSON).
    let (head, body) = curl(&["-H", "x-user: alice", &url("/v1/shelves/s%201/books/7")]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains("x-served-by: library"),
        "trailers as headers: {head}"
    );
    assert_eq!(
        json(&body),
        serde_json::json!({"shelf": "s 1", "id": "7", "title": "Book 7", "tags": ["a", "b"],
                           "genre": "FICTION", "askedBy": "alice"})
    );
    // An additional binding; HTTP/2 from the client alike.
    let (head, body) = curl(&["--http2-prior-knowledge", &url("/v1/books/8")]).await;
    assert!(head.starts_with("http/2 200"), "{head}");
    assert_eq!(json(&body)["title"], "Book 8");

    // A body into one field, a query parameter into another.
    let (head, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"title": "Dune", "tags": ["sf"], "genre": "SCIENCE"}"#,
        &url("/v1/shelves/s2/books?dry_run=true"),
    ])
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"shelf": "s2", "id": "42", "title": "Dune (dry run)", "tags": ["sf"],
                           "genre": "SCIENCE"})
    );
    // `body: "*"` and `response_body`; a repeated field.
    let (_, body) = curl(&[
        "-d",
        r#"{"shelves": ["a", "b", "c"]}"#,
        &url("/v1/shelves:count"),
    ])
    .await;
    assert_eq!(json(&body), "30");
    // Every method also at POST /package.Service/Method.
    let (_, body) = curl(&[
        "-d",
        r#"{"shelf": "x", "id": 3}"#,
        &url("/library.v1.Library/GetBook"),
    ])
    .await;
    assert_eq!(json(&body)["title"], "Book 3");

    // A gRPC failure: its HTTP status, its message as JSON.
    let (head, body) = curl(&[&url("/v1/shelves/s1/books/404")]).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert_eq!(
        json(&body),
        serde_json::json!({"code": 5, "message": "no book 404 on shelf s1"})
    );
    // What cannot be translated is the client's fault, said in the same shape.
    for (args, status, code) in [
        (
            vec![url("/v1/shelves/s1/books/7?colour=red")],
            "400",
            "invalid_argument",
        ),
        (
            vec![url("/v1/shelves/s1/books/seven")],
            "400",
            "invalid_argument",
        ),
        (
            vec!["-d".into(), "{not json".into(), url("/v1/shelves:count")],
            "400",
            "invalid_argument",
        ),
        (
            vec!["-X".into(), "DELETE".into(), url("/v1/books/1")],
            "405",
            "method_not_allowed",
        ),
        (vec![url("/v2/anything")], "404", "no_method"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (head, body) = curl(&args).await;
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{args:?}: {head}{body}"
        );
        assert!(head.contains(&format!("x-sluice-error: {code}")), "{head}");
        assert!(json(&body)["message"].is_string(), "{body}");
    }

    // Server streaming as newline-delimited JSON, a failure as its last line.
    let (head, body) = curl(&[&url("/v1/shelves/s3/books?limit=3")]).await;
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    let titles: Vec<String> = body.lines().map(|l| json(l)["title"].to_string()).collect();
    assert_eq!(titles, ["\"Book 1\"", "\"Book 2\"", "\"Book 3\""]);
    let (_, body) = curl(&[&url("/v1/shelves/s3/books?limit=2&fail_after=true")]).await;
    let lines: Vec<serde_json::Value> = body.lines().map(json).collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(
        lines[2],
        serde_json::json!({"error": {"code": 8, "message": "shelf closed"}})
    );
}

#[tokio::test]
async fn streams_as_server_sent_events_and_unknown_query_ignored() {
    let (_server, port) = Python::serve("grpc_library.py");
    let gw = transcoding(
        port,
        &protos(),
        "",
        "",
        "stream = \"sse\"\nunknown_query = \"ignore\"",
    )
    .await;
    let (head, body) = curl(&[&gw.url("/v1/shelves/s/books?limit=2&fail_after=true&x=1")]).await;
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert_eq!(
        body,
        "data: {\"shelf\":\"s\",\"id\":\"1\",\"title\":\"Book 1\"}\n\n\
         data: {\"shelf\":\"s\",\"id\":\"2\",\"title\":\"Book 2\"}\n\n\
         event: error\ndata: {\"code\":8,\"message\":\"shelf closed\"}\n\n"
    );
}

#[tokio::test]
async fn filters_see_json_on_both_sides() {
    let (_server, port) = Python::serve("grpc_library.py");
    // The transform plugin edits the JSON request and the JSON answer by pointer.
    let top = format!(
        "[plugins.transform]\npath = {}\n",
        toml_str(&plugin("transform"))
    );
    let route = r#"filters = [{ plugin = "transform", body = true, config = { request_json = { set = { "/title" = "Edited" } }, response_json = { set = { "/checked" = true }, remove = ["/tags"] } } }]"#;
    let gw = transcoding(port, &protos(), &top, route, "").await;
    let (head, body) = curl(&[
        "-d",
        r#"{"title": "Original", "tags": ["x"]}"#,
        &gw.url("/v1/shelves/s/books"),
    ])
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"shelf": "s", "id": "42", "title": "Edited", "checked": true})
    );
}

#[tokio::test]
async fn grpc_web_calls_over_http1_and_http2_with_grpc_alongside() {
    let (_server, port) = Python::serve("grpc_library.py");
    let gw = Gateway::start(&format!(
        "[upstreams.library]\ntargets = [\"127.0.0.1:{port}\"]\nprotocol = \"h2\"\n\
         [[routes]]\nupstream = \"library\"\ngrpc_web = true\n"
    ))
    .await
    .expect("gateway starts");
    let printed = Python::client("grpc_library.py", "web", gw.url("")).await;
    let get = "get [('Book 7', 'web')] 0 library\n";
    assert_eq!(
        printed,
        format!(
            "{get}{get}{get}{get}list ['Book 1', 'Book 2', 'Book 3'] 0\n\
             list ['Book 1', 'Book 2'] 8 shelf closed\n"
        )
    );
    // Native gRPC on the same route passes as it is.
    let printed = Python::client("grpc_library.py", "grpc", gw.addr.to_string()).await;
    assert_eq!(printed, "grpc Book 9 grpc\n");
}

#[tokio::test]
async fn definitions_reload_when_their_files_change() {
    let (_server, port) = Python::serve("grpc_library.py");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("library/v1");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["library.proto", "book.proto"] {
        std::fs::copy(protos().join("library/v1").join(file), copy.join(file)).unwrap();
    }
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n";
    let gw = transcoding(port, dir.path(), admin, "", "").await;
    let (head, _) = curl(&[&gw.url("/v2/books/5")]).await;
    assert!(head.starts_with("http/1.1 404"), "{head}");

    let library = copy.join("library.proto");
    let text = std::fs::read_to_string(&library).unwrap().replace(
        "additional_bindings { get: \"/v1/books/{id}\" }",
        "additional_bindings { get: \"/v1/books/{id}\" }\n      additional_bindings { get: \"/v2/books/{id}\" }",
    );
    std::fs::write(&library, text).unwrap();
    let mut answered = String::new();
    for _ in 0..100 {
        let (head, body) = curl(&[&gw.url("/v2/books/5")]).await;
        if head.starts_with("http/1.1 200") {
            answered = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(json(&answered)["title"], "Book 5");

    // A broken definition is refused with its place; the last good one serves on.
    std::fs::write(&library, "syntax = \"proto3\";\nmessage {").unwrap();
    let reply = gw.admin("POST", "/reload", "").await;
    let said = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 422, "{said}");
    assert!(said.contains("library/v1/library.proto:2:"), "{said}");
    let (head, _) = curl(&[&gw.url("/v2/books/5")]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn an_upstream_answering_without_grpc_is_a_counted_502() {
    // An HTTP/2 server, but not a gRPC one: its JSON echo is not an answer.
    let plain = Upstream::start("plain").await;
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-admin-token\"\n";
    let gw = transcoding(plain.addr.port(), &protos(), admin, "", "").await;
    let (head, body) = curl(&[&gw.url("/v1/books/1")]).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-sluice-error: upstream_not_grpc"), "{head}");
    assert_eq!(json(&body)["code"], 13);
    // A refusal is counted as one, by its reason.
    let (head, _) = curl(&[&gw.url("/v1/books/1?nope=1")]).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let metrics = gw.metrics().await;
    for line in [
        r#"sluice_translation_failures_total{reason="upstream_not_grpc"} 1"#,
        r#"sluice_requests_refused_total{reason="invalid_argument"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_compiled_descriptor_set_serves_as_the_protos_do() {
    let (_server, port) = Python::serve("grpc_library.py");
    // protoc's own output (grpcio-tools), imports included, as a build would publish it.
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("library.pb");
    let google_api = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/proxy/src/translate");
    let made = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "--include_imports"])
        .arg(format!("-I{}", protos().display()))
        .arg(format!("-I{}", google_api.display()))
        .arg(format!("--descriptor_set_out={}", set.display()))
        .arg("library/v1/library.proto")
        .output()
        .expect("python3 runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = format!(
        "[upstreams.library]\ntargets = [\"127.0.0.1:{port}\"]\nprotocol = \"h2\"\n\
         [[routes]]\nupstream = \"library\"\ntranscode = {{ descriptor = {}, services = [\"library.v1.Library\"] }}\n",
        toml_str(&set.to_string_lossy())
    );
    let gw = Gateway::start(&config).await.expect("gateway starts");
    let (head, body) = curl(&[&gw.url("/v1/shelves/a/books/2")]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    assert_eq!(json(&body)["title"], "Book 2");
}
