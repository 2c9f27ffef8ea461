//! Unpacking one image layer (an uncompressed tar stream) into its own
//! directory, ready to be an overlayfs lower layer.
//!
//! As the OCI image spec (`layer.md`) and containerd's overlay snapshotter
//! have it:
//! - `.wh.<name>` deletes `<name>` from the layers below: in an overlay
//!   lower dir that is a character device 0:0 named `<name>`;
//! - `.wh..wh..opq` hides everything below in its directory: the
//!   directory gets the xattr `trusted.overlay.opaque=y`;
//! - hard links point at files earlier in the same layer; owners, modes
//!   (setuid included, so after chown), PAX `SCHILY.xattr.*` attributes,
//!   device nodes and FIFOs are kept; directory times are set last.
//!
//! Paths are confined to the layer: `..` components and absolute paths
//! are resolved inside it, and nothing is written through a symlink
//! (a parent that is a symlink is refused), so a hostile layer cannot
//! write outside its directory.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{FileType, Mode, XattrFlags};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {0:?} goes through a symlink; refusing to write outside the layer")]
    Escape(PathBuf),
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_owned(),
        source,
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// The entry's path inside the layer, cleaned (`./a/../b` → `b`); None for
/// the root itself.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Refuse paths whose parent directories include a symlink.
fn check_parents(root: &Path, rel: &Path) -> Result<(), Error> {
    let mut at = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => return Err(Error::Escape(rel.to_owned())),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Make room for a new entry at `path`: anything there that is not a
/// directory goes; a directory goes unless the new entry is one too.
fn clear(path: &Path, new_is_dir: bool) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && !new_is_dir => fs::remove_dir_all(path).map_err(write_err(path)),
        Ok(m) if !m.is_dir() => fs::remove_file(path).map_err(write_err(path)),
        _ => Ok(()),
    }
}

fn mtime(header: &tar::Header) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(header.mtime().unwrap_or(0))
}

/// What one layer took: bytes of regular files written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    pub files: u64,
    pub bytes: u64,
}

/// Unpack the tar stream `layer` into `dest` (created if missing).
///
/// # Errors
/// The stream is not a valid tar, an entry would escape `dest`, or the
/// file system refused a write (device nodes, owners and `trusted.*`
/// xattrs need root).
pub fn apply_layer(layer: impl Read, dest: &Path) -> Result<Applied, Error> {
    fs::create_dir_all(dest).map_err(write_err(dest))?;
    let mut archive = tar::Archive::new(layer);
    archive.set_ignore_zeros(true);
    let mut applied = Applied::default();
    let mut dir_times: Vec<(PathBuf, SystemTime)> = Vec::new();
    // Hard links may name a file by any of its earlier spellings.
    let mut seen: HashMap<PathBuf, PathBuf> = HashMap::new();
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        let raw_path = entry.path().map_err(Error::Read)?.into_owned();
        let Some(rel) = clean(&raw_path) else {
            continue;
        };
        check_parents(dest, &rel)?;
        let path = dest.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        // Whiteouts become overlayfs whiteouts.
        if name == OPAQUE {
            let dir = path.parent().unwrap_or(dest);
            rustix::fs::lsetxattr(dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| write_err(dir)(errno(e)))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let target = path.with_file_name(hidden);
            clear(&target, false)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| write_err(&target)(errno(e)))?;
            continue;
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        clear(&path, kind.is_dir())?;
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&path).map_err(write_err(&path))?;
                dir_times.push((path.clone(), mtime(&header)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = fs::File::create(&path).map_err(write_err(&path))?;
                let n = io::copy(&mut entry, &mut file).map_err(write_err(&path))?;
                file.set_modified(mtime(&header))
                    .map_err(write_err(&path))?;
                applied.files += 1;
                applied.bytes += n;
            }
            tar::EntryType::Symlink => {
                let target = header
                    .link_name()
                    .map_err(Error::Read)?
                    .unwrap_or_default()
                    .into_owned();
                symlink(&target, &path).map_err(write_err(&path))?;
            }
            tar::EntryType::Link => {
                let target = header
                    .link_name()
                    .map_err(Error::Read)?
                    .and_then(|t| clean(&t))
                    .unwrap_or_default();
                let target = seen.get(&target).cloned().unwrap_or(target);
                check_parents(dest, &target)?;
                fs::hard_link(dest.join(&target), &path).map_err(write_err(&path))?;
                seen.insert(rel.clone(), target);
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    file_type,
                    Mode::from_raw_mode(mode),
                    dev,
                )
                .map_err(|e| write_err(&path)(errno(e)))?;
            }
            // PAX and GNU long-name headers are consumed by the tar reader.
            _ => continue,
        }
        // Extended attributes (e.g. file capabilities).
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(attr) = key.strip_prefix("SCHILY.xattr.")
                {
                    rustix::fs::lsetxattr(&path, attr, ext.value_bytes(), XattrFlags::empty())
                        .map_err(|e| write_err(&path)(errno(e)))?;
                }
            }
        }
        let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
        std::os::unix::fs::lchown(&path, uid, gid).map_err(write_err(&path))?;
        if kind != tar::EntryType::Symlink {
            // After chown, which clears setuid/setgid.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(write_err(&path))?;
        }
    }
    // Deepest first, so setting a child's time does not change its parent's.
    dir_times.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (dir, time) in dir_times {
        if let Ok(f) = fs::File::open(&dir) {
            let _ = f.set_modified(time);
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, body).unwrap();
    }

    fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(kind);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, path, &[][..]).unwrap();
    }

    #[test]
    fn files_links_modes_and_owners_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(|b| {
            special(b, "bin/", tar::EntryType::Directory, "");
            file(b, "bin/busybox", b"#!elf", 0o4755);
            special(b, "bin/sh", tar::EntryType::Symlink, "busybox");
            special(b, "bin/ls", tar::EntryType::Link, "bin/busybox");
            special(b, "dev/fifo", tar::EntryType::Fifo, "");
        });
        let applied = apply_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(applied.files, 1);
        let bb = fs::metadata(dir.path().join("bin/busybox")).unwrap();
        assert_eq!(bb.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!((bb.uid(), bb.gid()), (1000, 1000));
        assert_eq!(bb.mtime(), 1_600_000_000);
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let ls = fs::metadata(dir.path().join("bin/ls")).unwrap();
        assert_eq!(ls.ino(), bb.ino(), "a hard link, not a copy");
        assert!(
            fs::symlink_metadata(dir.path().join("dev/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn device_nodes_and_extended_attributes_are_made_as_the_layer_says() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(|b| {
            for (path, kind, major, minor) in [
                ("dev/null", tar::EntryType::Char, 1, 3),
                ("dev/loop9", tar::EntryType::Block, 7, 9),
            ] {
                let mut h = tar::Header::new_ustar();
                h.set_size(0);
                h.set_mode(0o660);
                h.set_entry_type(kind);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            // PAX records before the entry they describe, as Go's
            // archive/tar (and so docker and buildkit) write file
            // capabilities and other attributes.
            b.append_pax_extensions([
                ("SCHILY.xattr.user.orch", &b"yes"[..]),
                ("SCHILY.xattr.trusted.orch", &b"\x00\x01"[..]),
            ])
            .unwrap();
            file(b, "bin/ping", b"#!elf", 0o755);
        });
        apply_layer(&tar[..], dir.path()).unwrap();
        let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (
                rustix::fs::major(null.rdev()),
                rustix::fs::minor(null.rdev())
            ),
            (1, 3)
        );
        assert_eq!(null.mode() & 0o7777, 0o660);
        let lo = fs::symlink_metadata(dir.path().join("dev/loop9")).unwrap();
        assert!(lo.file_type().is_block_device());
        assert_eq!(
            (rustix::fs::major(lo.rdev()), rustix::fs::minor(lo.rdev())),
            (7, 9)
        );
        let ping = dir.path().join("bin/ping");
        let get = |name: &str| {
            let mut buf = [0u8; 16];
            let n = rustix::fs::lgetxattr(&ping, name, &mut buf)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            buf[..n].to_vec()
        };
        assert_eq!(get("user.orch"), b"yes");
        assert_eq!(get("trusted.orch"), [0, 1]);
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(|b| {
            special(b, "etc/", tar::EntryType::Directory, "");
            file(b, "etc/.wh.motd", b"", 0o644);
            special(b, "var/cache/", tar::EntryType::Directory, "");
            file(b, "var/cache/.wh..wh..opq", b"", 0o644);
            file(b, "var/cache/new", b"x", 0o644);
        });
        apply_layer(&tar[..], dir.path()).unwrap();
        let wh = fs::symlink_metadata(dir.path().join("etc/motd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.motd").exists());
        let mut opaque = [0u8; 4];
        let n = rustix::fs::lgetxattr(
            dir.path().join("var/cache"),
            "trusted.overlay.opaque",
            &mut opaque,
        )
        .expect("opaque xattr set (needs root)");
        assert_eq!(&opaque[..n], b"y");
        assert_eq!(fs::read(dir.path().join("var/cache/new")).unwrap(), b"x");
    }

    #[test]
    fn entries_cannot_escape_the_layer() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `..` is resolved inside the layer.
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let mut raw = tar::Builder::new(Vec::new());
        {
            let name = b"../../escaped";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            raw.append(&h, &b"x"[..]).unwrap();
        }
        apply_layer(&raw.into_inner().unwrap()[..], dir.path()).unwrap();
        assert!(dir.path().join("escaped").exists());
        // A symlink to outside, then a file through it: refused.
        let target = outside.path().to_str().unwrap().to_owned();
        let tar = layer(|b| {
            special(b, "link", tar::EntryType::Symlink, &target);
            file(b, "link/pwned", b"x", 0o644);
        });
        let err = apply_layer(&tar[..], dir.path()).unwrap_err();
        assert!(matches!(err, Error::Escape(_)), "{err}");
        assert!(!outside.path().join("pwned").exists());
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one_of_another_type() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(|b| {
            special(b, "x/", tar::EntryType::Directory, "");
            file(b, "x/inner", b"1", 0o644);
            file(b, "x", b"now a file", 0o644);
        });
        apply_layer(&tar[..], dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"now a file");
    }
}
