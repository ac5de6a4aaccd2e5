//! A fleet configured through etcd. Each instance starts from its own file
//! (listeners, admin, `[fleet]`) and takes the rest of its configuration —
//! routes, upstreams, plugins — from one key, `<prefix>config`, in the same
//! TOML, validated the same way, and swapped in the same way as a reload.
//!
//! The instance watches from the revision it has, publishes under a lease
//! what it serves and what it refused (`<prefix>instances/<id>`), and keeps
//! the last configuration it applied on disk, so a restart while etcd is
//! down serves it. etcd down: it keeps serving and retries with backoff; a
//! compacted revision means one full read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use sluice_filter::metrics::Registry;

pub mod etcd;
pub mod push;

pub use etcd::{Etcd, EtcdError, EtcdOptions, Watch, WatchEvent};

use crate::source::{ConfigError, Source};
use crate::{ChangeError, Control};

/// `[fleet]` in an instance's own file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd's client URLs (`http://` or `https://`), tried in turn.
    pub endpoints: Vec<String>,
    /// Where the fleet's keys live.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    /// This instance's name in the fleet (default: the host's name and the
    /// first listener's port).
    pub id: Option<String>,
    /// A folder for the last good configuration (default: `fleet/` in the
    /// engine's cache folder).
    pub snapshot_dir: Option<PathBuf>,
    /// The CA that signed etcd's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// See `cert`.
    pub key: Option<PathBuf>,
    /// etcd's user, when its auth is on.
    pub username: Option<String>,
    /// A file holding that user's password (its first line).
    pub password_file: Option<PathBuf>,
    /// The longest one call to etcd may take.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long this instance's status outlives it.
    #[serde(default = "defaults::lease", with = "humantime_serde")]
    pub lease: Duration,
}

mod defaults {
    use std::time::Duration;

    pub fn prefix() -> String {
        "/sluice/".into()
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn lease() -> Duration {
        Duration::from_secs(10)
    }
}

impl FleetConfig {
    /// The etcd client it describes; files are relative to `source`'s folder.
    pub fn client(&self, source: &Source) -> Result<Etcd, String> {
        let at = |p: &PathBuf| source.dir().join(p);
        let user = match (&self.username, &self.password_file) {
            (Some(name), Some(file)) => {
                let text = std::fs::read_to_string(at(file))
                    .map_err(|e| format!("fleet.password_file: {}: {e}", file.display()))?;
                Some((name.clone(), text.lines().next().unwrap_or("").to_owned()))
            }
            (None, None) => None,
            _ => return Err("fleet: `username` and `password_file` go together".into()),
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((at(cert), at(key))),
            (None, None) => None,
            _ => return Err("fleet: `cert` and `key` go together".into()),
        };
        Etcd::new(EtcdOptions {
            endpoints: self.endpoints.clone(),
            ca: self.ca.as_ref().map(at),
            identity,
            user,
            timeout: self.timeout,
        })
        .map_err(|e| format!("fleet: {e}"))
    }

    /// The key holding the fleet's configuration.
    pub fn config_key(&self) -> String {
        format!("{}config", self.prefix)
    }

    /// The folder of pushed versions (`<prefix>history/<version>`).
    pub fn history_prefix(&self) -> String {
        format!("{}history/", self.prefix)
    }

    /// The folder of instances' statuses.
    pub fn instances_prefix(&self) -> String {
        format!("{}instances/", self.prefix)
    }
}

/// A fleet configuration as stored at one revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetDoc {
    /// The revision that wrote it.
    pub revision: i64,
    /// Its key.
    pub key: String,
    /// The TOML.
    pub text: String,
}

impl FleetDoc {
    /// How errors name it.
    pub fn name(&self) -> String {
        format!("etcd:{}@{}", self.key, self.revision)
    }
}

/// What an instance publishes about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Its id.
    pub id: String,
    /// The revision of the fleet's configuration it serves (0: none yet).
    pub revision: i64,
    /// A later revision it refused, and why.
    pub refused: Option<Refusal>,
    /// Whether it serves a configuration (from etcd or its snapshot).
    pub ready: bool,
    /// Its admin listener, if any.
    pub admin: Option<String>,
    /// When it started (Unix seconds).
    pub started: u64,
    /// Sluice's version.
    pub version: String,
}

/// The fleet, for `/fleet` and the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// The revision of the fleet's configuration in etcd.
    pub revision: i64,
    /// Every instance that published itself, by id.
    pub instances: Vec<InstanceStatus>,
}

/// A revision an instance did not apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// The revision refused.
    pub revision: i64,
    /// Why, naming the key and the field.
    pub error: String,
}

/// A pushed version, kept at `<prefix>history/<version>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// The TOML.
    pub text: String,
    /// Who pushed it (user@host).
    pub by: String,
    /// When (Unix seconds).
    pub at: u64,
    /// A note (`rollback to 12`).
    pub note: String,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One instance's part in the fleet.
pub(crate) struct Member {
    config: FleetConfig,
    etcd: Etcd,
    id: String,
    snapshot: Option<PathBuf>,
    status: tokio::sync::Mutex<InstanceStatus>,
    /// Wakes the publisher when the status changes.
    changed: tokio::sync::Notify,
    metrics: FleetMetrics,
}

/// `sluice_fleet_*`.
#[derive(Default)]
pub(crate) struct FleetMetrics {
    /// The revision served.
    revision: Gauge,
    /// Full reads of the configuration (at start, after etcd was away, after a compaction).
    reads: Counter,
    /// Revisions refused.
    refused: Counter,
}

impl FleetMetrics {
    pub(crate) fn register(&self, registry: &Registry) {
        registry.register(
            "fleet_revision",
            "The revision of the fleet's configuration served",
            self.revision.clone(),
        );
        registry.register(
            "fleet_reads",
            "Full reads of the fleet's configuration from etcd",
            self.reads.clone(),
        );
        registry.register(
            "fleet_refused",
            "Revisions of the fleet's configuration refused",
            self.refused.clone(),
        );
    }
}

impl Member {
    /// Its metrics, to register.
    pub(crate) fn metrics(&self) -> &FleetMetrics {
        &self.metrics
    }

    pub(crate) fn new(
        config: &FleetConfig,
        source: &Source,
        id: String,
        snapshot: Option<PathBuf>,
        admin: Option<String>,
    ) -> Result<Member, ConfigError> {
        let etcd = config
            .client(source)
            .map_err(|e| source.error(0, "fleet", e))?;
        Ok(Member {
            config: config.clone(),
            etcd,
            status: tokio::sync::Mutex::new(InstanceStatus {
                id: id.clone(),
                admin,
                started: unix_now(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            id,
            snapshot,
            changed: tokio::sync::Notify::new(),
            metrics: FleetMetrics::default(),
        })
    }

    /// The configuration last applied, kept on disk, if any.
    pub(crate) fn saved(&self) -> Option<FleetDoc> {
        let file = self.snapshot.as_ref()?.join("config.json");
        let text = std::fs::read_to_string(file).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save(&self, doc: &FleetDoc) {
        let Some(dir) = &self.snapshot else {
            return;
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let temporary = dir.join("config.json.new");
            std::fs::write(&temporary, serde_json::to_vec(doc)?)?;
            std::fs::rename(temporary, dir.join("config.json"))
        };
        if let Err(e) = write() {
            tracing::warn!("fleet: cannot keep revision {} on disk: {e}", doc.revision);
        }
    }

    /// Apply `doc`; record what came of it.
    pub(crate) async fn apply(&self, control: &Control, doc: FleetDoc) -> Result<(), ChangeError> {
        let revision = doc.revision;
        let applied = control.apply_fleet(doc.clone()).await;
        let mut status = self.status.lock().await;
        match &applied {
            Ok(_) => {
                self.save(&doc);
                self.metrics.revision.set(revision);
                status.revision = revision;
                status.ready = true;
                status.refused = None;
            }
            Err(error) => {
                self.metrics.refused.inc();
                status.refused = Some(Refusal {
                    revision,
                    error: error.to_string(),
                });
            }
        }
        drop(status);
        self.changed.notify_one();
        applied.map(drop)
    }

    /// The fleet as etcd has it: its configuration's revision, and every
    /// instance's last published status.
    pub(crate) async fn view(&self) -> Result<FleetView, EtcdError> {
        let (current, _) = self.etcd.get(&self.config.config_key(), 0).await?;
        let (kvs, _) = self.etcd.list(&self.config.instances_prefix()).await?;
        Ok(FleetView {
            revision: current.map_or(0, |kv| kv.mod_revision),
            instances: kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect(),
        })
    }

    /// The revision served now (0: none).
    async fn serving(&self) -> i64 {
        let status = self.status.lock().await;
        status
            .refused
            .as_ref()
            .map_or(status.revision, |r| r.revision.max(status.revision))
    }

    /// Follow the fleet's configuration until the task is dropped.
    pub(crate) async fn follow(self: Arc<Self>, control: Arc<Control>) {
        let key = self.config.config_key();
        let mut backoff = Backoff::default();
        loop {
            // A full read: at start, after etcd was away, after a compaction.
            self.metrics.reads.inc();
            let read = match self.etcd.get(&key, 0).await {
                Ok(read) => read,
                Err(e) => {
                    backoff.wait(&format!("fleet: reading {key}: {e}")).await;
                    continue;
                }
            };
            backoff.reset();
            let (current, revision) = read;
            if let Some(kv) = current
                && kv.mod_revision != self.serving().await
            {
                let doc = FleetDoc {
                    revision: kv.mod_revision,
                    key: key.clone(),
                    text: String::from_utf8_lossy(&kv.value).into_owned(),
                };
                let _ = self.apply(&control, doc).await;
            }
            let mut watch = match self.etcd.watch(&key, revision + 1).await {
                Ok(watch) => watch,
                Err(e) => {
                    backoff.wait(&format!("fleet: watching {key}: {e}")).await;
                    continue;
                }
            };
            loop {
                match watch.next().await {
                    // The batch's last write wins; a delete leaves the configuration as it is.
                    Ok(WatchEvent::Changed(events)) => {
                        if let Some((kv, _)) = events.into_iter().filter(|(_, put)| *put).last() {
                            let doc = FleetDoc {
                                revision: kv.mod_revision,
                                key: key.clone(),
                                text: String::from_utf8_lossy(&kv.value).into_owned(),
                            };
                            let _ = self.apply(&control, doc).await;
                        }
                    }
                    Ok(WatchEvent::Compacted(at)) => {
                        tracing::warn!("fleet: history compacted at {at}; reading {key} once more");
                        break;
                    }
                    Err(e) => {
                        backoff.wait(&format!("fleet: watching {key}: {e}")).await;
                        break;
                    }
                }
            }
        }
    }

    /// Keep this instance's status in etcd, under a lease, until the task is dropped.
    pub(crate) async fn publish(self: Arc<Self>) {
        let key = format!("{}{}", self.config.instances_prefix(), self.id);
        let ttl = self.config.lease.max(Duration::from_secs(2));
        let mut lease: Option<i64> = None;
        let mut backoff = Backoff::default();
        loop {
            let status = serde_json::to_vec(&*self.status.lock().await).unwrap_or_default();
            // Each time a fresh lease holds the status, and the last one
            // goes: renewing is then plain unary calls, which the JSON
            // gateway serves (its keep-alive is a stream).
            let published = async {
                let id = self.etcd.grant(ttl).await?;
                self.etcd.put(&key, &status, Some(id)).await?;
                if let Some(old) = lease.replace(id) {
                    let _ = self.etcd.revoke(old).await;
                }
                Ok::<_, EtcdError>(())
            }
            .await;
            match published {
                Ok(_) => backoff.reset(),
                Err(e) => {
                    lease = None;
                    backoff.wait(&format!("fleet: publishing {key}: {e}")).await;
                    continue;
                }
            }
            let _ = tokio::time::timeout(ttl / 3, self.changed.notified()).await;
        }
    }
}

/// Waits between tries while etcd is away: 100 ms doubling to 5 s; says
/// so in the log once per outage.
#[derive(Default)]
struct Backoff {
    wait: Duration,
}

impl Backoff {
    async fn wait(&mut self, why: &str) {
        if self.wait.is_zero() {
            tracing::warn!("{why}; serving what it has and trying again");
            self.wait = Duration::from_millis(100);
        } else {
            self.wait = (self.wait * 2).min(Duration::from_secs(5));
        }
        tokio::time::sleep(self.wait).await;
    }

    fn reset(&mut self) {
        if !self.wait.is_zero() {
            tracing::info!("fleet: etcd answers again");
        }
        self.wait = Duration::ZERO;
    }
}

/// This instance's default id: the host's name and the first listener's port.
pub(crate) fn default_id(port: Option<u16>) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into());
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The snapshot folder: as configured, or `fleet/` in the engine's cache.
pub(crate) fn snapshot_dir(
    config: &FleetConfig,
    cache: Option<&Path>,
    source: &Source,
) -> Option<PathBuf> {
    match &config.snapshot_dir {
        Some(dir) => Some(source.dir().join(dir)),
        None => cache.map(|c| c.join("fleet")),
    }
}
