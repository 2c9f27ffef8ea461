//! Image garbage collection: when the image store's filesystem is fuller
//! than the high threshold, remove images no pod on this node uses, least
//! recently used first, until usage is at the low threshold (the kubelet's
//! `imageGCHighThresholdPercent` / `imageGCLowThresholdPercent`). Images
//! younger than the minimum age are kept: a pull's image is not in use
//! until its container starts. When an image was last used is seen at
//! each check, as the kubelet sees it, and kept in `<store>/last-used.json`
//! (so a CronJob's image, idle between runs, outlives one pulled later and
//! never used again).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::runtime::image::{ImageRef, ImageStore};

/// How often usage is checked (the kubelet's period).
const PERIOD: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Percent of the filesystem in use (capacity minus what is available
    /// to us, as the kubelet counts) above which collection starts.
    pub high_percent: u8,
    pub low_percent: u8,
    pub minimum_age: Duration,
}

/// Percent of the filesystem holding `store` in use, and its size.
fn usage(store: &ImageStore) -> std::io::Result<(f64, u64)> {
    let st = rustix::fs::statvfs(store.root()).map_err(std::io::Error::from)?;
    let capacity = st.f_blocks * st.f_frsize;
    let available = st.f_bavail * st.f_frsize;
    if capacity == 0 {
        return Ok((0.0, 0));
    }
    Ok((100.0 - available as f64 * 100.0 / capacity as f64, capacity))
}

/// One collection: the references removed.
///
/// # Errors
/// The store or the filesystem cannot be read.
pub fn collect(
    store: &ImageStore,
    in_use: &HashSet<String>,
    last_used: &LastUsed,
    policy: Policy,
) -> Result<Vec<String>, String> {
    let (used, capacity) = usage(store).map_err(|e| format!("{}: {e}", store.root().display()))?;
    // 100 turns collection off; at 0 every unused image goes.
    if policy.high_percent >= 100
        || (policy.high_percent > 0 && used <= f64::from(policy.high_percent))
    {
        return Ok(Vec::new());
    }
    let mut to_free = if policy.low_percent == 0 {
        i128::MAX
    } else {
        ((used - f64::from(policy.low_percent)) / 100.0 * capacity as f64) as i128
    };
    let _lock = store.lock().map_err(|e| e.to_string())?;
    let mut candidates: Vec<_> = store
        .images()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|i| !in_use.contains(&i.reference))
        .filter(|i| {
            // An unreadable time counts as new: better kept than lost.
            i.stored.parse::<jiff::Timestamp>().is_ok_and(|t| {
                jiff::Timestamp::now().duration_since(t).unsigned_abs() >= policy.minimum_age
            })
        })
        .collect();
    let order = removal_order(&candidates, last_used);
    candidates.sort_by_key(|i| order.iter().position(|r| *r == i.reference));
    let mut removed = Vec::new();
    for image in candidates {
        if to_free <= 0 {
            break;
        }
        store
            .remove(&image.reference, &HashSet::new())
            .map_err(|e| e.to_string())?;
        to_free -= i128::from(image.size);
        removed.push(image.reference);
    }
    Ok(removed)
}

/// When each image was last seen in use (reference → time).
pub type LastUsed = BTreeMap<String, jiff::Timestamp>;

/// Which unused images go first: the least recently used (an image never
/// seen in use counts from when it was stored), oldest first.
fn removal_order(candidates: &[crate::runtime::image::Image], last_used: &LastUsed) -> Vec<String> {
    let mut ranked: Vec<(jiff::Timestamp, &str)> = candidates
        .iter()
        .map(|i| {
            let stored = i
                .stored
                .parse::<jiff::Timestamp>()
                .unwrap_or(jiff::Timestamp::MAX);
            let used = last_used.get(&i.reference).copied();
            (used.map_or(stored, |u| u.max(stored)), i.reference.as_str())
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, r)| r.to_owned()).collect()
}

fn last_used_path(store: &ImageStore) -> std::path::PathBuf {
    store.root().join("last-used.json")
}

/// What `<store>/last-used.json` says (nothing when it is missing or
/// unreadable: every image then counts from when it was stored).
fn read_last_used(store: &ImageStore) -> LastUsed {
    std::fs::read(last_used_path(store))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Mark `in_use` as used now, forget images no longer stored, and save.
fn note_use(store: &ImageStore, last_used: &mut LastUsed, in_use: &HashSet<String>) {
    let now = jiff::Timestamp::now();
    for r in in_use {
        last_used.insert(r.clone(), now);
    }
    if let Ok(images) = store.images() {
        let stored: HashSet<String> = images.into_iter().map(|i| i.reference).collect();
        last_used.retain(|r, _| stored.contains(r));
    }
    let path = last_used_path(store);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(last_used)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::debug!(error = %e, path = %path.display(), "cannot save when images were last used");
    }
}

/// The images this node's pods use (normalised references).
async fn in_use(client: &kube::Client, node: &str) -> Result<HashSet<String>, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mut out = HashSet::new();
    for pod in list.items {
        let Some(spec) = pod.spec else { continue };
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            if let Some(r) = c.image.as_deref().and_then(|i| ImageRef::parse(i).ok()) {
                out.insert(r.to_string());
            }
        }
    }
    Ok(out)
}

/// Collect at start and then every five minutes.
pub async fn run(client: kube::Client, node: String, store: Arc<ImageStore>, policy: Policy) {
    let mut last_used = read_last_used(&store);
    loop {
        match in_use(&client, &node).await {
            Ok(used) => {
                let store = store.clone();
                let mut seen = std::mem::take(&mut last_used);
                let outcome = tokio::task::spawn_blocking(move || {
                    note_use(&store, &mut seen, &used);
                    let removed = collect(&store, &used, &seen, policy);
                    (removed, seen)
                })
                .await;
                let outcome = outcome.map(|(removed, seen)| {
                    last_used = seen;
                    removed
                });
                match outcome {
                    Ok(Ok(removed)) => {
                        for r in removed {
                            tracing::info!(image = %r, "image garbage-collected");
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "image garbage collection failed"),
                    Err(e) => tracing::warn!(error = %e, "image garbage collection panicked"),
                }
            }
            Err(e) => tracing::debug!(%e, "cannot list pods for image garbage collection"),
        }
        tokio::time::sleep(PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_images_are_kept_and_old_unused_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let image = |name: &str, stored: &str| crate::runtime::image::Image {
            reference: name.into(),
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            config_digest: format!("sha256:{}", "b".repeat(64)),
            layers: Vec::new(),
            size: 1,
            stored: stored.into(),
        };
        let now = jiff::Timestamp::now();
        let old = (now - jiff::SignedDuration::from_secs(3600))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let new = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        store.put(image("old", &old)).unwrap();
        store.put(image("used", &old)).unwrap();
        store.put(image("new", &new)).unwrap();
        let in_use: HashSet<String> = ["used".to_owned()].into();
        let everything = Policy {
            high_percent: 0,
            low_percent: 0,
            minimum_age: Duration::from_secs(120),
        };
        assert_eq!(
            collect(&store, &in_use, &LastUsed::new(), everything).unwrap(),
            ["old"]
        );
        let off = Policy {
            high_percent: 100,
            ..everything
        };
        assert!(
            collect(&store, &in_use, &LastUsed::new(), off)
                .unwrap()
                .is_empty()
        );
        let names: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|i| i.reference)
            .collect();
        assert_eq!(names, ["new", "used"]);
    }

    #[test]
    fn the_least_recently_used_go_first() {
        let image = |name: &str, stored: &str| crate::runtime::image::Image {
            reference: name.into(),
            manifest_digest: String::new(),
            config_digest: String::new(),
            layers: Vec::new(),
            size: 1,
            stored: stored.into(),
        };
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let images = [
            // Pulled first, but a CronJob ran it an hour ago.
            image("cron", "2026-12-01T00:00:00Z"),
            image("pulled-once", "2026-12-05T00:00:00Z"),
            image("older-and-idle", "2026-12-02T00:00:00Z"),
        ];
        let last_used: LastUsed = [
            ("cron".to_owned(), t("2026-12-06T11:00:00Z")),
            ("older-and-idle".to_owned(), t("2026-12-03T00:00:00Z")),
        ]
        .into();
        assert_eq!(
            removal_order(&images, &last_used),
            ["older-and-idle", "pulled-once", "cron"]
        );
        // Nothing seen in use: by when they were stored.
        assert_eq!(
            removal_order(&images, &LastUsed::new()),
            ["cron", "older-and-idle", "pulled-once"]
        );
    }

    #[test]
    fn uses_are_saved_and_forgotten_with_their_images() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store
            .put(crate::runtime::image::Image {
                reference: "kept".into(),
                manifest_digest: String::new(),
                config_digest: String::new(),
                layers: Vec::new(),
                size: 1,
                stored: "2026-12-01T00:00:00Z".into(),
            })
            .unwrap();
        let mut last_used: LastUsed = [(
            "gone".to_owned(),
            "2026-12-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap(),
        )]
        .into();
        note_use(&store, &mut last_used, &["kept".to_owned()].into());
        let saved = read_last_used(&store);
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["kept"]);
        assert_eq!(saved, last_used);
    }
}
