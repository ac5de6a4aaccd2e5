//! `sluice plugin inspect | sign | verify`, run as a user would, with keys
//! from Debian's `minisign` tool: what `sluice plugin sign` writes, stock
//! `minisign -V` accepts, and the other way round.

use std::path::Path;
use std::process::{Command, Output};

fn sluice(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_SIGNING_PASSWORD", "signing-password")
        .current_dir(dir)
        .output()
        .expect("sluice runs")
}

fn minisign(dir: &Path, args: &[&str]) -> Output {
    Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("Debian's minisign is installed (.ci/run installs it)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn plugins_are_inspected_signed_and_verified_interchangeably_with_minisign() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // A password-protected key, as `minisign -G` makes by default (the
    // password read from stdin), and a passwordless one.
    let made = Command::new("minisign")
        .args(["-G", "-p", "trusted.pub", "-s", "trusted.sec"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"signing-password\nsigning-password\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let made = minisign(dir, &["-G", "-W", "-p", "other.pub", "-s", "other.sec"]);
    assert!(made.status.success(), "{}", text(&made));
    std::fs::copy(sluice_tests::plugin("probe"), dir.join("probe.wasm")).unwrap();

    let inspected = sluice(dir, &["plugin", "inspect", "probe.wasm"]);
    let report = text(&inspected);
    assert!(inspected.status.success(), "{report}");
    for line in [
        "kind:      http-filter",
        "sluice:filter@0.2.5",
        "needs:     http, kv, metrics",
        "sluice:filter/kv@0.2.5  [kv]",
        "exports:\n  sluice:filter/http-filter@0.2.5",
        "signature: unsigned",
    ] {
        assert!(report.contains(line), "`{line}` in:\n{report}");
    }

    // Signed by sluice, verified by minisign and by sluice.
    let signed = sluice(
        dir,
        &["plugin", "sign", "probe.wasm", "--key", "trusted.sec"],
    );
    assert!(signed.status.success(), "{}", text(&signed));
    let checked = minisign(dir, &["-V", "-p", "trusted.pub", "-m", "probe.wasm"]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("sha256:"),
        "the trusted comment names the digest: {}",
        text(&checked)
    );
    let verified = sluice(
        dir,
        &["plugin", "verify", "probe.wasm", "--key", "trusted.pub"],
    );
    assert!(verified.status.success(), "{}", text(&verified));
    let wrong = sluice(
        dir,
        &["plugin", "verify", "probe.wasm", "--key", "other.pub"],
    );
    assert!(
        !wrong.status.success() && text(&wrong).contains("does not list"),
        "{}",
        text(&wrong)
    );
    let inspected = text(&sluice(
        dir,
        &["plugin", "inspect", "probe.wasm", "--key", "trusted.pub"],
    ));
    assert!(
        inspected.contains("signature: valid, by trusted key"),
        "{inspected}"
    );

    // Signed by minisign, verified by sluice; then tampered with.
    let resigned = minisign(dir, &["-S", "-s", "other.sec", "-m", "probe.wasm"]);
    assert!(resigned.status.success(), "{}", text(&resigned));
    let verified = sluice(
        dir,
        &["plugin", "verify", "probe.wasm", "--key", "other.pub"],
    );
    assert!(verified.status.success(), "{}", text(&verified));
    let mut bytes = std::fs::read(dir.join("probe.wasm")).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("probe.wasm"), bytes).unwrap();
    let tampered = sluice(
        dir,
        &["plugin", "verify", "probe.wasm", "--key", "other.pub"],
    );
    assert!(
        !tampered.status.success() && text(&tampered).contains("tampered"),
        "{}",
        text(&tampered)
    );
    // A signature that is not the component's is not pushed beside it
    // (refused before any registry is asked).
    let signed = sluice(
        dir,
        &["plugin", "sign", "probe.wasm", "--key", "trusted.sec"],
    );
    assert!(signed.status.success(), "{}", text(&signed));
    std::fs::write(dir.join("other.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    std::fs::copy(
        dir.join("probe.wasm.minisig"),
        dir.join("other.wasm.minisig"),
    )
    .unwrap();
    let pushed = sluice(
        dir,
        &["plugin", "push", "other.wasm", "oci://127.0.0.1:9/probe:1"],
    );
    assert!(
        !pushed.status.success() && text(&pushed).contains("made for another component"),
        "{}",
        text(&pushed)
    );
    // `inspect --key` fails as `verify` does, so a CI gate built on it holds.
    let inspected = sluice(
        dir,
        &["plugin", "inspect", "probe.wasm", "--key", "other.pub"],
    );
    assert!(
        !inspected.status.success() && text(&inspected).contains("signature: INVALID"),
        "{}",
        text(&inspected)
    );
}
