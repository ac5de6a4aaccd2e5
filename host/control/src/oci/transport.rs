//! HTTP to registries: one connection per request (a pull is a handful of
//! requests, made off the request path), TLS unless the registry is on
//! loopback or listed as plain HTTP, redirects followed (blobs are often
//! served from elsewhere), and every body read under a size limit.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A registry's answer, read whole.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to reach registries.
pub(crate) struct Transport {
    tls: TlsConnector,
    plain_http: Vec<String>,
}

/// The longest one request may take, connecting and reading included.
const TIMEOUT: Duration = Duration::from_secs(60);
const REDIRECTS: usize = 5;

impl Transport {
    /// Trust `ca` (the system's roots without it); speak plain HTTP to
    /// registries on loopback and to those in `plain_http`.
    pub(crate) fn new(ca: Option<&Path>, plain_http: &[String]) -> Result<Transport, String> {
        let tls = sluice_proxy::tls::connector(ca, None, &[b"http/1.1"])?;
        Ok(Transport {
            tls,
            plain_http: plain_http.to_vec(),
        })
    }

    /// `https://registry` or, for loopback and listed ones, `http://registry`.
    pub(crate) fn base(&self, registry: &str) -> String {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(registry, |(host, _)| host);
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match loopback || self.plain_http.iter().any(|p| p == registry) {
            true => format!("http://{registry}"),
            false => format!("https://{registry}"),
        }
    }

    /// Send `method url` with `headers` and `body`, following redirects;
    /// a body over `limit` bytes is an error.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        limit: usize,
    ) -> Result<Answer, String> {
        let mut url: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let origin = url.authority().cloned();
        let mut headers = headers.to_vec();
        for _ in 0..=REDIRECTS {
            let answer = tokio::time::timeout(
                TIMEOUT,
                self.once(method.clone(), &url, &headers, body.clone(), limit),
            )
            .await
            .map_err(|_| format!("{url}: no answer in {TIMEOUT:?}"))??;
            if !answer.status.is_redirection() {
                return Ok(answer);
            }
            let location = answer
                .header("location")
                .ok_or_else(|| format!("{url}: a redirect without a location"))?;
            url = resolve(&url, location)?;
            // Credentials are for the registry, not for where it sends blobs.
            if url.authority() != origin.as_ref() {
                headers.retain(|(name, _)| name != header::AUTHORIZATION);
            }
        }
        Err(format!("{url}: more than {REDIRECTS} redirects"))
    }

    async fn once(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        limit: usize,
    ) -> Result<Answer, String> {
        let fail = |e: &dyn std::fmt::Display| format!("{url}: {e}");
        let host = url.host().ok_or_else(|| fail(&"no host"))?;
        let tls = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(fail(&"only http and https are spoken")),
        };
        let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| fail(&e))?;
        let mut request = Request::builder()
            .method(method)
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, url.authority().map_or(host, |a| a.as_str()))
            .header(
                header::USER_AGENT,
                concat!("sluice/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|e| fail(&e))?;
        let response = match tls {
            true => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| fail(&e))?;
                let stream = self.tls.connect(name, tcp).await.map_err(|e| fail(&e))?;
                exchange(TokioIo::new(stream), request).await
            }
            false => exchange(TokioIo::new(tcp), request).await,
        }
        .map_err(|e| fail(&e))?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| fail(&format!("reading the body: {e}")))?
            .to_bytes();
        Ok(Answer {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

/// One request on a fresh HTTP/1.1 connection (etcd's client sends its own this way too).
pub(crate) async fn exchange<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await
}

/// Where a `location` (absolute, or a path on the same server) points.
pub(crate) fn resolve(base: &Uri, location: &str) -> Result<Uri, String> {
    let url = match location.starts_with('/') {
        true => {
            let scheme = base.scheme_str().unwrap_or("https");
            let authority = base.authority().map_or("", |a| a.as_str());
            format!("{scheme}://{authority}{location}")
        }
        false => location.to_owned(),
    };
    url.parse()
        .map_err(|e| format!("{base}: a bad location `{location}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_are_plain_http() {
        let t = Transport {
            tls: sluice_proxy::tls::connector(
                Some(Path::new(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../tests/fixtures/tls/cert.pem"
                ))),
                None,
                &[],
            )
            .unwrap(),
            plain_http: vec!["registry.lan:5000".into()],
        };
        assert_eq!(t.base("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(t.base("localhost"), "http://localhost");
        assert_eq!(t.base("[::1]:5000"), "http://[::1]:5000");
        assert_eq!(t.base("registry.lan:5000"), "http://registry.lan:5000");
        assert_eq!(t.base("ghcr.io"), "https://ghcr.io");
    }

    #[test]
    fn locations_resolve_against_the_server() {
        let base: Uri = "http://127.0.0.1:5000/v2/a/blobs/uploads/".parse().unwrap();
        assert_eq!(
            resolve(&base, "/v2/a/blobs/uploads/u1?_state=x")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example/blob")
                .unwrap()
                .to_string(),
            "https://cdn.example/blob"
        );
    }
}
