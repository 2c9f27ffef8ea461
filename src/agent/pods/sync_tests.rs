//! The pod worker's whole sync ([`super::sync::sync`]) over the fake
//! runtime and the fake API: no root, no shims, no API server, and paused
//! time, so each test runs in milliseconds. The pod is fed the status the
//! worker posted before each sync, as the API server would.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::fake::{Call, FakeApi, FakeRuntime};
use super::sync::sync;
use super::{Kubelet, WorkerState};

const UID: &str = "u-1";
const IMAGE: &str = "busybox:1.36";

/// One node with one pod on it.
struct Node {
    k: Arc<Kubelet>,
    rt: FakeRuntime,
    api: FakeApi,
    state: WorkerState,
    pod: Value,
    _dir: tempfile::TempDir,
}

/// A kubelet over `rt` and `api` whose directories are in `dir`, with
/// [`IMAGE`] in its image store (so nothing is pulled).
fn kubelet(rt: &FakeRuntime, api: &FakeApi, dir: &std::path::Path) -> Kubelet {
    use crate::runtime::image::{Image, ImageRef, ImageStore, Puller};
    let images = Arc::new(ImageStore::open(&dir.join("images")).unwrap());
    let (config, size) = images.ingest(&b"{\"config\":{}}"[..], None).unwrap();
    images
        .put(Image {
            reference: ImageRef::parse(IMAGE).unwrap().to_string(),
            manifest_digest: "sha256:0".into(),
            config_digest: config,
            layers: Vec::new(),
            size,
            stored: String::new(),
        })
        .unwrap();
    // Nothing listens there: a sync that reads from the API fails.
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    // No service proxy: a closed channel, so nobody waits for services.
    let (_, services) = tokio::sync::watch::channel(Default::default());
    Kubelet {
        client,
        node: "node-1".into(),
        node_ip: "192.168.1.10".into(),
        data_dir: dir.join("data"),
        run_dir: dir.join("run"),
        log_dir: dir.join("log"),
        cgroup_root: "orch".into(),
        puller: Puller::new(images.clone(), Default::default()),
        images,
        pulls: Default::default(),
        cluster_dns: "10.43.0.10".into(),
        cluster_domain: "cluster.local".into(),
        resolv_conf: dir.join("resolv.conf"),
        log_limits: Default::default(),
        starts: Arc::new(tokio::sync::Semaphore::new(2)),
        host_ports: tokio::sync::watch::Sender::new(Default::default()),
        capacity: (2000, 4 << 30),
        cgroup_v1: None,
        services,
        runtime: Arc::new(rt.clone()),
        api: Arc::new(api.clone()),
    }
}

/// A pod of `restartPolicy: policy` with these init and app containers
/// (specs without an image get [`IMAGE`]).
fn pod(policy: &str, inits: Value, apps: Value) -> Value {
    let with_image = |cs: Value| -> Value {
        let mut cs = cs;
        for c in cs.as_array_mut().into_iter().flatten() {
            c["image"] = json!(IMAGE);
        }
        cs
    };
    json!({"metadata": {"name": "web", "namespace": "shop", "uid": UID},
        "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 30,
            "initContainers": with_image(inits), "containers": with_image(apps)}})
}

fn named(names: &[&str]) -> Value {
    names.iter().map(|n| json!({"name": n})).collect()
}

impl Node {
    fn new(pod: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (rt, api) = (FakeRuntime::default().with_network(), FakeApi::default());
        Node {
            k: Arc::new(kubelet(&rt, &api, dir.path())),
            rt,
            api,
            state: WorkerState::default(),
            pod,
            _dir: dir,
        }
    }

    /// One sync, then what the worker's tasks (probes, stops) do at once;
    /// the pod's status as it is now.
    async fn sync(&mut self) -> Value {
        sync(&self.k, &self.pod, &mut self.state).await.unwrap();
        settle().await;
        if let Some(s) = self.api.with(|p| p.statuses.last().cloned()) {
            self.pod["status"] = s;
        }
        self.pod["status"].clone()
    }

    /// The containers created so far, in order.
    fn created(&self) -> Vec<String> {
        self.rt
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Create(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Instance `id` exits with `code`.
    fn exit(&self, id: &str, code: i32) {
        self.rt.exit(UID, id, code);
    }
}

/// Let spawned tasks run (time is paused: this takes no time).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// The status of container `name` (an init container's too).
fn container<'a>(status: &'a Value, name: &str) -> &'a Value {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|l| status[l].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no status for {name}: {status}"))
}

/// Condition `kind`: its status and reason.
fn condition(status: &Value, kind: &str) -> (String, Option<String>) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap();
    let reason = c["reason"].as_str().map(str::to_owned);
    (c["status"].as_str().unwrap().to_owned(), reason)
}

#[tokio::test(start_paused = true)]
async fn a_first_sync_sets_up_the_sandbox_then_starts_the_container() {
    let mut n = Node::new(pod("Always", json!([]), named(&["app"])));
    let status = n.sync().await;
    let calls = n.rt.calls();
    // The pod's mounts and cgroup before its shim, its shim before its
    // container; no instance before the last two to remove yet.
    assert_eq!(
        calls,
        [
            Call::MountTmpfs("shm".into()),
            Call::SetPodLimits(UID.into()),
            Call::StartSandbox(UID.into()),
            Call::RemoveBundle("app.0".into()),
            Call::Create("app.0".into()),
        ]
    );
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["podIP"], "10.42.0.7");
    let app = container(&status, "app");
    assert_eq!(app["containerID"], format!("orch://{UID}/app.0"));
    assert!(app["state"]["running"].is_object(), "{app}");
    assert_eq!(app["restartCount"], 0);
    // No probe: ready once running.
    assert_eq!(condition(&status, "Ready"), ("True".into(), None));
    assert_eq!(n.api.events("Started"), ["Started container app"]);
    // The bundle is written where the runtime is told to find it.
    let bundle = n.k.data_dir.join(format!("pods/{UID}/containers/app.0"));
    assert!(bundle.join("config.json").is_file());
    // Nothing changed: the next sync posts nothing.
    n.sync().await;
    assert_eq!(n.api.with(|p| p.statuses.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_policy_decides_whether_an_exited_container_restarts() {
    // policy, exit code → restarted, phase.
    for (policy, code, restarted, phase) in [
        ("Always", 0, true, "Running"),
        ("Always", 1, true, "Running"),
        ("OnFailure", 0, false, "Succeeded"),
        ("OnFailure", 1, true, "Running"),
        ("Never", 0, false, "Succeeded"),
        ("Never", 1, false, "Failed"),
    ] {
        let case = format!("{policy} after exit {code}");
        let mut n = Node::new(pod(policy, json!([]), named(&["app"])));
        n.sync().await;
        n.exit("app.0", code);
        let status = n.sync().await;
        let want: &[&str] = if restarted {
            &["app.0", "app.1"]
        } else {
            &["app.0"]
        };
        assert_eq!(n.created(), want, "{case}");
        assert_eq!(status["phase"], phase, "{case}");
        let app = container(&status, "app");
        if restarted {
            // The first exit restarts at once; the exit is the last state.
            assert_eq!(app["restartCount"], 1, "{case}");
            assert!(app["state"]["running"].is_object(), "{case}: {app}");
            assert_eq!(app["lastState"]["terminated"]["exitCode"], code, "{case}");
        } else {
            let reason = if code == 0 { "Completed" } else { "Error" };
            assert_eq!(app["state"]["terminated"]["reason"], reason, "{case}");
            assert_eq!(app["restartCount"], 0, "{case}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_ten_seconds_doubling_to_five_minutes() {
    let mut n = Node::new(pod("Always", json!([]), named(&["app"])));
    n.sync().await;
    n.exit("app.0", 1);
    n.sync().await;
    assert_eq!(
        n.created(),
        ["app.0", "app.1"],
        "the first exit restarts at once"
    );
    let mut waits = Vec::new();
    for restart in 1..=7u32 {
        n.exit(&format!("app.{restart}"), 1);
        let status = n.sync().await;
        let app = container(&status, "app");
        assert_eq!(
            app["state"]["waiting"]["reason"], "CrashLoopBackOff",
            "{app}"
        );
        assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(status["phase"], "Running");
        let message = app["state"]["waiting"]["message"].as_str().unwrap();
        let wait: u64 = message
            .strip_prefix("back-off ")
            .and_then(|m| m.split_once('s'))
            .and_then(|(s, _)| s.parse().ok())
            .unwrap_or_else(|| panic!("{message}"));
        waits.push(wait);
        // Not a moment before the back-off is over.
        tokio::time::advance(Duration::from_secs(wait) - Duration::from_millis(1)).await;
        n.sync().await;
        assert_eq!(n.created().len() as u32, restart + 1, "restarted early");
        tokio::time::advance(Duration::from_millis(1)).await;
        let status = n.sync().await;
        assert_eq!(n.created().last().unwrap(), &format!("app.{}", restart + 1));
        assert_eq!(container(&status, "app")["restartCount"], restart + 1);
    }
    assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(
        n.api.events("BackOff").len(),
        7,
        "one BackOff event per wait"
    );
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_one_at_a_time_before_the_app_containers() {
    let mut n = Node::new(pod("Always", named(&["migrate", "seed"]), named(&["app"])));
    let status = n.sync().await;
    assert_eq!(n.created(), ["migrate.0"]);
    assert_eq!(status["phase"], "Pending");
    assert_eq!(
        condition(&status, "Initialized"),
        ("False".into(), Some("ContainersNotInitialized".into()))
    );
    // The kubelet's default waiting state in a pod with init containers.
    for waits in ["seed", "app"] {
        assert_eq!(
            container(&status, waits)["state"]["waiting"]["reason"],
            "PodInitializing",
            "{waits}"
        );
    }
    n.sync().await;
    assert_eq!(n.created(), ["migrate.0"], "the next waits for the exit");
    n.exit("migrate.0", 0);
    n.sync().await;
    assert_eq!(n.created(), ["migrate.0", "seed.0"]);
    n.exit("seed.0", 0);
    let status = n.sync().await;
    assert_eq!(n.created(), ["migrate.0", "seed.0", "app.0"]);
    assert_eq!(status["phase"], "Running");
    assert_eq!(condition(&status, "Initialized"), ("True".into(), None));
    assert_eq!(
        container(&status, "seed")["state"]["terminated"]["reason"],
        "Completed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_fails_a_never_pod_and_restarts_otherwise() {
    let mut n = Node::new(pod("Never", named(&["migrate", "seed"]), named(&["app"])));
    n.sync().await;
    n.exit("migrate.0", 3);
    let status = n.sync().await;
    assert_eq!(status["phase"], "Failed");
    assert_eq!(n.created(), ["migrate.0"], "nothing runs after it");
    let migrate = container(&status, "migrate");
    assert_eq!(migrate["state"]["terminated"]["exitCode"], 3);
    assert_eq!(migrate["state"]["terminated"]["reason"], "Error");
    // A failed pod is left alone.
    n.sync().await;
    assert_eq!(n.created(), ["migrate.0"]);

    let mut n = Node::new(pod(
        "OnFailure",
        named(&["migrate", "seed"]),
        named(&["app"]),
    ));
    n.sync().await;
    n.exit("migrate.0", 3);
    let status = n.sync().await;
    assert_eq!(status["phase"], "Pending");
    assert_eq!(n.created(), ["migrate.0", "migrate.1"]);
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_starts_before_the_app_container_and_stops_after_it() {
    let sidecar = json!([{"name": "proxy", "restartPolicy": "Always"}]);
    let mut n = Node::new(pod("Never", sidecar, named(&["job"])));
    n.sync().await;
    assert_eq!(n.created(), ["proxy.0"]);
    let status = n.sync().await;
    // A running sidecar lets the pod go on.
    assert_eq!(n.created(), ["proxy.0", "job.0"]);
    assert_eq!(condition(&status, "Initialized"), ("True".into(), None));
    n.exit("job.0", 0);
    let status = n.sync().await;
    assert_eq!(
        status["phase"], "Running",
        "a stopping sidecar keeps the pod running"
    );
    let kills: Vec<Call> =
        n.rt.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Kill(..)))
            .collect();
    assert_eq!(kills, [Call::Kill("proxy.0".into(), 15)]);
    let status = n.sync().await;
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(
        n.created(),
        ["proxy.0", "job.0"],
        "the sidecar is not restarted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_liveness_probe_restarts_the_container() {
    let app = json!([{"name": "app", "livenessProbe": {"exec": {"command": ["check"]},
        "failureThreshold": 1, "periodSeconds": 5}}]);
    let mut n = Node::new(pod("Always", json!([]), app));
    n.rt.exec_returns("app.0", Err("not healthy".into()), Duration::ZERO);
    n.sync().await; // starts app.0 and its probe
    n.sync().await; // counts the failure: stops app.0
    assert_eq!(
        n.api.events("Unhealthy"),
        ["Liveness probe failed: not healthy"]
    );
    assert_eq!(
        n.api.events("Killing"),
        ["Container app failed liveness probe, will be restarted"]
    );
    assert!(n.rt.calls().contains(&Call::Kill("app.0".into(), 15)));
    let status = n.sync().await;
    assert_eq!(n.created(), ["app.0", "app.1"]);
    let app = container(&status, "app");
    assert_eq!(app["restartCount"], 1);
    assert_eq!(app["lastState"]["terminated"]["exitCode"], 143);
    assert_eq!(app["lastState"]["terminated"]["reason"], "Error");
}

#[tokio::test(start_paused = true)]
async fn the_readiness_probe_decides_the_ready_condition() {
    let app = json!([{"name": "app", "readinessProbe": {"exec": {"command": ["ready"]},
        "failureThreshold": 2, "periodSeconds": 5}}]);
    let mut n = Node::new(pod("Always", json!([]), app));
    let status = n.sync().await;
    // Not ready until a probe has passed.
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), Some("ContainersNotReady".into()))
    );
    let status = n.sync().await;
    assert_eq!(condition(&status, "Ready"), ("True".into(), None));
    assert_eq!(condition(&status, "ContainersReady").0, "True");
    assert_eq!(container(&status, "app")["ready"], true);
    // Failing: ready until the failure threshold is reached.
    n.rt.exec_returns("app.0", Err("busy".into()), Duration::ZERO);
    for (failures, ready) in [(1, "True"), (2, "False")] {
        tokio::time::advance(Duration::from_secs(5)).await;
        n.sync().await; // the probe runs
        let status = n.sync().await; // its result counts
        assert_eq!(condition(&status, "Ready").0, ready, "after {failures}");
    }
    assert!(
        !n.rt.calls().iter().any(|c| matches!(c, Call::Kill(..))),
        "readiness never stops a container"
    );
}

/// A pod of two app containers and two sidecars, all running.
async fn running_with_sidecars() -> Node {
    let sidecars = json!([{"name": "log", "restartPolicy": "Always"},
                          {"name": "mesh", "restartPolicy": "Always"}]);
    let mut n = Node::new(pod("Always", sidecars, named(&["a", "b"])));
    for _ in 0..3 {
        n.sync().await;
    }
    assert_eq!(n.created(), ["log.0", "mesh.0", "a.0", "b.0"]);
    n
}

/// Mark the pod deleted with `grace` seconds and sync it.
async fn delete(n: &mut Node, grace: u64) {
    n.pod["metadata"]["deletionTimestamp"] = json!("2026-12-07T00:00:00Z");
    n.pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    sync(&n.k, &n.pod, &mut n.state).await.unwrap();
}

/// The signals sent, in order (instance, signal).
fn kills(n: &Node) -> Vec<(String, i32)> {
    n.rt.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Kill(id, signal) => Some((id, signal)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_stops_app_containers_then_sidecars_in_reverse() {
    let mut n = running_with_sidecars().await;
    let started = tokio::time::Instant::now();
    delete(&mut n, 20).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no wait when all stop"
    );
    let calls: Vec<Call> =
        n.rt.calls()
            .into_iter()
            .skip_while(|c| !matches!(c, Call::Kill(..)))
            .collect();
    assert_eq!(
        calls,
        [
            Call::Kill("a.0".into(), 15),
            Call::Kill("b.0".into(), 15),
            Call::Kill("mesh.0".into(), 15),
            Call::Kill("log.0".into(), 15),
            Call::RemoveSandbox(UID.into()),
            Call::ReleasePod(UID.into()),
        ]
    );
    assert_eq!(n.api.events("Killing").len(), 4);
    assert_eq!(n.api.with(|p| p.deleted.clone()), [UID]);
    assert!(n.state.torn_down);
    assert!(!n.k.data_dir.join("pods").join(UID).exists());
}

#[tokio::test(start_paused = true)]
async fn a_container_that_ignores_sigterm_is_killed_when_the_grace_period_ends() {
    let mut n = running_with_sidecars().await;
    n.rt.ignore_sigterm("b.0");
    let started = tokio::time::Instant::now();
    delete(&mut n, 20).await;
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    let sent = kills(&n);
    let at = |id: &str, signal| sent.iter().position(|k| *k == (id.to_owned(), signal));
    let (b_kill, mesh_term) = (at("b.0", 9).unwrap(), at("mesh.0", 15).unwrap());
    assert!(b_kill < mesh_term, "sidecars stop after the apps: {sent:?}");
    assert!(at("mesh.0", 15) < at("log.0", 15), "{sent:?}");
    assert_eq!(n.api.with(|p| p.deleted.clone()), [UID]);
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_gets_the_minimum_grace_when_the_apps_used_the_period_up() {
    let mut n = running_with_sidecars().await;
    n.rt.ignore_sigterm("b.0");
    n.rt.ignore_sigterm("mesh.0");
    let started = tokio::time::Instant::now();
    delete(&mut n, 20).await;
    // b takes the 20 s; mesh still gets the kubelet's 2 s between its
    // SIGTERM and its SIGKILL, and log stops after it.
    assert_eq!(started.elapsed(), Duration::from_secs(22));
    let sent = kills(&n);
    let at = |id: &str, signal| sent.iter().position(|k| *k == (id.to_owned(), signal));
    assert!(at("b.0", 9) < at("mesh.0", 15), "{sent:?}");
    assert!(at("mesh.0", 9) < at("log.0", 15), "{sent:?}");
}
