//! Plugins from an OCI registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free port, plugins pushed to it with
//! `sluice plugin push` after Debian's `minisign` signed them, and a
//! gateway under `[trust]` loading them by pinned reference, refusing the
//! unsigned, picking up a new pin on reload and starting from its cache
//! when the registry is gone; and a registry that asks for credentials,
//! answered with a token from its token service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sluice_tests::{Gateway, Upstream, free_port, get, plugin};

/// A registry on a free loopback port, storing in a folder of its own.
struct Registry {
    child: Child,
    address: String,
}

impl Registry {
    /// Start one storing in `dir`, with `auth` (YAML, indented) as its `auth:` section.
    async fn start(dir: &Path, auth: &str) -> Registry {
        // A port found free may be taken before the registry binds it: then
        // it exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("registry.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:{port}\n{auth}",
                    dir.join("storage").display()
                ),
            )
            .unwrap();
            // Killed and waited for when the `Registry` drops.
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Debian's docker-registry is installed (.ci/run installs it)");
            let mut registry = Registry {
                child,
                address: format!("127.0.0.1:{port}"),
            };
            for _ in 0..250 {
                if registry.child.try_wait().unwrap().is_some() {
                    break;
                }
                if registry.answers().await {
                    return registry;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        panic!("docker-registry did not start");
    }

    /// Whether what listens on its address is a registry.
    async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(&self.address).await else {
            return false;
        };
        let mut said = Vec::new();
        let asked = stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").await.is_ok();
        asked
            && stream.read_to_end(&mut said).await.is_ok()
            && String::from_utf8_lossy(&said)
                .to_ascii_lowercase()
                .contains("docker-distribution-api-version")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Copy `plugin_name`'s component to `file` in `dir`, signed by the trusted key or not.
fn place(dir: &Path, plugin_name: &str, file: &str, signed: bool) -> PathBuf {
    let path = dir.join(file);
    std::fs::copy(plugin(plugin_name), &path).unwrap();
    if signed {
        run(dir, "minisign", &["-S", "-s", "trusted.sec", "-m", file]);
    }
    path
}

/// `sluice plugin push FILE REFERENCE`: the pinned reference it prints.
fn push(dir: &Path, file: &str, reference: &str) -> String {
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let out = run(dir, sluice, &["plugin", "push", file, reference]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let pinned = said
        .split_whitespace()
        .find(|word| word.starts_with("oci://") && word.contains("@sha256:"))
        .unwrap_or_else(|| panic!("no pinned reference in: {said}"));
    pinned.to_owned()
}

/// `sluice check` on `toml` (with a listener), which must pass: what it logged.
fn checked(dir: &Path, toml: &str) -> String {
    let file = dir.join("checked.toml");
    std::fs::write(
        &file,
        format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n{toml}"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    said
}

fn config(dir: &Path, reference: &str, up: &Upstream) -> String {
    config_with(
        dir,
        reference,
        up,
        &format!(
            "[trust]\nkeys = [\"{}\"]",
            dir.join("trusted.pub").display()
        ),
    )
}

fn config_with(dir: &Path, reference: &str, up: &Upstream, extra: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

{extra}

[oci]
cache_dir = "{}"

[plugins.policy]
path = "{reference}"

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "policy", config = {{ label = "v" }} }}]
"#,
        dir.join("cache").display(),
        up.addr
    )
}

async fn reload(gw: &Gateway, toml: &str) -> sluice_tests::Reply {
    gw.write_config(toml);
    gw.admin("POST", "/reload", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_plugins_load_from_a_registry_by_pinned_reference() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    run(
        dir,
        "minisign",
        &["-G", "-W", "-p", "trusted.pub", "-s", "trusted.sec"],
    );
    let registry = Registry::start(dir, "").await;
    let repo = format!("oci://{}/plugins/stamp", registry.address);
    place(dir, "stamp-a", "a.wasm", true);
    place(dir, "stamp-b", "b.wasm", true);
    place(dir, "stamp-b", "unsigned.wasm", false);
    let a = push(dir, "a.wasm", &format!("{repo}:a"));
    let b = push(dir, "b.wasm", &format!("{repo}:b"));
    let unsigned = push(
        dir,
        "unsigned.wasm",
        &format!("oci://{}/plugins/unsigned:1", registry.address),
    );

    // What was pushed speaks OCI 1.1: the component's manifest names its
    // artifact type, and its signature's manifest names the component's
    // as its subject, so the referrers API (`oras discover`) finds it.
    let digest = a.rsplit_once('@').unwrap().1;
    let manifest = |tag: &str| {
        let url = format!(
            "http://{}/v2/plugins/stamp/manifests/{tag}",
            registry.address
        );
        async move {
            let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
            let reply = sluice_tests::send("GET", &url, &accept).await;
            assert_eq!(reply.status, 200, "{url}");
            reply.json()
        }
    };
    let component = manifest(digest).await;
    assert_eq!(
        component["artifactType"],
        "application/vnd.wasm.config.v0+json"
    );
    let signature = manifest(&format!("{}.minisig", digest.replace(':', "-"))).await;
    assert_eq!(signature["subject"]["digest"], digest, "{signature}");
    assert_eq!(
        signature["artifactType"],
        "application/vnd.sluice.minisig.config.v1+json"
    );

    let up = Upstream::start("a").await;
    // `sha256 =` takes either digest: the manifest's (as `oci://…@sha256:`
    // shows it) or the component's; one of neither is refused.
    let component = sluice_control::versions::sha256(&std::fs::read(dir.join("a.wasm")).unwrap());
    let pinned_by = |pin: &str| {
        let path = format!("path = \"{repo}:a\"");
        config(dir, &format!("{repo}:a"), &up)
            .replace(&path, &format!("{path}\nsha256 = \"{pin}\""))
    };
    for pin in [digest, digest.trim_start_matches("sha256:"), &component] {
        let gw = Gateway::start(&pinned_by(pin)).await;
        assert!(gw.is_ok(), "{pin}: {:?}", gw.err());
    }
    let wrong = Gateway::start(&pinned_by(&"0".repeat(64)))
        .await
        .err()
        .unwrap();
    assert!(wrong.to_string().contains("pins"), "{wrong}");

    // A tag alone loads, but the log says it is not pinned, and how to pin it.
    let said = checked(dir, &config(dir, &format!("{repo}:a"), &up));
    assert!(
        said.contains("is not pinned") && said.contains(&a),
        "{said}"
    );
    // Pinned, it loads what it pinned; if the tag has moved since, it says so.
    let moved = push(dir, "b.wasm", &format!("{repo}:a"));
    let now = moved.rsplit_once('@').unwrap().1;
    let said = checked(dir, &config(dir, &a, &up));
    assert!(
        said.contains(&format!("the tag has moved to {now}")),
        "{said}"
    );

    let gw = Gateway::start(&config(dir, &a, &up)).await.unwrap();
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");
    let plugins = gw.admin("GET", "/plugins", "").await.json();
    assert_eq!(
        plugins["plugins"][0]["origin"]["registry"].as_str(),
        Some(a.as_str()),
        "{plugins}"
    );

    // A reload picks up a new pinned digest.
    let reloaded = reload(&gw, &config(dir, &b, &up)).await;
    assert_eq!(
        reloaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&reloaded.body)
    );
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-b:v");

    // Refused, naming the plugin, while b keeps serving: not signed; a
    // digest the registry does not have; a repository it does not have.
    let missing = format!("{repo}:b@sha256:{}", "0".repeat(64));
    for (reference, why) in [
        (unsigned.as_str(), "not signed"),
        (missing.as_str(), "the registry has no manifests"),
        (
            &format!("oci://{}/plugins/none:1", registry.address),
            "the registry has no manifests",
        ),
    ] {
        let refused = reload(&gw, &config(dir, reference, &up)).await;
        assert_eq!(refused.status, 422, "{reference}");
        let error = refused.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains("plugin `policy`") && error.contains(why),
            "{error}"
        );
        assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-b:v");
    }
    // A malformed reference is a configuration error at its line.
    let refused = reload(&gw, &config(dir, "oci://registry/Stamp:1", &up)).await;
    let error = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("plugins.policy.path") && error.contains("lowercase"),
        "{error}"
    );

    // `sluice plugin pull` gets the component and its signature, which
    // stock minisign verifies.
    let sluice = env!("CARGO_BIN_EXE_sluice");
    run(dir, sluice, &["plugin", "pull", &a, "-o", "pulled.wasm"]);
    assert_eq!(
        std::fs::read(dir.join("pulled.wasm")).unwrap(),
        std::fs::read(plugin("stamp-a")).unwrap()
    );
    run(
        dir,
        "minisign",
        &["-V", "-p", "trusted.pub", "-m", "pulled.wasm"],
    );

    // With the registry gone, a pinned plugin pulled before loads from the cache.
    drop(registry);
    let offline = reload(&gw, &config(dir, &a, &up)).await;
    assert_eq!(
        offline.status,
        200,
        "{}",
        String::from_utf8_lossy(&offline.body)
    );
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");
    // A tag alone needs the registry.
    let by_tag = reload(&gw, &config(dir, &format!("{repo}:a"), &up)).await;
    assert_eq!(by_tag.status, 422);
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_asks_for_credentials_gets_a_token_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The token service: a token for the right password, 401 otherwise.
    let scopes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = scopes.clone();
    let tokens = Upstream::start_with("tokens", move |head| {
        seen.lock()
            .unwrap()
            .push(head.uri.query().unwrap_or("").to_owned());
        let basic = head
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        // base64("ci:s3cret")
        match basic == Some("Basic Y2k6czNjcmV0") {
            true => (200, vec![], r#"{"token":"t0k3n"}"#.into()),
            false => (401, vec![], String::new()),
        }
    })
    .await;
    // "silly" auth: the registry asks for a Bearer token from the realm
    // and takes any Authorization; the token service above decides.
    let auth = format!(
        "auth:\n  silly:\n    realm: http://{}/token\n    service: sluice-test\n",
        tokens.addr
    );
    let registry = Registry::start(dir, &auth).await;
    std::fs::write(dir.join("password"), "s3cret\n").unwrap();
    place(dir, "stamp-a", "a.wasm", false);
    let reference = format!("oci://{}/plugins/stamp:a", registry.address);

    let sluice = env!("CARGO_BIN_EXE_sluice");
    let anonymous = Command::new(sluice)
        .args(["plugin", "push", "a.wasm", &reference])
        .current_dir(dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&anonymous.stderr);
    assert!(!anonymous.status.success());
    assert!(said.contains("refused anonymous access"), "{said}");

    let logged_in = ["--username", "ci", "--password-file", "password"];
    let out = run(
        dir,
        sluice,
        &[
            &["plugin", "push", "a.wasm", &reference][..],
            &logged_in[..],
        ]
        .concat(),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let pinned = said
        .split_whitespace()
        .find(|w| w.starts_with("oci://"))
        .unwrap()
        .to_owned();
    assert!(
        scopes
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.contains("scope=repository%3Aplugins%2Fstamp%3A")
                && q.contains("service=sluice-test")),
        "{:?}",
        scopes.lock().unwrap()
    );

    // A gateway logs in as configured.
    let up = Upstream::start("a").await;
    let login = format!(
        "[oci.credentials.\"{}\"]\nusername = \"ci\"\npassword_file = \"{}\"",
        registry.address,
        dir.join("password").display()
    );
    let gw = Gateway::start(&config_with(dir, &pinned, &up, &login))
        .await
        .unwrap();
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");
    // Without credentials, nothing to load (and a clear reason).
    let error = Gateway::start(&config_with(dir, &format!("{reference}-none"), &up, ""))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("plugin `policy`") && error.contains("refused anonymous access"),
        "{error}"
    );
}
