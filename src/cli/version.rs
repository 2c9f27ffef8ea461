//! `orch version`

/// No flags.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    println!(
        "orch version v{} ({})\ntarget: {}",
        env!("CARGO_PKG_VERSION"),
        env!("ORCH_GIT_COMMIT"),
        env!("ORCH_TARGET"),
    );
    Ok(())
}
