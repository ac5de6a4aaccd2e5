//! The `sluice` binary under pressure, measured from outside: what it
//! writes to its log when every request fails, and the memory it keeps
//! after a burst of large requests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{free_port, wait_until_listening};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// `sluice run` on `toml`, its log going to `log`.
fn run(dir: &Path, toml: &str, log: &Path) -> Child {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--workers", "2", "run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

/// Send `head` and `body_len` bytes of body on `stream`; the status.
async fn exchange(stream: &mut BufReader<TcpStream>, head: &str, body_len: usize) -> u16 {
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    let body = vec![b'b'; body_len];
    stream.get_mut().write_all(&body).await.unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).await.unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut rest = vec![0; length];
    stream.read_exact(&mut rest).await.unwrap();
    status_line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_fills_the_log_with_a_handful_of_lines_not_one_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let mut gateway = run(
        dir.path(),
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[reload]\nwatch = false\n\
             [upstreams.dead]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"dead\"\n"
        ),
        &log,
    );
    wait_until_listening(port).await;
    let started = Instant::now();
    let mut stream = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let mut failed = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let status = exchange(&mut stream, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 0).await;
        assert_eq!(status, 502);
        failed += 1;
    }
    let seconds = started.elapsed().as_secs_f64().ceil() as usize + 1;
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().filter(|l| l.contains("unreachable")).count();
    assert!(lines >= 1, "the failure is logged:\n{text}");
    assert!(failed > 100 * lines, "{failed} failures, {lines} lines");
    assert!(
        lines <= 5 * seconds,
        "{lines} lines for {failed} failures in {seconds} s:\n{text}"
    );
    assert!(
        text.contains("held_back"),
        "the log says how many lines it held back:\n{text}"
    );
}

/// A keep-alive upstream that reads each request's body and answers `ok`.
async fn sink() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_a_burst_of_large_requests() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let upstream = sink().await;
    let mut gateway = run(
        dir.path(),
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[reload]\nwatch = false\n\
             [upstreams.sink]\ntargets = [\"127.0.0.1:{upstream}\"]\nidle_timeout = \"1s\"\n\
             [[routes]]\nupstream = \"sink\"\n"
        ),
        &dir.path().join("stderr.log"),
    );
    wait_until_listening(port).await;
    let pid = gateway.id();
    let small = "POST / HTTP/1.1\r\nHost: t\r\ncontent-length: 10\r\n\r\n";
    let mut warm = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    for _ in 0..200 {
        assert_eq!(exchange(&mut warm, small, 10).await, 200);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib(pid);

    // 800 clients at once, each with 28 KiB of headers and a 256 KiB body.
    let filler = format!("x-filler: {}\r\n", "f".repeat(28 << 10));
    let head = format!(
        "POST / HTTP/1.1\r\nHost: t\r\n{filler}content-length: {}\r\n\r\n",
        256 << 10
    );
    let burst = (0..800).map(|_| {
        let head = head.clone();
        tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            exchange(&mut BufReader::new(stream), &head, 256 << 10).await
        })
    });
    for status in join_all(burst).await {
        assert_eq!(status, 200);
    }
    let peak = rss_kib(pid);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = rss_kib(pid);
    while now > baseline + (16 << 10) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = rss_kib(pid);
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    eprintln!("RSS baseline {baseline} KiB, {peak} KiB after the burst, {now} KiB later");
    assert!(
        now <= baseline + (16 << 10),
        "RSS stayed at {now} KiB after the burst (baseline {baseline} KiB)"
    );
}

async fn join_all<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}
