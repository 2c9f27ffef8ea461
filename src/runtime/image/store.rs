//! The image store under `<data-dir>/images/`:
//!
//! ```text
//! blobs/sha256/<hex>     content-addressed blobs (manifests, configs, layers as pulled)
//! layers/sha256/<hex>/   each layer unpacked once, keyed by its diff ID
//! images.json            references → image records
//! ingest/, lock          blobs being written; the lock mutations take
//! ```
//!
//! Blobs are written to `ingest/` while their digest is computed and moved
//! into place only when it matches; layers are unpacked into a temporary
//! directory and renamed into place once their diff ID is verified. A crash
//! leaves at most garbage in `ingest/`, never a wrong blob or a half layer.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::unpack;

/// The layers under `layers` (`<store>/layers/sha256`) that the overlays
/// in `mountinfo` have as lower directories, as `sha256:<hex>`.
fn overlay_layers(mountinfo: &str, layers: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for m in crate::runtime::mountns::mount_entries(mountinfo).filter(|m| m.fstype == "overlay") {
        let Some(lower) = m
            .super_options
            .split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
        else {
            continue;
        };
        for dir in lower.split(':') {
            if let Ok(rest) = Path::new(dir).strip_prefix(layers)
                && let Some(hex) = rest.to_str().filter(|h| !h.contains('/'))
            {
                out.push(format!("sha256:{hex}"));
            }
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {path} is corrupt: its sha256 is {actual}, expected {expected}")]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: unpack::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("image {0:?} not found; `orch image ls` lists the images")]
    NotFound(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// A layer of an image: the blob as stored and the diff ID of its
/// uncompressed content (where it is unpacked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
}

/// One image, as `images.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Layer>,
    /// Bytes of the manifest, config and layer blobs.
    pub size: u64,
    /// When it was stored (RFC 3339).
    pub stored: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, Image>,
}

/// sha256 over everything read through it.
pub struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
    pub bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        }
    }

    /// Read what is left, then return `sha256:<hex>`.
    ///
    /// # Errors
    /// Reading failed.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let hex: String = self
            .ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((format!("sha256:{hex}"), self.bytes))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` → `<hex>`, refusing anything else (it becomes a path).
fn hex_of(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Invalid(format!("{digest:?} is not a sha256 digest")))?;
    Ok(hex)
}

/// How a layer blob is compressed, from its first bytes.
pub fn decompress<'a>(mut reader: BufReader<Box<dyn Read + 'a>>) -> io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

pub struct ImageStore {
    root: PathBuf,
}

/// An exclusive hold on the store (between `orch image` commands and the
/// agent).
pub struct Lock(#[allow(dead_code)] fs::File);

impl ImageStore {
    /// Open (creating) the store at `root`.
    ///
    /// # Errors
    /// The directories cannot be created.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "layers/sha256", "ingest"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the store's lock (blocking while another process holds it).
    ///
    /// # Errors
    /// The lock file cannot be opened.
    pub fn lock(&self) -> Result<Lock> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&path)(io::Error::from_raw_os_error(e.raw_os_error())))?;
        Ok(Lock(file))
    }

    /// Where a blob lives.
    ///
    /// # Errors
    /// `digest` is not a sha256 digest.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Store what `reader` yields as a blob; with `expected`, refuse it
    /// unless its digest matches. Returns the digest and size.
    ///
    /// # Errors
    /// IO failed or the digest does not match.
    pub fn ingest(&self, reader: impl Read, expected: Option<&str>) -> Result<(String, u64)> {
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("ingest"))
            .map_err(io_err(&self.root.join("ingest")))?;
        let mut hashing = Hashing::new(reader);
        let mut out = io::BufWriter::new(tmp.as_file());
        io::copy(&mut hashing, &mut out).map_err(io_err(tmp.path()))?;
        out.flush().map_err(io_err(tmp.path()))?;
        drop(out);
        let (digest, size) = hashing.finish().map_err(io_err(tmp.path()))?;
        if let Some(want) = expected
            && want != digest
        {
            return Err(Error::DigestMismatch {
                path: want.to_owned(),
                expected: want.to_owned(),
                actual: digest,
            });
        }
        let dest = self.blob_path(&digest)?;
        if !dest.exists() {
            tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
            tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        }
        Ok((digest, size))
    }

    /// Move the downloaded file at `path` into the store as blob `expected`
    /// after checking its digest (nothing is copied).
    ///
    /// # Errors
    /// IO failed or the digest does not match.
    pub fn adopt(&self, path: &Path, expected: &str) -> Result<()> {
        let file = fs::File::open(path).map_err(io_err(path))?;
        let mut hashing = Hashing::new(BufReader::new(file));
        io::copy(&mut hashing, &mut io::sink()).map_err(io_err(path))?;
        let (digest, _) = hashing.finish().map_err(io_err(path))?;
        if digest != expected {
            return Err(Error::DigestMismatch {
                path: expected.to_owned(),
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let dest = self.blob_path(&digest)?;
        if !dest.exists() {
            fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(path))?;
            fs::rename(path, &dest).map_err(io_err(&dest))?;
        }
        Ok(())
    }

    /// A (small) blob's bytes.
    ///
    /// # Errors
    /// Missing or unreadable.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(io_err(&p))
    }

    /// Where a layer is unpacked.
    ///
    /// # Errors
    /// `diff_id` is not a sha256 digest.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers/sha256").join(hex_of(diff_id)?))
    }

    /// Unpack a layer blob once: decompress, apply, check that its content
    /// has `diff_id`. Does nothing when it is already unpacked.
    ///
    /// # Errors
    /// The blob is missing or corrupt, or unpacking failed.
    pub fn unpack(&self, blob: &str, diff_id: &str) -> Result<PathBuf> {
        let dest = self.layer_dir(diff_id)?;
        if dest.exists() {
            return Ok(dest);
        }
        let src = self.blob_path(blob)?;
        let file = fs::File::open(&src).map_err(io_err(&src))?;
        let reader =
            decompress(BufReader::new(Box::new(file) as Box<dyn Read>)).map_err(io_err(&src))?;
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.root.join("ingest"))
            .map_err(io_err(&self.root.join("ingest")))?;
        let mut hashing = Hashing::new(reader);
        unpack::apply_layer(&mut hashing, tmp.path()).map_err(|source| Error::Unpack {
            digest: blob.to_owned(),
            source,
        })?;
        let (actual, _) = hashing.finish().map_err(io_err(&src))?;
        if actual != diff_id {
            return Err(Error::DigestMismatch {
                path: blob.to_owned(),
                expected: diff_id.to_owned(),
                actual,
            });
        }
        let tmp = tmp.keep();
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        Ok(dest)
    }

    fn read_index(&self) -> Result<Index> {
        let p = self.root.join("images.json");
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let p = self.root.join("images.json");
        let tmp = self.root.join("images.json.tmp");
        let bytes = serde_json::to_vec_pretty(index).expect("index serialises");
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    /// Every image, by reference.
    ///
    /// # Errors
    /// `images.json` is unreadable.
    pub fn images(&self) -> Result<Vec<Image>> {
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// The image stored under `reference` (normalised).
    ///
    /// # Errors
    /// Not found, or `images.json` is unreadable.
    pub fn get(&self, reference: &str) -> Result<Image> {
        self.read_index()?
            .images
            .remove(reference)
            .ok_or_else(|| Error::NotFound(reference.to_owned()))
    }

    /// Record `image` under its reference (replacing what was there).
    ///
    /// # Errors
    /// `images.json` cannot be written.
    pub fn put(&self, image: Image) -> Result<()> {
        let mut index = self.read_index()?;
        index.images.insert(image.reference.clone(), image);
        self.write_index(&index)
    }

    /// Forget `reference`, then delete blobs and layers no image uses any
    /// more (except those in `in_use`, e.g. by running containers).
    ///
    /// # Errors
    /// Not found, or the store cannot be written.
    pub fn remove(&self, reference: &str, in_use: &HashSet<String>) -> Result<Image> {
        let mut index = self.read_index()?;
        let image = index
            .images
            .remove(reference)
            .ok_or_else(|| Error::NotFound(reference.to_owned()))?;
        self.write_index(&index)?;
        self.collect(&index, in_use)?;
        Ok(image)
    }

    /// The unpacked layers running containers are made of: the lower
    /// directories of the overlays mounted in any mount namespace on this
    /// machine (the shims mount their pods' roots in namespaces of their
    /// own), as `sha256:<hex>` diff IDs.
    pub fn layers_mounted(&self) -> HashSet<String> {
        let layers = self.root.join("layers/sha256");
        let mut seen_namespaces = HashSet::new();
        let mut out = HashSet::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(ns) = fs::read_link(e.path().join("ns/mnt")) else {
                continue;
            };
            if !seen_namespaces.insert(ns) {
                continue;
            }
            let mountinfo = fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
            out.extend(overlay_layers(&mountinfo, &layers));
        }
        out
    }

    /// Delete blobs and unpacked layers no image references, nor any
    /// running container's root filesystem.
    fn collect(&self, index: &Index, in_use: &HashSet<String>) -> Result<u64> {
        let mut keep: HashSet<String> = in_use.clone();
        keep.extend(self.layers_mounted());
        for image in index.images.values() {
            keep.insert(image.manifest_digest.clone());
            keep.insert(image.config_digest.clone());
            for l in &image.layers {
                keep.insert(l.digest.clone());
                keep.insert(l.diff_id.clone());
            }
        }
        let mut freed = 0;
        for sub in ["blobs/sha256", "layers/sha256"] {
            let dir = self.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&format!("sha256:{name}")) {
                    continue;
                }
                let path = entry.path();
                if path.is_dir() {
                    fs::remove_dir_all(&path).map_err(io_err(&path))?;
                } else {
                    freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_name_the_layers_they_are_made_of() {
        let mountinfo = "\
22 1 252:1 / / rw - ext4 /dev/vda rw
301 22 0:63 / /var/lib/orch/pods/u/containers/c.0/rootfs rw - overlay overlay rw,lowerdir=/var/lib/orch/images/layers/sha256/bbb:/var/lib/orch/images/layers/sha256/aaa,upperdir=/var/lib/orch/pods/u/containers/c.0/upper,workdir=/var/lib/orch/pods/u/containers/c.0/work
302 22 0:64 / /mnt rw - overlay overlay rw,lowerdir=/elsewhere/sha256/ccc,upperdir=/u,workdir=/w
";
        let mut found = overlay_layers(mountinfo, Path::new("/var/lib/orch/images/layers/sha256"));
        found.sort();
        assert_eq!(found, ["sha256:aaa", "sha256:bbb"]);
    }
}
