//! External authorization: asks an auth service (a named upstream, called
//! over the gateway's outbound HTTP) about each request's credentials, and
//! allows or denies from its answer. Allow answers may be cached in the
//! gateway's key-value store.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_sdk::outbound::Outbound;
use sluice_sdk::{Auth, AuthDecision, Identity, Plugin, Reply, Request, kv, log, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The auth service: an upstream the plugin holds the `http:<name>` grant for.
    upstream: String,
    /// The path asked on it; the original method and URI go in
    /// `x-original-method` and `x-original-uri`.
    #[serde(default = "default_path")]
    path: String,
    /// Request headers passed to the auth service: the credentials.
    #[serde(default = "default_credentials")]
    credentials: Vec<String>,
    /// The auth service's answer header naming the subject.
    #[serde(default = "default_subject_header")]
    subject_header: String,
    /// Answer headers that become identity claims: header → claim name.
    #[serde(default)]
    claim_headers: BTreeMap<String, String>,
    /// Answer headers copied onto the request sent upstream.
    #[serde(default)]
    upstream_headers: Vec<String>,
    /// Give up on the auth service after this many milliseconds.
    timeout_ms: Option<u64>,
    /// Cache allow answers this long per set of credentials (needs the `kv` grant).
    #[serde(default)]
    cache_ttl_ms: u64,
    /// What an unreachable or failing (5xx) auth service means: `deny` (503) or `allow`.
    #[serde(default)]
    on_error: OnError,
    /// Count decisions in the `ext_auth_decisions` metric and time calls in
    /// `ext_auth_seconds` (needs the `metrics` grant).
    #[serde(default)]
    metrics: bool,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnError {
    #[default]
    Deny,
    Allow,
}

fn default_path() -> String {
    "/".into()
}
fn default_credentials() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_subject_header() -> String {
    "x-auth-subject".into()
}

/// An allow answer, as cached.
#[derive(Serialize, Deserialize)]
struct Allowed {
    subject: Option<String>,
    claims: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

struct ExtAuth {
    config: Config,
}

impl Plugin for ExtAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !config.path.starts_with('/') {
            return Err("`path` must start with `/`".into());
        }
        if config.credentials.is_empty() {
            return Err("`credentials` must name at least one header".into());
        }
        Ok(ExtAuth { config })
    }
}

impl ExtAuth {
    fn count(&self, result: &str) {
        if self.config.metrics {
            let _ = metrics::counter("ext_auth_decisions", &[("result", result)], 1);
        }
    }

    /// Ask the auth service: what it allows, or the decision to answer with.
    fn ask(
        &self,
        req: &Request,
        credentials: &[(String, String)],
    ) -> Result<Allowed, AuthDecision> {
        let uri = match req.query() {
            Some(q) => format!("{}?{q}", req.path()),
            None => req.path(),
        };
        let mut call = Outbound::get(&self.config.upstream, &self.config.path)
            .header("x-original-method", req.method())
            .header("x-original-uri", uri);
        for (name, value) in credentials {
            call = call.header(name.as_str(), value.as_str());
        }
        if let Some(ms) = self.config.timeout_ms {
            call = call.timeout(Duration::from_millis(ms));
        }
        let started = log::monotonic_nanos();
        let answer = call.send();
        if self.config.metrics {
            let secs = (log::monotonic_nanos() - started) as f64 / 1e9;
            let _ = metrics::histogram("ext_auth_seconds", &[], secs);
        }
        let answer = match answer {
            Ok(answer) if answer.status < 500 => answer,
            Ok(answer) => return Err(self.unavailable(&format!("status {}", answer.status))),
            Err(error) => return Err(self.unavailable(&error.to_string())),
        };
        if !answer.is_success() {
            self.count("denied");
            let mut reply = Reply::new(answer.status).body(answer.body.clone());
            for name in ["www-authenticate", "content-type", "location"] {
                if let Some(value) = answer.header(name) {
                    reply = reply.header(name, value);
                }
            }
            return Err(AuthDecision::Deny(reply));
        }
        let header = |name: &str| answer.header(name).map(str::to_owned);
        Ok(Allowed {
            subject: header(&self.config.subject_header),
            claims: self
                .config
                .claim_headers
                .iter()
                .filter_map(|(h, claim)| Some((claim.clone(), header(h)?)))
                .collect(),
            headers: self
                .config
                .upstream_headers
                .iter()
                .filter_map(|h| Some((h.clone(), header(h)?)))
                .collect(),
        })
    }

    fn unavailable(&self, why: &str) -> AuthDecision {
        log::warn(&format!(
            "auth service `{}` failed: {why}",
            self.config.upstream
        ));
        self.count("error");
        match self.config.on_error {
            OnError::Allow => AuthDecision::Pass,
            OnError::Deny => AuthDecision::Deny(Reply::json(
                503,
                &BTreeMap::from([("error", "auth_unavailable")]),
            )),
        }
    }
}

impl Auth for ExtAuth {
    fn authenticate(&self, req: &Request) -> AuthDecision {
        let credentials: Vec<(String, String)> = self
            .config
            .credentials
            .iter()
            .filter_map(|name| Some((name.clone(), req.header(name)?)))
            .collect();
        let cache_key = (self.config.cache_ttl_ms > 0)
            .then(|| serde_json::to_string(&credentials).unwrap_or_default());
        let cached = cache_key
            .as_deref()
            .and_then(|key| kv::get(key).ok().flatten())
            .and_then(|bytes| serde_json::from_slice::<Allowed>(&bytes).ok());
        let allowed = match cached {
            Some(allowed) => allowed,
            None => match self.ask(req, &credentials) {
                Ok(allowed) => {
                    if let Some(key) = &cache_key {
                        let ttl = Duration::from_millis(self.config.cache_ttl_ms);
                        let bytes = serde_json::to_vec(&allowed).unwrap_or_default();
                        if let Err(e) = kv::set(key, &bytes, Some(ttl)) {
                            log::warn(&format!("not caching the answer: {e}"));
                        }
                    }
                    allowed
                }
                Err(refusal) => return refusal,
            },
        };
        for (name, value) in &allowed.headers {
            let _ = req.headers().set(name, value);
        }
        self.count("allowed");
        match allowed.subject {
            Some(subject) => AuthDecision::Allow(Identity {
                subject,
                claims: allowed.claims,
            }),
            None => AuthDecision::Pass,
        }
    }
}

sluice_sdk::export!(auth: ExtAuth);
