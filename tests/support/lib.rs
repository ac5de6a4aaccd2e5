//! What the end-to-end tests share: a real upstream server, the real gateway
//! started from a TOML configuration, and a plain HTTP client. Everything
//! listens on `127.0.0.1:0`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Path of a proxy-wasm filter built from `plugins/proxy-wasm/` (a core
/// module, for wasm32-wasip1) by this crate's build script.
pub fn proxy_wasm_plugin(name: &str) -> String {
    format!(
        "{}/{}.wasm",
        env!("SLUICE_PROXY_WASM_DIR"),
        name.replace('-', "_")
    )
}

/// Path of a plugin component built from `plugins/` by this crate's build script.
pub fn plugin(name: &str) -> String {
    format!(
        "{}/{}.wasm",
        env!("SLUICE_PLUGIN_DIR"),
        name.replace('-', "_")
    )
}

type TestBody = BoxBody<Bytes, Infallible>;

/// A test upstream. Paths:
/// - `/slow`: answers after 10 s;
/// - `/delay?ms=N`: answers after N ms;
/// - `/download?bytes=N`: streams N bytes;
/// - `/upload`: counts the request body's bytes as it streams in;
/// - `/mirror`: answers with the request body, as JSON;
/// - anything else: a JSON echo of the request, shaped by query parameters
///   `cc=` (its `Cache-Control`), `vary=` (its `Vary`) and `delay_ms=`.
///
/// Every response carries `x-upstream: <id>`.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    hung: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A custom upstream's answer to a request head: status, headers, body.
pub type Handler =
    dyn Fn(&http::request::Parts) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

impl Upstream {
    /// Start one, named `id`.
    pub async fn start(id: &'static str) -> Upstream {
        Self::serve(id, None, None, None).await
    }

    /// Start one that answers with `handler` (an auth service, say).
    pub async fn start_with(
        id: &'static str,
        handler: impl Fn(&http::request::Parts) -> (u16, Vec<(&'static str, String)>, String)
        + Send
        + Sync
        + 'static,
    ) -> Upstream {
        Self::serve(id, Some(Arc::new(handler)), None, None).await
    }

    /// Start one on `addr` (a killed one's, to bring it back).
    pub async fn start_at(id: &'static str, addr: SocketAddr) -> Upstream {
        Self::serve(id, None, Some(addr), None).await
    }

    /// Start one that speaks TLS with `tls`.
    pub async fn start_tls(id: &'static str, tls: tokio_rustls::TlsAcceptor) -> Upstream {
        Self::serve(id, None, None, Some(tls)).await
    }

    async fn serve(
        id: &'static str,
        handler: Option<Arc<Handler>>,
        addr: Option<SocketAddr>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("address"));
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let hung = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delaying = delay_ms.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let counter = hits.clone();
        let accepted = connections.clone();
        let hanging = hung.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                let handler = handler.clone();
                let hanging = hanging.clone();
                let delaying = delaying.clone();
                let mut stopped = stopped.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let handler = handler.clone();
                        let hanging = hanging.clone();
                        let delay = Duration::from_millis(delaying.load(Ordering::SeqCst));
                        async move {
                            if hanging.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(match handler {
                                Some(handler) => custom(id, &*handler, req),
                                None => answer(id, req).await,
                            })
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let served = async {
                        match tls {
                            None => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    let _ = builder
                                        .serve_connection_with_upgrades(
                                            TokioIo::new(stream),
                                            service,
                                        )
                                        .await;
                                }
                            }
                        }
                    };
                    // Killed: the connection is dropped, mid-exchange or not.
                    tokio::select! {
                        () = served => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            hung,
            delay_ms,
            stop,
            task,
        }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stop answering (as a process stopped with SIGSTOP): connections are
    /// still accepted, requests never answered. `false` resumes.
    pub fn hang(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
    }

    /// Answer every request `delay` late from now on.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stop listening and drop every connection, as a killed process would.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

fn custom(id: &'static str, handler: &Handler, req: Request<Incoming>) -> Response<TestBody> {
    let (head, _body) = req.into_parts();
    let (status, headers, body) = handler(&head);
    let mut response = Response::builder().status(status).header("x-upstream", id);
    for (name, value) in headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

async fn answer(id: &'static str, req: Request<Incoming>) -> Response<TestBody> {
    let (head, body) = req.into_parts();
    let body: TestBody = match head.uri.path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Full::new(Bytes::from_static(b"late")).boxed()
        }
        "/delay" => {
            let ms = head
                .uri
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|n| n.parse().ok());
            tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
            Full::new(Bytes::from_static(b"done")).boxed()
        }
        "/download" => {
            let total: usize = head
                .uri
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            let chunks = stream::iter((0..total.div_ceil(chunk.len())).map(move |i| {
                let len = chunk.len().min(total - i * chunk.len());
                Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
            }));
            StreamBody::new(chunks).boxed()
        }
        "/mirror" => {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Response::builder()
                .header("x-upstream", id)
                .header("content-type", "application/json")
                .body(Full::new(bytes).boxed())
                .expect("valid response");
        }
        "/upload" => {
            let mut body = body;
            let mut received = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    received += data.len();
                }
            }
            Full::new(Bytes::from(received.to_string())).boxed()
        }
        _ => {
            let params = query_params(head.uri.query());
            if let Some(ms) = params.get("delay_ms").and_then(|ms| ms.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let headers: serde_json::Map<String, serde_json::Value> = head
                .headers
                .keys()
                .map(|k| {
                    let values: Vec<_> = head
                        .headers
                        .get_all(k)
                        .iter()
                        .map(|v| serde_json::Value::from(v.to_str().unwrap_or("")))
                        .collect();
                    (k.to_string(), values.into())
                })
                .collect();
            let echo = serde_json::json!({
                "upstream": id,
                "method": head.method.as_str(),
                "version": format!("{:?}", head.version),
                "uri": head.uri.to_string(),
                "headers": headers,
            });
            let mut response = Response::builder()
                .header("x-upstream", id)
                .header("server", "test-upstream");
            if let Some(cc) = params.get("cc") {
                response = response.header("cache-control", cc.as_str());
            }
            if let Some(vary) = params.get("vary") {
                response = response.header("vary", vary.as_str());
            }
            return response
                .body(Full::new(Bytes::from(echo.to_string())).boxed())
                .expect("valid response");
        }
    };
    Response::builder()
        .header("x-upstream", id)
        .header("server", "test-upstream")
        .body(body)
        .expect("valid response")
}

/// Query parameters, with the few percent-escapes the tests use decoded.
fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%20", " "),
            )
        })
        .collect()
}

/// The real gateway, serving a configuration in-process.
pub struct Gateway {
    /// Its first listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address, if configured.
    pub admin: Option<SocketAddr>,
    /// Its control plane: reloads, versions, the current gateway.
    pub control: Arc<sluice_control::Control>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Start the gateway on `toml` (see [`Gateway::bind`]).
    pub async fn start(toml: &str) -> anyhow::Result<Gateway> {
        Self::serve(Self::bind(toml).await?)
    }

    /// Start the gateway on `toml` with exactly the listeners it configures
    /// (the first is [`Gateway::addr`]).
    pub async fn start_as_is(toml: &str) -> anyhow::Result<Gateway> {
        Self::serve(Self::bind_text(toml.to_owned()).await?)
    }

    fn serve(
        (dir, server): (tempfile::TempDir, sluice_control::Server),
    ) -> anyhow::Result<Gateway> {
        let addr = server.local_addrs()[0];
        let admin = server.admin_addr();
        let control = server.control();
        let task = tokio::spawn(server.serve());
        Ok(Gateway {
            addr,
            admin,
            control,
            task,
            _dir: dir,
        })
    }

    /// Write `toml`, with a `127.0.0.1:0` listener, to a file in a fresh
    /// folder (so errors carry a path and line), and bind a server on it.
    pub async fn bind(toml: &str) -> anyhow::Result<(tempfile::TempDir, sluice_control::Server)> {
        Self::bind_text(with_listener(toml)).await
    }

    async fn bind_text(
        text: String,
    ) -> anyhow::Result<(tempfile::TempDir, sluice_control::Server)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, text)?;
        let server = sluice_control::Server::from_file(&path).await?;
        Ok((dir, server))
    }

    /// The configuration file it was started from.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("sluice.toml")
    }

    /// Replace the configuration file (with the same listener); a reload reads it.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.config_path(), with_listener(toml)).expect("config written");
    }

    /// Call the admin API with its token, as an operator would (changes
    /// carry the content type the admin API asks for).
    pub async fn admin(&self, method: &str, path: &str, body: impl Into<Bytes>) -> Reply {
        let admin = self.admin.expect("an [admin] listener is configured");
        let content_type = match method {
            "PUT" => "application/wasm",
            _ => "application/json",
        };
        let headers = [
            ("authorization", "Bearer test-admin-token"),
            ("content-type", content_type),
        ];
        send_body(method, &format!("http://{admin}{path}"), &headers, body).await
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = self.admin("GET", "/metrics", Bytes::new()).await;
        assert_eq!(reply.status, 200);
        String::from_utf8(reply.body.to_vec()).expect("metrics are text")
    }

    /// `http://<addr><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn with_listener(toml: &str) -> String {
    format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n{toml}")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// All values the upstream echoed for request header `name`.
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Send `method url` with `headers` and an empty body.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    send_body(method, url, headers, Bytes::new()).await
}

/// Send `method url` with `headers` and `body`.
pub async fn send_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body.into()).boxed())
        .expect("valid request");
    let response = client()
        .request(request)
        .await
        .expect("the gateway answers");
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: head.status,
        headers: head.headers,
        body,
    }
}

/// `GET url` with `headers`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers).await
}

/// `GET path` on the gateway with `Authorization: Bearer <token>`.
pub async fn get_bearer(gw: &Gateway, path: &str, token: &str) -> Reply {
    get(
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// A free port on 127.0.0.1 (bound and released: another process may take
/// it before it is used, so a server started on it must say it started).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait (up to 30 s) until something listens on 127.0.0.1:`port`: a
/// process started on a port from [`free_port`].
pub async fn wait_until_listening(port: u16) {
    for _ in 0..1500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("nothing listened on {port}");
}

/// A TOML string holding `text` (JSON's escapes are TOML's).
pub fn toml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Seconds since the Unix epoch, as JWT claims count them.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Count how many of `replies` came from each upstream.
pub fn by_upstream(replies: &[Reply]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for reply in replies {
        *counts
            .entry(reply.header("x-upstream").to_owned())
            .or_default() += 1;
    }
    counts
}

/// A response read off a raw socket: status, head, body.
#[derive(Debug)]
pub struct RawReply {
    /// The status code (0 when the connection closed without one).
    pub status: u16,
    /// The status line and headers as sent.
    pub head: String,
    /// The body as sent (chunked encoding left as is).
    pub body: String,
}

impl RawReply {
    /// A header's value ("" when absent); names compare case-insensitively.
    pub fn header(&self, name: &str) -> &str {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    }
}

/// Send `request` byte for byte on a fresh connection and read until the
/// gateway closes it (send `Connection: close`), within 10 seconds.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The gateway may close first (a connection past its limits): read what is there.
    let _ = socket.write_all(request).await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut bytes))
        .await
        .expect("the gateway answers and closes within 10 s");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawReply {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Debian's `etcd` on free ports, its data in a folder of its own (kept
/// across a kill and a start, as a real member's is).
pub struct Etcd {
    /// Its client port.
    pub port: u16,
    peer: u16,
    args: Vec<String>,
    scheme: &'static str,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Etcd {
    /// A one-member cluster over plain HTTP.
    pub async fn start() -> Etcd {
        Self::start_with("http", &[]).await
    }

    /// One over `scheme` (`https` with TLS `args`: `--cert-file` and so on).
    pub async fn start_with(scheme: &'static str, args: &[&str]) -> Etcd {
        let mut etcd = Etcd {
            port: free_port(),
            peer: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            scheme,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        etcd.restart().await;
        etcd
    }

    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>`).
    pub fn url(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}", self.port),
            _ => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Start it (again), on its data.
    pub async fn restart(&mut self) {
        let client = format!("{}://127.0.0.1:{}", self.scheme, self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = std::process::Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::File::create(self.dir.path().join("etcd.log")).unwrap(),
            ))
            .spawn()
            .expect("etcd is installed (Debian's `etcd-server`; .ci/run installs it)");
        self.child = Some(child);
        wait_until_listening(self.port).await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Python peer from `tests/python` (a real gRPC or WebSocket server
/// and client) serving on a port it prints; killed when dropped.
pub struct Python(Child);

impl Python {
    pub fn serve(script: &str) -> (Python, u16) {
        let mut child = Command::new("python3")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("python")
                    .join(script),
            )
            .arg("serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("{script} did not start (pip install -r tests/python/requirements.txt)")
        });
        (Python(child), port)
    }

    /// Run the script's client against `target` and return what it printed.
    pub async fn client(script: &str, verb: &str, target: String) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(script);
        let verb = verb.to_owned();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(path)
                .arg(verb)
                .arg(target)
                .output()
        })
        .await
        .unwrap()
        .expect("python3 runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl's view of a response: its head (lowercased) and body.
pub async fn curl(args: &[&str]) -> (String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "-D", "-"])
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    let text = String::from_utf8(output.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_owned())
}
