//! The `sluice` command: run, check, or demo a gateway configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_control::{Config, Server};

mod demo;
mod fleet;
mod plugin;
use tokio::signal::unix::{SignalKind, signal};

/// jemalloc, with background threads that hand freed memory back to the
/// system: after a burst of large requests, glibc's allocator keeps the
/// peak resident for good.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A programmable HTTP gateway with WebAssembly filters"
)]
struct Cli {
    /// Threads serving requests (default: one per CPU core). With 1, the
    /// whole gateway runs on one thread, like one nginx worker.
    #[arg(long, global = true)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and load every plugin, without serving.
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Look at, sign or verify a plugin component, without a gateway.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Push, inspect and roll back a fleet's configuration in etcd.
    Fleet(fleet::FleetArgs),
    /// Serve the quickstart with an embedded demo upstream behind every upstream.
    Demo {
        /// The configuration to demo.
        #[arg(long, short, default_value = "examples/quickstart/sluice.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for a terminal, plain text for files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // One worker runs everything on this thread, as one nginx worker does:
    // no cross-thread wakeups or work stealing on the request path.
    let mut runtime = match cli.workers {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = runtime.build().expect("a tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let server = Server::from_file(&config).await?;
            serve_until_signal(server).await
        }
        Command::Check { config } => {
            let loaded = Config::load(&config)?;
            let checked = sluice_control::check(&loaded).await?;
            for plugin in &checked.plugins {
                plugin::describe(plugin);
            }
            for (route, offered) in &checked.transcoded {
                println!("route `{route}` transcodes JSON to gRPC:");
                for line in offered {
                    println!("  {line}");
                }
            }
            println!(
                "{}: OK ({} routes, {} plugins, {} upstreams)",
                config.display(),
                loaded.routes.len(),
                loaded.plugins.len(),
                loaded.upstreams.len()
            );
            Ok(())
        }
        Command::Plugin(command) => plugin::run(command).await,
        Command::Fleet(args) => fleet::run(args).await,
        Command::Demo { config } => {
            let loaded = Config::load(&config)?;
            let demo = demo::start(([127, 0, 0, 1], 0).into()).await?;
            // Every upstream is the demo, in this configuration and any reloaded later.
            let hook = std::sync::Arc::new(move |config: &mut Config| {
                for upstream in config.upstreams.values_mut() {
                    *upstream.targets.get_mut() = vec![demo.to_string().into()];
                }
            });
            let server = Server::bind_with_hook(loaded, Some(hook)).await?;
            let addr = server.local_addrs()[0];
            println!("Sluice demo: every upstream is the embedded demo upstream at {demo}.\nTry:");
            println!("  curl -i http://{addr}/public/hello");
            println!(
                "  curl -i http://{addr}/api/orders                              # 401: no key"
            );
            println!(
                "  curl -i -H 'x-api-key: demo-key-alice' http://{addr}/api/orders  # 200, x-user: alice"
            );
            println!(
                "  curl -i --http2-prior-knowledge -H 'x-api-key: demo-key-bob' http://{addr}/api/orders"
            );
            println!("Ctrl-C stops it.");
            serve_until_signal(server).await
        }
    }
}

/// How long in-flight requests get to finish after SIGTERM or Ctrl-C.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn serve_until_signal(server: Server) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let control = server.control();
    // SIGHUP reloads; the outcome is logged (and counted) by the reload itself.
    let reloads = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = control.reload().await;
        }
    });
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping: no new connections; finishing requests in flight");
    };
    server.serve_until(stop, DRAIN_TIMEOUT).await;
    reloads.abort();
    Ok(())
}
