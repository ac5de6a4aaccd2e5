//! Plugins in OCI registries, as the Wasm OCI artifact layout has them: a
//! manifest whose config is `application/vnd.wasm.config.v0+json` and whose
//! one layer is the component, `application/wasm`. A plugin's minisign
//! signature is an artifact of its own, tagged after the manifest's digest
//! as cosign tags its signatures (`sha256-<hex>.minisig`), so any registry
//! holds it, referrers API or not.
//!
//! Pulls are verified against the digests they are addressed by and kept
//! in a content-addressed cache, so a pinned plugin loads again without
//! the registry.

mod auth;
mod reference;
pub(crate) mod transport;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

pub use reference::{Reference, SCHEME};
use transport::Transport;

use crate::versions::sha256;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const WASM_LAYER: &str = "application/wasm";
const SIGNATURE_LAYER: &str = "application/vnd.sluice.minisig.v1";
const SIGNATURE_ARTIFACT: &str = "application/vnd.sluice.minisig.config.v1+json";
/// OCI 1.1's empty config, for an artifact described by its `artifactType`.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const MAX_MANIFEST: usize = 4 << 20;
const MAX_BLOB: usize = 512 << 20;

/// Registry settings (`[oci]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciConfig {
    /// Where pulled manifests and components are kept, by digest. Defaults
    /// to `oci` in the engine's cache folder; `""` keeps nothing.
    pub cache_dir: Option<PathBuf>,
    /// Registries (`host:port`) spoken to over plain HTTP; those on
    /// loopback always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// CA certificates to trust for registries, instead of the system's.
    pub ca: Option<PathBuf>,
    /// Credentials by registry (`host:port`), for registries that ask.
    #[serde(default)]
    pub credentials: BTreeMap<String, Login>,
}

/// A registry account: the password is read from a file, kept out of the configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user name.
    pub username: String,
    /// A file holding the password or token (a trailing newline is ignored).
    pub password_file: PathBuf,
}

/// A plugin as pulled: verified against its manifest's digest.
pub struct Pulled {
    /// The component.
    pub component: Vec<u8>,
    /// Its detached minisign signature, if the registry holds one.
    pub signature: Option<String>,
    /// The manifest's digest, `sha256:<hex>`.
    pub digest: String,
}

/// Registries, reached with one configuration and one cache.
pub struct Registries {
    transport: Transport,
    auth: auth::Auth,
    cache: Option<PathBuf>,
}

/// A manifest, as far as Sluice reads it.
#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

impl Registries {
    /// Registries as `config` says (its files relative to `dir`), caching
    /// in `cache` (if any).
    pub fn new(
        config: &OciConfig,
        dir: &Path,
        cache: Option<PathBuf>,
    ) -> Result<Registries, String> {
        let mut credentials = HashMap::new();
        for (registry, login) in &config.credentials {
            let file = dir.join(&login.password_file);
            let password = std::fs::read_to_string(&file)
                .map_err(|e| format!("oci.credentials.\"{registry}\": {}: {e}", file.display()))?;
            credentials.insert(
                registry.clone(),
                auth::Credentials {
                    username: login.username.clone(),
                    password: password.trim_end_matches(['\r', '\n']).to_owned(),
                },
            );
        }
        let ca = config.ca.as_ref().map(|ca| dir.join(ca));
        Ok(Registries {
            transport: Transport::new(ca.as_deref(), &config.plain_http)?,
            auth: auth::Auth::new(credentials),
            cache,
        })
    }

    /// Pull the component `reference` names, and its signature when `signed`
    /// (a registry that cannot be reached for it is not an error while a
    /// signature is cached: it is checked against the keys like any other).
    pub async fn pull(&self, reference: &Reference, signed: bool) -> Result<Pulled, String> {
        let (digest, manifest) = self.manifest(reference).await?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| format!("{reference}: the manifest is not valid: {e}"))?;
        let layer = only_layer(&manifest, WASM_LAYER).ok_or_else(|| {
            format!(
                "{reference}: the manifest has no single `{WASM_LAYER}` layer (is it a plugin?)"
            )
        })?;
        let component = self.blob(reference, layer).await?.to_vec();
        let signature = match signed {
            true => self.signature(reference, &digest).await?,
            false => None,
        };
        Ok(Pulled {
            component,
            signature,
            digest,
        })
    }

    /// Push `component` (and its `signature`) as `reference`; answers the
    /// manifest's digest, which pins it.
    pub async fn push(
        &self,
        reference: &Reference,
        component: &[u8],
        signature: Option<&str>,
    ) -> Result<String, String> {
        let layer = self.upload(reference, component).await?;
        let config = serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer.0],
        }))
        .expect("JSON");
        let config = self.upload(reference, &config).await?;
        let manifest = image_manifest(
            WASM_CONFIG,
            (WASM_CONFIG, config),
            (WASM_LAYER, layer),
            None,
        );
        let size = manifest.len();
        let tag = reference.tag.as_deref();
        let digest = self.put_manifest(reference, tag, manifest).await?;
        if let Some(signature) = signature {
            let blob = self.upload(reference, signature.as_bytes()).await?;
            let config = self.upload(reference, b"{}").await?;
            // The component's manifest is its subject, so the OCI 1.1
            // referrers API (`oras discover`) finds it; the tag after the
            // digest serves registries without that API.
            let manifest = image_manifest(
                SIGNATURE_ARTIFACT,
                (EMPTY_CONFIG, config),
                (SIGNATURE_LAYER, blob),
                Some((digest.clone(), size)),
            );
            self.put_manifest(reference, Some(&signature_tag(&digest)), manifest)
                .await?;
        }
        Ok(digest)
    }

    /// Where a pinned reference's tag points now, when that is not the
    /// pinned manifest: `oci://…:1.4@sha256:A` whose `1.4` has moved to B
    /// answers B. `None` when it has not moved, has no tag, or the registry
    /// cannot say (the pin is what loads, whatever the tag does).
    pub async fn tag_moved(&self, reference: &Reference) -> Option<String> {
        let (tag, pinned) = (reference.tag.as_ref()?, reference.digest.as_ref()?);
        let now = self
            .get_if_present(reference, "manifests", tag, MANIFEST, MAX_MANIFEST)
            .await
            .ok()??;
        let now = format!("sha256:{}", sha256(&now));
        (now != *pinned).then_some(now)
    }

    /// The manifest and its digest: from the cache when pinned and kept,
    /// else from the registry, checked against the pin.
    async fn manifest(&self, reference: &Reference) -> Result<(String, Bytes), String> {
        if let Some(digest) = &reference.digest
            && let Some(kept) = self.cached(digest)
        {
            return Ok((digest.clone(), kept));
        }
        let answer = self
            .get(
                reference,
                "manifests",
                reference.manifest_ref(),
                MANIFEST,
                MAX_MANIFEST,
            )
            .await?;
        let digest = format!("sha256:{}", sha256(&answer));
        if let Some(pinned) = &reference.digest
            && *pinned != digest
        {
            return Err(format!(
                "{reference}: the registry answered a manifest with digest {digest}"
            ));
        }
        self.keep(&digest, &answer);
        Ok((digest, answer))
    }

    /// A blob, from the cache or the registry, checked against its digest.
    async fn blob(&self, reference: &Reference, layer: &Descriptor) -> Result<Bytes, String> {
        if let Some(kept) = self.cached(&layer.digest) {
            return Ok(kept);
        }
        if layer.size > MAX_BLOB as u64 {
            return Err(format!(
                "{reference}: a layer of {} bytes is too large",
                layer.size
            ));
        }
        let blob = self
            .get(reference, "blobs", &layer.digest, "*/*", MAX_BLOB)
            .await?;
        if format!("sha256:{}", sha256(&blob)) != layer.digest {
            return Err(format!(
                "{reference}: the registry's {} does not match its digest",
                layer.digest
            ));
        }
        self.keep(&layer.digest, &blob);
        Ok(blob)
    }

    /// The signature tagged after `digest`, if any: fetched each time (it
    /// may be re-signed), the cached one used when the registry is away.
    async fn signature(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Option<String>, String> {
        let tag = signature_tag(digest);
        let file = self
            .cache
            .as_ref()
            .map(|dir| dir.join("signatures").join(&tag));
        let fetched = async {
            let Some(manifest) = self
                .get_if_present(reference, "manifests", &tag, MANIFEST, MAX_MANIFEST)
                .await?
            else {
                return Ok(None);
            };
            let manifest: Manifest = serde_json::from_slice(&manifest)
                .map_err(|e| format!("{reference}: its signature's manifest is not valid: {e}"))?;
            let layer = only_layer(&manifest, SIGNATURE_LAYER)
                .ok_or_else(|| format!("{reference}: `{tag}` holds no minisign signature"))?;
            let blob = self.blob(reference, layer).await?;
            String::from_utf8(blob.to_vec())
                .map(Some)
                .map_err(|_| format!("{reference}: its signature is not text"))
        };
        match (fetched.await, &file) {
            (Ok(signature), Some(file)) => {
                match &signature {
                    Some(text) => write_atomically(file, text.as_bytes()),
                    None => {
                        let _ = std::fs::remove_file(file);
                    }
                }
                Ok(signature)
            }
            (Ok(signature), None) => Ok(signature),
            (Err(error), Some(file)) => match std::fs::read_to_string(file) {
                Ok(kept) => {
                    tracing::warn!("{error}; using the signature kept from an earlier pull");
                    Ok(Some(kept))
                }
                Err(_) => Err(error),
            },
            (Err(error), None) => Err(error),
        }
    }

    async fn get(
        &self,
        reference: &Reference,
        kind: &str,
        name: &str,
        accept: &str,
        limit: usize,
    ) -> Result<Bytes, String> {
        self.get_if_present(reference, kind, name, accept, limit)
            .await?
            .ok_or_else(|| format!("{reference}: the registry has no {kind} `{name}`"))
    }

    async fn get_if_present(
        &self,
        reference: &Reference,
        kind: &str,
        name: &str,
        accept: &str,
        limit: usize,
    ) -> Result<Option<Bytes>, String> {
        let url = self.url(reference, &format!("{kind}/{name}"));
        let accept = [(header::ACCEPT, accept)];
        let answer = self
            .request(
                reference,
                false,
                Method::GET,
                &url,
                &accept,
                Bytes::new(),
                limit,
            )
            .await?;
        match answer.status {
            StatusCode::OK => Ok(Some(answer.body)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(format!(
                "{reference}: GET {kind}/{name}: {}",
                said(status, &answer.body)
            )),
        }
    }

    /// Upload a blob unless the registry has it; its digest and size.
    async fn upload(&self, reference: &Reference, blob: &[u8]) -> Result<(String, usize), String> {
        let digest = format!("sha256:{}", sha256(blob));
        let fail = |step: &str, answer: &transport::Answer| {
            format!("{reference}: {step}: {}", said(answer.status, &answer.body))
        };
        let url = self.url(reference, &format!("blobs/{digest}"));
        let head = self
            .send(reference, Method::HEAD, &url, &[], Bytes::new())
            .await?;
        if head.status == StatusCode::OK {
            return Ok((digest, blob.len()));
        }
        let url = self.url(reference, "blobs/uploads/");
        let started = self
            .send(reference, Method::POST, &url, &[], Bytes::new())
            .await?;
        if started.status != StatusCode::ACCEPTED {
            return Err(fail("starting an upload", &started));
        }
        let location = started
            .header("location")
            .ok_or_else(|| format!("{reference}: an upload without a location"))?;
        let base = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let mut url = transport::resolve(&base, location)?.to_string();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let octets = [(header::CONTENT_TYPE, "application/octet-stream")];
        let done = self
            .send(
                reference,
                Method::PUT,
                &url,
                &octets,
                Bytes::copy_from_slice(blob),
            )
            .await?;
        if done.status != StatusCode::CREATED {
            return Err(fail("uploading a blob", &done));
        }
        Ok((digest, blob.len()))
    }

    /// Put a manifest under `tag` (or its digest); answers its digest.
    async fn put_manifest(
        &self,
        reference: &Reference,
        tag: Option<&str>,
        manifest: Vec<u8>,
    ) -> Result<String, String> {
        let digest = format!("sha256:{}", sha256(&manifest));
        let url = self.url(reference, &format!("manifests/{}", tag.unwrap_or(&digest)));
        let answer = self
            .send(
                reference,
                Method::PUT,
                &url,
                &[(header::CONTENT_TYPE, MANIFEST)],
                manifest.into(),
            )
            .await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => Ok(digest),
            status => Err(format!(
                "{reference}: putting the manifest: {}",
                said(status, &answer.body)
            )),
        }
    }

    /// A request for pushing: small answers.
    async fn send(
        &self,
        reference: &Reference,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
    ) -> Result<transport::Answer, String> {
        self.request(reference, true, method, url, headers, body, MAX_MANIFEST)
            .await
    }

    /// A request to `reference`'s registry, authorised as it last asked;
    /// one it refuses with a challenge is answered and tried once more.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        reference: &Reference,
        push: bool,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
        limit: usize,
    ) -> Result<transport::Answer, String> {
        let registry = &reference.registry;
        let mut authorization = self.auth.authorization(registry);
        // What was granted before may have expired or be for another
        // repository: a refusal of it is answered once, as a first one is.
        for first in [true, false] {
            let mut all = headers.to_vec();
            if let Some(value) = &authorization {
                all.push((header::AUTHORIZATION, value));
            }
            let answer = self
                .transport
                .send(method.clone(), url, &all, body.clone(), limit)
                .await
                .map_err(|e| format!("{reference}: {e}"))?;
            let challenge = match (answer.status, answer.header("www-authenticate")) {
                (StatusCode::UNAUTHORIZED, Some(challenge)) if first => challenge,
                _ => return Ok(answer),
            };
            let answered = self
                .auth
                .answer(
                    &self.transport,
                    registry,
                    &reference.repository,
                    push,
                    challenge,
                )
                .await
                .map_err(|e| format!("{reference}: {e}"))?;
            authorization = Some(answered);
        }
        unreachable!("the second try returns whatever the registry answered")
    }

    fn url(&self, reference: &Reference, rest: &str) -> String {
        format!(
            "{}/v2/{}/{rest}",
            self.transport.base(&reference.registry),
            reference.repository
        )
    }

    /// Kept content, checked again (a cache on disk can be damaged).
    fn cached(&self, digest: &str) -> Option<Bytes> {
        let file = self.blob_file(digest)?;
        let bytes = std::fs::read(&file).ok()?;
        match format!("sha256:{}", sha256(&bytes)) == digest {
            true => Some(bytes.into()),
            false => {
                let _ = std::fs::remove_file(&file);
                None
            }
        }
    }

    fn keep(&self, digest: &str, bytes: &[u8]) {
        if let Some(file) = self.blob_file(digest) {
            write_atomically(&file, bytes);
        }
    }

    fn blob_file(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        Some(self.cache.as_ref()?.join("blobs").join("sha256").join(hex))
    }
}

/// The tag a manifest's signature goes under.
fn signature_tag(digest: &str) -> String {
    format!("{}.minisig", digest.replace(':', "-"))
}

/// The one layer of `media_type`, if there is exactly one.
fn only_layer<'a>(manifest: &'a Manifest, media_type: &str) -> Option<&'a Descriptor> {
    let mut layers = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == media_type);
    let layer = layers.next()?;
    layers.next().is_none().then_some(layer)
}

/// An image manifest for an artifact of `artifact_type`, with one config and
/// one layer (each a media type, digest and size), and the manifest it
/// refers to (`subject`), if any.
fn image_manifest(
    artifact_type: &str,
    config: (&str, (String, usize)),
    layer: (&str, (String, usize)),
    subject: Option<(String, usize)>,
) -> Vec<u8> {
    let descriptor = |(media_type, (digest, size)): (&str, (String, usize))| json!({ "mediaType": media_type, "digest": digest, "size": size });
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(config),
        "layers": [descriptor(layer)],
    });
    if let Some(subject) = subject {
        manifest["subject"] = descriptor((MANIFEST, subject));
    }
    serde_json::to_vec(&manifest).expect("JSON")
}

/// A status and the start of what the registry said.
fn said(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    format!("{status} {}", text.trim())
}

/// Write through a temporary file, so a crash leaves nothing half-written.
fn write_atomically(file: &Path, bytes: &[u8]) {
    let Some(dir) = file.parent() else { return };
    let temporary = dir.join(format!(".partial-{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&temporary, bytes))
        .and_then(|()| std::fs::rename(&temporary, file));
    if let Err(e) = written {
        tracing::warn!("could not keep {} in the cache: {e}", file.display());
    }
}
