//! `wasi:http`'s outgoing handler, for language runtimes whose own HTTP
//! client is built on it (JavaScript's `fetch`, Python's and Go's WASI
//! clients). It is the `outbound` capability under another name: a
//! request's host names an upstream from the configuration
//! (`fetch("http://auth/check")` reaches upstream `auth`), which the plugin
//! must be granted (`http:auth`); the host picks the server, reuses its
//! connections and bounds the call by `outbound_timeout`. Any other host is
//! refused (`HTTP-request-denied`), counted and logged like every refusal.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::outbound::{MAX_OUTBOUND_BODY, Outbound};

/// Link `wasi:http/types` and `wasi:http/outgoing-handler`.
pub(crate) fn link<T: WasiHttpView + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// What an instance keeps for `wasi:http`: its context, and the hooks that
/// send through the plugin's granted upstreams.
pub(crate) struct WasiHttp {
    ctx: WasiHttpCtx,
    hooks: Granted,
}

impl WasiHttp {
    pub(crate) fn new(outbound: Arc<Outbound>) -> WasiHttp {
        WasiHttp {
            ctx: WasiHttpCtx::new(),
            hooks: Granted { outbound },
        }
    }

    /// `wasi:http`'s view, over the instance's resource table.
    pub(crate) fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table,
            ctx: &mut self.ctx,
        }
    }
}

struct Granted {
    outbound: Arc<Outbound>,
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for Granted {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let outbound = self.outbound.clone();
        Box::new(async move {
            let name = request.uri().host().unwrap_or_default().to_owned();
            // The body first, even for a refusal: a guest still writing it
            // when the request fails sees a broken stream, not the refusal
            // (StarlingMonkey then aborts its event loop).
            let (head, body) = request.into_parts();
            let body = Limited::new(body, MAX_OUTBOUND_BODY)
                .collect()
                .await
                .map_err(|_| Error::HttpRequestBodySize(None))?
                .to_bytes();
            let (upstream, timeout) = outbound
                .upstream(&name)
                .map_err(|_| Error::HttpRequestDenied)?;
            let mut outgoing = http::Request::new(body);
            *outgoing.method_mut() = head.method;
            *outgoing.headers_mut() = head.headers;
            *outgoing.uri_mut() = head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let response =
                tokio::time::timeout(timeout, upstream.send(outgoing, MAX_OUTBOUND_BODY))
                    .await
                    .map_err(|_| Error::HttpResponseTimeout)?
                    .map_err(|e| {
                        tracing::debug!(upstream = name, "wasi:http call failed: {e}");
                        Error::DestinationUnavailable
                    })?;
            let response = response.map(|body: Bytes| {
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync()
            });
            let done: Box<dyn Future<Output = Result<(), Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}
