//! The control plane: building a gateway from a configuration and swapping
//! it in while traffic flows. Every change — a reload of the file, an
//! uploaded plugin version, a rollback — is built whole off the request
//! path (plugins compiled, every route's filters initialised, new listeners
//! bound) and only then swapped in atomically. Requests in flight finish on
//! the gateway they started with; a change that fails changes nothing.

#![deny(missing_docs)]

pub mod admin;
pub mod config;
pub mod fleet;
pub mod oci;
mod server;
mod source;
pub mod trust;
pub mod versions;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use sluice_filter::metrics::{FilterMetrics, Labels, Registry, counters, labels};
use sluice_filter::{Capabilities, Compiled, FilterEngine, HttpUpstream, Services};
use sluice_proxy::access_log::AccessLog;
use sluice_proxy::listener::{ListenerSettings, Listeners, Wanted};
use sluice_proxy::trace::Tracing;
use sluice_proxy::upstream::Upstream;
use sluice_proxy::{Gateway, Shared};
use sluice_state::ConnectError;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use admin::AdminAccess;
pub use config::{Config, ConfigError};
use fleet::{FleetDoc, FleetView, Member};
pub use server::Server;
use source::Source;
use versions::{Origin, Versions, Vetted, sha256};

/// Applied to every configuration after it is read (before it is checked).
pub type ConfigHook = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Why a change was refused; the gateway goes on as it was.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The configuration or a plugin is invalid, or a listener cannot open.
    #[error("{0}")]
    Invalid(String),
    /// No plugin by that name is configured.
    #[error("no plugin named `{0}` is configured")]
    UnknownPlugin(String),
    /// A rollback with no earlier version to go back to.
    #[error("plugin `{0}` has no earlier version to roll back to")]
    NoPrevious(String),
}

/// A change to apply.
enum Change {
    /// Read the configuration file and the plugin files again.
    Reload,
    /// Make these bytes the active version of a plugin; `signature` is
    /// its detached minisign signature, if it came with one.
    Upload {
        plugin: String,
        bytes: Vec<u8>,
        signature: Option<String>,
    },
    /// Go back to a plugin's previous version.
    Rollback { plugin: String },
    /// Serve the fleet's configuration at a new revision.
    Fleet(FleetDoc),
}

/// A plugin as loaded now, for `GET /plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Its name in the configuration.
    pub name: String,
    /// The active version's number (counting from 1 for this plugin).
    pub version: u32,
    /// The sha256 of the active version's bytes.
    pub sha256: String,
    /// The kind of policy it implements (its WIT interface).
    pub kind: &'static str,
    /// The version of `sluice:filter` it was built for.
    pub contract: &'static str,
    /// Where the active version came from.
    pub origin: Origin,
    /// When the active version was loaded (RFC 3339).
    pub loaded_at: String,
    /// The version a rollback would return to.
    pub previous: Option<u32>,
    /// The routes whose chains use it.
    pub routes: Vec<String>,
    /// The id of the trusted key that signed the active version, if signed.
    pub signed_by: Option<String>,
    /// The interfaces the active version imports.
    pub imports: Vec<String>,
    /// What its configuration grants (`kv`, `http:<upstream>`, ...).
    pub grants: Vec<String>,
    /// Capabilities it imports that its configuration denies on purpose.
    pub denied: Vec<String>,
}

/// What a successful change left in place.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// Counts every configuration swapped in, from 1.
    pub generation: u64,
    /// The plugins now loaded.
    pub plugins: Vec<PluginInfo>,
}

/// What the last good configuration was made of.
struct State {
    text: String,
    /// In a fleet, the fleet's configuration in force (after the file's).
    fleet: Option<FleetDoc>,
    versions: Versions,
    generation: u64,
    plugins: Vec<PluginInfo>,
    /// The configuration file and the plugin files, to watch.
    files: Vec<PathBuf>,
    /// Whether changes to them trigger a reload.
    watch: bool,
}

/// What outlives every configuration: the engine (and its compiled
/// plugins), the plugins' state, the response cache and the metrics.
struct Kept {
    engine: FilterEngine,
    /// proxy-wasm plugins' shared data and queues.
    proxy_data: Arc<sluice_filter::proxy_wasm::ProxyData>,
    shared: Shared,
    filters: Arc<FilterMetrics>,
}

impl Kept {
    async fn new(config: &Config) -> anyhow::Result<Kept> {
        let registry = Registry::new();
        let mut shared = Shared::new(&config.cache, registry.clone());
        if let Some(tracing) = &config.tracing {
            let started = Tracing::start(tracing.get_ref())
                .map_err(|e| config.source.error(tracing.span().start, "tracing", e))?;
            shared.tracing = Some(started);
        }
        if let Some(state) = &config.state {
            shared.connect_state(state.get_ref()).await.map_err(|e| {
                let key = match &e {
                    ConnectError::Config { key, .. } => format!("state.{key}"),
                    ConnectError::Auth { .. } => "state.password_file".into(),
                };
                config.source.error(state.span().start, key, e.to_string())
            })?;
        }
        Ok(Kept {
            engine: FilterEngine::with_instances(
                config.engine.cache_dir().as_deref(),
                config.engine.max_instances,
            )?,
            filters: Arc::new(FilterMetrics::new(registry)),
            proxy_data: Arc::default(),
            shared,
        })
    }
}

/// Owns the current gateway and changes it.
pub struct Control {
    path: PathBuf,
    hook: Option<ConfigHook>,
    kept: Kept,
    gateway: Arc<ArcSwap<Gateway>>,
    listeners: Listeners,
    admin: std::sync::Mutex<Option<(TcpListener, AdminAccess)>>,
    admin_addr: Option<SocketAddr>,
    /// Held for the length of a change, so changes apply one at a time.
    state: tokio::sync::Mutex<State>,
    reloads_ok: Counter,
    reloads_failed: Counter,
    /// 1 per active plugin version, by plugin, version and digest.
    plugin_info: Family<Labels, Gauge>,
    /// This instance's part in a fleet, when `[fleet]` is configured.
    member: Option<Arc<Member>>,
    /// Whether a configuration is live: at once from a file; in a fleet,
    /// once one came from etcd or the snapshot.
    ready: AtomicBool,
}

impl Control {
    /// Build the first gateway from `config` and bind its listeners (and the
    /// admin listener); nothing is accepted until serving starts.
    pub(crate) async fn start(
        mut config: Config,
        hook: Option<ConfigHook>,
    ) -> anyhow::Result<Arc<Control>> {
        if let Some(hook) = &hook {
            hook(&mut config);
        }
        let kept = Kept::new(&config).await?;
        let mut versions = Versions::default();
        sync_files(&config, &kept.engine, &mut versions)
            .await
            .map_err(anyhow::Error::msg)?;
        let gateway = build(&config, &kept, &versions).await?;
        let gateway = Arc::new(ArcSwap::from_pointee(gateway));
        let listeners = Listeners::new(gateway.clone());
        let wanted = wanted_listeners(&config)?;
        let opened = listeners.open(&wanted).map_err(anyhow::Error::msg)?;
        listeners.commit(&wanted, opened);
        let admin = match &config.admin {
            Some(admin) => {
                let addr = *admin.address.get_ref();
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (admin): {e}"))?;
                let access = AdminAccess::new(admin, &config.source, listener.local_addr()?)?;
                Some((listener, access))
            }
            None => None,
        };
        let reloads = counters(
            &kept.shared.registry,
            "reloads",
            "Configuration changes applied or refused",
        );
        let reloads = |result| reloads.get_or_create(&labels([("result", result)])).clone();
        let plugin_info = Family::<Labels, Gauge>::default();
        kept.shared.registry.register(
            "plugin_info",
            "1 for each plugin's active version, by plugin, version and sha256",
            plugin_info.clone(),
        );
        let member = match &config.fleet {
            Some(fleet) => {
                let fleet = fleet.get_ref();
                let port = listeners.local_addrs().first().map(|a| a.port());
                let id = fleet.id.clone().unwrap_or_else(|| fleet::default_id(port));
                let cache = config.engine.cache_dir();
                let snapshot = fleet::snapshot_dir(fleet, cache.as_deref(), &config.source);
                let admin = admin.as_ref().and_then(|(l, _)| l.local_addr().ok());
                let member = Member::new(
                    fleet,
                    &config.source,
                    id,
                    snapshot,
                    admin.map(|a| a.to_string()),
                )?;
                member.metrics().register(&kept.shared.registry);
                Some(Arc::new(member))
            }
            None => None,
        };
        let state = State {
            text: config.source.text().to_owned(),
            fleet: None,
            plugins: plugin_infos(&config, &versions),
            files: watched_files(&config, &gateway.load()),
            watch: config.reload.watch,
            versions,
            generation: 1,
        };
        publish(&plugin_info, &state.plugins);
        let control = Arc::new(Control {
            path: config.source.path.clone(),
            hook,
            admin_addr: admin.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            admin: std::sync::Mutex::new(admin),
            reloads_ok: reloads("ok"),
            reloads_failed: reloads("error"),
            plugin_info,
            kept,
            gateway,
            listeners,
            state: tokio::sync::Mutex::new(state),
            ready: AtomicBool::new(member.is_none()),
            member,
        });
        control.serve_saved().await;
        Ok(control)
    }

    /// In a fleet, serve the configuration this instance last applied, kept
    /// on disk, until etcd answers (it may be down).
    pub(crate) async fn serve_saved(&self) {
        let Some(saved) = self.member.as_ref().and_then(|m| m.saved()) else {
            return;
        };
        let revision = saved.revision;
        match self
            .member
            .as_ref()
            .expect("checked")
            .apply(self, saved)
            .await
        {
            Ok(()) => tracing::info!("fleet: serving revision {revision} from the snapshot"),
            Err(e) => {
                tracing::warn!("fleet: the snapshot (revision {revision}) does not load: {e}")
            }
        }
    }

    /// Whether a configuration is live (`/readyz`).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Serve the fleet's configuration `doc`.
    pub(crate) async fn apply_fleet(&self, doc: FleetDoc) -> Result<Applied, ChangeError> {
        let applied = self.apply(Change::Fleet(doc)).await;
        if applied.is_ok() {
            self.ready.store(true, Ordering::Release);
        }
        applied
    }

    /// This instance's fleet: the configuration's revision, and every
    /// instance as it last published itself.
    pub async fn fleet(&self) -> Option<Result<FleetView, String>> {
        let member = self.member.as_ref()?;
        Some(member.view().await.map_err(|e| e.to_string()))
    }

    /// Start accepting, and the admin API and file watcher if configured;
    /// returns the background tasks to stop at shutdown.
    pub(crate) fn start_serving(self: Arc<Self>) -> Vec<JoinHandle<()>> {
        self.listeners.start();
        let mut tasks = Vec::new();
        if let Some((admin, access)) = self.admin.lock().expect("admin lock").take() {
            tasks.push(tokio::spawn(admin::serve(admin, access, self.clone())));
        }
        // Always running; `[reload] watch` (which a reload may change) decides
        // whether changes count.
        tasks.push(tokio::spawn(watch::watch(self.clone())));
        if let Some(member) = &self.member {
            tasks.push(tokio::spawn(member.clone().follow(self.clone())));
            tasks.push(tokio::spawn(member.clone().publish()));
        }
        tasks
    }

    pub(crate) fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// The client listeners' addresses, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway serving new requests now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// The engine's on-disk compilation cache: (hits, misses).
    pub fn compile_cache_stats(&self) -> Option<(usize, usize)> {
        self.kept.engine.cache_stats()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Registry {
        &self.kept.shared.registry
    }

    /// Read the configuration file and plugin files again and swap in the result.
    pub async fn reload(&self) -> Result<Applied, ChangeError> {
        self.apply(Change::Reload).await
    }

    /// Make `bytes` the active version of `plugin` (until its file changes or a rollback).
    pub async fn upload(
        &self,
        plugin: &str,
        bytes: Vec<u8>,
        signature: Option<String>,
    ) -> Result<Applied, ChangeError> {
        self.apply(Change::Upload {
            plugin: plugin.to_owned(),
            bytes,
            signature,
        })
        .await
    }

    /// Return `plugin` to its previous version.
    pub async fn rollback(&self, plugin: &str) -> Result<Applied, ChangeError> {
        self.apply(Change::Rollback {
            plugin: plugin.to_owned(),
        })
        .await
    }

    /// The plugins loaded now.
    pub async fn plugins(&self) -> Applied {
        let state = self.state.lock().await;
        Applied {
            generation: state.generation,
            plugins: state.plugins.clone(),
        }
    }

    /// The configuration in force, as JSON, with every secret replaced by
    /// `"<redacted>"`: values whose key names one (tokens, passwords,
    /// secrets, private keys, API keys, credentials in headers), JWKs'
    /// private members, and credentials recognisable by their shape.
    pub async fn redacted_config(&self) -> serde_json::Value {
        let text = self.state.lock().await.text.clone();
        let mut value: toml::Value =
            toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
        let _ = redact(&mut value);
        serde_json::to_value(value).unwrap_or_default()
    }

    /// The files a reload reads (the configuration and the plugins), and
    /// whether their changes should trigger one.
    pub(crate) async fn files(&self) -> (Vec<PathBuf>, bool) {
        let state = self.state.lock().await;
        (state.files.clone(), state.watch)
    }

    async fn apply(&self, change: Change) -> Result<Applied, ChangeError> {
        let what = match &change {
            Change::Reload => "reload".to_owned(),
            Change::Upload { plugin, .. } => format!("upload of plugin `{plugin}`"),
            Change::Rollback { plugin } => format!("rollback of plugin `{plugin}`"),
            Change::Fleet(doc) => format!("fleet revision {}", doc.revision),
        };
        let fleet = match &change {
            Change::Fleet(doc) => Some(doc.clone()),
            _ => None,
        };
        let mut state = self.state.lock().await;
        match self.prepare(&state, change).await {
            Ok((config, versions, gateway, wanted)) => {
                let opened = match self.listeners.open(&wanted) {
                    Ok(opened) => opened,
                    Err(e) => return Err(self.failed(&what, ChangeError::Invalid(e))),
                };
                // The swap: requests arriving from here on see the new gateway.
                let files = watched_files(&config, &gateway);
                self.gateway.store(Arc::new(gateway));
                self.listeners.commit(&wanted, opened);
                state.generation += 1;
                state.text = config.source.text().to_owned();
                if fleet.is_some() {
                    state.fleet = fleet;
                }
                state.plugins = plugin_infos(&config, &versions);
                publish(&self.plugin_info, &state.plugins);
                state.files = files;
                state.watch = config.reload.watch;
                state.versions = versions;
                self.reloads_ok.inc();
                tracing::info!(generation = state.generation, "{what}: applied");
                Ok(Applied {
                    generation: state.generation,
                    plugins: state.plugins.clone(),
                })
            }
            Err(error) => Err(self.failed(&what, error)),
        }
    }

    fn failed(&self, what: &str, error: ChangeError) -> ChangeError {
        self.reloads_failed.inc();
        tracing::error!("{what} refused, still serving the previous configuration: {error}");
        error
    }

    /// Build everything a change needs, touching nothing that serves.
    async fn prepare(
        &self,
        state: &State,
        change: Change,
    ) -> Result<(Config, Versions, Gateway, Wanted), ChangeError> {
        let invalid = |e: &dyn std::fmt::Display| ChangeError::Invalid(e.to_string());
        let own = match &change {
            Change::Reload | Change::Fleet(_) => Config::read(&self.path),
            _ => Ok(Source::new(&self.path, state.text.clone())
                .own_text()
                .to_owned()),
        };
        let doc = match &change {
            Change::Fleet(doc) => Some(doc),
            _ => state.fleet.as_ref(),
        };
        let mut config = own
            .and_then(|own| match doc {
                Some(doc) => Config::with_fleet(&self.path, &own, &doc.name(), &doc.text),
                None => Config::parse(&self.path, own),
            })
            .map_err(|e| invalid(&e))?;
        if let Some(hook) = &self.hook {
            hook(&mut config);
        }
        let mut versions = state.versions.clone();
        match change {
            Change::Reload | Change::Fleet(_) => {
                sync_files(&config, &self.kept.engine, &mut versions)
                    .await
                    .map_err(|e| invalid(&e))?
            }
            Change::Upload {
                plugin,
                bytes,
                signature,
            } => {
                let Some(settings) = config.plugins.get(&plugin) else {
                    return Err(ChangeError::UnknownPlugin(plugin));
                };
                let sha = sha256(&bytes);
                let signed_by = config
                    .trusted
                    .vet(pin(settings), &sha, &bytes, signature.as_deref())
                    .map_err(|e| invalid(&format!("plugin `{plugin}`: upload refused: {e}")))?;
                let component = compile(&self.kept.engine, bytes)
                    .await
                    .map_err(|e| invalid(&format!("plugin `{plugin}`: {e}")))?;
                if let Some(active) = versions.active(&plugin)
                    && active.compiled.kind != component.kind
                {
                    // Another kind would move the plugin to another phase of its routes.
                    return Err(invalid(&format!(
                        "plugin `{plugin}`: the upload implements `{}`, but its routes use it as `{}`",
                        component.kind.interface(),
                        active.compiled.kind.interface()
                    )));
                }
                versions.uploaded(
                    &plugin,
                    Vetted {
                        sha256: sha,
                        signed_by,
                        compiled: component,
                    },
                );
            }
            Change::Rollback { plugin } => {
                if !config.plugins.contains_key(&plugin) {
                    return Err(ChangeError::UnknownPlugin(plugin));
                }
                if !versions.roll_back(&plugin) {
                    return Err(ChangeError::NoPrevious(plugin));
                }
            }
        }
        versions.retain(|name| config.plugins.contains_key(name));
        let gateway = build(&config, &self.kept, &versions)
            .await
            .map_err(|e| invalid(&format!("{e:#}")))?;
        let wanted = wanted_listeners(&config).map_err(|e| invalid(&e))?;
        Ok((config, versions, gateway, wanted))
    }
}

/// What `sluice check` found.
pub struct Checked {
    /// Each plugin: what it is, imports and is granted.
    pub plugins: Vec<PluginInfo>,
    /// Each transcoding route's name and the HTTP routes it offers.
    pub transcoded: Vec<(String, Vec<String>)>,
}

/// Load every plugin and build every route of `config`, as a start would,
/// without binding anything: what `sluice check` runs.
pub async fn check(config: &Config) -> anyhow::Result<Checked> {
    // What `run` would refuse before building anything: no listeners, certificates that do not load.
    wanted_listeners(config)?;
    let kept = Kept::new(config).await?;
    let mut versions = Versions::default();
    sync_files(config, &kept.engine, &mut versions)
        .await
        .map_err(anyhow::Error::msg)?;
    let gateway = build(config, &kept, &versions).await?;
    let transcoded = gateway
        .transcoders()
        .map(|(route, t)| (route.to_owned(), t.describe().collect()))
        .collect();
    Ok(Checked {
        plugins: plugin_infos(config, &versions),
        transcoded,
    })
}

/// Compile on a blocking thread: it takes milliseconds to seconds of CPU.
async fn compile(engine: &FilterEngine, bytes: Vec<u8>) -> Result<Compiled, String> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.compile(&bytes))
        .await
        .map_err(|e| format!("compilation stopped: {e}"))?
}

/// Read every plugin's file; those that changed become active (compiled if new).
async fn sync_files(
    config: &Config,
    engine: &FilterEngine,
    versions: &mut Versions,
) -> Result<(), String> {
    let src = &config.source;
    let trust = &config.trusted;
    let mut registries = None;
    for (name, plugin) in &config.plugins {
        let at = |reason: String| {
            src.error(
                plugin.path.span().start,
                format!("plugins.{name}.path"),
                format!(
                    "plugin `{name}` ({}): {reason}",
                    plugin.path.get_ref().display()
                ),
            )
            .to_string()
        };
        let (origin, bytes, signature) = read_plugin(config, plugin, &mut registries)
            .await
            .map_err(at)?;
        let sha = sha256(&bytes);
        let signed_by = trust
            .vet(
                component_pin(plugin, &origin),
                &sha,
                &bytes,
                signature.as_deref(),
            )
            .map_err(at)?;
        if !versions.file_changed(name, &sha) {
            continue;
        }
        let compiled = match versions.known(name, &sha) {
            Some(compiled) => compiled,
            None => compile(engine, bytes).await.map_err(at)?,
        };
        let vetted = Vetted {
            sha256: sha,
            signed_by,
            compiled,
        };
        versions.file_read(name, origin, vetted);
    }
    Ok(())
}

/// A plugin's component, where it came from (a file, or the reference
/// pinned to what was pulled) and, when signatures are
/// required, its signature: from the file beside it or the one named, or
/// from the registry it was pulled from (a named file overrides).
async fn read_plugin(
    config: &Config,
    plugin: &sluice_filter::config::PluginConfig,
    registries: &mut Option<oci::Registries>,
) -> Result<(Origin, Vec<u8>, Option<String>), String> {
    let src = &config.source;
    let path = src.dir().join(plugin.path.get_ref());
    let required = config.trusted.required();
    let signature_file = match (required, &plugin.signature) {
        (false, _) => None,
        (true, Some(file)) => Some(src.dir().join(file)),
        (true, None) => Some(trust::signature_path(&path)),
    };
    let read_signature = async || match &signature_file {
        Some(file) => tokio::fs::read_to_string(file).await.ok(),
        None => None,
    };
    let Some(reference) = oci::Reference::of_path(plugin.path.get_ref()) else {
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        return Ok((Origin::File(path), bytes, read_signature().await));
    };
    let reference = reference?;
    let registries = match registries {
        Some(registries) => registries,
        None => registries.insert(oci::Registries::new(
            &config.oci,
            src.dir(),
            oci_cache(config),
        )?),
    };
    let from_registry = required && plugin.signature.is_none();
    let pulled = registries.pull(&reference, from_registry).await?;
    let signature = match from_registry {
        true => pulled.signature,
        false => read_signature().await,
    };
    let origin = Origin::Registry(reference.pinned(&pulled.digest).to_string());
    // Only said, never waited on for long: the pin is what loads.
    let moved = tokio::time::timeout(TAG_CHECK, registries.tag_moved(&reference)).await;
    if let Ok(Some(moved)) = moved {
        sluice_filter::log_throttled!(
            warn,
            ("tag moved", plugin.path.get_ref(), &moved),
            reference = %reference,
            "{reference}: the tag has moved to {moved} since it was pinned; the pinned manifest loads"
        );
    }
    if reference.digest.is_none() && pin(plugin).is_none() {
        // A tag can be moved to other content at any time: say so, with the
        // reference that would hold this content.
        sluice_filter::log_throttled!(
            warn,
            ("unpinned", plugin.path.get_ref()),
            reference = %reference,
            "{reference} is not pinned: a tag can move to other content; pin it as {origin}"
        );
    }
    Ok((origin, pulled.component, signature))
}

/// How long a load waits to learn whether a pinned tag has moved.
const TAG_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Where pulled plugins are kept: `[oci] cache_dir`, else `oci` in the
/// engine's cache folder.
fn oci_cache(config: &Config) -> Option<PathBuf> {
    match &config.oci.cache_dir {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => Some(config.source.dir().join(dir)),
        None => config.engine.cache_dir().map(|dir| dir.join("oci")),
    }
}

/// A plugin's configured pin, if any.
fn pin(plugin: &sluice_filter::config::PluginConfig) -> Option<&str> {
    plugin.sha256.as_ref().map(|pin| pin.get_ref().as_str())
}

/// The pin a component's own digest must meet. `sha256 =` may name either
/// digest of a plugin pulled from a registry: the component's, or the
/// manifest's it was pulled by (which pins the component, its layer digest
/// checked on the pull), so the digest `oci://…@sha256:` shows pastes as is.
fn component_pin<'a>(
    plugin: &'a sluice_filter::config::PluginConfig,
    origin: &Origin,
) -> Option<&'a str> {
    let pin = pin(plugin)?;
    let manifest = match origin {
        Origin::Registry(reference) => reference.rsplit_once("@sha256:").map(|(_, hex)| hex),
        _ => None,
    };
    let pinned_manifest =
        manifest.is_some_and(|hex| pin.trim_start_matches("sha256:").eq_ignore_ascii_case(hex));
    (!pinned_manifest).then_some(pin)
}

/// A gateway from `config`, with each plugin's active version.
async fn build(config: &Config, kept: &Kept, versions: &Versions) -> anyhow::Result<Gateway> {
    let src = &config.source;
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    for (name, u) in &config.upstreams {
        let shared = &kept.shared;
        let upstream = Upstream::build(name, u, &shared.targets, &shared.metrics)
            .await
            .map_err(|e| src.error(u.targets.span().start, format!("upstreams.{name}"), e))?;
        upstreams.insert(name.clone(), upstream);
    }
    let services = Services {
        stores: kept.shared.stores.clone(),
        upstreams: upstreams
            .iter()
            .map(|(name, u)| (name.clone(), u.clone() as Arc<dyn HttpUpstream>))
            .collect(),
        metrics: kept.filters.clone(),
        proxy_data: kept.proxy_data.clone(),
    };
    let mut plugins = HashMap::new();
    for (name, plugin) in &config.plugins {
        let version = versions
            .active(name)
            .ok_or_else(|| anyhow::anyhow!("plugin `{name}` has no version loaded"))?;
        config
            .trusted
            .still_admits(
                component_pin(plugin, &version.origin),
                &version.sha256,
                version.signed_by.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("plugin `{name}`: version {}: {e}", version.number))?;
        let caps = Capabilities::bind(name, plugin, &services);
        let path = match &version.origin {
            Origin::File(path) => path.clone(),
            Origin::Registry(reference) => PathBuf::from(reference),
            Origin::Upload => PathBuf::from(format!("upload:{}", version.sha256)),
        };
        let loaded = kept
            .engine
            .load(name, &path, &version.compiled, plugin, caps)
            .map_err(|e| {
                src.error(
                    plugin.path.span().start,
                    format!("plugins.{name}.path"),
                    e.to_string(),
                )
            })?;
        // A proxy-wasm plugin with a configuration of its own runs from now.
        loaded.start().await.map_err(|e| {
            src.error(
                plugin.path.span().start,
                format!("plugins.{name}.configuration"),
                e.to_string(),
            )
        })?;
        plugins.insert(name.clone(), Arc::new(loaded));
    }
    let access_log = match &config.access_log {
        Some(log) => {
            let dropped = kept.shared.metrics.access_log_dropped.clone();
            let opened = AccessLog::open(log.get_ref(), src.dir(), dropped).map_err(|e| {
                src.error(
                    log.span().start,
                    "access_log.to",
                    format!("{}: {e}", log.get_ref().to),
                )
            })?;
            Some(opened)
        }
        None => None,
    };
    Gateway::build(
        &config.routes,
        &config.listeners,
        src.dir(),
        &plugins,
        upstreams,
        &kept.shared,
        access_log,
    )
    .await
    .map_err(|e| src.error(e.at, e.key, e.message).into())
}

/// Each listener's address, and its TLS acceptor (certificates read now).
/// None is an error, also on reload: a file read while an editor rewrites it
/// can be empty, and applying it would close every listener.
fn wanted_listeners(config: &Config) -> Result<Wanted, ConfigError> {
    let src = &config.source;
    if config.listeners.is_empty() {
        return Err(src.error(0, "", "no [[listeners]] configured"));
    }
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, listener)| {
            check_layer4(config, i, listener)?;
            let acceptor = match &listener.tls {
                None => None,
                Some(tls) => {
                    let cert = src.dir().join(&tls.get_ref().cert);
                    let key = src.dir().join(&tls.get_ref().key);
                    // A TCP listener's protocol is its targets', so it offers none.
                    let alpn: &[&[u8]] = match listener.tcp {
                        Some(_) => &[],
                        None => &[b"h2", b"http/1.1"],
                    };
                    let acceptor = sluice_proxy::tls::acceptor(&cert, &key, alpn).map_err(|e| {
                        src.error(tls.span().start, format!("listeners[{i}].tls"), e)
                    })?;
                    Some(acceptor)
                }
            };
            let settings = ListenerSettings::new(listener, acceptor);
            Ok((listener.address, Arc::new(settings)))
        })
        .collect()
}

/// What a TCP or UDP listener must hold to: upstreams that exist, one
/// kind, and (for UDP) no TLS or PROXY protocol.
fn check_layer4(
    config: &Config,
    i: usize,
    listener: &sluice_proxy::config::ListenerConfig,
) -> Result<(), ConfigError> {
    let src = &config.source;
    let (kind, at, names) = match (&listener.tcp, &listener.udp) {
        (None, None) => return Ok(()),
        (Some(tcp), None) => {
            let tcp_names = std::iter::once(&tcp.get_ref().upstream)
                .chain(tcp.get_ref().routes.iter().map(|r| &r.upstream));
            ("tcp", tcp.span().start, tcp_names.collect::<Vec<_>>())
        }
        (None, Some(udp)) => {
            if listener.tls.is_some() || listener.proxy_protocol.is_some() {
                let message = "a UDP listener takes neither `tls` nor `proxy_protocol`";
                return Err(src.error(udp.span().start, format!("listeners[{i}].udp"), message));
            }
            ("udp", udp.span().start, vec![&udp.get_ref().upstream])
        }
        (Some(_), Some(udp)) => {
            let message = "a listener is TCP or UDP, not both";
            return Err(src.error(udp.span().start, format!("listeners[{i}].udp"), message));
        }
    };
    match names
        .into_iter()
        .find(|name| !config.upstreams.contains_key(*name))
    {
        Some(name) => Err(src.error(
            at,
            format!("listeners[{i}].{kind}"),
            format!("unknown upstream `{name}`"),
        )),
        None => Ok(()),
    }
}

/// The configuration file, the plugin files and the service definitions
/// transcoding routes were built from.
fn watched_files(config: &Config, gateway: &Gateway) -> Vec<PathBuf> {
    let dir = config.source.dir();
    std::iter::once(config.source.path.clone())
        .chain(
            config
                .plugins
                .values()
                .filter(|p| oci::Reference::of_path(p.path.get_ref()).is_none())
                .map(|p| dir.join(p.path.get_ref())),
        )
        .chain(
            gateway
                .transcoders()
                .flat_map(|(_, t)| t.files().iter().cloned()),
        )
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

/// Whether a configuration key's value is a secret, by its name: the
/// naming rule a plugin's configuration follows to have a field hidden
/// (README, "Hot reload and the admin API"). Header names count too: a
/// `headers` filter setting `authorization` holds a credential.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let named = [
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "private",
        "authorization",
        "apikey",
        "api-key",
        "api_key",
        "hmac",
    ];
    named.iter().any(|n| key.contains(n))
        || ["key", "cookie", "set-cookie"].contains(&key.as_str())
        || key.ends_with("_key")
}

/// The members of a JWK that hold private or symmetric key material
/// (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const JWK_PRIVATE: [&str; 8] = ["k", "d", "p", "q", "dp", "dq", "qi", "oth"];

/// Whether a value is a secret by its shape, whatever its key: a
/// credential with its scheme, or a JWK (or set of them) given as JSON text
/// that holds private material.
fn looks_secret(text: &str) -> bool {
    let scheme = text.split_once(' ').map_or("", |(scheme, _)| scheme);
    if ["bearer", "basic", "digest"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        return true;
    }
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') && !trimmed.starts_with('[') {
        return false;
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(trimmed) else {
        return false;
    };
    toml::Value::try_from(json).is_ok_and(|mut value| redact(&mut value))
}

/// Replace every secret in `value`, however deep: values under secret
/// names, private members of JWKs, and strings shaped like secrets.
/// Answers whether it replaced any.
fn redact(value: &mut toml::Value) -> bool {
    let hide = |value: &mut toml::Value| {
        *value = toml::Value::String("<redacted>".into());
        true
    };
    match value {
        toml::Value::Table(table) => {
            let jwk = table.contains_key("kty");
            let mut hid = false;
            for (key, value) in table.iter_mut() {
                hid |= match is_secret(key) || (jwk && JWK_PRIVATE.contains(&key.as_str())) {
                    true => hide(value),
                    false => redact(value),
                };
            }
            hid
        }
        toml::Value::Array(items) => items.iter_mut().fold(false, |hid, item| redact(item) | hid),
        toml::Value::String(text) if looks_secret(text) => hide(value),
        _ => false,
    }
}

/// Show `plugins`' active versions in `sluice_plugin_info`, and say in the
/// log which plugins, at which digests, now serve.
fn publish(info: &Family<Labels, Gauge>, plugins: &[PluginInfo]) {
    info.clear();
    for plugin in plugins {
        tracing::info!(
            plugin = %plugin.name,
            version = plugin.version,
            sha256 = %plugin.sha256,
            origin = %plugin.origin,
            signed_by = plugin.signed_by.as_deref().unwrap_or("unsigned"),
            "plugin `{}` active",
            plugin.name
        );
        let version = plugin.version.to_string();
        let set = [
            ("plugin", plugin.name.as_str()),
            ("version", version.as_str()),
            ("sha256", plugin.sha256.as_str()),
        ];
        info.get_or_create(&labels(set)).set(1);
    }
}

fn plugin_infos(config: &Config, versions: &Versions) -> Vec<PluginInfo> {
    config
        .plugins
        .keys()
        .filter_map(|name| {
            let active = versions.active(name)?;
            let plugin = &config.plugins[name];
            let texts =
                |list: &[toml::Spanned<String>]| list.iter().map(|g| g.get_ref().clone()).collect();
            let routes = config
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.filters.iter().any(|f| f.plugin.get_ref() == name))
                .map(|(i, _)| config.route_name(i))
                .collect();
            Some(PluginInfo {
                name: name.clone(),
                version: active.number,
                sha256: active.sha256.clone(),
                kind: active.compiled.kind.interface(),
                contract: active.compiled.contract,
                origin: active.origin.clone(),
                loaded_at: humantime::format_rfc3339_seconds(active.loaded_at).to_string(),
                previous: versions.previous(name).map(|v| v.number),
                routes,
                signed_by: active.signed_by.clone(),
                imports: active.compiled.imports.to_vec(),
                grants: texts(&plugin.grants),
                denied: texts(&plugin.deny),
            })
        })
        .collect()
}
