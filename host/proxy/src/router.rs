//! Matching a request to a route: host, path, method, headers; the most
//! specific match wins, and ties go to the route listed first.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::MatchConfig;

/// The conditions of one route, compiled from [`MatchConfig`]. Two equal
/// matchers take exactly the same requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Matcher {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// Routes ordered most specific first; the first that matches wins. An
/// index keyed by host and path finds the few routes a request could take,
/// so matching costs the same with ten routes or ten thousand.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<(Matcher, T)>,
    index: Index,
}

/// Keyed by the configuration's strings, looked up by the request's: a
/// fast hash, as the keys are fixed when the table is built.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Positions in the table (ascending: most specific first) by host, then path.
#[derive(Debug, Default)]
struct Index {
    exact_hosts: Map<Paths>,
    /// `*.example.com` by `.example.com`: a host is looked up by each of its
    /// suffixes that starts at a dot.
    wildcard_hosts: Map<Paths>,
    /// Wildcards without a dot after the `*` (`*example.com`), tried in turn.
    odd_wildcards: Vec<(String, Paths)>,
    any_host: Paths,
}

#[derive(Debug, Default)]
struct Paths {
    exact: Map<Vec<usize>>,
    /// Prefixes without their trailing `/`: a path is looked up by each of
    /// its prefixes that ends at a segment boundary.
    prefix: Map<Vec<usize>>,
    any: Vec<usize>,
}

impl Paths {
    fn add(&mut self, path: &Option<PathMatch>, position: usize) {
        let list = match path {
            Some(PathMatch::Exact(p)) => self.exact.entry(p.clone()).or_default(),
            Some(PathMatch::Prefix(p)) => self.prefix.entry(p.clone()).or_default(),
            None => &mut self.any,
        };
        list.push(position);
    }

    /// Every list of positions whose path condition `path` may meet.
    fn candidates<'a>(&'a self, path: &'a str, mut each: impl FnMut(&'a [usize])) {
        // An empty map is not asked: asking hashes the key.
        if !self.exact.is_empty()
            && let Some(list) = self.exact.get(path)
        {
            each(list);
        }
        if !self.prefix.is_empty() {
            let boundaries = path.match_indices('/').map(|(i, _)| i);
            for end in boundaries.chain(std::iter::once(path.len())) {
                if let Some(list) = self.prefix.get(&path[..end]) {
                    each(list);
                }
            }
        }
        each(&self.any);
    }
}

impl<T> RouteTable<T> {
    /// Build a table; `routes` are in configuration order, which breaks ties.
    pub fn new(routes: Vec<(Matcher, T)>) -> RouteTable<T> {
        let mut routes = routes;
        // A stable sort keeps configuration order among equally specific routes.
        routes.sort_by_key(|(matcher, _)| std::cmp::Reverse(matcher.specificity()));
        let mut index = Index::default();
        for (position, (matcher, _)) in routes.iter().enumerate() {
            let paths = match &matcher.host {
                Some(HostMatch::Exact(h)) => index.exact_hosts.entry(h.clone()).or_default(),
                Some(HostMatch::Suffix(s)) if s.starts_with('.') => {
                    index.wildcard_hosts.entry(s.clone()).or_default()
                }
                Some(HostMatch::Suffix(s)) => {
                    match index.odd_wildcards.iter().position(|(w, _)| w == s) {
                        Some(i) => &mut index.odd_wildcards[i].1,
                        None => {
                            index.odd_wildcards.push((s.clone(), Paths::default()));
                            &mut index.odd_wildcards.last_mut().expect("pushed").1
                        }
                    }
                }
                None => &mut index.any_host,
            };
            paths.add(&matcher.path, position);
        }
        RouteTable { routes, index }
    }

    /// Every route, in match order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|(_, t)| t)
    }

    /// The route for this request, if any: of the routes the index names,
    /// the first in match order whose conditions all hold.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&T> {
        let mut best: Option<usize> = None;
        let mut consider = |positions: &[usize]| {
            for &i in positions {
                if best.is_some_and(|b| b <= i) {
                    return;
                }
                if self.routes[i].0.matches(host, path, method, headers) {
                    best = Some(i);
                    return;
                }
            }
        };
        let index = &self.index;
        if let Some(host) = host {
            if !index.exact_hosts.is_empty()
                && let Some(paths) = index.exact_hosts.get(host)
            {
                paths.candidates(path, &mut consider);
            }
            if !index.wildcard_hosts.is_empty() {
                for (dot, _) in host.match_indices('.') {
                    if let Some(paths) = index.wildcard_hosts.get(&host[dot..]) {
                        paths.candidates(path, &mut consider);
                    }
                }
            }
            for (_, paths) in &index.odd_wildcards {
                paths.candidates(path, &mut consider);
            }
        }
        index.any_host.candidates(path, &mut consider);
        best.map(|i| &self.routes[i].1)
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

    /// The index finds what a scan of every route in match order finds.
    #[test]
    fn the_index_agrees_with_a_scan_of_every_route() {
        let hosts = [
            "",
            "host = \"a.example.com\"",
            "host = \"*.example.com\"",
            "host = \"*ample.com\"",
            "host = \"*.com\"",
        ];
        let paths = [
            "",
            "path = \"/a/b\"",
            "path_prefix = \"/a\"",
            "path_prefix = \"/a/b/\"",
            "path_prefix = \"/\"",
            "path = \"/\"",
        ];
        let extras = ["", "methods = [\"POST\"]", "headers = { x-t = \"1\" }"];
        let mut configs = Vec::new();
        for host in hosts {
            for path in paths {
                for extra in extras {
                    configs.push(format!("{host}\n{path}\n{extra}"));
                }
            }
        }
        // A shuffled configuration order (a fixed LCG), so ties are tested too.
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for i in (1..configs.len()).rev() {
            configs.swap(i, next(i + 1));
        }
        let refs: Vec<&str> = configs.iter().map(String::as_str).collect();
        for keep in [refs.len(), 40, 7] {
            let table = table(&refs[..keep]);
            let mut tagged = HeaderMap::new();
            tagged.insert("x-t", HeaderValue::from_static("1"));
            for host in [
                None,
                Some("a.example.com"),
                Some("b.a.example.com"),
                Some("example.com"),
                Some("sample.com"),
                Some("x.org"),
            ] {
                for path in ["/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/z"] {
                    for method in [Method::GET, Method::POST] {
                        for headers in [&HeaderMap::new(), &tagged] {
                            let scan = table
                                .routes
                                .iter()
                                .find(|(m, _)| m.matches(host, path, &method, headers))
                                .map(|(_, t)| t);
                            assert_eq!(
                                table.find(host, path, &method, headers),
                                scan,
                                "{host:?} {path} {method}"
                            );
                        }
                    }
                }
            }
        }
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
