//! Vetted plugins: a component pinned by sha256, or under `[trust]` signed by
//! a trusted key (minisign, signed here by Debian's `minisign` tool), loads;
//! an unsigned, tampered, wrongly signed or unpinned one is refused with an
//! error naming the plugin, and the running version keeps serving. A plugin
//! that imports a capability nobody granted or denied is refused at load.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_tests::{Gateway, Upstream, get, plugin};

/// A folder with a trusted and an untrusted minisign key pair (no password).
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let keys = Keys {
            dir: tempfile::tempdir().unwrap(),
        };
        for name in ["trusted", "other"] {
            keys.minisign(&[
                "-G",
                "-W",
                "-p",
                &format!("{name}.pub"),
                "-s",
                &format!("{name}.sec"),
            ]);
        }
        keys
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn minisign(&self, args: &[&str]) {
        let out = Command::new("minisign")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("Debian's minisign is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "minisign {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Put `plugin`'s component at `file` in the folder, signed by `key` (or not signed).
    fn place(&self, plugin_name: &str, file: &str, key: Option<&str>) -> PathBuf {
        let path = self.path(file);
        std::fs::copy(plugin(plugin_name), &path).unwrap();
        let signature = self.path(&format!("{file}.minisig"));
        let _ = std::fs::remove_file(&signature);
        if let Some(key) = key {
            self.minisign(&["-S", "-s", &format!("{key}.sec"), "-m", file]);
        }
        path
    }
}

fn config(keys: &Keys, component: &Path, up: &Upstream, extra: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "test-admin-token"

[trust]
keys = ["{}"]

[plugins.policy]
path = "{}"
{extra}

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "policy", config = {{ label = "v" }} }}]
"#,
        keys.path("trusted.pub").display(),
        component.display(),
        up.addr
    )
}

async fn reload_refused(gw: &Gateway, why: &str) {
    let reply = gw.admin("POST", "/reload", "").await;
    assert_eq!(
        reply.status,
        422,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("plugin `policy`") && error.contains(why),
        "{error}"
    );
    // The running version keeps serving.
    assert_eq!(
        get(&gw.url("/"), &[]).await.header("x-stamp"),
        "stamp-a:v",
        "after: {why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_components_signed_by_a_trusted_key_load() {
    let up = Upstream::start("a").await;
    let keys = Keys::new();
    let component = keys.place("stamp-a", "policy.wasm", Some("trusted"));
    let gw = Gateway::start(&config(&keys, &component, &up, ""))
        .await
        .unwrap();
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");

    // Tampered: other bytes behind the same signature.
    let signature = std::fs::read(keys.path("policy.wasm.minisig")).unwrap();
    std::fs::copy(plugin("stamp-b"), &component).unwrap();
    std::fs::write(keys.path("policy.wasm.minisig"), &signature).unwrap();
    reload_refused(&gw, "does not match its content").await;
    // Signed, but by a key [trust] does not list.
    keys.place("stamp-b", "policy.wasm", Some("other"));
    reload_refused(&gw, "which [trust] does not list").await;
    // Not signed at all.
    keys.place("stamp-b", "policy.wasm", None);
    reload_refused(&gw, "not signed").await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"sluice_reloads_total{result="error"} 3"#),
        "{metrics}"
    );

    // Properly signed, the new version goes live.
    keys.place("stamp-b", "policy.wasm", Some("trusted"));
    let reloaded = gw.admin("POST", "/reload", "").await;
    assert_eq!(
        reloaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&reloaded.body)
    );
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-b:v");

    // Uploads need the signature too, base64-encoded in a header.
    let bytes = std::fs::read(plugin("stamp-a")).unwrap();
    let unsigned = gw.admin("PUT", "/plugins/policy", bytes.clone()).await;
    assert_eq!(unsigned.status, 422);
    assert!(
        unsigned.json()["error"]
            .as_str()
            .unwrap()
            .contains("not signed")
    );
    keys.place("stamp-a", "upload.wasm", Some("trusted"));
    let minisig = std::fs::read(keys.path("upload.wasm.minisig")).unwrap();
    let signed = sluice_tests::send_body(
        "PUT",
        &format!("http://{}/plugins/policy", gw.admin.unwrap()),
        &[
            ("authorization", "Bearer test-admin-token"),
            ("content-type", "application/wasm"),
            ("x-sluice-signature", &base64(&minisig)),
        ],
        bytes,
    )
    .await;
    assert_eq!(
        signed.status,
        200,
        "{}",
        String::from_utf8_lossy(&signed.body)
    );
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");

    // A gateway does not start on an unsigned component.
    let unsigned = keys.place("stamp-a", "unsigned.wasm", None);
    let error = Gateway::start(&config(&keys, &unsigned, &up, ""))
        .await
        .err()
        .expect("an unsigned plugin is refused")
        .to_string();
    assert!(
        error.contains("plugin `policy`") && error.contains("not signed"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_plugin_runs_only_its_pinned_content() {
    let up = Upstream::start("a").await;
    let keys = Keys::new();
    let component = keys.place("stamp-a", "policy.wasm", Some("trusted"));
    let pin = format!("sha256 = \"{}\"", sha256_of(&component));
    let gw = Gateway::start(&config(&keys, &component, &up, &pin))
        .await
        .unwrap();
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-stamp"), "stamp-a:v");
    // Signed by a trusted key, but not the pinned content.
    keys.place("stamp-b", "policy.wasm", Some("trusted"));
    reload_refused(&gw, "pins").await;
    // Nor can an upload or a rollback get around the pin.
    let bytes = std::fs::read(plugin("stamp-b")).unwrap();
    let upload = gw.admin("PUT", "/plugins/policy", bytes).await;
    assert_eq!(upload.status, 422);
    assert!(upload.json()["error"].as_str().unwrap().contains("pins"));
    // A malformed pin is a configuration error at its line.
    let error = Gateway::start(&config(&keys, &component, &up, "sha256 = \"abc\""))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("plugins.policy.sha256"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_importing_an_unsettled_capability_is_refused_at_load() {
    let up = Upstream::start("a").await;
    let with = |settings: &str| {
        format!(
            r#"[plugins.probe]
path = "{}"
{settings}

[upstreams.a]
targets = ["{}"]

[[routes]]
upstream = "a"
filters = [{{ plugin = "probe", config = {{ op = "count" }} }}]
"#,
            plugin("probe"),
            up.addr
        )
    };
    let error = Gateway::start(&with("grants = [\"kv\"]"))
        .await
        .err()
        .expect("the probe imports more than `kv`")
        .to_string();
    assert!(
        error.contains("plugin `probe`") && error.contains("needs the `") && error.contains("deny"),
        "{error}"
    );
    // Every unsettled import at once, not one per attempt.
    for grant in ["`metrics`", "`http:<upstream>`"] {
        assert!(error.contains(grant), "{grant} missing from: {error}");
    }
    // Granted or denied on purpose, everything is settled and it loads.
    let gw = Gateway::start(&with(
        "grants = [\"kv\"]\ndeny = [\"metrics\", \"http\", \"crypto\"]",
    ))
    .await
    .unwrap();
    assert_eq!(get(&gw.url("/"), &[]).await.status, 200);
    // An unknown capability in `deny` is a configuration error.
    let error = Gateway::start(&with("deny = [\"files\"]"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("plugins.probe.deny") && error.contains("unknown capability"),
        "{error}"
    );
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
