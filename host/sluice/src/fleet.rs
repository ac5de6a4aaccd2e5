//! `sluice fleet`: an operator's view of a fleet configured through etcd,
//! and the way to change it.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use sluice_control::Config;
use sluice_control::fleet::push::{self, Push, PushError};
use sluice_control::fleet::{Etcd, FleetConfig, InstanceStatus};

/// The fleet's configuration and its instances.
#[derive(clap::Args)]
pub struct FleetArgs {
    /// An instance's own file: its `[fleet]` says where etcd is and how to
    /// reach it, and pushes are validated with it.
    #[arg(long, short)]
    config: PathBuf,
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Validate FILE and make it the fleet's configuration.
    Push {
        /// The fleet's configuration: routes, upstreams, plugins (TOML).
        file: PathBuf,
        /// Refuse unless the stored revision is still this one (default:
        /// the one stored when the push begins).
        #[arg(long)]
        expect: Option<i64>,
        /// Push whatever revision is stored.
        #[arg(long)]
        force: bool,
    },
    /// Every instance: the revision it serves, and what it refused.
    Status,
    /// Every pushed version, oldest first.
    History,
    /// Push the configuration of revision REV again.
    Rollback {
        /// A revision from `history`.
        rev: i64,
        /// Push whatever revision is stored.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let (etcd, fleet) = connect(&args.config)?;
    match args.command {
        FleetCommand::Push {
            file,
            expect,
            force,
        } => {
            let text = Config::read(&file)?;
            let new = Push {
                text: &text,
                name: &file.display().to_string(),
                expect,
                force,
                note: "",
            };
            let written = push::push(&etcd, &fleet, &args.config, new)
                .await
                .map_err(pushed)?;
            println!("pushed {}: revision {written}", file.display());
        }
        FleetCommand::Rollback { rev, force } => {
            let written = push::rollback(&etcd, &fleet, &args.config, rev, force)
                .await
                .map_err(pushed)?;
            println!("rolled back to revision {rev}'s configuration: revision {written}");
        }
        FleetCommand::History => {
            println!(
                "{:>9}  {:>4}  {:<20}  {:<24}  note",
                "revision", "push", "when", "by"
            );
            for version in push::history(&etcd, &fleet).await? {
                let p = &version.pushed;
                let when = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.at),
                );
                println!(
                    "{:>9}  {:>4}  {:<20}  {:<24}  {}",
                    version.revision,
                    version.number,
                    when.to_string(),
                    p.by,
                    p.note
                );
            }
        }
        FleetCommand::Status => {
            let (current, _) = etcd.get(&fleet.config_key(), 0).await?;
            let latest = current.map_or(0, |kv| kv.mod_revision);
            println!("the fleet's configuration: revision {latest}");
            let (kvs, _) = etcd.list(&fleet.instances_prefix()).await?;
            let mut instances: Vec<InstanceStatus> = kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect();
            instances.sort_by(|a, b| a.id.cmp(&b.id));
            for i in &instances {
                let state = match (&i.refused, i.revision == latest) {
                    (Some(r), _) => format!("REFUSED revision {}: {}", r.revision, r.error),
                    (None, true) => "up to date".into(),
                    (None, false) if !i.ready => "not ready".into(),
                    (None, false) => "behind".into(),
                };
                println!("{:<28} revision {:>6}  {state}", i.id, i.revision);
            }
            if instances.is_empty() {
                println!("(no instance has published itself)");
            }
        }
    }
    Ok(())
}

/// etcd and `[fleet]`, as the instance file at `path` configures them.
fn connect(path: &Path) -> anyhow::Result<(Etcd, FleetConfig)> {
    let config = Config::load(path)?;
    let Some(fleet) = &config.fleet else {
        anyhow::bail!("{}: no [fleet] configured", path.display());
    };
    let fleet = fleet.get_ref().clone();
    let etcd = fleet.client(&config.source).map_err(anyhow::Error::msg)?;
    Ok((etcd, fleet))
}

fn pushed(error: PushError) -> anyhow::Error {
    anyhow::anyhow!("refused, nothing pushed: {error}")
}
