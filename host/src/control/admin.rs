//! The admin listener: operators' endpoints, on their own address (a
//! loopback one unless configured `public`).
//!
//! - `GET /metrics`: Prometheus text; `GET /healthz`: `ok`;
//! - `POST /reload`: read the configuration and plugin files again;
//! - `GET /plugins`: what is loaded (name, version, sha256, origin, when, routes);
//! - `PUT /plugins/<name>` with a component as the body: make it the active version;
//! - `POST /plugins/<name>/rollback`: back to the previous version.
//!
//! Changes answer `200` with the new state, or with why nothing changed:
//! `422` (invalid), `404` (no such plugin), `409` (nothing to roll back to).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

use super::{Applied, ChangeError, Control};
use crate::body::{self, ProxyBody};

/// Largest component accepted by an upload.
const MAX_UPLOAD: usize = 64 << 20;

/// Serve admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, control: Arc<Control>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let control = control.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(answer(request, &control).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, control: &Control) -> Response<ProxyBody> {
    let (head, incoming) = request.into_parts();
    let path = head.uri.path().trim_end_matches('/');
    let plugin = path.strip_prefix("/plugins/");
    match (&head.method, path) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            control.metrics().render(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::POST, "/reload") => changed(control.reload().await),
        (&Method::GET, "/plugins") => json(StatusCode::OK, &control.plugins().await),
        (&Method::PUT, _) if plugin.is_some_and(|p| !p.contains('/')) => {
            let name = plugin.expect("checked above");
            match body::collect(body::stream(incoming), MAX_UPLOAD).await {
                Ok(bytes) => changed(control.upload(name, bytes.to_vec()).await),
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

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
