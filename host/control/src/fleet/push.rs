//! What `sluice fleet` does to the fleet's keys: push a configuration (in
//! one transaction with its history entry, refused if the stored version
//! moved meanwhile), list the history, roll back to an earlier revision.

use std::path::Path;

use super::{Etcd, EtcdError, FleetConfig, Pushed, unix_now};
use crate::config::Config;
use crate::source::ConfigError;

/// Why a push changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The configuration does not validate.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// Someone else pushed since the revision this push was based on.
    #[error(
        "the fleet's configuration moved: it is at revision {found}, not {expected}; \
         read it again (`sluice fleet status`) or push with --force"
    )]
    Moved {
        /// The revision the push expected.
        expected: i64,
        /// The revision stored.
        found: i64,
    },
    /// No such revision in the history.
    #[error("revision {0} is not in the history (`sluice fleet history`)")]
    NoSuchRevision(i64),
    /// etcd could not be asked.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// A revision of the fleet's configuration, as `history` lists it.
#[derive(Debug, Clone)]
pub struct Version {
    /// The revision that wrote it (what instances report).
    pub revision: i64,
    /// The push's number, from 1.
    pub number: i64,
    /// What was pushed, by whom, when.
    pub pushed: Pushed,
}

/// A configuration to push.
pub struct Push<'a> {
    /// The TOML.
    pub text: &'a str,
    /// What errors call it (its file).
    pub name: &'a str,
    /// Refuse unless the stored revision is this one (without it, the one
    /// stored when the push begins).
    pub expect: Option<i64>,
    /// Push over whatever is stored.
    pub force: bool,
    /// For the history.
    pub note: &'a str,
}

/// Validate the configuration against the instance file at `own` (its
/// `[fleet]` included) and push it, in one transaction with its history
/// entry. The revision written.
pub async fn push(
    etcd: &Etcd,
    fleet: &FleetConfig,
    own: &Path,
    new: Push<'_>,
) -> Result<i64, PushError> {
    let Push {
        text,
        name,
        expect,
        force,
        note,
    } = new;
    let key = fleet.config_key();
    Config::with_fleet(own, &Config::read(own)?, name, text)?;
    let (current, _) = etcd.get(&key, 0).await?;
    let (version, revision) = current.map_or((0, 0), |kv| (kv.version, kv.mod_revision));
    if let Some(expected) = expect.filter(|e| !force && *e != revision) {
        return Err(PushError::Moved {
            expected,
            found: revision,
        });
    }
    let pushed = Pushed {
        text: text.to_owned(),
        by: who(),
        at: unix_now(),
        note: note.to_owned(),
    };
    let entry = format!("{}{:010}", fleet.history_prefix(), version + 1);
    let puts = [
        (key.clone(), text.as_bytes().to_vec()),
        (entry, serde_json::to_vec(&pushed).expect("serializable")),
    ];
    match etcd.put_if_version(&key, version, &puts).await? {
        Some(written) => Ok(written),
        None => {
            let (now, _) = etcd.get(&key, 0).await?;
            Err(PushError::Moved {
                expected: revision,
                found: now.map_or(0, |kv| kv.mod_revision),
            })
        }
    }
}

/// Every pushed version, oldest first.
pub async fn history(etcd: &Etcd, fleet: &FleetConfig) -> Result<Vec<Version>, EtcdError> {
    let (kvs, _) = etcd.list(&fleet.history_prefix()).await?;
    let mut versions: Vec<Version> = kvs
        .iter()
        .filter_map(|kv| {
            Some(Version {
                // Written in the push's transaction, so created at its revision.
                revision: kv.create_revision,
                number: kv.key.rsplit('/').next()?.parse().ok()?,
                pushed: serde_json::from_slice(&kv.value).ok()?,
            })
        })
        .collect();
    versions.sort_by_key(|v| v.number);
    Ok(versions)
}

/// Push the configuration of `revision` again, as a new version.
pub async fn rollback(
    etcd: &Etcd,
    fleet: &FleetConfig,
    own: &Path,
    revision: i64,
    force: bool,
) -> Result<i64, PushError> {
    let old = history(etcd, fleet)
        .await?
        .into_iter()
        .find(|v| v.revision == revision)
        .ok_or(PushError::NoSuchRevision(revision))?;
    let push_again = Push {
        text: &old.pushed.text,
        name: &format!("etcd:{}@{revision}", fleet.config_key()),
        expect: None,
        force,
        note: &format!("rollback to {revision}"),
    };
    push(etcd, fleet, own, push_again).await
}

/// `user@host`, for the history.
fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "?".into());
    format!("{user}@{}", super::default_id(None))
}
