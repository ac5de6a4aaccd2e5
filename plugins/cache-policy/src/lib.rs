//! Cache policy: which requests use the gateway's response cache, under what
//! key, and for how long responses are kept (the upstream's `Cache-Control`
//! by default).

use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::{CacheLookup, CachePolicy, CacheStore, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Path prefixes to cache; empty caches every path of the route.
    #[serde(default)]
    paths: Vec<String>,
    /// Include the query string in the key.
    #[serde(default = "yes")]
    include_query: bool,
    /// Request headers whose values become part of the key.
    #[serde(default)]
    key_headers: Vec<String>,
    /// Requests carrying any of these headers bypass the cache.
    #[serde(default = "default_bypass")]
    bypass_headers: Vec<String>,
    /// Keep successful responses this long, whatever `Cache-Control` says.
    ttl_secs: Option<u32>,
}

fn yes() -> bool {
    true
}

fn default_bypass() -> Vec<String> {
    vec!["authorization".into()]
}

struct Policy {
    config: Config,
}

impl Plugin for Policy {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if let Some(p) = config.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("path prefix `{p}` must start with `/`"));
        }
        Ok(Policy { config })
    }
}

impl CachePolicy for Policy {
    fn lookup(&self, req: &Request) -> CacheLookup {
        let path = req.path();
        let c = &self.config;
        if !c.paths.is_empty() && !c.paths.iter().any(|p| path.starts_with(p.as_str())) {
            return CacheLookup::Bypass;
        }
        if c.bypass_headers.iter().any(|h| req.headers().has(h)) {
            return CacheLookup::Bypass;
        }
        let mut key = format!("{}{path}", req.authority().unwrap_or_default());
        if c.include_query
            && let Some(query) = req.query()
        {
            key.push('?');
            key.push_str(&query);
        }
        for name in &c.key_headers {
            key.push_str(&format!("|{name}={}", req.header(name).unwrap_or_default()));
        }
        CacheLookup::Key(key)
    }

    fn store(&self, _req: &Request, resp: &Response) -> CacheStore {
        match self.config.ttl_secs {
            Some(ttl) if resp.status() == 200 => CacheStore::Ttl(Duration::from_secs(ttl.into())),
            _ => CacheStore::FollowUpstream,
        }
    }
}

sluice_sdk::export!(cache_policy: Policy);
