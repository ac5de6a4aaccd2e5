//! Token-bucket rate limiting. The plugin picks the bucket (by identity,
//! client IP, route or a header) and its size (per tier, from an identity
//! claim); the gateway keeps the counts, exactly, and answers 429 with
//! `Retry-After` and `RateLimit-*` headers.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use sluice_sdk::{Limit, Plugin, RateLimit, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// What requests are counted by: `identity`, `client_ip`, `route` or `header:NAME`.
    #[serde(default = "default_key")]
    key: String,
    /// Requests allowed per window (the bucket size).
    capacity: u32,
    /// Seconds for a full refill.
    #[serde(default = "default_window")]
    window_secs: u64,
    /// Tokens one request takes.
    #[serde(default = "default_cost")]
    cost: u32,
    /// The identity claim that names a tier, and each tier's capacity.
    tier_claim: Option<String>,
    #[serde(default)]
    tiers: HashMap<String, u32>,
}

fn default_key() -> String {
    "client_ip".into()
}
fn default_window() -> u64 {
    60
}
fn default_cost() -> u32 {
    1
}

enum KeyBy {
    Identity,
    ClientIp,
    Route,
    Header(String),
}

struct TokenBucketLimit {
    key: KeyBy,
    capacity: u32,
    window: Duration,
    cost: u32,
    tier_claim: Option<String>,
    tiers: HashMap<String, u32>,
}

impl Plugin for TokenBucketLimit {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let key = match c.key.as_str() {
            "identity" => KeyBy::Identity,
            "client_ip" => KeyBy::ClientIp,
            "route" => KeyBy::Route,
            other => match other.strip_prefix("header:") {
                Some(name) if !name.is_empty() => KeyBy::Header(name.to_ascii_lowercase()),
                _ => {
                    return Err(format!(
                        "`key` must be identity, client_ip, route or header:NAME, not `{other}`"
                    ));
                }
            },
        };
        if c.capacity == 0 || c.window_secs == 0 {
            return Err("`capacity` and `window_secs` must be at least 1".into());
        }
        if !c.tiers.is_empty() && c.tier_claim.is_none() {
            return Err(
                "`tiers` needs `tier_claim`, the identity claim that names the tier".into(),
            );
        }
        Ok(TokenBucketLimit {
            key,
            capacity: c.capacity,
            window: Duration::from_secs(c.window_secs),
            cost: c.cost,
            tier_claim: c.tier_claim,
            tiers: c.tiers,
        })
    }
}

impl RateLimit for TokenBucketLimit {
    fn check(&self, req: &Request) -> Option<Limit> {
        // The whole identity crosses only when a tier is read from its
        // claims; otherwise the subject alone.
        let identity = self.tier_claim.as_ref().and_then(|_| req.identity());
        let key = match &self.key {
            // Unauthenticated requests are counted by address instead.
            KeyBy::Identity => match (&identity, &self.tier_claim) {
                (Some(identity), _) => bucket("id:", &identity.subject),
                (None, Some(_)) => bucket("ip:", &req.client_ip()),
                (None, None) => match req.subject() {
                    Some(subject) => bucket("id:", &subject),
                    None => bucket("ip:", &req.client_ip()),
                },
            },
            KeyBy::ClientIp => bucket("ip:", &req.client_ip()),
            KeyBy::Route => bucket("route:", &req.route()),
            KeyBy::Header(name) => bucket("h:", &req.header(name).unwrap_or_default()),
        };
        let tier = self
            .tier_claim
            .as_deref()
            .and_then(|claim| identity.as_ref()?.get(claim).map(str::to_owned));
        let capacity = tier
            .and_then(|t| self.tiers.get(&t).copied())
            .unwrap_or(self.capacity);
        Some(Limit {
            key,
            cost: self.cost,
            capacity,
            window: self.window,
        })
    }
}

/// A bucket's key: its kind, then its value (joined by hand, without
/// `format!`'s machinery: this runs on every request).
fn bucket(kind: &str, value: &str) -> String {
    let mut key = String::with_capacity(kind.len() + value.len());
    key.push_str(kind);
    key.push_str(value);
    key
}

sluice_sdk::export!(rate_limit: TokenBucketLimit);
