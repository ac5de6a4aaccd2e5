//! The keys the crypto capability holds for a plugin, parsed and checked
//! once: HMAC secrets, and public keys from PEM (SPKI, PKCS#1) or a JWK.

use base64::Engine as _;
use serde_json::Value;
use spki::der::Decode as _;

/// An HMAC key the host holds for a plugin.
pub struct HmacKey(pub(crate) ring::hmac::Key);

/// A public key the host holds for a plugin, parsed and checked once.
pub struct PublicKey(pub(crate) Key);

pub(crate) enum Key {
    /// Big-endian modulus and exponent, the modulus at least 2048 bits.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed points (`04 || x || y`).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

const RSA: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.101.112");

impl Key {
    pub(crate) fn from_pem(text: &str) -> Result<Key, String> {
        let block = pem::parse(text.trim()).map_err(|e| format!("not a PEM block: {e}"))?;
        match block.tag() {
            "PUBLIC KEY" => Key::from_spki(block.contents()),
            "RSA PUBLIC KEY" => Key::from_pkcs1(block.contents()),
            other => Err(format!(
                "a `{other}` PEM block is not a public key (give `PUBLIC KEY` or `RSA PUBLIC KEY`)"
            )),
        }
    }

    fn from_spki(der: &[u8]) -> Result<Key, String> {
        let info = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let bits = info
            .subject_public_key
            .as_bytes()
            .ok_or("the public key is not whole bytes")?;
        match info.algorithm.oid {
            RSA => Key::from_pkcs1(bits),
            EC => match info.algorithm.parameters_oid() {
                Ok(P256) => Key::point(bits, 32).map(Key::P256),
                Ok(P384) => Key::point(bits, 48).map(Key::P384),
                Ok(curve) => Err(format!("EC curve {curve} is not supported (P-256, P-384)")),
                Err(_) => Err("the EC key names no curve".into()),
            },
            ED25519 => Key::ed25519(bits.to_vec()),
            other => Err(format!(
                "key algorithm {other} is not supported (RSA, EC, Ed25519)"
            )),
        }
    }

    fn from_pkcs1(der: &[u8]) -> Result<Key, String> {
        let key = pkcs1::RsaPublicKey::from_der(der)
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        Key::rsa(
            key.modulus.as_bytes().to_vec(),
            key.public_exponent.as_bytes().to_vec(),
        )
    }

    pub(crate) fn from_jwk(text: &str) -> Result<Key, String> {
        let jwk: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let field = |name: &str| -> Result<Vec<u8>, String> {
            let text = jwk
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the JWK has no `{name}`"))?;
            base64url(text).map_err(|e| format!("the JWK's `{name}` is not base64url: {e}"))
        };
        let text = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or("");
        match text("kty") {
            "RSA" => Key::rsa(field("n")?, field("e")?),
            "EC" => {
                let (width, wrap): (usize, fn(Vec<u8>) -> Key) = match text("crv") {
                    "P-256" => (32, Key::P256),
                    "P-384" => (48, Key::P384),
                    other => return Err(format!("EC curve `{other}` is not supported")),
                };
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != width || y.len() != width {
                    return Err("the JWK's `x` and `y` do not fit its curve".into());
                }
                Ok(wrap([&[4][..], &x, &y].concat()))
            }
            "OKP" if text("crv") == "Ed25519" => Key::ed25519(field("x")?),
            "OKP" => Err(format!("OKP curve `{}` is not supported", text("crv"))),
            "oct" => Err("a symmetric (`oct`) JWK is not a public key; make an HMAC key".into()),
            other => Err(format!("JWK key type `{other}` is not supported")),
        }
    }

    fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<Key, String> {
        let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
        let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
        if bits < 2048 {
            return Err(format!(
                "RSA keys shorter than 2048 bits are refused (this one has {bits})"
            ));
        }
        Ok(Key::Rsa { n, e })
    }

    fn point(bits: &[u8], width: usize) -> Result<Vec<u8>, String> {
        match bits.first() {
            Some(4) if bits.len() == 1 + 2 * width => Ok(bits.to_vec()),
            _ => Err("the EC key is not an uncompressed point on its curve".into()),
        }
    }

    fn ed25519(bytes: Vec<u8>) -> Result<Key, String> {
        match bytes.len() {
            32 => Ok(Key::Ed25519(bytes)),
            n => Err(format!("an Ed25519 key is 32 bytes, not {n}")),
        }
    }
}

/// Base64url, with or without padding (JWKs in the wild have both).
fn base64url(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_refused_with_a_reason() {
        let err = |r: Result<Key, String>| r.err().expect("refused");
        assert!(err(Key::from_pem("nope")).contains("not a PEM block"));
        assert!(err(Key::from_jwk(r#"{"kty":"oct","k":"c2VjcmV0"}"#)).contains("symmetric"));
        assert!(err(Key::from_jwk(r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#)).contains("2048"));
        assert!(
            err(Key::from_jwk(
                r#"{"kty":"EC","crv":"P-256","x":"AQ","y":"AQ"}"#
            ))
            .contains("fit")
        );
        assert!(err(Key::from_jwk(r#"{"kty":"OKP","crv":"X25519","x":"AQ"}"#)).contains("X25519"));
    }
}
