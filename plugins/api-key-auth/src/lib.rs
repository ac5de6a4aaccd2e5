//! API key authentication: the key comes from a header (or, if configured, a
//! query parameter); a known key's owner becomes the request's identity.

use std::collections::HashMap;

use serde::Deserialize;
use sluice_sdk::{Auth, AuthDecision, Identity, Plugin, Reply, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The accepted keys.
    keys: Vec<KeyConfig>,
    /// The header carrying the key.
    #[serde(default = "default_header")]
    header: String,
    /// A query parameter that may carry the key instead, if set.
    query: Option<String>,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    realm: String,
    /// Pass the key on to the upstream (by default it is removed).
    #[serde(default)]
    forward_key: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    key: String,
    owner: String,
    #[serde(default)]
    claims: HashMap<String, String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn default_realm() -> String {
    "sluice".into()
}

struct ApiKeyAuth {
    owners: HashMap<String, Identity>,
    header: String,
    query: Option<String>,
    challenge: String,
    forward_key: bool,
}

impl Plugin for ApiKeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.keys.is_empty() {
            return Err("`keys` must list at least one key".into());
        }
        let mut owners = HashMap::new();
        for k in config.keys {
            if k.key.is_empty() {
                return Err(format!("the key of `{}` is empty", k.owner));
            }
            let mut claims: Vec<_> = k.claims.into_iter().collect();
            claims.sort();
            let identity = Identity {
                subject: k.owner,
                claims,
            };
            if owners.insert(k.key, identity).is_some() {
                return Err("a key is listed twice".into());
            }
        }
        Ok(ApiKeyAuth {
            owners,
            header: config.header.to_ascii_lowercase(),
            query: config.query,
            challenge: format!(
                "ApiKey realm=\"{}\", header=\"{}\"",
                config.realm, config.header
            ),
            forward_key: config.forward_key,
        })
    }
}

impl ApiKeyAuth {
    fn deny(&self, error: &str) -> AuthDecision {
        AuthDecision::Deny(
            Reply::json(401, &serde_json_error(error))
                .header("www-authenticate", self.challenge.as_str()),
        )
    }
}

fn serde_json_error(error: &str) -> HashMap<&'static str, &str> {
    HashMap::from([("error", error)])
}

impl Auth for ApiKeyAuth {
    fn authenticate(&self, req: &Request) -> AuthDecision {
        let presented = req
            .header(&self.header)
            .or_else(|| self.query.as_deref().and_then(|q| req.query_param(q)));
        let Some(key) = presented else {
            return self.deny("missing_api_key");
        };
        match self.owners.get(key.trim()) {
            Some(identity) => {
                if !self.forward_key {
                    req.headers().remove(&self.header);
                }
                AuthDecision::Allow(identity.clone())
            }
            None => self.deny("invalid_api_key"),
        }
    }
}

sluice_sdk::export!(auth: ApiKeyAuth);
