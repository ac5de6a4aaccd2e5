//! A JWT (RFC 7519) in the JWS compact form (RFC 7515): split and decoded,
//! its signature input kept for the keys, its claims read only once the
//! signature held.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_sdk::crypto::{Hash, Scheme};

/// The JWS algorithms verified (RFC 7518, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// How an algorithm's signature is checked by the gateway's crypto.
pub enum Check {
    Hmac(Hash),
    Signature(Scheme),
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn check(self) -> Check {
        match self {
            Alg::HS256 => Check::Hmac(Hash::Sha256),
            Alg::HS384 => Check::Hmac(Hash::Sha384),
            Alg::HS512 => Check::Hmac(Hash::Sha512),
            Alg::RS256 => Check::Signature(Scheme::RsaPkcs1Sha256),
            Alg::RS384 => Check::Signature(Scheme::RsaPkcs1Sha384),
            Alg::RS512 => Check::Signature(Scheme::RsaPkcs1Sha512),
            Alg::PS256 => Check::Signature(Scheme::RsaPssSha256),
            Alg::PS384 => Check::Signature(Scheme::RsaPssSha384),
            Alg::PS512 => Check::Signature(Scheme::RsaPssSha512),
            Alg::ES256 => Check::Signature(Scheme::EcdsaP256Sha256),
            Alg::ES384 => Check::Signature(Scheme::EcdsaP384Sha384),
            Alg::EdDSA => Check::Signature(Scheme::Ed25519),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// Extensions the token says must be understood: none are, so any refuses it.
    crit: Option<Value>,
}

/// A token split and its header read; not yet verified.
pub struct Token<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    pub signed: &'a [u8],
    pub signature: Vec<u8>,
    payload: &'a str,
}

const MALFORMED: &str = "the token is malformed";

impl<'a> Token<'a> {
    pub fn parse(token: &'a str) -> Result<Token<'a>, &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MALFORMED);
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(MALFORMED)?;
        if header.crit.is_some() {
            return Err("the token has critical extensions this gateway does not know");
        }
        let alg = Alg::parse(&header.alg).ok_or("the token's algorithm is not accepted")?;
        Ok(Token {
            alg,
            kid: header.kid,
            signed: &token.as_bytes()[..token.len() - signature.len() - 1],
            signature: URL_SAFE_NO_PAD.decode(signature).map_err(|_| MALFORMED)?,
            payload,
        })
    }

    /// The claims, once the signature has held.
    pub fn claims(&self) -> Result<Map<String, Value>, &'static str> {
        URL_SAFE_NO_PAD
            .decode(self.payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(MALFORMED)
    }
}

/// The registered claims' checks (RFC 7519 §4.1).
pub struct Rules<'a> {
    pub issuers: &'a [String],
    pub audiences: &'a [String],
    pub leeway_secs: u64,
}

/// When a token is valid, in seconds since the epoch: `from..until`.
#[derive(Clone, Copy)]
pub struct Validity {
    pub from: u64,
    pub until: u64,
}

impl Validity {
    pub fn holds(&self, now_secs: u64) -> Result<(), &'static str> {
        if now_secs >= self.until {
            Err("the token has expired")
        } else if now_secs < self.from {
            Err("the token is not valid yet")
        } else {
            Ok(())
        }
    }
}

impl Rules<'_> {
    /// Check issuer and audience, and say when the token is valid (`exp`
    /// required, `nbf` if present, both widened by the leeway).
    pub fn check(&self, claims: &Map<String, Value>) -> Result<Validity, &'static str> {
        let time = |name| claims.get(name).and_then(Value::as_f64);
        let exp = time("exp").ok_or("a required claim is missing")?;
        let leeway = self.leeway_secs as f64;
        let validity = Validity {
            from: time("nbf").map_or(0.0, |nbf| (nbf - leeway).max(0.0)) as u64,
            until: (exp + leeway).max(0.0) as u64,
        };
        if !self.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.issuers.iter().any(|i| i == iss)) {
                return Err("the issuer is not accepted");
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |aud: &str| self.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err("the audience is not accepted");
            }
        }
        Ok(validity)
    }
}
