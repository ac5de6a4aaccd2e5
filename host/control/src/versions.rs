//! Plugin versions: for each plugin, the compiled versions it has had (the
//! active one last), so an upload can be rolled back and a file that changes
//! back to an earlier content is not compiled again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_filter::Compiled;

/// Versions kept per plugin, the active one included.
const KEEP: usize = 4;

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Read from the file the configuration names.
    File(PathBuf),
    /// Pulled from an OCI registry: the reference, pinned to the manifest pulled.
    Registry(String),
    /// Uploaded through the admin API.
    Upload,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Registry(reference) => f.write_str(reference),
            Origin::Upload => f.write_str("admin upload"),
        }
    }
}

/// One compiled version of a plugin.
pub struct Version {
    /// Counts up from 1 per plugin.
    pub number: u32,
    /// The sha256 of the component's bytes, in hex.
    pub sha256: String,
    /// Where it came from.
    pub origin: Origin,
    /// When it was first loaded.
    pub loaded_at: SystemTime,
    /// The id of the trusted key that signed it, if it was signed.
    pub signed_by: Option<String>,
    pub(crate) compiled: Compiled,
}

#[derive(Clone, Default)]
struct History {
    /// Oldest first; the last is active.
    versions: Vec<Arc<Version>>,
    /// The sha256 of the plugin's file when last read: a file that has not
    /// changed since does not displace an uploaded or rolled-back version.
    file_sha: Option<String>,
    next: u32,
}

/// The versions of every plugin. Cloned, changed and swapped in whole, so a
/// change that fails to apply leaves the current one as it was.
#[derive(Clone, Default)]
pub struct Versions {
    plugins: BTreeMap<String, History>,
}

/// The sha256 of `bytes`, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Versions {
    /// The active version of `plugin`.
    pub fn active(&self, plugin: &str) -> Option<&Arc<Version>> {
        self.plugins.get(plugin)?.versions.last()
    }

    /// The version before the active one.
    pub fn previous(&self, plugin: &str) -> Option<&Arc<Version>> {
        let versions = &self.plugins.get(plugin)?.versions;
        versions.len().checked_sub(2).map(|i| &versions[i])
    }

    /// Whether the file of `plugin` holds something else (`sha`) than when last read.
    pub fn file_changed(&self, plugin: &str, sha: &str) -> bool {
        self.plugins
            .get(plugin)
            .is_none_or(|h| h.file_sha.as_deref() != Some(sha))
    }

    /// A compiled version of `plugin` with content `sha`, if one is kept.
    pub fn known(&self, plugin: &str, sha: &str) -> Option<Compiled> {
        let history = self.plugins.get(plugin)?;
        let version = history.versions.iter().find(|v| v.sha256 == sha)?;
        Some(version.compiled.clone())
    }

    /// The configured component of `plugin` (a file, or a registry's)
    /// changed to `vetted`: that version becomes active.
    pub fn file_read(&mut self, plugin: &str, origin: Origin, vetted: Vetted) {
        let history = self.plugins.entry(plugin.to_owned()).or_default();
        history.file_sha = Some(vetted.sha256.clone());
        push(history, origin, vetted);
    }

    /// An uploaded version of `plugin` becomes active.
    pub fn uploaded(&mut self, plugin: &str, vetted: Vetted) {
        let history = self.plugins.entry(plugin.to_owned()).or_default();
        push(history, Origin::Upload, vetted);
    }

    /// Drop the active version of `plugin`, making the one before active.
    pub fn roll_back(&mut self, plugin: &str) -> bool {
        match self.plugins.get_mut(plugin) {
            Some(history) if history.versions.len() >= 2 => {
                history.versions.pop();
                true
            }
            _ => false,
        }
    }

    /// Forget plugins the configuration no longer names.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.plugins.retain(|name, _| keep(name));
    }
}

/// A component that passed its pin and signature checks, compiled.
pub struct Vetted {
    /// The sha256 of its bytes, in hex.
    pub sha256: String,
    /// The trusted key that signed it, if signed.
    pub signed_by: Option<String>,
    /// What it compiled to.
    pub compiled: Compiled,
}

fn push(history: &mut History, origin: Origin, vetted: Vetted) {
    history.next += 1;
    history.versions.push(Arc::new(Version {
        number: history.next,
        sha256: vetted.sha256,
        origin,
        loaded_at: SystemTime::now(),
        signed_by: vetted.signed_by,
        compiled: vetted.compiled,
    }));
    if history.versions.len() > KEEP {
        history.versions.remove(0);
    }
}
