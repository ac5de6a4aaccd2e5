//! Cryptography done natively (grant `crypto`, contract 0.2.1): digests,
//! HMAC and signature verification with ring, the crate rustls verifies
//! certificates with. Keys are parsed once, when the plugin makes them,
//! into entries of the instance's resource table; a verification is then
//! one native call whatever language the plugin is written in.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::keys::{HmacKey, Key, PublicKey};
use super::{Grant, Refusals};
use crate::bindings::v2::crypto::{self as wit, Hash, Scheme};
use crate::bindings::v2::types::Error;
use crate::error::HostError;

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

/// Store data that can lend the crypto imports their view.
pub(crate) trait CryptoHost {
    fn crypto(&mut self) -> CryptoView<'_>;
}

pub(crate) fn link<T: CryptoHost + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, CryptoData>(linker, T::crypto)
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

/// What each kind of key verifies, in the contract's terms.
impl Key {
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

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
