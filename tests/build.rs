//! Builds every plugin in `plugins/` as a WebAssembly component, and those
//! in `plugins/proxy-wasm/` as proxy-wasm modules, so the tests run the
//! real thing, and tells the tests where the `.wasm` files are.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository");
    for watched in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("wasm");
    let out = build(&root.join("plugins"), "wasm32-wasip2", &target_dir);
    println!("cargo:rustc-env=SLUICE_PLUGIN_DIR={}", out.display());
    // proxy-wasm filters: core modules, as built for Envoy.
    let out = build(
        &root.join("plugins").join("proxy-wasm"),
        "wasm32-wasip1",
        &target_dir,
    );
    println!("cargo:rustc-env=SLUICE_PROXY_WASM_DIR={}", out.display());
}

/// Build the workspace in `dir` for `target` into `target_dir`; where the
/// `.wasm` files are.
fn build(dir: &Path, target: &str, target_dir: &Path) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", target, "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // What the outer build set for itself (clippy, flags) is not for the guests.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building {} for {target} failed (is the target installed? `rustup target add {target}`)",
        dir.display()
    );
    target_dir.join(target).join("release")
}
