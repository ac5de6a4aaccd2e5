//! Upstreams: a named group of servers, balanced round robin, over a pool of
//! keep-alive connections; and the proxy's rules for headers on the way.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};

use crate::body::{BoxError, ClientBodyError, ProxyBody, Upload};
use crate::config::UpstreamConfig;
use crate::edge::strip_hop_by_hop;

mod pool;

use pool::Pool;
pub use pool::UpstreamBody;

/// Why an upstream exchange failed, and so which status the client sees.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection, or it broke before a response: 502.
    #[error("upstream `{upstream}` ({target}) unreachable: {source}")]
    Unreachable {
        /// The upstream's name.
        upstream: String,
        /// The server tried.
        target: Authority,
        /// What went wrong: connecting, or the exchange.
        source: BoxError,
    },
    /// The client's request body failed on the way (too large, too slow).
    #[error("{0}")]
    ClientBody(ClientBodyError),
    /// No response head in time: 504.
    #[error("upstream `{upstream}` ({target}) timed out after {timeout:?}")]
    Timeout {
        /// The upstream's name.
        upstream: String,
        /// The server tried.
        target: Authority,
        /// The configured limit.
        timeout: Duration,
    },
}

/// A named group of interchangeable servers.
pub struct Upstream {
    /// The name from the configuration.
    pub name: String,
    servers: Vec<Arc<Pool>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Upstream {
    /// Build from configuration; targets were validated when the config was parsed.
    pub fn new(name: &str, config: &UpstreamConfig) -> Upstream {
        Upstream {
            name: name.to_owned(),
            servers: config
                .targets
                .get_ref()
                .iter()
                .map(|t| {
                    let target = t.parse().expect("validated in config");
                    Pool::new(target, config.connect_timeout, config.idle_timeout)
                })
                .collect(),
            next: AtomicUsize::new(0),
            timeout: config.timeout,
        }
    }

    /// The next server, round robin.
    fn pick(&self) -> &Arc<Pool> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.servers[i % self.servers.len()]
    }

    /// Send `request` (already prepared by [`prepare_request`]) to the next
    /// server, over HTTP/1.1 on a pooled connection. The response timeout
    /// runs from the end of the client's `upload`, if there is one: how long
    /// a client takes to send its body is the body timeout's business.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        upload: Option<&Upload>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let server = self.pick();
        // Origin form on the wire; the host travels in its header.
        if request.uri().authority().is_some() {
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(server.target.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        let exchange = exchange(server, request);
        tokio::pin!(exchange);
        let answered = loop {
            let started = upload
                .map_or(Some(Instant::now()), Upload::finished_at)
                .unwrap_or_else(Instant::now);
            let deadline = tokio::time::Instant::from_std(started + self.timeout);
            match tokio::time::timeout_at(deadline, &mut exchange).await {
                Err(_) if upload.is_some_and(|u| u.finished_at().is_none_or(|t| t > started)) => {
                    continue;
                }
                answered => break answered,
            }
        };
        match answered {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) if ClientBodyError::find(&*source).is_some() => Err(
                UpstreamError::ClientBody(ClientBodyError::find(&*source).expect("found above")),
            ),
            Ok(Err(source)) => Err(UpstreamError::Unreachable {
                upstream: self.name.clone(),
                target: server.target.clone(),
                source,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                target: server.target.clone(),
                timeout: self.timeout,
            }),
        }
    }
}

/// One exchange with `server`. A pooled connection the server closed while
/// idle hands the request back unsent; it is tried once more on a new one.
async fn exchange(
    server: &Arc<Pool>,
    request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, BoxError> {
    let conn = server.checkout().await?;
    let reused = conn.reused;
    match conn.send(request).await {
        Ok(response) => Ok(response),
        Err((_, Some(unsent))) if reused => server
            .connect()
            .await?
            .send(unsent)
            .await
            .map_err(|(error, _)| error),
        Err((error, _)) => Err(error),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Make a client's request fit to send upstream: `X-Forwarded-*` set, the
/// original host kept, HTTP/1.1 on the wire. The client's hop-by-hop
/// headers went at the edge; any a filter added go now.
pub fn prepare_request(request: &mut Request<ProxyBody>, client_ip: IpAddr, secure: bool) {
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client_ip}"),
        None => client_ip.to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto = if secure { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    *request.version_mut() = Version::HTTP_11;
}

/// Plugins granted `http:<name>` call upstreams through the same pools.
#[async_trait::async_trait]
impl sluice_filter::HttpUpstream for Upstream {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(
        &self,
        request: Request<bytes::Bytes>,
        limit: usize,
    ) -> Result<Response<bytes::Bytes>, String> {
        let response = Upstream::send(self, request.map(crate::body::full), None)
            .await
            .map_err(|e| e.to_string())?;
        let (head, incoming) = response.into_parts();
        let body = crate::body::collect(crate::body::stream(incoming), limit)
            .await
            .map_err(|e| format!("upstream `{}`: reading the body: {e}", self.name))?;
        Ok(Response::from_parts(head, body))
    }
}
