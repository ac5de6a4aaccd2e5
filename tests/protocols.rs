//! What goes to upstreams besides plain HTTP/1.1: TLS (own CA, SNI, a
//! wrong certificate refused, client certificates), HTTP/2 (h2c and by
//! ALPN), gRPC with real grpcio on both ends, WebSocket with the real
//! websockets library on both ends, and compressed responses decoded by curl.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_tests::{Gateway, Python, Upstream, curl, get};

/// A certificate authority and what it signed, written as PEM files.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            issuer,
        };
        std::fs::write(pki.path("ca.pem"), pki.issuer.pem()).unwrap();
        pki
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for `name`, as `<file>.pem` and `<file>.key`.
    pub(crate) fn issue(&self, name: &str, file: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A TLS server with a certificate for `localhost`, offering `alpn`,
    /// asking clients for a certificate from this CA if `client_auth`.
    pub(crate) fn acceptor(&self, alpn: &[&[u8]], client_auth: bool) -> tokio_rustls::TlsAcceptor {
        let (cert, key) = self.issue("localhost", "server");
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_auth {
            true => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(self.issuer.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            false => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

async fn gateway(upstream: &str) -> Gateway {
    Gateway::start(&format!(
        "[upstreams.u]\n{upstream}\n[[routes]]\nupstream = \"u\"\n"
    ))
    .await
    .expect("gateway starts")
}

fn toml_path(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn tls_to_an_upstream_with_its_own_ca() {
    let pki = Pki::new();
    let up = Upstream::start_tls("tls", pki.acceptor(&[b"http/1.1"], false)).await;
    let ca = toml_path(&pki.path("ca.pem"));
    let gw = gateway(&format!(
        "targets = [\"localhost:{}\"]\ntls = {{ ca = \"{ca}\" }}",
        up.addr.port()
    ))
    .await;
    let reply = get(&gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["upstream"], "tls");

    // Another CA's certificate is refused; so is a name it was not issued for.
    let other = Pki::new();
    let stranger = Upstream::start_tls("stranger", other.acceptor(&[b"http/1.1"], false)).await;
    let gw = gateway(&format!(
        "targets = [\"localhost:{}\"]\ntls = {{ ca = \"{ca}\" }}",
        stranger.addr.port()
    ))
    .await;
    let refused = get(&gw.url("/x"), &[]).await;
    assert_eq!(refused.status, 502);
    assert_eq!(stranger.hits(), 0);
    let gw = gateway(&format!(
        "targets = [\"localhost:{}\"]\ntls = {{ ca = \"{ca}\", server_name = \"elsewhere.test\" }}",
        up.addr.port()
    ))
    .await;
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 502);
}

#[tokio::test]
async fn mutual_tls_to_an_upstream() {
    let pki = Pki::new();
    let up = Upstream::start_tls("mtls", pki.acceptor(&[b"http/1.1"], true)).await;
    let ca = toml_path(&pki.path("ca.pem"));
    let (cert, key) = pki.issue("gateway", "client");
    let (cert, key) = (toml_path(&cert), toml_path(&key));
    let without = gateway(&format!(
        "targets = [\"localhost:{}\"]\ntls = {{ ca = \"{ca}\" }}",
        up.addr.port()
    ))
    .await;
    assert_eq!(get(&without.url("/"), &[]).await.status, 502);
    let with = gateway(&format!(
        "targets = [\"localhost:{}\"]\ntls = {{ ca = \"{ca}\", cert = \"{cert}\", key = \"{key}\" }}",
        up.addr.port()
    ))
    .await;
    assert_eq!(get(&with.url("/"), &[]).await.status, 200);
}

#[tokio::test]
async fn http2_to_upstreams_by_prior_knowledge_and_by_alpn() {
    let up = Upstream::start("h2c").await;
    let gw = gateway(&format!("targets = [\"{}\"]\nprotocol = \"h2\"", up.addr)).await;
    for _ in 0..5 {
        let reply = get(&gw.url("/p?q=1"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["version"], "HTTP/2.0");
        assert_eq!(reply.json()["uri"], format!("http://{}/p?q=1", gw.addr));
    }
    assert_eq!(
        up.connections(),
        1,
        "one HTTP/2 connection carries them all"
    );

    let pki = Pki::new();
    let tls = Upstream::start_tls("h2", pki.acceptor(&[b"h2", b"http/1.1"], false)).await;
    let ca = toml_path(&pki.path("ca.pem"));
    let gw = gateway(&format!(
        "targets = [\"localhost:{}\"]\nprotocol = \"auto\"\ntls = {{ ca = \"{ca}\" }}",
        tls.addr.port()
    ))
    .await;
    assert_eq!(get(&gw.url("/"), &[]).await.json()["version"], "HTTP/2.0");
}

#[tokio::test]
async fn grpc_passes_through_with_trailers() {
    let (_server, port) = Python::serve("grpc_echo.py");
    let gw = gateway(&format!(
        "targets = [\"127.0.0.1:{port}\"]\nprotocol = \"h2\""
    ))
    .await;
    let printed = Python::client("grpc_echo.py", "call", gw.addr.to_string()).await;
    assert_eq!(printed, "echo:hello kept\nNOT_FOUND no such thing\n");
}

#[tokio::test]
async fn grpc_trailers_survive_filters_that_read_bodies() {
    let (_server, port) = Python::serve("grpc_echo.py");
    let upstream = format!("[upstreams.u]\ntargets = [\"127.0.0.1:{port}\"]\nprotocol = \"h2\"\n");
    // A proxy-wasm filter reads the response's trailers and adds one; a
    // component that buffers bodies passes them on.
    let proxy_wasm = format!(
        "{upstream}[plugins.pw]\npath = \"{}\"\n[[routes]]\nupstream = \"u\"\n\
         filters = [{{ plugin = \"pw\", body = true, config = {{ header = \"x-a\", value = \"1\", trailers = true }} }}]\n",
        sluice_tests::proxy_wasm_plugin("pw-headers")
    );
    let component = format!(
        "{upstream}[plugins.t]\npath = \"{}\"\n[[routes]]\nupstream = \"u\"\n\
         filters = [{{ plugin = \"t\", body = true, config = {{}} }}]\n",
        sluice_tests::plugin("transform")
    );
    for (config, trailers) in [
        (proxy_wasm, "x-echo-trailer=kept x-pw-grpc-status=0"),
        (component, "x-echo-trailer=kept"),
    ] {
        let gw = Gateway::start(&config).await.expect("gateway starts");
        let printed = Python::client("grpc_echo.py", "trailers", gw.addr.to_string()).await;
        assert_eq!(printed, format!("echo:hello {trailers}\n"));
    }
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let (_server, port) = Python::serve("ws_echo.py");
    let gw = gateway(&format!("targets = [\"127.0.0.1:{port}\"]")).await;
    let printed = Python::client("ws_echo.py", "talk", gw.addr.to_string()).await;
    assert_eq!(printed, "echo:one\necho:two\n");
}

#[tokio::test]
async fn compressed_responses_decoded_by_curl() {
    let text = "sluice ".repeat(1000);
    let body = text.clone();
    let up = Upstream::start_with("c", move |head| match head.uri.path() {
        "/small" => (
            200,
            vec![("content-type", "text/plain".into())],
            "tiny".into(),
        ),
        "/png" => (
            200,
            vec![("content-type", "image/png".into())],
            body.clone(),
        ),
        "/encoded" => (
            200,
            vec![
                ("content-type", "text/plain".into()),
                ("content-encoding", "identity".into()),
            ],
            body.clone(),
        ),
        _ => (
            200,
            vec![
                ("content-type", "text/plain; charset=utf-8".into()),
                ("etag", "\"v1\"".into()),
            ],
            body.clone(),
        ),
    })
    .await;
    let gw = Gateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"u\"\ncompression = {{}}\n",
        up.addr
    ))
    .await
    .unwrap();
    let url = gw.url("/text");
    for encoding in ["br", "zstd", "gzip"] {
        let (head, decoded) = curl(&[
            "--compressed",
            "-H",
            &format!("accept-encoding: {encoding}"),
            &url,
        ])
        .await;
        assert!(
            head.contains(&format!("content-encoding: {encoding}")),
            "{head}"
        );
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(head.contains("etag: w/\"v1\""), "{head}");
        assert_eq!(decoded, text);
    }
    // curl's own list: the gateway's preference among what it accepts.
    let (head, decoded) = curl(&["--compressed", &url]).await;
    assert!(head.contains("content-encoding: br"), "{head}");
    assert_eq!(decoded, text);
    // Not asked for, refused by q=0, too small, not text, or already encoded: as is.
    for (path, accept) in [
        ("/text", "identity"),
        ("/text", "gzip;q=0"),
        ("/small", "gzip"),
        ("/png", "gzip"),
        ("/encoded", "gzip"),
    ] {
        let (head, _) = curl(&["-H", &format!("accept-encoding: {accept}"), &gw.url(path)]).await;
        assert!(
            !head.contains("content-encoding: gzip"),
            "{path} {accept}: {head}"
        );
    }
}
