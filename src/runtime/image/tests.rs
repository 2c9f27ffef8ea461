//! Importing archives into a real store on disk (needs root for the
//! overlay whiteouts some layers carry).

use std::collections::HashSet;
use std::io::Write;

use serde_json::json;

use super::store::Hashing;
use super::*;

fn sha(bytes: &[u8]) -> String {
    Hashing::new(bytes).finish().unwrap().0
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *body).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Two layers: a file, then a second file and a whiteout of the first.
fn layers() -> (Vec<u8>, Vec<u8>) {
    (
        tar_of(&[("bin/hello", b"hello"), ("etc/motd", b"hi")]),
        tar_of(&[("bin/world", b"world"), ("etc/.wh.motd", b"")]),
    )
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": Platform::current().architecture, "os": "linux",
        "config": {"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// An OCI image layout archive, as skopeo writes one.
fn oci_archive(name: &str, corrupt: bool) -> Vec<u8> {
    let (l1, l2) = layers();
    let (g1, g2) = (gzip(&l1), gzip(&l2));
    let cfg = config(&[sha(&l1), sha(&l2)]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": import::MANIFEST_OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cfg), "size": cfg.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&g1), "size": g1.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&g2), "size": g2.len()},
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": import::MANIFEST_OCI, "digest": sha(&manifest), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": name}}],
    }))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha(b)[7..]);
    let g2_body = if corrupt {
        gzip(b"tampered")
    } else {
        g2.clone()
    };
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (blob(&manifest), manifest.clone()),
        (blob(&cfg), cfg.clone()),
        (blob(&g1), g1.clone()),
        (blob(&g2), g2_body),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    tar_of(&refs)
}

/// A `docker save` archive.
fn docker_archive(tag: &str) -> Vec<u8> {
    let (l1, l2) = layers();
    let cfg = config(&[sha(&l1), sha(&l2)]);
    let manifest = serde_json::to_vec(&json!([
        {"Config": "cfg.json", "RepoTags": [tag], "Layers": ["a/layer.tar", "b/layer.tar"]}
    ]))
    .unwrap();
    tar_of(&[
        ("manifest.json", &manifest),
        ("cfg.json", &cfg),
        ("a/layer.tar", &l1),
        ("b/layer.tar", &l2),
    ])
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn oci_layouts_import_with_layers_unpacked_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let file = write(
        &dir,
        "busybox.tar",
        &oci_archive("localhost:5000/busybox:1", false),
    );
    let images = import(&store, &file, None, &Platform::current()).unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.reference, "localhost:5000/busybox:1");
    assert_eq!(image.layers.len(), 2);
    let first = store.layer_dir(&image.layers[0].diff_id).unwrap();
    let second = store.layer_dir(&image.layers[1].diff_id).unwrap();
    assert_eq!(std::fs::read(first.join("bin/hello")).unwrap(), b"hello");
    assert_eq!(std::fs::read(second.join("bin/world")).unwrap(), b"world");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(second.join("etc/motd"))
            .unwrap()
            .file_type()
            .is_char_device(),
        "the whiteout is an overlay whiteout"
    );
    // Importing again (zstd-compressed this time) changes nothing.
    let zst = zstd::encode_all(&oci_archive("localhost:5000/busybox:1", false)[..], 3).unwrap();
    let again = write(&dir, "busybox.tar.zst", &zst);
    let images2 = import(&store, &again, None, &Platform::current()).unwrap();
    assert_eq!(images2[0].manifest_digest, image.manifest_digest);
    assert_eq!(store.images().unwrap().len(), 1);
}

#[test]
fn docker_save_archives_import_under_their_tags() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let file = write(&dir, "app.tar", &docker_archive("app:v1"));
    let images = import(&store, &file, None, &Platform::current()).unwrap();
    assert_eq!(images[0].reference, "docker.io/library/app:v1");
    let layer = store.layer_dir(&images[0].layers[0].diff_id).unwrap();
    assert_eq!(std::fs::read(layer.join("etc/motd")).unwrap(), b"hi");
    // --name renames.
    let named = ImageRef::parse("registry.local/team/app:2").unwrap();
    let images = import(&store, &file, Some(&named), &Platform::current()).unwrap();
    assert_eq!(images[0].reference, "registry.local/team/app:2");
}

#[test]
fn corrupt_or_foreign_archives_are_refused_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let bad = write(&dir, "bad.tar", &oci_archive("localhost/x:1", true));
    let err = import(&store, &bad, None, &Platform::current())
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
    let foreign = write(&dir, "foreign.tar", &tar_of(&[("hello.txt", b"hi")]));
    let err = import(&store, &foreign, None, &Platform::current())
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither an OCI image layout"), "{err}");
    let junk = write(
        &dir,
        "junk.tar",
        b"this is not a tar file at all, not even close............",
    );
    assert!(import(&store, &junk, None, &Platform::current()).is_err());
    let unnamed = write(&dir, "unnamed.tar", &oci_archive("latest", false));
    let err = import(&store, &unnamed, None, &Platform::current())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--name"), "{err}");
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn removing_an_image_frees_what_only_it_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let a = write(&dir, "a.tar", &docker_archive("a:1"));
    let image = import(&store, &a, None, &Platform::current())
        .unwrap()
        .remove(0);
    let named = ImageRef::parse("b:1").unwrap();
    import(&store, &a, Some(&named), &Platform::current()).unwrap();
    // Shared content stays while another image uses it.
    store
        .remove("docker.io/library/a:1", &HashSet::new())
        .unwrap();
    assert!(store.has_blob(&image.config_digest));
    assert!(store.layer_dir(&image.layers[0].diff_id).unwrap().exists());
    store
        .remove("docker.io/library/b:1", &HashSet::new())
        .unwrap();
    assert!(!store.has_blob(&image.config_digest));
    assert!(!store.layer_dir(&image.layers[0].diff_id).unwrap().exists());
    let err = store
        .remove("docker.io/library/b:1", &HashSet::new())
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn docker_save_layers_behind_symlinks_are_followed() {
    let (l1, l2) = layers();
    let cfg = config(&[sha(&l1), sha(&l2)]);
    let manifest = serde_json::to_vec(&json!([
        {"Config": "cfg.json", "RepoTags": ["linked:1"], "Layers": ["id1/layer.tar", "id2/layer.tar"]}
    ]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("manifest.json", &manifest[..]),
        ("cfg.json", &cfg[..]),
        ("l1.tar", &l1[..]),
        ("l2.tar", &l2[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o444);
        b.append_data(&mut h, path, body).unwrap();
    }
    for (link, target) in [
        ("id1/layer.tar", "../l1.tar"),
        ("id2/layer.tar", "../l2.tar"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, link, target).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let file = write(&dir, "linked.tar", &b.into_inner().unwrap());
    let images = import(&store, &file, None, &Platform::current()).unwrap();
    assert_eq!(images[0].reference, "docker.io/library/linked:1");
    assert_eq!(images[0].layers.len(), 2);
}
