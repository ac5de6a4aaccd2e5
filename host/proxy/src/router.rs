//! Matching a request to a route: host, path, method, headers; the most
//! specific match wins, and ties go to the route listed first.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::MatchConfig;

/// The conditions of one route, compiled from [`MatchConfig`]. Two equal
/// matchers take exactly the same requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// Why a [`MatchConfig`] could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("invalid header `{0}` in match")]
pub struct InvalidMatch(String);

impl Matcher {
    /// Compile the configured conditions.
    pub fn new(config: &MatchConfig) -> Result<Matcher, InvalidMatch> {
        let host = config.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h),
            }
        });
        let path = match (&config.path, &config.path_prefix) {
            (Some(p), _) => Some(PathMatch::Exact(p.clone())),
            (None, Some(p)) => Some(PathMatch::Prefix(p.trim_end_matches('/').to_owned())),
            (None, None) => None,
        };
        let mut methods: Vec<Method> = config
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .collect();
        methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        methods.dedup();
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::try_from(k.as_str()).map_err(|_| InvalidMatch(k.clone()))?;
                let value =
                    HeaderValue::try_from(v.as_str()).map_err(|_| InvalidMatch(k.clone()))?;
                Ok((name, value))
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            host,
            path,
            methods,
            headers,
        })
    }

    /// Whether a request with these parts takes this route. `host` is lowercase, without port.
    pub fn matches(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(HostMatch::Exact(h)), Some(host)) => h == host,
            (Some(HostMatch::Suffix(s)), Some(host)) => host.ends_with(s.as_str()),
            (Some(_), None) => false,
        };
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => p == path,
            Some(PathMatch::Prefix(p)) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
        };
        host_ok
            && path_ok
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .headers
                .iter()
                .all(|(k, v)| headers.get_all(k).iter().any(|have| have == v))
    }

    /// Orders matchers, greater is more specific: exact host, then wildcard host
    /// (longer first), then exact path, then prefix (longer first), then methods, then headers.
    fn specificity(&self) -> (u8, usize, u8, usize, bool, usize) {
        let (host_rank, host_len) = match &self.host {
            Some(HostMatch::Exact(h)) => (2, h.len()),
            Some(HostMatch::Suffix(s)) => (1, s.len()),
            None => (0, 0),
        };
        let (path_rank, path_len) = match &self.path {
            Some(PathMatch::Exact(p)) => (2, p.len()),
            Some(PathMatch::Prefix(p)) => (1, p.len()),
            None => (0, 0),
        };
        (
            host_rank,
            host_len,
            path_rank,
            path_len,
            !self.methods.is_empty(),
            self.headers.len(),
        )
    }
}

/// Routes ordered most specific first; the first that matches wins.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<(Matcher, T)>,
}

impl<T> RouteTable<T> {
    /// Build a table; `routes` are in configuration order, which breaks ties.
    pub fn new(routes: Vec<(Matcher, T)>) -> RouteTable<T> {
        let mut routes = routes;
        // A stable sort keeps configuration order among equally specific routes.
        routes.sort_by_key(|(matcher, _)| std::cmp::Reverse(matcher.specificity()));
        RouteTable { routes }
    }

    /// Every route, in match order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|(_, t)| t)
    }

    /// The route for this request, if any.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&T> {
        self.routes
            .iter()
            .find(|(m, _)| m.matches(host, path, method, headers))
            .map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(toml: &str) -> Matcher {
        Matcher::new(&toml::from_str::<MatchConfig>(toml).unwrap()).unwrap()
    }

    fn table(routes: &[&str]) -> RouteTable<usize> {
        RouteTable::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, m)| (matcher(m), i))
                .collect(),
        )
    }

    fn find(table: &RouteTable<usize>, host: &str, path: &str, method: &str) -> Option<usize> {
        let headers = HeaderMap::new();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let host = (!host.is_empty()).then_some(host);
        table.find(host, path, &method, &headers).copied()
    }

    #[test]
    fn the_most_specific_route_wins_whatever_the_order() {
        let routes = table(&[
            "",
            "path_prefix = \"/api\"",
            "path_prefix = \"/api/v2\"",
            "path = \"/api/v2/special\"",
            "host = \"*.example.com\"",
            "host = \"shop.example.com\"",
            "path_prefix = \"/api\"\nmethods = [\"POST\"]",
        ]);
        assert_eq!(find(&routes, "", "/", "GET"), Some(0));
        assert_eq!(find(&routes, "", "/api/x", "GET"), Some(1));
        assert_eq!(find(&routes, "", "/api/v2/x", "GET"), Some(2));
        assert_eq!(find(&routes, "", "/api/v2/special", "GET"), Some(3));
        assert_eq!(
            find(&routes, "a.example.com", "/api/v2/special", "GET"),
            Some(4)
        );
        assert_eq!(find(&routes, "shop.example.com", "/", "GET"), Some(5));
        assert_eq!(find(&routes, "", "/api/x", "POST"), Some(6));
    }

    #[test]
    fn prefixes_end_on_segment_boundaries() {
        let routes = table(&["path_prefix = \"/api/\""]);
        assert_eq!(find(&routes, "", "/api", "GET"), Some(0));
        assert_eq!(find(&routes, "", "/api/", "GET"), Some(0));
        assert_eq!(find(&routes, "", "/api/x", "GET"), Some(0));
        assert_eq!(find(&routes, "", "/apix", "GET"), None);
        assert_eq!(find(&routes, "", "/", "GET"), None);
    }

    #[test]
    fn hosts_methods_and_headers_narrow_a_route() {
        let wildcard = matcher("host = \"*.Example.com\"");
        let get = Method::GET;
        let none = HeaderMap::new();
        assert!(wildcard.matches(Some("a.example.com"), "/", &get, &none));
        assert!(!wildcard.matches(Some("example.com"), "/", &get, &none));
        assert!(!wildcard.matches(None, "/", &get, &none));
        let tenant = matcher("headers = { x-tenant = \"blue\" }\nmethods = [\"get\", \"HEAD\"]");
        let mut blue = HeaderMap::new();
        blue.append("x-tenant", HeaderValue::from_static("red"));
        blue.append("x-tenant", HeaderValue::from_static("blue"));
        assert!(tenant.matches(None, "/", &get, &blue));
        assert!(!tenant.matches(None, "/", &get, &none));
        assert!(!tenant.matches(None, "/", &Method::POST, &blue));
    }

    #[test]
    fn equally_specific_routes_keep_their_order_and_equal_ones_compare_equal() {
        let routes = table(&[
            "path_prefix = \"/a\"",
            "path_prefix = \"/b\"",
            "path_prefix = \"/c\"",
        ]);
        assert_eq!(find(&routes, "", "/b/x", "GET"), Some(1));
        assert_eq!(
            matcher("methods = [\"POST\", \"get\"]\npath_prefix = \"/x/\""),
            matcher("path_prefix = \"/x\"\nmethods = [\"GET\", \"POST\"]")
        );
    }
}
