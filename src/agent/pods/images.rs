//! Images for a pod's containers: pulled as `imagePullPolicy` says, one
//! pull shared by the pods that want the same image, and ImagePullBackOff.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use serde_json::Value;

use super::{Kubelet, MAX_BACKOFF, WorkerState, event};
use crate::runtime::image::pull::PullError;
use crate::runtime::image::{Image, ImageRef, PullSecrets};

/// The image's size, or the waiting reason and message.
pub(super) type PullOutcome = Result<u64, (String, String)>;

/// One pull, shared by the pods that want the same image with the same
/// pull secrets.
pub struct PullJob {
    started: tokio::time::Instant,
    /// When it ended and how: `Err((reason, message))`.
    finished: Option<(tokio::time::Instant, PullOutcome)>,
}

/// The pull a container asks for: its image, by reference, and the key
/// pulls are shared by (image and pull secrets).
struct Wanted {
    /// The container's name.
    name: String,
    /// The image as the spec names it.
    image: String,
    reference: ImageRef,
    ns: String,
    secret_names: Vec<String>,
    key: String,
}

/// The container's image, pulled as its `imagePullPolicy` says. `None`
/// while a pull runs or backs off; `state.waiting` then says why.
pub(super) async fn ensure_image(
    k: &Arc<Kubelet>,
    pod: &Value,
    container: &Value,
    restart: u32,
    state: &mut WorkerState,
) -> Option<Image> {
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    let reference = match ImageRef::parse(&image) {
        Ok(r) => r,
        Err(e) => {
            state
                .waiting
                .insert(name, ("InvalidImageName".into(), e.clone()));
            return None;
        }
    };
    let present = k.images.get(&reference.to_string()).ok();
    let policy = container["imagePullPolicy"].as_str().unwrap_or(
        if reference.digest.is_none() && reference.tag.as_deref() == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        },
    );
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let secret_names: Vec<String> = pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    let key = format!("{reference}|{ns}/{}", secret_names.join(","));
    let instance = format!("{name}.{restart}");
    let must_pull = match policy {
        "Never" => {
            if present.is_none() {
                state.waiting.insert(
                    name,
                    (
                        "ErrImageNeverPull".into(),
                        format!(
                            "Container image \"{image}\" is not present with pull policy of Never; import it with `orch image import`"
                        ),
                    ),
                );
            }
            return present;
        }
        "Always" => !state.pulled_for.contains(&instance),
        _ => present.is_none(),
    };
    // A pull this pod asked for reports its outcome (events) first.
    if !must_pull && !state.pulls.contains_key(&key) {
        return present;
    }
    let wanted = Wanted {
        name,
        image,
        reference,
        ns,
        secret_names,
        key,
    };
    if backing_off(k, pod, &wanted, state) {
        return None;
    }
    let Some(asked) = state.pulls.get(&wanted.key).copied() else {
        start_pull(k, pod, wanted, state);
        return None;
    };
    pulled(k, pod, &wanted, &instance, asked, state)
}

/// Is the image's pull backing off (ImagePullBackOff)? Then the container
/// waits, and says so.
fn backing_off(k: &Kubelet, pod: &Value, wanted: &Wanted, state: &mut WorkerState) -> bool {
    let Some((until, _, why)) = state.pull_backoff.get(&wanted.key) else {
        return false;
    };
    if *until <= tokio::time::Instant::now() {
        return false;
    }
    let (name, image) = (&wanted.name, &wanted.image);
    if state
        .waiting
        .get(name)
        .is_none_or(|(r, _)| r != "ImagePullBackOff")
    {
        event(
            k,
            pod,
            "Normal",
            "BackOff",
            format!("Back-off pulling image \"{image}\""),
        );
    }
    let message = format!("Back-off pulling image \"{image}\": ErrImagePull: {why}");
    state
        .waiting
        .insert(name.clone(), ("ImagePullBackOff".into(), message));
    true
}

/// Start a pull, or join the one running.
fn start_pull(k: &Arc<Kubelet>, pod: &Value, wanted: Wanted, state: &mut WorkerState) {
    let now = tokio::time::Instant::now();
    let Wanted {
        name,
        image,
        reference,
        ns,
        secret_names,
        key,
    } = wanted;
    state.pulls.insert(key.clone(), now);
    let mut jobs = k.pulls.lock().expect("pulls lock");
    jobs.retain(|_, j| {
        j.finished
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() < Duration::from_secs(600))
    });
    if jobs.get(&key).is_none_or(|j| j.finished.is_some()) {
        jobs.insert(
            key.clone(),
            PullJob {
                started: now,
                finished: None,
            },
        );
        event(
            k,
            pod,
            "Normal",
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        let k = k.clone();
        tokio::spawn(async move {
            let result = pull(&k, &reference, &ns, &secret_names).await;
            if let Some(job) = k.pulls.lock().expect("pulls lock").get_mut(&key) {
                job.finished = Some((tokio::time::Instant::now(), result));
            }
        });
    }
    state.waiting.entry(name).or_insert_with(|| {
        (
            super::status::default_waiting_reason(pod).into(),
            String::new(),
        )
    });
}

/// The outcome of the pull this pod asked for at `asked`, once it ended:
/// the image, or `None` and the pull's back-off.
fn pulled(
    k: &Kubelet,
    pod: &Value,
    wanted: &Wanted,
    instance: &str,
    asked: tokio::time::Instant,
    state: &mut WorkerState,
) -> Option<Image> {
    let (name, image, key) = (&wanted.name, &wanted.image, &wanted.key);
    let (started, finished) = {
        let jobs = k.pulls.lock().expect("pulls lock");
        match jobs.get(key) {
            Some(j) => (j.started, j.finished.clone()),
            None => (
                asked,
                Some((
                    asked,
                    Err(("ErrImagePull".into(), "the pull was lost; retrying".into())),
                )),
            ),
        }
    };
    let (ended, result) = finished.filter(|(t, _)| *t >= asked)?;
    state.pulls.remove(key);
    match result {
        Ok(size) => {
            state.pull_backoff.remove(key);
            state.pulled_for.insert(instance.to_owned());
            let took = ended.duration_since(started).as_secs_f64();
            let waited = ended.duration_since(asked.min(started)).as_secs_f64();
            event(
                k,
                pod,
                "Normal",
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {took:.3}s ({waited:.3}s including waiting). Image size: {size} bytes."
                ),
            );
            state.waiting.remove(name);
            k.images.get(&wanted.reference.to_string()).ok()
        }
        Err((reason, message)) => {
            let delay = state
                .pull_backoff
                .get(key)
                .map_or(Duration::from_secs(10), |(_, d, _)| {
                    (*d * 2).min(MAX_BACKOFF)
                });
            let now = tokio::time::Instant::now();
            state
                .pull_backoff
                .insert(key.clone(), (now + delay, delay, message.clone()));
            event(
                k,
                pod,
                "Warning",
                "Failed",
                format!("Failed to pull image \"{image}\": {message}"),
            );
            state.waiting.insert(name.clone(), (reason, message));
            None
        }
    }
}

/// Pull `reference` with the pod's pull secrets; the image's size, or
/// the waiting reason and message.
pub(super) async fn pull(
    k: &Kubelet,
    reference: &ImageRef,
    ns: &str,
    secret_names: &[String],
) -> Result<u64, (String, String)> {
    let mut secrets = PullSecrets::default();
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(k.client.clone(), ns);
    for s in secret_names {
        match api.get(s).await {
            Ok(secret) => {
                for key in [".dockerconfigjson", ".dockercfg"] {
                    if let Some(data) = secret.data.as_ref().and_then(|d| d.get(key)) {
                        secrets.add(&data.0);
                    }
                }
            }
            // Like the kubelet: pull without it and say so.
            Err(e) => tracing::warn!(secret = %s, %ns, %e, "cannot read an image pull secret"),
        }
    }
    tracing::info!(image = %reference, "pulling");
    match k.puller.pull(reference, &secrets, &|_| {}).await {
        Ok(image) => Ok(image.size),
        Err(e) => {
            let reason = "ErrImagePull".to_owned();
            let message = match &e {
                PullError::NotFound(m) => format!("{m} (not found: check the name and tag)"),
                PullError::Unauthorized(m) => format!(
                    "{m} (check the pod's imagePullSecrets or the credentials in registries.yaml)"
                ),
                PullError::Failed(m) => m.clone(),
            };
            tracing::warn!(image = %reference, error = %message, "pull failed");
            Err((reason, message))
        }
    }
}
