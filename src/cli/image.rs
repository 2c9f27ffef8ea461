//! `orch image`: the node's image store (pull, import, list, remove).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{DEFAULT_REGISTRIES, DataDirArgs};
use crate::runtime::image::pull::Progress;
use crate::runtime::image::{
    ImageRef, ImageStore, Platform, PullSecrets, Puller, Registries, import,
};

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
    /// Pull an image from its registry (or the mirrors registries.yaml
    /// names), showing progress.
    Pull {
        /// Image reference (e.g. busybox, 127.0.0.1:5000/app:v1).
        image: String,
        /// Registry configuration (mirrors, credentials, TLS), as k3s's.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_REGISTRIES)]
        private_registry: PathBuf,
        /// Log in with USER:PASSWORD.
        #[arg(long, value_name = "USER:PASSWORD")]
        creds: Option<String>,
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
        ImageCommand::Pull {
            image,
            private_registry,
            creds,
        } => pull(store, &image, &private_registry, creds.as_deref())?,
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

fn pull(
    store: ImageStore,
    image: &str,
    registries: &std::path::Path,
    creds: Option<&str>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    use std::sync::Mutex;

    let reference = ImageRef::parse(image).map_err(|e| anyhow::anyhow!(e))?;
    let registries = Registries::load(registries).map_err(|e| anyhow::anyhow!(e))?;
    let mut secrets = PullSecrets::default();
    if let Some(c) = creds {
        let (user, password) = c
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--creds: expected USER:PASSWORD"))?;
        secrets.add(
            serde_json::json!({"auths": {&reference.registry: {"username": user, "password": password}}})
                .to_string()
                .as_bytes(),
        );
    }
    let puller = Puller::new(std::sync::Arc::new(store), registries);
    let terminal = std::io::stderr().is_terminal();
    // Sizes and bytes received per layer, for one progress line.
    type Layers = (Vec<(String, u64)>, std::collections::HashMap<String, u64>);
    let state: Mutex<Layers> = Mutex::default();
    let last = Mutex::new(std::time::Instant::now());
    let show = |p: Progress| {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Resolved {
                endpoint,
                layers,
                present,
            } => {
                eprintln!(
                    "pulling {reference} from {endpoint}: {} layers, {present} already here",
                    layers.len()
                );
                st.0 = layers;
            }
            Progress::Layer { digest, received } => {
                st.1.insert(digest, received);
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if terminal && last.elapsed() > std::time::Duration::from_millis(100) {
                    *last = std::time::Instant::now();
                    let total: u64 =
                        st.0.iter()
                            .filter(|(d, _)| st.1.contains_key(d))
                            .map(|(_, s)| s)
                            .sum();
                    let got: u64 = st.1.values().sum();
                    let done = st.0.iter().filter(|(d, s)| st.1.get(d) == Some(s)).count();
                    eprint!(
                        "\r  {} / {} layers  {} / {}   ",
                        done,
                        st.1.len(),
                        human(got),
                        human(total)
                    );
                    let _ = std::io::stderr().flush();
                }
            }
            Progress::Unpacking => {
                let got: u64 = st.1.values().sum();
                if terminal {
                    eprint!("\r");
                }
                eprintln!(
                    "  downloaded {} in {} layers; unpacking",
                    human(got),
                    st.1.len()
                );
            }
        }
    };
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let image = runtime
        .block_on(puller.pull(&reference, &secrets, &show))
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "pulled {} ({}, {}) in {:.1}s",
        image.reference,
        &image.manifest_digest[..19],
        human(image.size),
        started.elapsed().as_secs_f64()
    );
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
