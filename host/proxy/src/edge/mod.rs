//! The edge: what every request goes through before the router sees it, so
//! that the router, the filters and the upstream all read the same request.
//!
//! - the head is within the listener's limits (URI length, header count and bytes);
//! - the host is in one place: a `Host` header, required once on HTTP/1.1,
//!   taken from the request target (absolute form, HTTP/2 `:authority`)
//!   when there is one, and refused when the two disagree;
//! - the path is normalised ([`path`]);
//! - hop-by-hop headers are gone, before any filter runs;
//! - it has one request id ([`request_id`]).

pub mod path;
pub mod request_id;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, StatusCode, Uri, Version};
use smallvec::SmallVec;

pub use path::{EscapedSlashes, PathError, PathRules};

/// What a request knows of the connection it came on.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub client_ip: IpAddr,
    /// The client's port, and the address it connected to (for filters).
    pub client_port: u16,
    /// See `client_port`.
    pub local: Option<std::net::SocketAddr>,
    /// Whether it came over TLS.
    pub secure: bool,
    /// The listener's rules for request heads.
    pub edge: Arc<Edge>,
    /// The longest pause allowed in a request body.
    pub body_timeout: Duration,
    /// How long a connection may carry nothing (an upgraded one too).
    pub idle_timeout: Duration,
}

/// A listener's rules for request heads.
#[derive(Debug, Clone)]
pub struct Edge {
    /// How paths are normalised.
    pub path: PathRules,
    /// Most bytes of request line and headers together.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Longest request target (path and query).
    pub max_uri_bytes: usize,
    /// Keep a client's well-formed `x-request-id` rather than replace it.
    pub trust_request_id: bool,
    /// What becomes of header names with `_`.
    pub underscores: Underscores,
}

/// What to do with a request header whose name has an underscore:
/// backends that read headers through CGI-style names (WSGI, PHP, many
/// frameworks) see `x_user` and `x-user` both as `X_USER`, so a client's
/// `x_user` could pose as the identity a filter sets in `x-user`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Underscores {
    /// Remove the field (the default, as nginx does).
    #[default]
    Drop,
    /// Refuse the request with 400.
    Reject,
    /// Pass it on.
    Allow,
}

impl Default for Edge {
    fn default() -> Self {
        Edge {
            path: PathRules::default(),
            max_header_bytes: 32 << 10,
            max_headers: 100,
            max_uri_bytes: 8 << 10,
            trust_request_id: true,
            underscores: Underscores::Drop,
        }
    }
}

/// Why a request was refused at the edge; each maps to one status and one
/// `x-sluice-error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The path cannot be normalised safely.
    #[error("path refused: {0}")]
    Path(PathError),
    /// No `Host` on HTTP/1.1, several, an invalid one, or one that disagrees with the target.
    #[error("host refused: {0}")]
    Host(&'static str),
    /// Too many header fields, or too many bytes of them.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// A request target longer than the listener allows.
    #[error("request target too long")]
    UriTooLong,
    /// `CONNECT`: this is a reverse proxy, not a tunnel.
    #[error("method not allowed")]
    Method,
    /// A header name with `_`, on a listener that refuses them.
    #[error("a header name with an underscore")]
    Underscore,
}

impl Refusal {
    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Path(_) | Refusal::Host(_) | Refusal::Underscore => StatusCode::BAD_REQUEST,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The `x-sluice-error` code (and metric label).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Path(_) => "invalid_path",
            Refusal::Host(_) => "invalid_host",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::Method => "method_not_allowed",
            Refusal::Underscore => "invalid_header",
        }
    }
}

impl Edge {
    /// Check the request head and bring it into the one form the rest of the
    /// gateway reads: origin-form target with a normalised path, the host in
    /// `Host`, no hop-by-hop headers.
    pub fn admit(&self, head: &mut http::request::Parts) -> Result<(), Refusal> {
        if head.method == Method::CONNECT {
            return Err(Refusal::Method);
        }
        let target_len = head.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > self.max_uri_bytes {
            return Err(Refusal::UriTooLong);
        }
        let underscores = self.check_header_size(&head.method, target_len, &head.headers)?;
        if underscores {
            self.underscored(&mut head.headers)?;
        }
        one_host(head)?;
        normalize_target(&mut head.uri, self.path)?;
        strip_hop_by_hop(&mut head.headers);
        if head.version >= Version::HTTP_2 {
            join_cookies(&mut head.headers);
        }
        Ok(())
    }

    /// Check the head's size; answers whether a header name has an `_`
    /// (found on the same pass).
    fn check_header_size(
        &self,
        method: &Method,
        target_len: usize,
        headers: &HeaderMap,
    ) -> Result<bool, Refusal> {
        if headers.len() > self.max_headers {
            return Err(Refusal::HeadersTooLarge);
        }
        // As on the wire: `name: value\r\n`, after a request line.
        let line = method.as_str().len() + target_len + 12;
        let mut fields = 0;
        let mut underscores = false;
        for (name, value) in headers {
            fields += name.as_str().len() + value.len() + 4;
            underscores |= name.as_str().contains('_');
        }
        if line + fields > self.max_header_bytes {
            return Err(Refusal::HeadersTooLarge);
        }
        Ok(underscores)
    }

    /// Apply the listener's rule to header names with `_`.
    fn underscored(&self, headers: &mut HeaderMap) -> Result<(), Refusal> {
        match self.underscores {
            Underscores::Allow => Ok(()),
            Underscores::Reject => Err(Refusal::Underscore),
            Underscores::Drop => {
                let named: Vec<HeaderName> = headers
                    .keys()
                    .filter(|name| name.as_str().contains('_'))
                    .cloned()
                    .collect();
                for name in named {
                    headers.remove(name);
                }
                Ok(())
            }
        }
    }
}

/// Settle the host: exactly one valid `Host`, which the request target's
/// authority (absolute form or `:authority`) overrides or must agree with.
fn one_host(head: &mut http::request::Parts) -> Result<(), Refusal> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(Refusal::Host("more than one Host header"));
    }
    let target = head.uri.authority();
    // Whether `Host` stands as the client sent it (a target's authority
    // replaces it otherwise).
    let (host, sent) = match (target, host) {
        (Some(target), Some(host)) if head.version >= Version::HTTP_2 => {
            if !target
                .as_str()
                .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
            {
                return Err(Refusal::Host(":authority and Host disagree"));
            }
            (host, true)
        }
        // RFC 9112 §3.2.2: the absolute form's authority replaces `Host`
        // (which HTTP/1.1 still requires).
        (Some(target), host) => {
            if host.is_none() && head.version == Version::HTTP_11 {
                return Err(Refusal::Host("no Host header"));
            }
            let host = HeaderValue::from_str(target.as_str())
                .map_err(|_| Refusal::Host("invalid host"))?;
            (host, false)
        }
        (None, Some(host)) => (host, true),
        (None, None) if head.version == Version::HTTP_10 || head.version == Version::HTTP_09 => {
            return Ok(());
        }
        (None, None) => return Err(Refusal::Host("no Host header")),
    };
    if sent && plain_host(host.as_bytes()) {
        return Ok(());
    }
    let authority = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<Authority>().ok())
        .filter(|a| !a.as_str().contains('@') && !a.host().is_empty())
        .ok_or(Refusal::Host("invalid host"))?;
    // `admin.example.` is `admin.example` (a fully qualified name): route it so.
    let host = match authority.host().strip_suffix('.') {
        Some("") => return Err(Refusal::Host("invalid host")),
        Some(name) => {
            let port = authority
                .port()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            HeaderValue::try_from(format!("{name}{port}"))
                .map_err(|_| Refusal::Host("invalid host"))?
        }
        None => host,
    };
    head.headers.insert(header::HOST, host);
    Ok(())
}

/// A host as most clients send it: a name or IPv4 address of letters,
/// digits, dots and dashes, not ending in a dot, and maybe a numeric port.
/// It is a valid authority that needs no rewriting, so it needs no parsing.
fn plain_host(host: &[u8]) -> bool {
    // One pass over the name, a table lookup a byte.
    let end = host.iter().position(|&b| !NAME_BYTES[usize::from(b)]);
    let (name, port) = host.split_at(end.unwrap_or(host.len()));
    !name.is_empty()
        && !name.ends_with(b".")
        && port
            .split_first()
            .is_none_or(|(&colon, digits)| colon == b':' && digits.iter().all(u8::is_ascii_digit))
}

/// The bytes of a plain host's name: letters, digits, dots and dashes.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
        b += 1;
    }
    table
};

/// HTTP/2 lets a client send `cookie` as several fields (RFC 9113 §8.2.3);
/// an HTTP/1.1 upstream, and filters, expect one, joined with `; `.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Origin form (path and query only), with the path normalised.
fn normalize_target(uri: &mut Uri, rules: PathRules) -> Result<(), Refusal> {
    let original = uri.path_and_query().cloned();
    let path = uri.path();
    let normal = match path {
        // `OPTIONS *` (asterisk form) has no path to normalise.
        "*" => None,
        _ => path::normalize(path, rules).map_err(Refusal::Path)?,
    };
    if normal.is_none() && uri.authority().is_none() {
        return Ok(());
    }
    let target = match (normal, uri.query()) {
        (Some(path), Some(query)) => PathAndQuery::try_from(format!("{path}?{query}")),
        (Some(path), None) => PathAndQuery::try_from(path),
        (None, _) => Ok(original.unwrap_or_else(|| PathAndQuery::from_static("/"))),
    }
    .map_err(|_| Refusal::Path(PathError::BadEscape))?;
    *uri = Uri::from(target);
    Ok(())
}

/// The names that describe one connection, not the message (RFC 9110
/// §7.6.1), and two older such headers that still turn up. Every header of
/// every message is compared with them, so as text: a `const` of header
/// names would be built and dropped at each use.
const HOP_BY_HOP: [&str; 9] = [
    // First: it is taken apart, not just removed.
    "connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
];

/// The lengths of those names, a bit each: most headers differ in length
/// from all nine, and are passed over on one test.
const HOP_BY_HOP_LENGTHS: u32 = {
    let mut bits = 0;
    let mut i = 0;
    while i < HOP_BY_HOP.len() {
        bits |= 1 << HOP_BY_HOP[i].len();
        i += 1;
    }
    bits
};

/// `Transfer-Encoding`'s place in [`HOP_BY_HOP`].
const CHUNKED: usize = 1;

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none or one of them (`Connection`): note those
    // present, a bit each, rather than look up all nine in every message.
    let mut present = 0u16;
    for name in headers.keys() {
        let name = name.as_str();
        if name.len() < 32
            && HOP_BY_HOP_LENGTHS & (1 << name.len()) != 0
            && let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name)
        {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` goes with the names it lists, but for those in the list
    // above (its usual `keep-alive` costs no lookup): one probe takes all
    // its fields, and their tokens are cut from the bytes as they are.
    let mut named = SmallVec::<[HeaderName; 2]>::new();
    if present & 1 != 0
        && let Entry::Occupied(connection) = headers.entry(header::CONNECTION)
    {
        for value in connection.remove_entry_mult().1 {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let listed =
                    (HOP_BY_HOP.iter()).any(|hop| token.eq_ignore_ascii_case(hop.as_bytes()));
                if !token.is_empty() && !listed {
                    named.extend(HeaderName::from_bytes(token).ok());
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    // A message framed by `Transfer-Encoding` goes on de-chunked, so a
    // `Content-Length` beside it is stale (RFC 9112 §6.3): it goes too.
    if present & (1 << CHUNKED) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in named {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: Version, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn admit(mut head: http::request::Parts) -> Result<http::request::Parts, Refusal> {
        Edge::default().admit(&mut head).map(|()| head)
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        let ok = admit(head(Version::HTTP_11, "/x", &[("host", "a.test")])).unwrap();
        assert_eq!(ok.headers["host"], "a.test");
        for headers in [
            &[][..],
            &[("host", "a.test"), ("host", "b.test")][..],
            &[("host", "user@a.test")][..],
            &[("host", "a b")][..],
        ] {
            assert!(
                matches!(
                    admit(head(Version::HTTP_11, "/x", headers)),
                    Err(Refusal::Host(_))
                ),
                "{headers:?}"
            );
        }
        // HTTP/1.0 may leave it out.
        assert!(admit(head(Version::HTTP_10, "/x", &[])).is_ok());
    }

    #[test]
    fn the_target_authority_wins_or_must_agree() {
        let absolute = admit(head(
            Version::HTTP_11,
            "http://a.test/x?q=1",
            &[("host", "b.test")],
        ))
        .unwrap();
        assert_eq!(absolute.headers["host"], "a.test");
        assert_eq!(absolute.uri, "/x?q=1");
        assert_eq!(absolute.uri.authority(), None);

        let h2 = admit(head(Version::HTTP_2, "https://a.test/x", &[])).unwrap();
        assert_eq!(h2.headers["host"], "a.test");
        assert!(
            admit(head(
                Version::HTTP_2,
                "https://a.test/x",
                &[("host", "A.test")]
            ))
            .is_ok()
        );
        assert_eq!(
            admit(head(
                Version::HTTP_2,
                "https://a.test/x",
                &[("host", "b.test")]
            ))
            .unwrap_err(),
            Refusal::Host(":authority and Host disagree")
        );
    }

    #[test]
    fn limits_and_methods() {
        let long = format!("/{}", "a".repeat(9000));
        let refused = admit(head(Version::HTTP_11, &long, &[("host", "a")])).unwrap_err();
        assert_eq!(refused.status(), StatusCode::URI_TOO_LONG);
        let big = "v".repeat(33 << 10);
        let refused = admit(head(
            Version::HTTP_11,
            "/",
            &[("host", "a"), ("x-big", &big)],
        ));
        assert_eq!(refused.unwrap_err(), Refusal::HeadersTooLarge);
        let connect = http::Request::builder()
            .method("CONNECT")
            .uri("a.test:443")
            .header("host", "a.test:443")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(admit(connect).unwrap_err(), Refusal::Method);
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let admitted = admit(head(
            Version::HTTP_11,
            "/x",
            &[
                ("host", "a"),
                ("connection", "keep-alive, x-user"),
                ("x-user", "forged"),
                ("te", "trailers"),
                ("x-kept", "1"),
            ],
        ))
        .unwrap();
        let names: Vec<&str> = admitted.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn a_trailing_dot_in_the_host_is_the_same_host() {
        let admitted = admit(head(Version::HTTP_11, "/x", &[("host", "admin.example.")]));
        assert_eq!(admitted.unwrap().headers["host"], "admin.example");
        let admitted = admit(head(Version::HTTP_11, "/x", &[("host", "a.test.:8080")]));
        assert_eq!(admitted.unwrap().headers["host"], "a.test:8080");
        assert!(admit(head(Version::HTTP_11, "/x", &[("host", ".")])).is_err());
    }

    #[test]
    fn a_plain_host_stands_as_the_full_parse_would_leave_it() {
        let hosts = [
            "a",
            "shop.test",
            "Shop.Test:8080",
            "10.0.0.1:80",
            "a:",
            "a-b.c",
            "a..b",
        ];
        for host in hosts {
            assert!(plain_host(host.as_bytes()), "{host}");
            let parts = head(Version::HTTP_11, "/x", &[("host", host)]);
            // The parse the fast path skips accepts it and leaves it alone.
            let authority: Authority = host.parse().unwrap();
            assert!(!authority.host().is_empty() && !authority.host().ends_with('.'));
            assert_eq!(admit(parts).unwrap().headers["host"], host);
        }
        for host in [
            "", ".", "a.", "a.:80", "a@b", "[::1]:80", "a b", "a:8x", "a_b",
        ] {
            assert!(!plain_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn connection_names_its_own_list_cheaply_and_others_by_name() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "Keep-Alive, close, X-Trace"),
            // A second field is the same list; empty items count for nothing.
            ("connection", " ,X-Second ,"),
            ("x-second", "1"),
            ("keep-alive", "timeout=5"),
            ("close", "1"),
            ("x-trace", "1"),
            ("upgrade", "h2c"),
            ("content-length", "3"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn header_names_with_underscores_are_dropped_refused_or_allowed() {
        let sent = [("host", "a"), ("x_user", "mallory"), ("x-user", "alice")];
        let admitted = admit(head(Version::HTTP_11, "/x", &sent)).unwrap();
        let names: Vec<&str> = admitted.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-user"]);
        let with = |underscores| {
            let mut parts = head(Version::HTTP_11, "/x", &sent);
            let edge = Edge {
                underscores,
                ..Edge::default()
            };
            edge.admit(&mut parts).map(|()| parts.headers.len())
        };
        assert_eq!(with(Underscores::Reject), Err(Refusal::Underscore));
        assert_eq!(with(Underscores::Allow), Ok(3));
    }

    #[test]
    fn http2_cookies_reach_upstreams_as_one_field() {
        let sent = [("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")];
        let admitted = admit(head(Version::HTTP_2, "https://a.test/x", &sent)).unwrap();
        let cookies: Vec<_> = admitted.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn a_length_beside_transfer_encoding_goes_with_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn the_path_is_normalised_and_the_query_kept() {
        let admitted = admit(head(
            Version::HTTP_11,
            "//%61pi/./orders?a=%2F",
            &[("host", "a")],
        ));
        assert_eq!(admitted.unwrap().uri, "/api/orders?a=%2F");
        let refused = admit(head(Version::HTTP_11, "/api%2forders", &[("host", "a")]));
        assert_eq!(refused.unwrap_err(), Refusal::Path(PathError::EscapedSlash));
    }
}
