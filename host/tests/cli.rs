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
        // A plugin that is not there, on line 2.
        (
            "[plugins.auth]\npath = \"missing.wasm\"\n",
            "gateway.toml:2: plugins.auth.path",
            "plugin `auth`",
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
