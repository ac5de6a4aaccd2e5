//! A gRPC answer as the JSON client's: one message as a JSON object, a
//! server stream as newline-delimited JSON or server-sent events, and a
//! gRPC status other than OK as the HTTP status it maps to with
//! `{"code", "message"}` (google.rpc.Status's JSON) as the body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::{Body, Frame};
use prost_reflect::DynamicMessage;

use super::Route;
use crate::body::{self, BoxError, ProxyBody};
use crate::config::StreamFormat;
use crate::metrics::ProxyMetrics;
use crate::translate::frames::{COMPRESSED, Deframer};
use crate::translate::status_json;

/// The largest message (and unary answer) taken from the upstream.
const MAX_MESSAGE: usize = 16 << 20;

/// A call on its way: what its answer is made into.
pub(crate) struct Call {
    route: Arc<Route>,
    format: StreamFormat,
}

impl Call {
    pub(super) fn new(route: Arc<Route>, format: StreamFormat) -> Call {
        Call { route, format }
    }

    /// The upstream's gRPC answer, `head` and `body`, made the client's
    /// JSON; what cannot be is counted in `metrics`.
    pub(crate) async fn response(
        self,
        head: &mut http::response::Parts,
        body: ProxyBody,
        metrics: &Arc<ProxyMetrics>,
    ) -> ProxyBody {
        let grpc = (head.headers.get(header::CONTENT_TYPE))
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            let why = format!("the upstream answered {} without gRPC", head.status);
            return failed(head, "upstream_not_grpc", why, metrics);
        }
        // Trailers-Only: a failure with no message, its status in the head.
        if let Some(status) = Status::of(&head.headers).filter(|s| s.code != 0) {
            return status.reply(head);
        }
        match self.route.rpc.server_streaming {
            true => self.stream(head, body, metrics.clone()),
            false => self.unary(head, body, metrics).await,
        }
    }

    async fn unary(
        self,
        head: &mut http::response::Parts,
        body: ProxyBody,
        metrics: &ProxyMetrics,
    ) -> ProxyBody {
        let (bytes, trailers) = match body::collect_whole(body, MAX_MESSAGE).await {
            Ok(whole) => whole,
            Err(error) => {
                return failed(head, "upstream_body_incomplete", error.to_string(), metrics);
            }
        };
        let trailers = trailers.unwrap_or_default();
        match Status::of(&trailers).or_else(|| Status::of(&head.headers)) {
            None => {
                let why = "the answer had no grpc-status";
                return failed(head, "upstream_no_status", why, metrics);
            }
            Some(status) if status.code != 0 => return status.reply(head),
            Some(_) => {}
        }
        let mut deframer = Deframer::new(MAX_MESSAGE);
        deframer.push(&bytes);
        let json = match deframer.next_message() {
            Ok(Some(message)) => self.json(message),
            Ok(None) => Err("the answer had no message".to_owned()),
            Err(error) => Err(error.to_string()),
        };
        let json = match json {
            Ok(json) => json,
            Err(why) => return failed(head, "upstream_invalid_message", why, metrics),
        };
        json_head(head, StatusCode::OK, "application/json");
        // The call's own metadata, which a JSON client can only read as headers.
        for (name, value) in &trailers {
            if !name.as_str().starts_with("grpc-") {
                head.headers.append(name, value.clone());
            }
        }
        body::full(json)
    }

    fn stream(
        self,
        head: &mut http::response::Parts,
        body: ProxyBody,
        metrics: Arc<ProxyMetrics>,
    ) -> ProxyBody {
        let content_type = match self.format {
            StreamFormat::Ndjson => "application/x-ndjson",
            StreamFormat::Sse => "text/event-stream",
        };
        json_head(head, StatusCode::OK, content_type);
        ProxyBody::new(Streamed {
            inner: body,
            deframer: Deframer::new(MAX_MESSAGE),
            call: self,
            metrics,
            done: false,
        })
    }

    /// One message as JSON (or the field of it `response_body` names).
    fn json(&self, (flags, bytes): (u8, Bytes)) -> Result<Vec<u8>, String> {
        if flags & COMPRESSED != 0 {
            return Err("a compressed message, though identity was asked for".into());
        }
        let output = self.route.rpc.output.clone();
        let message = DynamicMessage::decode(output.clone(), bytes).map_err(|e| e.to_string())?;
        let json = match &self.route.response_body {
            None => serde_json::to_vec(&message),
            Some(name) => {
                let field = output.get_field_by_name(name).expect("checked at load");
                let mut whole = serde_json::to_value(&message).map_err(|e| e.to_string())?;
                serde_json::to_vec(&whole[field.json_name()].take())
            }
        };
        json.map_err(|e| e.to_string())
    }

    /// A message, or a failure, as one event of the stream.
    fn event(&self, json: &[u8], failure: bool) -> Bytes {
        let mut out = Vec::with_capacity(json.len() + 24);
        match (self.format, failure) {
            (StreamFormat::Ndjson, false) => out.extend_from_slice(json),
            (StreamFormat::Ndjson, true) => {
                out.extend_from_slice(b"{\"error\":");
                out.extend_from_slice(json);
                out.push(b'}');
            }
            (StreamFormat::Sse, failure) => {
                if failure {
                    out.extend_from_slice(b"event: error\n");
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json);
                out.push(b'\n');
            }
        }
        out.push(b'\n');
        out.into()
    }
}

/// A server stream's messages, each an event as it arrives; a failing
/// status at its end is the last event.
struct Streamed {
    inner: ProxyBody,
    deframer: Deframer,
    call: Call,
    metrics: Arc<ProxyMetrics>,
    done: bool,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let event = match this.deframer.next_message() {
                Ok(Some(message)) => match this.call.json(message) {
                    Ok(json) => Some(this.call.event(&json, false)),
                    Err(why) => Some(this.fail(why)),
                },
                Ok(None) => None,
                Err(error) => Some(this.fail(error.to_string())),
            };
            if let Some(event) = event {
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.deframer.push(&data),
                    Err(frame) => {
                        this.done = true;
                        let status = frame.into_trailers().ok().and_then(|t| Status::of(&t));
                        if let Some(status) = status.filter(|s| s.code != 0) {
                            let event = this.call.event(&status.json(), true);
                            return Poll::Ready(Some(Ok(Frame::data(event))));
                        }
                    }
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    this.done = true;
                    if let Err(error) = this.deframer.finish() {
                        let event = this.fail(error.to_string());
                        return Poll::Ready(Some(Ok(Frame::data(event))));
                    }
                }
            }
        }
    }
}

impl Streamed {
    /// The stream ends with a failure: the upstream sent what is not a message.
    fn fail(&mut self, why: String) -> Bytes {
        self.metrics.translation_failed("upstream_invalid_message");
        sluice_filter::log_throttled!(
            warn,
            ("transcode", "stream"),
            "gRPC transcoding: a stream ends broken: {why}"
        );
        self.done = true;
        self.deframer = Deframer::new(0);
        let status = Status {
            code: INTERNAL,
            message: format!("the upstream's answer: {why}"),
        };
        self.call.event(&status.json(), true)
    }
}

/// gRPC's `INTERNAL`.
const INTERNAL: u32 = 13;

/// A gRPC status, from `grpc-status` and `grpc-message`.
struct Status {
    code: u32,
    message: String,
}

impl Status {
    fn of(headers: &HeaderMap) -> Option<Status> {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers
            .get("grpc-message")
            .map(|m| {
                percent_encoding::percent_decode(m.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        Some(Status { code, message })
    }

    /// google.rpc.Status as JSON.
    fn json(&self) -> Vec<u8> {
        status_json(self.code, &self.message)
    }

    /// The whole answer for a call that failed with this status.
    fn reply(&self, head: &mut http::response::Parts) -> ProxyBody {
        json_head(head, http_status(self.code), "application/json");
        body::full(self.json())
    }
}

/// The answer when the upstream did not answer in gRPC: 502, as `INTERNAL`.
fn failed(
    head: &mut http::response::Parts,
    code: &'static str,
    why: impl Into<String>,
    metrics: &ProxyMetrics,
) -> ProxyBody {
    let why = why.into();
    metrics.translation_failed(code);
    sluice_filter::log_throttled!(warn, ("transcode", code), "gRPC transcoding: {why}");
    let status = Status {
        code: INTERNAL,
        message: why,
    };
    json_head(head, StatusCode::BAD_GATEWAY, "application/json");
    head.headers
        .insert("x-sluice-error", HeaderValue::from_static(code));
    body::full(status.json())
}

/// `head` made a JSON answer's: its status and type, gRPC's own fields gone.
fn json_head(head: &mut http::response::Parts, status: StatusCode, content_type: &'static str) {
    head.status = status;
    let headers = &mut head.headers;
    headers.remove(header::CONTENT_LENGTH);
    // Only those present: removing by a name parses and hashes it.
    let grpc: Vec<_> = (headers.keys())
        .filter(|name| name.as_str().starts_with("grpc-"))
        .cloned()
        .collect();
    for name in grpc {
        headers.remove(name);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

/// The HTTP status for a gRPC status code, as google.rpc.Code documents it.
fn http_status(code: u32) -> StatusCode {
    let status = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    };
    StatusCode::from_u16(status).expect("a valid status")
}
