//! `orch agent`

use std::path::PathBuf;

use super::DataDirArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// (agent) URL of the server to join, e.g. https://10.0.0.1:6443.
    #[arg(long, env = "ORCH_URL", value_name = "URL")]
    pub server: String,

    /// (agent) Join token: the contents of <data-dir>/server/token on the server.
    #[arg(
        long,
        env = "ORCH_TOKEN",
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// (agent) File holding the join token.
    #[arg(long, env = "ORCH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub data: DataDirArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.token.is_none() && args.token_file.is_none() {
        anyhow::bail!("orch agent needs a join token: pass --token TOKEN or --token-file FILE");
    }
    anyhow::bail!(
        "orch agent cannot join {} yet: the node agent is not part of this build (issue #5)",
        args.server
    )
}
