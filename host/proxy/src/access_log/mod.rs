//! Access logs: one line per request (and per TCP listener connection), in
//! JSON or the common log format, to stdout, stderr or a file.
//!
//! Off the request path: the gateway fills a [`Record`] as the request goes
//! (its head at the edge, what its route's phases made of it in [`Served`],
//! the target in the upstream's [`AnsweredBy`]) and, when the response body
//! has gone to the client, queues it for a writer task that formats and
//! writes lines in batches. A full queue drops records, counted in
//! `sluice_access_log_dropped_total`, rather than slow requests down.

mod format;

use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::body::{BoxError, ProxyBody, Upload};
use crate::phases::Decision;
use crate::upstream::AnsweredBy;

pub use format::{Field, LogFormat};

/// Bytes formatted before they are written.
const BATCH: usize = 64 << 10;

/// `[access_log]`: where lines go and what they say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr`, or a file (relative to the configuration's
    /// folder), appended to and opened again on every reload (so a rotated
    /// file is let go after a `SIGHUP`).
    #[serde(default = "stdout")]
    pub to: String,
    /// `json` (one object a line) or `common` (the common log format).
    #[serde(default)]
    pub format: LogFormat,
    /// A JSON line's fields, in order; all of them when not given.
    pub fields: Option<Vec<Field>>,
    /// Records waiting for the writer before more are dropped.
    #[serde(default = "queue")]
    pub queue: usize,
}

fn stdout() -> String {
    "stdout".into()
}

fn queue() -> usize {
    16_384
}

/// Where a configuration's access log lines go; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Line>,
    dropped: Counter,
}

/// What a line tells of.
enum Line {
    Request(Box<Record>),
    Connection(Box<Connection>),
}

/// One TCP listener connection, as its access log line reports it.
pub struct Connection {
    /// When it was accepted.
    pub time: SystemTime,
    /// The listener's address.
    pub listener: Arc<str>,
    /// The client (as a PROXY protocol header named it, if one did).
    pub client: std::net::SocketAddr,
    /// The upstream it was routed to.
    pub upstream: String,
    /// The target it was joined to, if one was reached.
    pub target: Option<std::net::SocketAddr>,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
    /// From accept to close.
    pub duration: Duration,
    /// How it ended (`closed`, `idle_timeout`, ...).
    pub ended: &'static str,
}

impl AccessLog {
    /// Open `config`'s destination (a file relative to `dir`) and start its
    /// writer; `dropped` counts the records a full queue turned away.
    pub fn open(
        config: &AccessLogConfig,
        dir: &Path,
        dropped: Counter,
    ) -> std::io::Result<AccessLog> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match config.to.as_str() {
            "stdout" => Box::new(tokio::io::stdout()),
            "stderr" => Box::new(tokio::io::stderr()),
            file => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(file))?;
                Box::new(tokio::fs::File::from_std(file))
            }
        };
        let fields = config.fields.clone().unwrap_or_else(|| Field::ALL.to_vec());
        let (queue, records) = mpsc::channel(config.queue.max(1));
        tokio::spawn(write(records, out, config.format, fields));
        Ok(AccessLog { queue, dropped })
    }

    /// `response`, whose body queues `record` when the client has it all
    /// (or when it is dropped, for a client that went away).
    pub fn follow(
        &self,
        mut record: Box<Record>,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let (mut head, body) = response.into_parts();
        record.status = head.status;
        record.error = head.headers.get("x-sluice-error").cloned();
        record.served = head.extensions.remove::<Served>();
        record.target = head.extensions.remove::<AnsweredBy>().map(|a| a.0);
        let body = Logged {
            inner: body,
            sent: 0,
            record: Some(record),
            log: self.clone(),
        };
        Response::from_parts(head, body.boxed())
    }

    fn send(&self, record: Box<Record>) {
        self.queue_line(Line::Request(record));
    }

    /// Queue a TCP connection's line.
    pub fn connection(&self, connection: Connection) {
        self.queue_line(Line::Connection(Box::new(connection)));
    }

    fn queue_line(&self, line: Line) {
        if self.queue.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// Format and write records as they come, a batch at a time, until every
/// sender (the configuration's gateway and its requests in flight) is gone.
async fn write(
    mut records: mpsc::Receiver<Line>,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
    format: LogFormat,
    fields: Vec<Field>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let line = |line: Line, batch: &mut Vec<u8>| match line {
        Line::Request(record) => format.line(&record, &fields, batch),
        Line::Connection(connection) => format.connection_line(&connection, batch),
    };
    while let Some(record) = records.recv().await {
        line(record, &mut batch);
        while batch.len() < BATCH
            && let Ok(record) = records.try_recv()
        {
            line(record, &mut batch);
        }
        let written = match out.write_all(&batch).await {
            Ok(()) => out.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            sluice_filter::log_throttled!(warn, ("access log",), "writing the access log: {e}");
        }
        batch.clear();
    }
}

/// One request, as its access log line reports it.
pub struct Record {
    time: SystemTime,
    started: Instant,
    request_id: HeaderValue,
    client: IpAddr,
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    status: StatusCode,
    /// The gateway's own error code, when it answered itself.
    error: Option<HeaderValue>,
    served: Option<Served>,
    target: Option<std::net::SocketAddr>,
    bytes_out: u64,
    duration: Duration,
}

impl Record {
    /// The start of a record for the request `head`, which arrived at
    /// `started` from `client` and has id `request_id`.
    pub fn begin(
        head: &http::request::Parts,
        started: Instant,
        client: IpAddr,
        request_id: &HeaderValue,
    ) -> Box<Record> {
        Box::new(Record {
            time: SystemTime::now() - started.elapsed(),
            started,
            request_id: request_id.clone(),
            client,
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            host: head.headers.get(http::header::HOST).cloned(),
            user_agent: head.headers.get(http::header::USER_AGENT).cloned(),
            status: StatusCode::OK,
            error: None,
            served: None,
            target: None,
            bytes_out: 0,
            duration: Duration::ZERO,
        })
    }
}

/// What a request's route made of it, in the response's extensions for the
/// access log.
#[derive(Clone)]
pub struct Served {
    /// The route's name.
    pub route: Arc<str>,
    /// The upstream it was sent to, or would have been.
    pub upstream: Option<Arc<str>>,
    /// Who an auth filter said the client is.
    pub identity: Option<String>,
    /// Each filter's name and decision, in chain order.
    pub filters: Vec<(Arc<str>, Decision)>,
    /// The request body, as far as it was read.
    pub upload: Option<Arc<Upload>>,
}

/// A response body that counts what it sends and queues its record at the end.
struct Logged {
    inner: ProxyBody,
    sent: u64,
    record: Option<Box<Record>>,
    log: AccessLog,
}

impl Logged {
    fn finish(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.bytes_out = self.sent;
            record.duration = record.started.elapsed();
            self.log.send(record);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(_) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}
