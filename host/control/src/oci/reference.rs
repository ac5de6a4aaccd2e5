//! `oci://registry/repository:tag@sha256:digest` references.

use std::fmt;

/// A plugin in an OCI registry: by tag, by digest, or both (the digest
/// decides; the tag is kept for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// `path/to/name`.
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The manifest's digest, `sha256:<hex>`, if pinned.
    pub digest: Option<String>,
}

/// The scheme that marks a plugin `path` as a registry reference.
pub const SCHEME: &str = "oci://";

impl Reference {
    /// The reference a plugin `path` is, if it starts with `oci://`.
    pub fn of_path(path: &std::path::Path) -> Option<Result<Reference, String>> {
        let text = path.to_str()?;
        text.starts_with(SCHEME).then(|| Reference::parse(text))
    }

    /// Parse `oci://registry/repository[:tag][@sha256:hex]`.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let bad = |why: &str| format!("`{text}` is not an OCI reference: {why}");
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with oci://"))?;
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (rest, None),
        };
        if let Some(digest) = digest {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("the digest must be sha256:<hex>"))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(bad(
                    "the digest must be sha256: and 64 lowercase hex digits",
                ));
            }
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no repository (oci://registry/repository:tag)"))?;
        if registry.is_empty()
            || registry.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
        {
            return Err(bad("the registry must be host[:port]"));
        }
        // A tag follows a `:` with no `/` after it.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "the repository must be lowercase letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(bad("the tag must be letters, digits, `.`, `_` and `-`"));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad(
                "it needs a tag, a digest or both (repository:tag@sha256:...)",
            ));
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// What the manifest is asked for by: the digest when pinned.
    pub(crate) fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .expect("a reference has a tag or a digest")
    }

    /// The same reference, pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_with_ports_paths_tags_and_digests() {
        let r =
            Reference::parse(&format!("oci://127.0.0.1:5000/team/auth:1.2@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/auth");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.digest, Some(format!("sha256:{HEX}")));
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(
            r.to_string(),
            format!("oci://127.0.0.1:5000/team/auth:1.2@sha256:{HEX}")
        );

        let r = Reference::parse("oci://ghcr.io/acme/jwt:latest").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.manifest_ref()),
            ("acme/jwt", "latest")
        );
        assert_eq!(r.pinned("sha256:x").digest.as_deref(), Some("sha256:x"));
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (text, why) in [
            ("ghcr.io/a:1", "oci://"),
            ("oci://ghcr.io", "no repository"),
            ("oci://ghcr.io/a", "needs a tag"),
            ("oci://ghcr.io/Acme:1", "lowercase"),
            ("oci://ghcr.io/a:1@md5:00", "sha256"),
            ("oci://ghcr.io/a@sha256:ABC", "64 lowercase"),
            ("oci://ghcr.io/a:-x", "the tag"),
        ] {
            let error = Reference::parse(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
