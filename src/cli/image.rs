//! `orch image`: the node's image store (import, list, remove).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::DataDirArgs;
use crate::runtime::image::{ImageRef, ImageStore, Platform, import};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataDirArgs,

    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import images from an OCI layout or `docker save` tarball
    /// (optionally .gz or .zst compressed).
    Import {
        /// The tarball.
        file: PathBuf,
        /// Store the image under this reference (when the archive does not
        /// name it, or to rename it).
        #[arg(long, value_name = "REF")]
        name: Option<String>,
    },
    /// List the stored images.
    #[command(alias = "list")]
    Ls,
    /// Remove images and the layers only they used.
    #[command(alias = "remove")]
    Rm {
        /// Image references (e.g. busybox, docker.io/library/busybox:latest).
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// `1234567` → `1.2 MB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = args.data.data_dir.join("images");
    let store = ImageStore::open(&root)
        .with_context(|| format!("cannot open the image store in {}", root.display()))?;
    match args.command {
        ImageCommand::Import { file, name } => {
            let name = name
                .map(|n| ImageRef::parse(&n))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let images = import(&store, &file, name.as_ref(), &Platform::current())
                .with_context(|| format!("cannot import {}", file.display()))?;
            for image in images {
                println!(
                    "imported {} ({})",
                    image.reference,
                    &image.manifest_digest[..19]
                );
            }
        }
        ImageCommand::Ls => {
            println!("{:<60} {:<19} {:>9}", "IMAGE", "DIGEST", "SIZE");
            for image in store.images()? {
                println!(
                    "{:<60} {:<19} {:>9}",
                    image.reference,
                    &image.manifest_digest[..19.min(image.manifest_digest.len())],
                    human(image.size)
                );
            }
        }
        ImageCommand::Rm { images } => {
            let _lock = store.lock()?;
            for name in images {
                let reference = ImageRef::parse(&name).map_err(|e| anyhow::anyhow!(e))?;
                store.remove(&reference.to_string(), &HashSet::new())?;
                println!("removed {reference}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(super::human(999), "999 B");
        assert_eq!(super::human(4_321_000), "4.3 MB");
    }
}
