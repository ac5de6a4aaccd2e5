//! JWT bearer authentication (RFC 7519, RFC 6750): HS256/384/512,
//! RS256/384/512, PS256/384/512, ES256/384 and EdDSA, with keys given as
//! PEM, a shared secret or a JWK set, or fetched from the identity provider
//! (a JWKS URL or OpenID discovery), refreshed on a schedule and on an
//! unknown `kid`. Checks the signature, `exp`/`nbf` (with leeway), `iss`
//! and `aud`, required scopes; chosen claims become the request's identity.
//!
//! Signatures are checked by the gateway's native crypto (grant `crypto`),
//! and verified tokens are cached until their `exp`, so a client's next
//! request costs a hash and a lookup.

mod cache;
mod keys;
mod token;

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_sdk::crypto::{self, Hash};
use sluice_sdk::{Auth, AuthDecision, Error, Identity, Plugin, Reply, Request, log, metrics};

use cache::{TokenCache, Verified};
use keys::{Key, KeyConfig, Refreshed, Remote, RemoteConfig};
use token::{Rules, Token, Validity};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Keys given one by one.
    #[serde(default)]
    keys: Vec<KeyConfig>,
    /// A JWKS document (`{"keys": [...]}`), as a table or a JSON string.
    jwks: Option<Value>,
    /// Keys fetched from the identity provider through an upstream.
    jwks_from: Option<RemoteConfig>,
    /// Accepted issuers (`iss`); any if empty (or the discovery document's
    /// `issuer`, when the keys come from OpenID discovery).
    #[serde(default)]
    issuers: Vec<String>,
    /// Accepted audiences (`aud`); not checked if empty.
    #[serde(default)]
    audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    /// Scopes (in the `scope` claim, space-separated, or `scp` list) all required.
    #[serde(default)]
    required_scopes: Vec<String>,
    /// The claim that names the subject.
    #[serde(default = "default_subject_claim")]
    subject_claim: String,
    /// Claims copied into the identity (strings as they are, others as JSON).
    #[serde(default)]
    claims: Vec<String>,
    /// Also accept the token in this query parameter (RFC 6750 §2.3), if set.
    query: Option<String>,
    /// Let requests without a token through, without an identity.
    #[serde(default)]
    optional: bool,
    /// Pass the `Authorization` header on to the upstream (by default it is removed).
    #[serde(default)]
    forward_token: bool,
    /// The realm in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    realm: String,
    /// Count decisions in the `jwt_auth_decisions` metric (needs the `metrics` grant).
    #[serde(default)]
    metrics: bool,
    /// Verified tokens kept (per instance); 0 checks every token's signature.
    #[serde(default = "default_cache_size")]
    cache_size: usize,
}

fn default_leeway() -> u64 {
    60
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_realm() -> String {
    "sluice".into()
}
fn default_cache_size() -> usize {
    10_000
}

struct JwtAuth {
    keys: Vec<Key>,
    remote: Option<RefCell<Remote>>,
    cache: RefCell<TokenCache>,
    config: Config,
}

impl Plugin for JwtAuth {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, String> {
        if let Err(Error::NotGranted(_)) = crypto::digest(Hash::Sha256, b"") {
            return Err(
                "jwt-auth verifies with the gateway's crypto: add \"crypto\" to this plugin's `grants`"
                    .into(),
            );
        }
        let mut keys = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            keys.extend(Key::from_config(k).map_err(|e| format!("keys[{i}]: {e}"))?);
        }
        if let Some(jwks) = &config.jwks {
            let set = match jwks {
                Value::String(text) => serde_json::from_str(text)
                    .map_err(|e| format!("`jwks` is not a JWK set: {e}"))?,
                other => other.clone(),
            };
            let mut skipped = Vec::new();
            keys.extend(keys::from_jwks(&set, &mut skipped).map_err(|e| format!("`jwks`: {e}"))?);
            if !skipped.is_empty() {
                return Err(format!(
                    "`jwks`: keys it cannot use: {}",
                    skipped.join("; ")
                ));
            }
        }
        let remote = match config.jwks_from.take() {
            Some(remote) => {
                let mut remote = Remote::new(remote);
                // An identity provider that is down now is retried later;
                // a missing grant is a configuration error.
                remote
                    .refresh(log::now_millis())
                    .map_err(|e| format!("`jwks_from`: {e}"))?;
                Some(RefCell::new(remote))
            }
            None => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err("give at least one key in `keys` or `jwks`, or `jwks_from`".into());
        }
        Ok(JwtAuth {
            keys,
            remote,
            cache: RefCell::new(TokenCache::new(config.cache_size)),
            config,
        })
    }
}

/// Why a request is refused, in RFC 6750's terms.
enum Refusal {
    /// No token at all: a bare challenge.
    Missing,
    /// The request is malformed (`invalid_request`, 400).
    Request(&'static str),
    /// The token is bad (`invalid_token`, 401).
    Token(&'static str),
    /// The token lacks scopes (`insufficient_scope`, 403).
    Scope,
}

impl JwtAuth {
    fn refuse(&self, refusal: Refusal) -> AuthDecision {
        let realm = &self.config.realm;
        let (status, code, description) = match refusal {
            Refusal::Missing => (401, None, "a bearer token is required"),
            Refusal::Request(why) => (400, Some("invalid_request"), why),
            Refusal::Token(why) => (401, Some("invalid_token"), why),
            Refusal::Scope => (
                403,
                Some("insufficient_scope"),
                "the token lacks a required scope",
            ),
        };
        let mut challenge = format!("Bearer realm=\"{realm}\"");
        if let Some(code) = code {
            challenge.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        if code == Some("insufficient_scope") {
            challenge.push_str(&format!(
                ", scope=\"{}\"",
                self.config.required_scopes.join(" ")
            ));
        }
        self.count(code.unwrap_or("missing"));
        let body = BTreeMap::from([
            ("error", code.unwrap_or("unauthorized")),
            ("error_description", description),
        ]);
        AuthDecision::Deny(Reply::json(status, &body).header("www-authenticate", challenge))
    }

    fn count(&self, result: &str) {
        if self.config.metrics {
            let _ = metrics::counter("jwt_auth_decisions", &[("result", result)], 1);
        }
    }

    /// The token from `Authorization: Bearer`, or the configured query parameter.
    fn token(&self, req: &Request) -> Result<String, Refusal> {
        if let Some(value) = req.header("authorization") {
            let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Refusal::Missing);
            }
            let token = token.trim();
            if token.is_empty() {
                return Err(Refusal::Request("the bearer token is empty"));
            }
            return Ok(token.to_owned());
        }
        match self
            .config
            .query
            .as_deref()
            .and_then(|q| req.query_param(q))
        {
            Some(token) if !token.is_empty() => Ok(token),
            _ => Err(Refusal::Missing),
        }
    }

    /// Fetch the identity provider's keys again (if `force`, or when due),
    /// forgetting cached tokens if a key is gone.
    fn refresh(&self, now_ms: u64, force: bool) {
        let Some(remote) = &self.remote else { return };
        let mut remote = remote.borrow_mut();
        if !force && !remote.due(now_ms) {
            return;
        }
        if let Ok(Refreshed::New { dropped: true }) = remote.refresh(now_ms) {
            self.cache.borrow_mut().clear();
        }
    }

    /// Whether `f` holds for some key, configured or fetched.
    fn any_key(&self, f: impl FnMut(&Key) -> bool) -> bool {
        let remote = self.remote.as_ref().map(RefCell::borrow);
        let fetched = remote.as_ref().map_or(&[][..], |r| &r.keys[..]);
        self.keys.iter().chain(fetched).any(f)
    }

    /// Whether some key fits the token (its algorithm and `kid`), and
    /// whether one of those verifies it.
    fn check_signature(&self, token: &Token) -> (bool, bool) {
        let mut fits = false;
        let verified = self.any_key(|k| {
            k.fits(token) && {
                fits = true;
                k.verifies(token)
            }
        });
        (fits, verified)
    }

    fn knows_kid(&self, kid: &str) -> bool {
        self.any_key(|k| k.kid() == Some(kid))
    }

    fn verify(&self, text: &str, now_ms: u64) -> Result<(Map<String, Value>, Validity), Refusal> {
        let token = Token::parse(text).map_err(Refusal::Token)?;
        // A `kid` nobody knows may be a key the provider has just added.
        if let Some(kid) = &token.kid
            && self.remote.is_some()
            && !self.knows_kid(kid)
        {
            self.refresh(now_ms, true);
        }
        match self.check_signature(&token) {
            (false, _) => return Err(Refusal::Token("no key verifies the token")),
            (true, false) => return Err(Refusal::Token("the signature does not verify")),
            (true, true) => {}
        }
        let claims = token.claims().map_err(Refusal::Token)?;
        let discovered: Vec<String>;
        let issuers = match &self.remote {
            Some(remote) if self.config.issuers.is_empty() => {
                discovered = remote.borrow().issuer.iter().cloned().collect();
                &discovered
            }
            _ => &self.config.issuers,
        };
        let rules = Rules {
            issuers,
            audiences: &self.config.audiences,
            leeway_secs: self.config.leeway_secs,
        };
        let validity = rules.check(&claims).map_err(Refusal::Token)?;
        validity.holds(now_ms / 1000).map_err(Refusal::Token)?;
        Ok((claims, validity))
    }

    fn has_scopes(&self, claims: &Map<String, Value>) -> bool {
        let granted: Vec<&str> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_whitespace().collect(),
            (_, Some(Value::Array(list))) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        self.config
            .required_scopes
            .iter()
            .all(|s| granted.contains(&s.as_str()))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Option<Identity> {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let subject = claims.get(&self.config.subject_claim).map(text)?;
        let mut identity = Identity::new(subject);
        for name in &self.config.claims {
            if let Some(value) = claims.get(name) {
                identity = identity.claim(name.as_str(), text(value));
            }
        }
        Some(identity)
    }

    /// The identity a token proves, from the cache (`true`) or by verifying it.
    fn authenticate_token(&self, token: &str, now_ms: u64) -> Result<(Identity, bool), Refusal> {
        let key = self
            .cache
            .borrow()
            .enabled()
            .then(|| cache_key(token))
            .flatten();
        if let Some(key) = &key
            && let Some(hit) = self.cache.borrow().get(key, now_ms / 1000)
        {
            return Ok((hit.identity.clone(), true));
        }
        let (claims, validity) = self.verify(token, now_ms)?;
        if !self.has_scopes(&claims) {
            return Err(Refusal::Scope);
        }
        let identity = self
            .identity(&claims)
            .ok_or(Refusal::Token("the subject claim is missing"))?;
        if let Some(key) = key {
            let verified = Verified {
                identity: identity.clone(),
                validity,
            };
            self.cache.borrow_mut().put(key, verified, now_ms / 1000);
        }
        Ok((identity, false))
    }
}

/// The SHA-256 of a token, computed natively.
fn cache_key(token: &str) -> Option<[u8; 32]> {
    crypto::digest(Hash::Sha256, token.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

impl Auth for JwtAuth {
    fn authenticate(&self, req: &Request) -> AuthDecision {
        let token = match self.token(req) {
            Ok(token) => token,
            Err(Refusal::Missing) if self.config.optional => return AuthDecision::Pass,
            Err(refusal) => return self.refuse(refusal),
        };
        let now_ms = log::now_millis();
        self.refresh(now_ms, false);
        let (identity, cached) = match self.authenticate_token(&token, now_ms) {
            Ok(found) => found,
            Err(refusal) => return self.refuse(refusal),
        };
        if !self.config.forward_token {
            req.headers().remove("authorization");
        }
        self.count(if cached { "cached" } else { "allowed" });
        AuthDecision::Allow(identity)
    }
}

sluice_sdk::export!(auth: JwtAuth);
