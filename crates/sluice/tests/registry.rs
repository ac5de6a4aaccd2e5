//! Plugins from an OCI registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free port, plugins pushed to it with
//! `sluice plugin push` after Debian's `minisign` signed them, and a
//! gateway under `[trust]` loading them by pinned reference, refusing the
//! unsigned, picking up a new pin on reload and starting from its cache
//! when the registry is gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sluice_tests::{Gateway, Upstream, get, plugin};

/// A registry on a free loopback port, storing in a folder of its own.
struct Registry {
    child: Child,
    address: String,
}

impl Registry {
    async fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
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
        let registry = Registry {
            child,
            address: format!("127.0.0.1:{port}"),
        };
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(&registry.address)
                .await
                .is_ok()
            {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        panic!("docker-registry never answered on {}", registry.address);
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

fn config(dir: &Path, reference: &str, up: &Upstream) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[trust]
keys = ["{}"]

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
        dir.join("trusted.pub").display(),
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
    let registry = Registry::start(dir).await;
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

    let up = Upstream::start("a").await;
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
