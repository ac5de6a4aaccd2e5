//! What one request carries through the filters: the request head, what
//! the filters learned, and later the response head. A filter reaches it
//! through handles while it runs; the proxy owns it the rest of the time.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

/// Who a request is from, as set by an auth filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The principal.
    pub subject: String,
    /// Further facts about it, as name/value pairs.
    pub claims: Vec<(String, String)>,
}

/// The state of one request as it passes through a route's filters.
#[derive(Debug)]
pub struct Exchange {
    /// The request's number, unique while it runs (`request.id` in the WIT).
    pub id: u64,
    /// The request head as it will be sent upstream (filters may edit it).
    pub request: http::request::Parts,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Whether the client came over TLS.
    pub secure: bool,
    /// The client's port (0 when unknown).
    pub client_port: u16,
    /// The address the client connected to, when known.
    pub local: Option<std::net::SocketAddr>,
    /// The matched route's name.
    pub route: Arc<str>,
    /// Set by an auth filter.
    pub identity: Option<Identity>,
    /// The buffered request body, when a filter on the route asked for bodies.
    pub request_body: Option<Bytes>,
    /// The request body's trailers, when it was buffered and had some.
    pub request_trailers: Option<http::HeaderMap>,
    /// The response head, during the response phases.
    pub response: Option<http::response::Parts>,
    /// The buffered response body, when a filter on the route asked for bodies.
    pub response_body: Option<Bytes>,
    /// The response body's trailers, when it was buffered and had some.
    pub response_trailers: Option<http::HeaderMap>,
    /// Whether the filter running now may read and replace bodies.
    pub(crate) body_access: bool,
}

impl Exchange {
    /// A fresh exchange, number `id`, for a request that took `route`.
    pub fn new(
        id: u64,
        request: http::request::Parts,
        client_ip: IpAddr,
        route: Arc<str>,
    ) -> Exchange {
        Exchange {
            id,
            request,
            client_ip,
            secure: false,
            client_port: 0,
            local: None,
            route,
            identity: None,
            request_body: None,
            request_trailers: None,
            response: None,
            response_body: None,
            response_trailers: None,
            body_access: false,
        }
    }

    /// An empty exchange, to hold a place while the real one is lent to a call.
    pub(crate) fn placeholder() -> Box<Exchange> {
        let (request, ()) = http::Request::new(()).into_parts();
        Box::new(Exchange::new(
            0,
            request,
            IpAddr::from([0, 0, 0, 0]),
            Arc::from(""),
        ))
    }

    /// The host the client asked for (the edge put it in `Host`, whatever the protocol).
    pub fn authority(&self) -> Option<&str> {
        self.request
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    }
}

/// `ip` as text. IPv4 is written by hand: `Display` goes through the
/// formatting machinery and cost more than the rest of preparing a request
/// for its upstream (where `X-Forwarded-For` takes it), or than a filter's
/// call that asks for it.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
