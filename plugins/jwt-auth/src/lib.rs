//! JWT bearer authentication (RFC 7519, RFC 6750): HS256/384/512, RS256 and
//! friends, ES256/384, with keys given as PEM, a shared secret, or a JWKS
//! document. Checks the signature, `exp`/`nbf` (with leeway), `iss` and `aud`,
//! required scopes; chosen claims become the request's identity.

use std::collections::BTreeMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::Value;
use sluice_sdk::{Auth, AuthDecision, Identity, Plugin, Reply, Request, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Keys given one by one.
    #[serde(default)]
    keys: Vec<KeyConfig>,
    /// A JWKS document (`{"keys": [...]}`), as a table or a JSON string.
    jwks: Option<Value>,
    /// Accepted issuers (`iss`); any if empty.
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    /// Matched against the token header's `kid`, if both have one.
    kid: Option<String>,
    /// The algorithm this key verifies, such as `RS256`; by default any of its family.
    alg: Option<String>,
    /// A shared secret (HS*).
    secret: Option<String>,
    /// A public key in PEM (RS*, PS*, ES*).
    pem: Option<String>,
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

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

struct JwtAuth {
    keys: Vec<Key>,
    config: Config,
}

const ALL: [Algorithm; 11] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The algorithms a key may verify: the one named, or all of its family.
fn algorithms(named: Option<&str>, key: &DecodingKey) -> Result<Vec<Algorithm>, String> {
    match named {
        Some(name) => {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("unknown algorithm `{name}`"))?;
            if alg.family() != key.family() {
                return Err(format!("algorithm `{name}` does not fit the key given"));
            }
            Ok(vec![alg])
        }
        None => Ok(ALL
            .into_iter()
            .filter(|a| a.family() == key.family())
            .collect()),
    }
}

fn load_key(k: &KeyConfig) -> Result<Key, String> {
    let key = match (&k.secret, &k.pem) {
        (Some(secret), None) if !secret.is_empty() => DecodingKey::from_secret(secret.as_bytes()),
        (None, Some(pem)) => {
            let named_ec = k.alg.as_deref().is_some_and(|a| a.starts_with("ES"));
            let rsa = DecodingKey::from_rsa_pem(pem.as_bytes());
            match rsa {
                Ok(key) if !named_ec => key,
                _ => DecodingKey::from_ec_pem(pem.as_bytes())
                    .map_err(|e| format!("`pem` is not an RSA or EC public key: {e}"))?,
            }
        }
        _ => return Err("each key needs exactly one of `secret` (non-empty) or `pem`".into()),
    };
    if key.family() == AlgorithmFamily::Ed {
        return Err("EdDSA keys are not supported".into());
    }
    Ok(Key {
        algorithms: algorithms(k.alg.as_deref(), &key)?,
        kid: k.kid.clone(),
        key,
    })
}

fn load_jwks(value: &Value) -> Result<Vec<Key>, String> {
    let set: JwkSet = match value {
        Value::String(text) => serde_json::from_str(text),
        other => serde_json::from_value(other.clone()),
    }
    .map_err(|e| format!("`jwks` is not a JWK set: {e}"))?;
    set.keys
        .iter()
        .map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("`jwks`: {e}"))?;
            let named = jwk.common.key_algorithm.map(|a| a.to_string());
            Ok(Key {
                algorithms: algorithms(named.as_deref(), &key)?,
                kid: jwk.common.key_id.clone(),
                key,
            })
        })
        .collect()
}

impl Plugin for JwtAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut keys = config
            .keys
            .iter()
            .map(load_key)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(jwks) = &config.jwks {
            keys.extend(load_jwks(jwks)?);
        }
        if keys.is_empty() {
            return Err("give at least one key in `keys` or `jwks`".into());
        }
        Ok(JwtAuth { keys, config })
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

    fn verify(&self, token: &str) -> Result<serde_json::Map<String, Value>, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::Token("the token is malformed"))?;
        let candidates = self.keys.iter().filter(|k| {
            k.algorithms.contains(&header.alg)
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    _ => true,
                }
        });
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if !self.config.issuers.is_empty() {
            validation.set_issuer(&self.config.issuers);
        }
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
        }
        let mut failure = Refusal::Token("no key verifies the token");
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    failure = Refusal::Token(match e.kind() {
                        ErrorKind::InvalidSignature => "the signature does not verify",
                        ErrorKind::ExpiredSignature => "the token has expired",
                        ErrorKind::ImmatureSignature => "the token is not valid yet",
                        ErrorKind::InvalidIssuer => "the issuer is not accepted",
                        ErrorKind::InvalidAudience => "the audience is not accepted",
                        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                        _ => "the token is invalid",
                    });
                    // A claims failure means the signature held: no other key will do better.
                    if !matches!(
                        e.kind(),
                        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm
                    ) {
                        break;
                    }
                }
            }
        }
        Err(failure)
    }

    fn has_scopes(&self, claims: &serde_json::Map<String, Value>) -> bool {
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

    fn identity(&self, claims: &serde_json::Map<String, Value>) -> Option<Identity> {
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
}

impl Auth for JwtAuth {
    fn authenticate(&self, req: &Request) -> AuthDecision {
        let token = match self.token(req) {
            Ok(token) => token,
            Err(Refusal::Missing) if self.config.optional => return AuthDecision::Pass,
            Err(refusal) => return self.refuse(refusal),
        };
        let claims = match self.verify(&token) {
            Ok(claims) => claims,
            Err(refusal) => return self.refuse(refusal),
        };
        if !self.has_scopes(&claims) {
            return self.refuse(Refusal::Scope);
        }
        let Some(identity) = self.identity(&claims) else {
            return self.refuse(Refusal::Token("the subject claim is missing"));
        };
        if !self.config.forward_token {
            req.headers().remove("authorization");
        }
        self.count("allowed");
        AuthDecision::Allow(identity)
    }
}

sluice_sdk::export!(auth: JwtAuth);
