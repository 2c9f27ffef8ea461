//! The pod's status: phase, conditions and container states from what the
//! shim reports, including instances the shim lost.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::plan::restart_policy;
use super::probes::Probes;
use super::start::pod_ip;
use super::{Kubelet, WorkerState, now};
use crate::runtime::image::ImageRef;
use crate::runtime::shim::ContainerState;

/// The newest instance of each container the shim has, by container name.
pub(crate) fn latest(states: &[ContainerState]) -> HashMap<String, (u32, ContainerState)> {
    let mut out: HashMap<String, (u32, ContainerState)> = HashMap::new();
    for s in states {
        let Some((name, n)) = s.id.rsplit_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        if out.get(name).is_none_or(|(have, _)| n > *have) {
            out.insert(name.to_owned(), (n, s.clone()));
        }
    }
    out
}

/// Containers the pod's status says ran (a `containerID`) of which the
/// shim knows no instance at all: their shim died, or the node restarted
/// and took the runtime's state with it. As the kubelet does when the
/// runtime lost a container, each counts as an ended instance: with the
/// exit the status recorded, or else exit code 255, reason `Unknown`.
/// So restart counts go on, and a container that must not run twice
/// (`restartPolicy: Never`, a finished init container) does not.
pub(super) fn lost_instances(pod: &Value, known: &[ContainerState]) -> Vec<ContainerState> {
    let mut out = Vec::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        for s in pod["status"][list].as_array().into_iter().flatten() {
            let (Some(name), Some(cid)) = (s["name"].as_str(), s["containerID"].as_str()) else {
                continue;
            };
            let Some(id) = cid.rsplit_once('/').map(|(_, id)| id.to_owned()) else {
                continue;
            };
            if id.rsplit_once('.').map(|(n, _)| n) != Some(name)
                || known
                    .iter()
                    .any(|c| c.id.rsplit_once('.').is_some_and(|(n, _)| n == name))
            {
                continue;
            }
            let terminated = [
                s.pointer("/state/terminated"),
                s.pointer("/lastState/terminated"),
            ]
            .into_iter()
            .flatten()
            .find(|t| t["containerID"] == cid);
            let text = |v: &Value| v.as_str().map(str::to_owned);
            out.push(match terminated {
                Some(t) => ContainerState {
                    id,
                    status: "exited".into(),
                    exit_code: t["exitCode"].as_i64().map(|c| c as i32),
                    started_at: text(&t["startedAt"]),
                    finished_at: text(&t["finishedAt"]),
                    reason: text(&t["reason"]),
                    ..ContainerState::default()
                },
                None => ContainerState {
                    id,
                    status: "exited".into(),
                    exit_code: Some(255),
                    started_at: text(&s["state"]["running"]["startedAt"]),
                    finished_at: Some(now()),
                    reason: Some("Unknown".into()),
                    ..ContainerState::default()
                },
            });
        }
    }
    out
}

/// Add the lost instances the shim does not report.
pub(super) fn with_lost(containers: &mut Vec<ContainerState>, lost: &[ContainerState]) {
    for l in lost {
        if !containers.iter().any(|c| c.id == l.id) {
            containers.push(l.clone());
        }
    }
}

/// The instance before the newest one of each container (its last state).
pub(super) fn previous(
    states: &[ContainerState],
    newest: &HashMap<String, (u32, ContainerState)>,
) -> HashMap<String, ContainerState> {
    let mut out = HashMap::new();
    for (name, (n, _)) in newest {
        if *n == 0 {
            continue;
        }
        let id = format!("{name}.{}", n - 1);
        if let Some(s) = states.iter().find(|s| s.id == id && s.status == "exited") {
            out.insert(name.clone(), s.clone());
        }
    }
    out
}

/// What the pod's status is made from besides the pod and its instances:
/// what the worker knows, and the node's view of images and files.
pub(super) struct StatusView<'a> {
    pub node_ip: &'a str,
    /// The pod's IP ([`pod_ip`]).
    pub pod_ip: Option<String>,
    /// The image ID (`<name>@<digest>`) of an image as the spec names it;
    /// empty when not pulled.
    pub image_id: &'a dyn Fn(&str) -> String,
    /// An ended instance's termination message: container spec, instance
    /// id, exit code.
    pub termination_message: &'a dyn Fn(&Value, &str, i32) -> Option<String>,
    pub probes: &'a HashMap<String, Probes>,
    /// Why containers wait, by name (reason, message).
    pub waiting: &'a HashMap<String, (String, String)>,
    /// The status last posted.
    pub last_status: Option<&'a Value>,
}

/// The pod's status from what the shim reports.
pub(super) fn pod_status(
    k: &Kubelet,
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    previous: &HashMap<String, ContainerState>,
    state: &WorkerState,
    failed_init: bool,
) -> Value {
    let image_id = |image: &str| {
        let image_name = ImageRef::parse(image)
            .map(|r| r.to_string())
            .unwrap_or_default();
        k.images
            .get(&image_name)
            .map(|i| {
                format!(
                    "{}@{}",
                    ImageRef::parse(image).map(|r| r.name()).unwrap_or_default(),
                    i.manifest_digest
                )
            })
            .unwrap_or_default()
    };
    let message = |c: &Value, id: &str, code: i32| termination_message(k, pod, c, id, code);
    let view = StatusView {
        node_ip: &k.node_ip,
        pod_ip: pod_ip(k, pod, state.pod_ip),
        image_id: &image_id,
        termination_message: &message,
        probes: &state.probes,
        waiting: &state.waiting,
        last_status: state.last_status.as_ref(),
    };
    status_from(&view, pod, instances, previous, failed_init)
}

/// The pod's status: its containers', its phase and its conditions.
pub(super) fn status_from(
    view: &StatusView<'_>,
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    previous: &HashMap<String, ContainerState>,
    failed_init: bool,
) -> Value {
    let of = |list: &str| -> Vec<Value> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| container_status(view, pod, c, instances, previous))
            .collect()
    };
    let (inits, apps) = (of("initContainers"), of("containers"));
    let sidecars: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str())
        .collect();
    let statuses = Statuses {
        inits: &inits,
        apps: &apps,
        sidecars: &sidecars,
    };
    let phase = phase(&statuses, restart_policy(pod), failed_init);
    let started_at = pod
        .pointer("/status/startTime")
        .cloned()
        .unwrap_or_else(|| json!(now()));
    // The sandbox is up once the pod has its address or a container.
    let sandbox_ready = view.pod_ip.is_some() || !instances.is_empty();
    let mut status = json!({
        "phase": phase,
        "hostIP": view.node_ip,
        "hostIPs": [{"ip": view.node_ip}],
        "startTime": started_at,
        "conditions": conditions(view, pod, &statuses, phase, sandbox_ready),
        "containerStatuses": apps,
        "qosClass": pod.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits);
    }
    if let Some(ip) = &view.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    status
}

/// The pod's container statuses, and which init containers are sidecars.
struct Statuses<'a> {
    inits: &'a [Value],
    apps: &'a [Value],
    sidecars: &'a [&'a str],
}

impl Statuses<'_> {
    fn is_sidecar(&self, s: &Value) -> bool {
        self.sidecars
            .contains(&s["name"].as_str().unwrap_or_default())
    }

    /// Are the init containers done: each exited 0, or (a sidecar) started?
    fn inits_done(&self) -> bool {
        self.inits.iter().all(|s| {
            if self.is_sidecar(s) {
                // Started once: restarting or stopped with the pod, it no
                // longer holds the pod back.
                s["started"] == true
                    || s.get("lastState").is_some()
                    || s.pointer("/state/terminated").is_some()
            } else {
                s.pointer("/state/terminated").is_some() && exit_code(s) == 0
            }
        })
    }
}

/// A container status's exit code (0 unless it terminated with another).
fn exit_code(s: &Value) -> i64 {
    s.pointer("/state/terminated/exitCode")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Why a container with no instance yet waits, as the kubelet's default
/// waiting state: `PodInitializing` in a pod with init containers (for
/// them and its app containers alike), else `ContainerCreating`.
pub(super) fn default_waiting_reason(pod: &Value) -> &'static str {
    let has_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    if has_init {
        "PodInitializing"
    } else {
        "ContainerCreating"
    }
}

/// One container's status: its newest instance's state, its last state,
/// readiness and restart count.
fn container_status(
    view: &StatusView<'_>,
    pod: &Value,
    c: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    previous: &HashMap<String, ContainerState>,
) -> Value {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let name = c["name"].as_str().unwrap_or_default();
    let image = c["image"].as_str().unwrap_or_default();
    let image_name = ImageRef::parse(image)
        .map(|r| r.to_string())
        .unwrap_or_default();
    let image_id = (view.image_id)(image);
    let mut s = json!({"name": name, "image": image_name, "imageID": image_id, "ready": false, "started": false, "restartCount": 0});
    // An instance that ended: its code, reason (`OOMKilled` from the
    // shim, else by the code) and termination message.
    let terminated = |cs: &ContainerState| -> Value {
        let code = cs.exit_code.unwrap_or(0);
        let reason = cs
            .reason
            .clone()
            .unwrap_or_else(|| if code == 0 { "Completed" } else { "Error" }.to_owned());
        let mut t = json!({"exitCode": code, "reason": reason,
            "startedAt": cs.started_at, "finishedAt": cs.finished_at,
            "containerID": format!("orch://{uid}/{}", cs.id)});
        if let Some(message) = (view.termination_message)(c, &cs.id, code) {
            t["message"] = json!(message);
        }
        t
    };
    let Some((n, cs)) = instances.get(name) else {
        let (reason, message) = view
            .waiting
            .get(name)
            .cloned()
            .unwrap_or_else(|| (default_waiting_reason(pod).into(), String::new()));
        s["state"] = json!({"waiting": {"reason": reason, "message": message}});
        return s;
    };
    s["containerID"] = json!(format!("orch://{uid}/{}", cs.id));
    s["restartCount"] = json!(n);
    match cs.status.as_str() {
        "running" => {
            s["state"] = json!({"running": {"startedAt": cs.started_at}});
            if let Some(prev) = previous.get(name) {
                s["lastState"] = json!({"terminated": terminated(prev)});
            }
            let p = view.probes.get(&cs.id);
            s["ready"] = json!(p.is_some_and(|p| p.ready));
            s["started"] = json!(p.is_some_and(|p| p.started));
        }
        "exited" => {
            let terminated = terminated(cs);
            match view.waiting.get(name) {
                Some((reason, message)) => {
                    s["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    s["lastState"] = json!({"terminated": terminated});
                }
                None => s["state"] = json!({"terminated": terminated}),
            }
        }
        _ => s["state"] = json!({"waiting": {"reason": default_waiting_reason(pod)}}),
    }
    s
}

/// The pod's phase, as upstream's getPhase: a container waiting to restart
/// counts as stopped.
fn phase(statuses: &Statuses<'_>, policy: &str, failed_init: bool) -> &'static str {
    let apps = statuses.apps;
    let running = apps
        .iter()
        .filter(|s| s.pointer("/state/running").is_some())
        .count();
    let waiting = apps
        .iter()
        .filter(|s| s.pointer("/state/waiting").is_some() && s.get("lastState").is_none())
        .count();
    let stopped = apps.len() - running - waiting;
    let succeeded = apps
        .iter()
        .filter(|s| s.pointer("/state/terminated").is_some() && exit_code(s) == 0)
        .count();
    // Sidecars still stopping keep a finished pod Running until they end.
    let sidecars_running = statuses
        .inits
        .iter()
        .any(|s| statuses.is_sidecar(s) && s.pointer("/state/running").is_some());
    if failed_init {
        "Failed"
    } else if running == 0 && stopped == apps.len() && sidecars_running {
        "Running"
    } else if !statuses.inits_done() || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
}

/// The pod's conditions, with the reasons and messages the kubelet gives.
fn conditions(
    view: &StatusView<'_>,
    pod: &Value,
    statuses: &Statuses<'_>,
    phase: &str,
    sandbox_ready: bool,
) -> Value {
    // Ready: every app container and every sidecar (upstream's
    // GenerateContainersReadyCondition).
    let unready: Vec<&str> = statuses
        .apps
        .iter()
        .chain(statuses.inits.iter().filter(|s| statuses.is_sidecar(s)))
        .filter(|s| s["ready"] != true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    let all_ready = !statuses.apps.is_empty() && unready.is_empty();
    // A condition keeps the time it last changed (from our last status,
    // else the pod's).
    let since = |kind: &str, value: &str| -> Value {
        [view.last_status, pod.get("status")]
            .into_iter()
            .flatten()
            .filter_map(|s| s["conditions"].as_array())
            .flatten()
            .find(|c| c["type"] == kind)
            .filter(|c| c["status"] == value)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .filter(|t| !t.is_null())
            .unwrap_or_else(|| json!(now()))
    };
    let cond = |kind: &str, ok: bool, why: Option<(&str, String)>| {
        let value = if ok { "True" } else { "False" };
        // Explicit nulls: the status goes as a strategic merge patch, which
        // merges conditions by type and would keep an old reason.
        let (reason, message) = why.unzip();
        json!({"type": kind, "status": value, "lastProbeTime": null,
            "lastTransitionTime": since(kind, value),
            "reason": reason, "message": message.filter(|m| !m.is_empty())})
    };
    let not_ready = (!all_ready).then(|| {
        if phase == "Succeeded" {
            ("PodCompleted", String::new())
        } else {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        }
    });
    let inits_done = statuses.inits_done();
    let uninitialized: Vec<&str> = statuses
        .inits
        .iter()
        .filter(|s| {
            if statuses.is_sidecar(s) {
                s["started"] != true
            } else {
                s.pointer("/state/terminated").is_none() || exit_code(s) != 0
            }
        })
        .filter_map(|s| s["name"].as_str())
        .collect();
    let not_initialized = (!inits_done).then(|| {
        (
            "ContainersNotInitialized",
            format!(
                "containers with incomplete status: [{}]",
                uninitialized.join(" ")
            ),
        )
    });
    let scheduled = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .unwrap_or_else(|| cond("PodScheduled", true, None));
    json!([
        cond("PodReadyToStartContainers", sandbox_ready, None),
        cond("Initialized", inits_done, not_initialized),
        cond("ContainersReady", all_ready, not_ready.clone()),
        cond("Ready", all_ready, not_ready),
        scheduled,
    ])
}

/// What a container left in its terminationMessagePath (4 KiB at most),
/// or, with FallbackToLogsOnError and a failure, the end of its log.
pub(super) fn termination_message(
    k: &Kubelet,
    pod: &Value,
    c: &Value,
    id: &str,
    code: i32,
) -> Option<String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let file = k
        .pod_dir(uid)
        .join("containers")
        .join(format!("{id}.termination-log"));
    let mut text = std::fs::read(&file).unwrap_or_default();
    text.truncate(4096);
    if text.is_empty() && code != 0 && c["terminationMessagePolicy"] == "FallbackToLogsOnError" {
        let (name, restart) = id.rsplit_once('.').unwrap_or((id, "0"));
        let log = k
            .log_dir
            .join(format!(
                "{}_{}_{uid}",
                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ))
            .join(name)
            .join(format!("{restart}.log"));
        let content = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = content
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let start = tail.len().saturating_sub(2048);
        text = tail.as_bytes()[start..].to_vec();
    }
    (!text.is_empty()).then(|| String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_whose_shim_is_gone_count_as_ended() {
        let pod = json!({"status": {
        "initContainerStatuses": [
            {"name": "init", "containerID": "orch://u/init.0",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "containerID": "orch://u/init.0",
                 "startedAt": "2026-12-06T10:00:00Z", "finishedAt": "2026-12-06T10:00:01Z"}}}],
        "containerStatuses": [
            {"name": "app", "containerID": "orch://u/app.3",
             "state": {"running": {"startedAt": "2026-12-06T10:00:02Z"}}},
            {"name": "crashy", "containerID": "orch://u/crashy.1",
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "containerID": "orch://u/crashy.1"}}},
            {"name": "known", "containerID": "orch://u/known.0", "state": {"running": {}}},
            {"name": "new", "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]}});
        let known = [ContainerState {
            id: "known.0".into(),
            status: "running".into(),
            ..ContainerState::default()
        }];
        let lost = lost_instances(&pod, &known);
        let summary: Vec<(&str, Option<i32>, Option<&str>)> = lost
            .iter()
            .map(|l| (l.id.as_str(), l.exit_code, l.reason.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                // A finished init container stays finished.
                ("init.0", Some(0), Some("Completed")),
                // A running one ended without a word: 255, Unknown.
                ("app.3", Some(255), Some("Unknown")),
                // One that had ended keeps how.
                ("crashy.1", Some(2), Some("Error")),
            ]
        );
        assert!(lost.iter().all(|l| l.status == "exited"));
        assert_eq!(lost[1].started_at.as_deref(), Some("2026-12-06T10:00:02Z"));
        // The newest instance is the lost one: the next is app.4.
        let mut all = known.to_vec();
        with_lost(&mut all, &lost);
        assert_eq!(latest(&all)["app"].0, 3);
    }

    #[test]
    fn the_newest_instance_of_each_container_wins() {
        let s = |id: &str, status: &str| ContainerState {
            id: id.into(),
            pid: 1,
            status: status.into(),
            exit_code: None,
            started_at: None,
            finished_at: None,
            reason: None,
        };
        let l = latest(&[
            s("web.0", "exited"),
            s("web.2", "running"),
            s("web.1", "exited"),
            s("db.0", "running"),
        ]);
        assert_eq!(l["web"].0, 2);
        assert_eq!(l["web"].1.status, "running");
        assert_eq!(l["db"].0, 0);
    }

    fn instance(id: &str, status: &str, code: Option<i32>) -> ContainerState {
        ContainerState {
            id: id.into(),
            pid: 1,
            status: status.into(),
            exit_code: code,
            ..ContainerState::default()
        }
    }

    /// The status of a pod of one app container `web` (policy `policy`),
    /// whose newest instance is `newest`, with `waiting` reasons and
    /// `probes`.
    fn status(
        policy: &str,
        newest: Option<ContainerState>,
        waiting: &HashMap<String, (String, String)>,
        probes: &HashMap<String, Probes>,
        failed_init: bool,
    ) -> Value {
        let pod = json!({"metadata": {"uid": "u-1"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "web", "image": "nginx:1.27"}]}});
        let instances: HashMap<String, (u32, ContainerState)> = newest
            .into_iter()
            .map(|s| ("web".to_owned(), (0, s)))
            .collect();
        let view = StatusView {
            node_ip: "192.168.1.10",
            pod_ip: Some("10.42.0.7".into()),
            image_id: &|_| String::new(),
            termination_message: &|_, _, _| None,
            probes,
            waiting,
            last_status: None,
        };
        status_from(&view, &pod, &instances, &HashMap::new(), failed_init)
    }

    fn condition(status: &Value, kind: &str) -> (String, Option<String>) {
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap();
        (
            c["status"].as_str().unwrap().to_owned(),
            c["reason"].as_str().map(str::to_owned),
        )
    }

    #[test]
    fn the_phase_and_container_reasons_follow_the_instances() {
        let none = HashMap::new();
        let backoff: HashMap<String, (String, String)> = [(
            "web".into(),
            ("CrashLoopBackOff".into(), "back-off 10s".into()),
        )]
        .into();
        let creating: HashMap<String, (String, String)> =
            [("web".into(), ("ErrImagePull".into(), "not found".into()))].into();
        let exited = |code| Some(instance("web.0", "exited", Some(code)));
        // policy, newest instance, waiting → phase, state, reason.
        for (policy, newest, waiting, phase, state, reason) in [
            (
                "Always",
                None,
                &none,
                "Pending",
                "waiting",
                "ContainerCreating",
            ),
            (
                "Always",
                None,
                &creating,
                "Pending",
                "waiting",
                "ErrImagePull",
            ),
            (
                "Always",
                Some(instance("web.0", "running", None)),
                &none,
                "Running",
                "running",
                "",
            ),
            (
                "Never",
                exited(0),
                &none,
                "Succeeded",
                "terminated",
                "Completed",
            ),
            ("Never", exited(1), &none, "Failed", "terminated", "Error"),
            (
                "OnFailure",
                exited(0),
                &none,
                "Succeeded",
                "terminated",
                "Completed",
            ),
            (
                "OnFailure",
                exited(1),
                &backoff,
                "Running",
                "waiting",
                "CrashLoopBackOff",
            ),
            (
                "Always",
                exited(0),
                &backoff,
                "Running",
                "waiting",
                "CrashLoopBackOff",
            ),
        ] {
            let s = status(policy, newest.clone(), waiting, &HashMap::new(), false);
            let case = format!("{policy} {newest:?} {waiting:?}");
            assert_eq!(s["phase"], phase, "{case}");
            let c = &s["containerStatuses"][0];
            assert!(c["state"].get(state).is_some(), "{case}: {c}");
            assert_eq!(
                c["state"][state]["reason"].as_str().unwrap_or(""),
                reason,
                "{case}"
            );
            if state == "waiting" && newest.is_some() {
                // Waiting to restart: the exit shows as the last state.
                assert!(c["lastState"]["terminated"].is_object(), "{case}: {c}");
            }
        }
        let failed = status("Always", None, &none, &HashMap::new(), true);
        assert_eq!(
            failed["phase"], "Failed",
            "a failed init container fails the pod"
        );
    }

    #[test]
    fn readiness_gates_the_ready_condition() {
        let running = Some(instance("web.0", "running", None));
        let probes = |ready| -> HashMap<String, Probes> {
            let p = Probes {
                started: true,
                ready,
                ..Probes::default()
            };
            [("web.0".to_owned(), p)].into()
        };
        let unready = status(
            "Always",
            running.clone(),
            &HashMap::new(),
            &probes(false),
            false,
        );
        assert_eq!(unready["phase"], "Running");
        assert_eq!(unready["containerStatuses"][0]["ready"], false);
        assert_eq!(
            condition(&unready, "Ready"),
            ("False".into(), Some("ContainersNotReady".into()))
        );
        assert_eq!(condition(&unready, "ContainersReady").0, "False");
        assert_eq!(condition(&unready, "PodReadyToStartContainers").0, "True");
        let ready = status("Always", running, &HashMap::new(), &probes(true), false);
        assert_eq!(condition(&ready, "Ready"), ("True".into(), None));
        assert_eq!(ready["podIP"], "10.42.0.7");
        // A finished pod is not ready, because it completed.
        let done = status(
            "Never",
            Some(instance("web.0", "exited", Some(0))),
            &HashMap::new(),
            &HashMap::new(),
            false,
        );
        assert_eq!(
            condition(&done, "Ready"),
            ("False".into(), Some("PodCompleted".into()))
        );
    }
}
