//! `orch image` against archives made by the real tools: a busybox image
//! built with umoci and written by skopeo as an OCI archive and as a
//! `docker save` archive.

mod support;

use std::path::Path;
use std::process::{Command, Output};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn orch(data: &Path, args: &[&str]) -> Output {
    Command::new(ORCH)
        .args(["image", "--data-dir"])
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn skopeo_archives_import_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let layout = support::busybox_layout(dir.path());
    let src = format!("oci:{}:latest", layout.display());
    let oci_tar = dir.path().join("busybox-oci.tar");
    let docker_tar = dir.path().join("busybox-docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!(
            "oci-archive:{}:localhost:5000/busybox:oci",
            oci_tar.display()
        ),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &src,
        &format!("docker-archive:{}:busybox:docker", docker_tar.display()),
    ]));
    let data = dir.path().join("data");
    for tar in [&oci_tar, &docker_tar] {
        let out = orch(&data, &["import", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ls = String::from_utf8(orch(&data, &["ls"]).stdout).unwrap();
    assert!(ls.contains("localhost:5000/busybox:oci"), "{ls}");
    assert!(ls.contains("docker.io/library/busybox:docker"), "{ls}");
    // The layer is unpacked with busybox executable in it.
    let images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("images/images.json")).unwrap()).unwrap();
    let diff_id = images["images"]["docker.io/library/busybox:docker"]["layers"][0]["diffId"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let sh = data
        .join("images/layers/sha256")
        .join(&diff_id)
        .join("bin/sh");
    let out = run(Command::new(&sh).args(["-c", "echo from the layer"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the layer\n");

    // Removing one keeps the shared layer; removing both frees it.
    assert!(orch(&data, &["rm", "busybox:docker"]).status.success());
    assert!(sh.exists(), "the layer is still used by the other image");
    assert!(
        orch(&data, &["rm", "localhost:5000/busybox:oci"])
            .status
            .success()
    );
    assert!(!sh.exists(), "the layer went with the last image using it");
}

#[test]
fn bad_input_gets_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = orch(&data, &["import", "/nonexistent.tar"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent.tar") && err.lines().count() == 1,
        "{err}"
    );
    let out = orch(&data, &["rm", "nothing:here"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("orch image ls"), "{err}");
    let out = orch(&data, &["import", "x.tar", "--name", "Bad Name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name"));
}
