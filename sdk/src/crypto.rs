//! Cryptography done natively by the gateway: digests, HMAC and signature
//! verification at native speed (ring), from a plugin in any language.
//! Needs `grants = ["crypto"]`. Make keys once, in [`Plugin::new`](crate::Plugin::new),
//! and keep them: parsing is paid once, each verification is one call.

use crate::Error;
use crate::bindings::imports::sluice::filter::crypto as raw;

pub use raw::{Hash, Scheme};

/// The digest of `data`.
pub fn digest(hash: Hash, data: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(raw::digest(hash, data)?)
}

/// A secret key for HMAC, held by the gateway.
#[derive(Debug)]
pub struct HmacKey(raw::HmacKey);

impl HmacKey {
    /// A key for HMAC with `hash`.
    pub fn new(hash: Hash, secret: &[u8]) -> Result<HmacKey, Error> {
        Ok(HmacKey(raw::HmacKey::create(hash, secret)?))
    }

    /// The tag of `data`.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.0.sign(data)
    }

    /// Whether `tag` is the tag of `data` (compared in constant time).
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.0.verify(data, tag)
    }
}

/// A public key, parsed once and held by the gateway.
#[derive(Debug)]
pub struct PublicKey(raw::PublicKey);

impl PublicKey {
    /// From PEM: `PUBLIC KEY` (RSA, EC P-256/P-384, Ed25519) or `RSA PUBLIC KEY`.
    pub fn from_pem(pem: &str) -> Result<PublicKey, Error> {
        Ok(PublicKey(raw::PublicKey::from_pem(pem)?))
    }

    /// From one JSON Web Key: `kty` `RSA`, `EC` (P-256, P-384) or `OKP` (Ed25519).
    pub fn from_jwk(jwk: &str) -> Result<PublicKey, Error> {
        Ok(PublicKey(raw::PublicKey::from_jwk(jwk)?))
    }

    /// The schemes this key can verify.
    pub fn schemes(&self) -> Vec<Scheme> {
        self.0.schemes()
    }

    /// Whether `signature` is a valid signature of `message` under `scheme`
    /// (ECDSA in the fixed `r || s` form, or DER for the `-der` schemes).
    pub fn verify(&self, scheme: Scheme, message: &[u8], signature: &[u8]) -> bool {
        self.0.verify(scheme, message, signature)
    }
}
