//! Which components may run. A plugin pinned by `sha256` runs only with
//! exactly that content; with `[trust] keys`, only a component signed by one
//! of them. Signatures are minisign's detached format (Ed25519; a
//! `plugin.wasm.minisig` file beside the component, as `minisign -S` writes
//! it), so the stock `minisign` tool signs and verifies them too. Both are
//! checked before a component is compiled, from a file, an upload or a
//! registry, and a refusal names the plugin and leaves what runs alone.

use std::path::{Path, PathBuf};

use minisign::{PublicKey, PublicKeyBox, SecretKeyBox, SignatureBox};
use serde::Deserialize;
use toml::Spanned;

use crate::source::{ConfigError, Source};

/// `[trust]`: the keys whose signatures admit a plugin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// minisign public keys: the key itself (`RW…`), or a `.pub` file as
    /// `minisign -G` writes it (relative to the configuration file). With
    /// any listed, every plugin needs a signature from one of them.
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
}

/// The trusted keys, parsed.
#[derive(Default)]
pub struct Trust {
    keys: Vec<(String, PublicKey)>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl Trust {
    /// Parse `[trust]`, reading key files now.
    pub fn load(config: &TrustConfig, source: &Source) -> Result<Trust, ConfigError> {
        let mut keys = Vec::new();
        for (i, entry) in config.keys.iter().enumerate() {
            let at = |message: String| {
                source.error(entry.span().start, format!("trust.keys[{i}]"), message)
            };
            let text = entry.get_ref().trim();
            let key = match text.starts_with("RW") && !text.contains('/') {
                true => PublicKey::from_base64(text)
                    .map_err(|e| at(format!("not a minisign public key: {e}")))?,
                false => {
                    let path = source.dir().join(text);
                    let file = std::fs::read_to_string(&path)
                        .map_err(|e| at(format!("{}: {e}", path.display())))?;
                    PublicKeyBox::from_string(&file)
                        .and_then(PublicKeyBox::into_public_key)
                        .map_err(|e| {
                            at(format!(
                                "{}: not a minisign public key: {e}",
                                path.display()
                            ))
                        })?
                }
            };
            keys.push((key_id(&key), key));
        }
        Ok(Trust { keys })
    }

    /// Whether plugins must be signed.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// What a component must pass before it is compiled: its pin, and
    /// with keys listed, a signature. Answers the signer's key id, if signed.
    pub fn vet(
        &self,
        pin: Option<&str>,
        sha256: &str,
        bytes: &[u8],
        signature: Option<&str>,
    ) -> Result<Option<String>, String> {
        check_pin(pin, sha256)?;
        if !self.required() {
            return Ok(None);
        }
        let signature = signature.ok_or("it is not signed, and [trust] requires a signature")?;
        self.signer(bytes, signature).map(Some)
    }

    /// Whether a version vetted earlier passes today's pin and keys (a
    /// rollback, or a configuration that changed them since).
    pub fn still_admits(
        &self,
        pin: Option<&str>,
        sha256: &str,
        signed_by: Option<&str>,
    ) -> Result<(), String> {
        check_pin(pin, sha256)?;
        let trusted = |id: &str| self.keys.iter().any(|(known, _)| known == id);
        match !self.required() || signed_by.is_some_and(trusted) {
            true => Ok(()),
            false => Err("it is not signed by a trusted key".to_owned()),
        }
    }

    /// The id of the trusted key `signature` (a `.minisig` file's text)
    /// verifies `bytes` with.
    pub fn signer(&self, bytes: &[u8], signature: &str) -> Result<String, String> {
        let signature = SignatureBox::from_string(signature)
            .map_err(|e| format!("its signature is not in minisign's format: {e}"))?;
        let claimed = hex(signature.keynum());
        let (id, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == claimed)
            .ok_or_else(|| format!("it is signed by key {claimed}, which [trust] does not list"))?;
        minisign::verify(
            key,
            &signature,
            std::io::Cursor::new(bytes),
            true,
            false,
            false,
        )
        .map_err(|e| format!("its signature does not match its content (tampered?): {e}"))?;
        Ok(id.clone())
    }
}

/// A pinned plugin runs only with its pinned content.
fn check_pin(pin: Option<&str>, sha256: &str) -> Result<(), String> {
    match pin {
        Some(pin)
            if !pin
                .trim_start_matches("sha256:")
                .eq_ignore_ascii_case(sha256) =>
        {
            Err(format!(
                "its sha256 is {sha256}, but the configuration pins {pin}"
            ))
        }
        _ => Ok(()),
    }
}

/// Sign `bytes` with a minisign secret key (a `.sec` file's text; an
/// encrypted one needs its `password`): the text of a `.minisig` file, whose
/// trusted comment names the file and its sha256.
pub fn sign(
    bytes: &[u8],
    secret_key: &str,
    password: Option<String>,
    file_name: &str,
    sha256: &str,
) -> Result<String, String> {
    let key = SecretKeyBox::from_string(secret_key).map_err(|e| e.to_string())?;
    let key = match password {
        Some(password) => key.into_secret_key(Some(password)),
        None => key.into_unencrypted_secret_key(),
    }
    // (minisign 0.11's passwordless `-W` keys do not read back here: its
    // checksum differs; a password-protected key is the portable kind.)
    .map_err(|e| format!("cannot use the secret key: {e} (a password-protected key needs SLUICE_SIGNING_PASSWORD)"))?;
    let comment = format!("file:{file_name}\tsha256:{sha256}");
    let signature = minisign::sign(
        None,
        &key,
        std::io::Cursor::new(bytes),
        Some(&comment),
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(signature.to_string())
}

/// The component digest a signature's trusted comment names, if it names
/// one (`sluice plugin sign` writes `sha256:<hex>` there; stock minisign
/// writes a timestamp and the file name).
pub fn signed_digest(signature: &str) -> Option<String> {
    let comment = SignatureBox::from_string(signature)
        .ok()?
        .trusted_comment()
        .ok()?;
    comment
        .split('\t')
        .find_map(|field| field.strip_prefix("sha256:"))
        .map(str::to_owned)
}

/// Where a component's detached signature is looked for: `FILE.minisig`.
pub fn signature_path(component: &Path) -> PathBuf {
    let mut path = component.as_os_str().to_owned();
    path.push(".minisig");
    PathBuf::from(path)
}

/// A key's id as minisign prints it (its key number, big-endian hex).
fn key_id(key: &PublicKey) -> String {
    hex(key.keynum())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().rev().map(|b| format!("{b:02X}")).collect()
}
