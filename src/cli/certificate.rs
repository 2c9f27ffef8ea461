//! `orch certificate rotate`: renew the leaf certificates on demand (they
//! are renewed at start anyway when fewer than 90 days remain). The CA and
//! the service account key stay: clients and tokens trust them.

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: CertificateCommand,
    #[command(flatten)]
    pub data: super::GlobalDataDirArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertificateCommand {
    /// Move the server's serving and admin certificates and this node's
    /// client certificate aside (to `<dir>/rotated-<time>/`), so the next
    /// start of `orch server` / `orch agent` issues new ones. Stop orch
    /// first, or restart it after.
    Rotate,
}

/// The leaf certificates and keys under `data_dir`, by directory.
fn leaves(data_dir: &Path) -> Vec<(PathBuf, &'static [&'static str])> {
    vec![
        (
            data_dir.join("server").join("tls"),
            &["serving.crt", "serving.key", "admin.crt", "admin.key"][..],
        ),
        (
            data_dir.join("agent"),
            &["client-kubelet.crt", "client-kubelet.key"][..],
        ),
    ]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let CertificateCommand::Rotate = args.command;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut moved = 0;
    for (dir, files) in leaves(&args.data.data_dir) {
        let present: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| dir.join(f).exists())
            .collect();
        if present.is_empty() {
            continue;
        }
        let backup = dir.join(format!("rotated-{stamp}"));
        std::fs::create_dir_all(&backup)
            .with_context(|| format!("cannot create {}", backup.display()))?;
        for f in present {
            std::fs::rename(dir.join(f), backup.join(f))
                .with_context(|| format!("cannot move {} aside", dir.join(f).display()))?;
            println!("{} -> {}", dir.join(f).display(), backup.join(f).display());
            moved += 1;
        }
    }
    if moved == 0 {
        anyhow::bail!(
            "no certificates under {}; pass the --data-dir orch runs with",
            args.data.data_dir.display()
        );
    }
    println!("restart orch (server and agent) to issue new certificates");
    Ok(())
}
