//! A `sluice run` process, as the fleet suites run several of: its own
//! folder and configuration, a listener and an admin listener on free
//! ports, its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_tests::{Reply, free_port, get};
use tokio::net::TcpStream;

/// The admin token every instance is given.
pub const TOKEN: &str = "test-admin-token-0123";

/// A `sluice run` process.
pub struct Sluice {
    pub port: u16,
    pub admin: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Sluice {
    /// Start on `body` (everything but the listeners, admin, reload and
    /// engine settings), and wait until it listens; compiled plugins are
    /// shared through `cache` so another process does not compile again.
    pub async fn start(body: &str, cache: &Path) -> Sluice {
        let sluice = Self::spawn(body, cache);
        sluice.listening().await;
        sluice
    }

    /// Start on `body` without waiting.
    pub fn spawn(body: &str, cache: &Path) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
                 [admin]\naddress = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
                 [reload]\nwatch = false\n[engine]\ncache_dir = \"{}\"\n{body}",
                cache.display()
            ),
        )
        .unwrap();
        let child = Self::run(dir.path());
        Sluice {
            port,
            admin,
            child,
            dir,
        }
    }

    fn run(dir: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--workers", "2", "run", "--config"])
            .arg(dir.join("gateway.toml"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("stderr.log"))
                    .unwrap(),
            ))
            .spawn()
            .unwrap()
    }

    /// Wait until it listens; its log if it exits first.
    pub async fn listening(&self) {
        for _ in 0..3000 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the gateway never listened:\n{}", self.log());
    }

    /// Wait for it to exit; whether it succeeded.
    pub fn exited(&mut self) -> bool {
        self.child.wait().unwrap().success()
    }

    /// Kill it (SIGKILL) and start it again: same files, same ports.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Self::run(self.dir.path());
        self.listening().await;
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        get(&self.url(path), headers).await
    }

    /// `GET path` on the admin listener, with the token.
    pub async fn admin(&self, path: &str) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        get(&url, &[("authorization", &format!("Bearer {TOKEN}"))]).await
    }

    /// The sum of `/metrics`' series that start with `series` (0 if none).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin("/metrics").await;
        String::from_utf8_lossy(&text.body)
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.stop();
    }
}
