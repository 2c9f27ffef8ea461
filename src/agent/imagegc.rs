//! Image garbage collection: when the image store's filesystem is fuller
//! than the high threshold, remove images no pod on this node uses, oldest
//! first, until usage is at the low threshold (the kubelet's
//! `imageGCHighThresholdPercent` / `imageGCLowThresholdPercent`). Images
//! younger than the minimum age are kept: a pull's image is not in use
//! until its container starts.

use std::collections::HashSet;
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
    candidates.sort_by(|a, b| a.stored.cmp(&b.stored));
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
    loop {
        match in_use(&client, &node).await {
            Ok(used) => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || collect(&store, &used, policy)).await {
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
        assert_eq!(collect(&store, &in_use, everything).unwrap(), ["old"]);
        let off = Policy {
            high_percent: 100,
            ..everything
        };
        assert!(collect(&store, &in_use, off).unwrap().is_empty());
        let names: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|i| i.reference)
            .collect();
        assert_eq!(names, ["new", "used"]);
    }
}
