//! Command-line parsing: one file per subcommand, each a clap args struct and
//! a `run` that turns flags into a typed config and calls into the library.
//! Nothing below `cli` reads flags or environment variables.

#![forbid(unsafe_code)]

mod agent;
mod image;
mod server;
mod shim;
mod version;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// orch: a single-binary Kubernetes distribution.
#[derive(Debug, Parser)]
#[command(name = "orch", version, about, long_about = None)]
pub struct Cli {
    /// Log level or filter (error, warn, info, debug, trace; or e.g.
    /// "info,orch::store=debug"). Falls back to RUST_LOG, then "info".
    #[arg(long, global = true, env = "ORCH_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (API server, store, scheduler, controllers).
    Server(server::Args),
    /// Run a node agent that joins a server.
    Agent(agent::Args),
    /// Manage the node's images (import, ls, rm).
    Image(image::Args),
    /// (internal) The per-pod container supervisor the agent starts.
    #[command(hide = true)]
    Shim(shim::Args),
    /// Print the version, git commit and target.
    Version(version::Args),
}

/// Flags every long-running role shares.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// (data) Directory for state: the store, certificates, images, pods.
    #[arg(
        long,
        env = "ORCH_DATA_DIR",
        value_name = "DIR",
        default_value = "/var/lib/orch"
    )]
    pub data_dir: PathBuf,
}

/// Run the parsed command.
///
/// # Errors
/// Whatever the command failed with, with context for the user.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Image(args) => image::run(args),
        Command::Shim(args) => shim::run(args),
        Command::Version(args) => version::run(args),
    }
}

/// Resolves on SIGINT or SIGTERM. Call inside the runtime.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    })
}
