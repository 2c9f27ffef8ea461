//! `orch server`

use anyhow::Context;

use crate::server;
use crate::store::CompactionPolicy;

use super::DataDirArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataDirArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = server::Config {
        data_dir: args.data.data_dir,
        compaction: CompactionPolicy::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orch-server")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = super::shutdown_signal()?;
        server::run(config, shutdown).await?;
        Ok(())
    })
}
