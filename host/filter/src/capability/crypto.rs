//! Cryptography done natively (grant `crypto`, contract 0.2.1): digests,
//! HMAC and signature verification with ring, the crate rustls verifies
//! certificates with. Keys are parsed once, when the plugin makes them,
//! into entries of the instance's resource table; a verification is then
//! one native call whatever language the plugin is written in.

use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;
use spki::der::Decode as _;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{Grant, Refusals};
use crate::bindings::v2::crypto::{self as wit, Hash, Scheme};
use crate::bindings::v2::types::Error;
use crate::error::HostError;
use crate::instance::FilterState;

/// Keys one instance may hold at once: each is host memory outside the
/// instance's own limit.
const MAX_KEYS: usize = 4096;

/// One plugin's crypto capability: whether it is granted.
pub(crate) struct Crypto {
    granted: bool,
    refusals: Refusals,
}

impl Crypto {
    pub(crate) fn bind(grants: &[Grant], refusals: Refusals) -> Crypto {
        Crypto {
            granted: grants.contains(&Grant::Crypto),
            refusals,
        }
    }

    fn check(&self) -> Result<(), HostError> {
        if self.granted {
            Ok(())
        } else {
            Err(self.refusals.refuse(&Grant::Crypto))
        }
    }
}

/// An HMAC key the host holds for a plugin.
pub struct HmacKey(ring::hmac::Key);

/// A public key the host holds for a plugin, parsed and checked once.
pub struct PublicKey(Key);

enum Key {
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

/// What the crypto imports borrow from the instance's store data.
pub(crate) struct CryptoView<'a> {
    pub(crate) crypto: &'a Crypto,
    pub(crate) table: &'a mut ResourceTable,
    /// Keys this instance holds now.
    pub(crate) keys: &'a mut usize,
}

impl CryptoView<'_> {
    /// Hold `entry` for the plugin, if granted and within the limit.
    fn hold<T: Send + 'static>(
        &mut self,
        make: impl FnOnce() -> Result<T, HostError>,
    ) -> wasmtime::Result<Result<Resource<T>, Error>> {
        if let Err(e) = self.crypto.check() {
            return Ok(Err(e.into()));
        }
        if *self.keys >= MAX_KEYS {
            return Ok(Err(HostError::Limit(format!(
                "an instance may hold at most {MAX_KEYS} keys; drop the ones it no longer needs"
            ))
            .into()));
        }
        let entry = match make() {
            Ok(entry) => entry,
            Err(e) => return Ok(Err(e.into())),
        };
        *self.keys += 1;
        Ok(Ok(self.table.push(entry)?))
    }

    fn release<T: 'static>(&mut self, handle: Resource<T>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        *self.keys -= 1;
        Ok(())
    }
}

struct CryptoData;

impl HasData for CryptoData {
    type Data<'a> = CryptoView<'a>;
}

pub(crate) fn link(linker: &mut Linker<FilterState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, CryptoData>(linker, FilterState::crypto)
}

impl wit::Host for CryptoView<'_> {
    fn digest(&mut self, hash: Hash, data: Vec<u8>) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        Ok(match self.crypto.check() {
            Ok(()) => Ok(ring::digest::digest(digest_of(hash), &data)
                .as_ref()
                .to_vec()),
            Err(e) => Err(e.into()),
        })
    }
}

impl wit::HostHmacKey for CryptoView<'_> {
    fn create(
        &mut self,
        hash: Hash,
        secret: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<HmacKey>, Error>> {
        self.hold(|| {
            if secret.is_empty() {
                return Err(HostError::Invalid(
                    "an HMAC secret must not be empty".into(),
                ));
            }
            let algorithm = match hash {
                Hash::Sha256 => ring::hmac::HMAC_SHA256,
                Hash::Sha384 => ring::hmac::HMAC_SHA384,
                Hash::Sha512 => ring::hmac::HMAC_SHA512,
            };
            Ok(HmacKey(ring::hmac::Key::new(algorithm, &secret)))
        })
    }

    fn sign(&mut self, key: Resource<HmacKey>, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        let key = self.table.get(&key)?;
        Ok(ring::hmac::sign(&key.0, &data).as_ref().to_vec())
    }

    fn verify(
        &mut self,
        key: Resource<HmacKey>,
        data: Vec<u8>,
        tag: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        let key = self.table.get(&key)?;
        Ok(ring::hmac::verify(&key.0, &data, &tag).is_ok())
    }

    fn drop(&mut self, key: Resource<HmacKey>) -> wasmtime::Result<()> {
        self.release(key)
    }
}

impl wit::HostPublicKey for CryptoView<'_> {
    fn from_pem(&mut self, pem: String) -> wasmtime::Result<Result<Resource<PublicKey>, Error>> {
        self.hold(|| {
            Key::from_pem(&pem)
                .map(PublicKey)
                .map_err(HostError::Invalid)
        })
    }

    fn from_jwk(&mut self, jwk: String) -> wasmtime::Result<Result<Resource<PublicKey>, Error>> {
        self.hold(|| {
            Key::from_jwk(&jwk)
                .map(PublicKey)
                .map_err(HostError::Invalid)
        })
    }

    fn schemes(&mut self, key: Resource<PublicKey>) -> wasmtime::Result<Vec<Scheme>> {
        Ok(self.table.get(&key)?.0.schemes().to_vec())
    }

    fn verify(
        &mut self,
        key: Resource<PublicKey>,
        scheme: Scheme,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(self.table.get(&key)?.0.verify(scheme, &message, &signature))
    }

    fn drop(&mut self, key: Resource<PublicKey>) -> wasmtime::Result<()> {
        self.release(key)
    }
}

fn digest_of(hash: Hash) -> &'static ring::digest::Algorithm {
    match hash {
        Hash::Sha256 => &ring::digest::SHA256,
        Hash::Sha384 => &ring::digest::SHA384,
        Hash::Sha512 => &ring::digest::SHA512,
    }
}

const RSA: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.101.112");

impl Key {
    fn from_pem(text: &str) -> Result<Key, String> {
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

    fn from_jwk(text: &str) -> Result<Key, String> {
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

    fn schemes(&self) -> &'static [Scheme] {
        match self {
            Key::Rsa { .. } => &[
                Scheme::RsaPkcs1Sha256,
                Scheme::RsaPkcs1Sha384,
                Scheme::RsaPkcs1Sha512,
                Scheme::RsaPssSha256,
                Scheme::RsaPssSha384,
                Scheme::RsaPssSha512,
            ],
            Key::P256(_) => &[Scheme::EcdsaP256Sha256, Scheme::EcdsaP256Sha256Der],
            Key::P384(_) => &[Scheme::EcdsaP384Sha384, Scheme::EcdsaP384Sha384Der],
            Key::Ed25519(_) => &[Scheme::Ed25519],
        }
    }

    fn verify(&self, scheme: Scheme, message: &[u8], sig: &[u8]) -> bool {
        use signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_ASN1,
            ECDSA_P384_SHA384_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256,
            RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256,
            RSA_PSS_2048_8192_SHA384, RSA_PSS_2048_8192_SHA512,
        };
        if let Key::Rsa { n, e } = self {
            let params = match scheme {
                Scheme::RsaPkcs1Sha256 => &RSA_PKCS1_2048_8192_SHA256,
                Scheme::RsaPkcs1Sha384 => &RSA_PKCS1_2048_8192_SHA384,
                Scheme::RsaPkcs1Sha512 => &RSA_PKCS1_2048_8192_SHA512,
                Scheme::RsaPssSha256 => &RSA_PSS_2048_8192_SHA256,
                Scheme::RsaPssSha384 => &RSA_PSS_2048_8192_SHA384,
                Scheme::RsaPssSha512 => &RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            return RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok();
        }
        let (algorithm, key): (&'static dyn VerificationAlgorithm, &[u8]) = match (scheme, self) {
            (Scheme::EcdsaP256Sha256, Key::P256(k)) => (&ECDSA_P256_SHA256_FIXED, k),
            (Scheme::EcdsaP256Sha256Der, Key::P256(k)) => (&ECDSA_P256_SHA256_ASN1, k),
            (Scheme::EcdsaP384Sha384, Key::P384(k)) => (&ECDSA_P384_SHA384_FIXED, k),
            (Scheme::EcdsaP384Sha384Der, Key::P384(k)) => (&ECDSA_P384_SHA384_ASN1, k),
            (Scheme::Ed25519, Key::Ed25519(k)) => (&ED25519, k),
            _ => return false,
        };
        UnparsedPublicKey::new(algorithm, key)
            .verify(message, sig)
            .is_ok()
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

    #[test]
    fn a_key_verifies_only_its_own_schemes() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key");
        let public = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&public);
        let key = Key::from_jwk(&format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}"#))
            .expect("an Ed25519 JWK");
        let sig = pair.sign(b"message");
        assert!(key.verify(Scheme::Ed25519, b"message", sig.as_ref()));
        assert!(!key.verify(Scheme::Ed25519, b"massage", sig.as_ref()));
        assert!(!key.verify(Scheme::RsaPkcs1Sha256, b"message", sig.as_ref()));
        assert_eq!(key.schemes(), &[Scheme::Ed25519]);
    }
}
