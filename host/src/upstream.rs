//! Upstreams: a named group of servers, balanced round robin, over a pool of
//! keep-alive connections; and the proxy's rules for headers on the way.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::ProxyBody;
use crate::config::UpstreamConfig;

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
        /// What the client library said.
        source: hyper_util::client::legacy::Error,
    },
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
    targets: Vec<Authority>,
    next: AtomicUsize,
    timeout: Duration,
    client: Client<HttpConnector, ProxyBody>,
}

impl Upstream {
    /// Build from configuration; targets were validated when the config was parsed.
    pub fn new(name: &str, config: &UpstreamConfig) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Upstream {
            name: name.to_owned(),
            targets: config
                .targets
                .get_ref()
                .iter()
                .map(|t| t.parse().expect("validated in config"))
                .collect(),
            next: AtomicUsize::new(0),
            timeout: config.timeout,
            client,
        }
    }

    /// The next target, round robin.
    fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// Send `request` (already prepared by [`prepare_request`]) to the next target.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = self.pick().clone();
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(target.clone());
        uri.path_and_query = Some(path);
        *request.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) => Err(UpstreamError::Unreachable {
                upstream: self.name.clone(),
                target,
                source,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                target,
                timeout: self.timeout,
            }),
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Make a client's request fit to send upstream: hop-by-hop headers removed,
/// `X-Forwarded-*` set, the original host kept, HTTP/1.1 on the wire.
pub fn prepare_request(request: &mut Request<ProxyBody>, client_ip: IpAddr, secure: bool) {
    // HTTP/2 clients send `:authority` (in the URI), HTTP/1.1 clients `Host`.
    let authority = match request.uri().authority() {
        Some(authority) => HeaderValue::try_from(authority.as_str()).ok(),
        None => request.headers().get(header::HOST).cloned(),
    };
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client_ip}"),
        None => client_ip.to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    let proto = if secure { "https" } else { "http" };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(host) = authority {
        headers.insert("x-forwarded-host", host.clone());
        headers.entry(header::HOST).or_insert(host);
    }
    *request.version_mut() = Version::HTTP_11;
}
