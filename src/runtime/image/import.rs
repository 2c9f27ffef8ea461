//! `orch image import`: images from a tarball, for air-gapped machines.
//!
//! Two layouts are understood, optionally compressed as a whole with gzip
//! or zstd (`.tar.gz`, `.tar.zst`):
//! - an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`),
//!   as `skopeo copy … oci-archive:` or `docker buildx --output type=oci`
//!   write it: names come from the `io.containerd.image.name` or
//!   `org.opencontainers.image.ref.name` annotations; an index for several
//!   platforms yields this machine's;
//! - a `docker save` archive (`manifest.json` with `RepoTags`, a config and
//!   layer tars).
//!
//! Every blob's digest is computed while it is copied in; an OCI blob
//! whose name does not match its content is refused.

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::Path;

use serde_json::{Value, json};

use super::reference::ImageRef;
use super::store::{Error, Image, ImageStore, Layer, Result, decompress};

pub const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
pub const INDEX_DOCKER: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The platform images are resolved for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's, in OCI terms.
    pub fn current() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Does an index entry's `platform` fit this one?
    pub fn matches(&self, platform: &Value) -> bool {
        platform["os"].as_str() == Some(self.os.as_str())
            && platform["architecture"].as_str() == Some(self.architecture.as_str())
            && match (&self.variant, platform["variant"].as_str()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    }
}

/// Pick this platform's manifest from an index.
///
/// # Errors
/// No entry fits.
pub fn choose_manifest<'a>(index: &'a Value, platform: &Platform) -> Result<&'a Value> {
    let manifests = index["manifests"].as_array().map_or(&[][..], Vec::as_slice);
    manifests
        .iter()
        .find(|m| m.get("platform").is_some_and(|p| platform.matches(p)))
        .or_else(|| {
            // Single-platform indexes often carry no platform at all.
            (manifests.len() == 1 && manifests[0].get("platform").is_none()).then(|| &manifests[0])
        })
        .ok_or_else(|| {
            let have: Vec<String> = manifests
                .iter()
                .filter_map(|m| m.get("platform"))
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["os"].as_str().unwrap_or("?"),
                        p["architecture"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            Error::Invalid(format!(
                "no image for {}/{} (the image has: {})",
                platform.os,
                platform.architecture,
                if have.is_empty() {
                    "no platforms".to_owned()
                } else {
                    have.join(", ")
                }
            ))
        })
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Invalid(format!("{what} is not valid JSON: {e}")))
}

/// Store an image whose manifest blob is in the store: unpack its layers
/// (checking them against the config's diff IDs) and record it.
///
/// # Errors
/// A blob is missing or corrupt, or a layer cannot be unpacked.
pub fn commit_image(
    store: &ImageStore,
    reference: &ImageRef,
    manifest_digest: &str,
) -> Result<Image> {
    let manifest = parse_json(&store.read_blob(manifest_digest)?, "the image manifest")?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| Error::Invalid("the image manifest has no config".into()))?
        .to_owned();
    let config = parse_json(&store.read_blob(&config_digest)?, "the image config")?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let descriptors = manifest["layers"].as_array().cloned().unwrap_or_default();
    if descriptors.len() != diff_ids.len() {
        return Err(Error::Invalid(format!(
            "the manifest lists {} layers but the config {} diff IDs",
            descriptors.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    let mut size = store.read_blob(manifest_digest)?.len() as u64
        + store.read_blob(&config_digest)?.len() as u64;
    for (desc, diff_id) in descriptors.iter().zip(diff_ids) {
        let digest = desc["digest"].as_str().unwrap_or_default().to_owned();
        store.unpack(&digest, &diff_id)?;
        let layer_size = desc["size"].as_u64().unwrap_or(0);
        size += layer_size;
        layers.push(Layer {
            digest,
            media_type: desc["mediaType"].as_str().unwrap_or_default().to_owned(),
            size: layer_size,
            diff_id,
        });
    }
    let image = Image {
        reference: reference.to_string(),
        manifest_digest: manifest_digest.to_owned(),
        config_digest,
        layers,
        size,
        stored: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    };
    store.put(image.clone())?;
    Ok(image)
}

/// Import every image in the archive at `file`; `name` names the image
/// when the archive does not (or overrides it when it holds one image).
///
/// # Errors
/// The archive is unreadable or not an image archive, a blob is corrupt,
/// or an image has no name.
pub fn import(
    store: &ImageStore,
    file: &Path,
    name: Option<&ImageRef>,
    platform: &Platform,
) -> Result<Vec<Image>> {
    let _lock = store.lock()?;
    let f = fs::File::open(file).map_err(|source| Error::Io {
        path: file.to_owned(),
        source,
    })?;
    let reader =
        decompress(BufReader::new(Box::new(f) as Box<dyn Read>)).map_err(|source| Error::Io {
            path: file.to_owned(),
            source,
        })?;
    let mut archive = tar::Archive::new(reader);
    // Small metadata files by path; every other file as a blob digest.
    let mut meta: HashMap<String, Vec<u8>> = HashMap::new();
    let mut blobs: HashMap<String, String> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let not_tar = |e: std::io::Error| {
        Error::Invalid(format!(
            "{} is not an image archive (tar): {e}",
            file.display()
        ))
    };
    for entry in archive.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let path = entry
            .path()
            .map_err(not_tar)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        // Newer `docker save` links `<id>/layer.tar` to the real file.
        if entry.header().entry_type().is_symlink() {
            if let Ok(Some(target)) = entry.link_name() {
                let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                let mut resolved = std::path::PathBuf::new();
                for c in base.join(target.as_ref()).components() {
                    match c {
                        std::path::Component::ParentDir => {
                            resolved.pop();
                        }
                        std::path::Component::Normal(p) => resolved.push(p),
                        _ => {}
                    }
                }
                links.insert(path, resolved.to_string_lossy().into_owned());
            }
            continue;
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if matches!(
            path.as_str(),
            "oci-layout" | "index.json" | "manifest.json" | "repositories"
        ) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(not_tar)?;
            meta.insert(path, bytes);
            continue;
        }
        let expected = path
            .strip_prefix("blobs/sha256/")
            .map(|hex| format!("sha256:{hex}"));
        let (digest, _) = store
            .ingest(&mut entry, expected.as_deref())
            .map_err(|e| match e {
                Error::DigestMismatch {
                    expected, actual, ..
                } => Error::DigestMismatch {
                    path: format!("{} in {}", path, file.display()),
                    expected,
                    actual,
                },
                other => other,
            })?;
        blobs.insert(path, digest);
    }

    let mut wanted: Vec<(ImageRef, String)> = Vec::new();
    if let Some(index) = meta.get("index.json") {
        let index = parse_json(index, "index.json")?;
        for desc in index["manifests"].as_array().into_iter().flatten() {
            let mut digest = desc["digest"].as_str().unwrap_or_default().to_owned();
            let media = desc["mediaType"].as_str().unwrap_or_default();
            if media == INDEX_OCI || media == INDEX_DOCKER {
                let nested = parse_json(&store.read_blob(&digest)?, "an image index")?;
                digest = choose_manifest(&nested, platform)?["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            } else if let Some(p) = desc.get("platform")
                && !platform.matches(p)
            {
                continue;
            }
            let annotations = &desc["annotations"];
            let named = annotations["io.containerd.image.name"]
                .as_str()
                .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str())
                .filter(|n| n.contains('/') || n.contains(':'))
                .map(ImageRef::parse)
                .transpose()
                .map_err(Error::Invalid)?;
            let reference = name.cloned().or(named).ok_or_else(|| {
                Error::Invalid(format!(
                    "{} does not name its image; pass --name REF (e.g. --name docker.io/library/busybox:latest)",
                    file.display()
                ))
            })?;
            wanted.push((reference, digest));
        }
    } else if let Some(manifest) = meta.get("manifest.json") {
        for item in parse_json(manifest, "manifest.json")?
            .as_array()
            .into_iter()
            .flatten()
        {
            let blob = |key: &str| -> Result<String> {
                let key = links.get(key).map_or(key, String::as_str);
                blobs.get(key).cloned().ok_or_else(|| {
                    Error::Invalid(format!(
                        "manifest.json names {key}, which is not in the archive"
                    ))
                })
            };
            let config_path = item["Config"].as_str().unwrap_or_default();
            let config = blob(config_path)?;
            let mut layers = Vec::new();
            for l in item["Layers"].as_array().into_iter().flatten() {
                let digest = blob(l.as_str().unwrap_or_default())?;
                let path = store.blob_path(&digest)?;
                let mut head = [0u8; 4];
                let n = fs::File::open(&path)
                    .and_then(|mut f| f.read(&mut head))
                    .unwrap_or(0);
                let media = if head[..n].starts_with(&[0x1f, 0x8b]) {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    "application/vnd.oci.image.layer.v1.tar+zstd"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                layers.push(json!({"mediaType": media, "digest": digest, "size": size}));
            }
            let config_size = store.read_blob(&config)?.len();
            let manifest = json!({
                "schemaVersion": 2, "mediaType": MANIFEST_OCI,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
            let (digest, _) = store.ingest(&bytes[..], None)?;
            let tags: Vec<&str> = item["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if let Some(n) = name {
                wanted.push((n.clone(), digest.clone()));
            } else if tags.is_empty() {
                return Err(Error::Invalid(format!(
                    "{} has an image without a tag; pass --name REF",
                    file.display()
                )));
            }
            if name.is_none() {
                for t in tags {
                    wanted.push((ImageRef::parse(t).map_err(Error::Invalid)?, digest.clone()));
                }
            }
        }
    } else {
        return Err(Error::Invalid(format!(
            "{} is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            file.display()
        )));
    }
    if name.is_some() && wanted.len() > 1 {
        return Err(Error::Invalid(format!(
            "{} holds {} images; --name names only one",
            file.display(),
            wanted.len()
        )));
    }
    let mut images = Vec::new();
    for (reference, digest) in wanted {
        images.push(commit_image(store, &reference, &digest)?);
    }
    Ok(images)
}
