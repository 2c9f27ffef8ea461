//! Stopping containers and removing a pod: preStop hooks within the grace
//! period, SIGTERM then SIGKILL, app containers before sidecars, and the
//! clean-up of everything the pod left on the node.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::plan::stop_waves;
use super::runtime::PodRuntime;
use super::start::{Hook, pod_address, run_hook};
use super::{Kubelet, blocking, event};

/// The pod's `terminationGracePeriodSeconds` (30 s when not set).
pub(super) fn pod_grace(pod: &Value) -> u64 {
    pod.pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30)
}

/// Stop a container instance so it restarts (or a sidecar at the pod's
/// end), in the background, with `grace` seconds ([`kill_container`]).
pub(super) async fn stop_instance(
    k: &Kubelet,
    uid: &str,
    id: &str,
    container: &Value,
    pod_ip: Option<String>,
    grace: u64,
) {
    let rt = k.runtime.clone();
    let (uid, id, container) = (uid.to_owned(), id.to_owned(), container.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    tokio::spawn(async move {
        let hook = Hook {
            uid: &uid,
            id: &id,
            hook: &Value::Null,
            container: &container,
            pod_ip: pod_ip.as_deref(),
        };
        kill_container(&*rt, &hook, deadline).await
    });
}

/// The kubelet's killContainer for instance `target.id`: its preStop hook
/// within `deadline`, SIGTERM, then SIGKILL at `deadline` — or
/// [`MIN_STOP_GRACE`] after the SIGTERM, when less was left (a hook or,
/// for sidecars, the app containers took the time up). Why the hook
/// failed, if it did. (`target.hook` is not used: the hook is the
/// container's preStop.)
pub(super) async fn kill_container(
    rt: &dyn PodRuntime,
    target: &Hook<'_>,
    deadline: tokio::time::Instant,
) -> Option<String> {
    let (uid, id) = (target.uid, target.id);
    let mut kill_at = deadline;
    let mut hook_failed = None;
    if let Some(hook) = target.container.pointer("/lifecycle/preStop") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let pre_stop = Hook { hook, ..*target };
        hook_failed = match tokio::time::timeout(left, run_hook(rt, &pre_stop, left)).await {
            Ok(r) => r.err(),
            Err(_) => Some(format!(
                "hook of {id} did not finish within the grace period"
            )),
        };
    }
    // Whatever the hook or earlier containers left of the grace period,
    // SIGTERM comes at least this long before SIGKILL.
    kill_at = kill_at.max(tokio::time::Instant::now() + MIN_STOP_GRACE);
    let _ = rt.kill(uid, id, 15).await;
    while tokio::time::Instant::now() < kill_at {
        match rt.containers(uid).await {
            Ok(containers)
                if containers
                    .iter()
                    .any(|x| x.id == id && x.status == "running") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return hook_failed,
        }
    }
    let _ = rt.kill(uid, id, 9).await;
    hook_failed
}

/// Stop the pod's containers: preStop hooks and SIGTERM within the grace
/// period, then SIGKILL; the app containers first, then the sidecars
/// ([`stop_waves`]).
pub(super) async fn terminate(k: &Kubelet, pod: &Value) {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let Ok(containers) = k.runtime.containers(uid).await else {
        return;
    };
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(30);
    // One budget for the whole pod: preStop hooks and SIGTERM share it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    let running: Vec<&str> = containers
        .iter()
        .filter(|c| c.status == "running")
        .map(|c| c.id.as_str())
        .collect();
    for wave in stop_waves(pod, &running) {
        stop_containers(k, pod, wave, deadline).await;
    }
}

/// Stop the container instances `containers` (id, spec) at once, each by
/// [`kill_container`], with their events.
async fn stop_containers(
    k: &Kubelet,
    pod: &Value,
    containers: Vec<(String, Value)>,
    deadline: tokio::time::Instant,
) {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let pod_ip = pod_address(k, pod, None);
    let pod_ip = pod_ip.as_deref();
    let stops = containers.into_iter().map(|(id, c)| async move {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        event(
            k,
            pod,
            "Normal",
            "Killing",
            format!("Stopping container {name}"),
        );
        let target = Hook {
            uid,
            id: &id,
            hook: &Value::Null,
            container: &c,
            pod_ip,
        };
        if let Some(message) = kill_container(&*k.runtime, &target, deadline).await {
            event(
                k,
                pod,
                "Warning",
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            );
        }
    });
    futures::future::join_all(stops).await;
}

/// What a container gets between SIGTERM and SIGKILL at least, even when
/// its preStop hook or the containers stopped before it used the grace
/// period up (the kubelet's `minimumGracePeriodInSeconds`).
pub(super) const MIN_STOP_GRACE: Duration = Duration::from_secs(2);

/// Remove the logs (`<n>.log` and its rotated `<n>.log.<time>`) of the
/// instances before the last two, `restart` being the newest.
pub(super) fn remove_old_logs(dir: &Path, restart: u32) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let instance = name
            .to_str()
            .and_then(|n| n.split_once(".log"))
            .filter(|(_, rest)| rest.is_empty() || rest.starts_with('.'))
            .and_then(|(n, _)| n.parse::<u32>().ok());
        if instance.is_some_and(|n| n + 2 <= restart) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The pod's log directory (`<ns>_<name>_<uid>`: names have no `_`).
pub(super) fn pod_log_dirs(log_dir: &Path, uid: &str) -> Vec<PathBuf> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| e.path())
        .collect()
}

/// Remove everything of the pod on this node: containers, shim, network,
/// root filesystems, mounts, cgroup, directories and logs.
pub(super) async fn teardown(k: &Kubelet, uid: &str) {
    k.runtime.remove_sandbox(uid).await;
    let (pod_dir, shim_dir) = (k.pod_dir(uid), k.shim_dir(uid));
    let log_dir = k.log_dir.clone();
    let uid = uid.to_owned();
    k.host_ports
        .send_if_modified(|all| Arc::make_mut(all).remove(&uid).is_some());
    k.runtime.release_pod(&uid).await;
    blocking(move || {
        let _ = std::fs::remove_dir_all(&pod_dir);
        let _ = std::fs::remove_dir_all(&shim_dir);
        // Its logs go with it, as the kubelet removes a deleted pod's.
        for dir in pod_log_dirs(&log_dir, &uid) {
            let _ = std::fs::remove_dir_all(dir);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_last_two_instances_keep_their_logs() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "0.log",
            "1.log",
            "1.log.20261206-120000.5",
            "2.log",
            "3.log",
            "3.log.20261206-120001.5",
            "10.log",
            "notes",
            "x.log",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        remove_old_logs(dir.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "10.log",
                "2.log",
                "3.log",
                "3.log.20261206-120001.5",
                "notes",
                "x.log"
            ]
        );
        let logs = tempfile::tempdir().unwrap();
        for d in ["shop_web_u-1", "shop_web_u-12", "default_api_u-1"] {
            std::fs::create_dir(logs.path().join(d)).unwrap();
        }
        let mut found = pod_log_dirs(logs.path(), "u-1");
        found.sort();
        assert_eq!(
            found,
            [
                logs.path().join("default_api_u-1"),
                logs.path().join("shop_web_u-1")
            ]
        );
    }

    use super::super::fake::{Call, FakeRuntime};
    use super::super::runtime::{CreateContainer, SandboxSpec};

    async fn running(ids: &[&str]) -> FakeRuntime {
        let rt = FakeRuntime::default();
        rt.start_sandbox("u-1", &SandboxSpec::default())
            .await
            .unwrap();
        for id in ids {
            let c = CreateContainer {
                id: (*id).to_owned(),
                bundle: "b".into(),
                log: "l".into(),
                layers: Vec::new(),
            };
            rt.create_container("u-1", c).await.unwrap();
        }
        rt
    }

    fn hook<'a>(container: &'a Value) -> Hook<'a> {
        Hook {
            uid: "u-1",
            id: "web.0",
            hook: &Value::Null,
            container,
            pod_ip: None,
        }
    }

    fn signals(rt: &FakeRuntime) -> Vec<Call> {
        rt.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Kill(..) | Call::Exec(..)))
            .collect()
    }

    #[tokio::test]
    async fn a_container_that_stops_on_sigterm_is_not_killed() {
        let rt = running(&["web.0"]).await;
        let c = json!({"name": "web"});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let started = tokio::time::Instant::now();
        assert_eq!(kill_container(&rt, &hook(&c), deadline).await, None);
        assert_eq!(signals(&rt), [Call::Kill("web.0".into(), 15)]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no wait for the grace period"
        );
        assert_eq!(rt.instances("u-1")[0].exit_code, Some(143));
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_ignores_sigterm_is_killed_at_the_deadline() {
        let rt = running(&["web.0"]).await;
        rt.ignore_sigterm("web.0");
        let c = json!({"name": "web"});
        let grace = Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        kill_container(&rt, &hook(&c), started + grace).await;
        assert!(started.elapsed() >= grace, "SIGKILL only at the deadline");
        assert_eq!(
            signals(&rt),
            [
                Call::Kill("web.0".into(), 15),
                Call::Kill("web.0".into(), 9)
            ]
        );
        assert_eq!(rt.instances("u-1")[0].exit_code, Some(137));
    }

    #[tokio::test]
    async fn pre_stop_runs_before_sigterm_and_its_failure_is_reported() {
        let rt = running(&["web.0"]).await;
        let c = json!({"name": "web", "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}});
        rt.exec_returns("web.0", Err("drain failed".into()), Duration::ZERO);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let failed = kill_container(&rt, &hook(&c), deadline).await;
        assert_eq!(
            failed.as_deref(),
            Some("hook of web.0 failed: drain failed")
        );
        assert_eq!(
            signals(&rt),
            [
                Call::Exec("web.0".into(), vec!["drain".into()]),
                Call::Kill("web.0".into(), 15)
            ]
        );
    }

    #[tokio::test]
    async fn a_pre_stop_hook_that_overruns_the_grace_period_is_cut_short() {
        let rt = running(&["web.0"]).await;
        rt.ignore_sigterm("web.0");
        let c = json!({"name": "web", "lifecycle": {"preStop": {"exec": {"command": ["sleep"]}}}});
        rt.exec_returns("web.0", Ok(()), Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let failed = kill_container(&rt, &hook(&c), started + Duration::from_millis(200)).await;
        assert_eq!(
            failed.as_deref(),
            Some("hook of web.0 did not finish within the grace period")
        );
        // SIGTERM when the hook was cut short, SIGKILL the minimum grace later.
        let took = started.elapsed();
        assert!(took >= MIN_STOP_GRACE, "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert_eq!(
            signals(&rt),
            [
                Call::Exec("web.0".into(), vec!["sleep".into()]),
                Call::Kill("web.0".into(), 15),
                Call::Kill("web.0".into(), 9)
            ]
        );
    }
}
