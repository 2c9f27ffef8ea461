//! Which containers of a pod start or restart now, from the spec and the
//! instances the runtime reports: init containers one at a time to a
//! successful exit (sidecars only have to run), then the app containers by
//! `restartPolicy`; sidecars stop once the app containers are done for
//! good. Pure: values in, decisions out.

use std::collections::HashMap;

use serde_json::Value;

use crate::runtime::shim::ContainerState;

/// The newest instance of each container (its restart number and state),
/// by container name.
pub(super) type Instances = HashMap<String, (u32, ContainerState)>;

/// One thing to do to a container of the pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Start its first instance.
    Start { container: String },
    /// It exited: start instance `last + 1` once its back-off has passed.
    Restart { container: String, last: u32 },
}

impl Action {
    /// The container's name.
    pub(super) fn container(&self) -> &str {
        match self {
            Action::Start { container } | Action::Restart { container, .. } => container,
        }
    }
}

/// What a sync does to the pod's containers.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// In order: init containers first, at most one not yet done.
    pub actions: Vec<Action>,
    /// An init container failed and may not restart (`restartPolicy:
    /// Never`): the pod has failed.
    pub failed_init: bool,
}

/// The pod's `restartPolicy` (`Always` when not set).
pub(super) fn restart_policy(pod: &Value) -> &str {
    pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
}

/// Should an exited container start again?
pub(super) fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

/// Is this init container a sidecar (a restartable init container)?
fn is_sidecar(c: &Value) -> bool {
    c["restartPolicy"] == "Always"
}

/// Have all regular (app) containers exited for good?
pub(super) fn regular_done(pod: &Value, instances: &Instances, policy: &str) -> bool {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| {
            instances
                .get(c["name"].as_str().unwrap_or_default())
                .is_some_and(|(_, s)| {
                    s.status == "exited" && !should_restart(policy, s.exit_code.unwrap_or(1))
                })
        })
}

/// What to start or restart now.
pub(super) fn plan_containers(pod: &Value, instances: &Instances) -> Plan {
    let policy = restart_policy(pod);
    let mut plan = Plan::default();
    let inits_done = plan_inits(pod, instances, policy, &mut plan);
    if inits_done {
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            match instances.get(&name) {
                None => plan.actions.push(Action::Start { container: name }),
                Some((n, s)) if s.status == "exited" => {
                    if should_restart(policy, s.exit_code.unwrap_or(1)) {
                        plan.actions.push(Action::Restart {
                            container: name,
                            last: *n,
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }
    plan
}

/// The init containers' actions, one at a time; are they all done (or,
/// for sidecars, running)?
fn plan_inits(pod: &Value, instances: &Instances, policy: &str, plan: &mut Plan) -> bool {
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        // A sidecar only has to be running for the next one to start, and
        // restarts whenever it exits.
        let sidecar = is_sidecar(c);
        match instances.get(&name) {
            None => {
                plan.actions.push(Action::Start { container: name });
                return false;
            }
            Some((_, s)) if sidecar && s.status == "running" => {}
            Some((n, s)) if sidecar && s.status == "exited" => {
                if !regular_done(pod, instances, policy) {
                    plan.actions.push(Action::Restart {
                        container: name,
                        last: *n,
                    });
                }
            }
            Some((_, s)) if s.status != "exited" => return false,
            Some((_, s)) if s.exit_code == Some(0) => {}
            Some((n, _)) => {
                if policy == "Never" {
                    plan.failed_init = true;
                } else {
                    plan.actions.push(Action::Restart {
                        container: name,
                        last: *n,
                    });
                }
                return false;
            }
        }
    }
    true
}

/// The running sidecars to stop because the app containers are done for
/// good: instance id and spec.
pub(super) fn sidecars_to_stop<'a>(
    pod: &'a Value,
    instances: &Instances,
) -> Vec<(String, &'a Value)> {
    if !regular_done(pod, instances, restart_policy(pod)) {
        return Vec::new();
    }
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| is_sidecar(c))
        .filter_map(|c| {
            let (_, s) = instances.get(c["name"].as_str().unwrap_or_default())?;
            (s.status == "running").then(|| (s.id.clone(), c))
        })
        .collect()
}

/// The order in which a deleted pod's running instances stop: the app
/// containers together, then the sidecars one at a time in the reverse of
/// their order, each once the ones before it have stopped. Each wave is a
/// list of (instance id, spec).
pub(super) fn stop_waves(pod: &Value, running: &[&str]) -> Vec<Vec<(String, Value)>> {
    let of = |list: &str| -> Vec<(String, Value)> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                running
                    .iter()
                    .filter(|id| id.rsplit_once('.').is_some_and(|(n, _)| c["name"] == n))
                    .map(|id| ((*id).to_owned(), c.clone()))
            })
            .collect()
    };
    let mut waves = vec![of("containers")];
    let mut sidecars = of("initContainers");
    sidecars.reverse();
    waves.extend(sidecars.into_iter().map(|s| vec![s]));
    waves
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fake::FakeRuntime;
    use super::super::runtime::{CreateContainer, PodRuntime, SandboxSpec};
    use super::super::status::latest;
    use super::*;

    const UID: &str = "u-1";

    fn pod(policy: &str, inits: Value, apps: Value) -> Value {
        json!({"metadata": {"uid": UID}, "spec": {"restartPolicy": policy,
            "initContainers": inits, "containers": apps}})
    }

    fn names(list: &[&str]) -> Value {
        list.iter().map(|n| json!({"name": n})).collect()
    }

    /// One sync's container step over the fake runtime: plan from what it
    /// reports, then start what the plan says (restarts at once: back-off
    /// is `backoff`'s).
    async fn step(rt: &FakeRuntime, pod: &Value) -> Plan {
        let plan = plan_containers(pod, &latest(&rt.instances(UID)));
        for action in &plan.actions {
            let restart = match action {
                Action::Start { .. } => 0,
                Action::Restart { last, .. } => last + 1,
            };
            let id = format!("{}.{restart}", action.container());
            let create = CreateContainer {
                bundle: id.clone().into(),
                log: format!("{id}.log").into(),
                id,
                layers: Vec::new(),
            };
            rt.create_container(UID, create)
                .await
                .expect("the fake creates");
        }
        plan
    }

    async fn sandbox() -> FakeRuntime {
        let rt = FakeRuntime::default();
        rt.start_sandbox(UID, &SandboxSpec::default())
            .await
            .expect("the fake starts sandboxes");
        rt
    }

    fn started(rt: &FakeRuntime) -> Vec<String> {
        rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                super::super::fake::Call::Create(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_restart_policy_decides_which_exits_restart() {
        for (policy, code, restart) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 137, true),
            ("Never", 0, false),
            ("Never", 1, false),
        ] {
            assert_eq!(
                should_restart(policy, code),
                restart,
                "{policy} after exit {code}"
            );
        }
        assert_eq!(restart_policy(&json!({"spec": {}})), "Always");
    }

    #[tokio::test]
    async fn init_containers_run_one_at_a_time_to_success_then_the_apps_together() {
        let rt = sandbox().await;
        let pod = pod("Always", names(&["a", "b"]), names(&["web", "log"]));
        step(&rt, &pod).await;
        assert_eq!(started(&rt), ["a.0"], "only the first init container");
        step(&rt, &pod).await;
        assert_eq!(started(&rt), ["a.0"], "b waits while a runs");
        rt.exit(UID, "a.0", 0);
        step(&rt, &pod).await;
        assert_eq!(started(&rt), ["a.0", "b.0"]);
        rt.exit(UID, "b.0", 0);
        step(&rt, &pod).await;
        assert_eq!(started(&rt), ["a.0", "b.0", "web.0", "log.0"]);
        assert_eq!(step(&rt, &pod).await, Plan::default(), "all running");
    }

    #[tokio::test]
    async fn a_failed_init_container_restarts_unless_the_policy_is_never() {
        for (policy, want) in [
            ("Always", Some(("a", 0))),
            ("OnFailure", Some(("a", 0))),
            ("Never", None),
        ] {
            let rt = sandbox().await;
            let pod = pod(policy, names(&["a"]), names(&["web"]));
            step(&rt, &pod).await;
            rt.exit(UID, "a.0", 1);
            let plan = step(&rt, &pod).await;
            match want {
                Some((name, last)) => {
                    assert_eq!(
                        plan.actions,
                        [Action::Restart {
                            container: name.into(),
                            last
                        }],
                        "{policy}"
                    );
                    assert!(!plan.failed_init, "{policy}");
                    assert_eq!(started(&rt), ["a.0", "a.1"], "{policy}: web waits");
                }
                None => {
                    assert!(plan.actions.is_empty(), "{policy}: {plan:?}");
                    assert!(plan.failed_init, "{policy}: the pod fails");
                }
            }
        }
    }

    #[tokio::test]
    async fn app_containers_restart_by_policy_and_exit_code() {
        for (policy, code, restarts) in [
            ("Always", 0, true),
            ("Always", 2, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 2, false),
        ] {
            let rt = sandbox().await;
            let pod = pod(policy, json!([]), names(&["web"]));
            step(&rt, &pod).await;
            rt.exit(UID, "web.0", code);
            let plan = step(&rt, &pod).await;
            let want = if restarts {
                vec![Action::Restart {
                    container: "web".into(),
                    last: 0,
                }]
            } else {
                vec![]
            };
            assert_eq!(plan.actions, want, "{policy} after exit {code}");
        }
    }

    #[tokio::test]
    async fn sidecars_only_need_to_run_and_stop_once_the_apps_are_done() {
        let rt = sandbox().await;
        let inits = json!([{"name": "proxy", "restartPolicy": "Always"}, {"name": "setup"}]);
        let pod = pod("Never", inits, names(&["job"]));
        step(&rt, &pod).await;
        step(&rt, &pod).await;
        assert_eq!(
            started(&rt),
            ["proxy.0", "setup.0"],
            "a running sidecar lets the next init container start"
        );
        rt.exit(UID, "setup.0", 0);
        step(&rt, &pod).await;
        // A sidecar that exits while the app runs restarts.
        rt.exit(UID, "proxy.0", 1);
        let plan = step(&rt, &pod).await;
        assert_eq!(
            plan.actions,
            [Action::Restart {
                container: "proxy".into(),
                last: 0
            }]
        );
        let instances = latest(&rt.instances(UID));
        assert!(sidecars_to_stop(&pod, &instances).is_empty(), "job runs");
        // The job is done for good: the sidecar stops and is not restarted.
        rt.exit(UID, "job.0", 0);
        let instances = latest(&rt.instances(UID));
        let stop: Vec<String> = sidecars_to_stop(&pod, &instances)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(stop, ["proxy.1"]);
        rt.exit(UID, "proxy.1", 143);
        assert_eq!(step(&rt, &pod).await, Plan::default());
    }

    #[test]
    fn a_deleted_pod_stops_its_apps_first_then_its_sidecars_in_reverse() {
        let inits = json!([{"name": "first", "restartPolicy": "Always"},
                           {"name": "second", "restartPolicy": "Always"}]);
        let pod = pod("Always", inits, names(&["web", "api"]));
        let running = ["second.0", "web.3", "first.1", "api.0", "gone.0"];
        let waves: Vec<Vec<String>> = stop_waves(&pod, &running)
            .into_iter()
            .map(|w| w.into_iter().map(|(id, _)| id).collect())
            .collect();
        assert_eq!(
            waves,
            [vec!["web.3", "api.0"], vec!["second.0"], vec!["first.1"]]
        );
        // Nothing running: nothing to stop.
        assert!(stop_waves(&pod, &[]).concat().is_empty());
    }
}
