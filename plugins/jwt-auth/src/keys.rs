//! The keys tokens are checked against: given in the configuration (a
//! secret, a PEM or an inline JWKS) or fetched from the identity provider
//! (a JWKS URL or OpenID discovery) through a granted upstream. All of
//! them are handles to keys the gateway parsed once and verifies with
//! natively.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::crypto::{HmacKey, PublicKey};
use sluice_sdk::{Error, log, outbound};

use crate::token::{Alg, Check, Token};

/// A key as the configuration gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token header's `kid`, if both have one.
    kid: Option<String>,
    /// The algorithm this key verifies, such as `RS256`; by default any of its family.
    alg: Option<String>,
    /// A shared secret (HS*).
    secret: Option<String>,
    /// A public key in PEM (RS*, PS*, ES*, EdDSA).
    pem: Option<String>,
}

enum Secret {
    Hmac(HmacKey),
    Public(PublicKey),
}

/// One key and the algorithms it may verify.
pub struct Key {
    kid: Option<String>,
    algs: Vec<Alg>,
    secret: Secret,
}

impl Key {
    /// Whether this key is one the token may be checked against.
    pub fn fits(&self, token: &Token) -> bool {
        self.algs.contains(&token.alg)
            && match (&token.kid, &self.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            }
    }

    pub fn verifies(&self, token: &Token) -> bool {
        match (token.alg.check(), &self.secret) {
            (Check::Hmac(_), Secret::Hmac(key)) => key.verify(token.signed, &token.signature),
            (Check::Signature(scheme), Secret::Public(key)) => {
                key.verify(scheme, token.signed, &token.signature)
            }
            _ => false,
        }
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The keys one configured entry makes (a secret without `alg` makes
    /// one per HMAC hash).
    pub fn from_config(k: &KeyConfig) -> Result<Vec<Key>, String> {
        let named = k
            .alg
            .as_deref()
            .map(|name| Alg::parse(name).ok_or_else(|| format!("unknown algorithm `{name}`")))
            .transpose()?;
        match (&k.secret, &k.pem) {
            (Some(secret), None) if !secret.is_empty() => {
                hmac_keys(k.kid.clone(), named, secret.as_bytes())
            }
            (None, Some(pem)) => {
                let key = PublicKey::from_pem(pem).map_err(|e| format!("`pem`: {e}"))?;
                Ok(vec![public(k.kid.clone(), named, key)?])
            }
            _ => Err("each key needs exactly one of `secret` (non-empty) or `pem`".into()),
        }
    }
}

fn hmac_keys(kid: Option<String>, named: Option<Alg>, secret: &[u8]) -> Result<Vec<Key>, String> {
    let algs = match named {
        Some(alg @ (Alg::HS256 | Alg::HS384 | Alg::HS512)) => vec![alg],
        Some(alg) => {
            return Err(format!(
                "algorithm `{}` does not fit the key given",
                alg.name()
            ));
        }
        None => vec![Alg::HS256, Alg::HS384, Alg::HS512],
    };
    algs.into_iter()
        .map(|alg| {
            let Check::Hmac(hash) = alg.check() else {
                unreachable!("HS algorithms are HMAC")
            };
            Ok(Key {
                kid: kid.clone(),
                algs: vec![alg],
                secret: Secret::Hmac(HmacKey::new(hash, secret).map_err(|e| e.to_string())?),
            })
        })
        .collect()
}

/// A public key with the algorithms it may verify: the one named, or
/// every one its type can.
fn public(kid: Option<String>, named: Option<Alg>, key: PublicKey) -> Result<Key, String> {
    let schemes = key.schemes();
    let fits = |alg: Alg| matches!(alg.check(), Check::Signature(s) if schemes.contains(&s));
    let algs = match named {
        Some(alg) if fits(alg) => vec![alg],
        Some(alg) => {
            return Err(format!(
                "algorithm `{}` does not fit the key given",
                alg.name()
            ));
        }
        None => Alg::ALL.into_iter().filter(|a| fits(*a)).collect(),
    };
    Ok(Key {
        kid,
        algs,
        secret: Secret::Public(key),
    })
}

/// The keys of a JWK set: signature keys only; ones this gateway cannot
/// use are skipped and named in `skipped`.
pub fn from_jwks(set: &Value, skipped: &mut Vec<String>) -> Result<Vec<Key>, String> {
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWK set is an object with a `keys` list")?;
    let mut out = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        let field = |name| jwk.get(name).and_then(Value::as_str);
        let kid = field("kid").map(str::to_owned);
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let named = match field("alg") {
            Some(name) => match Alg::parse(name) {
                Some(alg) => Some(alg),
                None => {
                    skipped.push(format!("{label}: algorithm `{name}`"));
                    continue;
                }
            },
            None => None,
        };
        let made = if field("kty") == Some("oct") {
            field("k")
                .and_then(|k| URL_SAFE_NO_PAD.decode(k.trim_end_matches('=')).ok())
                .ok_or_else(|| "an `oct` key needs `k` in base64url".to_owned())
                .and_then(|secret| hmac_keys(kid, named, &secret))
        } else {
            PublicKey::from_jwk(&jwk.to_string())
                .map_err(|e| e.to_string())
                .and_then(|key| public(kid, named, key).map(|k| vec![k]))
        };
        match made {
            Ok(keys) => out.extend(keys),
            Err(e) => skipped.push(format!("{label}: {e}")),
        }
    }
    Ok(out)
}

/// Where the identity provider publishes its keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The upstream (in the gateway's configuration) that reaches the
    /// identity provider; the plugin needs the `http:<upstream>` grant.
    upstream: String,
    /// A JWK set, or an OpenID Provider's discovery document
    /// (`/.well-known/openid-configuration`), whose `jwks_uri` is then
    /// fetched through the same upstream.
    path: String,
    /// Fetch the keys again this often.
    #[serde(default = "default_refresh")]
    refresh_secs: u64,
    /// But no more often than this, for a token naming an unknown `kid`
    /// or after a failed fetch.
    #[serde(default = "default_min_refresh")]
    min_refresh_secs: u64,
    /// Give up on one fetch after this long.
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_refresh() -> u64 {
    300
}
fn default_min_refresh() -> u64 {
    30
}
fn default_timeout() -> u64 {
    2000
}

/// Keys fetched from the identity provider, and when to fetch them again.
pub struct Remote {
    config: RemoteConfig,
    pub keys: Vec<Key>,
    /// The issuer its discovery document names, if it had one.
    pub issuer: Option<String>,
    last_attempt: Option<u64>,
    next_refresh: u64,
}

/// Why a fetch failed.
enum Failure {
    /// The upstream is not granted: a configuration error, not an outage.
    NotGranted,
    Failed(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Failed(reason)
    }
}

/// What a refresh did to the key set.
pub enum Refreshed {
    /// Nothing: too soon since the last attempt, or the fetch failed (the
    /// last good set is kept).
    Kept,
    /// A new set; `dropped` if a key of the old one is gone.
    New { dropped: bool },
}

impl Remote {
    pub fn new(config: RemoteConfig) -> Remote {
        Remote {
            config,
            keys: Vec::new(),
            issuer: None,
            last_attempt: None,
            next_refresh: 0,
        }
    }

    /// Whether the scheduled refresh is due.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_refresh
    }

    /// Fetch the keys, unless the last attempt was too recent. Only a
    /// missing grant is an error; an outage keeps the last good set.
    pub fn refresh(&mut self, now_ms: u64) -> Result<Refreshed, String> {
        let min = self.config.min_refresh_secs * 1000;
        if self.last_attempt.is_some_and(|last| now_ms < last + min) {
            return Ok(Refreshed::Kept);
        }
        self.last_attempt = Some(now_ms);
        match self.fetch() {
            Ok((keys, issuer)) => {
                let dropped = self
                    .keys
                    .iter()
                    .any(|old| !keys.iter().any(|new| new.kid == old.kid));
                self.keys = keys;
                self.issuer = issuer.or(self.issuer.take());
                self.next_refresh = now_ms + self.config.refresh_secs * 1000;
                Ok(Refreshed::New { dropped })
            }
            Err(Failure::NotGranted) => Err(format!(
                "fetching keys needs the grant \"http:{}\"",
                self.config.upstream
            )),
            Err(Failure::Failed(e)) => {
                // The last good set stays; try again after `min_refresh_secs`.
                log::warn(&format!(
                    "jwt-auth: fetching keys from `{}` {} failed, keeping the {} known: {e}",
                    self.config.upstream,
                    self.config.path,
                    self.keys.len()
                ));
                self.next_refresh = now_ms + min;
                Ok(Refreshed::Kept)
            }
        }
    }

    fn fetch(&self) -> Result<(Vec<Key>, Option<String>), Failure> {
        let document = self.get(&self.config.path)?;
        let (set, issuer) = match document.get("jwks_uri").and_then(Value::as_str) {
            Some(uri) => {
                let issuer = document
                    .get("issuer")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (self.get(path_of(uri))?, issuer)
            }
            None => (document, None),
        };
        let mut skipped = Vec::new();
        let keys = from_jwks(&set, &mut skipped)?;
        if !skipped.is_empty() {
            log::info(&format!(
                "jwt-auth: JWKS keys skipped: {}",
                skipped.join("; ")
            ));
        }
        if keys.is_empty() {
            return Err(Failure::Failed(
                "the JWK set has no key this gateway can verify with".into(),
            ));
        }
        Ok((keys, issuer))
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        let answer = outbound::Outbound::get(&self.config.upstream, path)
            .header("accept", "application/json")
            .timeout(Duration::from_millis(self.config.timeout_ms))
            .send()
            .map_err(|e| match e {
                Error::NotGranted(_) => Failure::NotGranted,
                other => Failure::Failed(other.to_string()),
            })?;
        if answer.status != 200 {
            return Err(format!("{path} answered {}", answer.status).into());
        }
        Ok(serde_json::from_slice(&answer.body).map_err(|e| format!("{path} is not JSON: {e}"))?)
    }
}

/// The path (and query) of an absolute URL, which the upstream is asked for.
fn path_of(uri: &str) -> &str {
    match uri.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => uri,
    }
}
