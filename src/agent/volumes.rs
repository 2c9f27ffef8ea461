//! Volumes whose content comes from the API — configMap, secret,
//! downwardAPI and projected — written into the pod's volume directory the
//! way the kubelet's atomic writer does it: the files go into a fresh
//! timestamped directory, `..data` is switched to it with one rename, and
//! each top-level name is a symlink through `..data`, so a container never
//! sees half an update. Refreshed at most every 30 s, so changes reach
//! running pods within a minute.
//!
//! Also: the ConfigMaps and Secrets that `env` / `envFrom` refer to.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use serde_json::Value;

/// Files of one volume: relative path → (content, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

pub use crate::api::podrefs::{TOKEN, references, token_key};

pub use super::container::Sources;

/// Fetch a ConfigMap's or Secret's data (`None`: it does not exist).
///
/// # Errors
/// The API failed for another reason than "not found".
pub async fn fetch(
    client: &Client,
    ns: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let not_found = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    if kind == "ConfigMap" {
        match Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(name)
            .await
        {
            Ok(cm) => {
                let mut out: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    out.insert(k, v.0);
                }
                Ok(Some(out))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(format!("configmap {ns}/{name}: {e}")),
        }
    } else {
        match Api::<Secret>::namespaced(client.clone(), ns)
            .get(name)
            .await
        {
            Ok(s) => {
                let mut out: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    out.insert(k, v.into_bytes());
                }
                Ok(Some(out))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(format!("secret {ns}/{name}: {e}")),
        }
    }
}

/// Whether a reference is marked `optional: true`.
fn optional(v: &Value) -> bool {
    v["optional"] == Value::Bool(true)
}

/// Files from a ConfigMap/Secret source: all keys, or the listed `items`.
fn from_keys(
    src: &Value,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    default_mode: u32,
    what: &str,
    files: &mut Files,
) -> Result<(), String> {
    let Some(data) = data else {
        return if optional(src) {
            Ok(())
        } else {
            Err(format!("{what} not found"))
        };
    };
    match src["items"].as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let path = item["path"].as_str().unwrap_or(key);
                let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                match data.get(key) {
                    Some(v) => {
                        files.insert(path.to_owned(), (v.clone(), mode));
                    }
                    None if optional(src) => {}
                    None => return Err(format!("{what} has no key {key:?}")),
                }
            }
        }
        None => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(())
}

/// downwardAPI files from the pod's fields and its containers' resources
/// (`resourceFieldRef` names the container).
fn downward(pod: &Value, items: &[Value], default_mode: u32, files: &mut Files) {
    for item in items {
        let Some(path) = item["path"].as_str() else {
            continue;
        };
        let value = match item.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            Some("metadata.labels") | Some("metadata.annotations") => {
                let map = if item.pointer("/fieldRef/fieldPath")
                    == Some(&Value::from("metadata.labels"))
                {
                    &pod["metadata"]["labels"]
                } else {
                    &pod["metadata"]["annotations"]
                };
                map.as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}=\"{}\"\n", v.as_str().unwrap_or_default()))
                            .collect::<String>()
                    })
                    .unwrap_or_default()
            }
            Some(field) => super::container::field_ref(pod, field).unwrap_or_default(),
            None => match item.get("resourceFieldRef") {
                Some(r) => {
                    super::container::resource_field(pod, &Value::Null, r, super::node::capacity())
                }
                None => continue,
            },
        };
        let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
        files.insert(path.to_owned(), (value.into_bytes(), mode));
    }
}

/// The files of every API-backed volume of the pod, by volume name.
///
/// # Errors
/// A non-optional ConfigMap, Secret or key is missing (the container
/// cannot start: CreateContainerConfigError).
pub fn render(pod: &Value, sources: &Sources) -> Result<BTreeMap<String, Files>, String> {
    let mut out = BTreeMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        let mut files = Files::new();
        if let Some(cm) = v.get("configMap") {
            let mode = cm["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
            let n = cm["name"].as_str().unwrap_or_default();
            from_keys(
                cm,
                sources.get(&("ConfigMap", n.to_owned())),
                mode,
                &format!("configmap {n:?}"),
                &mut files,
            )?;
        } else if let Some(sec) = v.get("secret") {
            let mode = sec["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
            let n = sec["secretName"].as_str().unwrap_or_default();
            from_keys(
                sec,
                sources.get(&("Secret", n.to_owned())),
                mode,
                &format!("secret {n:?}"),
                &mut files,
            )?;
        } else if let Some(d) = v.get("downwardAPI") {
            let mode = d["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
            downward(
                pod,
                d["items"].as_array().map_or(&[][..], Vec::as_slice),
                mode,
                &mut files,
            );
        } else if let Some(p) = v.get("projected") {
            let mode = p["defaultMode"].as_u64().map_or(0o644, |m| m as u32);
            for src in p["sources"].as_array().into_iter().flatten() {
                if let Some(cm) = src.get("configMap") {
                    let n = cm["name"].as_str().unwrap_or_default();
                    from_keys(
                        cm,
                        sources.get(&("ConfigMap", n.to_owned())),
                        mode,
                        &format!("configmap {n:?}"),
                        &mut files,
                    )?;
                } else if let Some(sec) = src.get("secret") {
                    let n = sec["name"].as_str().unwrap_or_default();
                    from_keys(
                        sec,
                        sources.get(&("Secret", n.to_owned())),
                        mode,
                        &format!("secret {n:?}"),
                        &mut files,
                    )?;
                } else if let Some(d) = src.get("downwardAPI") {
                    downward(
                        pod,
                        d["items"].as_array().map_or(&[][..], Vec::as_slice),
                        mode,
                        &mut files,
                    );
                } else if let Some(t) = src.get("serviceAccountToken") {
                    let token = sources
                        .get(&(TOKEN, token_key(t)))
                        .and_then(|d| d.get("token"))
                        .ok_or("the service account token is not issued yet")?;
                    let path = t["path"].as_str().unwrap_or("token");
                    files.insert(path.to_owned(), (token.clone(), mode));
                }
            }
        } else {
            continue;
        }
        out.insert(name.to_owned(), files);
    }
    Ok(out)
}

/// Check a `hostPath` volume by its `type`, making what `DirectoryOrCreate`
/// and `FileOrCreate` ask for, as the kubelet does before it mounts it.
///
/// # Errors
/// What the kubelet says: `hostPath type check failed: PATH is not a
/// directory`, and the like.
pub fn host_path_ready(host_path: &Value) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
    let Some(path) = host_path["path"].as_str() else {
        return Ok(());
    };
    let kind = host_path["type"].as_str().unwrap_or_default();
    let meta = std::fs::metadata(path).ok();
    let failed = |what: &str| {
        Err(format!(
            "hostPath type check failed: {path} is not a {what}"
        ))
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_none() => std::fs::create_dir_all(path)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("hostPath {path}: cannot create the directory: {e}")),
        "FileOrCreate" if meta.is_none() => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| format!("hostPath {path}: cannot create the file: {e}")),
        "Directory" | "DirectoryOrCreate" if !meta.as_ref().is_some_and(|m| m.is_dir()) => {
            failed("directory")
        }
        "File" | "FileOrCreate" if !meta.as_ref().is_some_and(|m| m.is_file()) => failed("file"),
        "Socket" if !meta.as_ref().is_some_and(|m| m.file_type().is_socket()) => {
            failed("socket file")
        }
        "CharDevice"
            if !meta
                .as_ref()
                .is_some_and(|m| m.file_type().is_char_device()) =>
        {
            failed("character device")
        }
        "BlockDevice"
            if !meta
                .as_ref()
                .is_some_and(|m| m.file_type().is_block_device()) =>
        {
            failed("block device")
        }
        "Directory" | "DirectoryOrCreate" | "File" | "FileOrCreate" | "Socket" | "CharDevice"
        | "BlockDevice" => Ok(()),
        other => Err(format!("hostPath {path}: unknown type {other:?}")),
    }
}

/// Write `files` into `dir` atomically (the kubelet's AtomicWriter):
/// nothing changes when the content is the same. With `fs_group`, files
/// and directories belong to that group and are group-readable (the
/// kubelet's volume ownership for read-only volumes).
///
/// # Errors
/// The file system refused.
pub fn write_atomic(dir: &Path, files: &Files, fs_group: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let current = dir.join("..data");
    // Unchanged? Compare with what ..data holds.
    if current.exists() {
        let same = files
            .iter()
            .all(|(p, (content, _))| std::fs::read(current.join(p)).is_ok_and(|c| &c == content))
            && count_files(&current) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let fresh = dir.join(&stamp);
    for (path, (content, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        let mut mode = *mode & 0o7777;
        if let Some(gid) = fs_group {
            std::os::unix::fs::chown(&target, None, Some(gid))?;
            mode |= 0o440;
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::create_dir_all(&fresh)?;
    if let Some(gid) = fs_group {
        // Directories: the group's, setgid, searchable by it.
        for d in std::iter::once(dir.to_owned()).chain(dirs_under(&fresh)) {
            std::os::unix::fs::chown(&d, None, Some(gid))?;
            let m = std::fs::metadata(&d)?.permissions().mode() & 0o7777;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m | 0o2550))?;
        }
    }
    let old = std::fs::read_link(&current).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &current)?;
    // Top-level names point through ..data; names no longer there go.
    let top: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for t in &top {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{t}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// `dir` and every directory below it.
fn dirs_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(dirs_under(&e.path()));
        }
    }
    out
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Decode helper for tests and callers holding base64 text.
pub fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sources() -> Sources {
        let mut s = Sources::new();
        s.insert(
            ("ConfigMap", "app".into()),
            BTreeMap::from([
                ("app.conf".into(), b"port=80".to_vec()),
                ("extra".into(), b"x".to_vec()),
            ]),
        );
        s.insert(
            ("Secret", "db".into()),
            BTreeMap::from([("password".into(), b64("aHVudGVyMg=="))]),
        );
        s
    }

    #[test]
    fn host_paths_are_checked_and_made_by_type() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel).display().to_string();
        let hp = |path: &str, kind: &str| json!({"path": path, "type": kind});
        assert_eq!(host_path_ready(&hp(&p("none"), "")), Ok(()));
        assert!(!dir.path().join("none").exists(), "no type: nothing made");

        assert_eq!(host_path_ready(&hp(&p("a/b"), "DirectoryOrCreate")), Ok(()));
        let made = std::fs::metadata(dir.path().join("a/b")).unwrap();
        assert!(made.is_dir());
        assert_eq!(made.permissions().mode() & 0o777, 0o755);
        assert_eq!(host_path_ready(&hp(&p("a/b"), "Directory")), Ok(()));

        assert_eq!(host_path_ready(&hp(&p("a/f"), "FileOrCreate")), Ok(()));
        let made = std::fs::metadata(dir.path().join("a/f")).unwrap();
        assert!(made.is_file() && made.len() == 0);
        assert_eq!(made.permissions().mode() & 0o777, 0o644);
        std::fs::write(dir.path().join("a/f"), "kept").unwrap();
        assert_eq!(host_path_ready(&hp(&p("a/f"), "FileOrCreate")), Ok(()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/f")).unwrap(),
            "kept"
        );

        assert_eq!(
            host_path_ready(&hp(&p("missing"), "Directory")),
            Err(format!(
                "hostPath type check failed: {} is not a directory",
                p("missing")
            ))
        );
        assert_eq!(
            host_path_ready(&hp(&p("a/f"), "DirectoryOrCreate")),
            Err(format!(
                "hostPath type check failed: {} is not a directory",
                p("a/f")
            ))
        );
        assert_eq!(
            host_path_ready(&hp(&p("a/b"), "File")),
            Err(format!(
                "hostPath type check failed: {} is not a file",
                p("a/b")
            ))
        );
        assert!(
            host_path_ready(&hp(&p("nodir/f"), "FileOrCreate"))
                .unwrap_err()
                .contains("cannot create the file"),
            "FileOrCreate does not make parent directories"
        );
        assert_eq!(host_path_ready(&hp("/dev/null", "CharDevice")), Ok(()));
        assert_eq!(
            host_path_ready(&hp("/dev/null", "Socket")),
            Err("hostPath type check failed: /dev/null is not a socket file".into())
        );
        assert!(
            host_path_ready(&hp("/x", "Pipe"))
                .unwrap_err()
                .contains("unknown type")
        );
    }

    #[test]
    fn volumes_render_keys_items_modes_and_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
        "spec": {"volumes": [
            {"name": "cfg", "configMap": {"name": "app"}},
            {"name": "one", "configMap": {"name": "app", "items": [{"key": "app.conf", "path": "conf/app.conf", "mode": 0o600}]}},
            {"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400}},
            {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                                                       {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                                       {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
                                                       {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "requests.cpu", "divisor": "1m"}}]}},
            {"name": "maybe", "configMap": {"name": "missing", "optional": true}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "containers": [{"name": "app", "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}});
        let out = render(&pod, &sources()).unwrap();
        assert_eq!(out["cfg"].len(), 2);
        assert_eq!(out["one"]["conf/app.conf"], (b"port=80".to_vec(), 0o600));
        assert_eq!(out["creds"]["password"], (b"hunter2".to_vec(), 0o400));
        assert_eq!(out["info"]["name"].0, b"p");
        assert_eq!(out["info"]["labels"].0, b"app=\"web\"\n");
        assert_eq!(out["info"]["mem"].0, b"64");
        assert_eq!(out["info"]["cpu"].0, b"250");
        assert!(out["maybe"].is_empty());
        assert!(!out.contains_key("scratch"));
        let missing =
            json!({"spec": {"volumes": [{"name": "x", "secret": {"secretName": "nope"}}]}});
        assert_eq!(
            render(&missing, &sources()).unwrap_err(),
            "secret \"nope\" not found"
        );
    }

    #[test]
    fn fs_group_owns_the_files_and_can_read_them() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("secret");
        let mut files = Files::new();
        files.insert("key/pem".into(), (b"x".to_vec(), 0o400));
        // Root may give files any group; others only their own.
        let gid = if rustix::process::geteuid().is_root() {
            4321
        } else {
            rustix::process::getegid().as_raw()
        };
        write_atomic(&v, &files, Some(gid)).unwrap();
        let meta = std::fs::metadata(v.join("key/pem")).unwrap();
        assert_eq!(meta.gid(), gid);
        assert_eq!(meta.mode() & 0o777, 0o440);
        let d = std::fs::metadata(v.join("..data/key")).unwrap();
        assert_eq!((d.gid(), d.mode() & 0o2000), (gid, 0o2000));
    }

    #[test]
    fn updates_swap_atomically_and_drop_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("cfg");
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("b".into(), (b"2".to_vec(), 0o644));
        write_atomic(&v, &files, None).unwrap();
        assert_eq!(std::fs::read(v.join("a")).unwrap(), b"1");
        let first = std::fs::read_link(v.join("..data")).unwrap();
        write_atomic(&v, &files, None).unwrap();
        assert_eq!(
            std::fs::read_link(v.join("..data")).unwrap(),
            first,
            "no change, no swap"
        );
        files.insert("a".into(), (b"updated".to_vec(), 0o644));
        files.remove("b");
        write_atomic(&v, &files, None).unwrap();
        assert_eq!(std::fs::read(v.join("a")).unwrap(), b"updated");
        assert!(!v.join("b").exists());
        assert!(!v.join(&first).exists(), "the old generation is removed");
        assert_eq!(
            std::fs::read_link(v.join("a")).unwrap(),
            Path::new("..data/a")
        );
    }
}
