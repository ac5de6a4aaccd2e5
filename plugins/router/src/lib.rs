//! Routing rules: send a request to a named upstream when a header, a cookie
//! or a path prefix matches (optionally stripping the prefix). The first
//! matching rule wins. With none, a weighted split (a canary) picks the
//! upstream, at random or stuck to a client by IP, header or cookie; without
//! a split, the route's own upstream is used.

use std::cell::LazyCell;

use serde::Deserialize;
use sluice_sdk::{Plugin, Request, RouteTo, Routing};

/// The request's `cookie` header, read on first use.
type Cookies<'a> = LazyCell<String, Box<dyn FnOnce() -> String + 'a>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rules: Vec<Rule>,
    /// Weighted shares of the traffic no rule took: `[{ upstream = "canary", weight = 5 }, ...]`.
    #[serde(default)]
    split: Vec<Share>,
    /// What keeps a client on one side of the split: `random` (the default),
    /// `client-ip`, `header:<name>` or `cookie:<name>`.
    #[serde(default = "default_sticky")]
    sticky: String,
}

fn default_sticky() -> String {
    "random".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Share {
    upstream: String,
    weight: u32,
}

/// Where the split's choice comes from.
enum Sticky {
    Random,
    ClientIp,
    Header(String),
    Cookie(String),
}

impl Sticky {
    fn parse(text: &str) -> Result<Sticky, String> {
        match text.split_once(':') {
            None if text == "random" => Ok(Sticky::Random),
            None if text == "client-ip" => Ok(Sticky::ClientIp),
            Some(("header", name)) if !name.is_empty() => {
                Ok(Sticky::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if !name.is_empty() => Ok(Sticky::Cookie(name.to_owned())),
            _ => Err(format!(
                "`sticky = \"{text}\"`: use `random`, `client-ip`, `header:<name>` or `cookie:<name>`"
            )),
        }
    }
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
    split: Vec<Share>,
    total_weight: u64,
    sticky: Sticky,
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
        let total_weight = config.split.iter().map(|s| u64::from(s.weight)).sum();
        if !config.split.is_empty() && total_weight == 0 {
            return Err("the `split` weights add up to 0".into());
        }
        if config.rules.is_empty() && config.split.is_empty() {
            return Err("give `rules`, a `split`, or both".into());
        }
        Ok(Router {
            rules: config.rules,
            split: config.split,
            total_weight,
            sticky: Sticky::parse(&config.sticky)?,
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

/// FNV-1a: a stable spread of sticky keys over the split.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Router {
    /// The upstream of the weighted split for this request.
    fn split(&self, req: &Request, cookies: &Cookies) -> Option<RouteTo> {
        if self.split.is_empty() {
            return None;
        }
        let key = match &self.sticky {
            Sticky::Random => None,
            Sticky::ClientIp => Some(req.client_ip()),
            Sticky::Header(name) => req.header(name),
            Sticky::Cookie(name) => cookie(&cookies[..], name).map(str::to_owned),
        };
        // Clients without the sticky key are spread at random.
        let mut point = match key {
            Some(key) => fnv1a(&key) % self.total_weight,
            None => fastrand::u64(..self.total_weight),
        };
        let share = self.split.iter().find(|share| {
            let inside = point < u64::from(share.weight);
            point = point.saturating_sub(u64::from(share.weight));
            inside
        })?;
        Some(RouteTo {
            upstream: share.upstream.clone(),
            rewrite: None,
        })
    }
}

impl Routing for Router {
    fn select(&self, req: &Request) -> Option<RouteTo> {
        // Read when a rule asks, not before: each read is a call to the host.
        let path = LazyCell::new(|| req.path());
        let cookies: Cookies = LazyCell::new(Box::new(|| req.header("cookie").unwrap_or_default()));
        let Some(rule) = self.rules.iter().find(|rule| {
            rule.header
                .as_ref()
                .is_none_or(|m| value_matches(&m.value, req.header(&m.name).as_deref()))
                && rule
                    .cookie
                    .as_ref()
                    .is_none_or(|m| value_matches(&m.value, cookie(&cookies[..], &m.name)))
                && rule
                    .path_prefix
                    .as_ref()
                    .is_none_or(|p| under_prefix(&path[..], p))
        }) else {
            return self.split(req, &cookies);
        };
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
