//! HTTP calls to upstreams named in the gateway's configuration (never to
//! arbitrary hosts): for auth callouts, lookups and aggregation. Each
//! upstream needs a grant, `grants = ["http:<upstream>"]`; the gateway picks
//! the server, reuses connections and enforces the plugin's
//! `outbound_timeout`.

use std::time::Duration;

use crate::Error;
use crate::bindings::imports::sluice::filter::outbound as raw;

/// A request to a named upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The upstream's name in the configuration.
    pub upstream: String,
    /// The method.
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Header fields.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// A timeout shorter than the plugin's `outbound_timeout`, if wanted.
    pub timeout: Option<Duration>,
}

impl Outbound {
    /// A request with `method` for `path` on `upstream`.
    pub fn new(method: &str, upstream: &str, path: &str) -> Outbound {
        Outbound {
            upstream: upstream.into(),
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` for `path` on `upstream`.
    pub fn get(upstream: &str, path: &str) -> Outbound {
        Outbound::new("GET", upstream, path)
    }

    /// Add a header field.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Outbound {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Outbound {
        self.body = body.into();
        self
    }

    /// Give up sooner than the plugin's `outbound_timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Outbound {
        self.timeout = Some(timeout);
        self
    }

    /// Send it and wait for the whole response.
    pub fn send(self) -> Result<Answer, Error> {
        let headers = self.raw_headers();
        raw::send(self.as_raw(&headers))
            .map(Answer::from_raw)
            .map_err(Error::from)
    }

    fn raw_headers(&self) -> Vec<(&str, &str)> {
        (self.headers.iter())
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }

    fn as_raw<'a>(&'a self, headers: &'a [(&'a str, &'a str)]) -> raw::OutboundRequest<'a> {
        raw::OutboundRequest {
            upstream: &self.upstream,
            method: &self.method,
            path: &self.path,
            headers,
            body: &self.body,
            timeout_millis: self
                .timeout
                .map(|t| t.as_millis().min(u128::from(u32::MAX)) as u32),
        }
    }
}

/// Send several requests at once; the answers come in the same order.
pub fn send_all(requests: Vec<Outbound>) -> Vec<Result<Answer, Error>> {
    let headers: Vec<_> = requests.iter().map(Outbound::raw_headers).collect();
    let raw: Vec<_> = (requests.iter().zip(&headers))
        .map(|(request, headers)| request.as_raw(headers))
        .collect();
    raw::send_all(&raw)
        .into_iter()
        .map(|r| r.map(Answer::from_raw).map_err(Error::from))
        .collect()
}

/// An upstream's whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    fn from_raw(raw: raw::OutboundResponse) -> Answer {
        Answer {
            status: raw.status,
            headers: raw.headers,
            body: raw.body,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("not the JSON expected: {e}"))
    }
}
