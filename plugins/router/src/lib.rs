//! Routing rules: send a request to a named upstream when a header, a cookie
//! or a path prefix matches (optionally stripping the prefix). The first
//! matching rule wins; with none, the route's own upstream is used.

use serde::Deserialize;
use sluice_sdk::{Plugin, Request, RouteTo, Routing};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// The upstream to send to.
    upstream: String,
    /// Match a header: `{ name = "x-canary", value = "1" }` (value optional: presence).
    header: Option<Match>,
    /// Match a cookie: `{ name = "beta", value = "yes" }`.
    cookie: Option<Match>,
    /// Match a path prefix (on segment boundaries).
    path_prefix: Option<String>,
    /// Remove the matched prefix before sending upstream.
    #[serde(default)]
    strip_prefix: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    name: String,
    value: Option<String>,
}

struct Router {
    rules: Vec<Rule>,
}

impl Plugin for Router {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.header.is_none() && rule.cookie.is_none() && rule.path_prefix.is_none() {
                return Err(format!(
                    "rules[{i}] needs `header`, `cookie` or `path_prefix`"
                ));
            }
            if rule.strip_prefix && rule.path_prefix.is_none() {
                return Err(format!("rules[{i}]: `strip_prefix` needs `path_prefix`"));
            }
        }
        Ok(Router {
            rules: config.rules,
        })
    }
}

fn value_matches(expected: &Option<String>, found: Option<&str>) -> bool {
    match (expected, found) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(want), Some(have)) => want == have,
    }
}

fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

impl Routing for Router {
    fn select(&self, req: &Request) -> Option<RouteTo> {
        let path = req.path();
        let cookies = req.header("cookie").unwrap_or_default();
        let rule = self.rules.iter().find(|rule| {
            rule.header
                .as_ref()
                .is_none_or(|m| value_matches(&m.value, req.header(&m.name).as_deref()))
                && rule
                    .cookie
                    .as_ref()
                    .is_none_or(|m| value_matches(&m.value, cookie(&cookies, &m.name)))
                && rule
                    .path_prefix
                    .as_ref()
                    .is_none_or(|p| under_prefix(&path, p))
        })?;
        let rewrite = match (&rule.path_prefix, rule.strip_prefix) {
            (Some(prefix), true) => {
                let rest = &path[prefix.trim_end_matches('/').len()..];
                let rest = if rest.is_empty() { "/" } else { rest };
                Some(match req.query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_owned(),
                })
            }
            _ => None,
        };
        Some(RouteTo {
            upstream: rule.upstream.clone(),
            rewrite,
        })
    }
}

sluice_sdk::export!(routing: Router);
