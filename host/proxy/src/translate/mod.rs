//! A route's translation between what its clients speak and the gRPC its
//! upstream speaks: [`grpc_web`] for browsers, [`transcode`] for JSON/REST
//! clients. The request is translated after the request phases and the
//! response before the response phases, so filters see the client's side
//! (JSON, when transcoding) both ways.

pub mod frames;
mod grpc_web;
pub mod transcode;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::metrics::ProxyMetrics;
use crate::upstream::Payload;
pub use transcode::Transcoder;

/// What a route translates.
pub(crate) enum Translation {
    /// gRPC-Web to gRPC.
    GrpcWeb,
    /// JSON/REST to gRPC.
    Transcode(Transcoder),
}

/// A request translated, and what its response needs to be translated back.
pub(crate) enum Translated {
    GrpcWeb(grpc_web::Flavor),
    Transcode(transcode::Call),
}

impl Translation {
    /// Whether the request's whole body is needed (a JSON body becomes one message).
    pub(crate) fn needs_whole_body(&self) -> bool {
        matches!(self, Translation::Transcode(_))
    }

    /// Translate `request` for the upstream; `body` is its whole body when
    /// [`needs_whole_body`](Self::needs_whole_body). `None`: nothing to do.
    pub(crate) fn request(
        &self,
        request: &mut Request<Payload>,
        body: Bytes,
    ) -> Result<Option<Translated>, Refusal> {
        match self {
            Translation::GrpcWeb => Ok(grpc_web::request(request)?.map(Translated::GrpcWeb)),
            Translation::Transcode(transcoder) => Ok(Some(Translated::Transcode(
                transcoder.request(request, body)?,
            ))),
        }
    }
}

impl Translated {
    /// The upstream's response, `head` and `body`, as the client expects
    /// it; what cannot be translated is counted in `metrics`.
    pub(crate) async fn response(
        self,
        head: &mut http::response::Parts,
        body: ProxyBody,
        metrics: &Arc<ProxyMetrics>,
    ) -> ProxyBody {
        match self {
            Translated::GrpcWeb(flavor) => grpc_web::response(flavor, head, body),
            Translated::Transcode(call) => call.response(head, body, metrics).await,
        }
    }
}

/// A request that cannot be translated: answered at once, with a gRPC-like
/// JSON status (`{"code", "message"}`) and the gateway's error code.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: String) -> Refusal {
        Refusal {
            status,
            code,
            message,
        }
    }

    /// The client's request does not make the method's message (gRPC's `INVALID_ARGUMENT`).
    pub(crate) fn invalid_argument(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "invalid_argument", message.into())
    }

    pub(crate) fn bad_request(code: &'static str, message: String) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Its gateway error code, for metrics.
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    /// The answer.
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let grpc_code = match self.status {
            StatusCode::NOT_FOUND => 5,
            StatusCode::METHOD_NOT_ALLOWED => 12,
            _ => 3,
        };
        let mut response = Response::new(body::full(status_json(grpc_code, &self.message)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-sluice-error", HeaderValue::from_static(self.code));
        response
    }
}

/// A gRPC status as google.rpc.Status's JSON: `{"code","message"}`.
pub(crate) fn status_json(code: u32, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"code": code, "message": message}))
        .expect("JSON of a number and a string")
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
