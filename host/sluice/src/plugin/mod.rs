//! `sluice plugin`: look at, test, sign, verify, push and pull a component
//! without a gateway.

mod cases;
mod new;

use std::path::{Path, PathBuf};

use clap::Subcommand;
use sluice_control::oci::{Login, OciConfig, Reference, Registries};
use sluice_control::trust::{self, Trust, TrustConfig};
use sluice_control::versions::sha256;
use sluice_filter::{FilterEngine, capability_of};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// What a component is: kind, contract, imports and the capabilities
    /// they need, size, sha256, and its signature if one is beside it.
    Inspect {
        /// The `.wasm` component.
        file: PathBuf,
        /// Trusted minisign public keys (`RW…` or a `.pub` file) to check its signature with.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Make a project for a new filter: source, WIT, build script and test cases.
    New {
        /// The language to write it in.
        #[arg(long)]
        lang: new::Lang,
        /// Its name (lowercase letters, digits and `-`); the folder made.
        name: String,
        /// Where to make it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run the cases a TOML file describes (requests, and what the filter
    /// should decide and edit) against a component, without a gateway.
    Test {
        /// The `.wasm` component.
        file: PathBuf,
        /// The cases file.
        cases: PathBuf,
    },
    /// Sign a component: writes FILE.minisig (minisign's format). An
    /// encrypted key's password comes from SLUICE_SIGNING_PASSWORD.
    Sign {
        /// The `.wasm` component.
        file: PathBuf,
        /// The minisign secret key file (`minisign -G` writes one).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check FILE.minisig against trusted keys, as a gateway with `[trust]` would.
    Verify {
        /// The `.wasm` component.
        file: PathBuf,
        /// Trusted minisign public keys (`RW…` or a `.pub` file).
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
    /// Push a component, with FILE.minisig if it is signed, to an OCI
    /// registry; prints the reference pinned to what was pushed.
    Push {
        /// The `.wasm` component.
        file: PathBuf,
        /// Where: `oci://registry/repository:tag`.
        reference: String,
        /// Trusted minisign public keys: its signature must verify with one
        /// before it is pushed.
        #[arg(long = "key")]
        keys: Vec<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull a component (and its signature, if the registry holds one)
    /// into FILE (and FILE.minisig), checked against the digests.
    Pull {
        /// What: `oci://registry/repository:tag[@sha256:…]`.
        reference: String,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// How to reach a registry, as `[oci]` says for a gateway.
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// A registry (`host:port`) to speak plain HTTP to (loopback ones always are).
    #[arg(long)]
    plain_http: Vec<String>,
    /// CA certificates to trust instead of the system's.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The user to log in to the registry as, if it asks.
    #[arg(long, requires = "password_file")]
    username: Option<String>,
    /// A file holding that user's password or token.
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
}

impl RegistryArgs {
    fn registries(self, reference: &Reference) -> anyhow::Result<Registries> {
        let login = self.username.zip(self.password_file);
        let config = OciConfig {
            cache_dir: None,
            plain_http: self.plain_http,
            ca: self.ca,
            credentials: login
                .map(|(username, password_file)| {
                    let login = Login {
                        username,
                        password_file,
                    };
                    (reference.registry.clone(), login)
                })
                .into_iter()
                .collect(),
        };
        Registries::new(&config, Path::new("."), None).map_err(anyhow::Error::msg)
    }
}

pub async fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Push {
            file,
            reference,
            keys,
            registry,
        } => {
            let reference = Reference::parse(&reference).map_err(anyhow::Error::msg)?;
            let bytes = read(&file)?;
            let signature = std::fs::read_to_string(trust::signature_path(&file)).ok();
            // A signature pushed beside the wrong component would only be
            // found out by every gateway that pulls it: refuse here.
            if let Some(signature) = &signature {
                let sha256 = sha256(&bytes);
                if let Some(signed) = trust::signed_digest(signature)
                    && !signed.eq_ignore_ascii_case(&sha256)
                {
                    anyhow::bail!(
                        "{}: its signature was made for another component (sha256 {signed}, this one is {sha256}); sign it again",
                        file.display()
                    );
                }
                if !keys.is_empty() {
                    verify(&file, &keys)?;
                }
            }
            let digest = registry
                .registries(&reference)?
                .push(&reference, &bytes, signature.as_deref())
                .await
                .map_err(anyhow::Error::msg)?;
            let signed = match signature {
                Some(_) => "with its signature",
                None => "unsigned",
            };
            println!(
                "pushed {} ({signed}): {}",
                file.display(),
                reference.pinned(&digest)
            );
            Ok(())
        }
        PluginCommand::Pull {
            reference,
            output,
            registry,
        } => {
            let reference = Reference::parse(&reference).map_err(anyhow::Error::msg)?;
            let pulled = registry
                .registries(&reference)?
                .pull(&reference, true)
                .await
                .map_err(anyhow::Error::msg)?;
            std::fs::write(&output, &pulled.component)?;
            let signature_file = trust::signature_path(&output);
            let signed = match &pulled.signature {
                Some(signature) => {
                    std::fs::write(&signature_file, signature)?;
                    format!("signature in {}", signature_file.display())
                }
                None => {
                    let _ = std::fs::remove_file(&signature_file);
                    "unsigned".to_owned()
                }
            };
            println!(
                "pulled {} into {} (sha256 {}; {signed})",
                reference.pinned(&pulled.digest),
                output.display(),
                sha256(&pulled.component)
            );
            Ok(())
        }
        PluginCommand::Inspect { file, keys } => inspect(&file, &keys),
        PluginCommand::Test { file, cases } => cases::run(&file, &cases).await,
        PluginCommand::New { lang, name, dir } => new::create(lang, &name, &dir),
        PluginCommand::Sign { file, key } => {
            let bytes = read(&file)?;
            let secret = std::fs::read_to_string(&key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let password = std::env::var("SLUICE_SIGNING_PASSWORD").ok();
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            let signature = trust::sign(&bytes, &secret, password, &name, &sha256(&bytes))
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let out = trust::signature_path(&file);
            std::fs::write(&out, signature)?;
            println!("signed {}: {}", file.display(), out.display());
            Ok(())
        }
        PluginCommand::Verify { file, keys } => {
            let signer = verify(&file, &keys)?;
            println!("{}: signed by trusted key {signer}", file.display());
            Ok(())
        }
    }
}

fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// The trusted key FILE.minisig verifies with.
fn verify(file: &Path, keys: &[String]) -> anyhow::Result<String> {
    let bytes = read(file)?;
    let trust = trusting(keys)?;
    let signature_file = trust::signature_path(file);
    let signature = std::fs::read_to_string(&signature_file)
        .map_err(|e| anyhow::anyhow!("{}: not signed ({e})", signature_file.display()))?;
    trust
        .signer(&bytes, &signature)
        .map_err(|e| anyhow::anyhow!("{}: refused: {e}", file.display()))
}

/// Keys given on the command line, read as `[trust] keys` would be.
fn trusting(keys: &[String]) -> anyhow::Result<Trust> {
    let config = TrustConfig {
        keys: keys
            .iter()
            .map(|k| toml::Spanned::new(0..0, k.clone()))
            .collect(),
    };
    Ok(Trust::load(&config, &Default::default())?)
}

fn inspect(file: &Path, keys: &[String]) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let engine = FilterEngine::new(None)?;
    let compiled = engine
        .compile(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("file:      {}", file.display());
    println!("size:      {} bytes", bytes.len());
    println!("sha256:    {}", sha256(&bytes));
    println!("kind:      {}", compiled.kind.interface());
    println!("contract:  {}", contract(compiled.contract));
    println!(
        "needs:     {} (grant or deny each)",
        needs(&compiled.imports)
    );
    println!("imports:");
    for import in compiled.imports.iter() {
        match capability_of(import) {
            Some(capability) => println!("  {import}  [{capability}]"),
            None => println!("  {import}"),
        }
    }
    println!("exports:");
    for export in compiled.exports.iter() {
        println!("  {export}");
    }
    let signature = trust::signature_path(file);
    let status = match (signature.exists(), keys.is_empty()) {
        (false, _) => "unsigned".to_owned(),
        (true, true) => format!("{} present (give --key to check it)", signature.display()),
        (true, false) => match verify(file, keys) {
            Ok(signer) => format!("valid, by trusted key {signer}"),
            Err(e) => {
                println!("signature: INVALID: {e:#}");
                // A gate built on `inspect --key` must stop here, as on `verify`.
                anyhow::bail!("{}: its signature is invalid", file.display());
            }
        },
    };
    println!("signature: {status}");
    Ok(())
}

/// The contract a plugin speaks, as people name it.
fn contract(contract: &str) -> String {
    match contract.strip_prefix("proxy-wasm ") {
        Some(abi) => format!("proxy-wasm ABI {abi}, a core module"),
        None => format!("sluice:filter@{contract}"),
    }
}

/// A loaded plugin as `sluice check` lists it: what it is, what it may reach.
pub fn describe(plugin: &sluice_control::PluginInfo) {
    let signed = match &plugin.signed_by {
        Some(key) => format!("signed by {key}"),
        None => "unsigned".to_owned(),
    };
    println!(
        "plugin {}: {} ({}), {signed}",
        plugin.name,
        plugin.kind,
        contract(plugin.contract)
    );
    // Both digests in full, named: a `sha256 =` pin takes the component's,
    // an `oci://…@sha256:` reference the manifest's.
    println!("  component sha256 (for `sha256 =`): {}", plugin.sha256);
    if let sluice_control::versions::Origin::Registry(reference) = &plugin.origin {
        println!("  pulled as (manifest digest): {reference}");
    }
    let list = |items: &[String]| match items.is_empty() {
        true => "none".to_owned(),
        false => items.join(", "),
    };
    println!(
        "  needs: {}; granted: {}; denied: {}",
        needs(&plugin.imports),
        list(&plugin.grants),
        list(&plugin.denied)
    );
}

/// The capabilities `imports` need, once each: `kv, http`, or `none`.
fn needs(imports: &[String]) -> String {
    let mut needs: Vec<&str> = imports.iter().filter_map(|i| capability_of(i)).collect();
    needs.sort_unstable();
    needs.dedup();
    match needs.is_empty() {
        true => "none".to_owned(),
        false => needs.join(", "),
    }
}
