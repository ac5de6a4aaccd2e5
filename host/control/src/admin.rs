//! The admin listener: operators' endpoints, on their own address (a
//! loopback one unless configured `public`).
//!
//! - `GET /healthz`: `ok`, to anyone;
//! - `GET /readyz`: `ready` (200) once a configuration is live, else 503, to
//!   anyone (a fleet member waits for etcd or its snapshot);
//! - `GET /fleet`: the fleet's configuration revision and every instance,
//!   as each published itself (its revision, what it refused), when
//!   `[fleet]` is configured;
//! - `GET /metrics`: Prometheus text (to anyone if `public_metrics`);
//! - `POST /reload`: read the configuration and plugin files again;
//! - `GET /plugins`: what is loaded (name, version, sha256, origin, when, routes);
//! - `PUT /plugins/<name>` with a component as the body: make it the active
//!   version (under `[trust]`, with its signature in `x-sluice-signature`);
//! - `POST /plugins/<name>/rollback`: back to the previous version.
//! - `GET /routes`, `GET /upstreams` (with each target's health), `GET /config`
//!   (the configuration in force, secrets redacted): JSON;
//! - `GET /dashboard`: a page showing all of it, with live request and error
//!   rates (open, like its script: it holds no data, and asks for it with
//!   the token given in its address, `#token=...`, or typed in).
//!
//! It changes running code, so everything else needs the bearer token, a
//! `Host` it knows itself by (no DNS rebinding), and for changes a content
//! type no HTML form can send (`application/json`, or `application/wasm`
//! for uploads). Changes answer `200` with the new state, or with why
//! nothing changed: `422` (invalid), `404` (no such plugin), `409` (nothing
//! to roll back to).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

use super::{Applied, ChangeError, Control};
use crate::config::{AdminConfig, ConfigError, Source};
use sluice_proxy::body::{self, ProxyBody};

/// Largest component accepted by an upload.
const MAX_UPLOAD: usize = 64 << 20;
/// How long a client has to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the admin API.
pub struct AdminAccess {
    token: String,
    /// Host names (without port, lowercase) it answers to.
    hosts: Vec<String>,
    public_metrics: bool,
}

impl AdminAccess {
    /// The access rules of `config`, for a listener bound at `local`.
    pub fn new(
        config: &AdminConfig,
        source: &Source,
        local: SocketAddr,
    ) -> Result<AdminAccess, ConfigError> {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .chain(config.hosts.iter().map(|h| h.to_ascii_lowercase()))
            .collect();
        hosts.push(match local.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        Ok(AdminAccess {
            token: config.read_token(source)?,
            hosts,
            public_metrics: config.public_metrics,
        })
    }

    /// Why `head` may not go further, if it may not.
    fn refuse(&self, head: &http::request::Parts) -> Option<Response<ProxyBody>> {
        let host = head
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok());
        let known = host.is_some_and(|h| {
            let name = h.host().to_ascii_lowercase();
            self.hosts.contains(&name)
        });
        if !known {
            return Some(error(
                StatusCode::MISDIRECTED_REQUEST,
                "the admin API does not answer to this host name (see `admin.hosts`)",
            ));
        }
        // The dashboard's page and script hold no data: they ask for it with
        // the token the operator gives the page.
        let open = matches!(
            head.uri.path(),
            "/healthz" | "/readyz" | "/dashboard" | "/dashboard.js" | "/dashboard.css"
        ) || (self.public_metrics && head.uri.path() == "/metrics");
        if !open && !self.authorized(&head.headers) {
            let mut refused = error(
                StatusCode::UNAUTHORIZED,
                "a valid admin bearer token is required",
            );
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
            );
            return Some(refused);
        }
        let wanted = match head.method {
            Method::GET | Method::HEAD => return None,
            Method::PUT => "application/wasm",
            _ => "application/json",
        };
        let sent = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        match sent.is_some_and(|t| t.eq_ignore_ascii_case(wanted)) {
            true => None,
            false => Some(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("changes need `Content-Type: {wanted}`"),
            )),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let offered = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            // Auth schemes are case-insensitive (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        constant_time_eq(offered.as_bytes(), self.token.as_bytes())
    }
}

/// Compare without an early exit, so timing does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    diff == 0
}

/// Serve admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, access: AdminAccess, control: Arc<Control>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    let access = Arc::new(access);
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (control, access, builder) = (control.clone(), access.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (control, access) = (control.clone(), access.clone());
                async move { Ok::<_, Infallible>(answer(request, &access, &control).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    access: &AdminAccess,
    control: &Control,
) -> Response<ProxyBody> {
    let (head, incoming) = request.into_parts();
    if let Some(refused) = access.refuse(&head) {
        return refused;
    }
    let path = head.uri.path().trim_end_matches('/');
    let plugin = path.strip_prefix("/plugins/");
    match (&head.method, path) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            control.metrics().render(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => match control.ready() {
            true => text(StatusCode::OK, "text/plain", "ready\n".into()),
            false => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: no configuration from the fleet yet\n".into(),
            ),
        },
        (&Method::GET, "/fleet") => match control.fleet().await {
            Some(Ok(instances)) => json(StatusCode::OK, &instances),
            Some(Err(e)) => error(StatusCode::BAD_GATEWAY, &e),
            None => error(StatusCode::NOT_FOUND, "no [fleet] is configured"),
        },
        (&Method::POST, "/reload") => changed(control.reload().await),
        (&Method::GET, "/plugins") => json(StatusCode::OK, &control.plugins().await),
        (&Method::GET, "/routes") => json(StatusCode::OK, &control.gateway().route_views()),
        (&Method::GET, "/upstreams") => json(StatusCode::OK, &control.gateway().upstream_views()),
        (&Method::GET, "/config") => json(StatusCode::OK, &control.redacted_config().await),
        (&Method::GET, "/dashboard") => page("text/html; charset=utf-8", DASHBOARD_HTML),
        (&Method::GET, "/dashboard.js") => page("text/javascript; charset=utf-8", DASHBOARD_JS),
        (&Method::GET, "/dashboard.css") => page("text/css; charset=utf-8", DASHBOARD_CSS),
        (&Method::PUT, _) if plugin.is_some_and(|p| !p.contains('/')) => {
            let name = plugin.expect("checked above");
            match body::collect(body::stream(incoming), MAX_UPLOAD).await {
                Ok(bytes) => match signature(&head.headers) {
                    Ok(signature) => changed(control.upload(name, bytes.to_vec(), signature).await),
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                },
                Err(e) => error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
            }
        }
        (&Method::POST, _) if plugin.is_some_and(|p| p.ends_with("/rollback")) => {
            let name = plugin
                .and_then(|p| p.strip_suffix("/rollback"))
                .expect("checked above");
            changed(control.rollback(name).await)
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

fn changed(result: Result<Applied, ChangeError>) -> Response<ProxyBody> {
    match result {
        Ok(applied) => json(StatusCode::OK, &applied),
        Err(e) => {
            let status = match e {
                ChangeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ChangeError::UnknownPlugin(_) => StatusCode::NOT_FOUND,
                ChangeError::NoPrevious(_) => StatusCode::CONFLICT,
            };
            error(status, &e.to_string())
        }
    }
}

/// An upload's detached signature: the `.minisig` file, base64-encoded in
/// `x-sluice-signature` (a header holds one line; the file has four).
fn signature(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    use base64::Engine;
    let Some(value) = headers.get("x-sluice-signature") else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    decoded
        .map(Some)
        .ok_or("x-sluice-signature must be the .minisig file, base64-encoded")
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
    }
    json(status, &Error { error: message })
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<ProxyBody> {
    let mut text = serde_json::to_string_pretty(value).expect("plain data serializes");
    text.push('\n');
    self::text(status, "application/json", text)
}

/// The dashboard: a page and its script, which polls the JSON endpoints.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// A static page, kept out of frames and limited to this origin's scripts.
fn page(content_type: &'static str, body: &'static str) -> Response<ProxyBody> {
    let mut response = text(StatusCode::OK, content_type, body.to_owned());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
    }
}
